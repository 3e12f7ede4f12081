"""Bad input to the automaton API after extraction, from a fuzzing helper's findings: each fails
up front naming the value (it crashed deep inside, or was accepted and read wrongly), and the
one-window check gives a NaN interval instead of dividing by zero."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import sae_circuits as sc
from sae_circuits.languages import corpus_texts
from sae_circuits.positions import MAX_SEED


@pytest.fixture(scope="module")
def setup():
    model = sc.zoo.load_model("tiny")
    saes = sc.zoo.load_saes("tiny", kind="resid")
    texts, labels = corpus_texts("markup", 6, 48, seed=1)
    with sc.spliced(model, saes):
        fsa = sc.automaton(model, texts, max_states=8, attention_contexts=1, effect_contexts=2,
                           effect_positions=4, progress=False)  # fmt: skip
    return model, saes, texts, labels, fsa


def _small(**changes):
    return {"max_states": 8, "attention_contexts": 1, "effect_contexts": 2, "effect_positions": 4,
            "progress": False, **changes}  # fmt: skip


@pytest.mark.filterwarnings("ignore:state .* is off at only")
def test_a_source_with_one_window_gives_a_nan_interval_not_a_crash(setup):
    model, saes, texts, _, _ = setup
    with sc.spliced(model, saes):
        fsa = sc.automaton(model, texts[:1], **_small())  # one text: a window of 48 ends only at its end
        (check,) = sc.check_pairs(fsa, model, [(0, 1)], n_prompts=4, context=48, samples=2, progress=False)
    assert all(math.isnan(x) for x in check.greedy.ci) and not check.pin_confirmed


def test_seeds_beyond_torchs_64_bits_are_refused_by_name(setup):
    model, saes, texts, _, fsa = setup
    with sc.spliced(model, saes):
        with pytest.raises(ValueError, match=rf"seed={2**62}.*\[0, {MAX_SEED}\]"):
            sc.check_pairs(fsa, model, [(0, 1)], seed=2**62, progress=False)
        with pytest.raises(ValueError, match=rf"seed={2**64}.*\[0, {MAX_SEED}\]"):
            sc.automaton(model, texts, **_small(seed=2**64))
    with pytest.raises(ValueError, match=rf"seed={2**64}"):
        sc.random_like(saes[0], seed=2**64)
    sc.random_like(saes[0], seed=MAX_SEED)  # the bound itself is a seed


def test_automaton_flags_and_numbers_of_the_wrong_type(setup):
    model, saes, texts, _, _ = setup
    with sc.spliced(model, saes):
        for name in ("grouping", "progress", "prepend_bos"):  # "no" would have read as True
            with pytest.raises(TypeError, match=f"{name}='no' must be True or False"):
                sc.automaton(model, texts, **_small(**{name: "no"}))
        with pytest.raises(ValueError, match="min_frequency='0.1' must be a number"):
            sc.automaton(model, texts, **_small(min_frequency="0.1"))


def test_scores_refuse_what_is_not_an_automaton_nan_labels_and_bad_loops(setup):
    *_, labels, fsa = setup
    for bad in ("fsa.json", None):
        with pytest.raises(TypeError, match="expected a FeatureAutomaton"):
            sc.score_automaton(bad, labels, "markup")
        with pytest.raises(TypeError, match="expected a FeatureAutomaton"):
            sc.score_loops(bad, [[0]], labels, "markup")
    nan = [[float("nan")] * len(row) for row in labels]  # pandas' missing value: no state
    with pytest.raises(ValueError, match="NaN label at token 0: mark a token to ignore with None"):
        sc.score_automaton(fsa, nan, [(1, 2)])
    for loops, shown in (([[]], r"\[\]"), ([[0, 99]], r"\[0, 99\]"), ([3], "3")):
        with pytest.raises(ValueError, match=rf"loops\[0\] is {shown}: expected a Loop"):
            sc.score_loops(fsa, loops, labels, "markup")


def test_unknown_ids_weights_and_an_automaton_without_states(setup):
    model, saes, _, _, fsa = setup
    with pytest.raises(KeyError, match="no state has id 99"):
        fsa.weight(0, 99)
    for bad in ("0.1", math.nan):
        with pytest.raises(ValueError, match="min_weight=.* must be a number"):
            fsa.cycles(min_weight=bad)
    empty = dataclasses.replace(fsa, states=[], transitions=[], firing=fsa.firing[:, :0], weights={})
    outside = dataclasses.replace(fsa, tokens=torch.full_like(fsa.tokens, 10**6))  # a hand-edited file
    with sc.spliced(model, saes):
        with pytest.raises(ValueError, match="no states to check"):
            sc.check_pairs(empty, model, [(0, 1)], progress=False)
        with pytest.raises(ValueError, match=r"fsa.tokens .*1000000..1000000 fall outside .*\(0..4095\)"):
            sc.check_pairs(outside, model, [(0, 1)], progress=False)


def test_random_like_refuses_tokens_the_model_cannot_read(setup):
    model, saes, *_ = setup
    for tokens, message in [
        (torch.full((4, 60), -3), r"-3..-3 fall outside"),  # -3 would have read as token 4093
        (torch.full((4, 60), 10**6), "fall outside"),
        (torch.zeros(1, 600, dtype=torch.long), "rows of 600 tokens; the model's context is 512"),
    ]:
        with pytest.raises(ValueError, match=message):
            sc.random_like(saes[0], model, tokens)


def test_cli_refuses_a_bad_min_weight_before_the_work(tmp_path, capsys):
    from sae_circuits.cli import main

    out = tmp_path / "f.json"
    for value in ("2", "nan"):
        assert main(["automaton", "--corpus", "kvlog", "--min-weight", value, "--out", str(out)]) == 2
        assert f"--min-weight {float(value)}: expected a number in [0, 1]" in capsys.readouterr().err
    assert not out.exists()


def test_loading_a_folder_named_json_says_it_is_a_folder(tmp_path):
    (tmp_path / "fsa.json").mkdir()
    with pytest.raises(IsADirectoryError, match="'.*fsa.json' is a folder, not a file saved as .json"):
        sc.FeatureAutomaton.load(tmp_path / "fsa.json")
