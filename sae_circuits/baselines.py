"""Baselines: random dictionaries to report beside trained ones.

A score of features (state F1, transition AUROC, a confirm rate) is evidence about the *trained*
dictionary only when random dictionaries of the same shape at the same sites score lower
(DESIGN.md, "A score must separate trained from random dictionaries").

>>> random = sc.random_like(sae, model, model.to_tokens(texts), seed=0)  # one per trained SAE
>>> with sc.spliced(model, [random]):
...     fsa = sc.automaton(model, texts, max_states=8, attention_contexts=0, effect_contexts=4,
...                        effect_positions=4, progress=False)
>>> type(fsa).__name__, len(fsa.states) <= 8
('FeatureAutomaton', True)
"""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor, nn

from sae_circuits._model import check_token_ids
from sae_circuits.positions import check_seed
from sae_circuits.sae import SAE
from sae_circuits.splice import bypassed


def random_like(
    sae: SAE,
    model: nn.Module | None = None,
    tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    active: int = 20,
    seed: int = 0,
) -> SAE:
    """A random JumpReLU dictionary shaped like ``sae``, for a random-dictionary baseline.

    Same ``d_in``, ``d_sae``, hook names (a transcoder's output hook and ``d_out`` too), dtype,
    device and ``hook_z`` reshaping; architecture ``jumprelu`` (``jumprelu_transcoder`` for any
    transcoder: a random baseline has no learned skip connection), no input normalisation.
    Weights: random unit-norm decoder rows, encoder = decoder transpose (an independent unit-norm
    encoder when a transcoder's ``d_in != d_out``), zero biases: the initialisation of
    :meth:`SAE.reset_parameters`, drawn from a ``torch.Generator`` seeded with ``seed`` (torch's
    global RNG is left untouched).

    Thresholds: each feature's is set so that it fires on ``active / d_sae`` of the tokens, so
    about ``active`` features fire per token, on the activations that ``model`` (run with every
    spliced dictionary bypassed) produces at ``sae.cfg.hook_name`` over ``tokens``. Without a
    model and tokens, the inputs are taken to be isotropic with norm ``sqrt(d_in)`` (pre-activations
    standard normal): every threshold is the normal quantile ``1 - active / d_sae``. Thresholds are
    at least ``1e-3``, so a feature never fires on a zero pre-activation.

    Args:
        sae: the dictionary to imitate (any architecture).
        model: the model whose activations calibrate the thresholds (give ``tokens`` too).
        tokens: token ids ``[batch, pos]`` (or ``[pos]``) to run ``model`` on.
        active: target number of features firing per token, ``1 <= active < d_sae``.
        seed: seeds the weights (the same seed, the same dictionary).

    >>> all_tokens = model.to_tokens(texts)  # 384 tokens: enough for 20 of 2048 features
    >>> random = random_like(sae, model, all_tokens, active=20, seed=0)
    >>> random.cfg.architecture, random.cfg.hook_name, random.W_dec.shape
    ('jumprelu', 'blocks.1.hook_resid_post', torch.Size([2048, 128]))
    >>> _, cache = model.run_with_cache(all_tokens, names_filter=random.cfg.hook_name)
    >>> round(float((random.encode(cache[random.cfg.hook_name]) > 0).sum(-1).float().mean()))
    20
    """
    if not isinstance(sae, SAE):
        raise TypeError(f"sae must be an SAE, got {type(sae).__name__}")
    d_sae = sae.cfg.d_sae
    if not isinstance(active, int) or isinstance(active, bool) or not 1 <= active < d_sae:
        raise ValueError(f"active={active!r} must be an integer with 1 <= active < d_sae={d_sae}")
    check_seed(seed)
    if (model is None) != (tokens is None):
        given, missing = ("model", "tokens") if tokens is None else ("tokens", "model")
        raise ValueError(
            f"{given} was given without {missing}: give both to calibrate the thresholds, or neither"
        )

    cfg = sae.cfg
    transcoder = cfg.is_transcoder
    new_cfg = replace(
        cfg,
        architecture="jumprelu_transcoder" if transcoder else "jumprelu",
        apply_b_dec_to_input=False if transcoder else cfg.apply_b_dec_to_input,
        normalize_activations="none",
        k=None,
        rescale_acts_by_decoder_norm=False,
        metadata={**cfg.metadata, "baseline": "random_like", "seed": seed, "active": active},
    )
    random = SAE.empty(new_cfg)  # SAE.__init__ would draw from the caller's global RNG
    _fill(random, seed)
    with torch.no_grad():
        if model is None:
            random.threshold.fill_(max(NormalDist().inv_cdf(1 - active / d_sae), 1e-3))
        else:
            random.threshold.copy_(_calibrated(random, model, tokens, active))
    return random


@torch.no_grad()
def _fill(sae: SAE, seed: int) -> None:
    """:meth:`SAE.reset_parameters` with a private generator (drawn in float32 on the CPU, so a
    seed gives the same dictionary on every device)."""
    generator = torch.Generator().manual_seed(seed)
    for param in sae.parameters():
        param.zero_()
    d_in, d_out, d_sae = sae.cfg.d_in, sae.cfg.output_width, sae.cfg.d_sae
    direction = torch.randn(d_sae, d_out, generator=generator)
    sae.W_dec.copy_(direction / direction.norm(dim=-1, keepdim=True))
    if d_in == d_out:
        sae.W_enc.copy_(sae.W_dec.T)
    else:
        encoder = torch.randn(d_in, d_sae, generator=generator)
        sae.W_enc.copy_(encoder / encoder.norm(dim=0, keepdim=True))


@torch.no_grad()
def _calibrated(sae: SAE, model: Any, tokens: Any, active: int) -> Tensor:
    """Per-feature threshold: the pre-activation exceeded on ``active / d_sae`` of the tokens."""
    check_token_ids(tokens, model, "tokens")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise ValueError(f"tokens must be [batch, pos] token ids, got shape {list(tokens.shape)}")
    name = sae.cfg.hook_name
    if name not in model.hook_dict:
        raise ValueError(f"the model has no hook {name!r} (the SAE's hook_name) to calibrate on")
    with bypassed(model):
        _, cache = model.run_with_cache(tokens.to(next(model.parameters()).device), names_filter=[name])
    acts = cache[name]
    pre = sae.pre_activations(acts).reshape(-1, sae.cfg.d_sae)  # (tokens, d_sae)
    n = pre.shape[0]
    firing = active / sae.cfg.d_sae * n  # tokens each feature should fire on
    if firing < 1:
        raise ValueError(
            f"{n} tokens are too few to calibrate {sae.cfg.d_sae} features for active={active}: "
            f"give at least {math.ceil(sae.cfg.d_sae / active)} tokens"
        )
    k = max(1, n - round(firing))  # the k-th smallest is exceeded by about `firing` tokens
    exact = pre if pre.dtype == torch.float64 else pre.float()  # no rounding below the k-th value
    return exact.kthvalue(k, dim=0).values.clamp_min(1e-3).to(sae.threshold.dtype)
