"""Interpretability scores without an LLM, on the embedded model: trained dictionaries against random
ones of the same shape (``sc.random_like``), for the layer-1 and layer-2 residual SAEs.

    python examples/explanation_scores.py [--features 300] [--smoke] [--out-dir docs/figures]

1. Token rows of 64 tokens from every source of the offline corpus (code, base64, markup, kvlog):
   a training split (``offline_mix`` seed 11) and a held-out one (seed 12; the code files, which
   do not depend on the seed, in reverse order, so no row is in both).
2. For each dictionary, ``--features`` live features drawn with a seed; each gets an explanation
   from the training split (the proposed token set, or the better of a base64 regex and every
   markup / kvlog automaton state), scored on the held-out split (correlation, F1); and an output
   explanation (next tokens) scored against its direct logit effect (AUROC; 0.5 is chance).
3. Figures ``explanations.svg`` (held-out correlation), ``explanations_f1.svg`` and
   ``explanations_logit.svg`` (trained vs random, both layers), and a markdown table on stdout.
4. A few explanations of good features: the base64 feature (the recipe's
   ``find_base64_feature``) and the markup-state features, scored with their predicates.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import sae_circuits as sc
from sae_circuits._files import atomic_write_text
from sae_circuits.analysis._stats import labelled_rows
from sae_circuits.analysis._svg import histogram
from sae_circuits.analysis.explain import (
    ExplanationScores,
    explain_feature,
    explanation_scores,
    score_explanation,
)
from sae_circuits.analysis.predicates import AutomatonState, Predicate, Regex, TokenSet
from sae_circuits.languages import automata, offline_mix
from sae_circuits.recipes.base64_steering import find_base64_feature

ROOT = Path(__file__).resolve().parents[1]
BASE64 = Regex(r"[A-Za-z0-9+/]{16,}={0,2}", name="base64 run")


def splits(model, rows_per_source: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1: ``(train, held-out)`` token rows."""
    sizes = {"code_bytes": 1_500_000, "base64_docs": 400, "automaton_docs": 600}
    train_mix, test_mix = offline_mix(seed=11, **sizes), offline_mix(seed=12, **sizes)
    test_mix["code"] = test_mix["code"][::-1]
    train = labelled_rows(model, train_mix, 64, rows_per_source).tokens
    test = labelled_rows(model, test_mix, 64, rows_per_source).tokens
    assert not set(map(tuple, train.tolist())) & set(map(tuple, test.tolist())), "a row is in both splits"
    return train, test


def candidates() -> list[Predicate]:
    """The predicates a feature's proposed token set competes with."""
    states = [
        AutomatonState(name, [s]) for name in ("markup", "kvlog") for s in automata.AUTOMATA[name].states
    ]
    return [BASE64, *states]


def table(results: dict[str, ExplanationScores], seconds: dict[str, float]) -> str:
    """The markdown table of step 3."""
    lines = [
        "| dictionary | features | correlation median / mean | corr > 0.5 | F1 median / mean | F1 > 0.5 "
        "| logit AUROC median | AUROC > 0.5 | chosen: token set / regex / state | wall (1 thread) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        s = r.summary()
        kinds = [type(e).__name__ for e in r.explanations]
        chosen = f"{kinds.count('TokenSet')} / {kinds.count('Regex')} / {kinds.count('AutomatonState')}"
        corr, f1, auroc = s["correlation"], s["f1"], s["logit_auroc"]
        lines.append(
            f"| {name} | {len(r.features)} | {corr['median']:.3f} / {corr['mean']:.3f} "
            f"| {corr['fraction_above_half']:.2f} | {f1['median']:.3f} / {f1['mean']:.3f} "
            f"| {f1['fraction_above_half']:.2f} | {auroc['median']:.3f} "
            f"| {auroc['fraction_above_half']:.2f} | {chosen} | {seconds[name]:.1f} s |"
        )
    return "\n".join(lines)


def figures(results: dict[str, ExplanationScores], out_dir: Path) -> list[Path]:
    """Step 3: one histogram per score, every dictionary a series."""
    written = []
    for suffix, title, get in (
        (
            "",
            "held-out correlation of the explanation with the activation",
            lambda r: r.activation.correlation,
        ),
        ("_f1", "held-out F1 of the explanation against firing", lambda r: r.activation.f1),
        ("_logit", "AUROC of the output tokens under the logit effect", lambda r: r.logit.auroc),
    ):
        series = {}
        for name, r in results.items():
            x = get(r)
            series[name] = x[~torch.isnan(x)].tolist()
        path = out_dir / f"explanations{suffix}.svg"
        atomic_write_text(
            path, histogram(series, title=title, x_label=title.split(" of ")[0], lo=0.0, hi=1.0)
        )
        written.append(path)
    return written


def examples(model, sae, train, test, result: ExplanationScores) -> None:
    """Step 4."""
    _, feature, rate_in, rate_out, _ = find_base64_feature(model, [sae])
    e = explain_feature(model, sae, feature, train, test, candidates=[BASE64])
    regex = score_explanation(
        model, sae, feature, BASE64, test, output=TokenSet(e.output) if e.output else None
    )
    print(f"\nbase64 feature {feature} (fires on {rate_in:.0%} of base64 tokens, {rate_out:.0%} of others):")
    print(f"  chosen: {e.predicate.description}:")
    print(f"    held-out correlation {e.score.correlation:.3f}, F1 {e.score.f1:.3f}")
    print(f"  regex {BASE64.pattern!r}: correlation {regex.correlation:.3f}, F1 {regex.f1:.3f}")
    print(f"  output tokens {e.output}: logit AUROC {e.score.logit_auroc:.3f}")
    states = [i for i, p in enumerate(result.explanations) if isinstance(p, AutomatonState)]
    best = sorted(states, key=lambda i: -float(result.activation.correlation[i]))[:3]
    order = result.activation.correlation.argsort(descending=True)
    tokens = [int(i) for i in order if isinstance(result.explanations[int(i)], TokenSet)][:3]
    for i in best + tokens:
        f, p, corr = int(result.features[i]), result.explanations[i], float(result.activation.correlation[i])
        print(
            f"feature {f}: {p.description}: held-out correlation {corr:.3f}, "
            f"F1 {float(result.activation.f1[i]):.3f}; output {result.outputs[i]} "
            f"(AUROC {float(result.logit.auroc[i]):.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=300, help="live features per dictionary")
    parser.add_argument("--rows", type=int, default=96, help="rows of 64 tokens per source and split")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--smoke", action="store_true", help="a few features on a few rows (the tests' run)")
    args = parser.parse_args()
    if args.smoke:
        args.features, args.rows = 20, 8
    torch.set_num_threads(1)
    model, saes = sc.zoo.load("tiny")
    start = time.perf_counter()
    train, test = splits(model, args.rows)
    print(f"{train.numel()} training and {test.numel()} held-out tokens, {time.perf_counter() - start:.1f} s")
    results: dict[str, ExplanationScores] = {}
    seconds: dict[str, float] = {}
    for layer in (1, 2):
        sae = saes[layer]
        for kind, dictionary in (("trained", sae), ("random", sc.random_like(sae, model, train, seed=0))):
            name = f"layer {layer} {kind}"
            t = time.perf_counter()
            results[name] = explanation_scores(
                model, dictionary, train, test, features=args.features, candidates=candidates(), seed=0
            )
            seconds[name] = time.perf_counter() - t
    print(table(results, seconds))
    for path in figures(results, args.out_dir):
        print(f"wrote {path}")
    examples(model, saes[1], train, test, results["layer 1 trained"])


if __name__ == "__main__":
    main()
