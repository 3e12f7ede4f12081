"""File formats for :class:`~sae_circuits.graph.attribution_graph.AttributionGraph`: the text of each
format, from the graph (the data); files are written by :mod:`sae_circuits.writers`, one writer per
format, which ``AttributionGraph.save``, the CLI and ``serve`` read.

- ``.json``: the attribution-graph front end's schema (circuit-tracer / Neuronpedia), plus our exact
  node columns under each node's ``"sc"`` key and what :func:`load` needs under
  ``metadata.sae_circuits``, so that ``load(save(g))`` rebuilds ``g`` exactly (the reading is in
  :mod:`sae_circuits.writers.json_file`).
- ``.graphml`` (via networkx), ``.dot`` (Graphviz, written here: no pydot) and a self-contained
  ``.html`` view (:mod:`sae_circuits.graph.viewer`). These are views: only ``.json`` loads back.

Every file is written through :func:`sae_circuits._files.atomic_write_text`.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch

from sae_circuits._export_io import dot_string, exact_float, finite_json, printable
from sae_circuits.graph.influence import NodeKind
from sae_circuits.graph.node_ids import _n_layers, node_ids
from sae_circuits.graph.node_ids import _site_labels as _site_labels  # re-exported, as before
from sae_circuits.graph.viewer import to_html as to_html

if TYPE_CHECKING:
    from sae_circuits.graph.attribution_graph import AttributionGraph

FORMAT_VERSION = 1
_INT_COLUMNS = ("kind", "site", "layer", "stage", "position", "index")
_FLOAT_COLUMNS = {"activation": torch.float32, "target_weight": torch.float64}
_FEATURE_TYPE = {
    NodeKind.TOKEN: "embedding", NodeKind.FEATURE: "cross layer transcoder",
    NodeKind.ERROR: "mlp reconstruction error", NodeKind.OTHER: "other features",
}  # fmt: skip
_POSITIVE, _NEGATIVE = "#1f77b4", "#d62728"


# --------------------------------------------------------------------------- JSON


def to_json_dict(g: AttributionGraph) -> dict[str, Any]:
    """The graph in the attribution-graph front end's JSON schema (see ``REFERENCES.md``)."""
    ids, n_layers, n_tokens = node_ids(g), _n_layers(g), len(g.tokens)
    influence = g.influence().tolist() if g.n_nodes else []
    columns = {c: getattr(g, c).tolist() for c in (*_INT_COLUMNS, *_FLOAT_COLUMNS)}
    nodes = []
    for i, node_id in enumerate(ids):
        kind, site, pos, index = (columns[c][i] for c in ("kind", "site", "position", "index"))
        logit = kind == NodeKind.TARGET and site < 0
        head, _, tail = node_id.rpartition("_")
        nodes.append(
            {
                "node_id": node_id,
                "feature": -1 if kind in (NodeKind.ERROR, NodeKind.OTHER) else index,
                "layer": "E"
                if kind == NodeKind.TOKEN
                else str(n_layers + 1)
                if logit
                else str(columns["layer"][i]),
                "ctx_idx": pos,
                "feature_type": "logit"
                if logit
                else _FEATURE_TYPE.get(NodeKind(kind), "cross layer transcoder"),
                "token_prob": columns["activation"][i] if logit and index >= 0 else 0.0,
                "is_target_logit": kind == NodeKind.TARGET,
                "run_idx": 0,
                "reverse_ctx_idx": n_tokens - 1 - pos if pos >= 0 else 0,
                "jsNodeId": f"{head}-{tail}",
                "clerp": g.labels[i],
                "influence": influence[i],
                "activation": columns["activation"][i],
                "sc": {
                    c: columns[c][i] if c in _INT_COLUMNS else exact_float(columns[c][i]) for c in columns
                },
            }
        )
    links = [
        {"source": ids[s], "target": ids[t], "weight": w}
        for t, s, w in zip(g.edges.target.tolist(), g.edges.source.tolist(), g.edges.weight.tolist())
    ]
    slug = re.sub(r"[^a-z0-9]+", "-", g.prompt.lower()).strip("-")[:48]  # when the metadata names none
    metadata = {
        "slug": g.metadata.get("slug") or slug or "graph",
        "scan": g.metadata.get("model", "sae_circuits"),
        "prompt_tokens": list(g.token_strings),
        "prompt": g.prompt,
        "node_threshold": g.metadata.get("node_threshold"),
        "schema_version": 1,
        "sae_circuits": {
            "format_version": FORMAT_VERSION, "metadata": g.metadata, "sites": g.sites, "tokens": g.tokens,
        },
    }  # fmt: skip
    q_params = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return finite_json({"metadata": metadata, "qParams": q_params, "nodes": nodes, "links": links})


