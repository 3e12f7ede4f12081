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

EOT = "<|endoftext|>"


def train_small_tokenizer(folder: str | os.PathLike[str], vocab_size: int = 512, n_files: int = 40) -> Path:
    """Train a byte-level BPE on a few stdlib modules; save it as a Hugging Face tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:n_files]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(f) for f in files], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)
    fast.save_pretrained(str(folder))
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
    kind: ModelKind = "hooked",
) -> Any:
    """Save a random GPT-2 (dropout off) with a BPE tokenizer in ``folder``; load it as ``kind``."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        train_small_tokenizer(folder, vocab_size=vocab_size)
        vocab = len(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=vocab, n_positions=n_ctx, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
            n_inner=d_mlp, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        GPT2LMHeadModel(config).save_pretrained(str(folder))
    return load_hf_gpt2(folder, kind)
