"""Explanations as small, checkable predicates over tokens: a token set, a regular expression, a
true automaton state, or any function (how an LLM-written explanation plugs in).

A predicate gives every token of some token rows a value: 1 (the explanation says the feature
fires here), 0 (it does not), a graded value in between, or NaN (no verdict: the token is left out
of the scores). :mod:`sae_circuits.analysis.explain` scores predicates against a feature.

1. Decode once: :func:`token_rows` decodes the whole vocabulary and every token of the rows
   *alone*; the text of a row is the concatenation of its tokens' strings, so character offsets
   map to tokens exactly (a token split inside a UTF-8 character decodes to U+FFFD on its own).
2. Evaluate: each predicate reads what it needs (ids, strings, texts) and returns
   ``[batch, pos]`` values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sae_circuits.analysis._stats import check_tokens
from sae_circuits.languages import automata


@dataclass(frozen=True)
class TokenRows:
    """Token rows with their decoded strings: what a predicate reads."""

    tokens: Int[Tensor, "batch pos"]
    """Token ids."""
    strings: list[list[str]]
    """``strings[row][pos]``: that token decoded alone."""
    vocab: list[str] = field(repr=False)
    """The name of every token id of the model's vocabulary: its decoded string, except for a token
    that decodes to U+FFFD alike with others (a byte that is no UTF-8 character alone, 128 of them in
    a byte-level BPE), named by its bytes, ``"<0xC3>"``, so that a :class:`TokenSet` of names means
    exactly those tokens. ``strings`` keeps the decoded text."""
    end_of_text: str | None = None
    """The string of the tokenizer's end-of-text token (a document boundary), if it has one."""

    def text(self, row: int) -> str:
        """The decoded text of a row: its tokens' strings, concatenated."""
        return "".join(self.strings[row])

    def spans(self, row: int) -> list[tuple[int, int]]:
        """``(start, end)`` character offsets of every token of a row in :meth:`text`."""
        out, start = [], 0
        for s in self.strings[row]:
            out.append((start, start + len(s)))
            start += len(s)
        return out

    def ids_of(self, strings: Iterable[str]) -> dict[str, list[int]]:
        """Token ids whose string is each of ``strings`` (several ids can decode alike)."""
        wanted = {s: cast(list[int], []) for s in strings}
        for i, s in enumerate(self.vocab):
            if s in wanted:
                wanted[s].append(i)
        return wanted


def token_rows(model: nn.Module, tokens: Int[Tensor, "batch pos"]) -> TokenRows:
    """Decode ``tokens`` with ``model``'s tokenizer, token by token.

    >>> rows = token_rows(model, tokens)
    >>> rows.strings[0][:4], rows.spans(0)[:2]
    (['<', 'strong', '>', 'two'], [(0, 1), (1, 7)])
    """
    tokens = check_tokens(tokens, model)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"token_rows: {type(model).__name__} has no tokenizer to decode tokens with")
    n_vocab = int(cast(Any, model).cfg.d_vocab)
    if int(tokens.max()) >= n_vocab or int(tokens.min()) < 0:
        raise ValueError(
            f"tokens: ids must lie in [0, {n_vocab}), got [{int(tokens.min())}, {int(tokens.max())}]"
        )
    decoded = tokenizer.batch_decode([[i] for i in range(n_vocab)])
    eos = getattr(tokenizer, "eos_token_id", None)
    strings = [[decoded[i] for i in row] for row in tokens.tolist()]
    return TokenRows(
        tokens.cpu(), strings, _vocab_names(tokenizer, decoded), None if eos is None else decoded[eos]
    )


def _vocab_names(tokenizer: Any, decoded: list[str]) -> list[str]:
    """``decoded``, with each token that decodes to U+FFFD alike with another named by its bytes."""
    count: dict[str, int] = {}
    for s in decoded:
        count[s] = count.get(s, 0) + 1
    names = list(decoded)
    for i, s in enumerate(decoded):
        if count[s] > 1 and "\ufffd" in s:
            raw = _token_bytes(tokenizer, i)
            names[i] = "".join(f"<0x{b:02X}>" for b in raw) if raw is not None else f"<token {i}>"
    return names


def _token_bytes(tokenizer: Any, i: int) -> bytes | None:
    """The bytes of token ``i`` of a byte-level BPE (GPT-2's alphabet) or a byte-fallback token
    (``"<0xC3>"``); None for other tokenizers."""
    piece = tokenizer.convert_ids_to_tokens(i)
    if not isinstance(piece, str):
        return None
    fallback = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    decoder = _byte_decoder()
    return bytes(decoder[c] for c in piece) if all(c in decoder for c in piece) else None


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for themselves, the
    others for the characters from U+0100 on, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


