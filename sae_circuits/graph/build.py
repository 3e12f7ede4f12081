"""Assembling the :class:`AttributionGraph` from the rows an attribution computed.

Nodes are laid out by kind, one function each: tokens (one per position), features with a row
(in reading order: by stage, then position, then index), error nodes (site-major, one per
position), "other" nodes (one per site that has folded edges) and targets. Every row becomes the
node it explains; every kept edge's column becomes its source node. A feature edge whose source
has no node is added to its site's "other" node, so no row loses input.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_circuits._tokenize import token_text
from sae_circuits.graph.attribution_graph import AttributionGraph
from sae_circuits.graph.edge_store import SparseEdges, StoredEdges
from sae_circuits.graph.influence import Edges, NodeKind
from sae_circuits.graph.replacement import MLP_NONLINEARITY, PromptValues, SiteValues, block_of, stage_of
from sae_circuits.graph.rows import ActiveFeatures, FeatureTargets, Row
from sae_circuits.graph.targets import ResolvedTarget


class AttributionResult(NamedTuple):
    """What an attribution computed, ready to become a graph."""

    values: PromptValues
    active: ActiveFeatures
    targets: list[ResolvedTarget]
    feature_targets: FeatureTargets
    rows: list[Row]
    """In computation order (the row numbers of ``edges``)."""
    edges: StoredEdges
    settings: dict[str, Any]
    """``batch_size``, ``max_feature_nodes`` and ``edge_tolerance``, for the metadata."""


class NodeTable:
    """Builds the node table group by group (scalars broadcast to a group's length)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {
            k: [] for k in ("kind", "site", "layer", "stage", "position", "index", "activation", "weight")
        }
        self.labels: list[str] = []
        self.size = 0

    def add(
        self, kind: NodeKind, *, labels: list[str], activation: Any = 0.0, weight: float = 0.0, **ints: Any
    ) -> None:
        """Append ``len(labels)`` nodes of ``kind``; ``ints`` are the integer columns."""
        m = len(labels)
        if m == 0:
            return
        for name, value in ints.items():
            self.parts[name].append(torch.as_tensor(value, dtype=torch.long).expand(m).clone())
        self.parts["kind"].append(torch.full((m,), int(kind), dtype=torch.long))
        self.parts["activation"].append(torch.as_tensor(activation, dtype=torch.float32).expand(m).clone())
        self.parts["weight"].append(torch.full((m,), weight, dtype=torch.float64))
        self.labels.extend(labels)
        self.size += m

    def columns(self) -> dict[str, Tensor]:
        """Every column, concatenated over the groups."""
        return {k: torch.cat(v) for k, v in self.parts.items()}


def short_site_name(site: str) -> str:
    """``blocks.2.hook_mlp_out`` -> ``L2 mlp_out``."""
    rest = site.split(".", 2)[-1] if site.startswith("blocks.") else site
    return f"L{block_of(site)} {rest.replace('hook_', '')}" if block_of(site) >= 0 else rest


def unembedding_stage(n_layers: int) -> int:
    """Stage of the logits: the residual stream after the last block (where another would start)."""
    return stage_of(f"blocks.{n_layers}.hook_resid_pre")


def first_order_stages(model: Any, sites: list[SiteValues]) -> list[int]:
    """Stages of the MLP nonlinearities that no dictionary replaces: edges across them are
    first-order (the nonlinearity is linearised at the prompt)."""
    if model.cfg.attn_only:
        return []
    covered = {stage_of(s.name) for s in sites}
    stages = []
    for layer in range(model.cfg.n_layers):
        replaced = {stage_of(f"blocks.{layer}.mlp.hook_post"), stage_of(f"blocks.{layer}.hook_mlp_out")}
        if not replaced & covered:
            stages.append(stage_of(f"blocks.{layer}.hook_resid_pre") + MLP_NONLINEARITY)
    return stages


def expanded_in_reading_order(result: AttributionResult) -> Int[Tensor, " n_expanded"]:
    """Active ids of the features with a row, by stage, then position, then index."""
    active, sites, n = result.active, result.values.sites, result.values.tokens.numel()
    expanded = torch.tensor([r.active for r in result.rows if r.active >= 0], dtype=torch.long)
    site_stage = torch.tensor([site.stage for site in sites], dtype=torch.long)
    width = int(active.index.max()) + 1 if active.count else 1
    key = (site_stage[active.site[expanded]] * n + active.position[expanded]) * width + active.index[expanded]
    return expanded[key.argsort()]


