"""The ``sae-circuits`` command."""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from typing import TYPE_CHECKING, Any

from sae_circuits._cli_common import add_model_argument as _add_model_argument
from sae_circuits._cli_common import check_writable as _check_writable
from sae_circuits._cli_common import int_at_least as _int_at_least
from sae_circuits._cli_common import load_model as _load_model
from sae_circuits._moved import renamed

if TYPE_CHECKING:  # torch is imported lazily: the CLI starts fast
    from pathlib import Path

    from torch import Tensor


def _batch_size(text: str) -> int | str:
    """``--batch-size``: a row count >= 1, or ``auto`` (as many as fit in memory)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a batch size (an integer >= 1, or 'auto')")
    return value


def _node_budget(text: str) -> int | None:
    """``--max-feature-nodes``: a count >= 0, or ``all`` (no budget)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a node count (an integer >= 0, or 'all')"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not a node count (an integer >= 0, or 'all')")
    return value


def _port(text: str) -> int:
    """An argparse ``type``: a TCP port, 0 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0 to 65535; 0 picks a free one)")
    return value


def _demo(args: argparse.Namespace) -> int:
    from sae_circuits import demo

    if args.prompt is None:
        demo.run()
    elif not args.prompt:
        raise ValueError("--prompt is empty: give a prompt, or leave the option out for the default")
    else:
        demo.run(prompt=args.prompt)
    return 0


def _eval_tokens(model: Any, text_file: str | None, n_seq: int, seq_len: int) -> Tensor:
    """Token rows from a text file, or (default) offline text: stdlib code, markup and base64."""
    import torch

    from sae_circuits._cli_common import check_context, read_text_option

    check_context(model, seq_len, f"--seq-len {seq_len}")
    if text_file:
        text = read_text_option(text_file, "--text")
    else:
        from sae_circuits.languages import automata, probe_texts

        blobs, code = probe_texts(seed=7)
        markup = ["".join(symbols) for symbols, _ in automata.generate("markup", 20, seed=7)]
        text = "\n".join(code + blobs + markup)
    ids = torch.tensor(model.tokenizer(text)["input_ids"])  # to_tokens truncates to n_ctx
    n = min(n_seq, ids.numel() // seq_len)
    if n == 0:
        raise ValueError(f"--text: the text has fewer than --seq-len {seq_len} tokens")
    return ids[: n * seq_len].view(n, seq_len).to(torch.long)


def _dictionaries(model: str, paths: list[str] | None, kind: str, option: str) -> list[Any]:
    """The SAEs at ``paths``, else the embedded model's (``kind``: resid, transcoder or all)."""
    from sae_circuits import zoo
    from sae_circuits.sae import SAE

    if paths:
        return [SAE.load(path) for path in paths]
    if model in zoo.names():
        kinds = ("resid", "transcoder") if kind == "all" else (kind,)
        return [sae for k in kinds for sae in zoo.load_saes(model, kind=k)]  # type: ignore[arg-type]
    raise ValueError(f"{option} is required with a model that is not embedded")


def _check_suffix(out: str, kind: str) -> None:
    """``--out``'s suffix must be one that a writer of ``kind`` objects writes (sae_circuits.writers)."""
    from pathlib import Path

    from sae_circuits import writers

    if Path(out).suffix.lower() not in writers.suffixes(kind):
        raise ValueError(f"--out {out!r}: the suffix must be {writers.suffix_list(kind)}")


