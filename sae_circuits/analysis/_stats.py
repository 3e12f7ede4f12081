"""What every analysis reads: activations at hook points over a token set, dictionary activations
computed from them (no splicing, so several dictionaries of one site can be read at once), and
Pearson correlations between two sets of columns, computed in chunks.

Tokens are flattened to one row per token; position 0 of every sequence is dropped by default
(its activations are outliers in most models, and dictionaries are trained without it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sae_circuits.sae import SAE


def check_tokens(tokens: Any, model: nn.Module | None = None) -> Int[Tensor, "batch pos"]:
    """``tokens`` as a 2-d tensor of non-negative integer ids (below ``model.cfg.d_vocab`` when a
    model is given), or a ``ValueError`` naming what was passed."""
    if (
        not isinstance(tokens, Tensor)
        or tokens.ndim != 2
        or tokens.is_floating_point()
        or tokens.dtype == torch.bool
        or tokens.numel() == 0
        or int(tokens.min()) < 0
    ):
        what = (
            f"shape {tuple(tokens.shape)}, dtype {tokens.dtype}"
            if isinstance(tokens, Tensor)
            else type(tokens)
        )
        raise ValueError(f"tokens: expected a non-empty [batch, pos] integer tensor, got {what}")
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if d_vocab is not None and int(tokens.max()) >= d_vocab:
        raise ValueError(f"tokens: id {int(tokens.max())} is not in the model's vocabulary of {d_vocab}")
    return tokens


class LabelledRows(NamedTuple):
    """Token rows cut from several sources of text, and which source each row came from."""

    tokens: Int[Tensor, "rows length"]
    source: Int[Tensor, " rows"]
    """Index into ``names`` of every row."""
    names: list[str]


def labelled_rows(
    model: nn.Module, texts: Mapping[str, Sequence[str]], length: int, rows_per_source: int
) -> LabelledRows:
    """``rows_per_source`` rows of ``length`` tokens from each source of ``texts`` (``{name: texts}``):
    each source's texts are tokenized without BOS, joined with the tokenizer's end-of-text token
    (as the models were trained) and cut into rows; fewer rows where a source runs out.

    >>> rows = labelled_rows(model, {"markup": texts}, 32, 4)
    >>> rows.tokens.shape, rows.names
    (torch.Size([4, 32]), ['markup'])
    """
    tl = cast(Any, model)
    if not isinstance(length, int) or length < 2:
        raise ValueError(f"length={length!r}: expected an int >= 2")
    if not isinstance(rows_per_source, int) or rows_per_source < 1:
        raise ValueError(f"rows_per_source={rows_per_source!r}: expected a positive int")
    eot = getattr(getattr(tl, "tokenizer", None), "eos_token_id", None)
    rows: list[Tensor] = []
    source: list[int] = []
    names: list[str] = []
    for name, items in texts.items():
        stream: list[int] = []
        for text in items:
            stream += tl.to_tokens(text, prepend_bos=False, truncate=False)[0].tolist()
            stream += [] if eot is None else [eot]
            if len(stream) >= length * rows_per_source:
                break
        n = min(rows_per_source, len(stream) // length)
        if n == 0:
            raise ValueError(
                f"source {name!r}: its texts hold {len(stream)} tokens, fewer than one row of {length}"
            )
        rows.append(torch.tensor(stream[: n * length]).view(n, length))
        source += [len(names)] * n
        names.append(name)
    if not rows:
        raise ValueError("texts: expected at least one source of texts, got none")
    return LabelledRows(torch.cat(rows), torch.tensor(source), names)


@torch.no_grad()
def hook_activations(
    model: nn.Module,
    hook_names: Sequence[str],
    tokens: Int[Tensor, "batch pos"],
    batch_size: int = 16,
    skip_first_position: bool = True,
) -> dict[str, Float[Tensor, "n_tokens width"]]:
    """Activations at each of ``hook_names`` over ``tokens``, one row per token (heads of ``hook_z``
    flattened), float32 on the CPU. Position 0 is left out unless ``skip_first_position=False``."""
    tokens = check_tokens(tokens, model)
    names = list(dict.fromkeys(hook_names))
    known = set(cast(Any, model).hook_dict)
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"hook points {missing} are not in the model (e.g. {sorted(known)[:3]})")
    start = 1 if skip_first_position else 0
    parts: dict[str, list[Tensor]] = {n: [] for n in names}
    for first in range(0, tokens.shape[0], batch_size):
        _, cache = cast(Any, model).run_with_cache(
            tokens[first : first + batch_size], names_filter=lambda name: name in parts
        )
        rows = tokens[first : first + batch_size]
        for name in names:
            if name not in cache:
                raise ValueError(
                    f"hook point {name!r} did not run in the forward pass; read one that always runs"
                )
            if tuple(cache[name].shape[:2]) != tuple(rows.shape):
                raise ValueError(
                    f"hook point {name!r} has activations of shape {list(cache[name].shape)}; reading "
                    "them per token needs [batch, position, ...] (e.g. hook_resid_post, hook_z), "
                    f"not {list(rows.shape)} first"
                )
            x = cache[name][:, start:]
            parts[name].append(x.reshape(x.shape[0] * x.shape[1], -1).float().cpu())
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


@torch.no_grad()
def encode_rows(
    sae: SAE, x: Float[Tensor, "n_tokens d_in"], chunk: int = 65_536
) -> Float[Tensor, "n_tokens d_sae"]:
    """``sae.encode`` of activation rows, ``chunk`` rows at a time on the SAE's device; float32 on
    the CPU."""
    parts = [
        sae.encode(x[i : i + chunk].to(sae.device, sae.dtype)).float().cpu() for i in range(0, len(x), chunk)
    ]
    return torch.cat(parts)


@torch.no_grad()
def dictionary_activations(
    model: nn.Module,
    saes: Sequence[SAE],
    tokens: Int[Tensor, "batch pos"],
    batch_size: int = 16,
    skip_first_position: bool = True,
) -> list[Float[Tensor, "n_tokens d_sae"]]:
    """Feature activations of every dictionary in ``saes`` (one row per token), computed from
    the model's activations at each dictionary's input hook; nothing is spliced, so dictionaries
    of the same site are read in one pass. Activations at a hook already replaced by a spliced
    SAE are the SAE's output there, as the model sees it."""
    inputs = hook_activations(model, [s.cfg.hook_name for s in saes], tokens, batch_size, skip_first_position)
    out = [encode_rows(sae, inputs[sae.cfg.hook_name]) for sae in saes]
    return out


