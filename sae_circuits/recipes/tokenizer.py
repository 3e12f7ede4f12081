"""Byte-level BPE tokenizer of the zoo (GPT-2 style, ``<|endoftext|>`` only).

Trained with the ``tokenizers`` library on a weighted sample of the training
split of the corpus, saved as ``tokenizer.json`` plus the two small files
``transformers.AutoTokenizer.from_pretrained(dir)`` needs to load it offline.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from sae_circuits._files import atomic_write_text
from sae_circuits.languages import automata
from sae_circuits.languages.corpus import SUBCORPORA, load_docs

EOT = "<|endoftext|>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Share of each sub-corpus in the tokenizer's training sample.  base64 is
# kept small on purpose: its 64^2 character pairs are all about equally
# frequent and would otherwise spend much of the vocabulary on noise.  The
# automata get enough text for BPE to learn every symbol as one token.
SAMPLE_WEIGHTS: dict[str, float] = {
    "code": 0.45,
    "english": 0.30,
    "base64": 0.05,
    "markup": 0.10,
    "kvlog": 0.10,
}


def sample_texts(corpus_dir: Path, total_bytes: int, seed: int = 0) -> Iterator[str]:
    """Yield training documents (seeded order) until each sub-corpus' byte share is used."""
    for name in SUBCORPORA:
        docs = list(load_docs(corpus_dir, name, "train"))
        random.Random(f"tok:{name}:{seed}").shuffle(docs)
        budget = int(SAMPLE_WEIGHTS[name] * total_bytes)
        for doc in docs:
            if budget <= 0:
                break
            text = doc.text[:budget]
            budget -= len(text)
            yield text


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE with ``<|endoftext|>`` as token 0."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        # All 256 bytes, so that any text can be encoded (no unknown token).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: str | os.PathLike[str]) -> None:
    """Write ``tokenizer.json`` and the GPT-2 style config files for ``transformers``."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "tokenizer.json", tok.to_str(pretty=True))  # what tok.save writes
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    config = {
        # The generic backend loads tokenizer.json as is; naming GPT2Tokenizer
        # would let transformers rebuild the pipeline from its own defaults.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": 512,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }
    atomic_write_text(out_dir / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out_dir / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")


def load_tokenizer(tok_dir: str | os.PathLike[str]) -> Tokenizer:
    """Load the ``tokenizers`` object saved by :func:`save_tokenizer` (a folder with ``tokenizer.json``)."""
    path = Path(tok_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{tok_dir}: no tokenizer.json there (a folder written by save_tokenizer)")
    return Tokenizer.from_file(str(path))


def check_with_transformers(tok_dir: Path, texts: list[str]) -> None:
    """Load with ``AutoTokenizer`` offline; check ids and exact text round trip."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    raw = load_tokenizer(tok_dir)
    if hf.eos_token != EOT or hf.bos_token != EOT or hf.eos_token_id != raw.token_to_id(EOT):
        raise ValueError("special tokens not loaded as <|endoftext|>")
    for text in texts:
        ids = hf(text)["input_ids"]
        if ids != raw.encode(text).ids:
            raise ValueError("transformers and tokenizers disagree on ids")
        if hf.decode(ids) != text:
            raise ValueError(f"round trip failed for {text[:80]!r}")


