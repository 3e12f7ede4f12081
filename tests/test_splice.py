"""Splicing semantics: hook names, error term, unsplice, clean failure, dtype, bad input."""

from __future__ import annotations

import pytest
import torch

import sae_circuits as sc
from tests.conftest import D_MODEL, random_sae

SITE = "blocks.0.hook_resid_post"
SUB_HOOKS = [f"{SITE}.hook_sae_{n}" for n in ("input", "acts_pre", "acts_post", "recons", "error", "output")]


@torch.no_grad()
def test_error_term_leaves_logits_bitwise_equal(hooked, sae, tokens):
    clean = hooked(tokens)
    with sc.spliced(hooked, [sae]):
        assert torch.equal(hooked(tokens), clean)


@torch.no_grad()
def test_sub_hooks_are_cached_and_match_the_sae(hooked, sae, tokens):
    with sc.spliced(hooked, [sae]):
        _logits, cache = hooked.run_with_cache(tokens)
        for name in SUB_HOOKS:
            assert name in cache.keys()
        resid = cache["blocks.0.hook_resid_pre"]
        x = hooked.blocks[0](resid)
        assert torch.allclose(cache[f"{SITE}.hook_sae_acts_post"], sae.encode(x))
        assert torch.allclose(cache[f"{SITE}.hook_sae_recons"], sae.decode(sae.encode(x)), atol=1e-6)
        # recons + error reproduces the activation (float tolerance: the error was materialised)
        total = cache[f"{SITE}.hook_sae_recons"] + cache[f"{SITE}.hook_sae_error"]
        assert torch.allclose(total, x, atol=1e-5)
        assert torch.allclose(cache[SITE], x, atol=1e-5)
    assert (cache[f"{SITE}.hook_sae_acts_post"] > 0).any()


@torch.no_grad()
def test_encoded_once_per_forward(hooked, sae, tokens):
    calls = []
    sae.hook_sae_acts_pre.add_hook(lambda t, hook: calls.append(1))
    with sc.spliced(hooked, [sae]):
        hooked(tokens)
    sae.hook_sae_acts_pre.remove_hooks()
    assert calls == [1]


@torch.no_grad()
def test_without_error_term_the_site_outputs_the_reconstruction(hooked, sae, tokens):
    with sc.spliced(hooked, [sae], error_term=False):
        _, cache = hooked.run_with_cache(tokens, names_filter=[SITE, "blocks.0.hook_resid_pre"])
    x = hooked.blocks[0](cache["blocks.0.hook_resid_pre"])
    assert torch.allclose(cache[SITE], sae(x), atol=1e-6)
    assert not torch.allclose(cache[SITE], x, atol=1e-3)


@torch.no_grad()
def test_unsplice_is_bitwise_and_keeps_user_hooks(hooked, sae, tokens):
    fired = []
    hooked.add_perma_hook(SITE, lambda t, hook: fired.append(hook.name))
    before = hooked(tokens)
    hook_point = hooked.hook_dict[SITE]
    names_before = sorted(hooked.hook_dict)
    sc.splice(hooked, [sae])
    assert hooked.hook_dict[SITE] is hook_point  # the original hook point stays addressable
    spliced_out = hooked(tokens)
    sc.unsplice(hooked)
    after = hooked(tokens)
    assert torch.equal(before, spliced_out) and torch.equal(before, after)
    assert hooked.hook_dict[SITE] is hook_point and "forward" not in hook_point.__dict__
    assert sorted(hooked.hook_dict) == names_before
    assert not any(k.startswith("_sae_circuits") for k in hooked.__dict__)  # nothing left on the model
    sc.saes_of(hooked)
    assert not any(k.startswith("_sae_circuits") for k in hooked.__dict__)  # reading adds nothing
    assert fired == [SITE, SITE, SITE]  # fired before, during and after the splice
    hooked.reset_hooks(including_permanent=True)


@torch.no_grad()
def test_reset_hooks_does_not_remove_the_splice(hooked, sae, tokens):
    with sc.spliced(hooked, [sae], error_term=False):
        hooked.reset_hooks(including_permanent=True)
        _, cache = hooked.run_with_cache(tokens, names_filter=f"{SITE}.hook_sae_acts_post")
        assert f"{SITE}.hook_sae_acts_post" in cache.keys()


