"""The dictionary-learning paper's automata on the embedded model, found without labels, scored
afterwards and checked causally (offline).

    python examples/automata_loops.py [--contexts 200] [--prompts 20] [--out-dir automata]

1. Markup: extract the automaton of 200 held-out generated documents (residual SAEs and
   transcoders spliced; states are roles), score it against the true automaton, follow the paper's
   loop OPEN -> TAG_NAME -> CLOSE -> WHITESPACE -> OPEN through the states matched to those true
   states (each link's weight, its tokens, and a causal check: the source state pinned, the
   destination's next-step firing with a 95% interval), and print the first loops of
   ``fsa.loops()`` named through the true states.
2. kvlog: the first loops of ``fsa.loops()``, named afterwards through the true states.
3. Base64: the base64 state of the residual SAEs pinned (all its members, every layer) while
   generating after English and code prompts.
Writes markup.html / base64.html (and .json) to --out-dir.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import sae_circuits as sc
from sae_circuits.languages import PROMPTS, automata, corpus_texts
from sae_circuits.recipes.base64_steering import measure_state

warnings.filterwarnings("ignore")
LOOP = ("OPEN", "TAG_NAME", "CLOSE", "WHITESPACE")
SEED = 1  # held-out documents: the embedded model's corpus was generated with other seeds


def print_loops(fsa, labels, truth, n: int = 5) -> None:
    """The first loops of ``fsa.loops()``; the state names come from the labels, afterwards."""
    scored = sc.score_loops(fsa, fsa.loops(n), labels, truth)
    print(f"  the first {n} loops (no labels used), named through the true states:")
    for named, true in zip(scored.names, scored.true):
        print(f"    {' -> '.join(map(str, named))}{'' if true else '   (not a true loop)'}")


def markup(model, contexts: int, prompts: int, out: Path) -> None:
    texts, labels = corpus_texts("markup", contexts, 128, seed=SEED)
    truth = automata.AUTOMATA["markup"]
    fsa = sc.automaton(model, texts, prepend_bos=False)
    score = sc.score_automaton(fsa, labels, truth)
    print(f"markup: {fsa}; mean state F1 {score.mean_f1:.3f}, transition AUROC {score.transition_auroc:.3f}")
    states = [score.matches[s] for s in LOOP]
    pairs = list(zip(states, states[1:] + states[:1]))
    checks = sc.check_pairs(fsa, model, pairs, n_prompts=prompts, progress=False)
    print("  the paper's loop through the matched states (state id, members, top tokens, F1):")
    for name, state in zip(LOOP, states):
        s = fsa.state(state)
        print(
            f"    {name:<11} state {state:<4} {len(s.members):>3} features {s.label:<24} F1 {score.state_f1[name]:.3f}"
        )
    for (a, b), check, name_a, name_b in zip(pairs, checks, LOOP, LOOP[1:] + LOOP[:1]):
        effect = check.sampled or check.greedy
        print(f"    {name_a} -> {name_b}: weight {fsa.weight(a, b):.3f}; pinned {name_a}: {name_b} fires next "
              f"{effect.unpinned:.2f} -> {effect.pinned:.2f} (95% CI of the change {effect.ci[0]:+.2f}..{effect.ci[1]:+.2f})"
              + (f"; {name_a} removed where it fires: {check.removal.natural:.2f} -> {check.removal.removed:.2f}"
                 if check.removal else "")
              + f"; {'confirmed' if check.confirmed else 'not confirmed'}")  # fmt: skip
    print_loops(fsa, labels, truth)
    fsa.save(out / "markup.json")
    print("  wrote", fsa.save(out / "markup.html"))


def kvlog(model, contexts: int) -> None:
    texts, labels = corpus_texts("kvlog", contexts, 128, seed=SEED)
    fsa = sc.automaton(model, texts, prepend_bos=False)
    print(f"kvlog: {fsa}")
    print_loops(fsa, labels, automata.AUTOMATA["kvlog"])


def base64(model, contexts: int, prompts: int, out: Path) -> None:
    texts, _ = corpus_texts("base64", contexts, 128, seed=SEED)
    with sc.spliced(model, sc.zoo.load_saes("tiny", kind="resid")):  # the residual stream's base64 role
        fsa = sc.automaton(model, texts, prepend_bos=False)
        result = measure_state(model, fsa, rules=("p90",), prompts=PROMPTS[:prompts])[0]
    print(f"base64: {fsa}; the base64 state {result.state} ({len(result.members)} features; fires on "
          f"{result.rate_in:.0%} of base64 and {result.rate_out:.1%} of English/code tokens), pinned while "
          f"generating 40 tokens after {result.n_prompts} prompts:")  # fmt: skip
    for d in ("sampled", "greedy"):
        print(f"    {d}: base64 continuations {result.fraction_without[d]:.0%} -> {result.fraction_with[d]:.0%}, "
              f"distinct characters {result.distinct_without[d]:.2f} -> {result.distinct_with[d]:.2f}")  # fmt: skip
    print(f"    e.g. {result.samples[0][0]!r} -> {result.samples[0][2][:50]!r}")
    fsa.save(out / "base64.json")
    print("  wrote", fsa.save(out / "base64.html"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contexts", type=int, default=200, help="texts per corpus (default 200)")
    parser.add_argument("--prompts", type=int, default=40, help="prompts per causal check (default 40)")
    parser.add_argument(
        "--out-dir", default="automata", help="where to write the automata (default automata/)"
    )
    args = parser.parse_args()
    out = Path(args.out_dir)
    model = sc.zoo.load_model("tiny")
    with sc.spliced(
        model, sc.zoo.load_saes("tiny", kind="resid") + sc.zoo.load_saes("tiny", kind="transcoder")
    ):
        markup(model, args.contexts, args.prompts, out)
        kvlog(model, args.contexts)
    base64(model, args.contexts, args.prompts, out)


if __name__ == "__main__":
    main()
