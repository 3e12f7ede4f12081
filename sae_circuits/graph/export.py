"""File formats for :class:`~sae_circuits.graph.attribution_graph.AttributionGraph`.

- ``.json``: the attribution-graph front end's schema (circuit-tracer / Neuronpedia), plus our exact
  node columns under each node's ``"sc"`` key and what :func:`load` needs under
  ``metadata.sae_circuits``, so that ``load(save(g))`` rebuilds ``g`` exactly.
- ``.graphml`` (via networkx), ``.dot`` (Graphviz, written here: no pydot) and a self-contained
  ``.html`` view (inline SVG, no network). These are views: only ``.json`` loads back.

Every file is written through :func:`sae_circuits.io.atomic_write_text`.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch

from sae_circuits._text import (
    dot_string,
    exact_float,
    finite_json,
    json_get,
    printable,
    read_json,
    write_by_suffix,
)
from sae_circuits.graph.graph import Edges, NodeKind

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


# --------------------------------------------------------------------------- node ids


def _n_layers(g: AttributionGraph) -> int:
    if "n_layers" in g.metadata:
        return int(g.metadata["n_layers"])
    # Without metadata: one past the deepest site node; site-less targets sit at n_layers itself.
    sited = g.site >= 0
    deepest = [int(g.layer[sited].max()) + 1] if bool(sited.any()) else []
    logits = g.layer[(g.kind == NodeKind.TARGET) & ~sited].tolist()
    return max(deepest + logits, default=0)


def _site_labels(sites: list[str]) -> list[str]:
    """``"3"`` when block 3 hosts one site, else ``"3a"``/``"3m"``/``"3r"`` by hook kind (then the site index
    if still ambiguous). Sites outside ``blocks.N`` are ``"s{i}"``."""
    blocks = []
    for i, hook in enumerate(sites):
        match = re.search(r"blocks\.(\d+)\.", hook)
        blocks.append(match.group(1) if match else f"s{i}")
    suffixes = [
        "a" if "attn" in h or "hook_z" in h else "m" if "mlp" in h else "r" if "resid" in h else "s"
        for h in sites
    ]  # always a letter: a disambiguated label never looks like another block's plain number
    per_block = Counter(blocks)
    labels = [b if per_block[b] == 1 else b + s for b, s in zip(blocks, suffixes)]
    per_label = Counter(labels)
    return [label if per_label[label] == 1 else f"{label}{i}" for i, label in enumerate(labels)]


def node_ids(g: AttributionGraph) -> list[str]:
    """Unique ids in the front end's style: ``E_{token}_{pos}`` (tokens), ``{site}_{feature}_{pos}``
    (features and feature targets), ``{site}_error_{pos}``, ``{site}_other``,
    ``{n_layers+1}_{token}_{pos}`` (logit targets) and ``{n_layers+1}_dir{k}_{pos}`` (directions).

    >>> g.node_ids()[:2]   # doctest: +SKIP
    ['E_818_0', 'E_22944_1']
    """
    sites, top, directions = _site_labels(g.sites), _n_layers(g) + 1, 0
    ids: list[str] = []
    columns = (g.kind.tolist(), g.site.tolist(), g.position.tolist(), g.index.tolist())
    for kind, site, pos, index in zip(*columns):
        if kind == NodeKind.TOKEN:
            ids.append(f"E_{index}_{pos}")
        elif kind == NodeKind.TARGET and site < 0:
            ids.append(f"{top}_{index}_{pos}" if index >= 0 else f"{top}_dir{directions}_{pos}")
            directions += index < 0
        elif not 0 <= site < len(sites):
            raise ValueError(
                f"node {len(ids)} ({NodeKind(kind).name}) has site {site}; there are {len(sites)} sites"
            )
        elif kind == NodeKind.ERROR:
            ids.append(f"{sites[site]}_error_{pos}")
        elif kind == NodeKind.OTHER:
            ids.append(f"{sites[site]}_other")
        else:  # a feature, or a feature used as a target
            ids.append(f"{sites[site]}_{index}_{pos}")
    seen: set[str] = set()
    for i, node_id in enumerate(ids):
        if node_id in seen:
            raise ValueError(f"duplicate node id {node_id!r} (node {i}, first at node {ids.index(node_id)})")
        seen.add(node_id)
    return ids


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
    metadata = {
        "slug": g.metadata.get("slug") or re.sub(r"[^a-z0-9]+", "-", g.prompt.lower()).strip("-")[:48] or "graph",
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
    """Rebuild a graph from a ``.json`` file written by :func:`save`: same nodes, edges, order, dtypes."""
    from sae_circuits.graph.attribution_graph import AttributionGraph

    path, raw = read_json(path, "graph")
    ours = json_get(path, "a graph JSON", raw, "metadata", "sae_circuits")
    version = json_get(path, "a graph JSON", ours, "format_version", at="metadata.sae_circuits")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r} is not supported (reads {FORMAT_VERSION})")
    nodes = json_get(path, "a graph JSON", raw, "nodes")
    rows = [json_get(path, "a graph JSON", node, "sc", at=f"nodes[{i}]") for i, node in enumerate(nodes)]
    columns = {}
    for c, dtype in {**dict.fromkeys(_INT_COLUMNS, torch.long), **_FLOAT_COLUMNS}.items():
        cast = int if dtype == torch.long else float  # float() also reads our "nan"/"inf" strings
        values = [
            cast(json_get(path, "a graph JSON", row, c, at=f"nodes[{i}].sc")) for i, row in enumerate(rows)
        ]
        columns[c] = torch.tensor(values, dtype=dtype)
    index = {
        json_get(path, "a graph JSON", node, "node_id", at=f"nodes[{i}]"): i for i, node in enumerate(nodes)
    }
    triplets = []
    for k, link in enumerate(json_get(path, "a graph JSON", raw, "links")):
        t, s, w = (
            json_get(path, "a graph JSON", link, key, at=f"links[{k}]")
            for key in ("target", "source", "weight")
        )
        if t not in index or s not in index:
            raise ValueError(f"{path}: links[{k}] refers to an unknown node ({s!r} -> {t!r})")
        triplets.append((index[t], index[s], math.nan if w is None else float(w)))
    target, source, weight = zip(*triplets) if triplets else ((), (), ())
    edges = Edges(
        torch.tensor(target, dtype=torch.long),
        torch.tensor(source, dtype=torch.long),
        torch.tensor(weight, dtype=torch.float32),
    )
    return AttributionGraph(
        prompt=json_get(path, "a graph JSON", raw, "metadata", "prompt"),
        tokens=list(json_get(path, "a graph JSON", ours, "tokens", at="metadata.sae_circuits")),
        token_strings=list(json_get(path, "a graph JSON", raw, "metadata", "prompt_tokens")),
        sites=list(json_get(path, "a graph JSON", ours, "sites", at="metadata.sae_circuits")),
        labels=[
            json_get(path, "a graph JSON", node, "clerp", at=f"nodes[{i}]") for i, node in enumerate(nodes)
        ],
        edges=edges,
        metadata=json_get(path, "a graph JSON", ours, "metadata", at="metadata.sae_circuits"),
        **columns,
    )


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


# --------------------------------------------------------------------------- HTML


def to_html(g: AttributionGraph) -> str:
    """A self-contained page (inline SVG, CSS and JS; no network): see :mod:`sae_circuits.graph.viewer`."""
    from sae_circuits.graph.viewer import to_html

    return to_html(g)


# --------------------------------------------------------------------------- save

_WRITERS: dict[str, Callable[[AttributionGraph], str]] = {
    ".json": to_json, ".graphml": to_graphml, ".dot": to_dot, ".html": to_html,
}  # fmt: skip


def save(g: AttributionGraph, path: str | os.PathLike[str]) -> Path:
    """Write ``g`` atomically in the format its suffix names (``.json``, ``.graphml``, ``.dot``, ``.html``)."""
    return write_by_suffix(g, path, _WRITERS)
