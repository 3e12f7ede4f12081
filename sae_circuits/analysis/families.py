"""Feature splitting: dictionaries of several widths on one site, their features matched across
widths, and the family tree of which feature of a narrow dictionary splits into which features of
the wider ones (Towards Monosemanticity, "Feature Splitting").

1. Check the dictionaries: at least two, one site (hook and input width), distinct widths; sort
   them narrowest first. Level ``i`` of the tree is the ``i``-th narrowest dictionary.
2. Read every dictionary's activations over the tokens in one model pass (no splicing); per
   feature its firing rate, its top activating tokens and, given a boolean token property, the
   F1 of "the feature fires" against "the token has the property".
3. For every adjacent pair (level ``i`` narrow, level ``i + 1`` wide), both similarity matrices
   (:func:`~sae_circuits.analysis.matching.similarities`): decoder cosine and activation
   correlation of every wide feature with every narrow one.
4. Every wide feature's candidate parent is its best match one level down by the chosen measure
   (``by``); it becomes the parent when that similarity reaches ``threshold``. Both measures of
   the pair are kept on every edge, whichever one chose it. A feature without a parent starts a
   family of its own (a feature new at that width).

The default thresholds (:data:`DEFAULT_THRESHOLD`): ``activation`` 0.3: a feature split evenly
into ``m`` children correlates about ``1/sqrt(m)`` with each child (their firing is a ``1/m`` share
of the parent's), so 0.3 keeps splits up to ~10 ways while unrelated sparse features correlate
near 0. ``decoder`` 0.5: well above the largest cosine of a direction with a few thousand
unrelated ones in ``d_model = 128`` (about ``sqrt(2 ln n / d)`` = 0.35), and a child of a split
keeps most of its parent's direction.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from sae_circuits._export_io import printable
from sae_circuits._files import atomic_write_text
from sae_circuits._html import SVG_ADD, fill, page_start
from sae_circuits._tokenize import token_text
from sae_circuits.analysis._stats import check_tokens, correlation, decoder_cosine, dictionary_activations
from sae_circuits.analysis.matching import FeatureMatch, check_same_site, firing_counts
from sae_circuits.analysis.neurons import detect
from sae_circuits.sae import SAE

__all__ = ["DEFAULT_THRESHOLD", "FamilyLevel", "FeatureFamilies", "feature_families", "property_f1"]

log = logging.getLogger(__name__)
Measure = Literal["activation", "decoder"]
MEASURES: tuple[Measure, ...] = ("activation", "decoder")
DEFAULT_THRESHOLD: dict[str, float] = {"activation": 0.3, "decoder": 0.5}
"""The similarity an edge needs, per measure, when ``threshold`` is not given (module docstring)."""


@dataclass
class FamilyLevel:
    """One dictionary of the tree, and how each of its features hangs from the level below."""

    width: int
    """Number of features of the dictionary."""
    firing_rate: Float[Tensor, " d_sae"]
    """Fraction of the tokens on which each feature fires."""
    parent: Int[Tensor, " d_sae"]
    """Each feature's parent one level down, -1 where none (always at level 0)."""
    cosine: Float[Tensor, " d_sae"]
    """Decoder cosine of each feature with its candidate parent (NaN at level 0 or no candidate)."""
    correlation: Float[Tensor, " d_sae"]
    """Activation correlation of each feature with its candidate parent (NaN at level 0 or no
    candidate)."""
    candidate: Int[Tensor, " d_sae"]
    """Each feature's best match one level down by the tree's measure, parent or not (-1 at level
    0, and for a feature whose every similarity is 0: one that never fires, by activation)."""
    match: FeatureMatch | None
    """Each measure's own best match one level down (``None`` at level 0): the two can differ."""
    top_tokens: list[list[tuple[str, float]]]
    """Per feature, its top activating distinct tokens with their largest activation."""
    f1: Float[Tensor, " d_sae"] | None
    """F1 of each feature's firing against the token property (``None`` without one)."""