@runtime_checkable
class Predicate(Protocol):
    """An explanation to score: a name, a description and a value for every token."""

    name: str
    """A short name (a figure label)."""

    @property
    def description(self) -> str:
        """The explanation in words."""
        ...

    def values(self, rows: TokenRows) -> Float[Tensor, "batch pos"]:
        """1 where the explanation says the feature fires, 0 where not (graded values between),
        NaN for no verdict."""
        ...


def _name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name {name!r}: expected a non-empty string")
    return name


class TokenSet:
    """The feature fires on these tokens (token strings, e.g. ``" class"``), wherever they are.

    >>> p = TokenSet(["<", "</"])
    >>> p.values(token_rows(model, tokens))[0, :4].tolist()
    [1.0, 0.0, 0.0, 0.0]
    """

    def __init__(self, tokens: Iterable[str], name: str | None = None) -> None:
        if isinstance(tokens, str):
            raise ValueError(f"TokenSet({tokens!r}): expected a collection of token strings, not one string")
        items = list(dict.fromkeys(tokens))
        bad = [t for t in items if not isinstance(t, str) or not t]
        if bad or not items:
            raise ValueError(
                f"TokenSet({items!r}): expected a non-empty collection of non-empty token strings"
                + (f"; bad: {bad!r}" if bad else "")
            )
        self.tokens: tuple[str, ...] = tuple(items)
        self.name = _name(name or f"tokens {items[:3]!r}" + ("..." if len(items) > 3 else ""), "TokenSet")

    @property
    def description(self) -> str:
        """The explanation in words."""
        return f"fires on the tokens {list(self.tokens)!r}"

    def ids(self, rows: TokenRows) -> list[int]:
        """The token ids of the set; a ``ValueError`` names strings that are no token."""
        found = rows.ids_of(self.tokens)
        missing = [s for s, ids in found.items() if not ids]
        if missing:
            raise ValueError(f"TokenSet: {missing!r} are not tokens of the model's vocabulary")
        return sorted(i for ids in found.values() for i in ids)

    def values(self, rows: TokenRows) -> Float[Tensor, "batch pos"]:
        """1 on tokens of the set, else 0."""
        return torch.isin(rows.tokens, torch.tensor(self.ids(rows))).float()

    def __repr__(self) -> str:
        return f"TokenSet({list(self.tokens)!r})"


class Regex:
    """The feature fires inside matches of a regular expression over the decoded text.

    Each row's text is its tokens' strings concatenated (:class:`TokenRows`), searched with
    ``re.finditer(pattern, text, flags)``; a token is in the predicate when its characters overlap
    a non-empty match: token span ``[s, e)`` and match span ``[a, b)`` with ``s < b`` and ``a < e``.
    Empty matches select nothing; a match may span several tokens and a token may hold the end of
    one match and the start of the next. Rows are searched separately (a match never crosses rows),
    and an end-of-text token is text like any other (``<|endoftext|>``).

    >>> p = Regex(r"=\\w+")
    >>> p.values(token_rows(model, tokens))[0, 10:14].tolist()  # ' id', '=', 'new', ' src'
    [0.0, 1.0, 1.0, 0.0]
    """

    def __init__(self, pattern: str, flags: int = 0, name: str | None = None) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"Regex({pattern!r}): expected a non-empty pattern string")
        try:
            self.regex = re.compile(pattern, flags)
        except re.error as error:
            raise ValueError(f"Regex({pattern!r}): not a valid regular expression: {error}") from error
        self.pattern = pattern
        self.name = _name(name or f"regex {pattern!r}", "Regex")

    @property
    def description(self) -> str:
        """The explanation in words."""
        return f"fires inside matches of the regular expression {self.pattern!r}"

    def values(self, rows: TokenRows) -> Float[Tensor, "batch pos"]:
        """1 on tokens overlapping a match, else 0."""
        out = torch.zeros(rows.tokens.shape)
        for r in range(len(rows.strings)):
            spans = rows.spans(r)
            ends = torch.tensor([e for _, e in spans])
            starts = torch.tensor([s for s, _ in spans])
            for match in self.regex.finditer(rows.text(r)):
                a, b = match.span()
                if b > a:  # tokens with s < b and a < e
                    out[r, (starts < b) & (ends > a)] = 1.0
        return out

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


