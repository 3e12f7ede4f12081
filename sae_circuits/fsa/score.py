"""Score a recovered :class:`~sae_circuits.fsa.automaton.FeatureAutomaton` against a known one.

Two numbers, as in the design notes: how well the recovered states pick out the true states
(per-state F1 of "this recovered state fires" against "the true label is s", best match per true
state), and how well the recovered transition weights between matched states rank the true
transition table above the non-transitions (ROC AUC).

>>> from sae_circuits.languages import automata, corpus_texts
>>> texts, true_states = corpus_texts("markup", 4, 48, seed=0)   # 4 texts of 48 symbols, labelled
>>> with sc.spliced(model, saes):
...     fsa = sc.automaton(model, texts, max_states=8, attention_contexts=0,
...                        effect_contexts=2, effect_positions=4)
>>> score = score_automaton(fsa, true_states, automata.AUTOMATA["markup"])
>>> score.n_labelled, score.n_pairs, score.n_positive
(192, 100, 18)
>>> 0 < score.mean_f1 <= 1 and 0 <= score.transition_auroc <= 1
True
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sae_circuits.fsa.automaton import FeatureAutomaton, Mechanism
from sae_circuits.languages.automata import resolve
from sae_circuits.languages.equivalence import merge_equivalent as merge_equivalent_states

START = "START"  # the zoo automata's start state: it labels no token
_UNLABELLED = (None, START)
_CHUNK = 1 << 16  # labelled tokens per matmul
FEW_PAIRS = 3
"""Fewer true transitions or non-transitions than this make ``AutomatonScore.note`` say how coarse
the transition AUROC is (a 2-state language has 3 transitions and 1 non-transition at most)."""


@dataclass(frozen=True)
class AutomatonScore:
    """How well a recovered automaton matches a ground-truth one (:func:`score_automaton`)."""

    state_f1: dict[Hashable, float]
    """Per true state: the best F1, over recovered states, of "recovered state fires" against "true
    label is this state" on the labelled tokens. NaN for a true state no labelled token carries."""
    matches: dict[Hashable, int]
    """Per true state: the recovered state id with that best F1 (the first in ``fsa.states`` on
    ties); ``-1`` when no
    recovered state ever fires on it (best F1 0) or when no labelled token carries it."""
    mean_f1: float
    """Mean of ``state_f1`` over the true states that some labelled token carries."""
    transition_auroc: float
    """ROC AUC of ``fsa.weight(match[s], match[s'])`` (0 for an unmatched state) against "the true
    table has ``s -> s'``", over ordered pairs of true states, self-pairs included. NaN when all
    pairs are one class (see ``note``)."""
    n_pairs: int
    """Ordered pairs scored: both states carried by some labelled token."""
    n_positive: int
    """Of those, pairs that are true transitions."""
    n_labelled: int
    """Tokens with a label (neither ``None`` nor ``"START"``)."""
    note: str = ""
    """Why ``transition_auroc`` is NaN or how coarse it is (fewer than ``FEW_PAIRS`` pairs of one
    class), and which true states no labelled token carries; ``""`` if none."""


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (Mann-Whitney U over average ranks; no sklearn).

    ``scores``: real numbers; ``labels``: booleans (or 0/1) of the same length. NaN when the labels
    are all one class (the AUC is undefined then).

    >>> auroc([0.9, 0.1, 0.5, 0.5], [True, False, True, False])
    0.875
    """
    if torch.is_tensor(scores):
        scores = scores.detach().cpu().double().numpy()
    if torch.is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    s, y = np.asarray(scores, dtype=np.float64).reshape(-1), np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"auroc: {s.size} scores but {y.size} labels")
    if np.isnan(s).any():
        raise ValueError(f"auroc: {int(np.isnan(s).sum())} of the {s.size} scores are NaN")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"auroc: labels must be booleans or 0/1, got values {np.unique(y)[:5].tolist()}")
        y = y.astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    # Average ranks (1-based): a group of c tied values ending at rank e shares rank e - (c - 1) / 2.
    _, group, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[group.reshape(-1)]
    # U = (sum of positive ranks) - n_pos (n_pos + 1) / 2 counts the (positive, negative) pairs won.
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _require_automaton(fsa: Any) -> None:
    """A ``TypeError`` unless ``fsa`` is a :class:`FeatureAutomaton`."""
    if not isinstance(fsa, FeatureAutomaton):
        raise TypeError(f"expected a FeatureAutomaton (sc.automaton) to score, got {type(fsa).__name__}")


def _flat_labels(fsa: FeatureAutomaton, true_states: Any) -> list[Hashable]:
    """One label per row of ``fsa.firing``, from a flat sequence or per-text lists."""
    _require_automaton(fsa)
    n_tokens = int(fsa.firing.shape[0])
    if torch.is_tensor(true_states) or isinstance(true_states, np.ndarray):
        true_states = true_states.tolist()
    true_states = list(true_states)
    nested = bool(true_states) and all(isinstance(x, (list, tuple)) for x in true_states)
    if not nested:
        if len(true_states) != n_tokens:
            raise ValueError(
                f"true_states has {len(true_states)} labels but fsa.firing has {n_tokens} tokens "
                f"(rows); give one label per token, or one list per text with lengths fsa.lengths"
            )
        _refuse_nan(true_states)
        return true_states
    lengths = [int(n) for n in fsa.lengths.tolist()]
    if len(true_states) != len(lengths):
        raise ValueError(
            f"true_states has {len(true_states)} per-text label lists "
            f"but fsa.lengths has {len(lengths)} texts"
        )
    for i, (text, n) in enumerate(zip(true_states, lengths)):
        if len(text) != n:
            raise ValueError(f"true_states[{i}] has {len(text)} labels but fsa.lengths[{i}] is {n}")
    flat = [label for text in true_states for label in text]
    if len(flat) != n_tokens:
        raise ValueError(
            f"true_states has {len(flat)} labels in all but fsa.firing has {n_tokens} tokens (rows)"
        )
    _refuse_nan(flat)
    return flat


def _refuse_nan(labels: list[Hashable]) -> None:
    """A NaN label (pandas' missing value) is no state: each NaN differs from every other, so each
    would score as a state of its own."""
    for i, label in enumerate(labels):
        if isinstance(label, float) and math.isnan(label):
            raise ValueError(
                f"true_states has a NaN label at token {i}: mark a token to ignore with None, not NaN"
            )


def _is_automaton(true_transitions: Any) -> bool:
    """Whether ``true_transitions`` is an automaton (a table and its states), not ``(src, dst)`` pairs."""
    return hasattr(true_transitions, "transitions") and hasattr(true_transitions, "states")


def _ignored(true_transitions: Any) -> frozenset[Hashable]:
    """Labels that mark a token to ignore: ``None``, and ``"START"`` unless the automaton lists a
    state of that name (one the corpus enters again, so its tokens carry it)."""
    if _is_automaton(true_transitions) and START in true_transitions.states:
        return frozenset({None})
    return frozenset(_UNLABELLED)


def _truth(
    true_transitions: Any, labels: list[Hashable], ignored: frozenset[Hashable]
) -> tuple[list[Hashable], set[tuple[Hashable, Hashable]]]:
    """The true states (in a fixed order) and the set of true ``(src, dst)`` pairs, the ``ignored``
    labels (the start) dropped."""
    seen = dict.fromkeys(x for x in labels if x not in ignored)  # first-appearance order
    if _is_automaton(true_transitions):
        states = list(true_transitions.states)
        pairs = {(src, dst) for src, row in true_transitions.transitions.items() for dst in row}
        _refuse_unknown_labels(seen, true_transitions)
    else:
        pairs = set()
        for k, pair in enumerate(true_transitions):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"true_transitions[{k}] is {pair!r}; expected a (src_label, dst_label) pair")
            pairs.add((pair[0], pair[1]))
        # Labels only the pairs name are true states no token carries: scored like an Automaton's
        # absent states (F1 NaN, pairs skipped, named in the note), so a typo shows up there.
        extra = (x for p in sorted(pairs, key=str) for x in p if x not in ignored)
        states = list({**seen, **dict.fromkeys(extra)})
    pairs = {(a, b) for a, b in pairs if a not in ignored and b not in ignored}
    return states, pairs


def _refuse_unknown_labels(labels: Iterable[Hashable], automaton: Any) -> None:
    """A ``ValueError`` naming the labels (ignored ones left out) that are not ``automaton``'s states."""
    unknown = sorted(map(str, set(labels) - set(automaton.states)))
    if unknown:
        raise ValueError(
            f"true_states has labels that are not states of automaton "
            f"{getattr(automaton, 'name', '?')!r}: {unknown[:10]}"
        )


def _ground_truth(
    fsa: FeatureAutomaton, true_states: Any, true_transitions: Any, ignored: frozenset[Hashable] | None = None
) -> tuple[list[Hashable], list[Hashable], set[tuple[Hashable, Hashable]], dict[Hashable, int], list[int]]:
    """Flat labels, the true states in order, the true pairs, each state's index, and the rows
    that carry a label (refusing a corpus with none). ``ignored``: default :func:`_ignored`."""
    ignored = _ignored(true_transitions) if ignored is None else ignored
    labels = _flat_labels(fsa, true_states)
    states, true_pairs = _truth(true_transitions, labels, ignored)
    index = {s: i for i, s in enumerate(states)}
    labelled = [i for i, x in enumerate(labels) if x not in ignored]
    if not labelled:
        names = " or ".join(sorted(repr(x) for x in ignored))
        raise ValueError(f"no labelled tokens: all {len(labels)} labels are {names}")
    return labels, states, true_pairs, index, labelled


def _merged(
    true_states: Any, true_transitions: Any, merge_equivalent: bool
) -> tuple[Any, Any, frozenset[Hashable]]:
    """The truth to score against: as given, or with ``merge_equivalent`` each group of equivalent
    states named as one (the labels relabelled, the table as pairs); and the ignored labels, read
    from the automaton before merging (the merged truth is a list of pairs)."""
    if isinstance(true_transitions, (str, dict)):  # a built-in's name or a spec dict, not pairs
        true_transitions = resolve(true_transitions)
    ignored = _ignored(true_transitions)
    if not merge_equivalent:
        return true_states, true_transitions, ignored
    if not _is_automaton(true_transitions):
        raise ValueError(
            f"merge_equivalent=True needs the true automaton (an Automaton), got "
            f"{type(true_transitions).__name__}: equivalence is a property of its table"
        )
    seen: set[Hashable] = set()
    stack: list[Any] = [true_states]
    while stack:  # the labels, flat or one list per text: each must be a state before renaming
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            seen.add(item)
    _refuse_unknown_labels(seen - ignored, true_transitions)
    merged_states, merged_pairs = merge_equivalent_states(true_states, true_transitions)
    return merged_states, merged_pairs, ignored


def score_automaton(
    fsa: FeatureAutomaton,
    true_states: Sequence[Hashable] | Sequence[Sequence[Hashable]],
    true_transitions: Any,
    mechanism: Mechanism | None = None,
    *,
    merge_equivalent: bool = False,
) -> AutomatonScore:
    """Score ``fsa``'s states and transitions against ground truth.

    ``true_states``: one label per token of ``fsa.firing`` (flat), or one list per text with the
    lengths in ``fsa.lengths`` (so a label may not itself be a list or tuple); a label ``None`` or
    ``"START"`` marks a token to ignore (``"START"`` is a true state like any other when the
    automaton lists a state of that name).
    ``true_transitions``: an :class:`~sae_circuits.languages.automata.Automaton` (its ``states`` are the
    true states, its table minus ``START`` the true transitions; a built-in's name or a spec dict
    stands for one), or ``(src, dst)`` label pairs (the
    true states are then the distinct labels in ``true_states``, plus any label only a pair names).
    ``mechanism`` scores only the ``"attention"`` or ``"token"`` transitions (default: their sum, as
    ``fsa.weight``).
    ``merge_equivalent`` (``true_transitions`` an ``Automaton``): score against the language's own
    automaton, each group of states that no continuation tells apart named as one
    (``"TAG_NAME+ATTR_VALUE"``; :mod:`sae_circuits.languages.equivalence`). A spec may name two
    states where the language has one; the default scores the spec's states as given.

    >>> from sae_circuits.languages import automata, corpus_texts
    >>> texts, true_states = corpus_texts("markup", 4, 48, seed=0)
    >>> with sc.spliced(model, saes):
    ...     fsa = sc.automaton(model, texts, max_states=8, attention_contexts=0,
    ...                        effect_contexts=2, effect_positions=4)
    >>> s = score_automaton(fsa, true_states, automata.AUTOMATA["markup"])
    >>> s.state_f1["TEXT"], fsa.state(s.matches["TEXT"]).label   # text is recovered exactly
    (1.0, "' on' ' about' 'and'")
    """
    _require_automaton(fsa)
    if not fsa.states:
        raise ValueError("cannot score an empty automaton: it has no states")
    true_states, true_transitions, ignored = _merged(true_states, true_transitions, merge_equivalent)
    if mechanism not in (None, "attention", "token"):
        raise ValueError(f"mechanism must be None, 'attention' or 'token', got {mechanism!r}")
    firing = fsa.firing
    if firing.ndim != 2 or firing.shape[1] != len(fsa.states):
        raise ValueError(
            f"fsa.firing has shape {list(firing.shape)}; expected [tokens, {len(fsa.states)} states]"
        )
    labels, states, true_pairs, index, labelled = _ground_truth(fsa, true_states, true_transitions, ignored)

    # State recovery. Y: one-hot true labels, X: firing, both on the labelled tokens; tp = Y^T X.
    # In chunks, so a long corpus never holds a dense float copy of firing; each chunk's counts are
    # exact in float32 (< 2^24) and add up in float64.
    rows = torch.tensor(labelled, device=firing.device)
    cls = torch.tensor([index[labels[i]] for i in labelled], device=firing.device)
    tp = torch.zeros(len(states), firing.shape[1], dtype=torch.float64, device=firing.device)
    fires = torch.zeros(firing.shape[1], dtype=torch.float64, device=firing.device)
    for start in range(0, len(labelled), _CHUNK):
        x = firing[rows[start : start + _CHUNK]].float()  # (chunk, n_rec)
        y = torch.nn.functional.one_hot(cls[start : start + _CHUNK], len(states)).float()  # (chunk, n_true)
        tp += (y.T @ x).double()  # (n_true, n_rec)
        fires += x.sum(0).double()
    support = torch.bincount(cls, minlength=len(states)).double()  # (n_true,)
    # F1 = 2 tp / (|fires| + |is s|); 0/0 only when s has no tokens and r never fires (s is skipped).
    f1 = 2 * tp / (fires[None, :] + support[:, None]).clamp_min(1)
    best_f1, best = f1.max(1)  # max returns the first (lowest id) maximum
    present = (support > 0).tolist()
    state_f1 = {s: float(best_f1[i]) if present[i] else math.nan for i, s in enumerate(states)}
    ids = [state.id for state in fsa.states]  # firing column -> state id (what transitions name)
    matches = {s: ids[int(best[i])] if present[i] and best_f1[i] > 0 else -1 for i, s in enumerate(states)}
    mean_f1 = float(np.mean([state_f1[s] for i, s in enumerate(states) if present[i]]))

    # Transition recovery over ordered pairs of present true states, self-pairs included.
    # The full weight matrices when the automaton has them (pairs under min_weight still rank),
    # else the transitions kept.
    weights: dict[tuple[int, int], float] = {}
    for t in fsa.transitions:
        if mechanism in (None, t.mechanism):
            weights[t.src, t.dst] = weights.get((t.src, t.dst), 0.0) + t.weight
    column = {state_id: i for i, state_id in enumerate(ids)}
    dense = [w for m, w in fsa.weights.items() if mechanism in (None, m)]

    def weight(src: int, dst: int) -> float:
        if dense:
            return sum(float(w[column[src], column[dst]]) for w in dense)
        return weights.get((src, dst), 0.0)

    kept = [s for i, s in enumerate(states) if present[i]]
    scores, positive = [], []
    for a in kept:
        for b in kept:
            unmatched = matches[a] < 0 or matches[b] < 0
            scores.append(0.0 if unmatched else weight(matches[a], matches[b]))
            positive.append((a, b) in true_pairs)
    value = auroc(scores, positive)
    notes = []
    if math.isnan(value):
        kind = "true transitions" if all(positive) else "non-transitions"
        notes.append(f"transition_auroc is NaN: all {len(positive)} pairs of labelled true states are {kind}")
    else:
        n_pos = sum(positive)
        if min(n_pos, len(positive) - n_pos) < FEW_PAIRS:
            notes.append(
                f"transition_auroc rests on {n_pos} true transitions and {len(positive) - n_pos} "
                f"non-transitions: it moves in steps of {1 / (n_pos * (len(positive) - n_pos)):.3g}"
            )
    missing = [str(s) for i, s in enumerate(states) if not present[i]]
    if missing:
        notes.append(f"no labelled token carries the true states {missing} (F1 NaN, pairs skipped)")
    return AutomatonScore(
        state_f1=state_f1, matches=matches, mean_f1=mean_f1, transition_auroc=value, n_pairs=len(positive),
        n_positive=sum(positive), n_labelled=len(labelled), note="; ".join(notes),
    )  # fmt: skip


@dataclass(frozen=True)
class LoopScore:
    """How ranked loops read against ground truth (:func:`score_loops`)."""

    names: list[list[Hashable]]
    """Each loop's states named by the true state each predicts best (F1 of "fires" against "the
    true label is s"; the naming is done after the fact, the loops never saw the labels); ``None``
    for a state that fires on no labelled token (a loop through it is not true)."""
    true: list[bool]
    """Whether each named loop is a loop of the true automaton (every step a true transition,
    the last back to the first)."""
    n_true: int
    """Loops that are true loops."""
    n_distinct: int
    """Distinct true loops among them (as cyclic sequences of true states)."""
    longest_in_top3: int
    """Most distinct true states in one true loop among the first three."""


def score_loops(
    fsa: FeatureAutomaton,
    loops: Sequence[Any],
    true_states: Sequence[Hashable] | Sequence[Sequence[Hashable]],
    true_transitions: Any,
    *,
    merge_equivalent: bool = False,
) -> LoopScore:
    """Name ``loops`` (:class:`~sae_circuits.fsa.loops.Loop` objects, or lists of state ids)
    through the true states and check them against the true table (``score_automaton``'s
    arguments; ``merge_equivalent``: name them through the language's own automaton, each group
    of states no continuation tells apart as one, so a loop through a state that fires on both
    ``PROMPT`` and ``PIPE``, which every command follows alike, can read true)."""
    true_states, true_transitions, ignored = _merged(true_states, true_transitions, merge_equivalent)
    labels, states, true_pairs, index, labelled = _ground_truth(fsa, true_states, true_transitions, ignored)
    firing = fsa.firing[torch.tensor(labelled, device=fsa.firing.device)].float()
    truth = torch.nn.functional.one_hot(
        torch.tensor([index[labels[i]] for i in labelled], device=firing.device), len(states)
    ).float()
    tp = truth.T @ firing  # (true, recovered)
    f1 = 2 * tp / (firing.sum(0)[None, :] + truth.sum(0)[:, None]).clamp_min(1)
    column = {s.id: i for i, s in enumerate(fsa.states)}
    best_f1, best = f1.max(0)  # per recovered state; a state firing on no labelled token has no name
    name = {s.id: states[int(best[column[s.id]])] if best_f1[column[s.id]] > 0 else None for s in fsa.states}
    names, true, keys, longest = [], [], set(), 0
    for k, loop in enumerate(loops):
        ids = getattr(loop, "states", loop)
        if not isinstance(ids, (list, tuple)) or not ids or any(i not in name for i in ids):
            raise ValueError(
                f"loops[{k}] is {loop!r}: expected a Loop or a non-empty list of state ids "
                f"(fsa.states' ids: {sorted(name)[:10]}{'...' if len(name) > 10 else ''})"
            )
        named = [name[i] for i in ids]
        ok = None not in named and all((a, b) in true_pairs for a, b in zip(named, named[1:] + named[:1]))
        names.append(named)
        true.append(ok)
        if ok:  # one key per cyclic sequence: its smallest rotation (a state may be named twice)
            keys.add(min(tuple(map(str, named[i:] + named[:i])) for i in range(len(named))))
            if k < 3:
                longest = max(longest, len(set(named)))
    return LoopScore(names, true, sum(true), len(keys), longest)
