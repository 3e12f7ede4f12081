"""Sweep: a bring-your-own automaton's dictionaries retrained at several ``k``, each scored.

What (``torch.set_num_threads(1)``): for an output folder of ``examples/byo_automaton.py`` (its
model, tokenizer and report.json), the recipe's dictionaries (``byo_automaton.train_recipe_dictionaries``:
a residual SAE and an MLP transcoder per layer; ``--no-transcoders``: the residual SAEs alone, the
recipe until the evening of 7 December 2026, which the sweeps quoted in docs/automata.md used)
are retrained with the recipe's config (``byo_automaton.sae_config``) and only ``k`` changed, on
the same training tokens (the same documents and packing as the recipe, so the recipe's own ``k``
reproduces its dictionaries exactly). Each set is saved under ``OUT/k{k}/saes`` and scored on 200
held-out documents (corpus seed 1): dead fraction on 16 rows, mean state F1 with each state's F1,
transition AUROC, and the first 10 loops (true / distinct / longest in the top 3). ``--tokens-scale`` trains each set on that multiple of
the recipe's tokens (more epochs of the same documents) and ``--batch-size`` changes the batch
(a quarter of it is four times the steps on the same tokens); the folder's name then says so
(``k16_t4``, ``k16_b1024``); ``--architecture matryoshka_batchtopk`` trains Matryoshka SAEs
instead (``k16_matryoshka_batchtopk``, with ``--matryoshka-widths`` in the name when given).

    python benchmarks/sweep_byo_k.py /tmp/fifth --k 4 8 16 32 --out /tmp/fifth_k   # ~5 min per k
    python benchmarks/sweep_byo_k.py /tmp/eighth --k 16 --tokens-scale 4 --out /tmp/eighth_t4  # ~16 min

The tutorial's table (docs/automata_tutorial.md, "A third language") is its output on ``query``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

import sae_circuits as sc
from sae_circuits.fsa.score import score_loops
from sae_circuits.languages import automata, corpus_texts
from sae_circuits.recipes.pack import pack_mix
from sae_circuits.recipes.tokenizer import load_tokenizer, tokenizer_for_automaton
from sae_circuits.zoo.loader import load_hf_gpt2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO / "benchmarks"))
import byo_automaton  # the recipe's SAE config and corpus size
from bench_automata import spec_of


def training_tokens(folder: Path, truth: automata.Automaton) -> torch.Tensor:
    """The recipe's SAE training tokens: its documents (seed 0), packed as ``train_on_texts`` packs."""
    lm = byo_automaton.lm_config(2000, smoke=False)
    docs = automata.generate(truth, 6000, seed=0)
    texts = {truth.name: ["".join(symbols) for symbols, _ in docs]}
    tokenizer = load_tokenizer(tokenizer_for_automaton(truth, folder / "tokenizer"))  # the zoo's, if it fits
    corpus = pack_mix(tokenizer, texts, lm.seq_len, val_fraction=0.1, seed=lm.seed)
    return torch.from_numpy(corpus.train.astype("int64"))


def score(model, saes: list[sc.SAE], truth: automata.Automaton, spec: Path) -> dict:
    texts, labels = corpus_texts(spec, 200, 128, seed=1)
    rows = torch.cat([model.to_tokens(t, prepend_bos=False)[0] for t in texts[:40]])[: 16 * 128]
    dead = [
        round(sc.evaluate(model, sae, rows.reshape(16, 128), batch_size=4).dead_fraction, 3) for sae in saes
    ]
    with sc.spliced(model, saes):
        fsa = sc.automaton(model, texts, prepend_bos=False, progress=False)
    s = sc.score_automaton(fsa, labels, truth)
    loops = score_loops(fsa, fsa.loops(10), labels, truth)
    return {
        "dead": dead, "mean_f1": round(s.mean_f1, 3), "auroc": round(s.transition_auroc, 3),
        "loops": [loops.n_true, loops.n_distinct, loops.longest_in_top3],
        "state_f1": {k: round(v, 2) for k, v in s.state_f1.items()},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="an examples/byo_automaton.py output folder")
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--out", type=Path, required=True, help="where the retrained SAEs go")
    parser.add_argument("--tokens-scale", type=int, default=1, help="times the recipe's training tokens")
    parser.add_argument("--batch-size", type=int, default=None, help="SAE batch (default: the recipe's)")
    parser.add_argument(
        "--architecture", default=None, help="SAE training architecture (default: the recipe's, batchtopk)"
    )
    parser.add_argument(
        "--matryoshka-widths", type=int, nargs="+", default=None,
        help="matryoshka_batchtopk's prefix widths (default: d_sae / 16, / 8, / 4, / 2)",
    )  # fmt: skip
    parser.add_argument(
        "--no-transcoders",
        action="store_true",
        help="residual SAEs alone (the recipe until the evening of 7 December 2026)",
    )
    args = parser.parse_args()
    if not (args.folder / "model").is_dir():
        parser.error(
            f"{args.folder}: no model folder (an examples/byo_automaton.py --out folder is expected)"
        )
    if args.tokens_scale < 1:
        parser.error(f"--tokens-scale must be a whole number >= 1, got {args.tokens_scale}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    torch.set_num_threads(1)
    spec = spec_of(args.folder)
    truth = automata.load_automaton(spec)
    model = load_hf_gpt2(args.folder / "model", "hooked")
    tokens = training_tokens(args.folder, truth)
    print("| k | dead (per dictionary) | mean state F1 | AUROC | loops | state F1 |")
    print("|---|---|---|---|---|---|")
    recipe = byo_automaton.sae_config(smoke=False)
    batch = recipe.batch_size if args.batch_size is None else args.batch_size
    for k in args.k:
        config = dataclasses.replace(
            recipe,
            k=k,
            total_tokens=recipe.total_tokens * args.tokens_scale,
            batch_size=batch,
            architecture=args.architecture or recipe.architecture,
            matryoshka_widths=args.matryoshka_widths,
            progress=False,
        )
        name = f"k{k}" + (f"_t{args.tokens_scale}" if args.tokens_scale != 1 else "")
        name += f"_b{batch}" if batch != recipe.batch_size else ""
        name += f"_{config.architecture}" if config.architecture != recipe.architecture else ""
        name += "_w" + "-".join(map(str, config.matryoshka_widths)) if config.matryoshka_widths else ""
        name += "_resid" if args.no_transcoders else ""
        saes = byo_automaton.train_recipe_dictionaries(
            model, tokens, config, args.out / name / "saes", transcoders=not args.no_transcoders
        )
        r = score(model, saes, truth, spec)
        print(f"| {name} | {r['dead']} | {r['mean_f1']} | {r['auroc']} | {r['loops']} | {json.dumps(r['state_f1'])} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
