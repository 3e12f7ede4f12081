"""TransformerBridge: the same splice and interventions give the same results as on the
equivalent HookedTransformer (both built from one Hugging Face GPT-2 saved to disk)."""

from __future__ import annotations

import copy

import pytest
import torch

import sae_circuits as sc
from tests.conftest import random_sae

SITE = "blocks.1.hook_resid_post"  # a bridge alias of blocks.1.hook_out


@torch.no_grad()
def test_bridge_matches_hooked_transformer(hooked, bridge, tokens):
    sae_h, sae_b = random_sae(hook_name=SITE), random_sae(hook_name=SITE)
    acts = f"{SITE}.hook_sae_acts_post"
    assert torch.allclose(bridge(tokens), hooked(tokens), atol=1e-4)
    clean_bridge = bridge(tokens)
    results = []
    for model, sae in ((hooked, sae_h), (bridge, sae_b)):
        with sc.spliced(model, [sae]):
            _, cache = model.run_with_cache(tokens, names_filter=acts)
            with sc.intervene(model, [sc.clamp(SITE, 17, 6.0, positions=[3, 5]), sc.ablate(SITE, 2)]):
                edited, edited_cache = model.run_with_cache(tokens, names_filter=acts)
        results.append((cache[acts], edited, edited_cache[acts]))
    (f_h, out_h, fe_h), (f_b, out_b, fe_b) = results
    assert (f_b > 0).any() and torch.allclose(f_h, f_b, atol=1e-4)
    assert torch.allclose(out_h, out_b, atol=1e-4) and torch.allclose(fe_h, fe_b, atol=1e-4)
    assert not torch.allclose(out_b, clean_bridge, atol=1e-3)
    assert torch.equal(bridge(tokens), clean_bridge)  # unspliced bridge is bitwise back


@torch.no_grad()
def test_bridge_error_term_is_bitwise_and_unsplice_restores_registry(bridge, tokens):
    sae = random_sae(hook_name=SITE)
    names = sorted(bridge.hook_dict)
    clean = bridge(tokens)
    with sc.spliced(bridge, [sae]):
        assert torch.equal(bridge(tokens), clean)
        assert f"{SITE}.hook_sae_acts_post" in bridge.hook_dict
    assert sorted(bridge.hook_dict) == names


@torch.no_grad()
@pytest.mark.parametrize("positions", ["generated", [5, 8]])
def test_bridge_generation_cached_equals_uncached(bridge, hooked, tokens, positions):
    sae = random_sae(hook_name=SITE)
    prompt = tokens[:1, :5]
    kwargs = dict(
        max_new_tokens=6,
        do_sample=False,
        verbose=False,
        stop_at_eos=False,
        return_type="tokens",
        output_logits=True,
    )
    outs = {}
    for name, model, s in (("bridge", bridge, sae), ("hooked", hooked, copy.deepcopy(sae))):
        with sc.spliced(model, [s]), sc.intervene(model, [sc.clamp(SITE, 17, 8.0, positions=positions)]):
            for cache in (True, False):
                out = model.generate(prompt, use_past_kv_cache=cache, **kwargs)
                outs[name, cache] = (out.sequences, torch.stack(out.logits, 1))
    ref_tokens, ref_logits = outs["bridge", True]
    for key, (seq, logits) in outs.items():
        assert torch.equal(seq, ref_tokens), key
        assert torch.allclose(logits, ref_logits, atol=1e-4), key
