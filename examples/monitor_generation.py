"""A safety monitor on the embedded model: watch the base64 feature while the model generates.

    python examples/monitor_generation.py [--out build/analyses/monitor_trace.jsonl]

1. Find the base64 feature (the feature most selective for base64 text over English/code, with its
   largest activation on base64 text; ``find_base64_feature``).
2. **Record**: generate greedily from three prompts with ``sc.monitor`` on that feature. The third
   prompt is steered into base64 (``sc.clamp`` of the feature at its maximum from the last prompt
   token on, the dictionary-learning paper's experiment). The monitor is entered outside the
   clamp, so it sees the model's own (clean) activations: it fires where the steered continuation
   has become base64-like, and not on the other prompts. The per-token trace is written as JSONL.
3. **Stop**: the steered prompt again, with ``on_fire="stop"``: generation halts at the first
   firing and ``Monitor.generate`` returns the tokens so far.
4. **Ablate on fire**: the monitor entered *inside* the clamp sees the steered activation, so it
   fires on the first steered token and, from there on, sets the feature back to 0: the clamp is
   cancelled and the continuation is the unsteered one.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import sae_circuits as sc
from sae_circuits.languages.texts import PROMPTS
from sae_circuits.monitor import monitor
from sae_circuits.recipes.base64_steering import find_base64_feature, looks_like_base64

warnings.filterwarnings("ignore")
GREEDY = dict(max_new_tokens=40, do_sample=False, stop_at_eos=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/analyses/monitor_trace.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()
    model, saes = sc.zoo.load("tiny")

    # 1. the feature to watch, and a threshold above its activations on ordinary text
    sae, feature, rate_in, rate_out, value = find_base64_feature(model, saes)
    threshold = value / 10
    watch = {"base64": (sae, feature)}
    print(f"base64 feature: {sae.cfg.site} #{feature} (fires on {rate_in:.0%} of base64 tokens, "
          f"{rate_out:.1%} of English/code; max {value:.2f}); monitor threshold {threshold:.2f}")  # fmt: skip

    prompts = [PROMPTS[0], PROMPTS[10], PROMPTS[2]]
    steered = len(prompts) - 1
    tokens = [model.to_tokens(p, prepend_bos=False) for p in prompts]

    def pin(i: int) -> list[Any]:  # the steering clamp on prompt i (none on the others)
        n = tokens[i].shape[1]
        return [sc.clamp(sae, feature, value, positions=slice(n - 1, None))] if i == steered else []

    def show(toks: torch.Tensor, n: int) -> str:
        return repr(model.to_string(toks[0, n:])[:48])

    with torch.no_grad(), sc.spliced(model, [sae]):
        # 2. record
        print("\n1) record (monitor outside the clamp: the model's own activations)")
        with monitor(model, watch, threshold) as mon:
            outs = []
            for i, toks in enumerate(tokens):
                with sc.intervene(model, pin(i)):
                    outs.append(mon.generate(toks, **GREEDY))
        for i, (toks, out) in enumerate(zip(tokens, outs)):
            hits = [f for f in mon.firings if f.sequence == i]
            n = toks.shape[1]
            first = (
                f", first at position {hits[0].position} (new token {hits[0].position - n + 1})"
                if hits
                else ""
            )
            tag = "steered  " if i == steered else "unsteered"
            print(f"  {tag} prompt {i}: {len(hits):2d} firings{first}; base64-like: "
                  f"{looks_like_base64(model.to_string(out[0, n:]))}; {show(out, n)}")  # fmt: skip
        path = mon.save(args.out)
        print(f"  trace: {len(mon.trace())} tokens -> {path}")

        # 3. stop at the first firing
        toks, n = tokens[steered], tokens[steered].shape[1]
        with monitor(model, watch, threshold, on_fire="stop") as mon, sc.intervene(model, pin(steered)):
            stopped = mon.generate(toks, **GREEDY)
        assert mon.stopped is not None
        print(f"\n2) stop: halted at position {mon.stopped.position} (activation "
              f"{mon.stopped.activation:.2f}) after {stopped.shape[1] - n} of {GREEDY['max_new_tokens']} "
              f"new tokens: {show(stopped, n)}")  # fmt: skip

        # 4. ablate on fire, inside the clamp: the steering is caught and cancelled
        with sc.intervene(model, pin(steered)), monitor(model, watch, threshold, on_fire="ablate") as mon:
            cancelled = mon.generate(toks, **GREEDY)
        plain = model.generate(toks, verbose=False, **GREEDY)
        first = mon.firings[0]
        print(f"\n3) ablate on fire: fired at position {first.position} (activation {first.activation:.2f}, "
              f"the clamp); base64-like: {looks_like_base64(model.to_string(cancelled[0, n:]))}; "
              f"same as unsteered: {torch.equal(cancelled, plain)}; {show(cancelled, n)}")  # fmt: skip
    print(f"\ndone in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
