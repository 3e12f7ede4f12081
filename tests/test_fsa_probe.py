"""The linear state probe (sae_circuits.fsa.probe): it reads the true states where the model
carries them, not shuffled labels; it is deterministic, leaves no global state behind, and refuses
bad input with a clear message."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

import sae_circuits as sc
from sae_circuits.fsa import automaton, probe_states
from sae_circuits.fsa import probe as probe_module
from sae_circuits.languages import automata, corpus_texts

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def extracted():
    texts, labels = corpus_texts("markup", 24, 48, seed=5)
    model = sc.zoo.load_model("tiny")
    with sc.spliced(model, sc.zoo.load_saes("tiny", kind="resid")):
        fsa = automaton(model, texts, max_states=16, attention_contexts=0, effect_contexts=2,
                        effect_positions=4, progress=False)  # fmt: skip
    return model, fsa, labels


def test_reads_true_states_and_not_shuffled_labels(extracted):
    model, fsa, labels = extracted
    probe = probe_states(fsa, model, labels)
    assert list(probe.sites) == [f"blocks.{layer}.hook_resid_post" for layer in range(4)]
    site = probe.sites[SITE]
    assert site.mean_f1 > 0.9 and site.accuracy > 0.9
    flat = [x for text in labels for x in text]
    assert site.n_train + site.n_test == len(flat) and site.n_test > 0
    assert 0.15 < site.n_test / len(flat) < 0.35  # the last quarter of the texts
    shuffled = flat[:]
    random.Random(0).shuffle(shuffled)  # the same label counts, no relation to the tokens
    chance = probe_states(fsa, model, shuffled, sites=[SITE]).sites[SITE]
    assert chance.mean_f1 < 0.5 * site.mean_f1
    assert probe.best_mean_f1 == max(s.mean_f1 for s in probe.sites.values())
    assert probe.sites[probe.best_site].mean_f1 == probe.best_mean_f1


@pytest.mark.parametrize("bos", [False, True])
def test_activations_are_each_texts_own_with_bos_and_several_batches(bos):
    texts, _ = corpus_texts("kvlog", 7, 40, seed=2)
    model = sc.zoo.load_model("tiny")
    with sc.spliced(model, sc.zoo.load_saes("tiny", kind="resid")[:1]):
        fsa = automaton(model, texts, max_states=8, attention_contexts=0, effect_contexts=2, effect_positions=4,
                        prepend_bos=bos, progress=False)  # fmt: skip
    sites = [SITE, "blocks.0.attn.hook_z"]
    acts = probe_module._activations(fsa, model, sites, batch_size=3)  # 3 batches, right-padded
    rows = torch.split(fsa.tokens, fsa.lengths.tolist())
    for site in sites:
        expected = []
        for row in rows:
            tokens = torch.cat([torch.tensor([model.tokenizer.bos_token_id]), row]) if bos else row
            _, cache = model.run_with_cache(tokens[None], names_filter=[site])
            expected.append(cache[site][0, int(bos) :].reshape(len(row), -1))
        assert torch.allclose(acts[site], torch.cat(expected), atol=1e-4), site


def test_f1_is_per_state_and_nan_where_no_held_out_token_carries_it(extracted):
    model, fsa, labels = extracted
    flat = [x for text in labels for x in text]
    n_test_tokens = probe_states(fsa, model, labels, sites=[SITE]).sites[SITE].n_test
    relabelled = flat[: len(flat) - n_test_tokens] + [
        "TEXT" if x == "OPEN" else x for x in flat[-n_test_tokens:]
    ]
    relabelled[0] = "OPEN"  # OPEN only in the fitted texts
    site = probe_states(fsa, model, relabelled, sites=[SITE]).sites[SITE]
    assert math.isnan(site.state_f1["OPEN"])
    scored = [v for v in site.state_f1.values() if not math.isnan(v)]
    assert site.mean_f1 == pytest.approx(sum(scored) / len(scored))


def test_a_state_only_held_out_is_left_out_not_counted_as_an_error(extracted):
    model, fsa, labels = extracted
    flat = [x for text in labels for x in text]
    site = probe_states(fsa, model, labels, sites=[SITE]).sites[SITE]
    renamed = flat[: len(flat) - site.n_test] + ["NEW" if x == "TEXT" else x for x in flat[-site.n_test :]]
    other = probe_states(fsa, model, renamed, sites=[SITE]).sites[SITE]
    assert other.unfitted == ["NEW"] and "NEW" not in other.state_f1 and site.unfitted == []
    assert other.n_test == site.n_test - flat[-site.n_test :].count("TEXT")
    assert other.mean_f1 > 0.9


def test_runs_inside_inference_mode(extracted):
    model, fsa, labels = extracted
    with torch.inference_mode():
        inside = probe_states(fsa, model, labels, sites=[SITE])
    assert inside == probe_states(fsa, model, labels, sites=[SITE])


def test_deterministic_and_no_global_side_effects(extracted):
    model, fsa, labels = extracted
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    a = probe_states(fsa, model, labels, sites=[SITE, "blocks.0.hook_resid_post"])
    b = probe_states(fsa, model, labels, sites=[SITE, "blocks.0.hook_resid_post"])
    assert a == b
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)
    assert not model.hook_dict[SITE].fwd_hooks  # no hook left behind


def test_clear_errors(extracted):
    model, fsa, labels = extracted
    with pytest.raises(ValueError, match=r"sites \['blocks.9.hook_resid_post'\] are not hook points"):
        probe_states(fsa, model, labels, sites=["blocks.9.hook_resid_post"])
    with pytest.raises(ValueError, match="held_out=1.5"):
        probe_states(fsa, model, labels, held_out=1.5)
    with pytest.raises(ValueError, match="max_iter=0"):
        probe_states(fsa, model, labels, max_iter=0)
    with pytest.raises(ValueError, match="true_states has 3 per-text label lists"):
        probe_states(fsa, model, labels[:3])
    with pytest.raises(ValueError, match="of 1 true states; a probe needs 2 states or more"):
        probe_states(fsa, model, [["TEXT"] * len(text) for text in labels])
    with pytest.raises(TypeError, match="one string; pass a list"):
        probe_states(fsa, model, labels, sites=SITE)
    with pytest.raises(ValueError, match=r"sites=\[\]"):
        probe_states(fsa, model, labels, sites=[])
    with pytest.raises(
        ValueError, match="did not run in the forward pass|hook_attn_in because use_attn_in is False"
    ):
        probe_states(fsa, model, labels, sites=["blocks.0.hook_attn_in"])
    with pytest.raises(ValueError, match="needs \\[batch, position"):
        probe_states(fsa, model, labels, sites=["blocks.0.attn.hook_pattern"])
    unlabelled_fit = [[None] * len(text) if k < 18 else text for k, text in enumerate(labels)]
    with pytest.raises(ValueError, match="the first 18 texts .* carry 0 labelled tokens"):
        probe_states(fsa, model, unlabelled_fit)
    unlabelled_test = [text if k < 18 else [None] * len(text) for k, text in enumerate(labels)]
    with pytest.raises(ValueError, match="the last 6 texts .* carry no labelled token"):
        probe_states(fsa, model, unlabelled_test)
    no_tokens = copy.copy(fsa)
    no_tokens.tokens = None
    with pytest.raises(ValueError, match="keeps no corpus tokens"):
        probe_states(no_tokens, model, labels)


def test_a_site_named_twice_is_probed_once(extracted):
    model, fsa, labels = extracted
    once = probe_states(fsa, model, labels, sites=[SITE]).sites[SITE]
    twice = probe_states(fsa, model, labels, sites=[SITE, SITE])  # was a KeyError
    assert list(twice.sites) == [SITE] and twice.sites[SITE].mean_f1 == once.mean_f1


def test_a_start_state_the_automaton_lists_is_probed_as_the_score_counts_it(extracted):
    model, fsa, labels = extracted
    markup = automata.AUTOMATA["markup"]

    def rename(state):
        return "START" if state == "TEXT" else state

    spec = automata.Automaton(
        markup.name,
        tuple(rename(s) for s in markup.states),
        {rename(a): {rename(b): v for b, v in row.items()} for a, row in markup.transitions.items()},
    )
    relabelled = [[rename(x) for x in text] for text in labels]
    assert "START" in sc.score_automaton(fsa, relabelled, spec).state_f1
    with_spec = probe_states(fsa, model, relabelled, sites=[SITE], automaton=spec).sites[SITE]
    plain = probe_states(fsa, model, labels, sites=[SITE]).sites[SITE]
    assert "START" in with_spec.state_f1 and with_spec.n_test == plain.n_test
    assert with_spec.state_f1["START"] == plain.state_f1["TEXT"]
    without = probe_states(fsa, model, relabelled, sites=[SITE]).sites[SITE]  # no spec: left out
    assert "START" not in without.state_f1 and without.n_test < plain.n_test