class BestMatch(NamedTuple):
    """For every column of the first set, its most correlated column in the second."""

    value: Float[Tensor, " n_a"]
    """The best correlation (0 for a column that never varies)."""
    match: Int[Tensor, " n_a"]
    """Which column of the second set it is."""


def _standardized(x: Float[Tensor, "n k"], chunk: int = 1024) -> Float[Tensor, "n k"]:
    """Columns centred and scaled to unit norm (float32), worked out in float64 a chunk of columns
    at a time so that memory stays at one float64 chunk (the whole matrix in float64 would be
    8 bytes per token per feature). A constant column (a dead feature) becomes 0."""
    out = torch.empty(x.shape, dtype=torch.float32)
    for i in range(0, x.shape[1], chunk):
        part = x[:, i : i + chunk].double()
        centred = part - part.mean(0)
        norm = centred.norm(dim=0)
        scale = part.abs().amax(0) * x.shape[0] ** 0.5
        constant = norm <= 1e-12 * scale
        out[:, i : i + chunk] = torch.where(constant, 0.0, centred / norm.clamp_min(1e-300)).float()
    return out


def correlation(
    a: Float[Tensor, "n_tokens n_a"], b: Float[Tensor, "n_tokens n_b"], chunk: int = 2048
) -> Float[Tensor, "n_a n_b"]:
    """Pearson correlation of every column of ``a`` with every column of ``b`` (the same tokens in
    the same order). A column that never varies (a dead feature) correlates 0 with everything.

    >>> x = torch.randn(100, 3)
    >>> torch.allclose(correlation(x, x).diagonal(), torch.ones(3), atol=1e-5)
    True
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            "correlation: expected [n, a] and [n, b] over the same n tokens, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] < 2:
        raise ValueError(f"correlation: needs at least 2 tokens, got {a.shape[0]}")
    zb = _standardized(b)
    rows = []
    for i in range(0, a.shape[1], chunk):
        za = _standardized(a[:, i : i + chunk])
        rows.append(za.T @ zb)  # [chunk, n_b]
    return torch.cat(rows).clamp(-1.0, 1.0)


def best_match(similarity: Float[Tensor, "n_a n_b"]) -> BestMatch:
    """Row-wise maximum of a similarity matrix and where it is."""
    value, index = similarity.max(dim=1)
    return BestMatch(value, index)


def decoder_cosine(a: SAE, b: SAE) -> Float[Tensor, "d_sae_a d_sae_b"]:
    """Cosine similarity of every decoder row of ``a`` with every decoder row of ``b``."""
    da = torch.nn.functional.normalize(a.W_dec.detach().float().cpu(), dim=1)
    db = torch.nn.functional.normalize(b.W_dec.detach().float().cpu(), dim=1)
    return da @ db.T
