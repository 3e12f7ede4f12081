"""Automaton extraction on the embedded model: layout, the documented token-transition weight
recomputed by brute force, recovered states against the markup automaton's true states, errors."""

from __future__ import annotations

import pytest
import torch

import sae_circuits as sc
from sae_circuits.fsa import FeatureAutomaton, automaton, score_automaton
from sae_circuits.languages import automata

STATES = 256


@pytest.fixture(scope="module")
def markup():
    docs = automata.generate("markup", 60, seed=11)
    return ["".join(symbols[:64]) for symbols, _ in docs], [states[:64] for _, states in docs]


@pytest.fixture(scope="module")
def extracted(markup):
    model = sc.zoo.load_model("tiny")
    sc.splice(model, sc.zoo.load_saes("tiny", kind="resid"))
    fsa = automaton(model, markup[0], max_states=STATES, attention_contexts=2, progress=False)
    return model, fsa


def test_layout_and_weights(extracted, markup):
    _, fsa = extracted
    labels = markup[1]
    assert isinstance(fsa, FeatureAutomaton) and len(fsa.states) == STATES
    assert fsa.lengths.tolist() == [len(row) for row in labels]  # BOS is not a scored token
    assert fsa.firing.shape == (sum(map(len, labels)), STATES)
    for state in fsa.states:
        assert state.frequency == pytest.approx(float(fsa.firing[:, state.id].float().mean()))
        assert state.members and state.max_activation > 0
    for mechanism in ("token", "attention"):
        w = fsa.weights[mechanism]
        assert w.shape == (STATES, STATES) and float(w.min()) >= 0 and float(w.max()) <= 1 + 1e-9
    assert all(t.weight >= fsa.metadata["min_weight"] for t in fsa.transitions)


def test_token_weight_is_the_documented_sum(extracted, markup):
    """w(A -> B) = sum_x q_A(x) P(B fires at t+1 | A at t, x at t+1), with P(B | x) for a token that
    never follows A; q_A = A's measured promotion of the next token, normalised.
    The sum is recomputed here by brute force over the corpus positions."""
    from sae_circuits.fsa import effects, extract

    model, fsa = extracted
    meta = fsa.metadata
    corpus = extract._Corpus(model, markup[0], None, progress=False)
    members = [
        [corpus.feature_offset(corpus.sites.index(site)) + i for site, i in s.members] for s in fsa.states
    ]
    pins = {m: v for s, group in zip(fsa.states, members) for m, v in zip(group, s.pin_values)}
    effect = effects.promoted_tokens(
        corpus, members, fsa.firing, pins, how=meta["effect"], contexts=meta["effect_contexts"],
        per_state=meta["effect_positions"], seed=meta["seed"],
    )  # fmt: skip
    a, b = divmod(int(fsa.weights["token"].argmax()), STATES)
    q = effect[a].clamp_min(0) / effect[a].clamp_min(0).sum()
    fire, tokens = fsa.firing, corpus.tokens
    ends = fsa.lengths.cumsum(0) - 1
    after_a = [t + 1 for t in fire[:, a].nonzero().squeeze(-1).tolist() if t not in set(ends.tolist())]
    expected = 0.0
    for col, x in enumerate(corpus.vocab.tolist()):
        following = [t for t in after_a if int(tokens[t]) == x]
        if following:
            p_b = sum(bool(fire[t, b]) for t in following) / len(following)
        else:
            p_b = float(fire[tokens == x, b].double().mean())
        expected += float(q[col]) * p_b
    assert fsa.weight(a, b, "token") == pytest.approx(expected, rel=1e-6)


def test_the_effect_settings_pin_by_default_and_both_is_the_geometric_mean(extracted, markup):
    """``effect="pin"`` by default; ``"both"`` is the geometric mean of the removal's and the
    pinning's promotions, each normalised over tokens, so a token only one of them raises gets 0."""
    from sae_circuits.fsa import effects, extract

    model, fsa = extracted
    assert fsa.metadata["effect"] == "pin" and fsa.metadata["exclusive"] is True
    corpus = extract._Corpus(model, markup[0], None, progress=False)
    members = [
        [corpus.feature_offset(corpus.sites.index(site)) + i for site, i in s.members]
        for s in fsa.states[:12]
    ]
    pins = {m: v for s, group in zip(fsa.states, members) for m, v in zip(group, s.pin_values)}
    fire = fsa.firing[:, :12]
    kw = dict(contexts=8, per_state=8, seed=0)
    by = {
        how: effects.promoted_tokens(corpus, members, fire, pins, how=how, **kw)
        for how in ("pin", "remove", "both")
    }
    assert torch.equal(effects.promoted_tokens(corpus, members, fire, pins, **kw), by["pin"])
    normalised = {h: by[h] / by[h].sum(1, keepdim=True).clamp_min(1e-12) for h in ("pin", "remove")}
    assert torch.allclose(by["both"], (normalised["pin"] * normalised["remove"]).sqrt(), atol=1e-7)
    assert bool(((by["pin"] > 0) & (by["remove"] == 0)).any())  # a token only the pin raises ...
    assert bool((by["both"][(by["pin"] > 0) & (by["remove"] == 0)] == 0).all())  # ... weighs 0 in "both"
    with pytest.raises(ValueError, match="how='sum'"):
        effects.promoted_tokens(corpus, members, fire, pins, how="sum", **kw)


