"""Benchmark: how a state's effect on the next token is measured (``sc.automaton(effect=...)``).

For markup, kvlog and each ``examples/byo_automaton.py`` output folder (``--third DIR``,
repeatable), the transition AUROC against the true automaton of the automaton extracted with
``effect="pin"`` (the other states zeroed where a state is pinned, the default, and with
``exclusive=False``, pinned on top), ``"remove"`` and ``"both"``, for the trained dictionaries and
for ``sc.random_like`` ones of the same shape (200 held-out contexts of 128 symbols, corpus seed 1
or ``--seed``, 1 torch thread; the same dictionaries and random baselines as
``bench_automata.py``). Prints a markdown table of ``trained / random`` AUROC per language:
docs/automata.md ("Method", item 4).

Run ``python benchmarks/bench_transition_effects.py --third /tmp/third --third /tmp/fourth
--third /tmp/fifth --third /tmp/sixth --third /tmp/seventh --third /tmp/eighth`` (about 17 min
alone).
``--example`` prints instead the examples of docs/automata.md: the next tokens markup's
attribute-value and text states promote, pinned on top of the position's state and replacing it
(1 min). ``--no-embedded`` skips markup and kvlog (the ``--third`` folders only).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

from bench_automata import CONTEXTS, LENGTH, SEED, random_saes, spec_of

import sae_circuits as sc
from sae_circuits.languages import automata, corpus_texts
from sae_circuits.zoo.loader import load_hf_gpt2

EFFECTS = {  # row label: sc.automaton's settings
    '`"pin"` (exclusive, the default)': dict(effect="pin"),
    '`"pin"`, `exclusive=False`': dict(effect="pin", exclusive=False),
    '`"remove"`': dict(effect="remove"),
    '`"both"` (exclusive pin)': dict(effect="both"),
}


def languages(thirds: list[Path], embedded: bool = True):
    """(name, model, dictionaries, spec) for markup and kvlog (unless ``embedded`` is False) and
    every built folder."""
    if embedded:
        model = sc.zoo.load_model("tiny")
        dictionaries = sc.zoo.load_saes("tiny", kind="resid") + sc.zoo.load_saes("tiny", kind="transcoder")
        for name in ("markup", "kvlog"):
            yield name, model, dictionaries, name
    for third in thirds:
        if not (third / "model").is_dir():
            print(
                f"{third}: no model (run examples/byo_automaton.py --out {third}); skipped", file=sys.stderr
            )
            continue
        spec = spec_of(third)
        saes = [sc.SAE.load(p) for p in sorted((third / "saes").iterdir()) if (p / "cfg.json").is_file()]
        yield automata.load_automaton(spec).name, load_hf_gpt2(third / "model", "hooked"), saes, spec


def example() -> None:
    """The share of the promoted mass that each top token takes, for markup's ATTR_VALUE and TEXT
    states, pinned on top of the position's state and replacing it."""
    from sae_circuits.fsa import effects, extract

    model = sc.zoo.load_model("tiny")
    dictionaries = sc.zoo.load_saes("tiny", kind="resid") + sc.zoo.load_saes("tiny", kind="transcoder")
    texts, labels = corpus_texts("markup", CONTEXTS, LENGTH, seed=SEED)
    with sc.spliced(model, dictionaries):
        fsa = sc.automaton(model, texts, prepend_bos=False, progress=False)
        matches = sc.score_automaton(fsa, labels, automata.AUTOMATA["markup"]).matches
        corpus = extract._Corpus(model, texts, False, progress=False)
        members = [
            [corpus.feature_offset(corpus.sites.index(site)) + i for site, i in s.members] for s in fsa.states
        ]
        pins = {m: v for s, group in zip(fsa.states, members) for m, v in zip(group, s.pin_values)}
        meta = fsa.metadata
        for exclusive in (False, True):
            promoted = effects.promoted_tokens(
                corpus, members, fsa.firing, pins, contexts=meta["effect_contexts"],
                per_state=meta["effect_positions"], seed=meta["seed"], exclusive=exclusive,
            )  # fmt: skip
            for role in ("ATTR_VALUE", "TEXT"):
                row = promoted[[s.id for s in fsa.states].index(matches[role])]
                share = row / row.sum()
                top = share.argsort(descending=True)[:4].tolist()
                print(
                    f"{role}, exclusive={exclusive}:",
                    ", ".join(
                        f"{model.to_string([int(corpus.vocab[j])])!r} {float(share[j]):.0%}" for j in top
                    ),
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--third", action="append", default=[], help="output folder of examples/byo_automaton.py"
    )
    parser.add_argument("--seed", type=int, default=SEED, help="corpus seed (default 1)")
    parser.add_argument("--example", action="store_true", help="print the example of docs/automata.md only")
    parser.add_argument(
        "--no-embedded", action="store_true", help="skip markup and kvlog: only the --third folders"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.example:
        example()
        return
    columns: dict[str, dict[str, str]] = {}
    for name, model, trained, spec in languages([Path(p) for p in args.third], not args.no_embedded):
        truth = automata.AUTOMATA[spec] if spec in automata.AUTOMATA else automata.load_automaton(spec)
        texts, labels = corpus_texts(spec, CONTEXTS, LENGTH, seed=args.seed)
        aurocs = {}
        for kind, saes in (("trained", trained), ("random", random_saes(model, trained, texts))):
            with sc.spliced(model, saes):
                for row, settings in EFFECTS.items():
                    fsa = sc.automaton(model, texts, prepend_bos=False, progress=False, **settings)
                    aurocs[kind, row] = sc.score_automaton(fsa, labels, truth).transition_auroc
        columns[name] = {e: f"{aurocs['trained', e]:.3f} / {aurocs['random', e]:.3f}" for e in EFFECTS}
        print(name, columns[name], file=sys.stderr, flush=True)
    print("| effect | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for row in EFFECTS:
        print(f"| {row} | " + " | ".join(columns[n][row] for n in columns) + " |")


if __name__ == "__main__":
    main()
