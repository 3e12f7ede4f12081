"""Loops ranked as a researcher reads them: distinct, structural first (``fsa.loops()``).

``fsa.cycles()`` lists every simple cycle by its weakest link; among 256 states most of them are
the same loop again through near-duplicate states, or a state looping onto itself because it is
broad (it fires on most tokens, so every transition "reaches" it). :func:`loops` ranks them so:

1. **Lift, not weight.** A transition counts by how much it raises its destination above the
   destination's base rate: ``lift(A -> B) = (w(A -> B) - f_B) / (1 - f_B)``, clipped at 0, where
   ``w`` is both mechanisms' weight and ``f_B`` the share of tokens on which B fires. A state that
   fires everywhere gains nothing from being reached.
2. **Principal successors.** Each state keeps its ``successors`` (3) highest-lift transitions above
   ``min_lift``; loops are the simple cycles of that sparse graph (at most ``max_length`` states).
   A real automaton state has few successors; the long tail of weak transitions is what makes
   thousands of spurious cycles.
3. **Score** = the loop's weakest lift x ``(1 - 1 / (2 k))`` for a loop through ``k`` states: a
   self-loop counts half, a loop through several roles almost fully, so structural loops come
   before a state looping on itself at the same strength (the base64 self-loop still ranks, on a
   corpus where it is the strongest thing there is).
4. **Distinct.** States are grouped into roles (average-linkage clusters of their firing sets at
   Jaccard ``role_threshold``, ``roles.py``); a loop that visits one role twice is dropped, and so
   is a loop through the same cyclic sequence of roles as a higher-ranked one.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx
import torch

from sae_circuits.fsa.roles import average_linkage, jaccard

if TYPE_CHECKING:
    from sae_circuits.fsa.automaton import FeatureAutomaton

MAX_LOOPS = 100_000
"""Most simple cycles enumerated in the successor graph (a warning says when more exist)."""


@dataclass(frozen=True)
class Loop:
    """One ranked loop of :func:`loops`."""

    states: list[int]
    """State ids along the loop, starting at the smallest."""
    roles: list[int]
    """The role (cluster of near-duplicate states) of each state."""
    weakest: float
    """The loop's weakest transition lift."""
    score: float
    """``weakest * (1 - 1 / (2 * len(states)))``: what the ranking sorts by."""


def lifts(fsa: FeatureAutomaton) -> torch.Tensor:
    """``(states, states)`` lift of every transition (module docstring, step 1), indexed like ``fsa.states``."""
    n = len(fsa.states)
    if fsa.weights:
        weight = sum((w.double() for w in fsa.weights.values()), torch.zeros(n, n, dtype=torch.float64))
    else:
        column = {s.id: i for i, s in enumerate(fsa.states)}
        weight = torch.zeros(n, n, dtype=torch.float64)
        for t in fsa.transitions:
            weight[column[t.src], column[t.dst]] += t.weight
    base = torch.tensor([s.frequency for s in fsa.states], dtype=torch.float64)
    return ((weight - base[None, :]) / (1 - base[None, :]).clamp_min(1e-12)).clamp_min(0)


def roles_of(fsa: FeatureAutomaton, threshold: float) -> list[int]:
    """The role of each state (index into ``fsa.states``): average-linkage clusters of firing sets."""
    role = [0] * len(fsa.states)
    for r, group in enumerate(average_linkage(jaccard(fsa.firing), threshold)):
        for i in group:
            role[i] = r
    return role


def loops(
    fsa: FeatureAutomaton,
    top: int | None = 10,
    *,
    successors: int = 3,
    min_lift: float = 0.1,
    max_length: int = 9,
    role_threshold: float = 0.3,
) -> list[Loop]:
    """The ``top`` loops of ``fsa`` (all, if None), distinct and ranked (see the module docstring).

    >>> [fsa.state(s).label for s in fsa.loops()[0].states]   # doctest: +SKIP
    """
    if not isinstance(successors, int) or successors < 1:
        raise ValueError(f"successors={successors!r} must be an integer >= 1")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length={max_length!r} must be an integer >= 1")
    if top is not None and (not isinstance(top, int) or top < 1):
        raise ValueError(f"top={top!r} must be None or an integer >= 1")
    for name, value in (("min_lift", min_lift), ("role_threshold", role_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name}={value!r} must be a number in [0, 1]")
    if not fsa.states:
        return []
    lift = lifts(fsa)
    ids = [s.id for s in fsa.states]
    best = lift.topk(min(successors, lift.shape[1]), dim=1)
    graph = nx.DiGraph()
    for a in range(lift.shape[0]):
        for w, b in zip(best.values[a].tolist(), best.indices[a].tolist()):
            if w > min_lift:
                graph.add_edge(a, b, weight=w)
    found = list(itertools.islice(nx.simple_cycles(graph, length_bound=max_length), MAX_LOOPS + 1))
    if len(found) > MAX_LOOPS:
        warnings.warn(f"more than {MAX_LOOPS} loops in the successor graph; ranking the first {MAX_LOOPS}",
                      stacklevel=2)  # fmt: skip
        found = found[:MAX_LOOPS]
    role = roles_of(fsa, role_threshold)
    ranked = []
    for cycle in found:
        roles = [role[i] for i in cycle]
        if len(set(roles)) < len(roles):
            continue  # visits one role twice: the same loop taken round again through near-duplicates
        weakest = min(graph[a][b]["weight"] for a, b in zip(cycle, cycle[1:] + cycle[:1]))
        ranked.append((weakest * (1 - 1 / (2 * len(cycle))), weakest, cycle, roles))
    ranked.sort(key=lambda r: (-r[0], len(r[2]), sorted(r[2])))
    seen, result = set(), []
    for score, weakest, cycle, roles in ranked:
        start = roles.index(min(roles))
        key = tuple(roles[start:] + roles[:start])
        if key in seen:
            continue
        seen.add(key)
        first = min(range(len(cycle)), key=lambda i: ids[cycle[i]])
        order = cycle[first:] + cycle[:first]
        result.append(Loop([ids[i] for i in order], [role[i] for i in order], float(weakest), float(score)))
        if top is not None and len(result) == top:
            break
    return result
