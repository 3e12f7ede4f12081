"""Bring your own automaton: from a JSON spec to a scored, extracted feature automaton (offline).

    python examples/byo_automaton.py [--spec examples/automata/sexpr.json] [--out /tmp/byo_automaton]
                                     [--docs 6000] [--steps 2000] [--smoke]

1. Load the spec and make sure that every symbol is one token, alone and in context
   (``tokenizer_for_automaton``: the zoo tokenizer when it fits, else a copy with the spec's
   symbols added as tokens, under ``<out>/tokenizer``).
2. Generate a labelled corpus (a random walk through the automaton; deterministic for a seed).
3. Train a 2-layer GPT-2 (n_embd 128) on it with ``train_on_texts``, saved in the Hugging Face
   layout under ``<out>/model``.
4. Train a residual SAE after each block and a transcoder of each block's MLP
   (``blocks.<L>.ln2.hook_normalized`` -> ``blocks.<L>.hook_mlp_out``) from one activation stream:
   the dictionaries the embedded automata use, saved under ``<out>/saes/<site>``.
5. Splice them, extract the automaton the features form (``sc.automaton``) over fresh documents,
   score it against the spec (``sc.score_automaton``), measure the model's own ceiling with a
   linear probe of the true states (``sc.probe_states``) and write ``<out>/automaton.html``.

``--smoke`` shrinks every stage (a few steps, a few documents) to check the plumbing in < 60 s.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import sae_circuits as sc
from sae_circuits.io import atomic_write_text
from sae_circuits.languages import automata
from sae_circuits.recipes.dictionaries import specs
from sae_circuits.recipes.tokenizer import load_tokenizer, tokenizer_for_automaton
from sae_circuits.recipes.train_lm import LMTrainConfig, train_on_texts
from sae_circuits.train import train_dictionaries
from sae_circuits.zoo.loader import load_hf_gpt2

SPEC = Path(__file__).resolve().parent / "automata" / "sexpr.json"


def lm_config(steps: int, smoke: bool) -> LMTrainConfig:
    """A 2-layer, 128-wide GPT-2 that trains in about 10 minutes on one thread."""
    if smoke:
        return LMTrainConfig(n_layer=1, n_embd=32, n_head=2, seq_len=128, batch_size=4, steps=steps,
                           warmup_steps=2, eval_every=steps, eval_rows=2)  # fmt: skip
    return LMTrainConfig(n_layer=2, n_embd=128, n_head=4, seq_len=256, batch_size=8, steps=steps,
                       lr=3e-3, warmup_steps=100, eval_every=250, eval_rows=8)  # fmt: skip


def sae_config(smoke: bool) -> sc.TrainConfig:
    """Residual SAEs and transcoders: 8x expansion, about 16 active features per token."""
    if smoke:
        return sc.TrainConfig(expansion_factor=2, k=4, batch_size=256, total_tokens=256 * 4, buffer_tokens=1024,
                              model_batch_size=4, warmup_steps=1, geometric_median_samples=256, progress=False)  # fmt: skip
    return sc.TrainConfig(expansion_factor=8, k=16, batch_size=4096, total_tokens=1_228_800, buffer_tokens=65_536,
                          lr=1e-3, warmup_steps=30, skip_first_position=False, dead_after_tokens=256_000)  # fmt: skip


def train_recipe_dictionaries(
    model, tokens: torch.Tensor, config: sc.TrainConfig, out: Path, *, transcoders: bool = True
) -> list[sc.SAE]:
    """The recipe's dictionaries, saved under ``out/<site>``: per block, a residual SAE after it
    and (``transcoders``, the default; the recipe until the evening of 7 December 2026 had none) a
    transcoder of its MLP, the zoo's set (``recipes.dictionaries.specs``). All are trained from one
    stream of activations (``train_dictionaries``): each is what training it alone gives, for one
    pass of the model instead of one per dictionary.

    Transcoders as well as residual SAEs because, on the eight held-out languages of
    docs/automata.md ("Transcoders beside the residual SAEs"; corpus seed 1), the pair gave a
    higher mean state F1 on seven and a higher transition AUROC on seven (the eighth equal) than
    the residual SAEs alone, though fewer true loops in total; a transcoder feature is what the MLP
    computes at its position, where a residual feature also carries what the token and attention
    brought."""
    resid, mlp = specs(model.cfg.n_layers)
    saes = train_dictionaries(model, resid + (mlp if transcoders else []), tokens, config)
    for sae in saes:
        sae.save(out / sae.cfg.site)
    return saes


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe (the module docstring) and return its report (also ``<out>/report.json``);
    torch's thread count is set to 1 while it runs and restored after."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(SPEC), help="automaton spec (JSON)")
    parser.add_argument("--out", default="/tmp/byo_automaton", help="output folder (model, SAEs, automaton)")
    parser.add_argument(
        "--docs", type=int, default=None, help="training documents (default 6000; 120 with --smoke)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="language-model training steps (default 2000; 4 with --smoke)"
    )
    parser.add_argument(
        "--contexts",
        type=int,
        default=None,
        help="documents for the extraction (default 200; 6 with --smoke)",
    )
    parser.add_argument(
        "--smoke", action="store_true",
        help="tiny everything: check the plumbing quickly (an explicit --docs, --steps or --contexts still counts)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for name, full, smoke in (("docs", 6000, 120), ("steps", 2000, 4), ("contexts", 200, 6)):
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.docs < 1 or args.steps < 1:
        parser.error(f"--docs {args.docs} / --steps {args.steps}: need 1 or more of each")
    if args.contexts < 2:
        parser.error(
            f"--contexts {args.contexts}: need 2 or more (the probe fits on some and scores on others)"
        )
    if not Path(args.spec).is_file():
        parser.error(f"--spec {args.spec!r}: not a file (expected an automaton spec, a .json file)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {args.out!r}: is a file, expected a folder (new or existing) for the results")
    try:  # before the model trains, not after
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        parser.error(f"--out {args.out!r}: cannot write there ({error.strerror or error})")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared machine; train_on_texts uses one thread either way
    try:
        return _run(args, out)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, out: Path) -> dict:
    """:func:`main`'s stages, on parsed arguments."""
    report: dict = {"spec": args.spec}

    # 1. the spec, and the tokenizer check
    fsa_true = automata.load_automaton(args.spec)
    tokenizer_dir = tokenizer_for_automaton(fsa_true, out / "tokenizer")  # the zoo's, if it fits
    added = len(load_tokenizer(tokenizer_dir).get_added_tokens_decoder()) - 1  # <|endoftext|> aside
    report["tokenizer"] = {"dir": str(tokenizer_dir), "added_symbols": added}
    print(f"{fsa_true.name}: {len(fsa_true.states)} states, {len(fsa_true.alphabet)} symbols; every symbol "
          f"one token ({'the zoo tokenizer' if not added else f'the zoo tokenizer + {added} symbols'})")  # fmt: skip

    # 2. the labelled corpus (training documents; the extraction uses other seeds)
    docs = automata.generate(fsa_true, args.docs, seed=0)
    texts = ["".join(symbols) for symbols, _ in docs]
    print(f"generated {len(texts)} documents, {sum(len(s) for s, _ in docs)} symbols")

    # 3. the language model
    t0 = time.time()
    run = train_on_texts({fsa_true.name: texts}, tokenizer_dir, lm_config(args.steps, args.smoke), out / "model",
                         val_fraction=0.1 if not args.smoke else 0.25, log=print)  # fmt: skip
    report["lm"] = {
        "wall_time_s": round(time.time() - t0, 1),
        "final_train_loss_last50": run.stats["final_train_loss_last50"],
        "val_loss": run.stats["val_loss"],
        "tokens_seen": run.stats["tokens_seen"],
        "epochs": round(run.stats["epochs"], 2),
    }
    print(f"language model: {report['lm']}")

    # 4. residual SAEs and MLP transcoders on every layer
    model = load_hf_gpt2(out / "model")
    tokens = torch.from_numpy(run.corpus.train.astype("int64"))
    t0 = time.time()
    saes = train_recipe_dictionaries(model, tokens, sae_config(args.smoke), out / "saes")
    held_out = torch.from_numpy(next(iter(run.corpus.val.values())).astype("int64"))
    report["saes"] = {"wall_time_s": round(time.time() - t0, 1)}
    for sae in saes:
        result = sc.evaluate(model, sae, held_out[:16], batch_size=4)
        report["saes"][sae.cfg.site] = {
            "d_sae": sae.cfg.d_sae, "explained_variance": round(result.explained_variance, 4),
            "ce_loss_score": round(result.ce_loss_score, 4), "l0": round(result.l0, 2),
            "dead_fraction": round(result.dead_fraction, 4),
        }  # fmt: skip
    print(f"SAEs: {report['saes']}")

    # 5. extract, score, view
    sc.splice(model, saes)
    eval_docs = automata.generate(fsa_true, args.contexts, seed=1)
    eval_texts = ["".join(symbols[:128]) for symbols, _ in eval_docs]
    labels = [states[:128] for _, states in eval_docs]
    t0 = time.time()
    fsa = sc.automaton(model, eval_texts, prepend_bos=False, progress=not args.smoke)
    score = sc.score_automaton(fsa, labels, fsa_true)
    seconds = time.time() - t0
    # the model's own ceiling: a linear probe per layer (it needs two true states or more in the
    # texts it fits on; a one-state language, or a tiny --contexts, has no probe, not a crash)
    try:
        ceiling = sc.probe_states(fsa, model, labels, automaton=fsa_true)
    except ValueError as error:
        ceiling = None
        print(f"no probe of the true states: {error}")
    report["automaton"] = {
        "wall_time_s": round(seconds, 1),
        "states": len(fsa.states),
        "transitions": len(fsa.transitions),
        "mean_f1": round(score.mean_f1, 4),
        "transition_auroc": round(score.transition_auroc, 4),
        "state_f1": {state: round(f1, 4) for state, f1 in score.state_f1.items()},
        "probe": None
        if ceiling is None
        else {site: round(p.mean_f1, 4) for site, p in ceiling.sites.items()},
    }
    print(fsa)
    probe = "" if ceiling is None else (
        f"; a linear probe of the true states reaches {ceiling.best_mean_f1:.3f} at {ceiling.best_site}"
    )  # fmt: skip
    print(f"against the true {fsa_true.name} automaton: mean state F1 {score.mean_f1:.3f}, "
          f"transition AUROC {score.transition_auroc:.3f}{probe}")  # fmt: skip
    if score.note:
        print(f"  note: {score.note}")
    for state, f1 in score.state_f1.items():
        match = score.matches[state]
        print(
            f"  {state:<10} F1 {f1:.3f}  <- "
            + (f"state {match} {fsa.states[match].label}" if match >= 0 else "none")
        )
    print("wrote", fsa.save(out / "automaton.html"))
    fsa.save(out / "automaton.json")
    # never half-written; strict JSON (a NaN, such as the AUROC of a one-state language, as null)
    atomic_write_text(out / "report.json", json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    return report


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float, however nested, replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:  # the library's errors name the problem: no traceback
        raise SystemExit(f"byo_automaton.py: error: {error}") from None
