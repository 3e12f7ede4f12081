"""What an attribution graph explains: logit tokens, a custom logit direction, or features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sae_circuits._tokenize import token_text
from sae_circuits.positions import is_int


@dataclass(frozen=True)
class Feature:
    """One dictionary feature at one prompt position (a graph target or node).

    >>> target = sc.Feature("blocks.2.hook_mlp_out", -1, 812)   # the last position
    >>> with sc.spliced(model, transcoders):
    ...     g = sc.attribute(model, "<p>hi</p>", targets=target, max_feature_nodes=0)
    >>> g.labels[-1]
    'blocks.2.hook_mlp_out[812]@6'
    """

    site: str
    """The hook name the dictionary is spliced at (a transcoder's output hook)."""
    position: int
    """Prompt position (negative counts from the end)."""
    index: int
    """Feature index in the dictionary."""


@dataclass(frozen=True)
class LogitDirection:
    """A direction in logit space, e.g. ``logit(" True") - logit(" False")``.

    The graph explains ``direction · logits`` at the last position, demeaned over the vocabulary
    like token targets (so a difference of two tokens is explained as it is).
    """

    direction: Float[Tensor, " d_vocab"]
    label: str = "direction"


TargetSpec = (
    None | str | int | Feature | LogitDirection | Tensor | Sequence[str | int | Feature | LogitDirection]
)


@dataclass(frozen=True)
class ResolvedTarget:
    """A target ready to inject: the kind, what it is, its weight in the influence and its label."""

    kind: str  # "token" | "direction" | "feature"
    weight: float
    label: str
    token: int = -1
    direction: Tensor | None = None
    feature: Feature | None = None
    probability: float = 0.0


def default_token_targets(
    probs: Float[Tensor, " d_vocab"], model: Any, cumulative: float = 0.95, max_targets: int = 10
) -> list[ResolvedTarget]:
    """The most likely next tokens until their probabilities add up to ``cumulative`` (at most
    ``max_targets``), weighted by probability."""
    top = probs.double().sort(descending=True)
    count = int(torch.searchsorted(top.values.cumsum(0), torch.tensor(cumulative, dtype=torch.float64))) + 1
    count = max(1, min(count, max_targets, probs.numel()))
    return [_token_target(int(t), probs, model) for t in top.indices[:count]]


def resolve_targets(
    targets: TargetSpec, probs: Float[Tensor, " d_vocab"], model: Any, n_tokens: int
) -> list[ResolvedTarget]:
    """Turn a user's ``targets=`` into a checked list (see :func:`sae_circuits.attribute`)."""
    if targets is None:
        return default_token_targets(probs, model)
    if isinstance(targets, (str, Feature, LogitDirection, Tensor)) or is_int(targets):
        targets = [targets]  # type: ignore[list-item]
    if not isinstance(targets, Sequence) or len(targets) == 0:
        raise ValueError(
            f"targets={targets!r}: expected None, tokens, a LogitDirection, a Feature "
            "or a non-empty list of them"
        )
    resolved: list[ResolvedTarget] = []
    n_features = sum(isinstance(t, Feature) for t in targets)
    for item in targets:
        if isinstance(item, Feature):
            feature = Feature(item.site, _position(item.position, n_tokens), item.index)
            label = f"{item.site}[{item.index}]@{feature.position}"
            resolved.append(ResolvedTarget("feature", 1.0 / n_features, label, feature=feature))
        elif isinstance(item, (LogitDirection, Tensor)):
            direction = item.direction if isinstance(item, LogitDirection) else item
            label = item.label if isinstance(item, LogitDirection) else "direction"
            if not isinstance(direction, Tensor) or direction.shape != probs.shape:
                shape = tuple(direction.shape) if isinstance(direction, Tensor) else type(direction).__name__
                raise ValueError(
                    f"a logit direction must have shape ({probs.numel()},) (d_vocab), got {shape}"
                )
            resolved.append(ResolvedTarget("direction", 1.0, label, direction=direction.detach()))
        elif isinstance(item, str) or is_int(item):
            resolved.append(_token_target(_token_id(item, model, probs.numel()), probs, model))
        else:
            raise TypeError(f"target {item!r}: expected a token (str or id), a Feature or a LogitDirection")
    first: dict[tuple[str, Any], int] = {}  # one node per token or feature: a repeat has no id of its own
    for k, (item, r) in enumerate(zip(targets, resolved)):
        key = {"token": ("token", r.token), "feature": ("feature", r.feature)}.get(r.kind)
        if key is None:
            continue  # a logit direction: not keyed by a token or feature
        if key in first:
            raise ValueError(
                f"targets[{k}] = {item!r} is the same {r.kind} as targets[{first[key]}] = "
                f"{targets[first[key]]!r}; name each target once"
            )
        first[key] = k
    return resolved


def _token_target(token: int, probs: Tensor, model: Any) -> ResolvedTarget:
    p = float(probs[token])
    text = token_text(model, token)
    return ResolvedTarget("token", p, f'Output "{text}" (p={p:.3f})', token=token, probability=p)


def _token_id(item: str | int, model: Any, d_vocab: int) -> int:
    if isinstance(item, str):
        if getattr(model, "tokenizer", None) is None:
            raise ValueError(f"target {item!r} is a string but the model has no tokenizer; pass a token id")
        ids = model.to_tokens(item, prepend_bos=False)[0].tolist()
        if len(ids) != 1:
            raise ValueError(
                f"target {item!r} is not one token of the vocabulary: it encodes to {len(ids)} tokens {ids}"
            )
        return int(ids[0])
    if not 0 <= int(item) < d_vocab:
        raise ValueError(f"target token id {item} is not in the vocabulary [0, {d_vocab})")
    return int(item)


def _position(position: int, n_tokens: int) -> int:
    if not is_int(position) or not -n_tokens <= position < n_tokens:
        raise ValueError(f"feature target position {position!r} is outside the prompt's {n_tokens} tokens")
    return int(position) % n_tokens
