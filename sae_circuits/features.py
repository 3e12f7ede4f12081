"""Feature statistics: activations over a corpus, top-activating tokens, logit effects, and
features selective for a kind of text (e.g. base64)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import torch
from einops import einsum
from jaxtyping import Float, Int
from torch import Tensor, nn

from sae_circuits._tokenize import token_text, tokens_text
from sae_circuits.sae import SAE
from sae_circuits.splice import spliced


@torch.no_grad()
def feature_activations(
    model: nn.Module, sae: SAE, tokens: Int[Tensor, "batch pos"], batch_size: int = 8
) -> Float[Tensor, "batch pos d_sae"]:
    """Activations of every feature of ``sae`` on ``tokens`` (the SAE is spliced temporarily)."""
    name = f"{sae.cfg.site}.hook_sae_acts_post"
    with spliced(model, [sae]):
        parts = []
        for start in range(0, tokens.shape[0], batch_size):
            _, cache = cast(Any, model).run_with_cache(tokens[start : start + batch_size], names_filter=name)
            parts.append(cache[name].float())
    return torch.cat(parts)


@dataclass
class TokenActivation:
    """One token of a corpus where a feature fires."""

    token: str
    context: str
    activation: float


def top_activating_tokens(
    model: nn.Module,
    acts: Float[Tensor, "batch pos d_sae"],
    tokens: Tensor,
    feature: int,
    k: int = 5,
    context: int = 6,
) -> list[TokenActivation]:
    """The ``k`` strongest activations of ``feature`` with the token and a little left context."""
    tl = cast(Any, model)  # HookedTransformer or TransformerBridge: its TL API is not on nn.Module
    values = acts[..., feature].flatten()
    top = values.topk(min(k, values.numel()))
    out = []
    for value, flat in zip(top.values.tolist(), top.indices.tolist()):
        if value <= 0:
            break
        row, pos = divmod(flat, acts.shape[1])
        out.append(TokenActivation(
            tokens_text(tl, tokens[row, pos : pos + 1]),
            tokens_text(tl, tokens[row, max(0, pos - context) : pos + 1]),
            value,
        ))  # fmt: skip
    return out


class TokenValues(NamedTuple):
    """Tokens with one number each, best first."""

    tokens: list[str]
    values: list[float]


@torch.no_grad()
def direct_logit_effects(
    model: nn.Module, directions: Float[Tensor, "n d_model"]
) -> Float[Tensor, "n d_vocab"]:
    """Direct logit effect of residual-stream ``directions``: through the final norm's gain (and
    a LayerNorm's centring) into ``W_U``. The norm's division by the residual's scale is one
    positive factor per position, the same for every token, so it is left out (it changes no
    ranking); a folded norm (``LNPre``, ``RMSPre``) has its gain in ``W_U`` already. Without the
    gain, a model loaded with ``fold_ln=False`` ranks tokens by the wrong effect.

    >>> direct_logit_effects(model, sae.W_dec[:3]).shape
    torch.Size([3, 4096])
    """
    tl = cast(Any, model)  # HookedTransformer or TransformerBridge: its TL API is not on nn.Module
    w_u = tl.W_U
    d = directions.to(device=w_u.device, dtype=w_u.dtype)
    kind = getattr(tl.cfg, "normalization_type", None)
    if kind in ("LN", "LNPre"):  # the norm subtracts the residual's mean, so the direction's too
        d = d - d.mean(-1, keepdim=True)
    gain = getattr(getattr(tl, "ln_final", None), "w", None) if kind in ("LN", "RMS") else None
    if gain is not None:
        d = d * gain.to(device=d.device, dtype=d.dtype)
    return d @ w_u


_RESIDUAL_SITE = re.compile(r"(^|\.)hook_(resid_pre|resid_mid|resid_post|mlp_out|attn_out|embed|pos_embed)$")


def residual_directions(model: nn.Module, sae: SAE, features: Sequence[int]) -> Float[Tensor, "n d_model"]:
    """The decoder rows of ``features`` as what they add to the residual stream: as they are at a
    residual-stream site (``hook_resid_*``, ``hook_mlp_out``, ``hook_attn_out``), through the
    layer's ``W_O`` at an attention ``hook_z``; a ``ValueError`` at any other site (an MLP's
    hidden layer, queries, ...), whose rows are not residual directions.

    >>> residual_directions(model, sae, [0, 1]).shape
    torch.Size([2, 128])
    """
    tl = cast(Any, model)  # HookedTransformer or TransformerBridge: its TL API is not on nn.Module
    rows, site = sae.W_dec[list(features)], sae.cfg.site
    layer = re.match(r"blocks\.(\d+)\.attn\.hook_z$", site)
    if layer is not None:
        w_o = tl.blocks[int(layer.group(1))].attn.W_O  # [n_heads, d_head, d_model]
        heads = rows.reshape(len(rows), *w_o.shape[:2]).to(device=w_o.device, dtype=w_o.dtype)
        return einsum(heads, w_o, "n head d_head, head d_head d_model -> n d_model")
    if _RESIDUAL_SITE.search(site) and rows.shape[-1] == tl.cfg.d_model:
        return rows
    raise ValueError(
        f"the SAE at {site!r} (width {rows.shape[-1]}) does not write to the residual stream: its "
        "features have no direct logit effect (sites: hook_resid_*, hook_mlp_out, hook_attn_out, attn.hook_z)"
    )


def logit_effect_values(
    model: nn.Module, sae: SAE, feature: int, k: int = 10
) -> tuple[TokenValues, TokenValues]:
    """``(promoted, suppressed)`` tokens of a feature's decoder direction through the final norm's
    gain and the unembedding (:func:`direct_logit_effects`: the direct path), median-shifted as in
    the dictionary-learning paper, with their values.

    >>> promoted, suppressed = logit_effect_values(model, sae, 7, k=5)
    >>> len(promoted.tokens), promoted.values[0] > 0 > suppressed.values[0]
    (5, True)
    >>> promoted.tokens[0], round(promoted.values[0], 2)
    ('ment', 1.4)
    """
    tl = cast(Any, model)  # HookedTransformer or TransformerBridge: its TL API is not on nn.Module
    weights = direct_logit_effects(model, residual_directions(model, sae, [feature]))[0]  # [d_vocab]
    weights = weights - weights.median()
    up, down = weights.topk(k), (-weights).topk(k)
    return (
        TokenValues([token_text(tl, int(t)) for t in up.indices], up.values.tolist()),
        TokenValues([token_text(tl, int(t)) for t in down.indices], (-down.values).tolist()),
    )


@torch.no_grad()
def logit_effects(model: nn.Module, sae: SAE, feature: int, k: int = 5) -> tuple[list[str], list[str]]:
    """The tokens :func:`logit_effect_values` ranks, without the values."""
    promoted, suppressed = logit_effect_values(model, sae, feature, k)
    return promoted.tokens, suppressed.tokens


def selective_features(
    acts_in: Float[Tensor, "... d_sae"], acts_out: Float[Tensor, "... d_sae"], k: int = 5
) -> list[tuple[int, float, float]]:
    """Features that fire on the ``in`` text and not on the ``out`` text, best first:
    ``(index, firing rate in, firing rate out)`` ranked by ``rate_in - rate_out``."""
    rate_in = (acts_in > 0).flatten(0, -2).float().mean(0)
    rate_out = (acts_out > 0).flatten(0, -2).float().mean(0)
    order = (rate_in - rate_out).argsort(descending=True)[:k]
    return [(int(i), float(rate_in[i]), float(rate_out[i])) for i in order]


def max_activation(acts: Float[Tensor, "... d_sae"], features: Sequence[int]) -> list[float]:
    """The largest observed activation of each feature (the paper's steering value)."""
    flat = acts.flatten(0, -2)
    return [float(flat[:, i].max()) for i in features]
