"""Causal check of automaton transitions: pin the source, see whether the destination follows.

For a transition ``A -> B`` and each of ``n_prompts`` prefixes of the corpus (cut at random
places, fixed by ``seed``), the last prefix token is position t:

- baseline: the model picks its next token greedily; does B fire on it (position t+1)?
- pinned: A's member features are clamped at their largest activation seen in the corpus (the
  dictionary-learning paper's steering recipe) at position t, in both forward passes (choosing
  the token, then reading B at t+1) — so both mechanisms, the token emitted and what attention
  carries from t, can act.

``effect`` = B's firing rate pinned minus unpinned; a transition is ``confirmed`` when the effect
is positive and a one-sided two-proportion z-test gives p < ``alpha``.
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
    seed: int = 0,
    progress: bool = True,
) -> FeatureAutomaton:
    """Pin each transition's source and measure its destination's next-step firing; stores
    ``effect`` and ``confirmed`` on the transitions checked (by default the ``top`` heaviest).

    >>> fsa.validate(model)                         # doctest: +SKIP
    >>> [(t.src, t.dst, t.effect, t.confirmed) for t in fsa.transitions if t.effect is not None][:3]  # doctest: +SKIP
    """
    if fsa.tokens is None:
        raise ValueError("this automaton keeps no corpus tokens to draw prompts from (extract it with sc.automaton)")
    missing = {site for s in fsa.states for site, _ in s.members} - set(saes_of(model))
    if missing:
        raise ValueError(f"the automaton's sites {sorted(missing)} have no dictionary spliced in this model")
    if n_prompts < 2:
        raise ValueError(f"n_prompts={n_prompts} must be at least 2")
    chosen = transitions if transitions is not None else sorted(fsa.transitions, key=lambda t: -t.weight)[:top]
    prompts = _prompts(fsa, model, n_prompts, seed)
    base_fire = _run(model, fsa, prompts, None)
    for t in tqdm(chosen, desc="validating transitions", unit="transition", disable=not progress, leave=False):
        pinned_fire = _run(model, fsa, prompts, fsa.states[_index(fsa, t.src)])
        dst = _index(fsa, t.dst)
        pinned, base = float(pinned_fire[:, dst].double().mean()), float(base_fire[:, dst].double().mean())
        t.effect = pinned - base
        t.confirmed = t.effect > 0 and _one_sided_p(pinned, base, len(prompts)) < alpha
    fsa.metadata["validation"] = {"n_prompts": len(prompts), "alpha": alpha, "seed": seed, "checked": len(chosen)}
    return fsa


def _index(fsa: FeatureAutomaton, state_id: int) -> int:
    return next(i for i, s in enumerate(fsa.states) if s.id == state_id)


def _prompts(fsa: FeatureAutomaton, model: Any, n: int, seed: int) -> list[Tensor]:
    """``n`` corpus prefixes of at least 4 text tokens, cut at random places."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), fsa.lengths.cumsum(0)])
    long_enough = [i for i, length in enumerate(fsa.lengths.tolist()) if length >= 5]
    if not long_enough:
        raise ValueError("no text of the automaton's corpus has 5 tokens or more")
    bos = [model.tokenizer.bos_token_id] if fsa.metadata.get("prepend_bos") and model.tokenizer is not None else []
    prompts = []
    for k in range(n):
        text = long_enough[int(torch.randint(len(long_enough), (1,), generator=generator))]
        cut = int(torch.randint(4, int(fsa.lengths[text]), (1,), generator=generator))
        prefix = fsa.tokens[int(starts[text]) : int(starts[text]) + cut]
        prompts.append(torch.cat([torch.tensor(bos, dtype=torch.long), prefix]))
    return prompts


@torch.no_grad()
def _run(model: Any, fsa: FeatureAutomaton, prompts: list[Tensor], source: State | None) -> Tensor:
    """Which states fire on each prompt's greedy next token, with ``source`` pinned at the last
    prompt position (or nothing pinned)."""
    names = {f"{site}.hook_sae_acts_post" for s in fsa.states for site, _ in s.members}
    fires = []
    for prompt in prompts:
        last = int(prompt.numel()) - 1
        pins = [] if source is None else [
            clamp(site, index, source.max_activation, positions=[last]) for site, index in source.members
        ]  # fmt: skip
        with intervene(model, pins):
            nxt = int(model(prompt.unsqueeze(0))[0, -1].argmax())
            extended = torch.cat([prompt, torch.tensor([nxt])]).unsqueeze(0)
            _, cache = model.run_with_cache(extended, names_filter=lambda n: n in names)
        active = {name: cache[name][0, -1] > 0 for name in names}
        fires.append(torch.tensor([
            any(bool(active[f"{site}.hook_sae_acts_post"][index]) for site, index in s.members) for s in fsa.states
        ]))  # fmt: skip
    return torch.stack(fires)


def _one_sided_p(p1: float, p0: float, n: int) -> float:
    """P-value of "rate 1 > rate 0" for two proportions over ``n`` trials each (pooled z-test)."""
    pooled = (p1 + p0) / 2
    se = math.sqrt(max(pooled * (1 - pooled) * 2 / n, 1e-12))
    z = (p1 - p0) / se
    return 0.5 * math.erfc(z / math.sqrt(2))