def property_f1(
    acts: Float[Tensor, "n_tokens d_sae"], labels: Bool[Tensor, " n_tokens"]
) -> Float[Tensor, " d_sae"]:
    """F1 of "the feature fires" (activation > 0) against ``labels`` for every feature:
    ``2 tp / (fired + positives)``, 0 for a feature that never fires when nothing is positive.

    >>> property_f1(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]), torch.tensor([True, False, True]))
    tensor([1., 0.])
    """
    if labels.dtype != torch.bool or labels.shape[0] != acts.shape[0]:
        raise ValueError(
            f"labels: expected {acts.shape[0]} booleans (one per token), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    return detect(acts, labels, threshold=0.0).f1  # the features-vs-neurons detector, at "fires"


@dataclass
class FeatureFamilies:
    """Feature families across dictionary widths (:func:`feature_families`): ``levels[0]`` is the
    narrowest dictionary; every feature of ``levels[i + 1]`` hangs from at most one of ``levels[i]``."""

    hook_name: str
    """The site every dictionary reads."""
    by: Measure
    """Which measure chose the parents: ``activation`` (correlation) or ``decoder`` (cosine)."""
    threshold: float
    """The similarity (by ``by``) an edge needed."""
    n_tokens: int
    """Tokens the activations were read over."""
    levels: list[FamilyLevel]
    """One per dictionary, narrowest first."""

    @property
    def widths(self) -> list[int]:
        """The dictionaries' widths, narrowest first."""
        return [level.width for level in self.levels]

    def _check(self, level: int, feature: int) -> None:
        if not isinstance(level, int) or not 0 <= level < len(self.levels):
            raise ValueError(f"level={level!r}: expected 0..{len(self.levels) - 1} (widths {self.widths})")
        width = self.levels[level].width
        if not isinstance(feature, int) or not 0 <= feature < width:
            raise ValueError(f"feature={feature!r}: expected 0..{width - 1} at level {level} (width {width})")

    def children(self, level: int, feature: int) -> list[int]:
        """The features of level ``level + 1`` whose parent is ``feature`` of ``level``, the most
        similar (by the tree's measure) first; none at the widest level."""
        self._check(level, feature)
        if level + 1 == len(self.levels):
            return []
        below = self.levels[level + 1]
        ids = (below.parent == feature).nonzero().flatten()
        score = below.correlation if self.by == "activation" else below.cosine
        return [int(i) for i in ids[score[ids].argsort(descending=True)]]

    def root(self, level: int, feature: int) -> tuple[int, int]:
        """``(level, feature)`` of the family's root: parents followed down as far as they go."""
        self._check(level, feature)
        while level > 0 and int(self.levels[level].parent[feature]) >= 0:
            level, feature = level - 1, int(self.levels[level].parent[feature])
        return level, feature

    def family(self, level: int, feature: int) -> dict[str, Any]:
        """The subtree under ``feature`` of ``level`` as nested dicts: ``level``, ``width``,
        ``feature``, ``firing_rate``, ``f1`` (None without a property), ``top_tokens``,
        ``cosine`` and ``correlation`` with its parent (None for the node asked for, unless it has
        a parent) and ``children``."""
        self._check(level, feature)
        node = self._node(level, feature)
        node["children"] = [self.family(level + 1, c) for c in self.children(level, feature)]
        return node

    def _node(self, level: int, feature: int) -> dict[str, Any]:
        at = self.levels[level]
        has_parent = level > 0 and int(at.parent[feature]) >= 0
        return {
            "level": level, "width": at.width, "feature": feature,
            "firing_rate": float(at.firing_rate[feature]),
            "f1": None if at.f1 is None else float(at.f1[feature]),
            "top_tokens": [[t, round(v, 4)] for t, v in at.top_tokens[feature]],
            "parent": int(at.parent[feature]) if has_parent else None,
            "cosine": float(at.cosine[feature]) if has_parent else None,
            "correlation": float(at.correlation[feature]) if has_parent else None,
        }  # fmt: skip

    def best_for_property(self, level: int = 0) -> int:
        """The feature of ``level`` with the best F1 for the token property given to
        :func:`feature_families` (e.g. the root of the base64 family at level 0)."""
        self._check(level, 0)
        f1 = self.levels[level].f1
        if f1 is None:
            raise ValueError("best_for_property: feature_families was given no token_property")
        return int(f1.argmax())

    def to_json(self) -> dict[str, Any]:
        """Everything as plain JSON data: the settings and, per level, per-feature lists."""

        def floats(x: Tensor) -> list[float | None]:
            return [None if math.isnan(v) else round(v, 4) for v in x.tolist()]

        return {
            "hook_name": self.hook_name, "by": self.by, "threshold": self.threshold,
            "n_tokens": self.n_tokens, "widths": self.widths,
            "levels": [
                {"width": at.width, "firing_rate": floats(at.firing_rate), "parent": at.parent.tolist(),
                 "cosine": floats(at.cosine), "correlation": floats(at.correlation),
                 "f1": None if at.f1 is None else floats(at.f1),
                 "top_tokens": [[[t, round(v, 3)] for t, v in tops] for tops in at.top_tokens]}
                for at in self.levels
            ],
        }  # fmt: skip

    def write_html(self, path: str | os.PathLike[str], family: tuple[int, int] | int | None = None) -> Path:
        """Write a self-contained page (inline SVG and JS, nothing fetched) of the tree: pick a
        family by ``level`` and ``feature`` (or from the largest families, or the best F1); nodes
        show width, feature id, firing rate, F1 and top tokens, edges both similarities.
        ``family`` (``(level, feature)``, or a feature of level 0) is the one shown first; by
        default the largest family."""
        start = (0, family) if isinstance(family, int) else family
        if start is None:
            sizes = [self.size(0, f) for f in range(self.levels[0].width)]
            start = (0, max(range(len(sizes)), key=sizes.__getitem__))
        self._check(*start)
        return atomic_write_text(path, fill(_HTML, {**self.to_json(), "start": list(start)}))

    def size(self, level: int, feature: int) -> int:
        """Number of nodes of the subtree under ``feature`` of ``level``, itself included."""
        return 1 + sum(self.size(level + 1, c) for c in self.children(level, feature))

    def __repr__(self) -> str:
        with_parent = [float((at.parent >= 0).float().mean()) for at in self.levels[1:]]
        shares = ", ".join(f"{w}: {p:.0%}" for w, p in zip(self.widths[1:], with_parent))
        return (
            f"FeatureFamilies({self.hook_name}, widths {self.widths}, by {self.by} >= {self.threshold}; "
            f"with a parent: {shares})"
        )


def feature_families(
    saes: list[SAE],
    model: nn.Module,
    tokens: Int[Tensor, "batch pos"],
    *,
    by: Measure = "activation",
    threshold: float | None = None,
    token_property: Bool[Tensor, "batch pos"] | None = None,
    top_k: int = 5,
    batch_size: int = 16,
) -> FeatureFamilies:
    """The family tree of dictionaries of one site and distinct widths (module docstring): every
    feature's parent is its best match (``by``: ``"activation"`` correlation over ``tokens``, or
    ``"decoder"`` cosine) in the next narrower dictionary, when that reaches ``threshold`` (default
    :data:`DEFAULT_THRESHOLD`). ``token_property`` (one boolean per token) adds every feature's F1
    for it. Position 0 of every row is left out.

    >>> import dataclasses
    >>> config = sc.TrainConfig(k=4, batch_size=32, total_tokens=128, buffer_tokens=64,
    ...                         geometric_median_samples=64, progress=False)
    >>> small, large = [sc.train_sae(model, "blocks.1.hook_resid_post", tokens,
    ...                              dataclasses.replace(config, d_sae=d)) for d in (32, 64)]
    >>> fam = feature_families([large, small], model, tokens)
    >>> fam.widths, fam.levels[1].parent.shape
    ([32, 64], torch.Size([64]))
    >>> tree = fam.family(*fam.root(1, 0))
    >>> sorted(tree)[:4]
    ['children', 'correlation', 'cosine', 'f1']
    """
    started = time.perf_counter()
    tokens = check_tokens(tokens, model)
    saes = _sorted_by_width(saes)
    if by not in MEASURES:
        raise ValueError(f"by={by!r}: expected one of {list(MEASURES)}")
    threshold = DEFAULT_THRESHOLD[by] if threshold is None else threshold
    if not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold!r}: expected a similarity in [-1, 1]")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k={top_k!r}: expected an int >= 0")
    labels = _labels(token_property, tokens)
    acts = dictionary_activations(model, saes, tokens, batch_size)  # step 2
    ids = tokens[:, 1:].reshape(-1)  # the rows of acts
    names = _token_names(model, ids) if top_k else {}
    levels = []
    for i, (sae, a) in enumerate(zip(saes, acts)):
        nan = torch.full((sae.cfg.d_sae,), float("nan"))
        parent = candidate = torch.full((sae.cfg.d_sae,), -1, dtype=torch.long)
        cos_edge, corr_edge, match = nan, nan.clone(), None
        if i > 0:  # steps 3-4: this level against the one below
            cos = decoder_cosine(sae, saes[i - 1])  # [d_wide, d_narrow]
            corr = correlation(a, acts[i - 1])  # [d_wide, d_narrow]
            chosen = corr if by == "activation" else cos
            value, candidate = chosen.max(dim=1)
            rows = torch.arange(sae.cfg.d_sae)
            cos_edge, corr_edge = cos[rows, candidate], corr[rows, candidate]
            # a silent feature correlates 0 with everything: max picks index 0, which is no match
            silent = ~(chosen != 0).any(dim=1)
            candidate = candidate.masked_fill(silent, -1)
            cos_edge, corr_edge = (
                cos_edge.masked_fill(silent, math.nan),
                corr_edge.masked_fill(silent, math.nan),
            )
            fires, fires_below = firing_counts(a), firing_counts(acts[i - 1])
            linked = value >= threshold
            if by == "activation":  # a feature that never fires correlates 0 with everything: no evidence
                linked &= (fires > 0) & (fires_below[candidate] > 0)
            parent = torch.where(linked, candidate, torch.full_like(candidate, -1))
            (cv, ci), (rv, ri) = cos.max(dim=1), corr.max(dim=1)
            match = FeatureMatch(cv, ci, rv, ri, fires, fires_below, int(a.shape[0]))
        levels.append(
            FamilyLevel(
                width=sae.cfg.d_sae,
                firing_rate=(a > 0).float().mean(0),
                parent=parent,
                cosine=cos_edge,
                correlation=corr_edge,
                candidate=candidate,
                match=match,
                top_tokens=_top_tokens(a, ids, names, top_k),
                f1=None if labels is None else property_f1(a, labels),
            )
        )
    log.info("feature_families: widths %s over %d tokens in %.1f s", [s.cfg.d_sae for s in saes],
             ids.numel(), time.perf_counter() - started)  # fmt: skip
    return FeatureFamilies(saes[0].cfg.hook_name, by, float(threshold), int(ids.numel()), levels)