def tokenizer_for_automaton(
    automaton: automata.Automaton | str | dict[str, Any],
    out_dir: str | os.PathLike[str],
    base_dir: str | os.PathLike[str] | None = None,
    n_docs: int = 200,
) -> Path:
    """A tokenizer folder in which every symbol of ``automaton`` (an ``Automaton``, a built-in's name
    or a spec dict) is one token in context.

    ``base_dir`` (default: the zoo tokenizer) is returned unchanged when it already passes
    :func:`~sae_circuits.languages.automata.verify_tokenizer` (each symbol alone, every pair of
    symbols that can follow each other, ``n_docs`` documents), so models trained on it stay
    comparable. Otherwise every symbol becomes an *added token* of a copy written to ``out_dir``:
    ``tokenizers`` matches added tokens in the raw text first, leftmost-longest, and byte-level BPE
    encodes what is left, so ``" SELECT"`` or ``"<div>"`` become one token, ``")"`` then ``")"``
    two. Adding them all (not only the failing ones) makes every symbol boundary start a match of
    its own, so the one way left to fuse is a symbol that spells several, which
    :func:`~sae_circuits.languages.automata.swallowing_symbol` rules out exhaustively. Other text
    still encodes, but an added symbol is matched everywhere (``" SELECT"`` inside
    ``" SELECTED"``, ``"a"`` inside ``"banana"``), also in other corpora trained beside it. The
    new ids follow the base vocabulary, which suits a model trained from scratch (not one already
    trained on the base). The copy is checked, in a staging folder, against ``verify_tokenizer``
    and ``transformers``' loader (ids and round trip) before its files are moved into ``out_dir``.

    Raises ``ValueError`` when a symbol spells several others where a document has them (symbols
    ``"x"``, ``"y"`` and ``"xy"``; or ``"a"``, ``"q"``, ``"cd"`` and ``"aqc"``: read longest first,
    ``"aqc"`` swallows the first two), for a symbol that, added, does not decode back (one made
    only of the byte-level decoder's 256 byte characters, not all ASCII: ``"café"``, ``"°C"``;
    ``" café"`` and ``"λé"`` are fine), and for a symbol containing ``<|endoftext|>`` or a run of
    symbols that spells it.

    >>> spec = automata.Automaton("sql", ("KW", "COL"), {"START": {"KW": (" SELECT",)},
    ...     "KW": {"COL": (" price", " qty")}, "COL": {"KW": (" FROM",)}})
    >>> folder = tokenizer_for_automaton(spec, "tok")  # a new folder: the zoo splits these words
    >>> load_tokenizer(folder).encode(" SELECT price FROM").tokens
    [' SELECT', ' price', ' FROM']
    """
    automaton = automata.resolve(automaton)
    if base_dir is None:
        from sae_circuits.zoo import ROOT

        base_dir = ROOT / "tiny"
    base, out = Path(base_dir), Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"out_dir {str(out)!r} is a file: expected a folder (new or existing) for the tokenizer"
        )
    tok = load_tokenizer(base)
    special = automata.special_token_symbols(tok, automaton)  # EOT, or any other special token of base
    if special:
        raise ValueError(
            f"{automaton.name}: symbols {special!r} contain a special token of the tokenizer, such as "
            f"{EOT!r}, the document separator; rename them"
        )
    # A run of symbols that spells the separator is checked exhaustively, not only in the sampled
    # documents: the base tokenizer would read it as one EOT token inside a document.
    eot_run = automata.swallowing_symbol(automaton, extra=[EOT])
    if eot_run is not None and eot_run[0] == EOT:
        raise ValueError(
            f"{automaton.name}: the symbols {eot_run[1]!r} spell {EOT!r}, the document separator, where a "
            "document has them in a row; rename a symbol"
        )
    if not automata.unstable_symbols(tok, automaton, n_docs):
        return base
    # Every symbol, not only the failing ones: then every symbol boundary starts a match of its own,
    # and the one way left to fuse is a symbol that spells several (checked exhaustively below).
    swallow = eot_run
    if swallow is not None:
        token, symbols = swallow
        raise ValueError(
            f"{automaton.name}: {token!r} is read first where a document has the symbols {symbols!r} "
            "and swallows them: no tokenizer that matches the symbols as whole tokens, longest first, "
            "keeps them one token each; rename a symbol"
        )
    symbols = sorted(automaton.alphabet)
    tok.add_tokens(
        [AddedToken(s, normalized=False, single_word=False, lstrip=False, rstrip=False) for s in symbols]
    )
    garbled = [s for s in symbols if tok.decode(tok.encode(s).ids) != s]
    if garbled:
        # the byte-level decoder reads a token made only of its 256 byte characters as bytes
        culprits = "".join(sorted({c for s in garbled for c in s if ord(c) > 127}))
        raise ValueError(
            f"{automaton.name}: symbols {garbled!r}, added as tokens, do not decode back: each is made only "
            f"of characters the byte-level decoder reads as raw bytes ({culprits!r} are not ASCII); a "
            "leading space or any other character fixes it (' café', not 'café')"
        )
    automata.verify_tokenizer(tok, n_docs=n_docs, automata=[automaton])  # a backstop
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        tok.save(str(staging / "tokenizer.json"))
        for name in TOKENIZER_FILES[1:]:
            (staging / name).write_bytes((base / name).read_bytes())
        docs = automata.generate(automaton, n_docs, seed=12345)  # verify_tokenizer's documents
        check_with_transformers(staging, ["".join(doc) for doc, _ in docs])
        out.mkdir(exist_ok=True)
        vocabulary_last = sorted(TOKENIZER_FILES, key=lambda name: name == "tokenizer.json")
        for name in vocabulary_last:  # each file whole; the one the loaders read, last
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def build_tokenizer(corpus_dir: Path, out_dir: Path, vocab_size: int, sample_bytes: int) -> Tokenizer:
    """Train, verify the automaton symbols are single tokens, save, check loading."""
    tok = train_tokenizer(sample_texts(corpus_dir, sample_bytes), vocab_size)
    automata.verify_tokenizer(tok)  # refuse a tokenizer that breaks alignment
    save_tokenizer(tok, out_dir)
    probes = [next(load_docs(corpus_dir, name, "val")).text[:2000] for name in SUBCORPORA]
    check_with_transformers(out_dir, probes + [f"a{EOT}b", "  x\n\n\ty ü€😀"])
    return tok