def test_recovered_states_match_the_markup_automaton(extracted, markup):
    _, fsa = extracted
    score = score_automaton(fsa, markup[1], automata.AUTOMATA["markup"])
    assert score.mean_f1 > 0.8, score.state_f1
    assert score.transition_auroc > 0.75


def test_json_round_trip_keeps_the_weights(extracted, tmp_path):
    _, fsa = extracted
    back = FeatureAutomaton.load(fsa.save(tmp_path / "fsa.json"))
    assert torch.equal(back.firing, fsa.firing) and back.weights.keys() == fsa.weights.keys()
    assert all(torch.equal(back.weights[m], fsa.weights[m]) for m in fsa.weights)
    assert [(t.src, t.dst, t.mechanism, t.weight, t.tokens) for t in back.transitions] == [
        (t.src, t.dst, t.mechanism, t.weight, t.tokens) for t in fsa.transitions
    ]


def test_bad_input_gets_a_clear_error(model, markup):
    with pytest.raises(ValueError, match="no SAE or transcoder is spliced"):
        automaton(model, ["<p>"])
    from tests.conftest import random_sae

    with sc.spliced(model, [random_sae()]):
        with pytest.raises(ValueError, match="non-empty list"):
            automaton(model, [])
        with pytest.raises(ValueError, match="text 1 is empty"):
            automaton(model, ["<p>", ""])
        with pytest.raises(ValueError, match="more than the model's context of 128"):
            automaton(model, ["<p>", " x" * 200])
        with pytest.raises(ValueError, match="max_states=0"):
            automaton(model, ["<p>"], max_states=0)
        with pytest.raises(TypeError, match="exclusive='yes' must be True or False"):
            automaton(model, ["<p>"], exclusive="yes")
        row = model.to_tokens("<p>hi</p>", prepend_bos=False)[0]
        for texts, message in (
            (row, r"texts as a tensor must be \[n_texts, tokens\]"),  # was one text per token
            (row[None, None], r"texts as a tensor must be \[n_texts, tokens\]"),
            (
                [row.float()],
                r"text 0: expected a string or a 1-D row of integer token ids, got torch.float32",
            ),
            ([row > 0], "got torch.bool"),
            ([[3, -1]], r"text 0: token ids must lie in \[0, \d+\), got \[-1, 3\]"),
            ([[10**6]], r"token ids must lie in"),
        ):
            with pytest.raises(ValueError, match=message):
                automaton(model, texts)


def test_token_counts_add_up_over_ids_that_decode_alike(model):
    """The 128 byte tokens all decode to U+FFFD: a transition's count for that string is the sum over
    them (it kept the last id's count, and several ids took top slots under one key)."""
    from sae_circuits.fsa.extract import _label_tokens

    class Corpus:
        vocab = torch.tensor([28, 95, 96, 97])  # "<" and three byte tokens (each U+FFFD), sorted
        tokens = torch.tensor([28, 95, 28, 96, 28, 97, 28, 95])

        def next_mask(self):
            return torch.arange(8) < 7

    corpus = Corpus()
    corpus.model = model
    fire = torch.zeros(8, 2, dtype=torch.bool)
    fire[[0, 2, 4, 6], 0] = True  # state 0 on '<', state 1 on what follows
    fire[[1, 3, 5, 7], 1] = True
    transition = sc.fsa.Transition(0, 1, "token", 1.0)
    _label_tokens(corpus, [transition], fire, top=5)
    assert transition.tokens == {"\ufffd": 4}


def test_validate_pins_sources_and_stores_effects(extracted):
    model, fsa = extracted
    checked = sorted(fsa.transitions, key=lambda t: -t.weight)[:3]
    fsa.validate(model, transitions=checked, n_prompts=6, progress=False)
    for t in checked:
        assert -1 <= t.effect <= 1 and isinstance(t.confirmed, bool)
        removed = t.effect_removed is not None and t.effect_removed > 0
        assert t.confirmed == ((t.effect > 0 or removed) and t.confirmed)  # never without a positive effect
    assert fsa.metadata["validation"]["n_prompts"] == 6
    assert all(t.effect is None for t in fsa.transitions if t not in checked)
    from sae_circuits.fsa.validate import _one_sided_p

    assert _one_sided_p(torch.tensor([0.5, 0.6, 0.4, 0.5])) < 1e-3 and _one_sided_p(
        torch.tensor([0.1, -0.1])
    ) == pytest.approx(0.5)
