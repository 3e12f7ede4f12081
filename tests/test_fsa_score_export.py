"""Automaton scores against ground truth (state F1, transition AUROC, the zoo's markup automaton)
and automaton files (lossless JSON, DOT, GraphML, the HTML view), cycles, atomic writes, errors."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_circuits.fsa import export
from sae_circuits.fsa.automaton import FeatureAutomaton, State, Transition
from sae_circuits.fsa.score import auroc, score_automaton
from sae_circuits.languages import automata

EVIL = "</script><script>alert(1)</script>"
TRICKY = 'tag "x"\nnew \\ line'


def fsa_from_firing(firing: list[list[int]] | torch.Tensor, transitions=(), lengths=None) -> FeatureAutomaton:
    firing = torch.as_tensor(firing, dtype=torch.bool)
    states = [State(i, [("blocks.0.hook_resid_post", i)], f"s{i}", float(firing[:, i].float().mean()))
              for i in range(firing.shape[1])]  # fmt: skip
    lengths = torch.tensor([firing.shape[0]] if lengths is None else lengths)
    return FeatureAutomaton(states, list(transitions), firing, lengths)


# --------------------------------------------------------------------------- state F1

# 12 tokens in two texts; None and START are unlabelled. Recovered state 0 fires on C, 1 on A,
# 2 on B, 3 is noise (on every third token).
LABELS = [["START", "A", "B", "C", "A", None], ["A", "B", "B", "C", "A", "C"]]
FLAT = [x for text in LABELS for x in text]
ONE_HOT = {"C": 0, "A": 1, "B": 2}


def exact_firing() -> torch.Tensor:
    firing = torch.zeros(len(FLAT), 4, dtype=torch.bool)
    for i, label in enumerate(FLAT):
        if label in ONE_HOT:
            firing[i, ONE_HOT[label]] = True
    firing[::3, 3] = True
    return firing


def test_exact_states_score_one():
    fsa = fsa_from_firing(exact_firing(), lengths=[6, 6])
    for labels in (LABELS, FLAT):  # per-text lists and the flat sequence agree
        score = score_automaton(fsa, labels, [("A", "B"), ("B", "C"), ("C", "A")])
        assert score.matches == ONE_HOT and score.state_f1 == {"A": 1.0, "B": 1.0, "C": 1.0}
        assert score.mean_f1 == 1.0 and score.n_labelled == 10 and score.note == ""


def test_degraded_state_f1_is_hand_computed():
    firing = exact_firing()
    a_tokens = [i for i, x in enumerate(FLAT) if x == "A"]  # 4 of them
    firing[a_tokens[0], 1] = False  # misses one A ...
    firing[FLAT.index("B"), 1] = True  # ... fires on one B ...
    firing[FLAT.index(None), 1] = True  # ... and on an unlabelled token, which does not count
    score = score_automaton(fsa_from_firing(firing), FLAT, [("A", "B")])
    # tp = 3, |fires on labelled| = 4, |A| = 4: F1 = 2 * 3 / (4 + 4)
    assert score.state_f1["A"] == pytest.approx(0.75) and score.matches == ONE_HOT
    assert score.mean_f1 == pytest.approx((0.75 + 1 + 1) / 3)


def test_never_fired_and_absent_states():
    firing = exact_firing()
    firing[:, 0] = False  # nothing fires on C any more (state 3's noise does hit a C token)
    firing[:, 3] = False
    score = score_automaton(fsa_from_firing(firing), FLAT, [("A", "B"), ("B", "Z")])
    assert score.state_f1["C"] == 0.0 and score.matches["C"] == -1
    assert math.isnan(score.state_f1["Z"]) and score.matches["Z"] == -1 and "'Z'" in score.note
    assert score.mean_f1 == pytest.approx(2 / 3) and score.n_pairs == 9  # Z's pairs are skipped


# --------------------------------------------------------------------------- transition AUROC

TRUE = [("A", "B"), ("B", "C"), ("C", "A")]


def fsa_with(weights: dict[tuple[str, str], float]) -> FeatureAutomaton:
    transitions = [Transition(ONE_HOT[a], ONE_HOT[b], "token", w) for (a, b), w in weights.items()]
    return fsa_from_firing(exact_firing(), transitions)


def test_transition_auroc():
    ranked = fsa_with({("A", "B"): 0.5, ("B", "C"): 0.3, ("C", "A"): 0.4, ("A", "C"): 0.1, ("B", "B"): 0.2})
    score = score_automaton(ranked, FLAT, TRUE)
    assert score.transition_auroc == 1.0 and (score.n_pairs, score.n_positive) == (9, 3)
    constant = fsa_with({pair: 0.2 for pair in itertools.product("ABC", repeat=2)})
    assert score_automaton(constant, FLAT, TRUE).transition_auroc == 0.5
    assert score_automaton(fsa_with({}), FLAT, TRUE).transition_auroc == 0.5
    # Positives 0.5, 0.2, 0 (C -> A missing); negatives A -> A 0.2 and five 0s.
    # Wins: 0.5 beats 6; 0.2 beats 5, ties 1; 0 ties 5. AUROC = (6 + 5.5 + 2.5) / 18.
    ties = fsa_with({("A", "B"): 0.5, ("B", "C"): 0.2, ("A", "A"): 0.2})
    assert score_automaton(ties, FLAT, TRUE).transition_auroc == pytest.approx(14 / 18)
    # Both mechanisms add up, as fsa.weight does (A -> C: 0.45 - 0.4); mechanism= picks one: then
    # A -> C (0.45) outranks the true B -> C (0.3) and C -> A (0.4): AUROC = (6 + 5 + 5) / 18.
    mixed = fsa_with({("A", "B"): 0.5, ("B", "C"): 0.3, ("C", "A"): 0.4, ("A", "C"): 0.45})
    mixed.transitions.append(Transition(ONE_HOT["A"], ONE_HOT["C"], "attention", -0.4))
    assert score_automaton(mixed, FLAT, TRUE).transition_auroc == 1.0
    assert score_automaton(mixed, FLAT, TRUE, mechanism="token").transition_auroc == pytest.approx(16 / 18)


def test_transition_auroc_undefined_for_one_class():
    score = score_automaton(fsa_with({}), FLAT, list(itertools.product("ABC", repeat=2)))
    assert (
        math.isnan(score.transition_auroc)
        and "all 9 pairs" in score.note
        and "true transitions" in score.note
    )
    assert math.isnan(auroc([0.1, 0.2], [False, False]))


def test_auroc_hand_computed():
    assert auroc([0.9, 0.5, 0.5, 0.1, 0.5], [1, 1, 0, 0, 0]) == pytest.approx(5 / 6)
    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([True, False, False])) == 1.0
    assert auroc([1.0, 2.0], [True, False]) == 0.0


def brute_force_auroc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([-1.0, 0.0, 0.25, 0.5, 2.0, 1e9]), st.booleans()), min_size=2, max_size=40
    )
)
def test_auroc_matches_pairwise_definition(pairs):
    scores, labels = zip(*pairs)
    if len(set(labels)) < 2:
        assert math.isnan(auroc(scores, labels))
    else:
        assert auroc(scores, labels) == pytest.approx(brute_force_auroc(scores, labels), abs=1e-12)


# --------------------------------------------------------------------------- the zoo's markup automaton


def test_markup_ground_truth_scores_perfectly():
    markup = automata.AUTOMATA["markup"]
    docs = automata.generate("markup", 20, seed=0)
    labels = [doc_states for _, doc_states in docs]
    flat = [x for text in labels for x in text]
    order = list(reversed(markup.states))  # recovered state i is true state order[i]: not the identity
    firing = torch.tensor([[x == s for s in order] for x in flat])
    table = [(a, b) for a, row in markup.transitions.items() if a != automata.START for b in row]
    transitions = [Transition(order.index(a), order.index(b), "token", 0.9) for a, b in table]
    fsa = fsa_from_firing(firing, transitions, lengths=[len(text) for text in labels])
    score = score_automaton(fsa, labels, markup)
    assert score.mean_f1 == 1.0 and score.transition_auroc == 1.0 and score.note == ""
    assert score.matches == {s: order.index(s) for s in markup.states}
    assert (score.n_pairs, score.n_positive) == (100, len(table))
    with pytest.raises(ValueError, match=r"not states of automaton 'kvlog'.*'TEXT'"):
        score_automaton(fsa, labels, automata.AUTOMATA["kvlog"])
    with pytest.raises(ValueError, match=r"not states of automaton 'kvlog'.*'TEXT'"):  # merged too
        score_automaton(fsa, labels, automata.AUTOMATA["kvlog"], merge_equivalent=True)


# --------------------------------------------------------------------------- score errors


def test_score_errors():
    fsa = fsa_from_firing(exact_firing(), lengths=[6, 6])
    with pytest.raises(ValueError, match=r"true_states has 11 labels but fsa\.firing has 12 tokens"):
        score_automaton(fsa, FLAT[:-1], TRUE)
    with pytest.raises(ValueError, match=r"true_states\[1\] has 5 labels but fsa\.lengths\[1\] is 6"):
        score_automaton(fsa, [LABELS[0], LABELS[1][:5]], TRUE)
    with pytest.raises(ValueError, match=r"no labelled tokens.*12 labels"):
        score_automaton(fsa, [None] * 6 + ["START"] * 6, TRUE)
    empty = FeatureAutomaton([], [], torch.zeros(12, 0, dtype=torch.bool), torch.tensor([12]))
    with pytest.raises(ValueError, match="empty automaton"):
        score_automaton(empty, FLAT, TRUE)
    with pytest.raises(ValueError, match=r"true_transitions\[0\] is 'AB'"):
        score_automaton(fsa, FLAT, ["AB"])


# --------------------------------------------------------------------------- a hand-built automaton to save

SITE = "blocks.1.hook_resid_post"
STATES = [
    State(0, [(SITE, 12), ("blocks.0.hook_mlp_out", 7)], '"<"', 0.125, 3.5),
    State(1, [(SITE, 3)], TRICKY, 0.1 + 0.2, 1.25),
    State(2, [(SITE, 40)], EVIL, 0.3, 2.0),
    State(3, [(SITE, 5)], "café ☃ bell\x07", 0.05, 0.5),
]
TRANSITIONS = [
    Transition(
        0,
        1,
        "attention",
        0.5,
        {"div": 3, "p": 1},
        effect=0.25,
        confirmed=True,
        effect_ci=(0.1, 0.4),
        effect_removed=0.375,
        effect_removed_ci=(0.125, 0.625),
        observed=True,
    ),
    Transition(1, 2, "token", 0.3, {">": 4, '"': 1}, effect=-0.01, confirmed=False, observed=False),
    Transition(2, 0, "attention", 0.4, {"<": 5, EVIL: 2}),
    Transition(2, 0, "token", 0.1, {"\n": 1}),
    Transition(1, 0, "token", 0.3, {}),
    Transition(3, 3, "token", 0.35, {"é": 2}),
    Transition(0, 3, "attention", 0.05, {}),
]


@pytest.fixture
def fsa() -> FeatureAutomaton:
    firing = torch.rand(37, 4, generator=torch.Generator().manual_seed(0)) < 0.3
    return FeatureAutomaton(
        STATES,
        TRANSITIONS,
        firing,
        torch.tensor([10, 27]),
        {"model": "tiny", "n": 3, "nested": {"a": [1, 2.5, None, True]}},
    )


def strict_loads(text: str):
    def no_constant(name: str):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=no_constant)


# --------------------------------------------------------------------------- cycles


def test_cycles_rank_by_weakest_edge(fsa):
    # [3] self-loop 0.35; [0, 1] weakest 0.3; [0, 1, 2] weakest 0.3 (2 -> 0 is 0.4 + 0.1): shorter first.
    assert fsa.cycles() == [([3], 0.35), ([0, 1], 0.3), ([0, 1, 2], 0.3)]
    assert fsa.cycles(min_weight=0.32) == [([3], 0.35)]
    assert fsa.cycles(max_length=2) == [([3], 0.35), ([0, 1], 0.3)]
    with pytest.raises(ValueError, match="max_length"):
        fsa.cycles(max_length=0)


def test_cycles_weigh_what_fsa_weight_gives_with_full_matrices():
    # extraction keeps a transition per mechanism only above min_weight; fsa.weights keeps all
    states = [State(i, [("x", i)], f"s{i}", 0.5) for i in range(3)]
    attention = torch.tensor([[0.0, 0.5, 0.0], [0.5, 0.0, 0.08], [0.0, 0.08, 0.0]])
    token = torch.tensor([[0.0, 0.05, 0.0], [0.05, 0.0, 0.08], [0.0, 0.08, 0.0]])
    kept = [Transition(0, 1, "attention", 0.5), Transition(1, 0, "attention", 0.5)]
    firing = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]] * 4, dtype=torch.bool)
    fsa = FeatureAutomaton(states, kept, firing, torch.tensor([12]),
                           weights={"attention": attention, "token": token})  # fmt: skip
    found = fsa.cycles(min_weight=0.1)
    assert [c for c, _ in found] == [[0, 1], [1, 2]]  # [1, 2]: 0.08 + 0.08 on each step
    for cycle, weight in found:
        assert weight == pytest.approx(min(fsa.weight(a, b) for a, b in zip(cycle, cycle[1:] + cycle[:1])))
    assert found[0][1] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="'tokens'"):
        fsa.weight(0, 1, "tokens")  # a misspelt mechanism used to weigh 0


def test_cycles_past_the_cap_are_the_strongest(monkeypatch):
    n = 5
    rng = np.random.default_rng(0)
    transitions = [Transition(a, b, "token", float(w))
                   for (a, b), w in zip(itertools.product(range(n), repeat=2), rng.permutation(n * n) + 1.0)]  # fmt: skip
    dense = fsa_from_firing(torch.zeros(3, n), transitions)
    everything = export.cycles(dense)
    assert len(everything) > 50
    monkeypatch.setattr(export, "MAX_CYCLES", 20)
    with pytest.warns(UserWarning, match="more than 20 cycles"):
        top = export.cycles(dense)
    assert 0 < len(top) <= 20 and top == everything[: len(top)]  # exactly the strongest ones
    assert everything[len(top)][1] < top[-1][1]


# --------------------------------------------------------------------------- JSON


def test_json_round_trip_is_exact(fsa, tmp_path):
    path = fsa.save(tmp_path / "a.json")
    text = path.read_text()
    assert text.isascii()
    raw = strict_loads(text)
    assert raw["format_version"] == export.FORMAT_VERSION and len(raw["firing"]["data"]) < 37 * 4
    back = FeatureAutomaton.load(path)
    assert back.states == fsa.states and back.transitions == fsa.transitions
    assert back.firing.dtype == torch.bool and torch.equal(back.firing, fsa.firing)
    assert back.lengths.dtype == torch.long and torch.equal(back.lengths, fsa.lengths)
    assert back.metadata == fsa.metadata and back.states[1].frequency == 0.1 + 0.2
    assert isinstance(back.states[0].members[0], tuple)
    assert back.transitions[0].effect_removed_ci == (0.125, 0.625)
    assert [t.observed for t in back.transitions[:3]] == [True, False, None]
    for row in raw["transitions"]:  # a file written before the necessity arm loads with None there
        del row["effect_removed"], row["effect_removed_ci"], row["observed"]
    (tmp_path / "old.json").write_text(json.dumps(raw))
    old = FeatureAutomaton.load(tmp_path / "old.json")
    assert old.transitions[0].effect_removed is None and old.transitions[0].effect == 0.25
    assert old.transitions[0].observed is None
    raw["transitions"][0]["observed"] = "yes"
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"transitions\[0\]\.observed"):
        FeatureAutomaton.load(tmp_path / "bad.json")


def test_json_round_trip_edge_cases(tmp_path):
    # No states (an empty firing matrix), an odd number of bits, non-finite floats.
    empty = FeatureAutomaton([], [], torch.zeros(5, 0, dtype=torch.bool), torch.tensor([5]))
    assert torch.equal(FeatureAutomaton.load(empty.save(tmp_path / "e.json")).firing, empty.firing)
    odd = fsa_from_firing(torch.rand(13, 3, generator=torch.Generator().manual_seed(1)) < 0.5,
                          [Transition(0, 1, "token", math.inf, effect=math.nan)])  # fmt: skip
    back = FeatureAutomaton.load(odd.save(tmp_path / "o.json"))
    assert torch.equal(back.firing, odd.firing) and back.transitions[0].weight == math.inf
    assert math.isnan(back.transitions[0].effect)


def test_json_errors(fsa, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        FeatureAutomaton.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"'\.dot' is a view"):
        FeatureAutomaton.load(fsa.save(tmp_path / "a.dot"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        FeatureAutomaton.load(tmp_path / "broken.json")
    raw = strict_loads(export.to_json(fsa))
    del raw["transitions"][1]["mechanism"]
    (tmp_path / "nokey.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"nokey\.json.*missing key 'transitions\[1\]\.mechanism'"):
        FeatureAutomaton.load(tmp_path / "nokey.json")
    raw = strict_loads(export.to_json(fsa))
    raw["firing"]["data"] = raw["firing"]["data"][:-8]
    (tmp_path / "corrupt.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="firing.data is corrupt"):
        FeatureAutomaton.load(tmp_path / "corrupt.json")
    bad = FeatureAutomaton(STATES, TRANSITIONS, fsa.firing, fsa.lengths, {"tensor": torch.zeros(1)})
    with pytest.raises(TypeError, match="metadata value .* Tensor"):
        bad.save(tmp_path / "bad.json")


def _zipped(data: bytes) -> str:
    import base64
    import zlib

    return base64.b64encode(zlib.compress(data, 9)).decode("ascii")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(format_version=True), "version True is not supported"),
        (lambda r: r["states"][1].update(label=7), r"states\[1\]\.label is 7; expected a string"),
        (lambda r: r["states"][1].update(id=0), r"states\[\*\]\.id is \[0\]; expected distinct ids"),
        (lambda r: r["states"][1].update(id=0.9), r"states\[1\]\.id is 0\.9; expected an integer"),
        (lambda r: r["states"][0].update(frequency=True), r"states\[0\]\.frequency is True; expected a number"),
        (lambda r: r["states"][0].update(pin_values="12"), r"states\[0\]\.pin_values is '12'; expected a list"),
        (lambda r: r["states"][0].update(pin_values=[1.0]), r"pin_values is \[1\.0\]; expected one value per member"),
        (lambda r: r["states"][0].update(members=[["x"]]), r"members\[0\] is \['x'\]; expected \[site, feature"),
        (lambda r: r["transitions"][0].update(dst=999), r"transitions\[0\]\.dst is 999; expected the id of one"),
        (lambda r: r["transitions"][0].update(src=1.5), r"transitions\[0\]\.src is 1\.5; expected an integer"),
        (lambda r: r["transitions"][0].update(confirmed=1), r"confirmed is 1; expected true, false or null"),
        (lambda r: r["transitions"][0].update(tokens=[1]), r"tokens is \[1\]; expected an object"),
        (lambda r: r["transitions"][0].update(tokens={"a": 2.9}), r"tokens\['a'\] is 2\.9; expected an integer"),
        (lambda r: r["transitions"][0].update(weight=None), r"weight is None; expected a number"),
        (lambda r: r.update(lengths=[10, -27]), r"lengths is -27; expected an integer >= 0"),
        (lambda r: r.update(lengths=[[1]]), r"lengths is \[1\]; expected an integer"),
        (lambda r: r.update(lengths=[10, 10]), r"firing\.shape is \[37, 4\]; expected \[sum\(lengths\), states\]"),
        (lambda r: r.update(metadata=[1]), r"metadata is \[1\]; expected an object"),
        (lambda r: r.update(tokens=[1, 2]), r"tokens is '2 ids'; expected one per firing row \(37\)"),
        (lambda r: r.update(weights={"bogus": {}}), r"weights is \['bogus'\]; expected mechanisms among"),
        (lambda r: r.update(weights={"token": {"shape": [4, 64], "data": _zipped(bytes(8 * 256))}}),
         r"weights\['token'\] is corrupt \(shape \[4, 64\], expected \[4, 4\]"),
        (lambda r: r["firing"].update(data=_zipped(bytes(200_000_000))), r"firing\.data is corrupt \(it inflates past the 19 bytes"),
        (lambda r: r.update(weights={"token": {"shape": [4, 4], "data": _zipped(bytes(10**8))}}),
         r"weights\['token'\] is corrupt \(it inflates past the 128 bytes"),
    ],
)  # fmt: skip
def test_a_file_that_does_not_fit_together_is_refused_naming_the_key(fsa, tmp_path, edit, message):
    """Wrong types, ids that do not exist, parts of the wrong shape, and compressed data that would
    inflate far past its shape (a small file, hundreds of MB) are refused before they are built."""
    raw = strict_loads(export.to_json(fsa))
    edit(raw)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"edited.json: .*{message}"):
        FeatureAutomaton.load(path)


def test_states_are_found_by_id_not_by_position(fsa):
    shifted = FeatureAutomaton(
        [State(s.id + 100, s.members, s.label, s.frequency, s.max_activation) for s in STATES],
        [], fsa.firing, fsa.lengths,
    )  # fmt: skip
    assert shifted.state(103).label == STATES[3].label
    with pytest.raises(KeyError, match="no state has id 3"):
        shifted.state(3)


# --------------------------------------------------------------------------- DOT, GraphML


def test_dot_escapes_and_styles(fsa, tmp_path):
    text = fsa.save(tmp_path / "a.dot").read_text(encoding="utf-8")
    assert text.startswith("digraph automaton {") and text.rstrip().endswith("}")
    quoted = r'"(?:[^"\\]|\\.)*"'
    bare = re.sub(quoted, "S", text)
    assert '"' not in bare and bare.count("{") == bare.count("}") == 1  # every string closed
    nodes = re.findall(rf"^  \"s(\d+)\" \[label=({quoted}), tooltip=({quoted})\];$", text, flags=re.MULTILINE)
    assert [int(i) for i, _, _ in nodes] == [0, 1, 2, 3]
    assert r"1: tag \"x\"\nnew \\ line\n30.00% of tokens" in nodes[1][1]
    assert "\x07" not in text and r"bell\\x07" in nodes[3][1]
    assert nodes[0][2] == '"blocks.1.hook_resid_post#12,blocks.0.hook_mlp_out#7"'
    edges = re.findall(r'^  "s(\d+)" -> "s(\d+)" \[(.*)\];$', text, flags=re.MULTILINE)
    assert len(edges) == len(TRANSITIONS)
    for (src, dst, attrs), t in zip(edges, TRANSITIONS):
        assert (int(src), int(dst)) == (t.src, t.dst) and f'transition_weight="{t.weight!r}"' in attrs
        assert f'color="{"#1f77b4" if t.mechanism == "attention" else "#ff7f0e"}"' in attrs
        style = {True: "style=solid", False: "style=dashed", None: "style="}[t.confirmed]
        assert (style in attrs) == (t.confirmed is not None)
    assert r'label="\"div\" \"p\""' in edges[0][2] and "penwidth=4.000" in edges[0][2]


def test_a_hostile_mechanism_stays_inside_its_dot_string(fsa, tmp_path):
    # Transition() accepts any string; the DOT writer had put it between quotes unescaped
    evil = 'tok"];\n evil [label="x'
    bad = FeatureAutomaton(fsa.states, [Transition(0, 1, evil, 0.5)], fsa.firing, fsa.lengths)  # type: ignore[arg-type]
    text = bad.save(tmp_path / "bad.dot").read_text(encoding="utf-8")
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "S", text)
    assert '"' not in bare and "evil [" not in bare and len(re.findall(r" -> ", text)) == 1


def test_graphml_reads_back(fsa, tmp_path):
    path = fsa.save(tmp_path / "a.graphml")
    assert path.read_bytes().isascii()
    graph = nx.read_graphml(path)
    assert graph.number_of_nodes() == 4 and graph.number_of_edges() == 6  # 2 -> 0 merges two mechanisms
    assert graph.nodes["2"]["label"] == EVIL and graph.nodes["3"]["label"] == "café ☃ bell\\x07"
    assert graph.nodes["0"]["members"] == "blocks.1.hook_resid_post#12,blocks.0.hook_mlp_out#7"
    merged = graph.edges["2", "0"]
    assert merged["weight"] == pytest.approx(0.5) and merged["mechanism"] == "both"
    assert (merged["attention_weight"], merged["token_weight"]) == (0.4, 0.1)
    assert math.isnan(merged["effect"]) and merged["confirmed"] == ""
    assert merged["tokens"] == json.dumps("<") + " " + json.dumps(EVIL) + " " + json.dumps("\n")
    assert graph.edges["0", "1"]["confirmed"] == "true" and graph.edges["1", "2"]["confirmed"] == "false"
    assert graph.edges["0", "1"]["effect"] == 0.25 and graph.edges["0", "1"]["effect_removed"] == 0.375
    assert math.isnan(merged["effect_removed"])


# --------------------------------------------------------------------------- HTML


def _html_data(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="fsa-data">(.*?)</script>', html, flags=re.DOTALL)
    assert match
    return strict_loads(match.group(1))


def test_html_is_self_contained_and_injection_safe(fsa, tmp_path):
    html = fsa.save(tmp_path / "a.html").read_text()
    assert html.isascii() and "default-src 'none'" in html and "innerHTML" not in html
    assert html.count("<script") == 2 and html.count("</script>") == 2  # ours only: EVIL is inert data
    assert "alert(1)</script>" not in html and "</script><script>" not in html and "<!--" not in html
    assert "http://" not in html and "https://" not in html and not re.search(r"(src|href)\s*=", html)
    data = _html_data(html)
    assert [s["label"] for s in data["states"]] == [s.label for s in STATES]
    assert len(data["transitions"]) == len(TRANSITIONS)
    assert data["loops"] == [[loop.states, loop.score] for loop in fsa.loops(10)] and data["loops"]
    assert data["cycles"] == []  # the raw cycles only where loops cannot be ranked (seconds on 256 states)
    fsa.firing = torch.zeros_like(fsa.firing)  # no firing to rank loops by: the strongest cycles instead
    data = _html_data(fsa.save(tmp_path / "b.html").read_text())
    assert data["loops"] == [] and data["cycles"][0] == [[3], 0.35]


def _run_page(fsa, tmp_path) -> dict:
    """Run the page's script under node on a stub DOM; what it drew."""
    html = fsa.save(tmp_path / "a.html").read_text()
    data = html.split('id="fsa-data">')[1].split("</script>")[0]
    script = html.split("<script>")[1].split("</script>")[0]
    stub = """
class El { constructor(tag) { this.tag = tag; this.children = []; this.attrs = {}; this.textContent = ""; }
  setAttribute(k, v) { this.attrs[k] = v; } appendChild(c) { this.children.push(c); } }
const root = new El("svg"); root.namespaceURI = "svg-ns";
const elements = {"fsa-data": {textContent: DATA}, "graph": root, "summary": new El("p"), "cycles": new El("ol")};
globalThis.document = {getElementById: id => elements[id], createElementNS: (ns, tag) => new El(tag), title: ""};
"""
    walk = """
const all = []; (function visit(e) { all.push(e); e.children.forEach(visit); })(root);
const paths = all.filter(e => e.tag === "path" && e.attrs["marker-end"]);
console.log(JSON.stringify({circle: all.filter(e => e.tag === "circle").length, paths: paths.length,
  widths: paths.map(e => Number(e.attrs["stroke-width"])), dashed: paths.map(e => "stroke-dasharray" in e.attrs),
  hot: all.filter(e => e.attrs.class === "hot").length, bad: paths.filter(e => /NaN|undefined/.test(e.attrs.d)).length,
  titles: all.filter(e => e.tag === "title").map(e => e.textContent),
  cycles: elements.cycles.children.map(e => e.textContent), summary: elements.summary.textContent}));
"""
    (tmp_path / "run.js").write_text(stub.replace("DATA", json.dumps(data)) + script + walk)
    out = subprocess.run(
        ["node", str(tmp_path / "run.js")], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node.js")
def test_html_script_builds_the_svg(fsa, tmp_path):
    """With no firing to rank loops by, the page highlights and lists the raw strongest cycles."""
    fsa.firing = torch.zeros_like(fsa.firing)
    result = _run_page(fsa, tmp_path)
    assert (result["circle"], result["paths"], result["bad"], result["hot"]) == (4, len(TRANSITIONS), 0, 1)
    assert result["dashed"] == [t.confirmed is False for t in TRANSITIONS]
    assert result["widths"][5] == max(result["widths"])  # the self-loop [3] is the strongest cycle
    assert any(t.startswith(f"state 2: {EVIL}\n") for t in result["titles"])
    assert result["cycles"][0].startswith("3 café") and result["summary"] == repr(fsa)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node.js")
def test_html_page_highlights_the_first_loop(fsa, tmp_path):
    first = fsa.loops(10)[0]
    result = _run_page(fsa, tmp_path)
    assert result["hot"] == len(set(first.states))
    assert result["cycles"][0].startswith(f"{first.states[0]} ") and "(score " in result["cycles"][0]
    assert len(result["cycles"]) == len(fsa.loops(10))


# --------------------------------------------------------------------------- atomicity and errors


def test_failed_writes_leave_the_old_file(fsa, tmp_path, monkeypatch, full_disk):
    path = tmp_path / "a.json"
    path.write_text("old")
    full_disk()
    with pytest.raises(OSError, match="disk full"):
        fsa.save(path)
    monkeypatch.undo()
    monkeypatch.setattr(export.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        fsa.save(path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_unsupported_suffix(fsa, tmp_path):
    with pytest.raises(ValueError, match=r"'\.txt'.*\.json, \.graphml, \.dot, \.html"):
        fsa.save(tmp_path / "a.txt")
    assert not (tmp_path / "a.txt").exists()


def test_html_shows_bidi_controls_as_visible_escapes(tmp_path):
    spoof = "evil\u202egnp.exe"  # would display as "evilexe.png"
    states = [
        State(0, [(SITE, 12)], spoof, 0.5, 1.0),
        State(1, [(SITE, 3)], "\u2066x\u2069\u200f\u061c", 0.2, 1.0),
    ]
    transitions = [Transition(0, 1, "token", 0.5, {"\u202b<": 3})]
    firing = torch.rand(10, 2, generator=torch.Generator().manual_seed(0)) < 0.5
    automaton = FeatureAutomaton(states, transitions, firing, torch.tensor([10]), {"model": "tiny"})
    html = automaton.save(tmp_path / "a.html").read_text()
    assert html.isascii()  # no raw bidi control (nor anything else outside ASCII) in the page ...
    data = _html_data(html)
    # ... and the controls are shown as text: a backslash, "u" and the code point
    assert [s["label"] for s in data["states"]] == ["evil\\u202egnp.exe", "\\u2066x\\u2069\\u200f\\u061c"]
    assert data["transitions"][0]["tokens"] == '"\\u202b<"'
    assert FeatureAutomaton.load(automaton.save(tmp_path / "a.json")).states[0].label == spoof  # data kept


def test_a_state_named_start_is_scored_when_the_automaton_lists_it():
    # START is a real state here, entered again after every ' b': its tokens are labelled, not ignored
    truth = automata.Automaton("again", ("A", "START"), {"START": {"A": ("a",)}, "A": {"START": (" b",)}})
    firing = torch.tensor([[True, False], [False, True]] * 3)
    states = [State(i, [("blocks.0.hook_resid_post", i)], name, 0.5) for i, name in enumerate(["a", " b"])]
    transitions = [Transition(0, 1, "token", 0.9), Transition(1, 0, "token", 0.8)]
    fsa = FeatureAutomaton(states, transitions, firing, torch.tensor([6]))
    score = score_automaton(fsa, [["A", "START"] * 3], truth)
    assert (score.n_labelled, score.n_pairs, score.n_positive) == (6, 4, 2)
    assert score.state_f1 == {"A": 1.0, "START": 1.0} and score.transition_auroc == 1.0
    assert "carries" not in score.note and "steps of 0.25" in score.note  # 2 x 2 pairs: coarse
    # with label pairs only (no automaton to say otherwise), "START" still marks a token to ignore
    pairs = score_automaton(fsa, [["A", "START"] * 3], [("A", "A")])
    assert pairs.n_labelled == 3 and set(pairs.state_f1) == {"A"}


def test_an_auroc_on_a_handful_of_pairs_says_how_coarse_it_is():
    # a 2-state language: A -> A, A -> B, B -> A true, B -> B the one non-transition
    firing = torch.tensor([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1]] * 3, dtype=torch.bool)
    labels = ["A", "B", "A", "A", "B"] * 3
    fsa = fsa_from_firing(firing, [Transition(0, 1, "token", 0.9), Transition(1, 0, "token", 0.8)])
    score = score_automaton(fsa, labels, [("A", "A"), ("A", "B"), ("B", "A")])
    assert score.n_pairs == 4 and score.n_positive == 3
    assert "rests on 3 true transitions and 1 non-transitions: it moves in steps of 0.333" in score.note
