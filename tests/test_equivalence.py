"""States no text can tell apart (Moore's refinement against a brute-force definition), and scoring
against the language's own automaton with them merged."""

from __future__ import annotations

import itertools

import pytest
import torch

import sae_circuits as sc
from sae_circuits.fsa import FeatureAutomaton, State
from sae_circuits.languages import automata, equivalent_states
from sae_circuits.languages.automata import Automaton, load_automaton
from sae_circuits.languages.equivalence import merge_equivalent


def _futures(a: Automaton, state: str, depth: int) -> frozenset[tuple[tuple[str, ...], bool]]:
    """Every symbol sequence of length <= depth allowed after ``state``, with whether it may end there."""
    out, frontier = set(), [((), state)]
    for _ in range(depth + 1):
        nxt = []
        for seq, s in frontier:
            out.add((seq, s in a.final_states))
            nxt += [(seq + (sym,), dst) for dst, syms in a.transitions.get(s, {}).items() for sym in syms]
        frontier = nxt
    return frozenset(out)


def test_equivalent_states_are_those_with_the_same_futures():
    a = Automaton(
        "toy",
        ("A", "B", "C", "D", "E"),
        {
            "START": {"A": ("a",), "B": ("b",)},
            "A": {"C": (" c",), "E": (" e",)},  # A and B: the same row ...
            "B": {"D": (" c",), "E": (" e",)},  # ... up to C ~ D
            "C": {"A": (" a",)},
            "D": {"A": (" a",)},
            "E": {"A": (" a",), "E": (" x",)},
        },
        final=("E",),
    )
    groups = equivalent_states(a)
    assert groups == [("A", "B"), ("C", "D")]
    for s, t in itertools.combinations(a.states, 2):  # brute force: futures up to 5 symbols
        same = _futures(a, s, 5) == _futures(a, t, 5)
        assert same == any(s in g and t in g for g in groups), (s, t)


def test_the_shipped_automata():
    assert equivalent_states(automata.AUTOMATA["markup"]) == [("TAG_NAME", "ATTR_VALUE")]
    assert equivalent_states(automata.AUTOMATA["kvlog"]) == []
    shell = load_automaton(sc.__path__[0] + "/../examples/automata/shell.json")
    assert equivalent_states(shell) == [("PROMPT", "PIPE"), ("CMD", "FLAG")]


def test_final_states_split_an_otherwise_equal_row():
    a = Automaton(
        "f", ("A", "B"), {"START": {"A": ("a",)}, "A": {"B": (" b",)}, "B": {"B": (" b",)}}, final=("B",)
    )
    assert equivalent_states(a) == []  # A may not end a document, B may


def test_scoring_with_equivalent_states_merged():
    a = automata.AUTOMATA["markup"]
    labels = [["OPEN", "TAG_NAME", "CLOSE", "TEXT", "END_OPEN", "END_TAG_NAME", "CLOSE"],
              ["OPEN", "TAG_NAME", "ATTR_NAME", "ATTR_EQ", "ATTR_VALUE", "CLOSE"]]  # fmt: skip
    merged, pairs = merge_equivalent(labels, a)
    assert merged[1][4] == merged[0][1] == "TAG_NAME+ATTR_VALUE" and merged[0][0] == "OPEN"
    assert ("TAG_NAME+ATTR_VALUE", "ATTR_NAME") in pairs and ("ATTR_EQ", "TAG_NAME+ATTR_VALUE") in pairs
    assert not any("START" in p for p in pairs)
    # one state firing on both TAG_NAME and ATTR_VALUE tokens: F1 0.8 as given (2 of its 3), 1.0 merged
    flat = [x for text in labels for x in text]
    firing = torch.tensor([[x in ("TAG_NAME", "ATTR_VALUE")] for x in flat])
    fsa = FeatureAutomaton(
        [State(0, [("blocks.0.hook_resid_post", 0)], "s", 0.3)], [], firing, torch.tensor([7, 6])
    )
    assert sc.score_automaton(fsa, labels, a).state_f1["TAG_NAME"] == pytest.approx(0.8)
    assert sc.score_automaton(fsa, labels, a, merge_equivalent=True).state_f1["TAG_NAME+ATTR_VALUE"] == 1.0
    with pytest.raises(ValueError, match="merge_equivalent=True needs the true automaton"):
        sc.score_automaton(fsa, labels, [("OPEN", "TAG_NAME")], merge_equivalent=True)


def test_names_and_spec_dicts_stand_for_the_automaton():
    markup = automata.AUTOMATA["markup"]
    assert equivalent_states("markup") == equivalent_states(markup.to_dict()) == equivalent_states(markup)
    labels = [["OPEN", "TAG_NAME", "CLOSE", "TEXT"]]
    firing = torch.tensor([[x == "TEXT"] for x in labels[0]])
    fsa = FeatureAutomaton(
        [State(0, [("blocks.0.hook_resid_post", 0)], "s", 0.3)], [], firing, torch.tensor([4])
    )
    by_name, by_object = sc.score_automaton(fsa, labels, "markup"), sc.score_automaton(fsa, labels, markup)
    assert by_name.state_f1 == by_object.state_f1 and by_name.state_f1["TEXT"] == 1.0
    with pytest.raises(ValueError, match="unknown automaton 'nope'"):
        sc.score_automaton(fsa, labels, "nope")


def test_a_merged_name_never_takes_a_state_of_the_spec():
    """A and B are equivalent; the spec also has a state called "A+B", which must stay apart."""
    spec = automata.Automaton(
        "plus", ("A", "B", "A+B", "C"),
        {"START": {"A": ("a",), "B": ("b",), "A+B": ("p",)}, "A": {"C": (" c",)}, "B": {"C": (" c",)},
         "A+B": {"A+B": (" p",), "C": (" q",)}, "C": {"A": (" a",), "B": (" b",)}},
    )  # fmt: skip
    assert equivalent_states(spec) == [("A", "B")]
    merged, pairs = merge_equivalent([["A", "A+B", "B", "C"]], spec)
    assert merged == [["(A+B)", "A+B", "(A+B)", "C"]]
    assert ("A+B", "A+B") in pairs and ("(A+B)", "C") in pairs and ("C", "(A+B)") in pairs
