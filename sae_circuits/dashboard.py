"""A one-page HTML dashboard for one feature of a spliced SAE: where it fires most (token-level
highlights), how its activations are spread, which tokens it promotes and suppresses, and what
clamping it does to greedy generation.

The page is self-contained like :func:`sae_circuits.graph.export.to_html`: a CSP that allows only
inline style and script, no network URLs, the data as escaped JSON in one ``<script
type="application/json">``, and every string put into the DOM through ``textContent``.

>>> with sc.spliced(model, [sae]):
...     write_dashboard(model, "blocks.1.hook_resid_post", 7, texts[:4], "feature_7.html",
...                     steer_tokens=4, progress=False)
PosixPath('feature_7.html')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_circuits._export_io import page_start, printable, script_json
from sae_circuits._files import atomic_write_text
from sae_circuits._tokenize import token_row, token_text, tokens_text
from sae_circuits.features import TokenValues, logit_effect_values
from sae_circuits.interventions import clamp, intervene
from sae_circuits.splice import site_of

Text = str | Sequence[int] | Int[Tensor, " pos"]
_RIGHT = 4  # tokens shown right of a context's max token: enough to see what follows it
_STEER_PROMPT_TOKENS = 8  # default steering prompts: the first texts cut to this many tokens


def _tokenize(
    model: nn.Module, texts: Sequence[Text], prepend_bos: bool, what: str
) -> list[Int[Tensor, " pos"]]:
    """One token row per text; refuses empty rows and rows the model cannot read in one pass."""
    if isinstance(texts, (str, Tensor)):
        raise TypeError(
            f"{what} must be a list of strings or token rows, got a single {type(texts).__name__}"
        )
    tl = cast(Any, model)  # HookedTransformer or TransformerBridge: its TL API is not on nn.Module
    rows = []
    for i, text in enumerate(texts):
        row = token_row(model, text, bos=prepend_bos)  # token rows are the model's input as given
        if not isinstance(text, str):
            row = row.to(dtype=torch.long, device=tl.cfg.device)
            row = row[0] if row.ndim == 2 and row.shape[0] == 1 else row
            if row.ndim != 1:
                raise ValueError(f"{what}[{i}]: a token row must be 1-D, got shape {list(row.shape)}")
        if row.numel() == 0:
            raise ValueError(f"{what}[{i}] has no tokens")
        if row.numel() > tl.cfg.n_ctx:
            raise ValueError(
                f"{what}[{i}] is {row.numel()} tokens long but the model reads at most n_ctx="
                f"{tl.cfg.n_ctx}; split it into shorter texts"
            )
        rows.append(row)
    return rows


@torch.no_grad()
def _activations(
    model: nn.Module, name: str, rows: list[Tensor], feature: int, batch_size: int, progress: bool = False
) -> Tensor:
    """``[text, pos]`` activations of one feature, ``-inf`` past each text's end.

    Like :func:`sae_circuits.features.feature_activations`, but on the SAE already spliced at the
    site (that function splices its own). Rows are right-padded: in a causal model the padding
    cannot reach the real tokens before it, and ``-inf`` keeps it out of every statistic.
    """
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), -torch.inf)
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="dashboard: activations", unit="batch", disable=not progress, leave=False):
        batch = rows[start : start + batch_size]
        tokens = torch.zeros(len(batch), width, dtype=torch.long, device=batch[0].device)
        for i, row in enumerate(batch):
            tokens[i, : len(row)] = row
        _, cache = cast(Any, model).run_with_cache(tokens, names_filter=name)
        acts = cache[name][..., feature].float().cpu()  # [batch, pos]
        for i, row in enumerate(batch):
            out[start + i, : len(row)] = acts[i, : len(row)]
    return out


def _shown(token: str) -> str:
    """A token as displayed: newline, tab and space made visible, control characters escaped."""
    return printable(token.replace("\n", "\u21b5").replace("\t", "\u21e5").replace(" ", "\u00b7"))


def _histogram(fired: Float[Tensor, " n"], bins: int) -> dict[str, Any]:
    """Counts of the non-zero activations in ``bins`` equal bins from their min to their max."""
    if fired.numel() == 0:
        return {"lo": 0.0, "hi": 0.0, "counts": [0] * bins}
    lo, hi = float(fired.min()), float(fired.max())
    index = ((fired - lo) / ((hi - lo) or 1.0) * bins).long().clamp(0, bins - 1)  # max goes in the last bin
    return {"lo": lo, "hi": hi, "counts": torch.bincount(index, minlength=bins).tolist()}


def _check(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")


def feature_dashboard(
    model: nn.Module,
    site: str,
    feature: int,
    texts: Sequence[Text],
    *,
    k: int = 12,
    context: int = 24,
    steer_prompts: Sequence[Text] | None = None,
    steer_tokens: int = 24,
    steer_value: float | None = None,
    bins: int = 30,
    batch_size: int = 8,
    prepend_bos: bool = False,
    progress: bool = True,
) -> str:
    """A self-contained HTML page about ``feature`` of the SAE spliced at ``site`` (a hook name):
    firing density and max activation over ``texts``, the ``k`` top-activating contexts
    (``context`` tokens left of each max), a histogram of the non-zero activations, the top
    promoted/suppressed tokens, and greedy continuations of ``steer_prompts`` (default: the first
    3 texts cut to 8 tokens) without and with the feature clamped at ``steer_value`` (default: its
    max activation) from each prompt's last token on. ``texts`` are strings or 1-D token rows.
    ``progress`` shows progress bars (activations, then steering) on stderr.

    >>> with sc.spliced(model, [sae]):
    ...     html = feature_dashboard(model, "blocks.1.hook_resid_post", 7, texts[:4], k=5,
    ...                              steer_tokens=4, progress=False)
    >>> html.startswith("<!DOCTYPE html>"), '"feature": 7' in html
    (True, True)
    """
    tl = cast(Any, model)  # HookedTransformer or TransformerBridge: its TL API is not on nn.Module
    spliced_site = site_of(model, site)  # ValueError naming the spliced sites
    sae = spliced_site.sae
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(
            f"feature={feature!r} is out of range for the SAE at {site!r} (d_sae={sae.cfg.d_sae})"
        )
    for name, value, minimum in [("k", k, 1), ("context", context, 0), ("steer_tokens", steer_tokens, 1),
                                 ("bins", bins, 1), ("batch_size", batch_size, 1)]:  # fmt: skip
        _check(name, value, minimum)
    if steer_value is not None and not 0 <= float(steer_value) < float("inf"):
        raise ValueError(f"steer_value={steer_value!r} must be a finite number >= 0 (a clamp value)")
    if not texts:
        raise ValueError("texts is empty: give at least one text to collect activations from")
    rows = _tokenize(model, texts, prepend_bos, "texts")
    acts = _activations(model, f"{spliced_site.name}.hook_sae_acts_post", rows, feature, batch_size, progress)
    fired = acts[acts > 0]  # [n_fired]
    n_tokens = sum(len(r) for r in rows)
    max_act = float(fired.max()) if fired.numel() else 0.0

    contexts = []
    top = acts.flatten().topk(min(k, fired.numel()))  # distinct positions, strongest first
    for value, flat in zip(top.values.tolist(), top.indices.tolist()):
        text, pos = divmod(flat, acts.shape[1])
        lo, hi = max(0, pos - context), min(len(rows[text]), pos + 1 + _RIGHT)
        contexts.append({
            "text": text, "pos": pos, "activation": value, "max_index": pos - lo,
            "tokens": [_shown(token_text(tl, t)) for t in rows[text][lo:hi].tolist()],
            "acts": acts[text, lo:hi].tolist(),
        })  # fmt: skip

    try:
        promoted, suppressed = logit_effect_values(model, sae, feature, k=min(10, tl.cfg.d_vocab))
    except ValueError:  # a site off the residual stream (an MLP's hidden layer): no direct effect
        promoted = suppressed = TokenValues([], [])
    clamp_value = max_act if steer_value is None else float(steer_value)
    if steer_prompts is None:
        prompt_rows = [r[:_STEER_PROMPT_TOKENS] for r in rows[:3]]
    else:
        prompt_rows = _tokenize(model, steer_prompts, prepend_bos, "steer_prompts")
    kwargs = {"max_new_tokens": steer_tokens, "do_sample": False, "verbose": False, "stop_at_eos": False}
    steering = []
    bar = tqdm(prompt_rows, desc="dashboard: steering", unit="prompt", disable=not progress, leave=False)
    for i, prompt in enumerate(bar):
        n = len(prompt)
        if n + steer_tokens > tl.cfg.n_ctx:
            raise ValueError(
                f"steer_prompts[{i}] ({n} tokens) + steer_tokens={steer_tokens} exceeds n_ctx={tl.cfg.n_ctx}"
            )
        plain = tl.generate(prompt[None], **kwargs)
        # From the last prompt token on: that token's residual is what predicts the first new token.
        with intervene(model, clamp(spliced_site.name, feature, clamp_value, positions=slice(n - 1, None))):
            steered = tl.generate(prompt[None], **kwargs)
        steering.append({"prompt": tokens_text(tl, prompt), "plain": tokens_text(tl, plain[0, n:]),
                         "steered": tokens_text(tl, steered[0, n:])})  # fmt: skip

    data = {
        "site": spliced_site.name, "feature": feature, "architecture": sae.cfg.architecture,
        "d_sae": sae.cfg.d_sae, "n_texts": len(rows), "n_tokens": n_tokens, "n_fired": fired.numel(),
        "density": fired.numel() / n_tokens, "max": max_act, "contexts": contexts,
        "histogram": _histogram(fired, bins), "promoted": promoted._asdict(),
        "suppressed": suppressed._asdict(), "steer_value": clamp_value, "steering": steering,
    }  # fmt: skip
    return _HTML.replace("__DATA__", script_json(data))


def write_dashboard(
    model: nn.Module,
    site: str,
    feature: int,
    texts: Sequence[Text],
    path: str | os.PathLike[str],
    **kwargs: Any,
) -> Path:
    """:func:`feature_dashboard` written atomically to ``path`` (an old file survives a failure).

    >>> with sc.spliced(model, [sae]):
    ...     write_dashboard(model, "blocks.1.hook_resid_post", 7, texts[:4], "f7.html", k=5,
    ...                     steer_tokens=4, progress=False)
    PosixPath('f7.html')
    """
    return atomic_write_text(path, feature_dashboard(model, site, feature, texts, **kwargs))


_HTML = (
    page_start("Feature dashboard")
    + """body{font:13px system-ui,sans-serif;margin:16px;color:#222;max-width:1100px}
h3{margin:18px 0 6px} .muted{color:#777} table{border-collapse:collapse} td{padding:1px 10px 1px 0}
.ctx{font:12px ui-monospace,monospace;margin:3px 0;white-space:pre-wrap;word-break:break-all}
.ctx .rank{display:inline-block;width:90px;color:#777} .tok{border-radius:2px;padding:0 1px}
.tok.max{outline:2px solid #c0392b} .cols{display:flex;gap:40px} ol{font:12px ui-monospace,monospace}
.gen{font:12px ui-monospace,monospace;white-space:pre-wrap;background:#f4f4f4;padding:4px;margin:2px 0}
.gen b{font-weight:normal;color:#1f77b4} .gen.steered b{color:#c0392b} rect{fill:#e67e22}
</style></head><body>
<h2 id="title"></h2><table id="header"></table>
<h3>Top activating contexts</h3><div id="contexts"></div>
<h3>Activation histogram (non-zero activations)</h3><p id="density" class="muted"></p><svg id="hist"></svg>
<h3>Logit effects (direct path, median-shifted)</h3>
<div class="cols"><div>Promoted<ol id="promoted"></ol></div>
<div>Suppressed<ol id="suppressed"></ol></div></div>
<h3>Steering</h3><p id="steer-note" class="muted"></p><div id="steering"></div>
<script type="application/json" id="dashboard-data">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("dashboard-data").textContent);
function el(tag, parent, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  parent.appendChild(e);
  return e;
}
const fmt = x => (x === null ? "n/a" : Number(x).toPrecision(4));
document.title = `Feature ${data.feature} at ${data.site}`;
document.getElementById("title").textContent = document.title;
const header = document.getElementById("header");
for (const [k, v] of [["site", data.site], ["feature", data.feature],
    ["SAE", `${data.architecture}, d_sae=${data.d_sae}`],
    ["firing density",
      `${fmt(data.density)} (${data.n_fired} of ${data.n_tokens} tokens in ${data.n_texts} texts)`],
    ["max activation", fmt(data.max)]]) {
  const row = el("tr", header); el("td", row, k, "muted"); el("td", row, String(v));
}
const contexts = document.getElementById("contexts");
if (!data.contexts.length) el("p", contexts, "The feature never fires on these texts.", "muted");
data.contexts.forEach((c, r) => {
  const line = el("div", contexts, undefined, "ctx");
  el("span", line, `#${r + 1} ${fmt(c.activation)}`, "rank");
  c.tokens.forEach((tok, i) => {
    const span = el("span", line, tok, i === c.max_index ? "tok max" : "tok");
    const alpha = data.max > 0 ? Math.min(1, c.acts[i] / data.max) : 0;
    span.style.backgroundColor = `rgba(230, 126, 34, ${alpha.toFixed(3)})`;
    span.title = `activation ${fmt(c.acts[i])}  (text ${c.text}, position ${c.pos - c.max_index + i})`;
  });
});
const h = data.histogram, svg = document.getElementById("hist"), NS = svg.namespaceURI;
const W = 600, H = 160, B = 20;
document.getElementById("density").textContent =
  `fires on ${fmt(100 * data.density)}% of tokens; ${h.counts.length} bins from ${fmt(h.lo)} to ${fmt(h.hi)}`;
svg.setAttribute("width", W); svg.setAttribute("height", H + B);
const most = Math.max(1, ...h.counts), bw = W / h.counts.length, step = (h.hi - h.lo) / h.counts.length;
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const k of Object.keys(attrs)) e.setAttribute(k, String(attrs[k]));
  if (text !== undefined) e.textContent = text;
  svg.appendChild(e);
  return e;
}
h.counts.forEach((n, i) => {
  const bar = svgEl("rect",
    {x: i * bw + 1, y: H - H * n / most, width: Math.max(1, bw - 2), height: H * n / most});
  const t = document.createElementNS(NS, "title");
  t.textContent = `${fmt(h.lo + i * step)} .. ${fmt(h.lo + (i + 1) * step)}: ${n}`;
  bar.appendChild(t);
});
svgEl("text", {x: 0, y: H + 14, "font-size": 11}, fmt(h.lo));
svgEl("text", {x: W, y: H + 14, "font-size": 11, "text-anchor": "end"}, fmt(h.hi));
for (const side of ["promoted", "suppressed"])
  data[side].tokens.forEach((tok, i) =>
    el("li", document.getElementById(side), `${JSON.stringify(tok)}  ${fmt(data[side].values[i])}`));
document.getElementById("steer-note").textContent =
  `Greedy continuations; "clamped" pins the feature at ${fmt(data.steer_value)}` +
  " from the prompt's last token on.";
const steering = document.getElementById("steering");
for (const s of data.steering) {
  for (const [label, cont] of [["plain", s.plain], ["clamped", s.steered]]) {
    const box = el("div", steering, undefined, label === "clamped" ? "gen steered" : "gen");
    el("span", box, `${label}: `, "muted"); el("span", box, s.prompt); el("b", box, cont);
  }
  el("br", steering);
}
// For tests/test_browser.py-style checks, as in the graph viewer.
Object.assign(document.body.dataset, {renderedContexts: data.contexts.length, renderedBars: h.counts.length,
  renderedTokens: document.querySelectorAll("#contexts .tok").length});
</script></body></html>
"""
)
