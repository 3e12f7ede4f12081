"""Attribution-graph math on sparse edges: normalisation, influence, pruning, scores.

Edges are stored as COO triplets ``(target, source, weight)``: the adjacency ``A[t, s]`` is the
direct effect of source ``s`` on target ``t``. Nothing here builds or sorts a dense N x N matrix;
memory and time grow with the number of edges. Everything is computed in float64 (fp32 row sums
overflow or lose the tail on long prompts).

Definitions (circuit-tracing methods paper; circuit-tracer):

- ``Â``: ``|A|`` normalised row-wise, so each target's incoming weights sum to 1.
- influence on the targets ``I = w (Â + Â² + ...)``, ``w`` the target weights (logit
  probabilities). The graph is a DAG, so the series ends; it is summed by repeated sparse products.
- node pruning keeps the smallest set of nodes holding ``node_threshold`` of the total influence
  (tokens and targets always kept); edge pruning scores ``Â[t, s] (I[t] + w[t])`` and keeps
  ``edge_threshold`` of the total; then features without a kept incoming or outgoing edge are
  dropped until nothing changes.
- replacement score: influence reaching the targets from tokens over that from tokens and errors.
- completeness: ``Σ_n (1 - error share of n's inputs) (I[n] + w[n]) / Σ_n (I[n] + w[n])``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


class NodeKind(IntEnum):
    """What a node is; stored as a small integer per node."""

    TOKEN = 0
    FEATURE = 1
    ERROR = 2
    TARGET = 3
    OTHER = 4
    """Features not visited under a node budget, folded into one node per site (never dropped)."""


class Edges(NamedTuple):
    """Sparse edges ``A[target, source] = weight``."""

    target: Int[Tensor, " n_edges"]
    source: Int[Tensor, " n_edges"]
    weight: Float[Tensor, " n_edges"]

    def masked(self, keep: Bool[Tensor, " n_edges"]) -> Edges:
        """The edges where ``keep`` is True, in their order."""
        return Edges(self.target[keep], self.source[keep], self.weight[keep])


def normalize(edges: Edges, n_nodes: int) -> Edges:
    """``|A|`` with every target's incoming weights summing to 1 (rows with no input stay empty)."""
    magnitude = edges.weight.abs().double()
    row_sum = torch.zeros(n_nodes, dtype=torch.float64).index_add_(0, edges.target, magnitude)
    return Edges(edges.target, edges.source, magnitude / row_sum[edges.target].clamp_min(1e-300))


def influence(
    normalized: Edges, target_weights: Float[Tensor, " n"], max_steps: int | None = None
) -> Float[Tensor, " n"]:
    """``w (Â + Â² + ...)``: how much each node feeds the weighted targets, through every path.

    ``(v Â)[s] = Σ_t v[t] Â[t, s]`` is one sparse step; the sum stops when nothing propagates
    (a DAG has no path longer than its node count).
    """
    n = target_weights.shape[0]
    steps = max_steps if max_steps is not None else n
    current = target_weights.double()
    total = torch.zeros(n, dtype=torch.float64)
    for _ in range(steps):
        current = torch.zeros(n, dtype=torch.float64).index_add_(
            0, normalized.source, current[normalized.target] * normalized.weight
        )
        if not bool(current.any()):
            return total
        total += current
    if steps == n and n > 0:
        raise ValueError("the graph has a cycle: influence did not vanish after n_nodes steps")
    return total


def cumulative_threshold(scores: Float[Tensor, " m"], fraction: float) -> float:
    """The smallest score such that the scores at or above it hold ``fraction`` of the total."""
    if not 0 < fraction <= 1:
        raise ValueError(f"threshold={fraction} must be in (0, 1]")
    if scores.numel() == 0:
        return 0.0
    ordered = scores.double().sort(descending=True).values
    total = ordered.sum()
    if total <= 0:
        return 0.0
    cumulative = ordered.cumsum(0) / total
    index = int(torch.searchsorted(cumulative, torch.tensor(fraction, dtype=torch.float64) - 1e-12))
    return float(ordered[min(index, len(ordered) - 1)])


class PruneResult(NamedTuple):
    """Which nodes and edges survive pruning, with the influence they were judged by."""

    node_mask: Bool[Tensor, " n_nodes"]
    edge_mask: Bool[Tensor, " n_edges"]
    node_influence: Float[Tensor, " n_nodes"]


def prune(
    edges: Edges,
    kinds: Int[Tensor, " n_nodes"],
    target_weights: Float[Tensor, " n_nodes"],
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> PruneResult:
    """Node then edge pruning by influence (see the module docstring)."""
    n = kinds.shape[0]
    always = (kinds == NodeKind.TOKEN) | (kinds == NodeKind.TARGET) | (kinds == NodeKind.OTHER)
    node_influence = influence(normalize(edges, n), target_weights)
    node_mask = (node_influence >= cumulative_threshold(node_influence, node_threshold)) | always

    inside = node_mask[edges.target] & node_mask[edges.source]
    kept = edges.masked(inside)
    normalized = normalize(kept, n)
    reach = influence(normalized, target_weights) + target_weights.double()
    scores = normalized.weight * reach[normalized.target]
    edge_keep = scores >= cumulative_threshold(scores, edge_threshold)

    features = kinds == NodeKind.FEATURE
    while True:  # a kept feature needs a kept edge in and a kept edge out
        has_in = torch.zeros(n, dtype=torch.bool)
        has_out = torch.zeros(n, dtype=torch.bool)
        has_in[kept.target[edge_keep]] = True
        has_out[kept.source[edge_keep]] = True
        updated = node_mask & ~(features & ~(has_in & has_out))
        edge_keep &= updated[kept.target] & updated[kept.source]
        if torch.equal(updated, node_mask):
            break
        node_mask = updated
    edge_mask = torch.zeros(edges.target.shape[0], dtype=torch.bool)
    edge_mask[inside.nonzero().squeeze(-1)[edge_keep]] = True
    return PruneResult(node_mask, edge_mask, node_influence)


class Scores(NamedTuple):
    """How much of a graph's explanation runs through its dictionaries rather than error nodes."""

    replacement: float
    """Share of the targets' influence that comes from tokens rather than error nodes."""
    completeness: float
    """Influence-weighted share of every node's input that is not an error node's."""


def scores(edges: Edges, kinds: Int[Tensor, " n_nodes"], target_weights: Float[Tensor, " n_nodes"]) -> Scores:
    """Replacement and completeness scores of a graph (see the module docstring)."""
    n = kinds.shape[0]
    normalized = normalize(edges, n)
    node_influence = influence(normalized, target_weights)
    from_tokens = float(node_influence[kinds == NodeKind.TOKEN].sum())
    from_errors = float(node_influence[kinds == NodeKind.ERROR].sum())
    error_edges = kinds[normalized.source] == NodeKind.ERROR
    error_share = torch.zeros(n, dtype=torch.float64).index_add_(
        0, normalized.target[error_edges], normalized.weight[error_edges]
    )
    reach = node_influence + target_weights.double()
    denominator = float(reach.sum())
    return Scores(
        replacement=from_tokens / (from_tokens + from_errors)
        if from_tokens + from_errors > 0
        else float("nan"),
        completeness=float(((1 - error_share) * reach).sum()) / denominator
        if denominator > 0
        else float("nan"),
    )