def _sorted_by_width(saes: list[SAE]) -> list[SAE]:
    """Step 1: the dictionaries narrowest first, or a ValueError naming what is wrong."""
    saes = list(saes)
    if len(saes) < 2:
        raise ValueError(
            f"feature_families: expected at least 2 dictionaries of distinct widths, got {len(saes)}"
        )
    check_same_site(saes, "feature_families: the dictionaries")
    widths = [s.cfg.d_sae for s in saes]
    repeated = sorted({w for w in widths if widths.count(w) > 1})
    if repeated:
        raise ValueError(
            f"feature_families: dictionaries of equal width {repeated} (widths {widths}); "
            "the tree needs one dictionary per width"
        )
    return sorted(saes, key=lambda s: s.cfg.d_sae)


def _labels(token_property: Tensor | None, tokens: Tensor) -> Tensor | None:
    if token_property is None:
        return None
    if (
        not isinstance(token_property, Tensor)
        or token_property.dtype != torch.bool
        or token_property.shape != tokens.shape
    ):
        what = (
            f"{token_property.dtype} {tuple(token_property.shape)}"
            if isinstance(token_property, Tensor)
            else type(token_property).__name__
        )
        raise ValueError(
            f"token_property: expected a bool tensor of the tokens' shape {tuple(tokens.shape)}, got {what}"
        )
    return token_property[:, 1:].reshape(-1)


