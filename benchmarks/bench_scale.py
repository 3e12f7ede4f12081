"""Benchmark: attribution at GPT-2-small shape, against the arithmetic floor and the code before.

Model: a random GPT-2-small-shaped ``HookedTransformer`` (12 layers, d_model 768, 12 heads,
d_mlp 3072, vocab 50,257) with 12 random JumpReLU transcoders x 12,288 features (~45 active per
token), ``benchmarks/_gpt2_shape.py``. ``sc.attribute(max_feature_nodes=4096, batch_size=64)``
on 16 / 64 / 256 random tokens; each run in a fresh process that reports its wall time, peak
resident memory (VmHWM) and the library's "where the time went" log.

*Floor*: the arithmetic the passes must do, at the matmul rate this process measures on the same
shapes. A batch of ``k`` rows whose latest row is at position ``h - 1`` and whose seeds enter at
a site downstream of ``L`` attention layers back-propagates ``k x h`` token-rows through those
layers: per token-row and layer, ``W_O^T`` and ``W_V^T`` (``2 x 2 x d_model^2`` FLOPs) and the
frozen pattern (``2 x h x d_model``); the read-out dots each gradient with the active features'
decoded vectors and the error vectors (``2 x d_model`` per pair). The transcoders' outputs are
leaves, so no MLP is crossed. The floor is the sum over the run's passes, recorded as they run.

*Before*: the same runs on the library at commit ``--before`` (default eb54254, the last commit
before this benchmark), from a git worktree in ``build/bench/before``, each in a fresh process,
interleaved with the runs of the current code so that a noisy neighbour slows both alike.

Run ``python benchmarks/bench_scale.py --write-docs`` (about 20 minutes on 1 thread) to refresh
the section in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Attribution at GPT-2-small shape (issue: scale)"
COMMAND = "python benchmarks/bench_scale.py --write-docs"
BUDGET, BATCH, THREADS = 4096, 64, 1
LENGTHS = (16, 64, 256)
BEFORE_LENGTHS = (16, 64)


def peak_rss_gb() -> float:
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) / 2**20 if match else float("nan")


def matmul_rate(rows: int, d: int) -> float:
    """FLOP/s of ``(rows, d) @ (d, d)``, the backward's main shape, best of 5."""
    a, w = torch.randn(rows, d), torch.randn(d, d)
    a @ w
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ w
        best = min(best, time.perf_counter() - start)
    return 2 * rows * d * d / best


class PassRecorder:
    """Wraps the attribution's per-batch step to record each pass's floor FLOPs."""

    def __init__(self, attribution_module, d_model: int, n_layers: int) -> None:
        self.module, self.d, self.n_layers = attribution_module, d_model, n_layers
        self.original = attribution_module._compute_rows
        self.flops, self.passes = 0.0, 0

    def __enter__(self) -> PassRecorder:
        def recording(run, rows):
            self.flops += self.pass_flops(run, rows)
            self.passes += 1
            return self.original(run, rows)

        self.module._compute_rows = recording
        return self

    def __exit__(self, *exc) -> None:
        self.module._compute_rows = self.original

    def pass_flops(self, run, rows) -> float:
        from sae_circuits.graph.passes import horizon_of
        from sae_circuits.graph.replacement import stage_of

        n, d = run.values.tokens.numel(), self.d
        h = horizon_of(rows, n)
        stages = [
            stage_of(run.values.sites[r.site].sae.cfg.hook_name) if r.site >= 0 else 10**9 for r in rows
        ]
        top = max(stages)
        layers = sum(1 for b in range(self.n_layers) if 1 + 12 * b + 2 < top)  # attentions crossed
        backward = len(rows) * h * layers * (4 * d * d + 2 * h * d)
        read = 0
        for site in run.values.sites:
            if site.stage < top:  # the gradient reaches this site's output
                read += 2 * d * (int((site.positions < h).sum()) + h)
        return backward + len(rows) * read


