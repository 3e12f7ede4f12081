"""Cycles, networkx and file formats for :class:`~sae_circuits.fsa.automaton.FeatureAutomaton`.

- ``.json``: lossless (``load(save(fsa))`` gives back the same states, transitions, firing, lengths
  and metadata); ``firing`` is stored as zlib-compressed, base64-encoded packed bits.
- ``.graphml`` (via :func:`to_networkx`), ``.dot`` (Graphviz, written here: no pydot) and a
  self-contained ``.html`` view (inline SVG, no network). These are views: only ``.json`` loads back.

Every file is written through :func:`sae_circuits.io.atomic_write_text`, in ASCII except ``.dot``
(UTF-8, as the attribution-graph exporter writes it).
"""

from __future__ import annotations

import base64
import binascii
import inspect
import io
import itertools
import json
import math
import os
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
import torch

from sae_circuits._text import (
    dot_string,
    exact_float,
    finite_json,
    json_get,
    page_start,
    printable,
    read_json,
    script_json,
    write_by_suffix,
)

if TYPE_CHECKING:
    from sae_circuits.fsa.automaton import FeatureAutomaton, State, Transition

FORMAT = "sae_circuits.feature_automaton"
FORMAT_VERSION = 1
_FIRING_ENCODING = "packbits-little+zlib+base64"
MAX_CYCLES = 10_000
"""Most cycles :func:`cycles` enumerates in one pass (dense automata have astronomically many)."""
_MECHANISMS = ("attention", "token")
_COLORS = {"attention": "#1f77b4", "token": "#ff7f0e"}


# --------------------------------------------------------------------------- small helpers


def _members(state: State) -> str:
    """``"blocks.3.hook_resid_post#12,blocks.2.hook_mlp_out#7"``."""
    return ",".join(f"{site}#{index}" for site, index in state.members)


