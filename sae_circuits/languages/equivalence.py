"""States of a spec that no text can tell apart: the same future after them (Myhill–Nerode).

Two states are *equivalent* when every continuation that is allowed after one is allowed after
the other and leads to equivalent states again: on every symbol they both move (to equivalent
states) or both refuse, and both may end a document or neither may. A spec need not be minimal —
markup's ``TAG_NAME`` and ``ATTR_VALUE`` both go on with an attribute or ``>``/``/>``; shell's
``PROMPT`` (``$``) and ``PIPE`` (``|``) both go on with a command — and nothing in the language
after such a state says which of the two it was. A model may still keep them apart (the symbol
that led there is in its context), but it has no need to: a state F1 below the model's probe on
such states measures what the dictionaries chose to merge, not a fault of the extraction.
Equivalence is a property of the spec's table: a generator with more memory than the table (markup
draws distinct attribute names, at most three) can still make the two futures differ in
probability.

:func:`equivalent_states` is Moore's partition refinement: start from {final, not final} and split
every block by the blocks its states move to on each symbol, until nothing splits.

>>> from sae_circuits.languages import automata
>>> equivalent_states(automata.AUTOMATA["markup"])
[('TAG_NAME', 'ATTR_VALUE')]
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_circuits.languages.automata import Automaton


def equivalent_states(automaton: Automaton | str | dict[str, Any]) -> list[tuple[str, ...]]:
    """Groups of two or more of ``automaton.states`` that are equivalent (module docstring), each in
    the spec's order of states, the groups in the order of their first state.

    ``automaton``: an :class:`~sae_circuits.languages.automata.Automaton` (a built-in, or one loaded
    from a spec with ``load_automaton``), a built-in's name or a spec dict.
    """
    from sae_circuits.languages.automata import resolve  # automata imports this module

    automaton = resolve(automaton)
    states = list(automaton.states)
    symbols = automaton.alphabet
    final = set(automaton.final_states)
    step = {
        (src, sym): dst
        for src, row in automaton.transitions.items()
        for dst, syms in row.items()
        for sym in syms
    }
    block = {s: int(s in final) for s in states}
    while True:
        # a state's signature: its block, and the block it moves to on each symbol (-1: refused)
        signature = {
            s: (block[s], *(block[step[s, sym]] if (s, sym) in step else -1 for sym in symbols))
            for s in states
        }
        numbering: dict[tuple[int, ...], int] = {}
        refined = {s: numbering.setdefault(signature[s], len(numbering)) for s in states}
        if len(numbering) == len(set(block.values())):
            break  # no block split: the partition is stable
        block = refined
    groups: dict[int, list[str]] = {}
    for s in states:
        groups.setdefault(block[s], []).append(s)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def merge_equivalent(
    true_states: Sequence[Hashable] | Sequence[Sequence[Hashable]],
    automaton: Automaton | str | dict[str, Any],
) -> tuple[list[Any], set[tuple[str, str]]]:
    """``true_states`` and ``automaton``'s transitions with each group of equivalent states named as
    one (``"TAG_NAME+ATTR_VALUE"``, in brackets if the spec has a state of that name): what ``score_automaton(..., merge_equivalent=True)`` scores.

    ``true_states``: one label per token, or one list per text (left nested as it came). Returns the
    relabelled states and the set of ``(src, dst)`` true pairs between the merged names.
    """
    from sae_circuits.languages.automata import resolve

    automaton = resolve(automaton)
    name = {}
    for group in equivalent_states(automaton):
        merged = "+".join(group)
        while merged in automaton.states:  # a state of the spec may itself be called "A+B"
            merged = f"({merged})"
        name.update(dict.fromkeys(group, merged))

    def rename(label: Any) -> Any:
        if isinstance(label, (list, tuple)):
            return [rename(x) for x in label]
        return name.get(label, label) if isinstance(label, str) else label

    pairs = {
        (name.get(src, src), name.get(dst, dst))
        for src, row in automaton.transitions.items()
        if src in automaton.states  # the start state labels no token unless it is a state
        for dst in row
    }
    return [rename(x) for x in true_states], pairs
