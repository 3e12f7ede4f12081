"""The ``sae-circuits`` command."""

from __future__ import annotations

import argparse
import sys
import warnings


def _demo(args: argparse.Namespace) -> int:
    from sae_circuits import demo

    demo.run(prompt=args.prompt) if args.prompt else demo.run()
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
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
