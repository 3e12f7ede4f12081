"""The model's own ceiling for state recovery: a linear probe of the true states.

:func:`score_automaton` says how well the *dictionaries'* features pick out the true states. When
that F1 is low, two causes read the same: the model does not track the state, or it does and no
dictionary feature isolates it (the state lives in a direction the dictionary spreads over many
token features). :func:`probe_states` tells them apart. It fits a multinomial logistic regression
from the model's activations at each site to the true state of every labelled token of the
automaton's corpus, on the first texts, and scores it on the last ones (held out) with the same
per-state F1 as :func:`score_automaton`. A probe near 1 with a dictionary F1 far below is a
limit of the dictionaries, not of the model.

Measured on the tutorial's ``sexpr`` automaton (its own 2-layer model; 200 texts of 128 symbols,
a quarter held out): the probe reaches a mean state F1 of about 0.99 at ``blocks.1.hook_resid_post``
while the best dictionary states reach 0.81. The depth of a call, which tells ``OPEN2`` from
``OPEN3``, is linearly readable but no feature of the residual SAEs separates it (the best single
features reach 0.54 on ``OPEN2``); SAEs on the attention outputs did not either.

The fit is full-batch and deterministic (zero initialisation, L-BFGS); the global RNG and the thread
count are untouched.

>>> from sae_circuits.languages import automata, corpus_texts
>>> texts, true_states = corpus_texts("markup", 8, 48, seed=0)
>>> with sc.spliced(model, saes):
...     fsa = sc.automaton(model, texts, max_states=8, attention_contexts=0,
...                        effect_contexts=2, effect_positions=4)
>>> probe = probe_states(fsa, model, true_states, sites=["blocks.1.hook_resid_post"])
>>> site = probe.sites["blocks.1.hook_resid_post"]
>>> probe.best_site, 0 <= site.mean_f1 <= 1, site.n_train > site.n_test > 0
('blocks.1.hook_resid_post', True, True)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sae_circuits._model import check_model
from sae_circuits.analysis._stats import hook_activations
from sae_circuits.fsa.automaton import FeatureAutomaton
from sae_circuits.fsa.score import _flat_labels, _ignored


@dataclass(frozen=True)
class SiteProbe:
    """The probe at one site, scored on the held-out texts."""

    accuracy: float
    """Share of held-out labelled tokens whose true state is the probe's top class."""
    state_f1: dict[Hashable, float]
    """Per true state, F1 of "the probe says this state" against "the label is this state" (NaN for
    a state no held-out token carries)."""
    mean_f1: float
    """Mean of ``state_f1`` over the states some held-out token carries: comparable with
    :attr:`~sae_circuits.fsa.score.AutomatonScore.mean_f1`."""
    n_train: int
    """Labelled tokens fitted."""
    n_test: int
    """Labelled tokens scored (held out, of a fitted state)."""
    unfitted: list[Hashable]
    """True states that only the held-out texts carry: the probe never saw them, so their tokens
    are left out of the scores (and out of ``state_f1``) instead of counting as its errors."""


@dataclass(frozen=True)
class StateProbe:
    """:func:`probe_states`' result: one :class:`SiteProbe` per site."""

    sites: dict[str, SiteProbe]
    """Per site (hook name), in the order probed."""

    @property
    def best_site(self) -> str:
        """The site with the highest held-out mean F1 (the first on ties)."""
        return max(self.sites, key=lambda s: (self.sites[s].mean_f1, -list(self.sites).index(s)))

    @property
    def best_mean_f1(self) -> float:
        """The mean F1 at :attr:`best_site`: the model's ceiling for a state-recovery method."""
        return self.sites[self.best_site].mean_f1


