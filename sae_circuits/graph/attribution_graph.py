"""The attribution graph of one prompt: a node table, sparse signed edges, and what they mean.

Nodes are stored as columns (one entry per node) so that graphs with 10^5 nodes stay compact;
edges are the COO triplets of :class:`~sae_circuits.graph.influence.Edges`, ``A[target, source]`` being
the direct effect of ``source`` on ``target``'s pre-activation (or logit). Graph math lives in
:mod:`sae_circuits.graph.influence`, file formats in :mod:`sae_circuits.graph.export` (written by
:mod:`sae_circuits.writers`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae_circuits.graph.influence import (
    Edges,
    NodeKind,
    influence,
    normalize,
    prune,
    scores,
)


@dataclass
class AttributionGraph:
    """Direct effects between the tokens, dictionary features, error nodes and targets of a prompt.

    >>> with sc.spliced(model, transcoders):
    ...     g = sc.attribute(model, "<p>hi</p>", max_feature_nodes=10)
    >>> g.n_nodes == len(g.labels) == g.influence().shape[0]
    True
    >>> small = g.prune(0.8, 0.98)
    >>> small.n_nodes < g.n_nodes, small.save("graph.json").name
    (True, 'graph.json')
    """

    prompt: str
    tokens: list[int]
    """Prompt token ids."""
    token_strings: list[str]
    """Each prompt token decoded on its own."""
    sites: list[str]
    """Dictionary sites (the hook names their outputs replace), in computation order."""
    kind: Int[Tensor, " n"]
    """:class:`NodeKind` of every node."""
    site: Int[Tensor, " n"]
    """Index into :attr:`sites` (-1 for tokens and logit targets)."""
    layer: Int[Tensor, " n"]
    """Block index of the node's site (-1 for tokens, ``n_layers`` for logit targets)."""
    stage: Int[Tensor, " n"]
    """Rank of the node's place in the forward pass (tokens 0, logits last): the layout's y axis."""
    position: Int[Tensor, " n"]
    """Prompt position (-1 for the per-site "other" nodes, which span positions)."""
    index: Int[Tensor, " n"]
    """Feature index for features; token id for tokens and token targets; -1 otherwise."""
    activation: Float[Tensor, " n"]
    """Feature activation (features); probability (token targets); 0 otherwise."""
    labels: list[str]
    """A short human label per node (token text, ``Output " x" (p=0.12)``, feature name)."""
    target_weight: Float[Tensor, " n"]
    """Weight of each target in the influence computation (token probabilities); 0 for non-targets."""
    edges: Edges
    """Signed direct effects ``A[target, source]``."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Model name, ``n_layers``, attribution settings, pruning thresholds, ``first_order_stages``."""

    def __post_init__(self) -> None:
        n = self.kind.shape[0]
        for f in ("site", "layer", "stage", "position", "index", "activation", "target_weight"):
            if getattr(self, f).shape != (n,):
                raise ValueError(
                    f"node column {f!r} has shape {tuple(getattr(self, f).shape)}, expected ({n},)"
                )
        if len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} nodes")

    # ------------------------------------------------------------------ basics

    @property
    def n_nodes(self) -> int:
        """Number of nodes (tokens, features, errors, "other" nodes and targets)."""
        return int(self.kind.shape[0])

    @property
    def n_edges(self) -> int:
        """Number of stored edges (the length of :attr:`edges`)."""
        return int(self.edges.weight.shape[0])

    def nodes_of(self, kind: NodeKind) -> Int[Tensor, " m"]:
        """Indices of the nodes of one kind."""
        return (self.kind == kind).nonzero().squeeze(-1)

    def node_ids(self) -> list[str]:
        """Unique string ids in the attribution-graph front end's style (see ``export.py``)."""
        from sae_circuits.graph.node_ids import node_ids

        return node_ids(self)

    def first_order_edges(self) -> Bool[Tensor, " n_edges"]:
        """Edges whose path crosses an MLP that no dictionary replaces: first-order (the MLP's local
        Jacobian) rather than exact. All other edges are exact in the frozen replacement model."""
        cuts = torch.tensor(self.metadata.get("first_order_stages", []), dtype=torch.long)
        if cuts.numel() == 0:
            return torch.zeros(self.n_edges, dtype=torch.bool)
        source_stage = self.stage[self.edges.source].unsqueeze(-1)
        target_stage = self.stage[self.edges.target].unsqueeze(-1)
        return ((source_stage < cuts) & (cuts < target_stage)).any(-1)

    # ------------------------------------------------------------------ math

    def influence(self) -> Float[Tensor, " n"]:
        """Each node's influence on the weighted targets through every path (float64)."""
        return influence(normalize(self.edges, self.n_nodes), self.target_weight)

    def scores(self) -> dict[str, float]:
        """``{"replacement": ..., "completeness": ...}`` (definitions in ``graph.py``)."""
        return scores(self.edges, self.kind, self.target_weight)._asdict()

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> AttributionGraph:
        """The subgraph holding ``node_threshold`` of the targets' influence in its nodes and
        ``edge_threshold`` of it in its edges. Tokens, targets and "other" nodes are always kept."""
        for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name}={value!r} must be a number in (0, 1]")
        result = prune(self.edges, self.kind, self.target_weight, node_threshold, edge_threshold)
        graph = self.subgraph(result.node_mask, result.edge_mask)
        graph.metadata.update(node_threshold=node_threshold, edge_threshold=edge_threshold)
        return graph

    def subgraph(
        self, node_mask: Bool[Tensor, " n"], edge_mask: Bool[Tensor, " n_edges"]
    ) -> AttributionGraph:
        """The nodes and edges selected by the masks (edges need both ends kept), renumbered."""
        edge_mask = edge_mask & node_mask[self.edges.target] & node_mask[self.edges.source]
        new_index = torch.full((self.n_nodes,), -1, dtype=torch.long)
        kept = node_mask.nonzero().squeeze(-1)
        new_index[kept] = torch.arange(kept.numel())
        edges = self.edges.masked(edge_mask)
        columns = {
            f.name: getattr(self, f.name)[kept]
            for f in fields(self)
            if f.name
            in ("kind", "site", "layer", "stage", "position", "index", "activation", "target_weight")
        }
        return replace(
            self,
            **columns,
            labels=[self.labels[i] for i in kept.tolist()],
            edges=Edges(new_index[edges.target], new_index[edges.source], edges.weight),
            metadata=dict(self.metadata),
        )

    # ------------------------------------------------------------------ export

    def to_networkx(self) -> Any:
        """An ``nx.DiGraph`` (source -> target) with every node column and edge weight as attributes."""
        from sae_circuits.graph.export import to_networkx

        return to_networkx(self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the graph; the format follows the suffix: ``.json`` (the attribution-graph front
        end's schema, plus what :meth:`load` needs), ``.graphml``, ``.dot``, ``.html``, or the suffix
        of any other writer in :mod:`sae_circuits.writers`. The file is written atomically."""
        from sae_circuits.writers import save

        return save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AttributionGraph:
        """Read a graph written by :meth:`save` as ``.json``."""
        from sae_circuits.writers import load

        return cast(AttributionGraph, load(path, "graph"))

    def equals(self, other: AttributionGraph, atol: float = 0.0) -> bool:
        """Same nodes, labels, metadata and edges (edge weights to ``atol``)."""
        if (
            not isinstance(other, AttributionGraph)
            or self.n_nodes != other.n_nodes
            or self.n_edges != other.n_edges
        ):
            return False
        same_lists = (self.prompt, self.tokens, self.token_strings, self.sites, self.labels) == (
            other.prompt,
            other.tokens,
            other.token_strings,
            other.sites,
            other.labels,
        )
        columns = ("kind", "site", "layer", "stage", "position", "index")
        same_columns = all(torch.equal(getattr(self, c), getattr(other, c)) for c in columns)
        close = torch.allclose(
            self.activation, other.activation, atol=atol, rtol=0, equal_nan=True
        ) and torch.allclose(
            self.target_weight.double(), other.target_weight.double(), atol=atol, rtol=0, equal_nan=True
        )
        same_edges = (
            torch.equal(self.edges.target, other.edges.target)
            and torch.equal(self.edges.source, other.edges.source)
            and torch.allclose(self.edges.weight, other.edges.weight, atol=atol, rtol=0, equal_nan=True)
        )
        return same_lists and same_columns and close and same_edges and self.metadata == other.metadata

    def __repr__(self) -> str:
        counts = {k.name.lower(): int((self.kind == k).sum()) for k in NodeKind}
        shown = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        return f"AttributionGraph({self.prompt[:40]!r}: {shown}; {self.n_edges} edges)"
