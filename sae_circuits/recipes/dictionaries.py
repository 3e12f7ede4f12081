"""Recipe stage: train the embedded model's dictionaries and evaluate them.

    python -m sae_circuits.recipes.dictionaries [--model-dir DIR] [--tokens DIR] [--smoke]

Trains, from one activation stream, a residual-stream SAE after every block
(``blocks.{L}.hook_resid_post``) and a transcoder per MLP (``blocks.{L}.ln2.hook_normalized`` ->
``blocks.{L}.hook_mlp_out``), saves them in the SAELens layout under ``saes/`` and
``transcoders/`` of the model folder, evaluates each on held-out text beside its PCA / rank-k
baseline, and writes the figures into ``card.json`` and the model card ``docs/zoo.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_circuits._files import atomic_write_text
from sae_circuits.evals import evaluate
from sae_circuits.train import DictionarySpec, TrainConfig, train_dictionaries
from sae_circuits.zoo import ROOT as ZOO
from sae_circuits.zoo.loader import load_hf_gpt2

DOCS = ZOO.parents[1] / "docs" / "zoo.md"  # the model card, in the source checkout
FULL = TrainConfig(
    architecture="batchtopk", expansion_factor=16, k=24, batch_size=4096, total_tokens=2_457_600,
    buffer_tokens=131_072, model_batch_size=16, lr=1e-3, warmup_steps=50, skip_first_position=False,
    dead_after_tokens=256_000, seed=0,
)  # fmt: skip
SMOKE = replace(FULL, expansion_factor=2, batch_size=1024, total_tokens=1024 * 6, buffer_tokens=4096,
                model_batch_size=4, warmup_steps=2, geometric_median_samples=1024,
                progress=False)  # fmt: skip
MARK_BEGIN, MARK_END = "<!-- dictionaries:begin -->", "<!-- dictionaries:end -->"


def specs(n_layers: int) -> tuple[list[DictionarySpec], list[DictionarySpec]]:
    """``(residual SAEs, MLP transcoders)``: one of each per layer, as the module docstring says."""
    resid = [DictionarySpec(f"blocks.{layer}.hook_resid_post") for layer in range(n_layers)]
    mlp = [
        DictionarySpec(f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out")
        for layer in range(n_layers)
    ]
    return resid, mlp


def eval_tokens(tokens_dir: Path, rows_per_corpus: int) -> torch.Tensor:
    """Held-out rows from every sub-corpus's validation split."""
    parts = [np.load(p)[:rows_per_corpus] for p in sorted(tokens_dir.glob("val_*.npy"))]
    if not parts:
        raise FileNotFoundError(f"no val_*.npy in {tokens_dir}; run the recipe's tokenizer stage first")
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))


