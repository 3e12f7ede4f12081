"""Benchmark: automaton extraction — time, scores against the true automata, a random baseline.

What (``torch.set_num_threads(2)``; the embedded model with its 4 residual SAEs spliced):

1. Time to extract the markup automaton from 25, 50, 100 and 200 contexts of 128 symbols, with
   token transitions only and with attention transitions on 8 contexts (the default).
2. Scores of the 200-context automata against the true markup and kvlog automata (mean best-match
   state F1, transition ROC AUC), beside the same pipeline on randomly initialised JumpReLU SAEs of
   equal width at the same sites (thresholds set for ~20 active features per token).
3. Validation of the 20 heaviest markup transitions (pin the source, count the destination's
   next-step firing): how many are confirmed, and the mean effect.

Run ``python benchmarks/bench_automata.py --write-docs`` to refresh docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

from _report import machine, versions, write_section

import sae_circuits as sc
from sae_circuits.cli import corpus_texts
from sae_circuits.zoo import automata

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Automata (issue: automata)"
COMMAND = "python benchmarks/bench_automata.py --write-docs"
SIZES = (25, 50, 100, 200)
LENGTH = 128


def random_saes(model, like: list[sc.SAE], texts: list[str]) -> list[sc.SAE]:
    """Random JumpReLU SAEs shaped like ``like``, thresholds set for ~20 active features per token."""
    saes = []
    for k, sae in enumerate(like):
        cfg = sc.SAEConfig("jumprelu", d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, hook_name=sae.cfg.hook_name)
        torch.manual_seed(100 + k)
        random = sc.SAE(cfg)
        random.reset_parameters()
        saes.append(random)
    rows = torch.cat([model.to_tokens(t, prepend_bos=False)[0] for t in texts[:20]])
    with torch.no_grad():
        _, cache = model.run_with_cache(
            rows[None, :512], names_filter=lambda n: n in {s.cfg.hook_name for s in saes}
        )
        for sae in saes:
            pre = sae._pre_acts(cache[sae.cfg.hook_name][0])[0]
            sae.threshold.copy_(pre.quantile(1 - 20 / sae.cfg.d_sae, dim=0).clamp_min(1e-3))
    return saes


def extract(model, texts, attention: int):
    start = time.perf_counter()
    fsa = sc.automaton(model, texts, attention_contexts=attention, prepend_bos=False, progress=False)
    return fsa, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write-docs", action="store_true", help="refresh the section in docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = sc.zoo.load_model("tiny")
    trained = sc.zoo.load_saes("tiny", kind="resid")

    timings = []
    texts, _ = corpus_texts("markup", max(SIZES), LENGTH)
    with sc.spliced(model, trained):
        extract(model, texts[:10], 1)  # warm-up
        for n in SIZES:
            _, token_only = extract(model, texts[:n], 0)
            _, with_attention = extract(model, texts[:n], 8)
            timings.append((n, token_only, with_attention))
            print(f"{n} contexts: {token_only:.1f} s / {with_attention:.1f} s", file=sys.stderr)

    scores = {}
    for name in ("markup", "kvlog"):
        texts, labels = corpus_texts(name, 200, LENGTH)
        for label, saes in (("trained", trained), ("random", random_saes(model, trained, texts))):
            with sc.spliced(model, saes):
                fsa, _ = extract(model, texts, 8)
                result = sc.score_automaton(fsa, labels, automata.AUTOMATA[name])
                token = sc.score_automaton(fsa, labels, automata.AUTOMATA[name], mechanism="token")
                attention = sc.score_automaton(fsa, labels, automata.AUTOMATA[name], mechanism="attention")
                scores[name, label] = (result, token, attention)
                if name == "markup" and label == "trained":
                    fsa.validate(model, top=20, progress=False)
                    checked = [t for t in fsa.transitions if t.effect is not None]
                    validation = (
                        sum(bool(t.confirmed) for t in checked),
                        len(checked),
                        statistics.mean(t.effect for t in checked),
                    )
            print(
                f"{name} {label}: F1 {result.mean_f1:.3f}, AUROC {result.transition_auroc:.3f}",
                file=sys.stderr,
            )

    lines = [
        SECTION,
        "",
        f"Reproduce: `{COMMAND}` ({datetime.date.today()}; {machine()}; {versions(('torch', 'transformer-lens'))}).",
        "",
        f"**Extraction time** — the markup automaton from contexts of {LENGTH} symbols, embedded model with its "
        "4 residual SAEs, 256 single-feature states (target: 200 contexts ≤ 60 s):",
        "",
        "| contexts | token transitions only | + attention transitions (8 contexts) |",
        "|---|---|---|",
        *[f"| {n} | {a:.1f} s | {b:.1f} s |" for n, a, b in timings],
        "",
        "**Against the true automata** (200 contexts; mean over true states of the best-matching state's F1; "
        "ROC AUC of the matched states' transition weights against the true transition table, self-pairs included):",
        "",
        "| automaton | SAEs | mean state F1 | transition AUROC (both) | token only | attention only |",
        "|---|---|---|---|---|---|",
    ]
    for (name, label), (both, token, attention) in scores.items():
        lines.append(
            f"| {name} | {label} | {both.mean_f1:.3f} | {both.transition_auroc:.3f} | {token.transition_auroc:.3f} | "
            f"{attention.transition_auroc:.3f} |"
        )
    confirmed, checked, effect = validation
    lines += [
        "",
        f"Targets for markup: F1 ≥ 0.9, AUROC ≥ 0.95. **Validation** of the 20 heaviest markup transitions (source "
        f"pinned at its largest activation at the last token of 20 corpus prefixes that end where it is off; the "
        f"destination's expected firing on the next token, over the model's top-5 tokens): "
        f"{confirmed}/{checked} confirmed (one-sided paired test, p < 0.05), mean effect on the destination's firing rate {effect:+.3f}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write_docs:
        write_section(text, SECTION, DOCS)


if __name__ == "__main__":
    main()
