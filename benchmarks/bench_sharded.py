"""Benchmark: many prompts and a corpus across ranks (sae_circuits.distributed), 1 rank against 2.

What (the embedded model; each configuration a fresh ``torchrun --standalone`` launch, so every
rank runs with ``OMP_NUM_THREADS=1``; plus one plain process with torch's default threads):

1. Graphs: ``attribute_prompts`` over ``--prompts`` code prompts of ``--tokens`` tokens (the 4
   transcoders spliced, ``max_feature_nodes=256``, ``batch_size=32``, unpruned), timed from a
   barrier after the model is loaded and one untimed warm-up attribution to the end of the index.
2. Automaton: ``sharded_automaton`` over ``--texts`` markup texts of 64 symbols (the 4 residual
   SAEs, ``max_states=32``, ``attention_contexts=8``, ``effect_contexts=16``), timed the same way.
3. The fastest of ``--repeat`` launches (default 3) of each configuration.
4. Equality: every file of the 1-rank and the 2-rank runs, and the automata's JSON, byte for byte.

Run ``python benchmarks/bench_sharded.py`` (about seven minutes on 2 shared cores); it prints a Markdown
table for docs/scale.md ("Many prompts across ranks").
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

warnings.filterwarnings("ignore")

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve()


def _prompts(model, n: int, tokens: int) -> list[str]:
    from sae_circuits.languages import probe_texts

    _, code = probe_texts(seed=7)
    chunks = [c for c in code if len(model.tokenizer(c)["input_ids"]) >= tokens]
    return [model.tokenizer.decode(model.tokenizer(c)["input_ids"][:tokens]) for c in chunks[:n]]


def worker(out: Path, n_prompts: int, n_tokens: int, n_texts: int) -> None:
    """One rank: the graphs, then the automaton; rank 0 writes the timings."""
    import sae_circuits as sc
    from sae_circuits.distributed import attribute_prompts, process_group_from_env, sharded_automaton
    from sae_circuits.languages import corpus_texts

    with process_group_from_env() as where:
        model = sc.zoo.load_model("tiny")
        prompts = _prompts(model, n_prompts, n_tokens)
        texts = corpus_texts("markup", n_texts, 64, seed=1)[0]

        def now() -> float:
            if where.group:
                dist.barrier()
            return time.perf_counter()

        with sc.spliced(model, sc.zoo.load_saes("tiny", kind="transcoder")):
            sc.attribute(model, prompts[0], max_feature_nodes=8, progress=False)  # warm-up, untimed
            start = now()
            attribute_prompts(model, prompts, out / "graphs", max_feature_nodes=256, batch_size=32)
            graphs_s = now() - start
        with sc.spliced(model, sc.zoo.load_saes("tiny", kind="resid")):
            start = now()
            fsa = sharded_automaton(
                model, texts, max_states=32, attention_contexts=8, effect_contexts=16, progress=False
            )
            automaton_s = now() - start
        if where.rank == 0:
            fsa.save(out / "fsa.json")
            timings = {"graphs_s": graphs_s, "automaton_s": automaton_s, "threads": torch.get_num_threads()}
            (out / "timings.json").write_text(json.dumps(timings))


def _launch(out: Path, ranks: int | None, args: argparse.Namespace) -> dict[str, float]:
    """``ranks`` processes under torchrun, or (None) one plain process with torch's default threads."""
    work = ["--worker", str(out), "--prompts", str(args.prompts), "--tokens", str(args.tokens),
            "--texts", str(args.texts)]  # fmt: skip
    if ranks is None:
        command = [sys.executable, str(HERE), *work]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*torchrun, f"--nproc_per_node={ranks}", str(HERE), *work]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun sets it only for several ranks
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    timings = json.loads((out / "timings.json").read_text())
    return {**timings, "wall_s": time.perf_counter() - start}


def _same(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in (a / "graphs").iterdir())
    if names != sorted(p.name for p in (b / "graphs").iterdir()):
        return False
    files = [Path("graphs", n) for n in names] + [Path("fsa.json")]
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker), args.prompts, args.tokens, args.texts)
        return
    sys.path.insert(0, str(HERE.parent))
    from _report import machine, versions

    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "1 process, default threads": (Path(tmp, "plain"), None),
            "torchrun, 1 rank": (Path(tmp, "r1"), 1),
            "torchrun, 2 ranks": (Path(tmp, "r2"), 2),
        }
        results = {}
        for repeat in range(args.repeat):  # the fastest of the repeats: the machine may be shared
            for name, (out, ranks) in runs.items():
                found = _launch(out / str(repeat), ranks, args)
                best = results.setdefault(name, found)
                results[name] = {k: min(v, best[k]) for k, v in found.items()}
        runs = {name: (out / "0", ranks) for name, (out, ranks) in runs.items()}
        same = _same(runs["torchrun, 1 rank"][0], runs["torchrun, 2 ranks"][0])
        same_plain = _same(runs["1 process, default threads"][0], runs["torchrun, 1 rank"][0])
    print(f"{machine()}; {versions(('torch', 'transformer-lens'))}")
    texts = f"automaton over {args.texts} markup texts of 64 symbols"
    print(f"{args.prompts} prompts of {args.tokens} tokens; {texts}\n")
    print("| run | threads per process | graphs (s) | automaton (s) | whole launch (s) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['threads']} | {r['graphs_s']:.1f} | {r['automaton_s']:.1f} | {r['wall_s']:.1f} |"
        )
    print(f"\n1 rank and 2 ranks byte-identical (graphs, index, manifest, automaton): {same}")
    print(f"1 process with default threads byte-identical to 1 rank with 1 thread: {same_plain}")


if __name__ == "__main__":
    main()