def add_token_nodes(nodes: NodeTable, model: Any, tokens: Int[Tensor, " pos"]) -> list[str]:
    """One node per prompt position; returns the token strings."""
    strings = [token_text(model, int(t)) for t in tokens]
    n = tokens.numel()
    nodes.add(
        NodeKind.TOKEN, site=-1, layer=-1, stage=0, position=torch.arange(n), index=tokens, labels=strings
    )
    return strings


def add_feature_nodes(
    nodes: NodeTable, active: ActiveFeatures, expanded: Int[Tensor, " n_expanded"], sites: list[SiteValues]
) -> Int[Tensor, " n_active"]:
    """One node per expanded feature; returns the node of each active id (-1: none)."""
    node_of_active = torch.full((active.count,), -1, dtype=torch.long)
    node_of_active[expanded] = torch.arange(expanded.numel()) + nodes.size
    f_site = active.site[expanded]
    short = [short_site_name(site.name) for site in sites]
    nodes.add(
        NodeKind.FEATURE, site=f_site,
        layer=torch.tensor([block_of(site.name) for site in sites], dtype=torch.long)[f_site],
        stage=torch.tensor([site.stage for site in sites], dtype=torch.long)[f_site],
        position=active.position[expanded], index=active.index[expanded], activation=active.value[expanded],
        labels=[f"{short[s]} #{i}" for s, i in zip(f_site.tolist(), active.index[expanded].tolist())],
    )  # fmt: skip
    return node_of_active


def add_error_nodes(nodes: NodeTable, sites: list[SiteValues], n: int) -> int:
    """One node per (site, position), site-major; returns the first one's node."""
    first = nodes.size
    for i, s in enumerate(sites):
        label = f"{short_site_name(s.name)} error"
        nodes.add(
            NodeKind.ERROR, site=i, layer=block_of(s.name), stage=s.stage,
            position=torch.arange(n), index=-1, labels=[label] * n,
        )  # fmt: skip
    return first


def add_other_nodes(
    nodes: NodeTable, sites: list[SiteValues], used: list[int], active: ActiveFeatures, node_of_active: Tensor
) -> Int[Tensor, " sites"]:
    """One "other" node per site in ``used``; returns the node of each site (-1: none)."""
    other_node = torch.full((len(sites),), -1, dtype=torch.long)
    for i in used:
        other_node[i] = nodes.size
        count = int(((active.site == i) & (node_of_active < 0)).sum())
        label = f"{short_site_name(sites[i].name)} other ({count} features without a row)"
        nodes.add(
            NodeKind.OTHER, site=i, layer=block_of(sites[i].name), stage=sites[i].stage,
            position=-1, index=-1, labels=[label],
        )  # fmt: skip
    return other_node


def add_target_nodes(
    nodes: NodeTable, model: Any, result: AttributionResult, node_of_active: Tensor
) -> list[int]:
    """One node per target; returns each target's node. An active feature target becomes its
    own node: ``node_of_active`` is updated."""
    sites, n = result.values.sites, result.values.tokens.numel()
    target_node = []
    for t, target in enumerate(result.targets):
        target_node.append(nodes.size)
        if target.feature is None:  # logits: read at the last position, after the last block
            n_layers = model.cfg.n_layers
            nodes.add(
                NodeKind.TARGET, site=-1, layer=n_layers, stage=unembedding_stage(n_layers),
                position=n - 1, index=target.token, activation=target.probability,
                labels=[target.label], weight=target.weight,
            )  # fmt: skip
            continue
        si = result.feature_targets.site[t]
        active = result.feature_targets.active.get(t)
        nodes.add(
            NodeKind.TARGET, site=si, layer=block_of(sites[si].name), stage=sites[si].stage,
            position=target.feature.position, index=target.feature.index,
            activation=float(result.active.value[active]) if active is not None else 0.0,
            labels=[target.label], weight=target.weight,
        )  # fmt: skip
        if active is not None:
            node_of_active[active] = target_node[t]
    return target_node