def _eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from sae_circuits._files import atomic_write_text
    from sae_circuits.evals import evaluate
    from sae_circuits.sae import SAE

    if args.json:
        _check_writable(Path(args.json), "--json")
    sae = SAE.load(args.sae)
    model = _load_model(args.model)
    tokens = _eval_tokens(model, args.text, args.sequences, args.seq_len)
    result = evaluate(model, sae, tokens, progress=True)
    rows = [
        "explained_variance", "ce_loss_score", "kl_div_score", "l0", "mse",
        "ce_loss_clean", "ce_loss_spliced", "ce_loss_zero", "dead_fraction", "dense_fraction",
    ]  # fmt: skip
    print(f"{sae.cfg.site} ({sae.cfg.architecture}, d_sae={sae.cfg.d_sae}) on {result.n_tokens} tokens")
    print(f"{'metric':<20}{'SAE':>12}{'baseline':>12}")
    for name in rows:
        base = getattr(result.baseline, name) if result.baseline else float("nan")
        print(f"{name:<20}{getattr(result, name):>12.4f}{base:>12.4f}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result.to_dict(), indent=2))
    return 0


_ESCAPE = re.compile(r"\\(?:([\\nrt\"'])|x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4}))")
_ESCAPED = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t", '"': '"', "'": "'"}


def unescape_prompt(text: str) -> str:
    r"""``--prompt``'s backslash escapes: ``\n``, ``\t``, ``\r``, ``\\``, ``\"``, ``\'``, ``\xHH`` and
    ``\uHHHH``; any other backslash stays as it is.

    >>> unescape_prompt(r"def foo(x):\n    return \\n")
    'def foo(x):\n    return \\n'
    """
    return _ESCAPE.sub(lambda m: _ESCAPED[m[1]] if m[1] else chr(int(m[2] or m[3], 16)), text)


def _prompt_text(args: argparse.Namespace) -> str:
    """The prompt: ``--prompt`` with its escapes interpreted, or ``--prompt-file`` as it is (UTF-8)."""
    if args.prompt_file is not None:
        from sae_circuits._cli_common import read_text_option

        return read_text_option(args.prompt_file, "--prompt-file")
    text = unescape_prompt(args.prompt)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a \\uD800 escape: half of a surrogate pair is no character
        raise ValueError(f"--prompt: {err.object[err.start : err.end]!r} at character {err.start} is not "
                         "a character (half of a UTF-16 surrogate pair)") from None  # fmt: skip
    return text


def _graph_out(out: str, slug: str | None, prompt: str) -> Path:
    """``--out``: a file, or a folder (ends with ``/`` or exists) that gets ``{slug}.json``, the slug
    being ``--slug`` or one made from the prompt."""
    from pathlib import Path

    path = Path(out)
    if slug is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", slug):
        raise ValueError(f"--slug {slug!r}: use letters, digits, '.', '_' and '-' (it becomes a file name)")
    if out.endswith(("/", os.sep)) or path.is_dir():
        name = slug or re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "graph"
        return path / f"{name}.json"
    if slug is not None:
        raise ValueError(f"--slug {slug!r}: only with a folder --out (a file's slug is its name)")
    return path


def _write_attribution_graph(args: argparse.Namespace) -> int:
    if args.prompts is not None:
        return _write_attribution_graphs(args)

    from sae_circuits.graph import attribute
    from sae_circuits.graph.influence import NodeKind
    from sae_circuits.splice import splice

    prompt = _prompt_text(args)
    out = _graph_out(args.out, args.slug, prompt)
    _check_suffix(str(out), "graph")
    _check_writable(out, "--out")
    if args.html and out.suffix.lower() != ".html":  # before anything is written, not after --out
        _check_writable(out.with_suffix(".html"), "--html")
    if out.suffix.lower() == ".json":  # the folder's list of graphs must be updatable: check it now
        from sae_circuits.writers.json_file import listed_graphs

        listed_graphs(out)
    for name in ("node_threshold", "edge_threshold"):
        value = getattr(args, name)
        if not 0 < value <= 1:
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be in (0, 1]")
    model = _load_model(args.model)
    splice(model, _dictionaries(args.model, args.sae, args.dictionaries, "--sae"))
    targets = [int(t) if t.isdigit() else t for t in args.target] if args.target else None
    graph = attribute(
        model, prompt, targets, batch_size=args.batch_size, max_feature_nodes=args.max_feature_nodes,
        prepend_bos=args.prepend_bos, zero_bos=args.zero_bos,
    )  # fmt: skip
    full_scores = graph.scores()
    if not args.no_prune:
        graph = graph.prune(args.node_threshold, args.edge_threshold)
    written = [graph.save(out)]
    if out.suffix.lower() == ".json":  # the front end's list of the folder's graphs
        from sae_circuits.writers.json_file import update_graph_metadata

        written.append(update_graph_metadata(out))
    if args.html and out.suffix.lower() != ".html":
        written.append(graph.save(out.with_suffix(".html")))
    counts = {k.name.lower(): int((graph.kind == k).sum()) for k in NodeKind}
    print(f"{len(graph.tokens)} tokens; kept {counts['feature']} features, {counts['error']} error nodes, "
          f"{graph.n_edges} edges; replacement {full_scores['replacement']:.3f}, "
          f"completeness {full_scores['completeness']:.3f} (unpruned)")  # fmt: skip
    influence = graph.influence()
    features = (graph.kind == NodeKind.FEATURE).nonzero().squeeze(-1)
    for node in features[influence[features].argsort(descending=True)[:8]].tolist():
        print(f"  {graph.labels[node]:<24} at {graph.token_strings[int(graph.position[node])]!r:<14} "
              f"activation {float(graph.activation[node]):6.2f}  "
              f"influence {float(influence[node]):.3f}")  # fmt: skip
    for path in written:
        print(f"wrote {path}")
    return 0


def _prompt_lines(path: str) -> list[str]:
    """``--prompts``: one prompt a line, escapes interpreted, blank lines skipped."""
    from sae_circuits._cli_common import read_text_option

    lines = read_text_option(path, "--prompts").splitlines()
    prompts = [unescape_prompt(line) for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path!r}: no prompt in it (one a line)")
    return prompts


def _write_attribution_graphs(args: argparse.Namespace) -> int:
    """``graph --prompts FILE --out DIR``: every prompt's graph, shared out over the ranks of a
    ``torchrun`` launch (one process without it)."""
    from pathlib import Path

    from sae_circuits.distributed import attribute_prompts, process_group_from_env
    from sae_circuits.splice import splice

    for option, given in (("--slug", args.slug is not None), ("--html", args.html)):
        if given:
            raise ValueError(f"{option}: not with --prompts (each graph is graph-NNNNN.json in --out)")
    out = Path(args.out)
    if out.suffix.lower() in (".json", ".html", ".graphml", ".dot", ".csv"):
        raise ValueError(f"--out {args.out!r}: with --prompts, --out is a folder, not a file")
    _check_writable(out / "graph-00000.json", "--out")
    for name in ("node_threshold", "edge_threshold"):
        value = getattr(args, name)
        if not 0 < value <= 1:
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be in (0, 1]")
    prompts = _prompt_lines(args.prompts)
    targets = [int(t) if t.isdigit() else t for t in args.target] if args.target else None
    thresholds = (None, None) if args.no_prune else (args.node_threshold, args.edge_threshold)
    with process_group_from_env() as where:
        model = _load_model(args.model)
        splice(model, _dictionaries(args.model, args.sae, args.dictionaries, "--sae"))
        done = attribute_prompts(
            model, prompts, out, targets=targets, batch_size=args.batch_size,
            max_feature_nodes=args.max_feature_nodes, prepend_bos=args.prepend_bos, zero_bos=args.zero_bos,
            node_threshold=thresholds[0], edge_threshold=thresholds[1],
        )  # fmt: skip
    print(f"rank {where.rank} of {where.world_size}: {len(done.computed)} graphs computed, "
          f"{len(done.skipped)} already there")  # fmt: skip
    if done.manifest is not None:
        print(f"wrote {len(done.files)} graphs to {out}, listed in {done.manifest}")
    return 0


def _automaton(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sae_circuits.fsa import automaton, probe_states, score_automaton
    from sae_circuits.languages import automata, corpus_texts
    from sae_circuits.splice import splice

    out = Path(args.out)
    _check_suffix(args.out, "automaton")
    _check_writable(out, "--out")
    if args.contexts < 1 or args.length < 2:
        raise ValueError(
            f"--contexts {args.contexts} / --length {args.length}: need at least 1 context of 2 tokens"
        )
    if not 0 <= args.min_weight <= 1:  # NaN fails too; checked by fsa.loops only after the work
        raise ValueError(f"--min-weight {args.min_weight}: expected a number in [0, 1]")
    if not args.spec and (args.corpus.lower().endswith(".json") or Path(args.corpus).is_file()):
        args.spec = args.corpus  # a spec file given as --corpus, as --help allows: checked as one
    if args.validate and args.length <= args.validate_context:
        raise ValueError(
            f"--length {args.length}: --validate draws windows of --validate-context "
            f"{args.validate_context} tokens and one more after; lower --validate-context or raise --length"
        )
    truth = automata.load_automaton(args.spec) if args.spec else args.corpus
    if args.spec:
        print(f"{args.spec}: automaton {truth.name!r}, {len(truth.states)} states")
    model = _load_model(args.model)
    splice(model, _dictionaries(args.model, args.saes, args.dictionaries, "--saes"))
    if args.spec:
        special = automata.special_token_symbols(model.tokenizer, truth)
        if special:  # no model's tokenizer can carry these (the model would read a document end)
            raise ValueError(
                f"{truth.name}: symbols {special!r} contain the tokenizer's special tokens; rename them"
            )
        try:
            automata.verify_tokenizer(model.tokenizer, n_docs=50, automata=[truth])
        except ValueError as error:
            raise ValueError(
                f"{error}. --model {args.model!r}: its tokenizer does not carry this spec's symbols; pass "
                f"the model trained on it (examples/byo_automaton.py writes OUT/model) and its --saes"
            ) from None
    texts, labels = corpus_texts(truth, args.contexts, args.length, seed=args.seed)
    fsa = automaton(model, texts, max_states=args.max_states, attention_contexts=args.attention_contexts,
                    effect=args.effect, exclusive=args.exclusive, prepend_bos=False)  # fmt: skip
    print(fsa)
    if labels is not None:
        true_fsa = automata.resolve(truth)
        score = score_automaton(fsa, labels, true_fsa)
        print(f"against the true {true_fsa.name} automaton: mean state F1 {score.mean_f1:.3f}, "
              f"transition AUROC {score.transition_auroc:.3f}")  # fmt: skip
        if score.note:
            print(f"  note: {score.note}")
        for state, f1 in score.state_f1.items():
            match = score.matches[state]
            print(
                f"  {state:<14} F1 {f1:.3f}  <- "
                + (f"state {match} {fsa.states[match].label}" if match >= 0 else "no state")
            )
        try:  # the probe fits on some texts and scores on others: a small corpus may not allow it
            ceiling = probe_states(fsa, model, labels, automaton=true_fsa)
            print(f"the model's own ceiling (a linear probe of the true states, held out): mean state F1 "
                  f"{ceiling.best_mean_f1:.3f} at {ceiling.best_site}")  # fmt: skip
        except ValueError as error:
            print(f"no probe of the true states: {error}")
    for loop in fsa.loops(5, min_lift=args.min_weight):
        print(f"  loop (score {loop.score:.2f}): " + " -> ".join(fsa.state(s).label for s in loop.states))
    print(f"wrote {fsa.save(out)}")
    if args.validate:  # after the save: a check that cannot run loses no extraction
        try:
            fsa.validate(model, top=args.validate, context=args.validate_context)
        except ValueError as error:
            raise ValueError(
                f"{error} (--validate-context {args.validate_context}; {out} holds the automaton, "
                "unvalidated)"
            ) from None
        confirmed = [t for t in fsa.transitions if t.confirmed]
        print(f"validated the {args.validate} heaviest transitions: {len(confirmed)} confirmed")
        print(f"wrote {fsa.save(out)} (with the checks)")
    return 0


def _features(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sae_circuits import zoo
    from sae_circuits.dashboard import write_dashboard
    from sae_circuits.languages import corpus_texts, probe_texts
    from sae_circuits.sae import SAE
    from sae_circuits.splice import spliced

    if Path(args.out).suffix.lower() != ".html":
        raise ValueError(f"--out {args.out!r}: a dashboard is an .html page")
    _check_writable(Path(args.out), "--out")
    model = _load_model(args.model)
    if args.sae:
        sae = SAE.load(args.sae)
        if args.site not in (sae.cfg.site, sae.cfg.hook_name):
            raise ValueError(
                f"--site {args.site!r}: the --sae dictionary sits at {sae.cfg.site!r}; give that site or "
                "another --sae"
            )
    elif args.model in zoo.names():
        found = [s for kind in ("resid", "transcoder") for s in zoo.load_saes(args.model, kind=kind)
                 if args.site in (s.cfg.site, s.cfg.hook_name)]  # fmt: skip
        if not found:
            raise ValueError(f"--site {args.site!r}: the embedded model has no dictionary there")
        sae = found[0]
    else:
        raise ValueError("--sae is required with a model that is not embedded")
    if args.text:
        from sae_circuits._cli_common import read_text_option

        texts = [read_text_option(path, "--text")[: args.chars] for path in args.text]
    else:
        blobs, code = probe_texts(seed=7)
        texts = (
            [t[: args.chars] for t in code + blobs]
            + corpus_texts("markup", 20, 96)[0]
            + corpus_texts("kvlog", 20, 96)[0]
        )
    n_ctx = model.cfg.n_ctx
    rows = [model.to_tokens(t, prepend_bos=False, truncate=False)[0][:n_ctx] for t in texts if t]
    with spliced(model, [sae]):
        path = write_dashboard(model, sae.cfg.site, args.feature, rows, args.out, k=args.k)
    print(f"wrote {path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from sae_circuits import serve

    serve.run(args.dir, port=args.port, host=args.host, verbose=args.verbose)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``sae-circuits`` argument parser: one subcommand per task, each with its handler as ``func``.

    >>> args = build_parser().parse_args(["serve", "out", "--port", "0"])
    >>> args.command, args.dir, args.port, args.host
    ('serve', 'out', 0, '127.0.0.1')
    """
    from sae_circuits import cli_analyses, writers  # the export formats (cheap: no torch)

    parser = argparse.ArgumentParser(
        prog="sae-circuits",
        description="Splice SAEs into TransformerLens models, steer features, trace circuits.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo_command(sub)
    _add_eval_command(sub)
    _add_graph_command(sub, writers)
    _add_automaton_command(sub, writers)
    _add_features_command(sub)
    _add_serve_command(sub)
    cli_analyses.add_commands(sub)
    return parser


def _add_demo_command(sub: Any) -> None:
    """The ``demo`` subcommand."""
    demo = sub.add_parser("demo", help="show a prompt's top features, then steer generation by clamping one")
    demo.add_argument("--prompt", default=None, help="prompt to analyse and continue")
    demo.set_defaults(func=_demo)


def _add_eval_command(sub: Any) -> None:
    """The ``eval`` subcommand."""
    ev = sub.add_parser(
        "eval", help="evaluate an SAE (SAEBench core metrics) beside a PCA baseline at the same L0"
    )
    ev.add_argument("--sae", required=True, help="SAE folder in the SAELens layout")
    _add_model_argument(ev)
    ev.add_argument(
        "--text", default=None, help="text file to evaluate on (default: offline code/markup/base64 text)"
    )
    ev.add_argument(
        "--sequences", type=_int_at_least(1), default=32, help="number of token rows (default 32)"
    )
    ev.add_argument("--seq-len", type=_int_at_least(2), default=128, help="tokens per row (default 128)")
    ev.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    ev.set_defaults(func=_eval)


def _add_graph_command(sub: Any, writers: Any) -> None:
    """The ``graph`` subcommand."""
    gr = sub.add_parser(
        "graph", help="attribution graph of a prompt: features, error nodes, edges; pruned and saved"
    )
    which = gr.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--prompt",
        help="the prompt to explain; backslash escapes are interpreted "
        "(\\n newline, \\t tab, \\\\ backslash, \\xHH, \\uHHHH)",
    )
    which.add_argument("--prompt-file", help="read the prompt from this UTF-8 file, as it is (no escapes)")
    which.add_argument(
        "--prompts",
        help="many prompts: a UTF-8 file, one prompt a line (escapes as in --prompt; blank lines "
        "skipped); --out is then a folder of graph-00000.json ... with graph-metadata.json and "
        "manifest.json; under torchrun the prompts are shared out over the ranks (docs/scale.md)",
    )
    gr.add_argument(
        "--out",
        required=True,
        help=f"output file: {writers.suffix_list('graph')} (.json: the front end's schema, listed in "
        "graph-metadata.json beside it); or a folder (DIR/) that gets SLUG.json",
    )
    gr.add_argument(
        "--slug", default=None, help="the graph's name in a folder --out (default: from the prompt)"
    )
    gr.add_argument(
        "--html", action="store_true", help="also write an HTML view beside --out (not with --prompts)"
    )
    _add_model_argument(gr)
    gr.add_argument(
        "--dictionaries",
        choices=("transcoder", "resid", "all"),
        default="transcoder",
        help="embedded dictionaries to splice (default: transcoder, whose edges are exact)",
    )
    gr.add_argument("--sae", action="append", help="SAE/transcoder folder to splice instead (repeatable)")
    gr.add_argument(
        "--target", action="append", help="a target token (text or id; repeatable; default: top tokens)"
    )
    gr.add_argument(
        "--node-threshold", type=float, default=0.8, help="influence kept by node pruning (default 0.8)"
    )
    gr.add_argument(
        "--edge-threshold", type=float, default=0.98, help="influence kept by edge pruning (default 0.98)"
    )
    gr.add_argument("--no-prune", action="store_true", help="save the full graph")
    gr.add_argument(
        "--max-feature-nodes",
        type=_node_budget,
        default=7500,
        help="most features to expand (default 7500, as circuit-tracer; 'all': every one)",
    )
    gr.add_argument(
        "--batch-size",
        type=_batch_size,
        default=64,
        help="target rows per backward pass (default 64; 'auto': as many as fit in a quarter of free memory)",
    )
    gr.add_argument(
        "--prepend-bos",
        action="store_true",
        help="prepend the BOS token (the embedded model is trained without)",
    )
    gr.add_argument(
        "--zero-bos",
        action="store_true",
        help="no feature or error node at position 0, as circuit-tracer does (see docs/attribution.md)",
    )
    gr.set_defaults(func=_write_attribution_graph)


def _add_automaton_command(sub: Any, writers: Any) -> None:
    """The ``automaton`` subcommand."""
    au = sub.add_parser(
        "automaton", help="the automaton features form over an offline corpus, scored against its truth"
    )
    au.add_argument(
        "--corpus",
        default="markup",
        help="markup, kvlog (known automata), base64, or a JSON spec file (read as --spec; default: markup)",
    )
    au.add_argument("--spec", default=None, help="your own automaton: a JSON spec file (replaces --corpus)")
    _add_model_argument(au)
    au.add_argument(
        "--saes",
        nargs="+",
        default=None,
        help="SAE/transcoder folders to splice (default: the embedded ones)",
    )
    au.add_argument("--out", required=True, help=f"output file: {writers.suffix_list('automaton')}")
    au.add_argument(
        "--dictionaries",
        choices=("resid", "transcoder", "all"),
        default="resid",
        help="embedded dictionaries to splice (default: resid; ignored with --saes)",
    )
    au.add_argument("--contexts", type=_int_at_least(1), default=200, help="number of texts (default 200)")
    au.add_argument("--length", type=_int_at_least(2), default=128, help="symbols per text (default 128)")
    au.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the generated texts (default 1: held out, as the embedded model and "
        "examples/byo_automaton.py train on seed 0's)",
    )
    au.add_argument("--max-states", type=_int_at_least(1), default=256, help="most states (default 256)")
    au.add_argument(
        "--attention-contexts",
        type=_int_at_least(0),
        default=8,
        help="texts for attention transitions (default 8)",
    )
    au.add_argument(
        "--effect",
        choices=("pin", "remove", "both"),
        default="pin",
        help="how a state's effect on the next token is measured (default pin; see sc.automaton)",
    )
    au.add_argument(
        "--no-exclusive",
        dest="exclusive",
        action="store_false",
        help="pin a state on top of the position's state instead of replacing it (see sc.automaton)",
    )
    au.add_argument(
        "--min-weight",
        type=float,
        default=0.0,
        help="a printed loop's steps must be stronger than this (default 0; see fsa.loops)",
    )
    au.add_argument(
        "--validate",
        type=_int_at_least(0),
        default=0,
        help="validate the N heaviest transitions (default 0: none)",
    )
    au.add_argument(
        "--validate-context",
        type=_int_at_least(1),
        default=32,
        help="tokens in each prompt window of --validate (default 32; texts need one more)",
    )
    au.set_defaults(func=_automaton)


def _add_features_command(sub: Any) -> None:
    """The ``features`` subcommand."""
    fe = sub.add_parser(
        "features", help="a feature's dashboard: top contexts, histogram, logit effects, steering"
    )
    fe.add_argument(
        "--site", required=True, help="the dictionary's hook name (e.g. blocks.1.hook_resid_post)"
    )
    fe.add_argument("--feature", type=int, required=True, help="feature index")
    fe.add_argument("--out", required=True, help="output .html page")
    _add_model_argument(fe)
    fe.add_argument("--sae", default=None, help="SAE folder (default: the embedded dictionary at --site)")
    fe.add_argument(
        "--text", action="append", help="text file to read contexts from (repeatable; default: offline mix)"
    )
    fe.add_argument(
        "--chars", type=_int_at_least(1), default=1200, help="characters read per text (default 1200)"
    )
    fe.add_argument("-k", type=_int_at_least(1), default=12, help="top contexts shown (default 12)")
    fe.set_defaults(func=_features)


def _add_serve_command(sub: Any) -> None:
    """The ``serve`` subcommand."""
    sv = sub.add_parser(
        "serve", help="serve a folder of graphs, automata and dashboards on 127.0.0.1 (loopback only)"
    )
    sv.add_argument("dir", help="the folder to serve")
    sv.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    sv.add_argument(
        "--host", default="127.0.0.1", help="a loopback address or localhost only (default 127.0.0.1)"
    )
    sv.add_argument("--verbose", action="store_true", help="log each request")
    sv.set_defaults(func=_serve)


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``) and return its exit status: 0 when it
    worked, 2 with one line on stderr for a user's error (a bad value, a missing folder, a busy
    port); a bug in the library raises with its traceback.

    >>> main(["serve", "no-such-folder"])   # stderr: sae-circuits serve: error: cannot serve ...
    2
    """
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # the caller's warning filters are left as they were
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            # transformers' rename, which the bridge's generation still uses (sae_circuits/_compat.py)
            warnings.filterwarnings(
                "ignore", message="`past_key_values` is deprecated", category=FutureWarning
            )
            return int(args.func(args))
    except Exception as err:  # bad input, a busy port, an unwritable folder: one clear line, no traceback
        if not _user_error(err):
            raise  # a genuine bug: the traceback helps
        print(f"sae-circuits {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2


def _message(err: BaseException) -> str:
    """``err`` in one line; an OSError without its ``[Errno n]`` prefix."""
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror + (f": {str(err.filename)!r}" if err.filename is not None else "")
    else:
        text = str(err) or type(err).__name__
    return re.sub(r"\s*\n\s*", " ", text).strip()  # one line; spaces inside a quoted value kept


def _user_error(err: BaseException) -> bool:
    """The library's own errors, OS errors (busy port, unwritable folder), bad values (ValueError, TypeError,
    OverflowError)."""
    return isinstance(err, (ValueError, TypeError, OSError, OverflowError)) or type(
        err
    ).__module__.startswith("sae_circuits.")


# deprecated (one release): corpus_texts moved to sae_circuits.languages
__getattr__ = renamed(__name__, {"corpus_texts": "sae_circuits.languages.corpus_texts"})


if __name__ == "__main__":
    sys.exit(main())