def _top_tokens(tokens: dict[str, int], k: int = 5) -> str:
    """The ``k`` most frequent tokens, quoted like a state label: ``'"<" "\\n"'``."""
    top = sorted(tokens.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return " ".join(json.dumps(token, ensure_ascii=False) for token, _ in top)


def _summed_weights(fsa: FeatureAutomaton) -> dict[tuple[int, int], float]:
    """``(src, dst) -> `` total weight over both mechanisms (what ``fsa.weight(src, dst)`` gives)."""
    weights: dict[tuple[int, int], float] = {}
    for t in fsa.transitions:
        weights[t.src, t.dst] = weights.get((t.src, t.dst), 0.0) + t.weight
    return weights


# --------------------------------------------------------------------------- cycles


def _simple_cycles(graph: nx.DiGraph, max_length: int, cap: int) -> list[list[int]]:
    """Up to ``cap + 1`` simple cycles of length <= ``max_length`` (self-loops are length 1)."""
    if "length_bound" in inspect.signature(nx.simple_cycles).parameters:  # networkx >= 3.1
        found = nx.simple_cycles(graph, length_bound=max_length)
    else:  # older networkx enumerates every length; filter (the cap still bounds what is kept)
        found = (c for c in nx.simple_cycles(graph) if len(c) <= max_length)
    return list(itertools.islice(found, cap + 1))


def cycles(
    fsa: FeatureAutomaton, min_weight: float = 0.0, max_length: int = 6
) -> list[tuple[list[int], float]]:
    """Simple cycles of states, strongest first.

    Edges are state pairs whose transitions (both mechanisms summed) weigh more than ``min_weight``;
    a cycle's weight is its weakest edge. Cycles have at most ``max_length`` states (a self-loop is
    ``[s]``), start at their smallest state id, and are sorted by weight (descending), then length.

    A cycle weighs more than ``w`` exactly when it lives in the subgraph of edges heavier than ``w``,
    so when there are more than :data:`MAX_CYCLES` cycles, the weakest half of the edge weights is
    dropped until they fit (with a warning): what is returned is then *every* cycle above the final
    threshold, never an arbitrary sample.

    >>> fsa.cycles(min_weight=0.05)[:2]   # doctest: +SKIP
    [([3], 0.61), ([0, 4, 7], 0.22)]
    """
    if int(max_length) != max_length or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    graph = nx.DiGraph()
    graph.add_nodes_from(s.id for s in fsa.states)
    graph.add_weighted_edges_from((s, d, w) for (s, d), w in _summed_weights(fsa).items() if w > min_weight)
    found = _simple_cycles(graph, int(max_length), MAX_CYCLES)
    if len(found) > MAX_CYCLES:
        # the lowest edge-weight threshold that leaves at most MAX_CYCLES cycles (cycle counts only
        # fall as the threshold rises: binary search over the distinct weights)
        weights = sorted({w for _, _, w in graph.edges(data="weight")})
        full = list(graph.edges(data="weight"))

        def above(threshold: float) -> list[list[int]]:
            sub = nx.DiGraph()
            sub.add_nodes_from(graph.nodes)
            sub.add_weighted_edges_from((u, v, w) for u, v, w in full if w > threshold)
            return _simple_cycles(sub, int(max_length), MAX_CYCLES)

        lo, hi = 0, len(weights) - 1  # above(weights[-1]) is empty
        while lo < hi:
            mid = (lo + hi) // 2
            if len(above(weights[mid])) > MAX_CYCLES:
                lo = mid + 1
            else:
                hi = mid
        threshold = weights[lo]
        found = above(threshold)
        graph.remove_edges_from([(u, v) for u, v, w in full if w <= threshold])
        warnings.warn(f"more than {MAX_CYCLES} cycles; returning the {len(found)} whose weakest transition "
                      f"weighs more than {threshold:.6g}", stacklevel=3)  # fmt: skip
    result = []
    for cycle in found:
        start = cycle.index(min(cycle))
        cycle = cycle[start:] + cycle[:start]
        weight = min(graph[a][b]["weight"] for a, b in zip(cycle, cycle[1:] + cycle[:1]))
        result.append((cycle, float(weight)))
    result.sort(key=lambda cw: (-cw[1], len(cw[0]), cw[0]))
    return result


# --------------------------------------------------------------------------- networkx, GraphML


def _top_cycles(fsa: FeatureAutomaton, n: int) -> list[tuple[list[int], float]]:
    """The ``n`` strongest cycles, for display: the page needs only the top ones, so the cap's
    warning (about the many weaker cycles left out) would only be noise here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return cycles(fsa)[:n]


def _top_loops(fsa: FeatureAutomaton, n: int) -> list[Any]:
    """``fsa.loops(n)`` for the page, or none when the firing cannot rank loops (an automaton
    built by hand without a consistent firing matrix): the page then lists the raw cycles."""
    from sae_circuits.fsa.loops import loops

    try:
        return loops(fsa, n)
    except ValueError:
        return []


def to_networkx(fsa: FeatureAutomaton) -> nx.DiGraph:
    """An ``nx.DiGraph`` keyed by state id; one edge per ``(src, dst)``, both mechanisms merged.

    Node attributes: ``label`` (str), ``frequency``, ``max_activation`` (float), ``members`` (str,
    ``"site#index,..."``). Edge attributes: ``weight`` (total), ``attention_weight``,
    ``token_weight`` (0.0 where the mechanism has no transition), ``mechanism`` (``"attention"``,
    ``"token"`` or ``"both"``), ``tokens`` (the top tokens, quoted, counts of both mechanisms
    added), ``effect`` (float; NaN when not validated, the largest if the mechanisms differ) and
    ``confirmed`` (``"true"``, ``"false"`` or ``""`` when not validated; true if any mechanism's
    transition is). Only str/int/float values, so the graph writes to GraphML as it is.
    """
    graph = nx.DiGraph()
    for s in fsa.states:
        graph.add_node(s.id, label=s.label, frequency=float(s.frequency), members=_members(s),
                       max_activation=float(s.max_activation))  # fmt: skip
    by_pair: dict[tuple[int, int], list[Transition]] = {}
    for t in fsa.transitions:
        by_pair.setdefault((t.src, t.dst), []).append(t)
    for (src, dst), group in by_pair.items():
        weights = {m: float(sum(t.weight for t in group if t.mechanism == m)) for m in _MECHANISMS}
        kinds = {t.mechanism for t in group}
        tokens: Counter[str] = Counter()
        for t in group:
            tokens.update(t.tokens)
        effects = [float(t.effect) for t in group if t.effect is not None]
        verdicts = [t.confirmed for t in group if t.confirmed is not None]
        graph.add_edge(
            src, dst, weight=float(sum(t.weight for t in group)), attention_weight=weights["attention"],
            token_weight=weights["token"], mechanism=kinds.pop() if len(kinds) == 1 else "both",
            tokens=_top_tokens(tokens), effect=max(effects) if effects else math.nan,
            confirmed="" if not verdicts else "true" if any(verdicts) else "false",
        )  # fmt: skip
    return graph


def to_graphml(fsa: FeatureAutomaton) -> str:
    """GraphML text of :func:`to_networkx` (strings made XML-safe; pure ASCII)."""
    graph = to_networkx(fsa)
    for _, attrs in graph.nodes(data=True):
        attrs.update({k: printable(v) for k, v in attrs.items() if isinstance(v, str)})
    for _, _, attrs in graph.edges(data=True):
        attrs.update({k: printable(v) for k, v in attrs.items() if isinstance(v, str)})
    buffer = io.BytesIO()
    nx.write_graphml(graph, buffer, encoding="utf-8")
    # Character references keep the file ASCII, whatever encoding atomic_write_text uses.
    return buffer.getvalue().decode("utf-8").encode("ascii", "xmlcharrefreplace").decode("ascii")


# --------------------------------------------------------------------------- DOT


def to_dot(fsa: FeatureAutomaton) -> str:
    """Graphviz DOT: one node per state (``"s{id}"``, labelled ``id: label`` and its frequency), one
    edge per transition: blue for attention, orange for token, pen width 0.5..4 by ``|weight|``
    relative to the largest, labelled by its top tokens; solid if confirmed, dashed if validation
    did not confirm it, Graphviz's default if not validated.

    The weight is the edge attribute ``transition_weight``: Graphviz's own ``weight`` is a
    non-negative integer layout hint.
    """
    lines = [
        "digraph automaton {", "  rankdir=LR;", "  node [shape=ellipse, style=filled, fillcolor=white];",
        "  // edges: blue = attention, orange = token; solid = confirmed, dashed = not confirmed",
    ]  # fmt: skip
    for s in fsa.states:
        label = f"{s.id}: {s.label}\n{100 * s.frequency:.2f}% of tokens"
        lines.append(
            f"  {dot_string(f's{s.id}')} [label={dot_string(label)}, tooltip={dot_string(_members(s))}];"
        )
    largest = max((abs(t.weight) for t in fsa.transitions if math.isfinite(t.weight)), default=0.0) or 1.0
    for t in fsa.transitions:
        width = min(4.0, 0.5 + 3.5 * abs(t.weight) / largest) if math.isfinite(t.weight) else 4.0
        attrs = [
            f'transition_weight="{t.weight!r}"', f'mechanism="{t.mechanism}"',
            f'color="{_COLORS.get(t.mechanism, "#555555")}"', f"penwidth={width:.3f}",
            f"label={dot_string(_top_tokens(t.tokens, 3))}",
            f"tooltip={dot_string(f'{t.mechanism} {t.weight:.4g}; tokens {_top_tokens(t.tokens)}')}",
        ]  # fmt: skip
        if t.effect is not None:
            attrs.append(f'effect="{float(t.effect)!r}"')
        if t.confirmed is not None:
            attrs += [
                f'confirmed="{str(bool(t.confirmed)).lower()}"',
                f"style={'solid' if t.confirmed else 'dashed'}",
            ]
        lines.append(f"  {dot_string(f's{t.src}')} -> {dot_string(f's{t.dst}')} [{', '.join(attrs)}];")
    return "\n".join([*lines, "}", ""])


# --------------------------------------------------------------------------- HTML


_HTML = (
    page_start("Feature automaton")
    + """body{font:13px system-ui,sans-serif;margin:16px;color:#222}
#wrap{overflow:auto;border:1px solid #ddd} circle{fill:#fff;stroke:#333;stroke-width:1}
circle.hot{stroke:#d62728;stroke-width:3} text{font-size:11px;fill:#333}
.legend span{display:inline-block;width:14px;height:3px;margin:0 4px 3px 12px}
</style></head><body>
<h3>Feature automaton</h3><p id="summary"></p>
<p class="legend"><span style="background:#1f77b4"></span>attention<span style="background:#ff7f0e"></span>token
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
function add(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const k of Object.keys(attrs)) e.setAttribute(k, String(attrs[k]));
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}
const fmt = v => (v === null || v === undefined) ? "n/a" : Number(v).toPrecision(3);
const pos = new Map(), byId = new Map();
data.states.forEach((s, i) => {
  const a = 2 * Math.PI * i / Math.max(n, 1) - Math.PI / 2;
  pos.set(s.id, {x: C + R * Math.cos(a), y: C + R * Math.sin(a), a: a});
  byId.set(s.id, s);
});
const name = id => byId.has(id) ? `${id} ${byId.get(id).label}` : String(id);
document.getElementById("summary").textContent = data.summary;
svg.setAttribute("width", SIZE); svg.setAttribute("height", SIZE); svg.setAttribute("viewBox", `0 0 ${SIZE} ${SIZE}`);
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
    const s0 = at(a, NODE, Math.atan2(q.y - a.y, q.x - a.x)), s1 = at(b, NODE + 2, Math.atan2(q.y - b.y, q.x - b.x));
    d = `M${s0} Q${q.x},${q.y} ${s1}`;
  }
  const w = Math.abs(t.weight || 0), isHot = hot.has(t.src + ">" + t.dst);
  const path = add("path", {d: d, fill: "none", stroke: COLORS[t.mechanism] || "#555",
    "stroke-width": (1 + 3 * w / largest) * (isHot ? 2 : 1) + (isHot ? 1.5 : 0), "stroke-opacity": isHot ? 0.95 : 0.6,
    "marker-end": `url(#arrow-${t.mechanism in COLORS ? t.mechanism : "attention"})`}, edges);
  if (t.confirmed === false) path.setAttribute("stroke-dasharray", "6,4");
  const verdict = t.confirmed === null ? "not validated" : t.confirmed ? "confirmed" : "not confirmed";
  add("title", {}, path, `${name(t.src)} -> ${name(t.dst)}\\n${t.mechanism} weight ${fmt(t.weight)}` +
    `\\ntokens: ${t.tokens}\\neffect ${fmt(t.effect)} (${verdict})`);
}
for (const s of data.states) {
  const p = pos.get(s.id), c = add("circle", {cx: p.x, cy: p.y, r: NODE}, nodes);
  if (hotStates.has(s.id)) c.setAttribute("class", "hot");
  add("title", {}, c, `state ${s.id}: ${s.label}\\nfrequency ${fmt(s.frequency)}, max activation ` +
    `${fmt(s.max_activation)}\\nmembers:\\n${s.members.split(",").join("\\n")}`);
  add("text", {x: p.x, y: p.y + 4, "text-anchor": "middle"}, nodes, String(s.id));
  const [lx, ly] = at(p, NODE + 8, p.a), anchor = Math.cos(p.a) > 0.2 ? "start" : Math.cos(p.a) < -0.2 ? "end" : "middle";
  add("text", {x: lx, y: ly + (Math.sin(p.a) > 0.5 ? 10 : Math.sin(p.a) < -0.5 ? -4 : 4), "text-anchor": anchor}, nodes,
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
    its drawn transitions thicker), the first ``n_cycles`` loops listed (the raw strongest cycles
    when the firing cannot rank loops); hover a state or an arrow for members, tokens and effect."""
    states = [
        {"id": s.id, "label": s.label, "frequency": float(s.frequency), "members": _members(s),
         "max_activation": float(s.max_activation)}
        for s in fsa.states
    ]  # fmt: skip
    transitions = [
        {"src": t.src, "dst": t.dst, "mechanism": t.mechanism, "weight": float(t.weight),
         "tokens": _top_tokens(t.tokens), "effect": None if t.effect is None else float(t.effect),
         "confirmed": t.confirmed}
        for t in fsa.transitions
    ]  # fmt: skip
    data = {"summary": repr(fsa), "states": states, "transitions": transitions,
            "cycles": [[ids, w] for ids, w in _top_cycles(fsa, n_cycles)],
            "loops": [[loop.states, loop.score] for loop in _top_loops(fsa, n_cycles)]}  # fmt: skip
    return _HTML.replace("__DATA__", script_json(data))


# --------------------------------------------------------------------------- JSON


def _json_default(value: Any) -> Any:
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def to_json_dict(fsa: FeatureAutomaton) -> dict[str, Any]:
    """Everything :func:`load` needs. Floats are exact (NaN/inf as ``"nan"``/``"inf"`` strings);
    ``firing`` is ``np.packbits`` (little bit order, row-major) of the bool matrix, zlib-compressed
    (it is sparse), base64-encoded. Metadata goes through as JSON (tuples come back as lists,
    non-finite floats as None)."""
    firing = fsa.firing.detach().cpu().bool()
    packed = np.packbits(firing.numpy().reshape(-1), bitorder="little")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "states": [
            {"id": s.id, "members": [[site, int(index)] for site, index in s.members], "label": s.label,
             "frequency": exact_float(float(s.frequency)), "max_activation": exact_float(float(s.max_activation)),
             "pin_values": [exact_float(float(v)) for v in s.pin_values], "coherence": exact_float(float(s.coherence))}
            for s in fsa.states
        ],
        "transitions": [
            {"src": t.src, "dst": t.dst, "mechanism": t.mechanism, "weight": exact_float(float(t.weight)),
             "tokens": {str(k): int(v) for k, v in t.tokens.items()},
             "effect": None if t.effect is None else exact_float(float(t.effect)),
             "confirmed": None if t.confirmed is None else bool(t.confirmed),
             **{k: _optional(getattr(t, k)) for k in _CHECK_FIELDS}}
            for t in fsa.transitions
        ],
        "firing": {
            "shape": list(firing.shape), "encoding": _FIRING_ENCODING,
            "data": base64.b64encode(zlib.compress(packed.tobytes(), 6)).decode("ascii"),
        },
        "lengths": [int(n) for n in fsa.lengths.tolist()],
        "metadata": finite_json(fsa.metadata),
        "tokens": None if fsa.tokens is None else [int(t) for t in fsa.tokens.tolist()],
        "weights": {  # every pair's weight per mechanism: float64 bytes, exact
            m: {"shape": list(w.shape), "data": base64.b64encode(zlib.compress(
                w.detach().cpu().double().contiguous().numpy().tobytes(), 6)).decode("ascii")}
            for m, w in fsa.weights.items()
        },
    }  # fmt: skip


_CHECK_FIELDS = ("effect_ci", "effect_greedy", "effect_sampled")
"""Optional transition fields of a causal check (absent in files written before them)."""


def _optional(value: Any) -> Any:
    """None, a float or a pair of floats, exactly."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return [exact_float(float(v)) for v in value]
    return exact_float(float(value))


def _read_optional(path: Path, where: str, value: Any) -> Any:
    try:
        if value is None:
            return None
        if isinstance(value, list):
            if len(value) != 2:
                raise ValueError(f"{len(value)} numbers")
            return (float(value[0]), float(value[1]))
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: {where} is {value!r}; expected null, a number or [low, high] ({err})"
        ) from None


