"""The automaton as one self-contained HTML page (inline SVG, CSS and JS; no network): states on a
circle, transitions as arrows coloured by mechanism, the first loop of ``fsa.loops`` highlighted
and the first ones listed; hover a state or an arrow for its members, tokens and effect. Also the
short texts that every view of an automaton shows (a state's members, a transition's top tokens).
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

from sae_circuits._html import SVG_ADD, fill, page_start
from sae_circuits.fsa.loops import cycles, loops

if TYPE_CHECKING:
    from sae_circuits.fsa.automaton import FeatureAutomaton, State


def members_text(state: State) -> str:
    """``"blocks.3.hook_resid_post#12,blocks.2.hook_mlp_out#7"``."""
    return ",".join(f"{site}#{index}" for site, index in state.members)


def top_tokens(tokens: dict[str, int], k: int = 5) -> str:
    """The ``k`` most frequent tokens, quoted like a state label: ``'"<" "\\n"'``."""
    top = sorted(tokens.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return " ".join(json.dumps(token, ensure_ascii=False) for token, _ in top)


def _top_cycles(fsa: FeatureAutomaton, n: int) -> list[tuple[list[int], float]]:
    """The ``n`` strongest cycles, for display: the page needs only the top ones, so the cap's
    warning (about the many weaker cycles left out) would only be noise here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return cycles(fsa)[:n]


def _top_loops(fsa: FeatureAutomaton, n: int) -> list[Any]:
    """``fsa.loops(n)`` for the page, or none when the firing cannot rank loops (an automaton
    built by hand without a consistent firing matrix): the page then lists the raw cycles."""
    try:
        return loops(fsa, n)
    except ValueError:
        return []


