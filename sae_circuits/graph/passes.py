"""One batched pass: up to ``batch_size`` rows of the adjacency matrix from one backward pass.

The frozen replacement model (``replacement.py``) has been run forward once over ``batch_size``
copies of the prompt. Each row injects its target vector into its own copy: a logit row the
demeaned unembedding direction at the last position of the final residual stream, a feature row
the feature's encoder direction at its position in its site's input. One ``autograd.grad`` then
gives, per copy, the gradient at the embedding and at every site output, and the row's edges are
gradient · vector:

- token ``p``: ``grad_embedding[p] · embedding[p]``;
- error node (site, ``p``): ``grad_site[p] · error[p]``;
- active feature ``k``: ``grad_site[position_k] · decoded_k``.

Nothing reaches a position after the latest row's own, so only the first ``horizon`` positions
are read.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_circuits.graph.replacement import FrozenPass, PromptValues
from sae_circuits.graph.rows import ActiveFeatures, Row
from sae_circuits.graph.targets import ResolvedTarget


class EdgeBlock(NamedTuple):
    """The edges of ``k`` rows from one pass, dense (zeros where no path exists)."""

    tokens: Float[Tensor, "k pos"]
    errors: Float[Tensor, "k error_cols"]
    error_columns: Int[Tensor, " error_cols"]
    """Error node of each column: ``site * pos + position``."""
    features: Float[Tensor, "k cols"]
    feature_columns: Int[Tensor, " cols"]
    """Active id of each column: the active features of the sites the gradient reached."""

    def mass(self, feature_magnitude: Float[Tensor, "k cols"] | None = None) -> Float[Tensor, " k"]:
        """Each row's total absolute input (tokens, errors and features), in float64;
        ``feature_magnitude`` is ``features.abs()`` when the caller already has it."""
        if feature_magnitude is None:
            feature_magnitude = self.features.abs()
        return (
            self.tokens.abs().sum(1).double()
            + self.errors.abs().sum(1).double()
            + feature_magnitude.sum(1).double()
        )


def logit_vector(model: Any, target: ResolvedTarget) -> Float[Tensor, " d_model"]:
    """``W_U`` times the (vocabulary-demeaned) logit direction of a token or direction target."""
    w_u = model.W_U  # (d_model, d_vocab)
    if target.kind == "token":
        return w_u[:, target.token] - w_u.mean(dim=1)
    assert target.direction is not None
    direction = target.direction.to(w_u)
    return w_u @ direction - w_u.mean(dim=1) * direction.sum()


def row_gradients(
    model: Any, pass_: FrozenPass, values: PromptValues, targets: list[ResolvedTarget], rows: list[Row]
) -> list[Tensor | None]:
    """Inject every row's target vector in its own copy of the prompt; one backward pass.

    Returns the gradient at the embedding, then at each site output (None where none arrives),
    each ``(batch, pos, ...)``."""
    seeds: dict[str, Tensor] = {}
    final_seed = None
    by_site: dict[int, list[tuple[int, int, int]]] = {}
    for b, row in enumerate(rows):
        if row.site < 0:  # a logit target
            if final_seed is None:
                final_seed = torch.zeros_like(pass_.final)
            final_seed[b, -1] = logit_vector(model, targets[row.target]).to(pass_.final.dtype)
        else:
            by_site.setdefault(row.site, []).append((b, row.position, row.index))
    for site_i, entries in by_site.items():
        site = values.sites[site_i]
        x = pass_.inputs[site.name]
        copies, positions, indices = (torch.tensor(column) for column in zip(*entries))
        seed = torch.zeros_like(x)
        seed[copies, positions] = (
            site.encoder_directions(positions, indices).reshape(-1, *x.shape[2:]).to(x.dtype)
        )
        seeds[site.name] = seed
    outputs = [pass_.inputs[name] for name in seeds] + ([pass_.final] if final_seed is not None else [])
    grad_outputs = list(seeds.values()) + ([final_seed] if final_seed is not None else [])
    leaves = [pass_.embedding] + [pass_.outputs[s.name] for s in values.sites]
    live = [i for i, o in enumerate(outputs) if o.requires_grad]
    if not live:
        return [None] * len(leaves)
    return list(
        torch.autograd.grad(
            [outputs[i] for i in live],
            leaves,
            [grad_outputs[i] for i in live],
            retain_graph=True,
            allow_unused=True,
        )
    )


def edges_from_gradients(
    grads: list[Tensor | None], values: PromptValues, active: ActiveFeatures, rows: list[Row]
) -> EdgeBlock:
    """Dot each gradient with the vectors of the nodes it reaches: the rows' edges.

    Only the sites the gradient reaches are read: their active features are the columns of
    the block."""
    n = values.tokens.numel()
    k = len(rows)
    horizon = 1 + max(n - 1 if row.site < 0 else row.position for row in rows)  # nothing reaches later
    tokens = torch.zeros(k, n)
    if grads[0] is not None:  # else no path from the embedding to these rows
        embedding = values.embedding[:horizon].to(grads[0].dtype)
        tokens[:, :horizon] = (grads[0][:k, :horizon] * embedding).sum(-1).float()
    site_grads = {i: g for i, g in enumerate(grads[1:]) if g is not None}
    live = sorted(site_grads)
    errors: list[Tensor] = []
    error_columns: list[Tensor] = []
    features: list[Tensor] = []
    feature_columns: list[Tensor] = []
    for i in live:
        site = values.sites[i]
        g = site_grads[i][:k, :horizon].reshape(k, horizon, -1).to(site.decoded.dtype)
        errors.append((g * site.error[:horizon]).sum(-1).float())  # (an einsum here would be a slow bmm)
        error_columns.append(torch.arange(i * n, i * n + horizon))
        features.append(site.feature_dots(g).float())
        feature_columns.append(torch.arange(active.offsets[i], active.offsets[i] + features[-1].shape[1]))
    if not live:
        empty = torch.zeros(0, dtype=torch.long)
        return EdgeBlock(tokens, torch.zeros(k, 0), empty, torch.zeros(k, 0), empty)
    return EdgeBlock(
        tokens,
        torch.cat(errors, dim=1),  # (k, live sites * horizon)
        torch.cat(error_columns),
        torch.cat(features, dim=1),  # (k, cols)
        torch.cat(feature_columns),
    )
