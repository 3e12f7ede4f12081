"""Benchmark: what a feature monitor costs during generation.

Why: ``sc.monitor`` is meant to stay on while a model generates (the safety-monitor use), so its
cost per decode step matters. Per step and site it selects the watched columns of the feature
activations, keeps them for the trace, and (for ``"stop"``/callables) checks for firings.

What (one process, ``torch.set_num_threads(1)``, ``torch.no_grad()``): greedy ``model.generate`` on
the embedded model with its layer-1 residual SAE spliced, from one prompt, with the KV cache on and
off. Variants, timed in interleaved repeats after a warm-up: no monitor (the baseline), a monitor
on 4 features (``"record"``), on the same 4 with ``on_fire="stop"`` (never firing: threshold high),
with ``on_fire="ablate"``, and on all features of the site. Reported: tokens/s (median over
repeats) and the median over repeats of the ratio monitored / baseline tokens/s.

    python benchmarks/bench_monitor.py [--repeats 7] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

warnings.filterwarnings("ignore")

from _report import machine, versions

import sae_circuits as sc
from sae_circuits.languages.texts import PROMPTS
from sae_circuits.monitor import monitor

SITE = "blocks.1.hook_resid_post"
FEATURES = [21, 100, 682, 1603]  # fire on the embedded model's markup/code tokens


def variants(model: Any, d_sae: int) -> dict[str, Callable[[], AbstractContextManager[Any]]]:
    return {
        "no monitor": nullcontext,
        "4 features, record": lambda: monitor(model, [(SITE, FEATURES)], 0.5),
        "4 features, stop (never fires)": lambda: monitor(model, [(SITE, FEATURES)], 1e6, on_fire="stop"),
        "4 features, ablate on fire": lambda: monitor(model, [(SITE, FEATURES)], 0.5, on_fire="ablate"),
        f"all {d_sae} features, record": lambda: monitor(model, [(SITE, list(range(d_sae)))], 0.5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, saes = sc.zoo.load("tiny")
    sae = saes[1]
    prompt = model.to_tokens(PROMPTS[11], prepend_bos=False)
    greedy = dict(max_new_tokens=args.new_tokens, do_sample=False, stop_at_eos=False, verbose=False)
    table = variants(model, sae.cfg.d_sae)
    seconds: dict[tuple[str, bool], list[float]] = {(name, c): [] for name in table for c in (True, False)}
    with torch.no_grad(), sc.spliced(model, [sae]):
        for repeat in range(args.repeats + 1):  # repeat 0 warms up
            for cache in (True, False):
                for name, make in table.items():
                    with make():
                        start = time.perf_counter()
                        model.generate(prompt, use_past_kv_cache=cache, **greedy)
                        elapsed = time.perf_counter() - start
                    if repeat:
                        seconds[name, cache].append(elapsed)

    print("Feature monitor overhead during greedy generation (`python benchmarks/bench_monitor.py`)\n")
    print(f"Embedded model, SAE at `{SITE}` spliced; prompt of {prompt.shape[1]} tokens, "
          f"{args.new_tokens} new tokens; median of {args.repeats} interleaved repeats.\n")  # fmt: skip
    print("| KV cache | monitor | tokens/s | ratio to no monitor (median) |")
    print("|---|---|---:|---:|")
    for cache in (True, False):
        base = seconds["no monitor", cache]
        for name in table:
            times = seconds[name, cache]
            rate = args.new_tokens / statistics.median(times)
            ratio = statistics.median(b / t for b, t in zip(base, times))
            print(f"| {'on' if cache else 'off'} | {name} | {rate:,.0f} | {ratio:.3f} |")
    print(f"\n{machine()}; {versions(('torch', 'transformer-lens'))}")


if __name__ == "__main__":
    main()