def to_json(fsa: FeatureAutomaton) -> str:
    """:func:`to_json_dict` as strict JSON text (no NaN tokens; ASCII, so the locale cannot matter)."""
    return json.dumps(to_json_dict(fsa), ensure_ascii=True, allow_nan=False, default=_json_default)


def _firing(path: Path, raw: Any) -> torch.Tensor:
    shape = json_get(path, "an automaton JSON", raw, "shape", at="firing")
    encoding = json_get(path, "an automaton JSON", raw, "encoding", at="firing")
    if encoding != _FIRING_ENCODING:
        raise ValueError(
            f"{path}: firing encoding {encoding!r} is not supported (reads {_FIRING_ENCODING!r})"
        )
    if not (
        isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and n >= 0 for n in shape)
    ):
        raise ValueError(f"{path}: firing.shape is {shape!r}; expected [tokens, states]")
    try:
        packed = zlib.decompress(
            base64.b64decode(json_get(path, "an automaton JSON", raw, "data", at="firing"), validate=True)
        )
    except (binascii.Error, zlib.error, TypeError, ValueError) as err:
        raise ValueError(f"{path}: firing.data is corrupt ({err})") from err
    count = shape[0] * shape[1]
    if len(packed) != (count + 7) // 8:
        raise ValueError(
            f"{path}: firing.data holds {len(packed)} bytes; shape {shape} needs {(count + 7) // 8}"
        )
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=count, bitorder="little")
    return torch.from_numpy(bits.astype(bool).reshape(shape))


