"""The edges an attribution keeps, pass by pass, sparse.

Token and error edges are kept one by one. A feature edge is kept one by one unless it is in the
``edge_tolerance`` tail of its row, beyond the row's ``max_edges_per_row`` largest, or, under a
node budget, its source is unlikely ever to get a row; then it is added to its row's sum for the
source's site: that site's "other" node. Nothing is dropped, so every row keeps its full input.

Row and column indices are int32 while the run lasts (12 bytes per kept edge, not 20): memory
grows with the edges kept, and ``max_edges_per_row`` bounds them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae_circuits.graph.passes import EdgeBlock


class SparseEdges(NamedTuple):
    """Edges as triplets: ``weight[e]`` from column ``column[e]`` into row ``row[e]`` (indices int32)."""

    row: Int[Tensor, " n_edges"]
    column: Int[Tensor, " n_edges"]
    weight: Float[Tensor, " n_edges"]


class StoredEdges(NamedTuple):
    """Everything kept, concatenated over the passes (rows numbered in computation order)."""

    tokens: SparseEdges
    """Columns: prompt positions."""
    errors: SparseEdges
    """Columns: ``site * pos + position``."""
    features: SparseEdges
    """Columns: active ids."""
    folded: Float[Tensor, "rows sites"]
    """Per (row, site): the feature edges folded into the site's "other" node."""
    mass: Float[Tensor, " rows"]
    """Each row's total absolute input before folding."""
    missing: Float[Tensor, " n_active"]
    """Per source: absolute weight folded only because it was not yet a candidate for a row."""


def _cat(parts: list[SparseEdges]) -> SparseEdges:
    if not parts:
        empty = torch.zeros(0, dtype=torch.int32)
        return SparseEdges(empty, empty, torch.zeros(0))
    return SparseEdges(*(torch.cat([p[i] for p in parts]) for i in range(3)))


class EdgeStore:
    """Keeps the edges of every pass (see the module docstring).

    Args:
        active_site: site of each active feature.
        n_sites: number of dictionary sites.
        edge_tolerance: share of each row's feature mass that may be folded, smallest edges first.
        max_edges_per_row: most feature edges itemised per row, the largest first (None: no limit).
    """

    def __init__(
        self,
        active_site: Int[Tensor, " n_active"],
        n_sites: int,
        edge_tolerance: float,
        max_edges_per_row: int | None = None,
    ) -> None:
        self.active_site, self.n_sites, self.tolerance = active_site, n_sites, edge_tolerance
        self.max_edges_per_row = max_edges_per_row
        self.rows = 0
        self.tokens: list[SparseEdges] = []
        self.errors: list[SparseEdges] = []
        self.features: list[SparseEdges] = []
        self.folded: list[Tensor] = []  # per pass: (rows, sites)
        self.masses: list[Tensor] = []  # per pass: (rows,)
        self.missing = torch.zeros(active_site.numel(), dtype=torch.float64)

    def keep(
        self,
        block: EdgeBlock,
        mass: Float[Tensor, " k"],
        itemised: Bool[Tensor, " n_active"] | None,
        feature_magnitude: Float[Tensor, "k cols"] | None = None,
    ) -> None:
        """Keep one pass's edges; feature edges into a source outside ``itemised`` are folded
        (None: every source is itemised). ``feature_magnitude``: ``block.features.abs()`` when
        the caller already has it."""
        k = block.tokens.shape[0]
        row_ids = torch.arange(self.rows, self.rows + k, dtype=torch.int32)
        self.rows += k
        self.masses.append(mass)
        features, cols = block.features, block.feature_columns
        folded = torch.zeros(k, self.n_sites, dtype=torch.float64)
        if self.tolerance > 0 and cols.numel():
            magnitude = features.abs() if feature_magnitude is None else feature_magnitude
            features = self._fold(features, cols, self._small_edges(magnitude), folded)
        if itemised is not None and cols.numel():
            features = self._fold(features, cols, ~itemised[cols].unsqueeze(0), folded, count_missing=True)
        if self.max_edges_per_row is not None and cols.numel() > self.max_edges_per_row:
            features = self._fold(features, cols, self._beyond_budget(features), folded)
        self.folded.append(folded)
        for store, dense, columns in (
            (self.tokens, block.tokens, None),
            (self.errors, block.errors, block.error_columns),
            (self.features, features, cols),
        ):
            r, c = dense.nonzero(as_tuple=True)
            column = c if columns is None else columns[c]
            store.append(SparseEdges(row_ids[r], column.to(torch.int32), dense[r, c]))

    def _beyond_budget(self, features: Float[Tensor, "k cols"]) -> Bool[Tensor, "k cols"]:
        """Each row's feature edges outside its ``max_edges_per_row`` largest (by magnitude)."""
        assert self.max_edges_per_row is not None
        top = features.abs().topk(self.max_edges_per_row, dim=1).indices
        return torch.ones_like(features, dtype=torch.bool).scatter_(1, top, False)

    def _small_edges(self, magnitude: Float[Tensor, "k cols"]) -> Bool[Tensor, "k cols"]:
        """Each row's smallest feature edges holding at most ``tolerance`` of its feature mass."""
        ordered, order = magnitude.sort(dim=1)  # ascending: the tail first
        tail = ordered.double().cumsum(1) <= self.tolerance * magnitude.double().sum(1, keepdim=True)
        return torch.zeros_like(tail).scatter_(1, order, tail)

    def _fold(
        self, features: Tensor, cols: Tensor, fold: Tensor, sums: Tensor, count_missing: bool = False
    ) -> Tensor:
        """Move the ``fold`` entries of ``features`` (columns ``cols``) into per-(row, site) sums
        (the "other" nodes)."""
        folded = torch.where(fold, features, 0.0)
        sums.index_add_(1, self.active_site[cols], folded.double())
        if count_missing:
            self.missing.index_add_(0, cols, folded.abs().sum(0).double())
        return torch.where(fold, 0.0, features)

    def stored(self) -> StoredEdges:
        """Everything kept so far, concatenated."""
        return StoredEdges(
            tokens=_cat(self.tokens),
            errors=_cat(self.errors),
            features=_cat(self.features),
            folded=torch.cat(self.folded)
            if self.folded
            else torch.zeros(0, self.n_sites, dtype=torch.float64),
            mass=torch.cat(self.masses) if self.masses else torch.zeros(0, dtype=torch.float64),
            missing=self.missing,
        )