def probe_states(
    fsa: FeatureAutomaton,
    model: nn.Module,
    true_states: Sequence[Hashable] | Sequence[Sequence[Hashable]],
    *,
    sites: Sequence[str] | None = None,
    held_out: float = 0.25,
    l2: float = 1e-3,
    max_iter: int = 200,
    batch_size: int = 32,
    automaton: Any = None,
) -> StateProbe:
    """Fit a linear probe of the true states at each site and score it on held-out texts.

    Args:
        fsa: an automaton extracted by :func:`sae_circuits.automaton` (its corpus tokens and text
            lengths say what to run; the probe does not use its states).
        model: the model it was extracted from (spliced dictionaries do not change the activations
            read: with the error term on, a site's output is the model's own).
        true_states: one label per token of the corpus, as for :func:`score_automaton`.
        sites: hook names to probe (default: every ``blocks.{L}.hook_resid_post``).
        held_out: share of the texts, the last ones, kept for scoring (at least one text each way).
        l2: weight of the L2 penalty on the (standardised) probe weights.
        max_iter: L-BFGS iterations.
        batch_size: texts per forward pass.
        automaton: the true automaton, as given to :func:`score_automaton`: tokens labelled
            ``"START"`` are then probed when it has a state of that name (one the corpus enters
            again), as the score counts them; without it they are left out, like ``None``.
    """
    check_model(model)
    if fsa.tokens is None:
        raise ValueError(
            "this automaton keeps no corpus tokens (fsa.tokens is None); extract it with sc.automaton"
        )
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) or not 0 < held_out < 1:
        raise ValueError(f"held_out={held_out!r} must be a share of the texts in (0, 1)")
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not 0 <= l2 < math.inf:
        raise ValueError(f"l2={l2!r} must be a finite number >= 0")
    for name, value in (("max_iter", max_iter), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    if isinstance(sites, str):
        raise TypeError(f"sites={sites!r} is one string; pass a list of hook names, e.g. [{sites!r}]")
    hooks = list(dict.fromkeys(sites)) if sites is not None else _resid_sites(model)  # each site once
    if not hooks:
        raise ValueError("sites=[]: give at least one hook name (None: every blocks.{L}.hook_resid_post)")
    n_texts = int(fsa.lengths.numel())
    if n_texts < 2:
        raise ValueError(
            f"the automaton's corpus has {n_texts} text; the probe needs 2 or more (fit and held out)"
        )
    n_test = min(n_texts - 1, max(1, round(held_out * n_texts)))
    labels = _flat_labels(fsa, true_states)
    text_of = torch.repeat_interleave(torch.arange(n_texts), fsa.lengths.long().cpu())
    ignored = _ignored(automaton)
    keep = torch.tensor([x not in ignored for x in labels], dtype=torch.bool)
    fitting = keep & (text_of < n_texts - n_test)
    states = sorted({x for x, k in zip(labels, fitting.tolist()) if k}, key=str)  # the classes fitted
    if len(states) < 2 or int(fitting.sum()) < 2:
        raise ValueError(
            f"the first {n_texts - n_test} texts (the fitted ones) carry {int(fitting.sum())} labelled "
            f"tokens of {len(states)} true states; a probe needs 2 states or more (lower held_out={held_out})"
        )
    index = {s: i for i, s in enumerate(states)}
    target = torch.tensor([index.get(x, -1) for x in labels])
    scored = keep & (text_of >= n_texts - n_test) & (target >= 0)
    unfitted = sorted(
        {x for x, k in zip(labels, (keep & ~fitting).tolist()) if k and x not in index}, key=str
    )
    if not bool(scored.any()):
        raise ValueError(
            f"the last {n_test} texts (held out) carry no labelled token of a fitted state; raise "
            f"held_out={held_out} or give more texts"
        )
    acts = _activations(fsa, model, hooks, batch_size)
    result = {}
    for hook in hooks:  # one site at a time: its activations are dropped once fitted
        result[hook] = _fit_and_score(acts.pop(hook), target, fitting, scored, states, l2, max_iter, unfitted)
    return StateProbe(result)


def _resid_sites(model: Any) -> list[str]:
    return [f"blocks.{layer}.hook_resid_post" for layer in range(int(model.cfg.n_layers))]


@torch.no_grad()
def _activations(
    fsa: FeatureAutomaton, model: Any, hooks: list[str], batch_size: int
) -> dict[str, Float[Tensor, "tokens d"]]:
    """Each hook's activation at every corpus token (BOS prepended and dropped as extracted)."""
    assert fsa.tokens is not None
    unknown = [h for h in hooks if h not in model.hook_dict]
    if unknown:
        raise ValueError(
            f"sites {unknown} are not hook points of this model (e.g. 'blocks.0.hook_resid_post')"
        )
    bos = None
    if fsa.metadata.get("prepend_bos"):
        bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
        if bos is None:
            raise ValueError(
                "the automaton was extracted with BOS prepended, but the model's tokenizer has no BOS"
            )
    lengths = [int(n) for n in fsa.lengths.tolist()]
    rows = torch.zeros(len(lengths), max(lengths), dtype=torch.long)  # right padding: causal attention
    real = torch.zeros(rows.shape, dtype=torch.bool)  # keeps the real tokens' activations exact
    for i, text in enumerate(torch.split(fsa.tokens.cpu(), lengths)):
        rows[i, : len(text)], real[i, : len(text)] = text, True
    if bos is not None:
        rows = torch.cat([torch.full((len(lengths), 1), bos), rows], 1)
    device = next(model.parameters()).device
    acts = hook_activations(model, hooks, rows.to(device), batch_size, skip_first_position=bos is not None)
    return {hook: x[real.reshape(-1)] for hook, x in acts.items()}


def _fit_and_score(
    x: Float[Tensor, "tokens d"], target: Int[Tensor, " tokens"], train: Tensor, test: Tensor,
    states: list[Hashable], l2: float, max_iter: int, unfitted: list[Hashable],
) -> SiteProbe:  # fmt: skip
    """A multinomial logistic regression on standardised features (train statistics)."""
    with torch.inference_mode(False):  # a caller's inference mode would refuse the fit's gradients
        return _fit(x.clone(), target.clone(), train.clone(), test.clone(), states, l2, max_iter, unfitted)


def _fit(
    x: Tensor, target: Tensor, train: Tensor, test: Tensor, states: list[Hashable], l2: float, max_iter: int,
    unfitted: list[Hashable],
) -> SiteProbe:  # fmt: skip
    x = x.double()
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    z = (x - mean) / std
    k = len(states)
    weight = torch.zeros(z.shape[1], k, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")
    zt, yt = z[train], target[train]

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(zt @ weight + bias, yt) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = (z[test] @ weight + bias).argmax(-1)
    truth = target[test]
    f1: dict[Hashable, float] = {}
    for i, state in enumerate(states):
        tp = int(((predicted == i) & (truth == i)).sum())
        support, said = int((truth == i).sum()), int((predicted == i).sum())
        f1[state] = math.nan if support == 0 else 2 * tp / (support + said)
    scored = [v for v in f1.values() if not math.isnan(v)]
    return SiteProbe(
        accuracy=float((predicted == truth).double().mean()) if truth.numel() else math.nan,
        state_f1=f1,
        mean_f1=sum(scored) / len(scored) if scored else math.nan,
        n_train=int(train.sum()),
        n_test=int(test.sum()),
        unfitted=list(unfitted),
    )
