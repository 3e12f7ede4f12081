"""Randomly initialised GPT-2-shaped models with a real byte-level BPE tokenizer, built offline.

For tests and benchmarks that need a model of a given shape (e.g. GPT-2-small width, or a long
context) rather than the trained embedded one. TransformerLens generation needs a real
tokenizer, so one is trained in well under a second on the Python standard library's source.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Any

import torch

from sae_circuits.zoo.loader import ModelKind, load_hf_gpt2


def train_small_tokenizer(folder: str | os.PathLike[str], vocab_size: int = 512, n_files: int = 40) -> Path:
    """Train the recipe's byte-level BPE on a few stdlib modules; save it as a Hugging Face tokenizer."""
    from sae_circuits.recipes.tokenizer import save_tokenizer, train_tokenizer

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:n_files]
    texts = (f.read_text(errors="ignore") for f in files)
    save_tokenizer(train_tokenizer(texts, vocab_size), Path(folder))
    return Path(folder)


def random_gpt2(
    folder: str | os.PathLike[str],
    *,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_ctx: int = 128,
    d_mlp: int | None = None,
    vocab_size: int = 512,
    seed: int = 0,
    kind: ModelKind | None = None,
) -> Any:
    """Save a random GPT-2 (dropout off) with a BPE tokenizer in ``folder``; load it as ``kind``
    (``None``: the loader's default, a ``HookedTransformer`` on TransformerLens 3.x, else a bridge)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        train_small_tokenizer(folder, vocab_size=vocab_size)
        vocab = len(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
        config = GPT2Config(
            vocab_size=vocab, n_positions=n_ctx, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
            n_inner=d_mlp, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):  # the caller's random numbers go on as before
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(config)
        model.save_pretrained(str(folder))
    return load_hf_gpt2(folder, kind)
