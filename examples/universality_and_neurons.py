"""Universality across two models, and features against neurons, on the embedded model.

    python examples/universality_and_neurons.py --train-second   # first run: ~25 + ~15 min, then cached
    python examples/universality_and_neurons.py [--second build/analyses/model-seed1]
        [--cache build/analyses/seed1-saes] [--figures docs/figures] [--rows 48] [--train-tokens N]

Runs offline, on one thread:

1. Held-out tokens: ``offline_mix(seed=7)`` (a seed neither model was trained on) for base64,
   markup and kvlog; for code, standard-library files beyond the first 6 MB that the second model
   was trained on. ``--rows`` rows of 128 tokens per source.
2. The second model: the zoo architecture trained with seed 1 on ``offline_mix(seed=1)`` for 1,000
   steps of 8 x 512 tokens (``--train-second``; about 23 min on one thread, resumable from its
   checkpoint), and its residual SAEs at the zoo SAEs' sites, trained here with the zoo recipe
   (``sae_circuits.recipes.dictionaries.FULL``: batchtopk, 16 x d_model, k=24, 2.46M tokens of
   ``offline_mix(seed=1)``) and cached under ``--cache/tokens-N`` (a rerun loads them). Without the
   second model, the universality part is skipped with a message.
3. Universality: :func:`sae_circuits.analysis.universality.universality`, zoo SAEs (A) against
   the second model's (B), with the neuron and random-dictionary baselines;
   ``universality.svg``.
4. Features vs neurons on the zoo model, for five properties (base64 tokens, markup / kvlog /
   code source, markup state ATTR_VALUE): per property the best feature over all layers, its
   best-correlated neuron at that layer and the best neuron over all layers; ``neurons.svg``.
5. Markdown tables of the figures and of each step's wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

import sae_circuits as sc
from sae_circuits._files import atomic_write_text
from sae_circuits.analysis._stats import labelled_rows
from sae_circuits.analysis._svg import bars, histogram
from sae_circuits.analysis.neurons import features_vs_neurons, token_properties
from sae_circuits.analysis.universality import universality
from sae_circuits.languages import offline_mix
from sae_circuits.languages.corpus import code_documents

ROOT = Path(__file__).resolve().parents[1]
PROPERTIES = ["base64", "source=markup", "source=kvlog", "source=code", "markup:ATTR_VALUE"]
TIMES: dict[str, float] = {}


class step:
    """Time a step of the script (wall clock, into TIMES)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.start = time.perf_counter()
        print(f"... {self.name}", flush=True)

    def __exit__(self, *exc: object) -> None:
        TIMES[self.name] = time.perf_counter() - self.start


def held_out_texts(trained_code_bytes: int = 6_000_000) -> dict[str, list[str]]:
    """Step 1: offline_mix(seed=7), its code replaced by files the second model never saw."""
    mix = offline_mix(seed=7, code_bytes=100_000, base64_docs=300, automaton_docs=400)
    seen = {d.text for d in code_documents(trained_code_bytes)}
    mix["code"] = [d.text for d in code_documents(trained_code_bytes + 400_000) if d.text not in seen]
    return mix