def _token_names(model: nn.Module, ids: Int[Tensor, " n_tokens"]) -> dict[int, str]:
    """Display strings of the distinct token ids (newlines, tabs, spaces made visible)."""
    distinct = ids.unique()
    if getattr(model, "tokenizer", "") is None:  # a model built from a config reads ids alone
        strings = [token_text(model, int(i)) for i in distinct]
    else:
        strings = model.to_str_tokens(distinct)  # type: ignore[operator]
    return {
        int(i): printable(str(s).replace("\n", "\u21b5").replace("\t", "\u21e5").replace(" ", "\u00b7"))
        for i, s in zip(distinct.tolist(), strings)
    }


def _top_tokens(
    acts: Float[Tensor, "n_tokens d_sae"], ids: Int[Tensor, " n_tokens"], names: dict[int, str], k: int
) -> list[list[tuple[str, float]]]:
    """Per feature, up to ``k`` distinct tokens among its ``8 k`` strongest firings."""
    if k == 0:
        return [[] for _ in range(acts.shape[1])]
    values, rows = acts.topk(min(8 * k, acts.shape[0]), dim=0)  # [8k, d_sae]
    out = []
    for value, row in zip(values.T.tolist(), ids[rows].T.tolist()):
        seen: dict[int, float] = {}
        for v, t in zip(value, row):
            if v <= 0 or len(seen) == k:
                break
            seen.setdefault(t, v)
        out.append([(names[t], v) for t, v in seen.items()])
    return out