@torch.no_grad()
def test_exception_inside_spliced_leaves_model_clean(hooked, sae, tokens):
    before = hooked(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with sc.spliced(hooked, [sae]):
            with sc.intervene(hooked, [sc.clamp(SITE, 1, 2.0)]):
                raise RuntimeError("boom")
    assert not sc.saes_of(hooked)
    assert torch.equal(hooked(tokens), before)
    assert all(not hp.fwd_hooks for hp in hooked.hook_dict.values())


def test_unknown_hook_name_is_rejected(hooked):
    bad = random_sae(hook_name="blocks.0.hook_resid_postt")
    with pytest.raises(ValueError, match=r"unknown hook name 'blocks.0.hook_resid_postt'.*did you mean"):
        sc.splice(hooked, [bad])
    assert not sc.saes_of(hooked)


def test_width_mismatch_is_rejected(hooked):
    with pytest.raises(ValueError, match=rf"d_in=32 does not match .*{SITE}.*width {D_MODEL}"):
        sc.splice(hooked, [random_sae(d_in=32)])
    assert not sc.saes_of(hooked)


def test_width_mismatch_on_unlisted_hook_is_caught_at_run_time(hooked, tokens):
    sae = random_sae(hook_name="blocks.0.attn.hook_pattern", d_in=7)
    with sc.spliced(hooked, [sae]):
        with pytest.raises(ValueError, match=r"d_in=7 but the activation at 'blocks.0.attn.hook_pattern'"):
            hooked(tokens)


def test_second_sae_on_same_site_and_atomic_failure(hooked, sae):
    sc.splice(hooked, [sae])
    try:
        with pytest.raises(ValueError, match="already spliced at 'blocks.0.hook_resid_post'"):
            sc.splice(hooked, [random_sae(hook_name="blocks.1.hook_resid_post"), random_sae(seed=1)])
        assert list(sc.saes_of(hooked)) == [SITE]  # the valid first SAE of the failed call was not added
        with pytest.raises(ValueError, match="already spliced into a model"):
            sc.splice(hooked, [sae])
    finally:
        sc.unsplice(hooked)


def test_unsplice_unknown_site(hooked):
    with pytest.raises(ValueError, match="no SAE is spliced at"):
        sc.unsplice(hooked, "blocks.1.hook_resid_post")


def test_not_a_model():
    with pytest.raises(TypeError, match="HookedTransformer or TransformerBridge"):
        sc.splice(torch.nn.Linear(2, 2), [random_sae()])


@torch.no_grad()
def test_output_is_cast_to_model_dtype(hooked, tokens):
    sae64 = random_sae().to(torch.float64)
    with sc.spliced(hooked, [sae64], error_term=False):
        _, cache = hooked.run_with_cache(tokens, names_filter=[SITE, f"{SITE}.hook_sae_acts_post"])
    assert cache[SITE].dtype == torch.float32
    assert cache[f"{SITE}.hook_sae_acts_post"].dtype == torch.float64


@torch.no_grad()
def test_user_hook_on_site_sees_site_output(hooked, sae, tokens):
    """A hook on H after splicing sees (and can replace) what flows downstream."""
    clean = hooked(tokens)
    with sc.spliced(hooked, [sae]):
        patched = hooked.run_with_hooks(tokens, fwd_hooks=[(SITE, lambda t, hook: torch.zeros_like(t))])
    zeroed = hooked.run_with_hooks(tokens, fwd_hooks=[(SITE, lambda t, hook: torch.zeros_like(t))])
    assert torch.equal(patched, zeroed) and not torch.allclose(patched, clean)


@torch.no_grad()
def test_transcoder_splice(hooked, tokens):
    tc = random_sae("transcoder", hook_name="blocks.0.ln2.hook_normalized", d_out=D_MODEL, d_sae=128)
    tc.cfg.hook_name_out = "blocks.0.hook_mlp_out"
    clean = hooked(tokens)
    with sc.spliced(hooked, [tc]):
        logits, cache = hooked.run_with_cache(tokens)
        assert torch.allclose(logits, clean, atol=1e-5)
        ln2 = cache["blocks.0.ln2.hook_normalized"]
        f = cache["blocks.0.hook_mlp_out.hook_sae_acts_post"]
        assert torch.allclose(f, tc.encode(ln2))
        assert sc.saes_of(hooked) == {"blocks.0.hook_mlp_out": tc}
    with sc.spliced(hooked, [tc], error_term=False):
        _, cache = hooked.run_with_cache(
            tokens, names_filter=["blocks.0.hook_mlp_out", "blocks.0.ln2.hook_normalized"]
        )
        assert torch.allclose(
            cache["blocks.0.hook_mlp_out"], tc(cache["blocks.0.ln2.hook_normalized"]), atol=1e-6
        )


@torch.no_grad()
def test_hook_z_sae_flattens_heads(hooked, tokens):
    n_heads, d_head = hooked.cfg.n_heads, hooked.cfg.d_head
    sae = random_sae(hook_name="blocks.1.attn.hook_z", d_in=n_heads * d_head, reshape_activations="hook_z")
    clean = hooked(tokens)
    with sc.spliced(hooked, [sae], error_term=False):
        logits, cache = hooked.run_with_cache(tokens, names_filter=lambda n: "hook_z" in n)
    z = cache["blocks.1.attn.hook_z.hook_sae_input"]
    assert z.shape[-1] == n_heads * d_head
    assert cache["blocks.1.attn.hook_z"].shape[-2:] == (n_heads, d_head)
    assert not torch.allclose(logits, clean)
    with sc.spliced(hooked, [sae]):
        assert torch.equal(hooked(tokens), clean)