def load(path: str | os.PathLike[str]) -> FeatureAutomaton:
    """Rebuild an automaton from a ``.json`` file written by :func:`save` (tensors on the CPU;
    ``lengths`` as int64)."""
    from sae_circuits.fsa.automaton import FeatureAutomaton, State, Transition

    path, raw = read_json(path, "automaton")
    version = json_get(path, "an automaton JSON", raw, "format_version")
    if json_get(path, "an automaton JSON", raw, "format") != FORMAT or version != FORMAT_VERSION:
        raise ValueError(f"{path}: format {raw['format']!r} version {version!r} is not supported "
                         f"(reads {FORMAT!r} version {FORMAT_VERSION})")  # fmt: skip
    states = []
    for i, row in enumerate(json_get(path, "an automaton JSON", raw, "states")):
        f = {
            k: json_get(path, "an automaton JSON", row, k, at=f"states[{i}]")
            for k in ("id", "members", "label", "frequency", "max_activation")
        }
        states.append(State(
            id=int(f["id"]), members=[(str(site), int(index)) for site, index in f["members"]], label=f["label"],
            frequency=float(f["frequency"]), max_activation=float(f["max_activation"]),
            pin_values=[float(v) for v in row.get("pin_values", [])], coherence=float(row.get("coherence", 1.0)),
        ))  # fmt: skip
    transitions = []
    for k, row in enumerate(json_get(path, "an automaton JSON", raw, "transitions")):
        keys = ("src", "dst", "mechanism", "weight", "tokens", "effect", "confirmed")
        f = {key: json_get(path, "an automaton JSON", row, key, at=f"transitions[{k}]") for key in keys}
        if f["mechanism"] not in _MECHANISMS:
            raise ValueError(
                f"{path}: transitions[{k}].mechanism is {f['mechanism']!r}; expected one of {_MECHANISMS}"
            )
        if f["confirmed"] not in (None, True, False):
            raise ValueError(
                f"{path}: transitions[{k}].confirmed is {f['confirmed']!r}; expected true, false or null"
            )
        transitions.append(Transition(
            src=int(f["src"]), dst=int(f["dst"]), mechanism=f["mechanism"], weight=float(f["weight"]),
            tokens={str(x): int(n) for x, n in f["tokens"].items()},
            effect=None if f["effect"] is None else float(f["effect"]), confirmed=f["confirmed"],
            **{key: _read_optional(path, f"transitions[{k}].{key}", row.get(key)) for key in _CHECK_FIELDS},
        ))  # fmt: skip
    return FeatureAutomaton(
        states=states,
        transitions=transitions,
        firing=_firing(path, json_get(path, "an automaton JSON", raw, "firing")),
        lengths=torch.tensor(json_get(path, "an automaton JSON", raw, "lengths"), dtype=torch.long),
        metadata=json_get(path, "an automaton JSON", raw, "metadata"),
        weights={m: _weights(path, m, w) for m, w in raw.get("weights", {}).items()},
        tokens=None if raw.get("tokens") is None else torch.tensor(raw["tokens"], dtype=torch.long),
    )


def _weights(path: Path, mechanism: str, raw: Any) -> torch.Tensor:
    try:
        shape = [int(n) for n in raw["shape"]]
        data = zlib.decompress(base64.b64decode(raw["data"], validate=True))
        values = np.frombuffer(data, dtype=np.float64).copy()
        return torch.from_numpy(values).reshape(shape)
    except (KeyError, TypeError, ValueError, zlib.error, RuntimeError) as err:
        raise ValueError(f"{path}: weights[{mechanism!r}] is corrupt ({err})") from err


# --------------------------------------------------------------------------- save

_WRITERS: dict[str, Callable[[FeatureAutomaton], str]] = {
    ".json": to_json, ".graphml": to_graphml, ".dot": to_dot, ".html": to_html,
}  # fmt: skip


def save(fsa: FeatureAutomaton, path: str | os.PathLike[str]) -> Path:
    """Write ``fsa`` atomically in the format its suffix names (``.json``, ``.graphml``, ``.dot``,
    ``.html``); only ``.json`` loads back (:func:`load`).

    >>> fsa.save("markup.html")   # doctest: +SKIP
    """
    return write_by_suffix(fsa, path, _WRITERS)