def to_json(g: AttributionGraph) -> str:
    """:func:`to_json_dict` as strict JSON text (no NaN tokens; ASCII, so the locale cannot matter)."""
    return json.dumps(to_json_dict(g), ensure_ascii=True, allow_nan=False)


def load(path: str | os.PathLike[str]) -> AttributionGraph:
    """Rebuild a graph from a ``.json`` file written by :func:`save` (``AttributionGraph.load``)."""
    from sae_circuits.writers import load

    return load(path, "graph")


# --------------------------------------------------------------------------- networkx, GraphML, DOT


def to_networkx(g: AttributionGraph) -> nx.DiGraph:
    """An ``nx.DiGraph`` keyed by node id, edges source -> target with a float ``weight``.

    A DiGraph holds one edge per ordered pair, so repeated COO entries for the same
    ``(target, source)`` are summed (the adjacency they stand for is their sum).
    """
    graph = nx.DiGraph()
    ids = node_ids(g)
    columns = {c: getattr(g, c).tolist() for c in (*_INT_COLUMNS, *_FLOAT_COLUMNS)}
    for i, node_id in enumerate(ids):
        attrs = {c: columns[c][i] for c in columns}
        site = g.sites[attrs["site"]] if attrs["site"] >= 0 else ""
        attrs.update(kind=NodeKind(attrs["kind"]).name.lower(), site=site, label=g.labels[i])
        graph.add_node(node_id, **attrs)
    weights: dict[tuple[str, str], float] = {}
    for t, s, w in zip(g.edges.target.tolist(), g.edges.source.tolist(), g.edges.weight.tolist()):
        weights[ids[s], ids[t]] = weights.get((ids[s], ids[t]), 0.0) + w
    graph.add_weighted_edges_from((s, t, w) for (s, t), w in weights.items())
    return graph


def to_graphml(g: AttributionGraph) -> str:
    """GraphML text of :func:`to_networkx` (labels made XML-safe; pure ASCII)."""
    graph = to_networkx(g)
    for _, attrs in graph.nodes(data=True):
        attrs["label"] = printable(attrs["label"])
    buffer = io.BytesIO()
    nx.write_graphml(graph, buffer, encoding="utf-8")
    # Character references keep the file ASCII, whatever encoding atomic_write_text uses.
    return buffer.getvalue().decode("utf-8").encode("ascii", "xmlcharrefreplace").decode("ascii")


def to_dot(g: AttributionGraph) -> str:
    """Graphviz DOT: tokens at the bottom (``rankdir=BT``), one rank per stage, edges coloured by
    sign (blue positive, red negative), pen width 0.5..4 by ``|weight|`` relative to the largest.

    The signed weight is the edge attribute ``attribution``: Graphviz's own ``weight`` is a
    non-negative integer layout hint, so writing signed floats there breaks ``dot``.
    """
    ids = node_ids(g)
    shapes = {NodeKind.TOKEN: "box", NodeKind.ERROR: "diamond", NodeKind.TARGET: "doubleoctagon"}
    lines = ["digraph attribution {", "  rankdir=BT;", "  node [style=filled, fillcolor=white];"]
    for i, (node_id, kind) in enumerate(zip(ids, g.kind.tolist())):
        shape = shapes.get(NodeKind(kind), "ellipse")
        lines.append(f"  {dot_string(node_id)} [label={dot_string(g.labels[i])}, shape={shape}];")
    by_stage: dict[int, list[str]] = {}
    for node_id, stage in zip(ids, g.stage.tolist()):
        by_stage.setdefault(stage, []).append(dot_string(node_id))
    lines += [f"  {{ rank=same; {'; '.join(members)}; }}" for members in by_stage.values()]
    weights = g.edges.weight.tolist()
    shortest = [str(w) for w in g.edges.weight.detach().cpu().numpy()]  # numpy: shortest float32 text
    largest = max((abs(w) for w in weights if math.isfinite(w)), default=0.0) or 1.0
    for t, s, w, text in zip(g.edges.target.tolist(), g.edges.source.tolist(), weights, shortest):
        width = min(4.0, 0.5 + 3.5 * abs(w) / largest) if math.isfinite(w) else 4.0
        lines.append(
            f'  {dot_string(ids[s])} -> {dot_string(ids[t])} [attribution="{text}", '
            f'color="{_NEGATIVE if w < 0 else _POSITIVE}", penwidth={width:.3f}, tooltip="{w:.4g}"];'
        )
    return "\n".join([*lines, "}", ""])


# --------------------------------------------------------------------------- save


def save(g: AttributionGraph, path: str | os.PathLike[str]) -> Path:
    """Write ``g`` atomically in the format its suffix names (:mod:`sae_circuits.writers`: ``.json``,
    ``.graphml``, ``.dot``, ``.html``, ...)."""
    from sae_circuits.writers import save

    return save(g, path)
