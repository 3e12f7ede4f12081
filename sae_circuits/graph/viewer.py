"""The attribution graph as one self-contained HTML page (inline SVG, CSS and JS; no network).

Layout: x = prompt position, y = the node's place in the forward pass (tokens at the bottom,
targets at the top); nodes sharing a cell sit side by side. Edges are blue (positive) or red
(negative), as wide as their weight. Hover a node for its label, activation and influence; click it
to highlight its inputs and outputs (click the background to clear); the slider keeps the smallest
set of nodes holding that share of the influence on the targets (tokens, targets and "other"
nodes always stay), like ``AttributionGraph.prune``'s node step.

Only the ``max_edges`` strongest edges are drawn (the page says so); 5,000 edges and a few
thousand nodes stay responsive in headless Chromium (tests/test_browser.py measures it).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from sae_circuits._html import SVG_ADD, fill, page_start
from sae_circuits.graph.node_ids import node_ids

if TYPE_CHECKING:
    from sae_circuits.graph.attribution_graph import AttributionGraph

_HTML = (
    page_start("Attribution graph")
    + """body{font:13px system-ui,sans-serif;margin:16px;color:#222}
#prompt{white-space:pre-wrap;background:#f4f4f4;padding:6px;font-family:monospace}
#wrap{overflow:auto;border:1px solid #ddd;position:relative}
.node{stroke:#333;stroke-width:.5;cursor:pointer} .edge{stroke-opacity:.55}
.dim{opacity:.12} .hi{stroke-opacity:1;opacity:1} .node.hi{stroke:#000;stroke-width:2}
text.tok{font-size:10px;fill:#444}
#tip{position:fixed;display:none;background:#fff;border:1px solid #888;padding:4px 6px;white-space:pre;
 font:12px monospace;pointer-events:none;z-index:2}
.legend span{display:inline-block;width:10px;height:10px;border-radius:5px;margin:0 4px 0 12px}
</style></head><body>
<h3>Attribution graph</h3><div id="prompt"></div>
<p class="legend"><span style="background:#999"></span>token<span style="background:#2ca02c"></span>feature
<span style="background:#ff7f0e"></span>error<span style="background:#9467bd"></span>target
<span style="background:#ccc"></span>other &nbsp; edges: blue positive, red negative</p>
<p><label>node threshold <input id="threshold" type="range" min="0.05" max="1" step="0.01"></label>
<span id="threshold-value"></span> &nbsp; <span id="counts"></span> <span id="note"></span></p>
<div id="wrap"><svg id="graph"></svg></div><div id="tip"></div>
<script type="application/json" id="graph-data">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("graph-data").textContent);
const svg = document.getElementById("graph"), NS = svg.namespaceURI, tip = document.getElementById("tip");
const COLORS = ["#999", "#2ca02c", "#ff7f0e", "#9467bd", "#ccc"],
KINDS = ["token", "feature", "error", "target", "other"];
const DX = 11, DY = 70, PAD = 24;
const W = 2 * PAD + data.columns * DX, H = 2 * PAD + 30 + Math.max(0, data.rows - 1) * DY;
const X = n => PAD + (n.x + 0.5) * DX, Y = n => H - PAD - 30 - n.y * DY;
"""
    + SVG_ADD
    + """document.title = "Attribution graph: " + data.prompt.slice(0, 60);
document.getElementById("prompt").textContent = data.prompt;
if (data.total_edges > data.links.length)
  document.getElementById("note").textContent =
    `(drawing the ${data.links.length} strongest of ${data.total_edges} edges)`;
svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
const edgeLayer = add("g", {}, svg), nodeLayer = add("g", {}, svg);
const largest = data.links.reduce((m, l) => Math.max(m, Math.abs(l[2] || 0)), 0) || 1;
const edgeEls = data.links.map(([s, t, w], i) => {
  const a = data.nodes[s], b = data.nodes[t], v = w || 0;
  return add("line", {class: "edge", id: "edge-" + i, x1: X(a), y1: Y(a), x2: X(b), y2: Y(b),
    stroke: v < 0 ? "#d62728" : "#1f77b4", "stroke-width": 0.5 + 3.5 * Math.abs(v) / largest}, edgeLayer);
});
const nodeEls = data.nodes.map((n, i) =>
  add("circle", {class: "node", id: "node-" + i, cx: X(n), cy: Y(n), r: 4.5,
fill: COLORS[n.kind] || "#000"}, nodeLayer));
data.tokens.forEach((tok, i) => add("text", {class: "tok", x: PAD + data.centres[i] * DX, y: H - 8,
  "text-anchor": "middle"}, svg, tok));
document.body.dataset.renderedNodes = nodeEls.length;
document.body.dataset.renderedEdges = edgeEls.length;

// hover: what the node is
nodeEls.forEach((el, i) => {
  const n = data.nodes[i];
  el.addEventListener("mouseenter", ev => {
    const at = n.position >= 0 ? data.tokens[n.position] : "(all positions)";
    tip.textContent = `${n.label}\\n${KINDS[n.kind]} ${n.id}\\nat ${JSON.stringify(at)}\\n` +
      `activation ${n.activation}\\ninfluence ${n.influence}`;
    tip.style.display = "block"; tip.style.left = (ev.clientX + 12) + "px";
tip.style.top = (ev.clientY + 12) + "px";
    document.body.dataset.hover = i;
  });
  el.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  el.addEventListener("click", ev => { ev.stopPropagation(); select(i); });
});
svg.addEventListener("click", () => select(null));

// click: the node's inputs and outputs
function select(i) {
  const on = new Set(i === null ? [] : [i]);
  data.links.forEach(([s, t], k) => { if (s === i || t === i) { on.add(s); on.add(t); } });
  data.links.forEach(([s, t], k) => edgeEls[k].setAttribute("class",
    i === null ? "edge" : (s === i || t === i) ? "edge hi" : "edge dim"));
  nodeEls.forEach((el, k) => el.setAttribute("class", i === null ? "node" :
on.has(k) ? "node hi" : "node dim"));
  document.body.dataset.selected = i === null ? "" : i;
  document.body.dataset.highlightedEdges = i === null ? 0 :
data.links.filter(([s, t]) => s === i || t === i).length;
}

// slider: the smallest set of nodes holding that share of the influence (tokens, targets, other kept)
const slider = document.getElementById("threshold");
const ranked = data.nodes.map((n, i) => i).filter(i => data.nodes[i].kind === 1 || data.nodes[i].kind === 2)
  .sort((a, b) => (data.nodes[b].influence || 0) - (data.nodes[a].influence || 0));
const total = ranked.reduce((s, i) => s + (data.nodes[i].influence || 0), 0);
function threshold(f) {
  const keep = new Set(data.nodes.map((n, i) => i).filter(i => ![1, 2].includes(data.nodes[i].kind)));
  let sum = 0;
  for (const i of ranked) { if (total > 0 && sum >= f * total - 1e-12) break;
keep.add(i); sum += data.nodes[i].influence || 0; }
  nodeEls.forEach((el, i) => el.style.display = keep.has(i) ? "" : "none");
  let shown = 0;
  data.links.forEach(([s, t], k) => { const v = keep.has(s) && keep.has(t);
edgeEls[k].style.display = v ? "" : "none"; shown += v; });
  document.getElementById("threshold-value").textContent = f.toFixed(2);
  document.getElementById("counts").textContent = `${keep.size} nodes, ${shown} edges shown`;
  document.body.dataset.visibleNodes = keep.size; document.body.dataset.visibleEdges = shown;
}
slider.value = 1; threshold(1);
slider.addEventListener("input", () => threshold(Number(slider.value)));
</script></body></html>
"""
)


def to_html(g: AttributionGraph, max_edges: int = 5000) -> str:
    """A self-contained page of ``g`` (see the module docstring); draws the ``max_edges``
    strongest edges."""
    ids, n_tokens = node_ids(g), len(g.tokens)
    influence = g.influence().tolist() if g.n_nodes else []
    rows = {stage: r for r, stage in enumerate(sorted(set(g.stage.tolist())))}
    cells: Counter[tuple[int, int]] = Counter()
    placed = []
    for pos, stage in zip(g.position.tolist(), g.stage.tolist()):
        cell = (pos if pos >= 0 else n_tokens, rows[stage])  # "other" nodes get a column of their own
        placed.append((cell, cells[cell]))
        cells[cell] += 1
    # Nodes sharing a (position, stage) cell sit side by side; each position's column is as wide
    # as its most crowded cell, so a busy last position does not stretch every other column.
    widths = [3] * (n_tokens + 1)  # at least room for the token label
    for (col, _), count in cells.items():
        widths[col] = max(widths[col], count)
    starts = [sum(widths[:c]) for c in range(n_tokens + 2)]
    nodes = [
        {"id": node_id, "label": g.labels[i], "kind": kind, "x": starts[col] + slot, "y": row,
         "position": pos, "activation": act, "influence": influence[i]}
        for i, (node_id, kind, pos, act, ((col, row), slot)) in enumerate(
            zip(ids, g.kind.tolist(), g.position.tolist(), g.activation.tolist(), placed)
        )
    ]  # fmt: skip
    order = g.edges.weight.abs().argsort(descending=True)[:max_edges]
    links = [
        list(e)
        for e in zip(
            g.edges.source[order].tolist(), g.edges.target[order].tolist(), g.edges.weight[order].tolist()
        )
    ]
    centres = [starts[c] + widths[c] / 2 for c in range(n_tokens)]  # where each token's label goes
    data = {"prompt": g.prompt, "tokens": g.token_strings, "nodes": nodes, "links": links,
            "total_edges": g.n_edges, "columns": starts[-1], "rows": len(rows),
            "centres": centres}  # fmt: skip
    return fill(_HTML, data)