class AutomatonState:
    """The feature fires on tokens whose true automaton state is one of ``states``.

    States are recovered by running the automaton over each row's token strings
    (:func:`sae_circuits.languages.automata.label`): it restarts at every end-of-text token, and
    where a row begins inside a document it tracks every state the automaton could be in until
    the tokens leave one. A token is 1 when every possible state is in ``states``, 0 when none is,
    NaN while ambiguous; a symbol the automaton cannot read (text of another language) is 0, and
    so is the rest of that document.

    >>> p = AutomatonState("markup", ["ATTR_VALUE"])
    >>> p.values(token_rows(model, tokens))[0, 10:14].tolist()  # ' id', '=', 'new', ' src'
    [0.0, 0.0, 1.0, 0.0]
    """

    def __init__(
        self, automaton: str | automata.Automaton, states: Sequence[str], name: str | None = None
    ) -> None:
        self.automaton = automata.resolve(automaton)
        if isinstance(states, str):
            states = [states]
        wanted = list(dict.fromkeys(states))
        unknown = [s for s in wanted if s not in self.automaton.states]
        if unknown or not wanted:
            raise ValueError(
                f"AutomatonState: states {unknown or wanted!r} are not states of automaton "
                f"{self.automaton.name!r}; expected some of {list(self.automaton.states)}"
            )
        self.states = tuple(wanted)
        self._delta = {  # (state, symbol) -> next state
            (src, symbol): dst
            for src, targets in self.automaton.transitions.items()
            for dst, symbols in targets.items()
            for symbol in symbols
        }
        self.name = _name(name or f"{self.automaton.name} state {'|'.join(wanted)}", "AutomatonState")

    @property
    def description(self) -> str:
        """The explanation in words."""
        return f"fires where automaton {self.automaton.name!r} is in state {' or '.join(self.states)}"

    def values(self, rows: TokenRows) -> Float[Tensor, "batch pos"]:
        """1 / 0 / NaN per token (see the class docstring)."""
        fsa, wanted, delta = self.automaton, set(self.states), self._delta
        every = frozenset(fsa.states) | {fsa.start}
        out = []
        for strings in rows.strings:
            possible: frozenset[str] = every  # a row may begin inside a document
            row = [0.0] * len(strings)
            for p, symbol in enumerate(strings):
                if symbol == rows.end_of_text:
                    possible = frozenset([fsa.start])
                    continue
                possible = frozenset(
                    delta[(s, symbol)] for s in possible if (s, symbol) in delta
                )  # empty once the text is not of this automaton, until the next end-of-text
                if possible and possible <= wanted:
                    row[p] = 1.0
                elif possible & wanted:
                    row[p] = float("nan")
            out.append(row)
        return torch.tensor(out).reshape(rows.tokens.shape)

    def __repr__(self) -> str:
        return f"AutomatonState({self.automaton.name!r}, {list(self.states)!r})"


class FromFunction:
    """Any explanation given as a function: how an LLM-written explanation plugs in.

    ``fn(rows)`` returns ``[batch, pos]`` values (1 fires, 0 not, graded between, NaN no verdict)
    for :class:`TokenRows`; :meth:`per_token` wraps a function of one token in its context, e.g. an
    LLM simulator asked "does the feature fire on this token?".

    >>> p = FromFunction.per_token(lambda strings, i: strings[i].isupper(), name="upper case")
    >>> float(p.values(token_rows(model, tokens)).sum())
    0.0
    """

    def __init__(
        self,
        fn: Callable[[TokenRows], Any],
        name: str,
        description: str = "",
    ) -> None:
        if not callable(fn):
            raise ValueError(f"FromFunction: fn {fn!r} is not callable")
        self.fn = fn
        self.name = _name(name, "FromFunction")
        self._description = description or name

    @classmethod
    def per_token(cls, fn: Callable[[list[str], int], Any], name: str, description: str = "") -> FromFunction:
        """A predicate from ``fn(row_strings, position) -> bool | float``, called for every token."""
        if not callable(fn):
            raise ValueError(f"FromFunction.per_token: fn {fn!r} is not callable")
        return cls(
            lambda rows: [[float(fn(s, i)) for i in range(len(s))] for s in rows.strings], name, description
        )

    @property
    def description(self) -> str:
        """The explanation in words."""
        return self._description

    def values(self, rows: TokenRows) -> Float[Tensor, "batch pos"]:
        """``fn(rows)`` as a float tensor, checked for shape and values."""
        out = torch.as_tensor(self.fn(rows), dtype=torch.float32)
        if out.shape != rows.tokens.shape:
            raise ValueError(
                f"{self.name!r}: its function gave values of shape {tuple(out.shape)}, "
                f"expected one per token, {tuple(rows.tokens.shape)}"
            )
        if torch.isinf(out).any():
            raise ValueError(f"{self.name!r}: its function gave infinite values")
        return out

    def __repr__(self) -> str:
        return f"FromFunction({self.name!r})"


def evaluate(predicate: Predicate, rows: TokenRows) -> Float[Tensor, "batch pos"]:
    """``predicate.values(rows)``, checked: a ``ValueError`` names a predicate that is not one or
    whose values do not fit the rows."""
    if not isinstance(predicate, Predicate):
        raise ValueError(
            f"{predicate!r}: expected a predicate (TokenSet, Regex, AutomatonState, FromFunction or an "
            "object with name, description and values(rows))"
        )
    out = torch.as_tensor(predicate.values(rows), dtype=torch.float32)
    if out.shape != rows.tokens.shape:
        raise ValueError(
            f"{predicate.name!r}: values of shape {tuple(out.shape)}, expected {tuple(rows.tokens.shape)}"
        )
    return out
