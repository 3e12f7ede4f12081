"""Universality (sae_circuits.analysis.universality): best matches against a brute-force loop, a
planted model-against-itself case and a permuted dictionary, the summaries, and bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sae_circuits.analysis.universality import (
    _both_ways,
    best_matches,
    check_same_tokenizer,
    distribution,
    universality,
)
from tests.conftest import D_MODEL, NO_HOOKED, random_sae


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    if x.norm() == 0 or y.norm() == 0:
        return 0.0
    return float((x @ y) / (x.norm() * y.norm()))


def test_best_matches_agree_with_a_brute_force_loop():
    gen = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(60, 7, generator=gen))
    b = torch.relu(torch.randn(60, 5, generator=gen) + a[:, :5])
    a[:, 3] = 0.0  # dead
    a[:, 5] = 2.0  # constant: dead too
    b[:, 1] = 0.0  # a dead column of b correlates 0
    got = best_matches(a, b)
    assert got.units.tolist() == [0, 1, 2, 4, 6] and got.dead == 2
    for k, i in enumerate(got.units.tolist()):
        scores = [_pearson(a[:, i], b[:, j]) for j in range(b.shape[1])]
        best = max(range(len(scores)), key=scores.__getitem__)
        assert int(got.match[k]) == best
        assert float(got.value[k]) == pytest.approx(scores[best], abs=1e-5)
    # both ways from one matrix: the same as two calls
    for one, other in zip(_both_ways(a, b), (best_matches(a, b), best_matches(b, a))):
        assert torch.equal(one.units, other.units) and torch.equal(one.match, other.match)
        assert torch.allclose(one.value, other.value) and one.dead == other.dead


def test_distribution_by_hand():
    d = distribution(torch.tensor([0.1, 0.55, 0.6, 0.75, 0.9]))
    assert d.n == 5 and d.median == pytest.approx(0.6) and d.mean == pytest.approx(0.58)
    assert d.above_0_5 == pytest.approx(0.8) and d.above_0_7 == pytest.approx(0.4)
    assert distribution(torch.tensor([0.1, 0.9])).median == pytest.approx(0.5)  # an even count
    empty = distribution(torch.tensor([]))
    assert empty.n == 0 and empty.median != empty.median  # NaN


@pytest.fixture
def site_sae():
    return random_sae("standard", hook_name="blocks.1.hook_resid_post", d_sae=96, seed=3)


@pytest.mark.skipif(bool(NO_HOOKED), reason=str(NO_HOOKED))
def test_a_model_against_itself_matches_every_live_feature_perfectly(hooked, tokens, site_sae):
    u = universality(hooked, site_sae, hooked, [site_sae], tokens, random_baseline=False)
    site = u.sites[0]
    assert u.n_tokens == tokens.shape[0] * (tokens.shape[1] - 1)
    assert site.neuron_hook == "blocks.1.mlp.hook_post" and site.random is None
    for m in (site.a_in_b, site.b_in_a, site.neurons):
        assert m is not None and m.summary.n > 0
        assert torch.allclose(m.value, torch.ones_like(m.value), atol=1e-4)
    # dead features are the constant columns, counted on both sides alike
    _, cache = hooked.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    acts = site_sae.encode(cache["blocks.1.hook_resid_post"][:, 1:].reshape(-1, D_MODEL))
    dead = int((acts.std(0) == 0).sum())
    assert site.a_in_b.dead == site.b_in_a.dead == dead and site.a_in_b.summary.n == 96 - dead


@pytest.mark.skipif(bool(NO_HOOKED), reason=str(NO_HOOKED))
def test_a_permuted_dictionary_is_matched_feature_for_feature(hooked, tokens, site_sae):
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(1))
    permuted = random_sae("standard", hook_name="blocks.1.hook_resid_post", d_sae=96, seed=3)
    with torch.no_grad():
        permuted.W_enc.copy_(site_sae.W_enc[:, perm])
        permuted.b_enc.copy_(site_sae.b_enc[perm])
        permuted.W_dec.copy_(site_sae.W_dec[perm])
    site = universality(hooked, site_sae, hooked, permuted, tokens, neuron_hooks=[None]).sites[0]
    assert site.neurons is None and site.random is not None
    # feature i of A is feature perm^-1(i) of B (up to exact duplicates among sparse features)
    inverse = perm.argsort()
    matched = site.a_in_b.match == inverse[site.a_in_b.units]
    assert matched.float().mean() > 0.9 and torch.all(site.a_in_b.value > 0.9999)
    assert site.random.summary.median < site.a_in_b.summary.median


def test_bad_input_names_the_values(site_sae):
    model = SimpleNamespace(cfg=SimpleNamespace(d_vocab=512))
    other = SimpleNamespace(cfg=SimpleNamespace(d_vocab=4096))
    with pytest.raises(ValueError, match=r"d_vocab=512 .* d_vocab=4096"):
        check_same_tokenizer(model, other)
    vocab_a = SimpleNamespace(get_vocab=lambda: {"a": 0, "b": 1})
    vocab_b = SimpleNamespace(get_vocab=lambda: {"a": 0, "c": 1})
    with pytest.raises(ValueError, match=r"different tokenizers .*\('b', 1\)"):
        check_same_tokenizer(
            SimpleNamespace(cfg=SimpleNamespace(d_vocab=2), tokenizer=vocab_a),
            SimpleNamespace(cfg=SimpleNamespace(d_vocab=2), tokenizer=vocab_b),
        )
    tokens = torch.zeros(2, 5, dtype=torch.long)
    elsewhere = random_sae("standard", hook_name="blocks.0.hook_resid_post", d_sae=96)
    with pytest.raises(
        ValueError, match=r"saes_a\[0\] reads 'blocks.1.hook_resid_post' but saes_b\[0\] reads 'blocks.0"
    ):
        universality(model, site_sae, model, elsewhere, tokens)
    with pytest.raises(ValueError, match="saes_a holds 1 dictionaries and saes_b 2"):
        universality(model, [site_sae], model, [site_sae, site_sae], tokens)
    with pytest.raises(ValueError, match="neuron_hooks holds 2 names for 1 pairs"):
        universality(model, [site_sae], model, [site_sae], tokens, neuron_hooks=["a", "b"])
