"""File formats for :class:`~sae_circuits.graph.attribution_graph.AttributionGraph`: the text of each
format, from the graph (the data); files are written by :mod:`sae_circuits.writers`, one writer per
format, which ``AttributionGraph.save``, the CLI and ``serve`` read.

- ``.json``: the attribution-graph front end's schema as circuit-tracer 0.5 writes it (its pydantic
  model's fields; what the front end reads from each is in ``docs/attribution.md``: rows, Cantor
  feature numbers, cumulative influence shares, parsable logit clerps), plus our exact node columns
  under each node's ``"sc"`` key and what :func:`load` needs under ``metadata.sae_circuits``, so
  that ``load(save(g))`` rebuilds ``g`` exactly (the reading is in
  :mod:`sae_circuits.writers.json_file`, which also reads circuit-tracer's own files).
- ``.graphml`` (via networkx), ``.dot`` (Graphviz, written here: no pydot) and a self-contained
  ``.html`` view (:mod:`sae_circuits.graph.viewer`). These are views: only ``.json`` loads back.

Every file is written through :func:`sae_circuits._files.atomic_write_text`.
"""

from __future__ import annotations

import hashlib
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
from sae_circuits.graph.node_ids import _n_layers, node_ids, site_kind, viewer_rows
from sae_circuits.graph.node_ids import _site_labels as _site_labels  # re-exported, as before
from sae_circuits.graph.viewer import to_html as to_html

if TYPE_CHECKING:
    from sae_circuits.graph.attribution_graph import AttributionGraph

FORMAT_VERSION = 1
_INT_COLUMNS = ("kind", "site", "layer", "stage", "position", "index")
_FLOAT_COLUMNS = {"activation": torch.float32, "target_weight": torch.float64}
_ERROR_TYPE = {
    "mlp": "mlp reconstruction error",
    "residual": "residual reconstruction error",
    "attention": "attention reconstruction error",
    "site": "reconstruction error",
}  # the front end treats any feature_type containing "error" as an error node
_POSITIVE, _NEGATIVE = "#1f77b4", "#d62728"


# --------------------------------------------------------------------------- JSON


def _cantor(x: int, y: int) -> int:
    """Cantor pairing, as the front end's schema 1 encodes a feature: ``cantor(layer, index)``."""
    return (x + y) * (x + y + 1) // 2 + y


def viewer_influence(g: AttributionGraph, influence: torch.Tensor | None = None) -> list[float | None]:
    """What the front end's pruning slider reads as ``influence``: each node's cumulative share of
    the graph's influence by rank (strongest first), in (0, 1]; None on logit targets. Feature
    targets rank by influence plus target weight. In a pruned graph (``node_threshold`` in the
    metadata) the shares are scaled by ``node_threshold``, so that the slider's default (that
    threshold) shows every node the file holds, as circuit-tracer's files do."""
    influence = (g.influence() if influence is None else influence).double()
    logit = (g.kind == NodeKind.TARGET) & (g.site < 0)
    score = influence + torch.where((g.kind == NodeKind.TARGET) & ~logit, g.target_weight.double(), 0.0)
    ranked = (~logit).nonzero().squeeze(-1)
    values = score[ranked].nan_to_num(nan=0.0).clamp_min(0.0)
    order = values.argsort(descending=True, stable=True)
    total = float(values.sum())
    shares = torch.ones(ranked.numel(), dtype=torch.float64)
    if total > 0 and math.isfinite(total):
        shares[order] = (values[order].cumsum(0) / total).clamp(min=1e-12, max=1.0)
        shares[order[values[order] == 0]] = 1.0  # no influence: last, whatever the round-off
    threshold = g.metadata.get("node_threshold")
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < threshold <= 1:
        shares *= threshold
    result: list[float | None] = [None] * g.n_nodes
    for node, share in zip(ranked.tolist(), shares.tolist()):
        result[node] = share
    return result


def _logit_clerp(label: str, probability: float) -> str:
    """A logit label the front end can parse (it reads the text between the first two quotes and
    the number after ``(p=``): token targets' labels already are; a direction's is wrapped."""
    if re.search(r'^[^"]*"[^"]*".*\(p=[-+0-9.eE]+\)', label):
        return label
    return f'Output "{label.replace(chr(34), chr(39))}" (p={probability:.3f})'


