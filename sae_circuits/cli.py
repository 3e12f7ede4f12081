"""The ``sae-circuits`` command."""

from __future__ import annotations

import argparse
import sys
import warnings


def _demo(args: argparse.Namespace) -> int:
    from sae_circuits import demo

    demo.run(prompt=args.prompt) if args.prompt else demo.run()
    return 0


def _load_model(spec: str) -> object:
    from pathlib import Path

    from sae_circuits import zoo
    from sae_circuits.zoo.loader import load_hf_gpt2

    if spec in zoo.names():
        return zoo.load_model(spec)
    if Path(spec, "config.json").is_file():
        return load_hf_gpt2(spec)
    raise SystemExit(f"--model {spec!r}: not an embedded model ({zoo.names()}) nor a Hugging Face model folder")


def _eval_tokens(model: object, text_file: str | None, n_seq: int, seq_len: int) -> object:
    """Token rows from a text file, or (default) offline text: stdlib code, markup and base64."""
    from pathlib import Path

    import torch

    if text_file:
        text = Path(text_file).read_text(errors="ignore")
    else:
        from sae_circuits.zoo import automata
        from sae_circuits.zoo.base64_steering import probe_texts

        blobs, code = probe_texts(seed=7)
        markup = ["".join(symbols) for symbols, _ in automata.generate("markup", 20, seed=7)]
        text = "\n".join(code + blobs + markup)
    ids = torch.tensor(model.tokenizer(text)["input_ids"])  # type: ignore[attr-defined]  # to_tokens truncates to n_ctx
    n = min(n_seq, ids.numel() // seq_len)
    if n == 0:
        raise SystemExit(f"the text has fewer than {seq_len} tokens")
    return ids[: n * seq_len].view(n, seq_len).to(torch.long)


def _eval(args: argparse.Namespace) -> int:
    import json

    from sae_circuits.evals import evaluate
    from sae_circuits.io import atomic_write_text
    from sae_circuits.sae import SAE

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-circuits",
        description="Splice SAEs into TransformerLens models, steer features, trace circuits.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="show a prompt's top features, then steer generation by clamping one")
    demo.add_argument("--prompt", default=None, help="prompt to analyse and continue")
    demo.set_defaults(func=_demo)
    ev = sub.add_parser("eval", help="evaluate an SAE (SAEBench core metrics) beside a PCA baseline at the same L0")
    ev.add_argument("--sae", required=True, help="SAE folder in the SAELens layout")
    ev.add_argument("--model", default="tiny", help="embedded model name or Hugging Face model folder (default: tiny)")
    ev.add_argument("--text", default=None, help="text file to evaluate on (default: offline code/markup/base64 text)")
    ev.add_argument("--sequences", type=int, default=32, help="number of token rows (default 32)")
    ev.add_argument("--seq-len", type=int, default=128, help="tokens per row (default 128)")
    ev.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    ev.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, TypeError) as err:  # bad input: one clear line, no traceback
        print(f"sae-circuits {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
