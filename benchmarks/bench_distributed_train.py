"""Benchmark: training from an activation cache, and data-parallel training on 2 gloo ranks.

Why: ``sae_circuits.train.activation_cache`` claims that a sweep pays for the model's forward
once, and ``sae_circuits.train.distributed`` that 2 ranks with half a batch each train the SAE
that one process trains with the whole batch. This script measures both, and what 2 ranks are
worth in time on this machine.

What (CPU, float32):

* Model and data: the embedded zoo model (``tiny``: 4 layers, d_model 128) over rows of 128 tokens
  of Python standard-library source; hook ``blocks.3.hook_resid_post`` (the last block, so the
  forward is the whole model's); position 0 dropped. TopK SAE, d_sae 2048, k 32, batch 2048,
  ``--steps`` steps (default 40), buffer 16384 tokens, 1 torch thread per process.
* Cache vs recompute (one process): ``cache_activations`` once (timed), then the same SAE trained
  by ``train_sae`` (the model's forward fills the buffer during training) and by
  ``train_from_cache`` (reads the shards). Wall time of each call.
* 1 vs 2 ranks: ``torchrun --standalone --nproc_per_node=N`` runs this script as a worker that
  calls ``train_distributed`` on the cache; each rank times the call between two barriers and
  rank 0 reports it. Configurations: 1 rank x 1 thread, 1 rank x 2 threads, 2 gloo ranks x 1
  thread (the same 2 cores spent two ways). Each is run ``--repeats`` times; the fastest counts.
* Equivalence: the largest absolute difference, per saved tensor, between the SAE of 2 ranks and
  that of 1 rank (TopK, and a BatchTopK transcoder whose batch-wide selection spans the ranks).
  Two yardsticks: the 1-rank torchrun SAE against ``train_from_cache`` in this process (same
  arithmetic: expect 0), and a 1-process SAE trained on activations multiplied by ``1 + 2^-22``
  (a rounding-sized change of the input): how far rounding alone moves this training run.

Run ``python benchmarks/bench_distributed_train.py``: prints a markdown table (docs/scale.md
quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

from _report import machine, versions

HOOK = "blocks.3.hook_resid_post"
TRANSCODER = ("blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out")


def _config(args: argparse.Namespace, architecture: str = "topk") -> dict:
    return dict(architecture=architecture, d_sae=2048, k=32, batch_size=2048, total_tokens=2048 * args.steps,
                buffer_tokens=16384, warmup_steps=10, lr=1e-3, geometric_median_samples=4096, seed=0)  # fmt: skip


def _tokens(model, n_tokens: int) -> torch.Tensor:
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    ids: list[int] = []
    for file in files:
        ids += model.tokenizer(file.read_text(errors="ignore"))["input_ids"]
        if len(ids) >= n_tokens + 128:
            break
    n = len(ids) // 128 * 128
    return torch.tensor(ids[:n]).view(-1, 128)


def worker(args: argparse.Namespace) -> None:
    """One rank under torchrun: train from the cache, time it between barriers, save (rank 0)."""
    import torch.distributed as dist

    from sae_circuits.train import DictionarySpec, TrainConfig, train_distributed

    torch.set_num_threads(args.threads)
    world = int(os.environ["WORLD_SIZE"])
    if world > 1:
        dist.init_process_group("gloo")
    spec = DictionarySpec(*TRANSCODER) if args.architecture == "batchtopk" else DictionarySpec(HOOK)
    config = TrainConfig(**_config(args, args.architecture), progress=False)
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    train_distributed(args.cache, [spec], config, args.out)
    seconds = time.perf_counter() - start
    if int(os.environ["RANK"]) == 0:
        (Path(args.out) / "seconds.json").write_text(json.dumps(seconds))
    if world > 1:
        dist.destroy_process_group()


def _launch(
    args: argparse.Namespace, cache: Path, out: Path, ranks: int, threads: int, architecture: str
) -> float:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               __file__, "--worker", "--cache", str(cache), "--out", str(out), "--threads", str(threads),
               "--architecture", architecture, "--steps", str(args.steps)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode:
        raise RuntimeError(run.stderr[-4000:])
    return float(json.loads((out / "seconds.json").read_text()))


def _max_differences(a: Path, b: Path) -> dict[str, float]:
    import sae_circuits as sc

    one, two = sc.SAE.load(a), sc.SAE.load(b)
    return {name: float((t - two.state_dict()[name]).abs().max()) for name, t in one.state_dict().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per training (default 40)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per rank/thread configuration (default 3)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--architecture", default="topk", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import sae_circuits as sc
    from sae_circuits.train import (
        CachedActivations,
        DictionarySpec,
        TrainConfig,
        cache_activations,
        train_from_cache,
        train_sae,
    )

    torch.set_num_threads(1)
    model, _ = sc.zoo.load("tiny")
    config = TrainConfig(**_config(args), progress=False)
    tokens = _tokens(model, config.total_tokens + config.buffer_tokens)
    root = Path(tempfile.mkdtemp(prefix="bench_ddp_"))
    cache = root / "acts"
    print(f"caching {tokens.numel():,} tokens ...", file=sys.stderr)
    start = time.perf_counter()
    manifest = cache_activations(model, tokens, [HOOK, *TRANSCODER], cache, progress=False)
    t_cache = time.perf_counter() - start
    start = time.perf_counter()
    train_sae(model, HOOK, tokens, config)
    t_forward = time.perf_counter() - start
    start = time.perf_counter()
    [in_process] = train_from_cache(cache, [DictionarySpec(HOOK)], config)
    t_cached = time.perf_counter() - start
    in_process.save(root / "in_process")
    read = CachedActivations._read
    CachedActivations._read = lambda self, shard: {  # type: ignore[method-assign]
        h: t * (1 + 2**-22) for h, t in read(self, shard).items()
    }
    train_from_cache(cache, [DictionarySpec(HOOK)], config)[0].save(root / "perturbed")
    CachedActivations._read = read  # type: ignore[method-assign]

    timings: dict[tuple[str, int, int], float] = {}
    runs = [("topk", 1, 1), ("topk", 1, 2), ("topk", 2, 1), ("batchtopk", 1, 1), ("batchtopk", 2, 1)]
    for repeat in range(args.repeats):
        for architecture, ranks, threads in runs:
            print(
                f"  {architecture}: {ranks} rank(s) x {threads} thread(s), run {repeat + 1}", file=sys.stderr
            )
            out = root / f"{architecture}_{ranks}x{threads}"
            seconds = _launch(args, cache, out, ranks, threads, architecture)
            key = (architecture, ranks, threads)
            timings[key] = min(seconds, timings.get(key, float("inf")))
    diff_topk = _max_differences(root / "topk_1x1" / HOOK, root / "topk_2x1" / HOOK)
    diff_btk = _max_differences(
        root / "batchtopk_1x1" / TRANSCODER[1], root / "batchtopk_2x1" / TRANSCODER[1]
    )
    diff_same = _max_differences(root / "topk_1x1" / HOOK, root / "in_process")
    diff_round = _max_differences(root / "in_process", root / "perturbed")

    n_tokens = config.n_steps * config.batch_size
    lines = [
        f"Machine: {machine()}; {versions(('torch', 'transformer-lens'))}.",
        f"Model: embedded `tiny` (d_model 128, 4 layers), hook `{HOOK}`; {tokens.numel():,} tokens cached "
        f"({manifest.n_tokens:,} activations, {len(manifest.shards)} shards, 3 hooks). TopK SAE d_sae 2048, "
        f"k 32, batch 2048, {config.n_steps} steps ({n_tokens:,} training tokens).",
        "",
        "| what | wall time (s) |",
        "|---|---:|",
        f"| `cache_activations` (3 hooks, once) | {t_cache:.1f} |",
        f"| `train_sae` (model forward during training), 1 thread | {t_forward:.1f} |",
        f"| `train_from_cache`, 1 thread | {t_cached:.1f} |",
        "",
        "| training (torchrun, fastest of runs) | wall time (s) | vs 1 rank x 1 thread |",
        "|---|---:|---:|",
    ]
    for (architecture, ranks, threads), seconds in timings.items():
        ref = timings[(architecture, 1, 1)]
        lines.append(f"| {architecture}: {ranks} rank(s) x {threads} thread(s) | {seconds:.2f} | "
                     f"{ref / seconds:.2f}x |")  # fmt: skip
    lines += [
        "",
        "Max abs difference, 2 ranks vs 1 rank (TopK SAE): "
        + ", ".join(f"{k} {v:.1e}" for k, v in diff_topk.items()),
        "Max abs difference, 2 ranks vs 1 rank (BatchTopK transcoder): "
        + ", ".join(f"{k} {v:.1e}" for k, v in diff_btk.items()),
        "Max abs difference, 1 rank (torchrun) vs train_from_cache in-process (TopK SAE): "
        + ", ".join(f"{k} {v:.1e}" for k, v in diff_same.items()),
        "Max abs difference, in-process vs inputs x (1 + 2^-22) (TopK SAE; rounding alone): "
        + ", ".join(f"{k} {v:.1e}" for k, v in diff_round.items()),
        f"Training from the cache saves {t_forward - t_cached:.1f} s per run; the cache pays for itself "
        f"after {t_cache / max(t_forward - t_cached, 1e-9):.1f} runs (its 3 hooks serve 2 dictionaries).",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