def second_saes(model_b, sites: list[str], cache: Path, total_tokens: int) -> list[sc.SAE]:
    """Step 2: the second model's SAEs at ``sites``, trained with the zoo recipe or loaded."""
    from sae_circuits.recipes.dictionaries import FULL
    from sae_circuits.train import DictionarySpec, train_dictionaries

    folders = [cache / f"tokens-{total_tokens}" / site for site in sites]
    if all((f / "cfg.json").is_file() for f in folders):
        return [sc.SAE.load(f) for f in folders]
    config = replace(FULL, total_tokens=total_tokens, progress=False)
    rows = labelled_rows(model_b, offline_mix(seed=1), 128, -(-total_tokens // (128 * 4)))
    print(
        f"    training {len(sites)} SAEs on {rows.tokens.numel():,} tokens "
        f"({dict(zip(rows.names, rows.source.bincount().tolist()))} rows)"
    )
    saes = train_dictionaries(model_b, [DictionarySpec(site) for site in sites], rows.tokens, config)
    for sae, folder in zip(saes, folders):
        sae.save(folder)
    return saes


def train_second(folder: Path) -> None:
    """Step 2's model: the zoo architecture, seed 1, on the offline mix (seed 1), resumable."""
    from sae_circuits.recipes.train_lm import LMTrainConfig, train_on_texts

    cfg = LMTrainConfig(seed=1, steps=1000, warmup_steps=100, eval_every=250)
    checkpoint = folder.with_name(folder.name + ".ckpt")
    run = train_on_texts(offline_mix(seed=1), cfg=cfg, out_dir=folder, checkpoint=checkpoint, log=print)
    print(f"    second model: validation loss {run.stats['val_loss']}")


def universality_part(args, model_a, saes_a, tokens) -> dict | None:
    from sae_circuits.zoo.loader import load_hf_gpt2

    if args.train_second and not (args.second / "config.json").is_file():
        with step("train the second model"):
            train_second(args.second)
    if not (args.second / "config.json").is_file():
        print(f"\nSkipping universality: no second model in {args.second} (add --train-second to train it).")
        return None
    with step("load the second model"):
        model_b = load_hf_gpt2(args.second, "hooked")
    with step("train or load the second model's SAEs"):
        saes_b = second_saes(model_b, [s.cfg.hook_name for s in saes_a], args.cache, args.train_tokens)
    with step("universality (4 sites, baselines)"):
        u = universality(model_a, saes_a, model_b, saes_b, tokens)
    lines = [
        f"Universality on {u.n_tokens:,} held-out tokens: best-match Pearson correlation of every live unit "
        "of A (zoo model) among B's (seed 1):",
        "",
        "| site | compared | live (dead) | median | mean | > 0.5 | > 0.7 |",
        "|---|---|---|---|---|---|---|",
    ]
    pooled: dict[str, list[float]] = {
        "features A in B": [],
        "neurons A in B": [],
        "A in random dictionary": [],
    }
    for site in u.sites:
        for label, m, key in (
            ("features A in B", site.a_in_b, "features A in B"),
            ("features B in A", site.b_in_a, None),
            ("neurons A in B", site.neurons, "neurons A in B"),
            ("A in random dictionary on B", site.random, "A in random dictionary"),
        ):
            if m is None:
                continue
            d = m.summary
            lines.append(
                f"| `{site.hook_name}` | {label} | {d.n} ({m.dead}) | {d.median:.3f} | {d.mean:.3f} "
                f"| {d.above_0_5:.1%} | {d.above_0_7:.1%} |"
            )
            if key:
                pooled[key] += m.value.tolist()
    print("\n" + "\n".join(lines))
    svg = histogram(
        pooled, title="Best-match correlation, zoo model vs seed-1 model (all 4 layers)",
        x_label="Pearson correlation with the best match in the other model", bins=25,
    )  # fmt: skip
    atomic_write_text(args.figures / "universality.svg", svg)
    return {
        "n_tokens": u.n_tokens,
        "sites": [
            {
                "hook_name": s.hook_name,
                **{
                    k: None if m is None else {**m.summary._asdict(), "dead": m.dead}
                    for k, m in (
                        ("a_in_b", s.a_in_b),
                        ("b_in_a", s.b_in_a),
                        ("neurons", s.neurons),
                        ("random", s.random),
                    )
                },
            }
            for s in u.sites
        ],
    }


def neurons_part(args, model_a, saes_a, rows) -> dict:
    with step("token properties"):
        props = token_properties(model_a, rows, states=[("markup", "ATTR_VALUE")])
        props = {name: props[name] for name in PROPERTIES}
    with step("features vs neurons (4 layers)"):
        per_layer = [features_vs_neurons(model_a, sae, rows.tokens, properties=props) for sae in saes_a]
    lines = [
        f"Features vs neurons on {per_layer[0].n_tokens:,} held-out tokens (zoo model). Feature: best F1 of "
        "'fires' (> 0) over all layers; its neuron: best-correlated neuron of its layer; "
        "best neuron: best F1 "
        "over all layers' neurons. Neurons fire above their own F1-best threshold. P / R / F1:",
        "",
        "| property | tokens | feature | P / R / F1 | its neuron (corr.) | P / R / F1 "
        "| best neuron | P / R / F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    out, f1s = {}, {"feature": [], "its best neuron": [], "best neuron": []}
    for name in PROPERTIES:
        layer = max(range(len(per_layer)), key=lambda i: per_layer[i].properties[name].feature.f1)
        best_n = max(range(len(per_layer)), key=lambda i: per_layer[i].properties[name].best_neuron.f1)
        m, bn = per_layer[layer].properties[name], per_layer[best_n].properties[name].best_neuron

        def prf(s) -> str:
            return f"{s.precision:.2f} / {s.recall:.2f} / **{s.f1:.2f}**"

        lines.append(
            f"| {name} | {m.positives} | L{layer} #{m.feature.unit} | {prf(m.feature)} "
            f"| L{layer} n{m.feature_neuron.unit} ({m.feature_neuron_correlation:.2f}) "
            f"| {prf(m.feature_neuron)} "
            f"| L{best_n} n{bn.unit} | {prf(bn)} |"
        )
        f1s["feature"].append(m.feature.f1)
        f1s["its best neuron"].append(m.feature_neuron.f1)
        f1s["best neuron"].append(bn.f1)
        out[name] = {
            "positives": m.positives, "layer": layer, "feature": m.feature._asdict(),
            "feature_neuron": m.feature_neuron._asdict(), "correlation": m.feature_neuron_correlation,
            "best_neuron_layer": best_n, "best_neuron": bn._asdict(),
        }  # fmt: skip
    corr = torch.cat([r.correlation[r.live] for r in per_layer])
    lines += [
        "",
        f"Best-correlated neuron of every live feature (all layers, {len(corr)} features): "
        "median correlation "
        f"{float(corr.median()):.3f}, {float((corr > 0.5).float().mean()):.1%} above 0.5, "
        f"{float((corr > 0.7).float().mean()):.1%} above 0.7.",
    ]
    print("\n" + "\n".join(lines))
    svg = bars(
        [n.replace("source=", "").replace("markup:", "") for n in PROPERTIES], f1s,
        title="F1 as a detector: best feature vs neurons (zoo model)", y_label="F1", top=1.0,
    )  # fmt: skip
    atomic_write_text(args.figures / "neurons.svg", svg)
    out["feature_neuron_correlation"] = {"median": float(corr.median()), "n": len(corr)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--second", type=Path, default=ROOT / "build/analyses/model-seed1")
    parser.add_argument("--cache", type=Path, default=ROOT / "build/analyses/seed1-saes")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs/figures")
    parser.add_argument("--rows", type=int, default=48, help="held-out rows of 128 tokens per source")
    parser.add_argument("--train-tokens", type=int, default=2_457_600, help="per SAE of the second model")
    parser.add_argument("--train-second", action="store_true", help="train the second model if missing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    with step("load the zoo model, SAEs, held-out tokens"):
        model_a, saes_a = sc.zoo.load("tiny")
        rows = labelled_rows(model_a, held_out_texts(), 128, args.rows)
    counts = dict(zip(rows.names, rows.source.bincount().tolist()))
    print(f"    {rows.tokens.shape[0]} rows x 128 tokens: {counts}")
    results = {"universality": universality_part(args, model_a, saes_a, rows.tokens)}
    results["neurons"] = neurons_part(args, model_a, saes_a, rows)
    TIMES["total"] = time.perf_counter() - started
    print("\n| step (1 thread) | wall time |\n|---|---|")
    for name, seconds in TIMES.items():
        print(f"| {name} | {seconds:.1f} s |")
    results["times_s"] = {k: round(v, 1) for k, v in TIMES.items()}
    atomic_write_text(args.cache / "results.json", json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