def _scan(g: AttributionGraph, rows: list[int]) -> tuple[str, list[str]]:
    """circuit-tracer's ``scan`` and ``transcoder_list``: a named dictionary set (``metadata["scan"]``)
    with an empty list, else ``"custom-<hash>"`` and one dictionary name per row, the front end
    looking a feature's dictionary up as ``transcoder_list[layer]``."""
    if isinstance(g.metadata.get("scan"), str) and g.metadata["scan"]:
        listed = g.metadata.get("transcoder_list")
        return g.metadata["scan"], [str(x) for x in listed] if isinstance(listed, list) else []
    model = str(g.metadata.get("model") or "")
    names = [""] * (max(rows) + 1 if rows else 0)
    for site, row in zip(g.sites, rows):
        names[row] = f"{model}/{site}" if model else site
    digest = hashlib.sha256("-".join(names).encode("utf-8")).digest()
    return f"custom-{int.from_bytes(digest[:8], 'big') >> 1}", names


def to_json_dict(g: AttributionGraph, slug: str | None = None) -> dict[str, Any]:
    """The graph in the attribution-graph front end's JSON schema (see ``REFERENCES.md`` and
    ``docs/attribution.md``), ``slug`` naming it (the file stem when the writer writes it)."""
    ids, n_tokens = node_ids(g), len(g.tokens)
    rows = viewer_rows(g.sites)
    logit_layer = max([_n_layers(g) + 1, *(r + 1 for r in rows)])
    shares = viewer_influence(g) if g.n_nodes else []
    columns = {c: getattr(g, c).tolist() for c in (*_INT_COLUMNS, *_FLOAT_COLUMNS)}
    logits = [
        i for i, (k, s) in enumerate(zip(columns["kind"], columns["site"])) if k == NodeKind.TARGET and s < 0
    ]
    top = max(logits, key=lambda i: (columns["target_weight"][i], -i), default=-1)
    nodes, directions = [], 0
    for i, node_id in enumerate(ids):
        kind, site, pos, index = (columns[c][i] for c in ("kind", "site", "position", "index"))
        logit = kind == NodeKind.TARGET and site < 0
        head, _, tail = node_id.rpartition("_")
        activation = columns["activation"][i]
        if kind == NodeKind.TOKEN:
            layer, feature, feature_type = "E", pos, "embedding"
        elif logit:
            layer, feature, feature_type = str(logit_layer), index, "logit"
            if index < 0:
                feature, directions = -1 - directions, directions + 1
        else:
            layer = str(rows[site])
            if kind == NodeKind.ERROR:
                feature, feature_type = -1, _ERROR_TYPE[site_kind(g.sites[site])]
            elif kind == NodeKind.OTHER:
                feature, feature_type = -1, "other features"
            else:
                feature, feature_type = _cantor(rows[site], index), "cross layer transcoder"
        probability = activation if logit and index >= 0 else 0.0
        clerp = _logit_clerp(g.labels[i], probability) if logit else g.labels[i]
        ours: dict[str, Any] = {
            c: columns[c][i] if c in _INT_COLUMNS else exact_float(columns[c][i]) for c in columns
        }
        if clerp != g.labels[i]:
            ours["label"] = g.labels[i]
        ctx = pos if pos >= 0 else n_tokens - 1  # "other" nodes span positions: drawn at the last one
        nodes.append(
            {
                "node_id": node_id,
                "feature": feature,
                "layer": layer,
                "ctx_idx": ctx,
                "feature_type": feature_type,
                "token_prob": probability,
                "is_target_logit": i == top,
                "run_idx": 0,
                "reverse_ctx_idx": n_tokens - 1 - ctx,
                "jsNodeId": f"{head}-{tail}",
                "clerp": clerp,
                "influence": shares[i],
                "activation": activation
                if kind in (NodeKind.FEATURE, NodeKind.TARGET) and site >= 0
                else None,
                "sc": ours,
            }
        )
    links = [
        {"source": ids[s], "target": ids[t], "weight": w}
        for t, s, w in zip(g.edges.target.tolist(), g.edges.source.tolist(), g.edges.weight.tolist())
    ]
    fallback = re.sub(r"[^a-z0-9]+", "-", g.prompt.lower()).strip("-")[:48]  # when no slug is given
    scan, transcoder_list = _scan(g, rows)
    metadata = {
        "slug": slug or g.metadata.get("slug") or fallback or "graph",
        "scan": scan,
        "transcoder_list": transcoder_list,
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


def to_json(g: AttributionGraph, slug: str | None = None) -> str:
    """:func:`to_json_dict` as strict JSON text (no NaN tokens; ASCII, so the locale cannot matter)."""
    return json.dumps(to_json_dict(g, slug), ensure_ascii=True, allow_nan=False)


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
        attrs["label"], attrs["site"] = printable(attrs["label"]), printable(attrs["site"])
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
