"""The ``sae-circuits`` subcommands of the paper's analyses: ``families`` (feature splitting across
dictionary widths, as an HTML tree) and ``monitor`` (features watched while a model generates,
with a per-token trace). :mod:`sae_circuits.cli` registers them; each handler imports torch lazily.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

_WATCH = re.compile(r"^(?P<site>[^:]+):(?P<features>\d+(,\d+)*)$")


def analysis_tokens(model: Any, text_files: list[str] | None, rows: int, length: int) -> Any:
    """``LabelledRows`` from text files (one source each) or, by default, the offline mix
    (code, base64, markup, kvlog) generated with seed 7, which no embedded dictionary was trained on."""
    from sae_circuits._cli_common import check_context, read_text_option
    from sae_circuits.analysis._stats import labelled_rows
    from sae_circuits.languages import offline_mix

    check_context(model, length, f"--length {length}")
    if text_files:
        texts = {path: [read_text_option(path, "--text")] for path in text_files}
    else:
        texts = offline_mix(seed=7, code_bytes=400_000, base64_docs=200, automaton_docs=300)
    per_source = max(1, rows // len(texts))
    return labelled_rows(model, texts, length, per_source)


def _families(args: argparse.Namespace) -> int:
    from sae_circuits._cli_common import check_writable as _check_writable
    from sae_circuits._cli_common import load_model as _load_model
    from sae_circuits.analysis.families import feature_families
    from sae_circuits.sae import SAE

    if Path(args.out).suffix.lower() != ".html":
        raise ValueError(f"--out {args.out!r}: the family tree is an .html page")
    _check_writable(Path(args.out), "--out")
    if args.json:
        _check_writable(Path(args.json), "--json")
    model = _load_model(args.model)
    saes = [SAE.load(path) for path in args.saes]
    rows = analysis_tokens(model, args.text, args.rows, args.length)
    prop = None
    if args.property is not None:
        if args.property not in rows.names:
            raise ValueError(f"--property {args.property!r}: expected one of the sources {rows.names}")
        wanted = rows.source == rows.names.index(args.property)
        prop = wanted[:, None].expand_as(rows.tokens)
    families = feature_families(
        saes, model, rows.tokens, by=args.by, threshold=args.threshold, token_property=prop
    )
    start = families.best_for_property(0) if prop is not None else None
    path = families.write_html(args.out, family=start)
    if args.json:
        import json

        from sae_circuits._files import atomic_write_text

        atomic_write_text(args.json, json.dumps(families.to_json()) + "\n")
    print(f"widths {families.widths}; wrote {path}")
    return 0


def parse_watch(text: str) -> tuple[str, list[int]]:
    """``SITE:F[,F...]`` -> ``(site, [features])``, or a ``ValueError`` naming the text.

    >>> parse_watch("blocks.1.hook_resid_post:5,7")
    ('blocks.1.hook_resid_post', [5, 7])
    """
    match = _WATCH.match(text)
    if match is None:
        raise ValueError(
            f"--watch {text!r}: expected SITE:FEATURE[,FEATURE...], e.g. blocks.1.hook_resid_post:5"
        )
    return match["site"], [int(f) for f in match["features"].split(",")]


def _monitor(args: argparse.Namespace) -> int:
    from sae_circuits import zoo
    from sae_circuits._cli_common import check_context
    from sae_circuits._cli_common import check_writable as _check_writable
    from sae_circuits._cli_common import load_model as _load_model
    from sae_circuits.monitor import monitor
    from sae_circuits.sae import SAE
    from sae_circuits.splice import spliced

    watches = [parse_watch(w) for w in args.watch]
    if not args.prompt:
        raise ValueError("--prompt is empty: the model needs at least one token to continue")
    if args.out:
        if Path(args.out).suffix.lower() not in (".jsonl", ".json"):
            raise ValueError(f"--out {args.out!r}: expected a .jsonl or .json file name")
        _check_writable(Path(args.out), "--out")
    model = _load_model(args.model)
    if args.sae:
        saes = [SAE.load(path) for path in args.sae]
    elif args.model in zoo.names():
        sites = {site for site, _ in watches}
        saes = [
            s
            for kind in ("resid", "transcoder")
            for s in zoo.load_saes(args.model, kind=kind)
            if s.cfg.site in sites
        ]
    else:
        raise ValueError("--sae is required with a model that is not embedded")
    tokens = model.to_tokens(args.prompt, truncate=False)  # the model's own BOS habit, never cut
    prompt_tokens = tokens.shape[-1]
    what = f"the prompt ({prompt_tokens} tokens) plus --max-new-tokens {args.max_new_tokens}"
    check_context(model, prompt_tokens + args.max_new_tokens, what)
    with spliced(model, saes), monitor(model, watches, args.threshold, on_fire=args.on_fire) as mon:
        out = mon.generate(
            tokens, max_new_tokens=args.max_new_tokens, do_sample=False, use_past_kv_cache=not args.no_cache,
            stop_at_eos=False,
        )  # fmt: skip
    print(model.to_string(out[0]))
    print(
        f"{len(mon.firings)} firings"
        + (f"; stopped at position {mon.stopped.position}" if mon.stopped else "")
    )
    for firing in mon.firings[: args.show]:
        print(
            f"  position {firing.position} {firing.token!r}: "
            f"{firing.site}[{firing.feature}] = {firing.activation:.3f}"
        )
    if args.out:
        print(f"wrote {mon.save(args.out)}")
    return 0


def add_commands(sub: Any) -> None:
    """Register ``families`` and ``monitor`` on the ``sae-circuits`` subparsers ``sub``."""
    from sae_circuits._cli_common import add_model_argument as _add_model_argument
    from sae_circuits._cli_common import int_at_least as _int_at_least

    fa = sub.add_parser("families", help="feature splitting: match dictionaries of several widths, as a tree")
    fa.add_argument("--saes", nargs="+", required=True, help="dictionary folders of one site, 2+ widths")
    fa.add_argument("--out", required=True, help="output .html page of the tree")
    fa.add_argument("--json", default=None, help="also write the tree's data as JSON here")
    _add_model_argument(fa)
    fa.add_argument(
        "--by", choices=("activation", "decoder"), default="activation", help="parent by (default activation)"
    )
    fa.add_argument(
        "--threshold", type=float, default=None, help="similarity a parent needs (default: per measure)"
    )
    fa.add_argument(
        "--text", action="append", help="text file to read tokens from (repeatable; default: offline mix)"
    )
    fa.add_argument("--rows", type=_int_at_least(1), default=128, help="token rows in all (default 128)")
    fa.add_argument("--length", type=_int_at_least(1), default=128, help="tokens per row (default 128)")
    fa.add_argument("--property", default=None, help="a source (e.g. base64) to score features by F1 against")
    fa.set_defaults(func=_families)

    mo = sub.add_parser("monitor", help="watch features while the model generates; print and save the trace")
    mo.add_argument("--prompt", required=True, help="the prompt")
    mo.add_argument("--watch", action="append", required=True, help="SITE:FEATURE[,FEATURE...] (repeatable)")
    mo.add_argument("--threshold", type=float, default=0.0, help="fires above this activation (default 0)")
    mo.add_argument(
        "--on-fire", choices=("record", "stop", "ablate"), default="record", help="default record"
    )
    _add_model_argument(mo)
    mo.add_argument(
        "--sae", action="append", help="SAE folder to splice (repeatable; default: the embedded ones)"
    )
    mo.add_argument(
        "--max-new-tokens", type=_int_at_least(1), default=40, help="tokens to generate (default 40)"
    )
    mo.add_argument("--no-cache", action="store_true", help="generate without the KV cache (same firings)")
    mo.add_argument("--out", default=None, help="write the per-token trace (.jsonl or .json)")
    mo.add_argument("--show", type=_int_at_least(0), default=10, help="firings printed (default 10)")
    mo.set_defaults(func=_monitor)
