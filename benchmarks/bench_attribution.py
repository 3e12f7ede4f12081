"""Benchmark: attribution graphs — time, batching, memory on long prompts, and first-order error.

What (one process unless said; ``torch.set_num_threads(2)``, the 2-core CPU the targets are for):

1. The full graph (every feature that reaches a target gets a row) of a 64-token prompt on the
   embedded model with all 8 dictionaries spliced (4 residual SAEs + 4 transcoders), beside the
   time of one frozen forward over one prompt copy and one backward pass (the arithmetic floor is
   ``forward + passes x backward``).
2. The same graph with ``batch_size=1`` (one backward pass per target node): the speed-up of
   batching, and a check that both graphs are the same.
3. Long prompts: a randomly initialised model of the embedded model's shape with a 1,024-token
   context and 8 equally wide random JumpReLU dictionaries (thresholds set for ~20 active
   features per token, like the trained ones), ``max_feature_nodes=4096``; each length (64 ... 1,024
   tokens) runs in a fresh subprocess that reports its wall time and peak resident memory.
4. First-order edges: with residual SAEs only, every MLP between sites is bare, so edges are
   first-order. The top feature->feature edges are compared with the effect of removing the source
   feature (other sites pinned) in (a) the frozen model (attention and LayerNorm frozen, MLPs live)
   and (b) the real model: Spearman rank correlation and median relative error. The exact
   (all-transcoder) graph is compared with the real model the same way, for scale.

Run ``python benchmarks/bench_attribution.py --write-docs`` to refresh docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import re
import statistics
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

from _report import machine, versions, write_section

import sae_circuits as sc
from sae_circuits.graph.attribution import _capture, _compute_rows
from sae_circuits.graph.influence import NodeKind
from sae_circuits.graph.passes import FrozenPasses, row_gradients
from sae_circuits.graph.replacement import frozen_pass
from sae_circuits.graph.rows import Row

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Attribution graphs (issue: attribution)"
COMMAND = "python benchmarks/bench_attribution.py --write-docs"
THREADS = 2
LENGTHS = (64, 128, 256, 512, 1024)
BUDGET = 4096
TOP_EDGES = 100


def prompt_tokens(model, n: int) -> torch.Tensor:
    """``n`` tokens of Python source (the embedded model's own domain), deterministic."""
    ids = model.tokenizer(inspect.getsource(textwrap))["input_ids"]
    return torch.tensor(ids[1000 : 1000 + n])


def timed(fn, repeats: int = 1):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


# --------------------------------------------------------------------------- 1 and 2


def full_graph() -> dict:
    model = sc.zoo.load_model("tiny")
    sc.splice(model, sc.zoo.load_saes("tiny", kind="resid") + sc.zoo.load_saes("tiny", kind="transcoder"))
    tokens = prompt_tokens(model, 64)
    graph, seconds = timed(
        lambda: sc.attribute(model, tokens, batch_size=64, max_feature_nodes=None, progress=False), repeats=3
    )
    # one pass, measured on its own: the frozen forward (one prompt copy), one raw backward, and
    # one backward with the edge read-out
    model.requires_grad_(False)
    with torch.enable_grad():
        run = _capture(model, tokens, None, 64, None, 0.0)
        pass_, forward_s = timed(lambda: frozen_pass(model, run.values), repeats=3)
        run.passes = FrozenPasses(model, run.values)
        # a pass as the run makes them: 64 features of one site, in position order (a middle site)
        site = len(run.values.sites) // 2
        a = run.active
        rows = [
            Row(1.0, active=i, site=site, position=int(a.position[i]), index=int(a.index[i]))
            for i in range(a.offsets[site], a.offsets[site] + 64)
        ]
        _, backward_s = timed(lambda: row_gradients(model, pass_, run.values, run.targets, rows), repeats=5)
        _, pass_s = timed(lambda: _compute_rows(run, rows), repeats=5)
    n_rows = (graph.kind == NodeKind.TARGET).sum() + graph.metadata["n_expanded_features"]
    passes = math.ceil(int((graph.kind == NodeKind.TARGET).sum()) / 64) + math.ceil(
        graph.metadata["n_expanded_features"] / 64
    )
    single, single_s = timed(
        lambda: sc.attribute(model, tokens, batch_size=1, max_feature_nodes=None, progress=False)
    )
    same = single.n_nodes == graph.n_nodes and torch.allclose(
        _dense(single), _dense(graph), atol=1e-5, rtol=1e-4
    )
    return {
        "seconds": seconds, "rows": int(n_rows), "passes": passes, "forward_s": forward_s, "backward_s": backward_s,
        "pass_s": pass_s, "edges": graph.n_edges, "nodes": graph.n_nodes, "active": graph.metadata["n_active_features"],
        "single_s": single_s, "same": bool(same), "scores": graph.scores(),
    }  # fmt: skip


def _dense(g) -> torch.Tensor:
    return torch.zeros(g.n_nodes, g.n_nodes).index_put_(
        (g.edges.target, g.edges.source), g.edges.weight, accumulate=True
    )


# --------------------------------------------------------------------------- 3


def random_setup():
    """The embedded model's shape with a 1,024-token context and 8 random 2048-wide dictionaries."""
    from sae_circuits.recipes.random_model import random_gpt2

    folder = REPO / "build" / "bench" / "random_1024"
    model = random_gpt2(folder, d_model=128, n_layers=4, n_heads=4, n_ctx=1024, vocab_size=4096)
    saes = []
    for layer in range(4):
        for hook, out in (
            (f"blocks.{layer}.hook_resid_post", None),
            (f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"),
        ):
            cfg = sc.SAEConfig("jumprelu_transcoder" if out else "jumprelu", d_in=128, d_sae=2048, hook_name=hook,
                               apply_b_dec_to_input=out is None, hook_name_out=out)  # fmt: skip
            torch.manual_seed(len(saes))
            sae = sc.SAE(cfg)
            sae.reset_parameters()
            saes.append(sae)
    tokens = prompt_tokens(model, 1024)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens[None, :512], names_filter=lambda n: n in {s.cfg.hook_name for s in saes}
        )
        for sae in saes:  # ~20 active features per token, as in the trained dictionaries
            pre = sae._pre_acts(cache[sae.cfg.hook_name][0])[0]
            sae.threshold.copy_(pre.quantile(1 - 20 / 2048, dim=0).clamp_min(1e-3))
    sc.splice(model, saes)
    return model, tokens


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec
    from the parent that spawned it)."""
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) / 2**20 if match else float("nan")


def long_prompt(n: int) -> dict:
    """One length, in this (fresh) process: time and peak RSS."""
    model, tokens = random_setup()
    graph, seconds = timed(
        lambda: sc.attribute(model, tokens[:n], batch_size=64, max_feature_nodes=BUDGET, progress=False)
    )
    active = graph.metadata["n_active_features"]
    n_nodes = n + active + 8 * n + int((graph.kind == NodeKind.TARGET).sum())
    return {
        "tokens": n, "seconds": seconds, "rss_gb": peak_rss_gb(),
        "active": active, "features": int((graph.kind == NodeKind.FEATURE).sum()), "edges": graph.n_edges,
        "dense_gb": n_nodes**2 * 4 / 2**30, "late_share": graph.metadata["late_share"],
        "other_nodes": int((graph.kind == NodeKind.OTHER).sum()),
    }  # fmt: skip


def long_prompts() -> list[dict]:
    random_setup()  # builds the model once, outside the timed subprocesses
    rows = []
    for n in LENGTHS:
        out = subprocess.run(
            [sys.executable, __file__, "--long", str(n)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {n} tokens: {rows[-1]['seconds']:.1f} s, {rows[-1]['rss_gb']:.2f} GB", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------- 4


def ablation_effects(model, graph, pairs, frozen: bool) -> list[float]:
    """Change of each target's pre-activation when its source feature is removed at its site,
    with every other site pinned at its clean output (a direct effect); ``frozen`` also freezes
    attention patterns and LayerNorm scales at their clean values."""
    tokens = torch.tensor([graph.tokens])
    keep = re.compile(r".*(hook_pattern|hook_scale)$")
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens,
            names_filter=lambda n: n in graph.sites or bool(keep.match(n)) or n.endswith("hook_sae_acts_pre"),
        )
    pinned = {site: cache[site] for site in graph.sites}
    base_hooks = [(n, _const(v)) for n, v in cache.items() if frozen and keep.match(n)]
    saes = sc.saes_of(model)
    effects = []
    for source, target in pairs:
        s_site, t_site = graph.sites[int(graph.site[source])], graph.sites[int(graph.site[target])]
        sae = saes[s_site]
        q, i = int(graph.position[source]), int(graph.index[source])
        removed = pinned[s_site].clone()
        removed[0, q] -= float(graph.activation[source]) * sae.W_dec[i]
        hooks = base_hooks + [
            (site, _const(removed if site == s_site else value)) for site, value in pinned.items()
        ]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            _, after = model.run_with_cache(tokens, names_filter=f"{t_site}.hook_sae_acts_pre")
        p, j = int(graph.position[target]), int(graph.index[target])
        effects.append(
            float(
                cache[f"{t_site}.hook_sae_acts_pre"][0, p, j] - after[f"{t_site}.hook_sae_acts_pre"][0, p, j]
            )
        )
    return effects


def _const(value):
    return lambda x, hook: value


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def first_order() -> dict:
    out = {}
    for name, kind in (("resid", "resid"), ("transcoder", "transcoder")):
        model = sc.zoo.load_model("tiny")
        sc.splice(model, sc.zoo.load_saes("tiny", kind=kind))
        graph = sc.attribute(model, prompt_tokens(model, 64), max_feature_nodes=None, progress=False)
        e = graph.edges
        between = (graph.kind[e.source] == NodeKind.FEATURE) & (graph.kind[e.target] == NodeKind.FEATURE)
        top = e.weight.abs().masked_fill(~between, -1).topk(TOP_EDGES).indices
        pairs = list(zip(e.source[top].tolist(), e.target[top].tolist()))
        weights = e.weight[top].tolist()
        row = {"first_order": float(graph.first_order_edges()[top].double().mean())}
        for mode in ("frozen", "real"):
            effects = ablation_effects(model, graph, pairs, frozen=mode == "frozen")
            row[f"{mode}_spearman"] = spearman(weights, effects)
            row[f"{mode}_rel_err"] = statistics.median(abs(x - w) / abs(w) for x, w in zip(effects, weights))
        out[name] = row
    return out


# --------------------------------------------------------------------------- report


def report(full: dict, long: list[dict], fo: dict) -> str:
    floor = full["forward_s"] + full["passes"] * full["backward_s"]
    floor_with_readout = full["forward_s"] + full["passes"] * full["pass_s"]
    lines = [
        SECTION,
        "",
        f"Reproduce: `{COMMAND}` ({datetime.date.today()}; {machine()}; {versions(('torch', 'transformer-lens'))}).",
        "",
        (
            "**Full graph, 64 tokens** — embedded model, all 8 dictionaries spliced (4 residual SAEs + 4 "
            "transcoders, 2,048 features each), every feature that reaches a target gets a row, `batch_size=64`:"
        ),
        "",
        "| | value |",
        "|---|---|",
        f"| active features / rows (targets + features) / backward passes | {full['active']:,} / {full['rows']:,} / {full['passes']} |",
        f"| nodes / edges kept (sparse) | {full['nodes']:,} / {full['edges']:,} |",
        f"| **time for the full graph** (median of 3; target ≤ 30 s) | **{full['seconds']:.1f} s** |",
        f"| one frozen forward (one prompt copy; rows are batched in the backward) | {full['forward_s'] * 1000:.0f} ms |",
        f"| one backward pass (64 rows), raw / with the edge read-out | {full['backward_s'] * 1000:.1f} ms / {full['pass_s'] * 1000:.1f} ms |",
        f"| floor: forward + passes x raw backward / x backward with read-out | {floor:.2f} s / {floor_with_readout:.2f} s |",
        f"| full-graph time ÷ floor (raw / with read-out) | {full['seconds'] / floor:.2f} / {full['seconds'] / floor_with_readout:.2f} |",
        f"| same graph with `batch_size=1` (one backward pass per target node) | {full['single_s']:.1f} s |",
        f"| **speed-up of batching** (target ≥ 10x) | **{full['single_s'] / full['seconds']:.1f}x** (graphs identical: {full['same']}) |",
        f"| replacement / completeness score | {full['scores']['replacement']:.3f} / {full['scores']['completeness']:.3f} |",
        "",
        (
            f"Why batching gives {full['single_s'] / full['seconds']:.1f}x here rather than 10x: with `batch_size=1` a row "
            f"costs {full['single_s'] / full['rows'] * 1e3:.2f} ms, mostly per-call overhead (autograd launch, edge "
            f"read-out, bookkeeping); batching removes that, but a 64-row pass is arithmetic-bound on this CPU — "
            f"{full['backward_s'] / 64 * 1e3:.3f} ms of backward per row (each row back-propagates through a full "
            "64-token attention layer, although its seed sits at one position) — so the ratio is capped by the "
            "per-row arithmetic, not by the number of passes."
        ),
        "",
        (
            f"**Long prompts** — random model of the same shape with a 1,024-token context, 8 random 2,048-wide "
            f"JumpReLU dictionaries (~20 active features per token), `max_feature_nodes={BUDGET}`, `batch_size=64`; "
            "each length in a fresh process. A dense float32 N x N adjacency over the same nodes is given for scale."
        ),
        "",
        "| tokens | time | peak RSS | active features | feature nodes | edges kept | dense N x N would need | late share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in long:
        lines.append(
            f"| {r['tokens']:,} | {r['seconds']:.1f} s | {r['rss_gb']:.2f} GB | {r['active']:,} | {r['features']:,} | "
            f"{r['edges']:,} | {r['dense_gb']:.1f} GB | {r['late_share']:.3f} |"
        )
    lines += [
        "",
        (
            "Peak RSS target at 1,024 tokens: ≤ 4 GB. *Late share*: of the expanded features' outgoing edge mass, the "
            'part held in their site\'s "other" node because they were not yet among the 8 x budget candidates when '
            "some rows were computed (never dropped: every row still adds up to its target)."
        ),
        "",
        (
            f"**First-order edges** — top {TOP_EDGES} feature->feature edges of a 64-token graph against removing the "
            "source feature (every other site pinned), in the frozen model (attention patterns and LayerNorm scales "
            "frozen, MLPs live) and in the real model:"
        ),
        "",
        "| dictionaries | edges first-order | Spearman vs frozen-model removal | median rel. error | Spearman vs real-model removal | median rel. error |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("resid", "4 residual SAEs (MLPs bare)"), ("transcoder", "4 transcoders (exact)")):
        r = fo[name]
        lines.append(
            f"| {label} | {r['first_order']:.0%} | {r['frozen_spearman']:.3f} | {r['frozen_rel_err']:.2%} | "
            f"{r['real_spearman']:.3f} | {r['real_rel_err']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write-docs", action="store_true", help="refresh the section in docs/benchmarks.md")
    parser.add_argument("--long", type=int, help=argparse.SUPPRESS)  # one long-prompt run (subprocess)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.long:
        print(json.dumps(long_prompt(args.long)))
        return
    print("full graph ...", file=sys.stderr)
    full = full_graph()
    print("long prompts ...", file=sys.stderr)
    long = long_prompts()
    print("first-order edges ...", file=sys.stderr)
    fo = first_order()
    text = report(full, long, fo)
    print(text)
    if args.write_docs:
        write_section(text, SECTION, DOCS)


if __name__ == "__main__":
    main()