_HTML = (
    page_start("Feature automaton")
    + """body{font:13px system-ui,sans-serif;margin:16px;color:#222}
#wrap{overflow:auto;border:1px solid #ddd} circle{fill:#fff;stroke:#333;stroke-width:1}
circle.hot{stroke:#d62728;stroke-width:3} text{font-size:11px;fill:#333}
.legend span{display:inline-block;width:14px;height:3px;margin:0 4px 3px 12px}
</style></head><body>
<h3>Feature automaton</h3><p id="summary"></p>
<p class="legend"><span style="background:#1f77b4"></span>attention
<span style="background:#ff7f0e"></span>token
&nbsp; solid: confirmed or not validated, dashed: not confirmed; thick, red states: the first loop</p>
<div id="wrap"><svg id="graph"></svg></div>
<h4>Loops, first to read (distinct, structural before self-loops; fsa.loops)</h4><ol id="cycles"></ol>
<script type="application/json" id="fsa-data">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("fsa-data").textContent);
const svg = document.getElementById("graph"), NS = svg.namespaceURI;
const COLORS = {attention: "#1f77b4", token: "#ff7f0e"}, NODE = 14;
const n = data.states.length, R = Math.max(120, n * 16), PAD = 200, SIZE = 2 * (R + PAD), C = SIZE / 2;
"""
    + SVG_ADD
    + """const fmt = v => (v === null || v === undefined) ? "n/a" : Number(v).toPrecision(3);
const pos = new Map(), byId = new Map();
data.states.forEach((s, i) => {
  const a = 2 * Math.PI * i / Math.max(n, 1) - Math.PI / 2;
  pos.set(s.id, {x: C + R * Math.cos(a), y: C + R * Math.sin(a), a: a});
  byId.set(s.id, s);
});
const name = id => byId.has(id) ? `${id} ${byId.get(id).label}` : String(id);
document.getElementById("summary").textContent = data.summary;
svg.setAttribute("width", SIZE); svg.setAttribute("height", SIZE);
svg.setAttribute("viewBox", `0 0 ${SIZE} ${SIZE}`);
const defs = add("defs", {}, svg), edges = add("g", {}, svg), nodes = add("g", {}, svg);
for (const [m, color] of Object.entries(COLORS)) {
  const marker = add("marker", {id: "arrow-" + m, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9,
    markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto"}, defs);
  add("path", {d: "M0,0 L10,5 L0,10 z", fill: color}, marker);
}
const hot = new Set(), hotStates = new Set();
const ranked = (data.loops && data.loops.length) ? data.loops : data.cycles;
if (ranked.length) {
  const ids = ranked[0][0];
  ids.forEach((a, i) => { hot.add(a + ">" + ids[(i + 1) % ids.length]); hotStates.add(a); });
}
const largest = data.transitions.reduce((m, t) => Math.max(m, Math.abs(t.weight || 0)), 0) || 1;
const at = (p, r, a) => [p.x + r * Math.cos(a), p.y + r * Math.sin(a)];
for (const t of data.transitions) {
  const a = pos.get(t.src), b = pos.get(t.dst);
  if (!a || !b) continue;
  const bend = t.mechanism === "token" ? 2 : 1;
  let d;
  if (t.dst === t.src) {  // a loop pointing away from the centre
    const s0 = at(a, NODE, a.a - 0.5), s1 = at(a, NODE + 2, a.a + 0.5);
    const c0 = at(a, 40 + 25 * bend, a.a - 0.7), c1 = at(a, 40 + 25 * bend, a.a + 0.7);
    d = `M${s0} C${c0} ${c1} ${s1}`;
  } else {  // a quadratic curve bent to the left of src -> dst, so the reverse edge bends apart
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1, off = 22 * bend;
    const q = {x: (a.x + b.x) / 2 - off * dy / len, y: (a.y + b.y) / 2 + off * dx / len};
    const s0 = at(a, NODE, Math.atan2(q.y - a.y, q.x - a.x)),
s1 = at(b, NODE + 2, Math.atan2(q.y - b.y, q.x - b.x));
    d = `M${s0} Q${q.x},${q.y} ${s1}`;
  }
  const w = Math.abs(t.weight || 0), isHot = hot.has(t.src + ">" + t.dst);
  const path = add("path", {d: d, fill: "none", stroke: COLORS[t.mechanism] || "#555",
    "stroke-width": (1 + 3 * w / largest) * (isHot ? 2 : 1) + (isHot ? 1.5 : 0),
"stroke-opacity": isHot ? 0.95 : 0.6,
    "marker-end": `url(#arrow-${t.mechanism in COLORS ? t.mechanism : "attention"})`}, edges);
  if (t.confirmed === false) path.setAttribute("stroke-dasharray", "6,4");
  const verdict = t.confirmed === null ? "not validated" : t.confirmed ? "confirmed" :
    t.observed === false ? "not confirmed: never followed src in the model's own rollouts" : "not confirmed";
  add("title", {}, path, `${name(t.src)} -> ${name(t.dst)}\\n${t.mechanism} weight ${fmt(t.weight)}` +
    `\\ntokens: ${t.tokens}\\neffect ${fmt(t.effect)}` +
    (t.effect_removed == null ? "" : `, removed ${fmt(t.effect_removed)}`) + ` (${verdict})`);
}
for (const s of data.states) {
  const p = pos.get(s.id), c = add("circle", {cx: p.x, cy: p.y, r: NODE}, nodes);
  if (hotStates.has(s.id)) c.setAttribute("class", "hot");
  add("title", {}, c, `state ${s.id}: ${s.label}\\nfrequency ${fmt(s.frequency)}, max activation ` +
    `${fmt(s.max_activation)}\\nmembers:\\n${s.members.split(",").join("\\n")}`);
  add("text", {x: p.x, y: p.y + 4, "text-anchor": "middle"}, nodes, String(s.id));
  const [lx, ly] = at(p, NODE + 8, p.a),
anchor = Math.cos(p.a) > 0.2 ? "start" : Math.cos(p.a) < -0.2 ? "end" : "middle";
  add("text", {x: lx,
y: ly + (Math.sin(p.a) > 0.5 ? 10 : Math.sin(p.a) < -0.5 ? -4 : 4), "text-anchor": anchor}, nodes,
    s.label.length > 30 ? s.label.slice(0, 29) + "..." : s.label);
}
const list = document.getElementById("cycles");
for (const [ids, w] of ranked) {
  const what = ranked === data.loops ? "score" : "weakest transition";
  add("li", {}, list, [...ids, ids[0]].map(name).join(" -> ") + `  (${what} ${fmt(w)})`);
}
</script></body></html>
"""
)


def to_html(fsa: FeatureAutomaton, n_cycles: int = 10) -> str:
    """A self-contained page (inline SVG, CSS and JS; no network): states on a circle, transitions
    as arrows coloured by mechanism, the first loop of ``fsa.loops`` highlighted (its states red,
    its drawn transitions thicker), the first ``n_cycles`` loops listed (the raw strongest cycles,
    ``fsa.cycles()``, only when the firing cannot rank loops); hover a state or an arrow for
    members, tokens and effect."""
    states = [
        {"id": s.id, "label": s.label, "frequency": float(s.frequency), "members": members_text(s),
         "max_activation": float(s.max_activation)}
        for s in fsa.states
    ]  # fmt: skip
    transitions = [
        {"src": t.src, "dst": t.dst, "mechanism": t.mechanism, "weight": float(t.weight),
         "tokens": top_tokens(t.tokens), "effect": None if t.effect is None else float(t.effect),
         "confirmed": t.confirmed, "observed": t.observed,
         "effect_removed": None if t.effect_removed is None else float(t.effect_removed)}
        for t in fsa.transitions
    ]  # fmt: skip
    ranked = _top_loops(fsa, n_cycles)
    # the raw cycles only where loops cannot be ranked (the page shows them then): enumerating
    # every cycle of a 256-state automaton takes seconds, and the page would not show them
    raw = [] if ranked else _top_cycles(fsa, n_cycles)
    data = {"summary": repr(fsa), "states": states, "transitions": transitions,
            "cycles": [[ids, w] for ids, w in raw],
            "loops": [[loop.states, loop.score] for loop in ranked]}  # fmt: skip
    return fill(_HTML, data)
