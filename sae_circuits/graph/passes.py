"""One batched pass: up to ``batch_size`` rows of the adjacency matrix from one backward pass.

The frozen replacement model (``replacement.py``) has been run forward once over the prompt
(or the prefix the rows need). Each row injects its target vector into its own slice of a batched
seed: a logit row the demeaned unembedding direction at the last position of the final residual
stream, a feature row the feature's encoder direction at its position in its site's input. One
batched ``autograd.grad`` then gives, per row, the gradient at the embedding and at every site
output, and the row's edges are gradient · vector:

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

from sae_circuits.graph.replacement import FrozenPass, PromptValues, frozen_pass
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


def horizon_of(rows: list[Row], n_positions: int) -> int:
    """How many positions a batch of rows needs: up to the latest row's own (logit rows: all)."""
    return 1 + max(n_positions - 1 if row.site < 0 else row.position for row in rows)


class FrozenPasses:
    """The frozen forward passes a run's batches need, one per horizon bucket.

    A batch only needs the prefix up to its latest row (the model is causal), so its backward
    pass runs over that prefix only. Horizons are rounded up to a multiple of ``n / buckets``
    so that at most ``buckets`` forward passes (one prompt copy each) are made and kept.
    """

    def __init__(self, model: Any, values: PromptValues, buckets: int = 8) -> None:
        self.model, self.values = model, values
        n = values.tokens.numel()
        self.step = max(1, -(-n // buckets))
        self.passes: dict[int, FrozenPass] = {}

    def for_rows(self, rows: list[Row]) -> FrozenPass:
        """The pass (made now if it does not exist yet) covering every row of ``rows``."""
        n = self.values.tokens.numel()
        horizon = min(n, -(-horizon_of(rows, n) // self.step) * self.step)
        if horizon not in self.passes:
            self.passes[horizon] = frozen_pass(self.model, self.values, horizon)
        return self.passes[horizon]

    def clear(self) -> None:
        """Free every pass's autograd graph."""
        self.passes.clear()


def logit_vector(model: Any, target: ResolvedTarget) -> Float[Tensor, " d_model"]:
    """``W_U`` times the (vocabulary-demeaned) logit direction of a token or direction target."""
    w_u = model.W_U  # (d_model, d_vocab)
    mean = w_u.mean(dim=1, dtype=torch.float32)
    if target.kind == "token":
        return w_u[:, target.token].float() - mean
    assert target.direction is not None
    direction = target.direction.to(w_u.device, torch.float32)
    return (w_u.float() @ direction) - mean * direction.sum()


def row_gradients(
    model: Any, pass_: FrozenPass, values: PromptValues, targets: list[ResolvedTarget], rows: list[Row]
) -> list[Tensor | None]:
    """Seed every row's target vector at its own place; one batched vector-Jacobian product.

    The frozen pass holds one copy of the prompt (it is linear in its leaves, so the rows need
    no copies of their own): the seeds get a leading row dimension and ``autograd.grad`` runs with
    ``is_grads_batched=True``. Returns the gradient at the embedding, then at each site output
    (None where none arrives), each ``(rows, horizon, ...)``."""
    k = len(rows)
    seeds: dict[str, Tensor] = {}
    final_seed = None
    by_site: dict[int, list[tuple[int, int, int]]] = {}
    for b, row in enumerate(rows):
        if row.site < 0:  # a logit target
            if final_seed is None:
                final_seed = pass_.final.new_zeros(k, *pass_.final.shape[1:])
            final_seed[b, -1] = logit_vector(model, targets[row.target]).to(pass_.final.dtype)
        else:
            by_site.setdefault(row.site, []).append((b, row.position, row.index))
    for site_i, entries in by_site.items():
        site = values.sites[site_i]
        x = pass_.inputs[site.name]
        copies, positions, indices = (torch.tensor(column) for column in zip(*entries))
        seed = x.new_zeros(k, *x.shape[1:])
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
    grads = torch.autograd.grad(
        [outputs[i] for i in live],
        leaves,
        [grad_outputs[i].unsqueeze(1) for i in live],  # (rows, 1, horizon, ...): one per row
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
    )
    return [None if g is None else g.squeeze(1) for g in grads]


def edges_from_gradients(
    grads: list[Tensor | None], values: PromptValues, active: ActiveFeatures, rows: list[Row]
) -> EdgeBlock:
    """Dot each gradient with the vectors of the nodes it reaches: the rows' edges.

    Only the sites the gradient reaches are read: their active features are the columns of
    the block."""
    n = values.tokens.numel()
    k = len(rows)
    horizon = horizon_of(rows, n)  # nothing reaches a later position
    tokens = torch.zeros(k, n)
    if grads[0] is not None:  # else no path from the embedding to these rows
        embedding = values.embedding[:horizon].float()
        tokens[:, :horizon] = (grads[0][:k, :horizon].float() * embedding).sum(-1).cpu()
    site_grads = {i: g for i, g in enumerate(grads[1:]) if g is not None}
    live = sorted(site_grads)
    errors: list[Tensor] = []
    error_columns: list[Tensor] = []
    features: list[Tensor] = []
    feature_columns: list[Tensor] = []
    for i in live:
        site = values.sites[i]
        g = site_grads[i][:k, :horizon].reshape(k, horizon, -1).float()  # dots in float32
        feature_dots, error_dots = site.node_dots(g)
        errors.append(error_dots.cpu())  # the edges are kept on the CPU
        error_columns.append(torch.arange(i * n, i * n + horizon))
        features.append(feature_dots.cpu())
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
