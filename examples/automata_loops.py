"""The dictionary-learning paper's two automata on the embedded model: the markup loop and the
base64 self-loop, extracted automatically, scored and checked causally (offline).

    python examples/automata_loops.py [--contexts 200] [--prompts 50] [--out-dir automata]

1. Markup: extract the automaton of 200 generated documents (residual SAEs spliced), score it
   against the true automaton, then follow the paper's loop OPEN -> TAG_NAME -> CLOSE ->
   WHITESPACE -> OPEN through the recovered states matched to those true states: each link's
   weight, the tokens that carry it, and the validation effect (pin the source, count the
   destination at the next token).
2. kvlog: the strongest cycles found without ground truth, read through the true states.
3. Base64: extract the automaton of code with base64 blobs; validate its 5 strongest self-loops.
Writes markup.html / base64.html (and .json) to --out-dir.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import sae_circuits as sc
from sae_circuits.cli import corpus_texts
from sae_circuits.fsa import Transition
from sae_circuits.zoo import automata

warnings.filterwarnings("ignore")
LOOP = ("OPEN", "TAG_NAME", "CLOSE", "WHITESPACE")


def markup(model, contexts: int, prompts: int, out: Path) -> None:
    texts, labels = corpus_texts("markup", contexts, 128)
    fsa = sc.automaton(model, texts, prepend_bos=False)
    score = sc.score_automaton(fsa, labels, automata.AUTOMATA["markup"])
    print(f"markup: {fsa}; mean state F1 {score.mean_f1:.3f}, transition AUROC {score.transition_auroc:.3f}")
    states = [score.matches[s] for s in LOOP]
    links = []
    for (a, b), (name_a, name_b) in zip(zip(states, states[1:] + states[:1]), zip(LOOP, LOOP[1:] + LOOP[:1])):
        found = [t for t in fsa.transitions if t.src == a and t.dst == b]
        link = max(found, key=lambda t: t.weight) if found else Transition(a, b, "token", fsa.weight(a, b))
        links.append((name_a, name_b, link))
    fsa.validate(model, transitions=[link for *_, link in links], n_prompts=prompts)
    print("the markup loop through the matched states (state id, label, F1):")
    for name, state in zip(LOOP, states):
        print(f"  {name:<11} state {state:<4} {fsa.states[state].label:<28} F1 {score.state_f1[name]:.3f}")
    for name_a, name_b, link in links:
        tokens = ", ".join(f"{k!r} x{v}" for k, v in list(link.tokens.items())[:3])
        print(f"  {name_a} -> {name_b}: {link.mechanism} weight {link.weight:.3f} via {tokens}; "
              f"pinned effect {link.effect:+.2f} ({'confirmed' if link.confirmed else 'not confirmed'})")  # fmt: skip
    weakest = min(link.weight for *_, link in links)
    rank = next(
        (i for i, (cycle, _) in enumerate(fsa.cycles(max_length=4)) if sorted(cycle) == sorted(states)), None
    )
    print(
        f"  weakest link {weakest:.3f}; rank among all cycles of <= 4 states: {rank if rank is not None else 'beyond the list'}"
    )
    fsa.save(out / "markup.json")
    print("wrote", fsa.save(out / "markup.html"))


def kvlog_loop(model, contexts: int) -> None:
    """The strongest cycles found without ground truth, each state named by the true state it
    predicts best (F1) — for reading only; the cycles never saw the labels."""
    import torch

    texts, labels = corpus_texts("kvlog", contexts, 128)
    fsa = sc.automaton(model, texts, prepend_bos=False)
    states = automata.AUTOMATA["kvlog"].states
    truth = torch.tensor([[label == s for s in states] for row in labels for label in row]).float()
    fire = fsa.firing.float()
    tp = fire.T @ truth
    f1 = 2 * tp / (fire.sum(0)[:, None] + truth.sum(0)[None, :]).clamp_min(1)
    print(
        f"kvlog: {fsa}; the 3 strongest cycles (weakest link), states named by their best-matching true state:"
    )
    for cycle, weight in fsa.cycles(min_weight=0.3)[:3]:
        named = [
            f"{fsa.states[i].label} = {states[int(f1[i].argmax())]} (F1 {float(f1[i].max()):.2f})"
            for i in cycle
        ]
        print(f"  {weight:.3f}: " + " -> ".join(named))


def base64_loop(model, contexts: int, prompts: int, out: Path) -> None:
    texts, _ = corpus_texts("base64", contexts, 128)
    fsa = sc.automaton(model, texts, prepend_bos=False)
    loops = sorted((t for t in fsa.transitions if t.src == t.dst), key=lambda t: -t.weight)[:5]
    fsa.validate(model, transitions=loops, n_prompts=prompts)
    print(f"base64: {fsa}; the 5 strongest self-loops, each validated:")
    for t in loops:
        state = fsa.states[t.src]
        site, index = state.members[0]
        print(f"  state {state.id:<4} {site} #{index:<5} fires on {state.frequency:.0%} of tokens; self-loop weight "
              f"{t.weight:.3f} via {list(t.tokens)[:4]}; pinned effect {t.effect:+.2f} "
              f"({'confirmed' if t.confirmed else 'not confirmed'})")  # fmt: skip
    fsa.save(out / "base64.json")
    print("wrote", fsa.save(out / "base64.html"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contexts", type=int, default=200, help="texts per corpus (default 200)")
    parser.add_argument(
        "--prompts", type=int, default=50, help="prompts per validated transition (default 50)"
    )
    parser.add_argument(
        "--out-dir", default="automata", help="where to write the automata (default automata/)"
    )
    args = parser.parse_args()
    out = Path(args.out_dir)
    model = sc.zoo.load_model("tiny")
    sc.splice(model, sc.zoo.load_saes("tiny", kind="resid"))
    markup(model, args.contexts, args.prompts, out)
    kvlog_loop(model, args.contexts)
    base64_loop(model, args.contexts, args.prompts, out)


if __name__ == "__main__":
    main()
