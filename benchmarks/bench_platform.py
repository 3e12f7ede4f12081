"""Benchmark: the TransformerBridge against the HookedTransformer on the same weights.

What (one process, ``torch.set_num_threads(1)``; the two kinds alternate, median of 5 runs each):
the full attribution graph (every feature that reaches a target gets a row) of a 64-token prompt
on the embedded model with all 8 dictionaries spliced (4 residual SAEs + 4 transcoders), built on
a ``HookedTransformer`` and on a ``TransformerBridge`` loaded from the same files; the time ratio,
and a check that the two graphs are the same (nodes, edge lists, weights to 1e-4 of the largest).

Run ``python benchmarks/bench_platform.py --write-docs`` to refresh docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import statistics
import textwrap
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

from _report import machine, versions, write_section

import sae_circuits as sc

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## TransformerBridge vs HookedTransformer (issue: platform)"
COMMAND = "python benchmarks/bench_platform.py --write-docs"
THREADS = 1
REPEATS = 5


def measure() -> dict:
    tokens = None
    models = {}
    for kind in ("hooked", "bridge"):
        model = sc.zoo.load_model("tiny", kind=kind)
        sc.splice(model, sc.zoo.load_saes("tiny", kind="resid") + sc.zoo.load_saes("tiny", kind="transcoder"))
        models[kind] = model
        if tokens is None:
            ids = model.tokenizer(inspect.getsource(textwrap))["input_ids"]
            tokens = torch.tensor(ids[1000:1064])
    times: dict[str, list[float]] = {kind: [] for kind in models}
    graphs = {}
    for _ in range(REPEATS):  # alternate, so that machine load hits both alike
        for kind, model in models.items():
            start = time.perf_counter()
            graphs[kind] = sc.attribute(model, tokens, batch_size=64, progress=False)
            times[kind].append(time.perf_counter() - start)
    hooked, bridge = graphs["hooked"], graphs["bridge"]
    scale = float(hooked.edges.weight.abs().max())
    same = (
        hooked.n_nodes == bridge.n_nodes
        and torch.equal(hooked.edges.target, bridge.edges.target)
        and torch.equal(hooked.edges.source, bridge.edges.source)
        and bool(torch.allclose(hooked.edges.weight, bridge.edges.weight, atol=1e-4 * scale, rtol=0))
    )
    return {
        "hooked_s": statistics.median(times["hooked"]),
        "bridge_s": statistics.median(times["bridge"]),
        "nodes": hooked.n_nodes,
        "edges": hooked.n_edges,
        "same": same,
        "max_diff": float((hooked.edges.weight - bridge.edges.weight).abs().max()) / scale if same else None,
    }


def report(r: dict) -> str:
    ratio = r["bridge_s"] / r["hooked_s"]
    diff = f"{r['max_diff']:.1e}" if r["max_diff"] is not None else "n/a"
    return f"""{SECTION}

Measured {datetime.date.today()} on {machine()}; {versions(("torch", "transformer-lens", "transformers"))}.
Command: `{COMMAND}`.

The full attribution graph of a 64-token prompt (embedded model, 4 residual SAEs + 4 transcoders
spliced; {r["nodes"]:,} nodes, {r["edges"]:,} edges), median of {REPEATS} alternating runs in one process:

| model | time | ratio |
|---|---|---|
| HookedTransformer | {r["hooked_s"]:.2f} s | 1.00 |
| TransformerBridge | {r["bridge_s"]:.2f} s | {ratio:.2f} |

Same graph on both: **{"yes" if r["same"] else "NO"}** (same nodes and edge lists; largest weight
difference {diff} of the largest weight). The bridge runs the Hugging Face modules under
TransformerLens's hooks; attribution freezes the same `hook_pattern` / `hook_scale` values on both,
so its edges are the same, and its time is that of the bridge's forward and backward passes.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        text = report(measure())
    finally:
        torch.set_num_threads(threads)
    print(text)
    if args.write_docs:
        write_section(text, SECTION, DOCS)


if __name__ == "__main__":
    main()
