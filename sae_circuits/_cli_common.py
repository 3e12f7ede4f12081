"""What the ``sae-circuits`` subcommands share: loading the model a command names, checking an
output can be written before the long work, the ``--model`` option and integer options' bounds.
Kept apart from :mod:`sae_circuits.cli` so that the analyses' commands
(:mod:`sae_circuits.cli_analyses`) use it without importing the CLI back."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def load_model(spec: str) -> Any:  # a HookedTransformer (zoo.load_model and load_hf_model give Any)
    """The model ``--model`` names: an embedded model, or a Hugging Face model folder."""
    from sae_circuits import zoo
    from sae_circuits.zoo.loader import load_hf_model

    if spec in zoo.names():
        return zoo.load_model(spec)
    if Path(spec, "config.json").is_file():
        return load_hf_model(spec)
    raise ValueError(
        f"--model {spec!r}: not an embedded model ({zoo.names()}) nor a Hugging Face model folder"
    )


def check_writable(path: Path, option: str) -> None:
    """Fail before the long computation, not after it, when ``path``'s folder cannot be written
    (its nearest existing ancestor, since the writers create missing folders), or ``path`` is a
    folder."""
    import errno
    import tempfile

    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{option} {str(path)!r}: is a folder, not a file to write")
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OSError(
            err.errno, f"{option} {str(path)!r}: cannot write to {str(folder)!r} ({reason})"
        ) from None


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--model`` (default: the embedded ``tiny``) to ``parser``."""
    parser.add_argument(
        "--model",
        default="tiny",
        help="embedded model name or Hugging Face model folder (GPT-2, or any architecture TransformerLens's "
        "bridge knows: Llama, GPT-NeoX, ...) (default: tiny)",
    )


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def read_text_option(path: str, option: str) -> str:
    """The UTF-8 text of the file an option names, or one error naming the option and the file
    (a file in another encoding is refused, not read with characters dropped)."""
    from pathlib import Path

    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ValueError(f"{option} {path!r}: cannot read it as UTF-8 text ({reason})") from None


def check_context(model: Any, tokens: int, what: str) -> None:
    """Refuse ``tokens`` positions past the model's context (``what`` says where they come from)."""
    n_ctx = int(model.cfg.n_ctx)
    if tokens > n_ctx:
        raise ValueError(f"{what}: {tokens} tokens, more than the model's context of {n_ctx}")