def fold_unexpanded(
    result: AttributionResult, has_node: Tensor
) -> tuple[SparseEdges, Float[Tensor, "rows sites"]]:
    """Feature edges from sources without a node, added to the folded sums: returns the feature
    edges that keep their source, and the "other" sums per (row, site)."""
    feat, other_sum = result.edges.features, result.edges.folded.clone()
    keep = torch.index_select(has_node, 0, feat.column)  # one gather over the edges
    if bool(keep.all()):
        return feat, other_sum
    # positions, then index_select: masked indexing would scan the mask once per tensor
    drop, kept = (~keep).nonzero().squeeze(-1), keep.nonzero().squeeze(-1)
    rows, columns = feat.row.index_select(0, drop).long(), feat.column.index_select(0, drop)
    sites = torch.index_select(result.active.site, 0, columns)
    n_sites = other_sum.shape[1]
    other_sum.view(-1).index_add_(0, rows * n_sites + sites, feat.weight.index_select(0, drop).double())
    return SparseEdges(*(t.index_select(0, kept) for t in feat)), other_sum


def row_nodes(rows: list[Row], node_of_active: Tensor, target_node: list[int]) -> Int[Tensor, " rows"]:
    """The node each row explains."""
    node = torch.tensor(
        [target_node[row.target] if row.target >= 0 else -1 for row in rows], dtype=torch.long
    )
    feature_rows = [r for r, row in enumerate(rows) if row.target < 0]
    if feature_rows:
        node[feature_rows] = node_of_active[torch.tensor([rows[r].active for r in feature_rows])]
    return node


def graph_metadata(
    model: Any, result: AttributionResult, n_expanded: int, node_of_active: Tensor, feature_mass: float
) -> dict[str, Any]:
    """Settings, counts and the exactness of the graph's edges."""
    active, sites = result.active, result.values.sites
    late = float(result.edges.missing[node_of_active[: active.count] >= 0].sum()) if active.count else 0.0
    return {
        "model": str(getattr(model.cfg, "model_name", "")),
        "n_layers": model.cfg.n_layers,
        **result.settings,
        "n_active_features": active.count,
        "n_expanded_features": n_expanded,
        # share of the expanded features' outgoing mass that sits in "other" because they were
        # not yet candidates when some rows were computed (0 without a budget)
        "late_share": late / (late + feature_mass) if late > 0 else 0.0,
        "site_input_stages": [s.input_stage for s in sites],
        "first_order_stages": first_order_stages(model, sites),
    }


def build_graph(model: Any, result: AttributionResult, prompt: str | None) -> AttributionGraph:
    """The attribution graph of ``result`` (``prompt``: the text, if the prompt was text)."""
    sites, n = result.values.sites, result.values.tokens.numel()
    nodes = NodeTable()
    token_ids = result.values.tokens.cpu()
    strings = add_token_nodes(nodes, model, token_ids)
    expanded = expanded_in_reading_order(result)
    node_of_active = add_feature_nodes(nodes, result.active, expanded, sites)
    error_base = add_error_nodes(nodes, sites, n)
    has_node = node_of_active >= 0
    has_node[list(result.feature_targets.active.values())] = True
    features, other_sum = fold_unexpanded(result, has_node)
    other_rows, other_sites = (other_sum != 0).nonzero(as_tuple=True)
    used_sites = sorted(set(other_sites.tolist()))
    other_node = add_other_nodes(nodes, sites, used_sites, result.active, node_of_active)
    target_node = add_target_nodes(nodes, model, result, node_of_active)
    row_node = row_nodes(result.rows, node_of_active, target_node)
    tok, err = result.edges.tokens, result.edges.errors
    edges = Edges(
        target=torch.cat(
            [row_node[tok.row], row_node[err.row], row_node[features.row], row_node[other_rows]]
        ),
        source=torch.cat(
            [
                tok.column.long(),
                error_base + err.column.long(),
                node_of_active[features.column],
                other_node[other_sites],
            ]
        ),
        weight=torch.cat(
            [tok.weight, err.weight, features.weight, other_sum[other_rows, other_sites].float()]
        ),
    )
    feature_mass = float(features.weight.abs().double().sum())
    col = nodes.columns()
    return AttributionGraph(
        prompt=prompt if prompt is not None else "".join(strings),
        tokens=token_ids.tolist(),
        token_strings=strings,
        sites=[s.name for s in sites],
        kind=col["kind"], site=col["site"], layer=col["layer"], stage=col["stage"], position=col["position"],
        index=col["index"], activation=col["activation"], labels=nodes.labels, target_weight=col["weight"],
        edges=edges,
        metadata=graph_metadata(model, result, int(expanded.numel()), node_of_active, feature_mass),
    )  # fmt: skip
