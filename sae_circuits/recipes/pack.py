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

:func:`pack_mix` does the same in memory for any mix of named text lists (a
user's own corpus), splitting each into train and validation documents.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer

from sae_circuits.languages import automata
from sae_circuits.languages.corpus import SUBCORPORA, Doc, load_docs
from sae_circuits.recipes.tokenizer import EOT


def encode_docs(tok: Tokenizer, docs: list[Doc]) -> list[np.ndarray]:
    """Token ids of each document, as ``uint16`` arrays (vocab < 65536)."""
    return encode_texts(tok, [d.text for d in docs])


def encode_texts(tok: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text, as ``uint16`` arrays (vocab < 65536)."""
    if tok.get_vocab_size() > np.iinfo(np.uint16).max:
        raise ValueError("vocabulary too large for uint16")
    return [np.asarray(e.ids, dtype=np.uint16) for e in tok.encode_batch(list(texts))]


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

    rows, source = _pack_train(train_docs, eot, seq_len, seed)
    np.save(out_dir / "train.npy", rows)
    np.save(out_dir / "train_source.npy", source)
    sizes["train_rows"] = len(rows)
    return sizes


def _pack_train(
    train_docs: list[tuple[int, np.ndarray]], eot: int, seq_len: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the shuffled training documents and the sub-corpus index of every token."""
    # Interleave documents of all sub-corpora in a seeded random order.
    random.Random(f"pack:{seed}").shuffle(train_docs)
    rows = pack([ids for _, ids in train_docs], eot, seq_len)
    # Sub-corpus of every token (a document's end-of-text counts as its own).
    source = _cut(
        np.concatenate([np.full(len(ids) + 1, src, dtype=np.uint8) for src, ids in train_docs]), seq_len
    )
    return rows, source


def _refuse_separator(name: str, encoded: list[np.ndarray], eot: int) -> None:
    """A text holding the separator would read as two documents to the model: refuse it."""
    for i, ids in enumerate(encoded):
        if (ids == eot).any():
            raise ValueError(
                f"sub-corpus {name!r}, text {i}: it holds {EOT!r}, the document separator, so the model "
                "would read it as two documents; remove it from the text"
            )


class PackedCorpus(NamedTuple):
    """A tokenized, packed corpus mix held in memory (see :func:`pack_mix`)."""

    names: tuple[str, ...]
    """The sub-corpora, in the order ``train_source`` indexes them."""
    train: np.ndarray
    """``(n_rows, seq_len)`` ``uint16`` token rows of all sub-corpora, shuffled together."""
    train_source: np.ndarray
    """Same shape, ``uint8``: index into ``names`` of the document of each token."""
    val: dict[str, np.ndarray]
    """Validation rows ``(n_rows, seq_len)`` per sub-corpus."""
    sizes: dict
    """Documents, tokens and rows per sub-corpus and split."""


def pack_mix(
    tok: Tokenizer,
    mix: Mapping[str, Sequence[str]] | Sequence[str],
    seq_len: int,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> PackedCorpus:
    """Tokenize and pack a corpus mix (``name -> texts``, or one list of texts) in memory.

    The last ``ceil(val_fraction * n)`` texts of each sub-corpus are its validation split (give
    texts in random order); every split must fill at least one row of ``seq_len`` tokens.
    Raises ``ValueError`` naming an empty corpus or a too-short split.

    >>> tok = Tokenizer.from_file(str(sc.zoo.model_path("tiny") / "tokenizer.json"))
    >>> corpus = pack_mix(tok, {"markup": texts}, seq_len=16, val_fraction=0.25)
    >>> corpus.names, corpus.train.shape, corpus.train.dtype, corpus.val["markup"].shape
    (('markup',), (16, 16), dtype('uint16'), (6, 16))
    """
    if isinstance(mix, str):
        raise ValueError(
            f"mix: expected texts (a list, or a mapping name -> list), got one string {mix[:40]!r}"
        )
    if not isinstance(mix, Mapping):
        mix = {"corpus": list(mix)}
    if "train_rows" in mix:
        raise ValueError(
            "a sub-corpus named 'train_rows': the name is taken by the count of training rows in sizes"
        )
    if not mix or not any(any(t for t in texts) for texts in mix.values()):
        raise ValueError(f"empty corpus: sub-corpora {list(mix)} hold no text")
    if len(mix) > np.iinfo(np.uint8).max:
        raise ValueError(f"{len(mix)} sub-corpora: at most 255")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}: expected a fraction in (0, 1) (the validation split)")
    automata.check_count("seq_len", seq_len, 1)  # tokens per row
    eot = tok.token_to_id(EOT)
    if eot is None:
        raise ValueError(f"the tokenizer has no {EOT} token")
    sizes: dict = {}
    train_docs: list[tuple[int, np.ndarray]] = []
    val: dict[str, np.ndarray] = {}
    for src, (name, texts) in enumerate(mix.items()):
        if isinstance(texts, str):
            raise ValueError(f"sub-corpus {name!r}: expected a list of texts, got one string")
        n_val = math.ceil(round(val_fraction * len(texts), 9))  # 0.07 * 100 is 7.000000000000001
        if len(texts) - n_val < 1:
            raise ValueError(
                f"sub-corpus {name!r}: {len(texts)} texts leave none for training at "
                f"val_fraction={val_fraction}"
            )
        train_enc = encode_texts(tok, texts[: len(texts) - n_val])
        val_enc = encode_texts(tok, texts[len(texts) - n_val :])
        _refuse_separator(name, train_enc + val_enc, eot)
        train_docs += [(src, ids) for ids in train_enc]
        val_rows = pack(val_enc, eot, seq_len)
        n_tokens = int(sum(len(ids) + 1 for ids in val_enc))
        if len(val_rows) == 0:
            raise ValueError(
                f"empty validation split: sub-corpus {name!r} has {n_tokens} validation tokens "
                f"({n_val} texts), fewer than one row of seq_len={seq_len}; give more texts or a "
                "larger val_fraction"
            )
        val[name] = val_rows
        sizes[name] = {
            "train": {"docs": len(train_enc), "tokens": int(sum(len(ids) + 1 for ids in train_enc))},
            "val": {"docs": len(val_enc), "tokens": n_tokens, "rows": len(val_rows)},
        }
    rows, source = _pack_train(train_docs, eot, seq_len, seed)
    if len(rows) == 0:
        total = sum(v["train"]["tokens"] for v in sizes.values())
        raise ValueError(f"empty corpus: {total} training tokens, fewer than one row of seq_len={seq_len}")
    sizes["train_rows"] = len(rows)
    return PackedCorpus(tuple(mix), rows, source, val, sizes)