def one_run(n: int) -> dict:
    """One attribution in this (fresh) process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import logging

    from _gpt2_shape import D_MODEL, LAYERS, gpt2_small_shape, prompt

    import sae_circuits as sc
    import sae_circuits.graph.attribution as attribution
    import sae_circuits.graph.passes as passes

    log: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            log.append(record.getMessage())

    logger = logging.getLogger("sae_circuits.graph.attribution")
    logger.setLevel(logging.INFO)
    logger.addHandler(Keep())
    model = gpt2_small_shape()
    tokens = prompt(n)
    current = hasattr(passes, "horizon_of")  # the code before this benchmark has no floor record
    recorder = PassRecorder(attribution, D_MODEL, LAYERS) if current else None
    rate = matmul_rate(BATCH * n, D_MODEL)
    start = time.perf_counter()
    if recorder is not None:
        with recorder:
            graph = sc.attribute(model, tokens, max_feature_nodes=BUDGET, batch_size=BATCH, progress=False)
    else:
        graph = sc.attribute(model, tokens, max_feature_nodes=BUDGET, batch_size=BATCH, progress=False)
    seconds = time.perf_counter() - start
    summary = next((m.split(": ", 1)[1] for m in log if m.startswith("where the time went")), "")
    return {
        "tokens": n, "seconds": seconds, "rss_gb": peak_rss_gb(), "edges": graph.n_edges,
        "nodes": graph.n_nodes, "active": graph.metadata["n_active_features"],
        "passes": recorder.passes if recorder else None,
        "floor_s": recorder.flops / rate if recorder else None, "gflops": rate / 1e9, "where": summary,
    }  # fmt: skip


def spawn(n: int, source: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{source}:{Path(__file__).resolve().parent}")
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def before_tree(ref: str) -> Path:
    tree = REPO / "build" / "bench" / "before"
    if not (tree / "sae_circuits").is_dir():
        subprocess.run(["git", "worktree", "add", "-f", "--detach", str(tree), ref], cwd=REPO, check=True)
    subprocess.run(["git", "checkout", "-q", "--detach", ref], cwd=tree, check=True)
    return tree


def report(after: list[dict], before: dict[int, dict], ref: str) -> str:
    from _report import machine, versions

    torch.set_num_threads(THREADS)
    lines = [
        SECTION,
        "",
        f"Reproduce: `{COMMAND}` ({datetime.date.today().isoformat()}; {machine()}; {versions()}).",
        "",
        "Random GPT-2-small-shaped `HookedTransformer` (12 layers, d_model 768, vocab 50,257), 12 random JumpReLU "
        f"transcoders x 12,288 features (~45 active per token), `sc.attribute(max_feature_nodes={BUDGET}, "
        f"batch_size={BATCH})`, random tokens; each run in a fresh process. *Floor*: the passes' arithmetic "
        "(backward through the attention layers each batch crosses, up to its latest row's position, plus the "
        "edge read-out) at the matmul rate measured in the same process (see the benchmark's docstring). "
        f"*Before*: commit {ref}, run interleaved with the current code.",
        "",
        "| tokens | time | before | speed-up | peak RSS | before | passes | floor | time ÷ floor | active features | edges kept |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in after:
        b = before.get(r["tokens"])
        time_before = f"{b['seconds']:.1f} s" if b else "not run"
        speed_up = f"**{b['seconds'] / r['seconds']:.1f}x**" if b else ""
        rss_before = f"{b['rss_gb']:.2f} GB" if b else ""
        lines.append(
            f"| {r['tokens']} | {r['seconds']:.1f} s | {time_before} | {speed_up} | {r['rss_gb']:.2f} GB | "
            f"{rss_before} | {r['passes']} | {r['floor_s']:.1f} s | **{r['seconds'] / r['floor_s']:.2f}** | "
            f"{r['active']:,} | {r['edges']:,} |"
        )
    lines += ["", "Where the time went (the library's INFO log, per run):", ""]
    lines += [f"- {r['tokens']} tokens: {r['where']} (matmul rate {r['gflops']:.0f} GFLOP/s)" for r in after]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write-docs", action="store_true", help="refresh the section in docs/benchmarks.md")
    parser.add_argument("--before", default="eb54254", help="the commit to compare with")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.one:
        print(json.dumps(one_run(args.one)))
        return
    tree = before_tree(args.before)
    after, before = [], {}
    for n in map(int, args.lengths.split(",")):
        if n in BEFORE_LENGTHS:
            before[n] = spawn(n, tree)
            print(
                f"  before {n}: {before[n]['seconds']:.1f} s, {before[n]['rss_gb']:.2f} GB", file=sys.stderr
            )
        after.append(spawn(n, REPO))
        print(f"  after {n}: {after[-1]['seconds']:.1f} s, {after[-1]['rss_gb']:.2f} GB", file=sys.stderr)
    text = report(after, before, args.before)
    print(text)
    if args.write_docs:
        from _report import write_section

        write_section(text, SECTION, DOCS)


if __name__ == "__main__":
    main()
