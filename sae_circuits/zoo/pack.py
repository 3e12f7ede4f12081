"""Tokenize the corpus and pack it into fixed-length ``uint16`` sequences.

Outputs (in ``<build>/tokens/``):

* ``train.npy``        ``(n_rows, seq_len)`` documents of all sub-corpora,
                       shuffled together, each followed by ``<|endoftext|>``;
* ``train_source.npy`` same shape, ``uint8`` index into ``SUBCORPORA`` of the
                       document each token belongs to (per-sub-corpus train loss);
* ``val_<name>.npy``   ``(n_rows, seq_len)`` one file per sub-corpus, so the
                       validation loss can be reported per sub-corpus.

Rows are cut from one continuous stream, so a document may span rows; the
incomplete tail of each stream is dropped.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from sae_circuits.zoo import automata
from sae_circuits.zoo.corpus import SUBCORPORA, Doc, load_docs
from sae_circuits.zoo.tokenizer import EOT


def encode_docs(tok: Tokenizer, docs: list[Doc]) -> list[np.ndarray]:
    """Token ids of each document, as ``uint16`` arrays (vocab < 65536)."""
    if tok.get_vocab_size() > np.iinfo(np.uint16).max:
        raise ValueError("vocabulary too large for uint16")
    encodings = tok.encode_batch([d.text for d in docs])
    return [np.asarray(e.ids, dtype=np.uint16) for e in encodings]


def check_automaton_docs(tok: Tokenizer, name: str, encoded: list[np.ndarray]) -> None:
    """Run automaton ``name`` over the tokens of every document.

    ``automata.label`` raises unless each token is a symbol the automaton
    accepts in its state, so this catches any token that fused two symbols.
    """
    strings = [tok.decode([i]) for i in range(tok.get_vocab_size())]
    for ids in encoded:
        automata.label(name, [strings[i] for i in ids])


def pack(encoded: list[np.ndarray], eot: int, seq_len: int) -> np.ndarray:
    """Concatenate documents, each followed by ``eot``, and cut into rows."""
    return _cut(np.concatenate([np.append(ids, np.uint16(eot)) for ids in encoded]), seq_len)


def _cut(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Reshape a 1-d stream into ``seq_len`` rows, dropping the incomplete tail."""
    n_rows = len(stream) // seq_len
    return stream[: n_rows * seq_len].reshape(n_rows, seq_len)


def build_token_arrays(
    corpus_dir: Path, tok: Tokenizer, out_dir: Path, seq_len: int = 512, seed: int = 0
) -> dict:
    """Write the ``.npy`` arrays described in the module docstring; return sizes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    eot = tok.token_to_id(EOT)
    assert eot is not None  # train_tokenizer makes EOT a special token (id 0)
    sizes: dict = {}
    train_docs: list[tuple[int, np.ndarray]] = []
    for src, name in enumerate(SUBCORPORA):
        for split in ("train", "val"):
            encoded = encode_docs(tok, list(load_docs(corpus_dir, name, split)))
            if name in automata.AUTOMATA:
                check_automaton_docs(tok, name, encoded)
            n_tokens = int(sum(len(ids) + 1 for ids in encoded))  # + end-of-text
            sizes.setdefault(name, {})[split] = {"docs": len(encoded), "tokens": n_tokens}
            if split == "train":
                train_docs += [(src, ids) for ids in encoded]
                continue
            rows = pack(encoded, eot, seq_len)
            if len(rows) == 0:
                raise ValueError(f"validation split of {name} is shorter than {seq_len} tokens")
            np.save(out_dir / f"val_{name}.npy", rows)
            sizes[name]["val"]["rows"] = len(rows)

    # Interleave documents of all sub-corpora in a seeded random order.
    random.Random(f"pack:{seed}").shuffle(train_docs)
    rows = pack([ids for _, ids in train_docs], eot, seq_len)
    # Sub-corpus of every token (a document's end-of-text counts as its own).
    source = _cut(
        np.concatenate([np.full(len(ids) + 1, src, dtype=np.uint8) for src, ids in train_docs]), seq_len
    )
    np.save(out_dir / "train.npy", rows)
    np.save(out_dir / "train_source.npy", source)
    sizes["train_rows"] = len(rows)
    return sizes
