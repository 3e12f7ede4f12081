"""Feature splitting on the embedded model: dictionaries of 4x, 8x, 16x and 32x d_model trained on
one site from one activation stream, matched across widths, and the base64 family drawn as a tree.

    python examples/feature_families.py [--smoke] [--out build/analyses/widths]

1. Token rows from the offline corpus (code, base64, markup, kvlog), shuffled with a seed; a few
   hundred rows are held out for the analysis, the rest (~1.2M tokens) train the dictionaries.
2. Train the four widths at ``blocks.1.hook_resid_post`` (where the base64 feature lives) from one
   activation stream, the zoo's recipe (BatchTopK, k=24, lr 1e-3); saved under ``--out`` so that a
   rerun with the same settings loads them instead of training.
3. ``feature_families`` on the held-out tokens: every feature's parent is its best-correlated
   feature one width down; both the correlation and the decoder cosine of every edge are kept.
4. The base64 family: the narrowest dictionary's feature with the best F1 of firing against "this
   token is in a base64 row", and its descendants.
5. Figures: ``docs/figures/families_match.svg`` (best-match decoder cosine and activation
   correlation between adjacent widths), ``build/analyses/families.html`` (the tree view), and a
   markdown table on stdout.

``--smoke`` trains tiny dictionaries for a few steps into a temporary folder (the test suite's run).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

import sae_circuits as sc
from sae_circuits._files import atomic_write_text
from sae_circuits.analysis._stats import LabelledRows, labelled_rows
from sae_circuits.analysis._svg import HEIGHT, WIDTH, histogram
from sae_circuits.analysis.families import DEFAULT_THRESHOLD, FeatureFamilies, feature_families
from sae_circuits.languages import offline_mix
from sae_circuits.train import ActivationStore, DictionarySpec, SAETrainer
from sae_circuits.train.trainer import _sae_config_of, run_trainers

ROOT = Path(__file__).resolve().parents[1]
SITE = "blocks.1.hook_resid_post"
EXPANSIONS = (4, 8, 16, 32)
LENGTH = 128
FULL = sc.TrainConfig(
    architecture="batchtopk", k=24, batch_size=4096, total_tokens=1_200_000, buffer_tokens=131_072,
    model_batch_size=16, lr=1e-3, warmup_steps=50, skip_first_position=False, dead_after_tokens=256_000,
    seed=0,
)  # fmt: skip
SMOKE = replace(
    FULL, progress=False, k=8, batch_size=256, total_tokens=256 * 4, buffer_tokens=1024, model_batch_size=8,
    warmup_steps=1,
    geometric_median_samples=512,
)  # fmt: skip


def token_rows(model: Any, smoke: bool) -> tuple[torch.Tensor, LabelledRows]:
    """``(training rows, held-out labelled rows)``: step 1."""
    if smoke:
        mix = offline_mix(seed=0, code_bytes=40_000, base64_docs=20, automaton_docs=20)
        rows, held = labelled_rows(model, mix, 32, 12), 16
    else:
        mix = offline_mix(seed=0, code_bytes=3_000_000, base64_docs=3_000, automaton_docs=4_000)
        rows, held = labelled_rows(model, mix, LENGTH, 2_500), 256
    order = torch.randperm(len(rows.tokens), generator=torch.Generator().manual_seed(0))
    test, train = order[:held], order[held:]
    return rows.tokens[train], LabelledRows(rows.tokens[test], rows.source[test], rows.names)


def train_or_load(
    model: Any, tokens: torch.Tensor, out: Path, config: sc.TrainConfig
) -> tuple[list[sc.SAE], bool]:
    """The dictionaries of every width (step 2): loaded from ``out`` when it holds them for the same
    settings, else trained from one activation stream and saved there. Returns ``(saes, loaded)``."""
    d_model = int(model.cfg.d_model)
    settings = {"site": SITE, "expansions": list(EXPANSIONS), "rows": list(tokens.shape), "seeds": "seed + i",
                "config": asdict(config)}  # fmt: skip
    folders = [out / f"{e * d_model}" for e in EXPANSIONS]
    stamp = out / "settings.json"
    if stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(settings)):
        return [sc.SAE.load(f) for f in folders], True
    store = ActivationStore(
        model, tokens, [SITE], batch_size=config.batch_size, buffer_tokens=config.buffer_tokens,
        model_batch_size=config.model_batch_size, skip_first_position=config.skip_first_position,
        seed=config.seed,
    )  # fmt: skip
    metadata = {"model_name": model.cfg.model_name, "context_size": int(tokens.shape[1])}
    # one seed per width: the same seed would start every width from the same first rows
    # (torch.randn fills in order), and the narrow features would match the wide ones by birth
    configs = [replace(config, d_sae=e * d_model, seed=config.seed + i) for i, e in enumerate(EXPANSIONS)]
    trainers = [
        SAETrainer(store, c, _sae_config_of(DictionarySpec(SITE), {SITE: d_model}, c, metadata))
        for c in configs
    ]
    saes = run_trainers(store, trainers)
    for sae, folder in zip(saes, folders):
        sae.save(folder)
    atomic_write_text(stamp, json.dumps(settings, indent=1))
    return saes, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny, fast run into a temporary folder")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "analyses" / "widths")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(args.smoke, Path(tmp) / "widths" if args.smoke else args.out)
    finally:
        torch.set_num_threads(threads)


def run(smoke: bool, out: Path) -> None:
    """Steps 1-5 (module docstring); ``out`` holds the dictionaries."""
    times: dict[str, float] = {}
    clock = time.perf_counter()
    model, _ = sc.zoo.load("tiny")
    train, held_out = token_rows(model, smoke)
    times["1. tokens"] = time.perf_counter() - clock

    clock = time.perf_counter()
    saes, loaded = train_or_load(model, train, out, SMOKE if smoke else FULL)
    times["2. train (loaded from --out)" if loaded else "2. train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    base64 = (held_out.source == held_out.names.index("base64"))[:, None].expand(held_out.tokens.shape)
    fam = feature_families(saes, model, held_out.tokens, by="activation", token_property=base64.contiguous())
    times["3. families"] = time.perf_counter() - clock

    clock = time.perf_counter()
    root = fam.best_for_property(0)
    tree = fam.family(0, root)
    times["4. base64 family"] = time.perf_counter() - clock

    clock = time.perf_counter()
    figures = out.parent if smoke else ROOT / "docs" / "figures"
    pages = out.parent if smoke else ROOT / "build" / "analyses"
    atomic_write_text(figures / "families_match.svg", match_figure(fam))
    fam.write_html(pages / "families.html", family=(0, root))
    pairs = pair_table(fam)
    times["5. figures"] = time.perf_counter() - clock
    report = "\n".join([
        f"Held-out: {fam.n_tokens:,} tokens ({int(base64[:, 1:].sum()):,} base64); site `{fam.hook_name}`; "
        f"parent = best activation correlation one width down, >= {fam.threshold}.", "",
        *pairs, "",
        f"The base64 family (root: the {fam.widths[0]}-wide feature with the best F1 for base64 tokens):",
        "", *tree_table(tree), "", other_roots(fam, root), "", "| step | wall time (s) |", "|---|---|",
        *(f"| {name} | {seconds:.1f} |" for name, seconds in times.items()),
    ])  # fmt: skip
    print(report)
    if not smoke:
        atomic_write_text(out / "families.md", report + "\n")


def pair_table(fam: FeatureFamilies) -> list[str]:
    """Match statistics of every adjacent pair of widths, as markdown rows."""
    lines = [
        "| wide -> narrow | fire | best cosine median / mean | best correlation median / mean (firing) "
        f"| same best match | parent by correlation >= {DEFAULT_THRESHOLD['activation']} "
        f"| cosine >= {DEFAULT_THRESHOLD['decoder']} |",
        "|---|---|---|---|---|---|---|",
    ]
    for narrow, level in zip(fam.levels, fam.levels[1:]):
        m = level.match
        assert m is not None and m.correlation is not None and m.fires_a is not None
        alive = m.fires_a > 0
        corr = m.correlation[alive]
        lines.append(
            f"| {level.width} -> {narrow.width} | {float(alive.float().mean()):.1%} "
            f"| {float(m.cosine.median()):.3f} / {float(m.cosine.mean()):.3f} "
            f"| {float(corr.median()):.3f} / {float(corr.mean()):.3f} | {m.agreement():.1%} "
            f"| {float((level.parent >= 0).float().mean()):.1%} "
            f"| {float((m.cosine >= DEFAULT_THRESHOLD['decoder']).float().mean()):.1%} |"
        )
    return lines


def tree_table(tree: dict[str, Any], limit: int = 40) -> list[str]:
    """The family as markdown rows, depth first (the most similar child first)."""
    lines = [
        "| node | firing | F1 base64 | cosine / corr. with parent | top tokens |",
        "|---|---|---|---|---|",
    ]
    stack = [tree]
    while stack and len(lines) < limit + 2:
        node = stack.pop()
        edge = "root" if node["cosine"] is None else f"{node['cosine']:.2f} / {node['correlation']:.2f}"
        tops = " ".join(f"`{t}`" for t, _ in node["top_tokens"][:4]).replace("|", "\\|")
        indent = "&nbsp;&nbsp;" * (node["level"] - tree["level"])
        lines.append(
            f"| {indent}{node['width']}:#{node['feature']} | {node['firing_rate']:.2%} | {node['f1']:.3f} "
            f"| {edge} | {tops} |"
        )
        stack.extend(reversed(node["children"]))
    return lines


def other_roots(fam: FeatureFamilies, root: int, min_f1: float = 0.5) -> str:
    """The other families whose root (any level) has F1 >= ``min_f1``: base64 is not one tree."""
    found = []
    for i, level in enumerate(fam.levels):
        assert level.f1 is not None
        for f in (level.f1 >= min_f1).nonzero().flatten().tolist():
            if int(level.parent[f]) < 0 and (i, f) != (0, root):
                found.append(
                    f"{level.width}:#{f} (F1 {float(level.f1[f]):.2f}, {fam.size(i, f)} node{'s' * (fam.size(i, f) > 1)})"
                )
    return f"Other roots with F1 >= {min_f1} for base64: " + (", ".join(found) or "none") + "."


def match_figure(fam: FeatureFamilies) -> str:
    """Two histograms side by side: best-match decoder cosine (every feature) and activation
    correlation (features that fire on the held-out tokens), per adjacent pair of widths."""
    cosine, corr = {}, {}
    for narrow, level in zip(fam.levels, fam.levels[1:]):
        m = level.match
        assert m is not None and m.correlation is not None and m.fires_a is not None
        name = f"{level.width} -> {narrow.width}"
        cosine[name] = m.cosine.tolist()
        corr[name] = m.correlation[m.fires_a > 0].tolist()
    left = histogram(cosine, title="Best-match decoder cosine, one width down", x_label="cosine")
    right = histogram(
        corr, title="Best-match activation correlation (firing features)", x_label="correlation"
    )
    width, height = 2 * WIDTH, HEIGHT
    right = right.replace("<svg ", f'<svg x="{WIDTH}" ', 1)  # the inner figures side by side
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">\n{left}{right}</svg>\n'
    )


if __name__ == "__main__":
    main()