_HTML = (
    page_start("Feature families")
    + """body{font:13px system-ui,sans-serif;margin:16px;color:#222}
#wrap{overflow:auto;border:1px solid #ddd} text{font-size:11px;fill:#222}
rect.node{fill:#f7f7f7;stroke:#555} rect.node.hot{stroke:#d62728;stroke-width:2}
.picks button{margin:2px;font-size:11px} input{width:6em}
</style></head><body>
<h3>Feature families</h3><p id="summary"></p>
<p>level <input id="level" type="number" min="0"> feature <input id="feature" type="number" min="0">
<button id="show">show</button> <span id="where"></span></p>
<p class="picks">largest families: <span id="largest"></span></p>
<p class="picks" id="f1row">best F1 (token property): <span id="best"></span></p>
<div id="wrap"><svg id="tree"></svg></div>
<script type="application/json" id="families-data">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("families-data").textContent);
const svg = document.getElementById("tree"), NS = svg.namespaceURI;
const COL = 300, ROW = 46, BOX_W = 210, BOX_H = 36;
"""
    + SVG_ADD
    + """const fmt = v => (v === null || v === undefined) ? "n/a" : Number(v).toPrecision(3);
const pct = v => (100 * v).toPrecision(2) + "%";
const kids = data.levels.map(() => new Map());
data.levels.forEach((lv, i) => { if (i === 0) return;
  lv.parent.forEach((p, f) => { if (p < 0) return;
    const m = kids[i - 1]; if (!m.has(p)) m.set(p, []); m.get(p).push(f); }); });
const score = (i, f) => data.by === "activation" ? data.levels[i].correlation[f] : data.levels[i].cosine[f];
kids.forEach((m, i) => m.forEach(list => list.sort((a, b) => score(i + 1, b) - score(i + 1, a))));
const children = (i, f) => (kids[i] && kids[i].get(f)) || [];
const size = (i, f) => 1 + children(i, f).reduce((s, c) => s + size(i + 1, c), 0);
document.getElementById("summary").textContent = `${data.hook_name}: widths ${data.widths.join(", ")}; ` +
  `parent = best match one width down by ${data.by} >= ${data.threshold}; ${data.n_tokens} tokens.`;
function pick(span, items) {
  for (const [i, f, label] of items) {
    const b = document.createElement("button");
    b.textContent = label; b.onclick = () => show(i, f); span.appendChild(b);
  }
}
const roots = data.levels[0].parent.map((_, f) => [0, f, size(0, f)]).sort((a, b) => b[2] - a[2]);
pick(document.getElementById("largest"), roots.slice(0, 12).map(([i, f, s]) => [i, f, `#${f} (${s})`]));
if (data.levels[0].f1) {
  const best = [];
  data.levels.forEach((lv, i) => lv.f1.forEach((v, f) => best.push([i, f, v])));
  best.sort((a, b) => b[2] - a[2]);
  pick(document.getElementById("best"), best.slice(0, 8).map(([i, f, v]) =>
    [i, f, `${data.levels[i].width}:#${f} F1 ${fmt(v)}`]));
} else document.getElementById("f1row").style.display = "none";
function show(level, feature) {
  document.getElementById("level").value = level; document.getElementById("feature").value = feature;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const lv = data.levels[level];
  if (!lv || !(feature >= 0 && feature < lv.width)) {
    document.getElementById("where").textContent = "no such feature"; return;
  }
  let up = lv.parent[feature];
  document.getElementById("where").textContent = up >= 0 && level > 0 ?
    `its parent: level ${level - 1} #${up}` : "a root (no parent)";
  let leaf = 0; const placed = [];
  (function place(i, f, depth) {
    const cs = children(i, f);
    const ys = cs.map(c => place(i + 1, c, depth + 1));
    const y = ys.length ? (ys[0] + ys[ys.length - 1]) / 2 : (leaf++) * ROW;
    placed.push({i, f, y, ys, cs, depth});
    return y;
  })(level, feature, 0);
  const depth = Math.max(...placed.map(p => p.depth)) + 1;
  const W = depth * COL + 20, H = Math.max(leaf, 1) * ROW + 40;
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  data.widths.slice(level, level + depth).forEach((w, d) =>
    add("text", {x: 10 + d * COL, y: 12}, svg, `width ${w} (level ${level + d})`));
  const g = add("g", {transform: "translate(10 24)"}, svg);
  for (const p of placed) p.cs.forEach((c, k) => {
    const x0 = p.depth * COL + BOX_W, x1 = (p.depth + 1) * COL;
    const y0 = p.y + BOX_H / 2, y1 = p.ys[k] + BOX_H / 2;
    const below = data.levels[p.i + 1], w = Math.max(0.5, 4 * (score(p.i + 1, c) || 0));
    const e = add("path", {d: `M${x0},${y0} C${x0 + 40},${y0} ${x1 - 40},${y1} ${x1},${y1}`, fill: "none",
      stroke: "#1f77b4", "stroke-width": w, "stroke-opacity": 0.7}, g);
    add("title", {}, e, `cos ${fmt(below.cosine[c])}, corr ${fmt(below.correlation[c])}`);
    add("text", {x: x1 - 6, y: y1 - 3, "text-anchor": "end", "font-size": 9}, g,
      `cos ${fmt(below.cosine[c])} r ${fmt(below.correlation[c])}`);
  });
  for (const p of placed) {
    const at = data.levels[p.i], x = p.depth * COL, tops = at.top_tokens[p.f] || [];
    const box = add("rect", {class: "node" + (p.depth === 0 ? " hot" : ""), x: x, y: p.y, width: BOX_W,
      height: BOX_H, rx: 4}, g);
    const f1 = at.f1 ? `  F1 ${fmt(at.f1[p.f])}` : "";
    add("title", {}, box, `width ${at.width} #${p.f}\\nfiring ${pct(at.firing_rate[p.f])}${f1}\\n` +
      tops.map(([t, v]) => `${t}  ${fmt(v)}`).join("\\n"));
    add("text", {x: x + 5, y: p.y + 14}, g, `${at.width}:#${p.f}  fires ${pct(at.firing_rate[p.f])}${f1}`);
    const line = tops.map(([t]) => t).join(" | ");
    add("text", {x: x + 5, y: p.y + 29, fill: "#666"}, g,
      line.length > 36 ? line.slice(0, 35) + "..." : line);
  }
}
document.getElementById("show").onclick = () =>
  show(Number(document.getElementById("level").value), Number(document.getElementById("feature").value));
show(data.start[0], data.start[1]);
</script></body></html>
"""
)
