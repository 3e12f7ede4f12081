"""The automaton that features form: states (features or groups of features) and transitions
between them (via attention inside a forward pass, or via the token the model emits), with the
data needed to score it against ground truth. Extraction lives in ``extract.py``, causal checks in
``validate.py``, ground-truth scores in ``score.py``, cycles and loops in ``loops.py``, file formats
in ``export.py`` (written by :mod:`sae_circuits.writers`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

Mechanism = Literal["attention", "token"]


@dataclass
class State:
    """One state: a feature, or a group of features that play one role."""

    id: int
    members: list[tuple[str, int]]
    """``(site, feature index)`` of every member feature."""
    label: str
    """Top activating tokens, e.g. ``'"<" "</"'``."""
    frequency: float
    """Share of the corpus tokens on which the state fires (a grouped state: at least half of its
    members active; a single feature: active)."""
    max_activation: float = 0.0
    """Largest member activation seen in the corpus (the paper's steering value)."""
    pin_values: list[float] = field(default_factory=list)
    """Per member (same order as ``members``): the value a causal check or a steering run pins it
    at, a high quantile of its activations where it fires (empty: use ``max_activation``)."""
    coherence: float = 1.0
    """How much the members agree: mean Jaccard overlap of each member's firing set with the
    state's (1.0 for a single feature)."""


@dataclass
class Transition:
    """``src -> dst``: the source state at token t raises the destination state at token t+1."""

    src: int
    dst: int
    mechanism: Mechanism
    weight: float
    """``attention``: the share of dst's input at t+1 that comes directly from src at t, averaged
    over the corpus; ``token``: ``sum_x p_src(x) P(dst fires | token x)`` (see ``extract.py``)."""
    tokens: dict[str, int] = field(default_factory=dict)
    """The tokens at t+1 that carry the transition, with how often (src at t, dst at t+1) co-occurred."""
    effect: float | None = None
    """Causal check (``validate``; None until checked): dst's firing rate right after positions
    where the whole src state is pinned, minus unpinned, mean over prompts, under the check's
    primary decoding (sampled at temperature 1 by default; see ``validate.py``)."""
    confirmed: bool | None = None
    """Verdict of that check (None: not checked): pinning src raises dst (``effect_ci`` above 0 and
    ``effect`` >= ``min_effect``) and, when the necessity arm ran, dst follows src at least once
    in the model's own rollouts (``observed``), or removing src where it fires lowers dst
    (``effect_removed``, the same test)."""
    effect_ci: tuple[float, float] | None = None
    """Confidence interval of ``effect`` (t-interval over the prompts; 95% by default)."""
    effect_greedy: float | None = None
    """The effect on greedy continuations."""
    effect_sampled: float | None = None
    """The effect on continuations sampled at temperature 1 (None when none were sampled)."""
    effect_removed: float | None = None
    """The necessity arm: dst's firing rate right after positions where src fires, minus the same
    with src's members set to 0 there (primary decoding; None when not run)."""
    effect_removed_ci: tuple[float, float] | None = None
    """Confidence interval of ``effect_removed``."""
    observed: bool | None = None
    """Whether dst followed src at least once in the necessity arm's natural rollouts (None when
    that arm did not run); a pin effect alone does not confirm an unobserved pair."""


@dataclass
class FeatureAutomaton:
    """States, transitions, and the corpus layout they were extracted from.

    >>> with sc.spliced(model, saes):
    ...     fsa = sc.automaton(model, texts[:4], max_states=8, attention_contexts=0,
    ...                        effect_contexts=2, effect_positions=4)
    >>> fsa
    FeatureAutomaton(8 states, 0 attention and ... token transitions, 192 tokens)
    >>> fsa.firing.shape, fsa.lengths.tolist()
    (torch.Size([192, 8]), [48, 48, 48, 48])
    >>> states, weight = fsa.cycles()[0]   # the strongest loop weighs as much as its weakest step
    >>> weight == min(fsa.weight(a, b) for a, b in zip(states, states[1:] + states[:1]))
    True
    """

    states: list[State]
    transitions: list[Transition]
    firing: Bool[Tensor, "tokens states"]
    """Whether each state fires on each corpus token (text tokens only, texts concatenated)."""
    lengths: Int[Tensor, " texts"]
    """Tokens per text, so ``firing`` splits back into texts."""
    metadata: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Float[Tensor, "states states"]] = field(default_factory=dict)
    """Every pair's weight per mechanism, before ``min_weight`` (scores rank all pairs)."""
    tokens: Int[Tensor, " tokens"] | None = None
    """The corpus's text tokens, concatenated (``validate`` draws its prompts from them)."""

    def state(self, state_id: int) -> State:
        """The state with id ``state_id`` (extraction numbers states 0, 1, ... in order, so it is
        ``states[state_id]`` there); a ``KeyError`` for an id no state has."""
        if 0 <= state_id < len(self.states) and self.states[state_id].id == state_id:
            return self.states[state_id]
        for state in self.states:
            if state.id == state_id:
                return state
        raise KeyError(f"no state has id {state_id!r} (ids: {[s.id for s in self.states][:10]}...)")

    def positions(self) -> Int[Tensor, " tokens"]:
        """Each corpus token's position in its own text (0 at a text's first token), on the CPU;
        a ``ValueError`` when ``lengths`` does not add up to ``firing``'s rows."""
        lengths = self.lengths.long().reshape(-1).cpu()
        n = int(self.firing.shape[0])
        if int(lengths.sum()) != n:
            raise ValueError(f"fsa.lengths sums to {int(lengths.sum())} but fsa.firing has {n} tokens (rows)")
        starts = torch.cumsum(lengths, 0) - lengths
        return torch.arange(n) - torch.repeat_interleave(starts, lengths)

    def weight(self, src: int, dst: int, mechanism: Mechanism | None = None) -> float:
        """Weight of ``src -> dst`` (one mechanism, or both added), from the full weight matrices
        when present (so pairs under ``min_weight`` count too), else from the transitions kept."""
        if mechanism not in (None, "attention", "token"):
            raise ValueError(f"mechanism must be None, 'attention' or 'token', got {mechanism!r}")
        self.state(src), self.state(dst)  # a KeyError naming an unknown id
        if self.weights:
            column = {s.id: i for i, s in enumerate(self.states)}  # weights are indexed like firing
            return sum(
                float(w[column[src], column[dst]]) for m, w in self.weights.items() if mechanism in (None, m)
            )
        return sum(
            t.weight
            for t in self.transitions
            if t.src == src and t.dst == dst and mechanism in (None, t.mechanism)
        )

    def cycles(self, min_weight: float = 0.0, max_length: int = 6) -> list[tuple[list[int], float]]:
        """Every loop of states (simple cycles up to ``max_length``), strongest first; a cycle's
        weight is its weakest transition (both mechanisms added). For the ranked, deduplicated
        loops a reader wants first, use :meth:`loops`."""
        from sae_circuits.fsa.loops import cycles

        return cycles(self, min_weight, max_length)

    def loops(self, top: int | None = 10, **kwargs: Any) -> list[Any]:
        """The ``top`` loops a researcher should read first: distinct (no two through
        near-duplicates of the same roles) and ranked so that loops through several roles come
        before a state looping on itself (``loops.py``). ``cycles`` lists every cycle instead."""
        from sae_circuits.fsa.loops import loops

        return loops(self, top, **kwargs)

    def to_networkx(self) -> Any:
        """An ``nx.DiGraph`` of the states, one edge per ``(src, dst)`` (``export.to_networkx``)."""
        from sae_circuits.fsa.export import to_networkx

        return to_networkx(self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``.json`` (loads back), ``.dot``, ``.graphml``, ``.html`` or the suffix of any other
        writer in :mod:`sae_circuits.writers`, atomically."""
        from sae_circuits.writers import save

        return save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureAutomaton:
        """Read an automaton written by :meth:`save` as ``.json``."""
        from sae_circuits.writers import load

        return cast(FeatureAutomaton, load(path, "automaton"))

    def validate(self, model: Any, **kwargs: Any) -> FeatureAutomaton:
        """Pin each checked transition's source (its whole state) and measure how much more often
        its destination fires at the next step, and remove the source where it fires and measure
        how much less often (``validate.py``); stores ``effect``, ``effect_removed`` and
        ``confirmed`` on the transitions checked."""
        from sae_circuits.fsa.validate import validate

        return validate(self, model, **kwargs)

    def __repr__(self) -> str:
        kinds = {m: sum(t.mechanism == m for t in self.transitions) for m in ("attention", "token")}
        return (f"FeatureAutomaton({len(self.states)} states, {kinds['attention']} attention and "
                f"{kinds['token']} token transitions, {int(self.lengths.sum())} tokens)")  # fmt: skip
