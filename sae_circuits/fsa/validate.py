"""Causal check of automaton transitions: pin the source, see whether the destination follows.

For a transition ``A -> B``, ``n_prompts`` corpus prefixes end (at random, fixed by ``seed``) on a
token where A is off; the last prefix token is position t. A's member features are pinned there
at their largest activation in the corpus (the dictionary-learning paper's steering recipe), and
B's firing on the next token is measured as an expected rate under the model's next-token
distribution (its ``top_k`` tokens, renormalised: each candidate token is appended and B read at
t+1, with the pin still in place, so the token emitted and what attention carries from t both act).

``effect`` = that rate pinned minus unpinned, averaged over the prompts; a transition is
``confirmed`` when the effect is positive and a one-sided paired test (normal approximation) gives
p < ``alpha``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_circuits.fsa.automaton import FeatureAutomaton, State, Transition
from sae_circuits.interventions import clamp, intervene
from sae_circuits.splice import saes_of


def validate(
    fsa: FeatureAutomaton,
    model: nn.Module,
    transitions: list[Transition] | None = None,
    *,
    top: int = 50,
    n_prompts: int = 20,
    alpha: float = 0.05,
    top_k: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> FeatureAutomaton:
    """Pin each transition's source and measure its destination's next-step firing; stores
    ``effect`` and ``confirmed`` on the transitions checked (by default the ``top`` heaviest).

    >>> fsa.validate(model)                         # doctest: +SKIP
    >>> [(t.src, t.dst, t.effect, t.confirmed) for t in fsa.transitions if t.effect is not None][:3]  # doctest: +SKIP
    """
    if fsa.tokens is None:
        raise ValueError(
            "this automaton keeps no corpus tokens to draw prompts from (extract it with sc.automaton)"
        )
    missing = {site for s in fsa.states for site, _ in s.members} - set(saes_of(model))
    if missing:
        raise ValueError(f"the automaton's sites {sorted(missing)} have no dictionary spliced in this model")
    if n_prompts < 2:
        raise ValueError(f"n_prompts={n_prompts} must be at least 2")
    chosen = (
        transitions if transitions is not None else sorted(fsa.transitions, key=lambda t: -t.weight)[:top]
    )
    for t in tqdm(
        chosen, desc="validating transitions", unit="transition", disable=not progress, leave=False
    ):
        # prompts end where the source is off: pinning it there is the intervention
        prompts = _prompts(fsa, model, n_prompts, seed, ~fsa.firing[:, _index(fsa, t.src)])
        dst = _index(fsa, t.dst)
        base = _run(model, fsa, prompts, None, top_k)[:, dst]
        pinned = _run(model, fsa, prompts, fsa.states[_index(fsa, t.src)], top_k)[:, dst]
        t.effect = float((pinned - base).mean())
        t.confirmed = t.effect > 0 and _one_sided_p(pinned - base) < alpha
    fsa.metadata["validation"] = {
        "n_prompts": n_prompts,
        "alpha": alpha,
        "seed": seed,
        "top_k": top_k,
        "checked": len(chosen),
    }
    return fsa


def _index(fsa: FeatureAutomaton, state_id: int) -> int:
    return next(i for i, s in enumerate(fsa.states) if s.id == state_id)


def _prompts(fsa: FeatureAutomaton, model: Any, n: int, seed: int, allowed: Tensor) -> list[Tensor]:
    """``n`` corpus prefixes (at least 4 text tokens) whose last token is ``allowed``, drawn at
    random (fixed by ``seed``)."""
    assert fsa.tokens is not None  # validate() refuses an automaton without corpus tokens
    starts = torch.cat([torch.zeros(1, dtype=torch.long), fsa.lengths.cumsum(0)])
    text_of = torch.repeat_interleave(torch.arange(fsa.lengths.numel()), fsa.lengths)
    offset = torch.arange(int(fsa.lengths.sum())) - starts[text_of]
    ends = (allowed & (offset >= 3)).nonzero().squeeze(-1)
    if ends.numel() == 0:
        raise ValueError(
            "no corpus position of 4+ tokens where the source state is off, to draw prompts from"
        )
    generator = torch.Generator().manual_seed(seed)
    picks = ends[torch.randint(ends.numel(), (n,), generator=generator)]
    bos = (
        [model.tokenizer.bos_token_id]
        if fsa.metadata.get("prepend_bos") and model.tokenizer is not None
        else []
    )
    return [
        torch.cat([torch.tensor(bos, dtype=torch.long), fsa.tokens[int(starts[text_of[end]]) : int(end) + 1]])
        for end in picks.tolist()
    ]


@torch.no_grad()
def _run(
    model: Any, fsa: FeatureAutomaton, prompts: list[Tensor], source: State | None, top_k: int
) -> Tensor:
    """For each prompt and state: the probability that the state fires on the next token, under
    the model's next-token distribution (its ``top_k`` tokens, renormalised), with ``source``
    pinned at the last prompt position (or nothing pinned)."""
    names = {f"{site}.hook_sae_acts_post" for s in fsa.states for site, _ in s.members}
    rates = []
    for prompt in prompts:
        last = int(prompt.numel()) - 1
        pins = [] if source is None else [
            clamp(site, index, source.max_activation, positions=[last]) for site, index in source.members
        ]  # fmt: skip
        with intervene(model, pins):
            top = model(prompt.unsqueeze(0))[0, -1].double().softmax(-1).topk(top_k)
            continued = torch.cat([prompt.expand(top_k, -1), top.indices.unsqueeze(1)], dim=1)
            _, cache = model.run_with_cache(continued, names_filter=lambda n: n in names)
        active = {name: cache[name][:, -1] > 0 for name in names}  # (top_k, d_sae)
        fires = torch.stack([
            torch.stack([active[f"{site}.hook_sae_acts_post"][:, index] for site, index in s.members]).any(0)
            for s in fsa.states
        ], dim=1)  # (top_k, states)  # fmt: skip
        weights = top.values / top.values.sum()
        rates.append(weights @ fires.double())
    return torch.stack(rates)  # (prompts, states)


def _one_sided_p(differences: Tensor) -> float:
    """P-value of "the mean difference is > 0" (paired, normal approximation of the t-test)."""
    n = differences.numel()
    sd = float(differences.std()) if n > 1 else 0.0
    mean = float(differences.mean())
    if sd == 0.0:
        return 0.0 if mean > 0 else 1.0
    return 0.5 * math.erfc(mean / (sd / math.sqrt(n)) / math.sqrt(2))