def build(model_dir: Path, tokens_dir: Path, config: TrainConfig, eval_rows: int) -> dict[str, Any]:
    """Train, save and evaluate every dictionary on one torch thread (the caller's count restored
    after); return the card entry."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the docs say: one thread, so a rebuild does the same arithmetic
    try:
        return _build(model_dir, tokens_dir, config, eval_rows)
    finally:
        torch.set_num_threads(threads)


def _build(model_dir: Path, tokens_dir: Path, config: TrainConfig, eval_rows: int) -> dict[str, Any]:
    model = load_hf_gpt2(model_dir)  # HookedTransformer on TransformerLens 3.x, else the bridge
    train = torch.from_numpy(np.load(tokens_dir / "train.npy").astype(np.int64))
    resid, mlp = specs(model.cfg.n_layers)
    started = time.time()
    saes = train_dictionaries(model, resid + mlp, train, config)
    train_seconds = time.time() - started
    held_out = eval_tokens(tokens_dir, eval_rows)
    entries = []
    for spec, sae in zip(resid + mlp, saes):
        kind = "saes" if spec.hook_out is None else "transcoders"
        folder = model_dir / kind / (spec.hook_in if spec.hook_out is None else spec.hook_out)
        sae.save(folder)
        result = evaluate(model, sae, held_out, batch_size=4)
        entries.append({
            "kind": kind, "folder": str(folder.relative_to(model_dir)), "eval": result.to_dict(),
            "dead_training_window": training_window_dead(sae),
        })  # fmt: skip
    return {
        "trained_at_commit": _git_commit(),
        "training": asdict(config),
        "train_seconds": round(train_seconds, 1),
        "eval_tokens": int(held_out.numel()),
        "dictionaries": entries,
    }


def training_window_dead(sae: Any) -> float:
    """Fraction of features that never fired over the last 20% of training (``sparsity.safetensors``
    holds log10 of the firing frequency there, -10 for never)."""
    return float((sae.sparsity <= -9.99).float().mean())


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ZOO, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def markdown(card: dict[str, Any]) -> str:
    """The model card's dictionaries section."""
    cfg = card["training"]
    lines = [
        MARK_BEGIN,
        "## Dictionaries",
        "",
        "Trained by `python -m sae_circuits.recipes.dictionaries` "
        f"(all {len(card['dictionaries'])} from one activation "
        f"stream, {card['train_seconds'] / 60:.1f} min on this CPU): {cfg['architecture']} with k={cfg['k']} "
        f"(saved as JumpReLU with the learned threshold), width {cfg['expansion_factor']} x d_model, "
        f"{cfg['total_tokens'] / 1e6:.1f}M training tokens each, lr {cfg['lr']}, batch {cfg['batch_size']}.",
        *(
            [f"The committed dictionaries were trained by the code of commit `{card['trained_at_commit']}`."]
            if card.get("trained_at_commit")
            else []
        ),
        f"Evaluated on {card['eval_tokens']:,} held-out tokens (validation rows of every sub-corpus); "
        "the baseline is PCA top-k (transcoders: rank-k regression) at the same L0. *Dead* is given over "
        "two windows: the held-out tokens (a feature rarer than ~1/30k tokens looks dead there) and the "
        "last 20% of "
        f"training ({cfg['total_tokens'] * 0.2 / 1e3:.0f}k tokens, from `sparsity.safetensors`).",
        "",
        "| dictionary | L0 | explained var. (baseline) | ce_loss_score (baseline) | kl_div_score (baseline) "
        "| CE clean / spliced / zero | dead: held-out / training | dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in card["dictionaries"]:
        r, b = entry["eval"], entry["eval"]["baseline"] or {}
        lines.append(
            f"| `{entry['folder']}` | {r['l0']:.1f} | {r['explained_variance']:.3f} "
            f"({b.get('explained_variance', float('nan')):.3f}) "
            f"| {r['ce_loss_score']:.3f} ({b.get('ce_loss_score', float('nan')):.3f}) "
            f"| {r['kl_div_score']:.3f} ({b.get('kl_div_score', float('nan')):.3f}) "
            f"| {r['ce_loss_clean']:.3f} / {r['ce_loss_spliced']:.3f} / {r['ce_loss_zero']:.3f} "
            f"| {r['dead_fraction']:.1%} / {entry.get('dead_training_window', float('nan')):.1%} "
            f"| {r['dense_fraction']:.1%} |"
        )
    lines += ["", MARK_END]
    return "\n".join(lines)


def write_card(model_dir: Path, card: dict[str, Any], docs: Path | None) -> None:
    """Put ``card`` under ``"dictionaries"`` in the model's ``card.json``, and (unless ``docs`` is
    None) its table into the Markdown model card ``docs``."""
    card_path = model_dir / "card.json"
    existing = json.loads(card_path.read_text()) if card_path.is_file() else {}
    existing["dictionaries"] = card
    atomic_write_text(card_path, json.dumps(existing, indent=2))
    if docs is not None:
        replace_section(docs, MARK_BEGIN, MARK_END, markdown(card))


def replace_section(docs: Path, begin: str, end: str, section: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) into the Markdown file
    ``docs``: in place of the previous one, or appended."""
    text = docs.read_text() if docs.is_file() else "# The embedded model\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    atomic_write_text(docs, text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The stage's command line (see the module docstring); returns the card entry."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=ZOO / "tiny")
    parser.add_argument("--tokens", type=Path, default=Path("build/zoo/tokens"))
    parser.add_argument("--smoke", action="store_true", help="a few steps, for tests; does not touch docs/")
    parser.add_argument("--eval-rows", type=int, default=None, help="validation rows per sub-corpus")
    args = parser.parse_args(argv)
    config = SMOKE if args.smoke else FULL
    card = build(args.model_dir, args.tokens, config, args.eval_rows or (1 if args.smoke else 12))
    write_card(args.model_dir, card, None if args.smoke else DOCS)
    for entry in card["dictionaries"]:
        r = entry["eval"]
        print(
            f"{entry['folder']}: L0 {r['l0']:.1f} EV {r['explained_variance']:.3f} "
            f"ce_loss_score {r['ce_loss_score']:.3f}"
        )
    return card


if __name__ == "__main__":
    main()
