"""Splicing semantics: hook names, error term, unsplice, clean failure, dtype, bad input."""

from __future__ import annotations

import re

import pytest
import torch

import sae_circuits as sc
from tests.conftest import D_MODEL, random_sae

SITE = "blocks.0.hook_resid_post"
SUB_HOOKS = [f"{SITE}.hook_sae_{n}" for n in ("input", "acts_pre", "acts_post", "recons", "error", "output")]


@torch.no_grad()
def test_error_term_leaves_logits_bitwise_equal(model, sae, tokens):
    clean = model(tokens)
    with sc.spliced(model, [sae]):
        assert torch.equal(model(tokens), clean)


@torch.no_grad()
def test_sub_hooks_are_cached_and_match_the_sae(model, sae, tokens):
    x = model.run_with_cache(tokens, names_filter=SITE)[1][SITE]  # the site's activation, unspliced
    with sc.spliced(model, [sae]):
        _logits, cache = model.run_with_cache(tokens)
        for name in SUB_HOOKS:
            assert name in cache.keys()
        assert torch.allclose(cache[f"{SITE}.hook_sae_acts_post"], sae.encode(x))
        assert torch.allclose(cache[f"{SITE}.hook_sae_recons"], sae.decode(sae.encode(x)), atol=1e-6)
        # recons + error reproduces the activation (float tolerance: the error was materialised)
        total = cache[f"{SITE}.hook_sae_recons"] + cache[f"{SITE}.hook_sae_error"]
        assert torch.allclose(total, x, atol=1e-5)
        assert torch.allclose(cache[SITE], x, atol=1e-5)
    assert (cache[f"{SITE}.hook_sae_acts_post"] > 0).any()


@torch.no_grad()
def test_encoded_once_per_forward(model, sae, tokens):
    calls = []
    sae.hook_sae_acts_pre.add_hook(lambda t, hook: calls.append(1))
    with sc.spliced(model, [sae]):
        model(tokens)
    sae.hook_sae_acts_pre.remove_hooks()
    assert calls == [1]


@torch.no_grad()
def test_without_error_term_the_site_outputs_the_reconstruction(model, sae, tokens):
    x = model.run_with_cache(tokens, names_filter=SITE)[1][SITE]  # the site's activation, unspliced
    with sc.spliced(model, [sae], error_term=False):
        _, cache = model.run_with_cache(tokens, names_filter=SITE)
    assert torch.allclose(cache[SITE], sae(x), atol=1e-6)
    assert not torch.allclose(cache[SITE], x, atol=1e-3)


@torch.no_grad()
def test_unsplice_is_bitwise_and_keeps_user_hooks(model, sae, tokens):
    fired = []
    model.add_perma_hook(SITE, lambda t, hook: fired.append(hook.name))
    before = model(tokens)
    hook_point = model.hook_dict[SITE]
    names_before = sorted(model.hook_dict)
    sc.splice(model, [sae])
    assert model.hook_dict[SITE] is hook_point  # the original hook point stays addressable
    spliced_out = model(tokens)
    sc.unsplice(model)
    after = model(tokens)
    assert torch.equal(before, spliced_out) and torch.equal(before, after)
    assert model.hook_dict[SITE] is hook_point and "forward" not in hook_point.__dict__
    assert sorted(model.hook_dict) == names_before
    assert not any(k.startswith("_sae_circuits") for k in model.__dict__)  # nothing left on the model
    sc.saes_of(model)
    assert not any(k.startswith("_sae_circuits") for k in model.__dict__)  # reading adds nothing
    assert fired == [hook_point.name] * 3  # fired before, during and after the splice (a bridge's
    # hook point keeps its canonical name, e.g. blocks.0.hook_out for the alias hook_resid_post)
    model.reset_hooks(including_permanent=True)


@torch.no_grad()
def test_reset_hooks_does_not_remove_the_splice(model, sae, tokens):
    with sc.spliced(model, [sae], error_term=False):
        model.reset_hooks(including_permanent=True)
        _, cache = model.run_with_cache(tokens, names_filter=f"{SITE}.hook_sae_acts_post")
        assert f"{SITE}.hook_sae_acts_post" in cache.keys()


@torch.no_grad()
def test_exception_inside_spliced_leaves_model_clean(model, sae, tokens):
    before = model(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with sc.spliced(model, [sae]):
            with sc.intervene(model, [sc.clamp(SITE, 1, 2.0)]):
                raise RuntimeError("boom")
    assert not sc.saes_of(model)
    assert torch.equal(model(tokens), before)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_unknown_hook_name_is_rejected(model):
    bad = random_sae(hook_name="blocks.0.hook_resid_postt")
    with pytest.raises(ValueError, match=r"unknown hook name 'blocks.0.hook_resid_postt'.*did you mean"):
        sc.splice(model, [bad])
    assert not sc.saes_of(model)


def test_width_mismatch_is_rejected(model):
    with pytest.raises(ValueError, match=rf"d_in=32 does not match .*{SITE}.*width {D_MODEL}"):
        sc.splice(model, [random_sae(d_in=32)])
    assert not sc.saes_of(model)


def test_width_mismatch_on_unlisted_hook_is_caught_at_run_time(model, tokens):
    sae = random_sae(hook_name="blocks.0.attn.hook_pattern", d_in=7)
    with sc.spliced(model, [sae]):
        with pytest.raises(ValueError, match=r"d_in=7 but the activation at 'blocks.0.attn.hook_pattern'"):
            model(tokens)


def test_second_sae_on_same_site_and_atomic_failure(model, sae):
    sc.splice(model, [sae])
    try:
        with pytest.raises(ValueError, match="already spliced at 'blocks.0.hook_resid_post'"):
            sc.splice(model, [random_sae(hook_name="blocks.1.hook_resid_post"), random_sae(seed=1)])
        assert list(sc.saes_of(model)) == [SITE]  # the valid first SAE of the failed call was not added
        with pytest.raises(ValueError, match="already spliced into a model"):
            sc.splice(model, [sae])
    finally:
        sc.unsplice(model)


def test_unsplice_unknown_site(model):
    with pytest.raises(ValueError, match="no SAE is spliced at"):
        sc.unsplice(model, "blocks.1.hook_resid_post")


def test_not_a_model():
    with pytest.raises(TypeError, match="HookedTransformer or TransformerBridge"):
        sc.splice(torch.nn.Linear(2, 2), [random_sae()])


@torch.no_grad()
def test_output_is_cast_to_model_dtype(model, tokens):
    sae64 = random_sae().to(torch.float64)
    with sc.spliced(model, [sae64], error_term=False):
        _, cache = model.run_with_cache(tokens, names_filter=[SITE, f"{SITE}.hook_sae_acts_post"])
    assert cache[SITE].dtype == torch.float32
    assert cache[f"{SITE}.hook_sae_acts_post"].dtype == torch.float64


@torch.no_grad()
def test_user_hook_on_site_sees_site_output(model, sae, tokens):
    """A hook on H after splicing sees (and can replace) what flows downstream."""
    clean = model(tokens)
    with sc.spliced(model, [sae]):
        patched = model.run_with_hooks(tokens, fwd_hooks=[(SITE, lambda t, hook: torch.zeros_like(t))])
    zeroed = model.run_with_hooks(tokens, fwd_hooks=[(SITE, lambda t, hook: torch.zeros_like(t))])
    assert torch.equal(patched, zeroed) and not torch.allclose(patched, clean)


@torch.no_grad()
def test_transcoder_splice(model, tokens):
    tc = random_sae("transcoder", hook_name="blocks.0.ln2.hook_normalized", d_out=D_MODEL, d_sae=128)
    tc.cfg.hook_name_out = "blocks.0.hook_mlp_out"
    clean = model(tokens)
    with sc.spliced(model, [tc]):
        logits, cache = model.run_with_cache(tokens)
        assert torch.allclose(logits, clean, atol=1e-5)
        ln2 = cache["blocks.0.ln2.hook_normalized"]
        f = cache["blocks.0.hook_mlp_out.hook_sae_acts_post"]
        assert torch.allclose(f, tc.encode(ln2))
        assert sc.saes_of(model) == {"blocks.0.hook_mlp_out": tc}
    with sc.spliced(model, [tc], error_term=False):
        _, cache = model.run_with_cache(
            tokens, names_filter=["blocks.0.hook_mlp_out", "blocks.0.ln2.hook_normalized"]
        )
        assert torch.allclose(
            cache["blocks.0.hook_mlp_out"], tc(cache["blocks.0.ln2.hook_normalized"]), atol=1e-6
        )


@torch.no_grad()
@pytest.mark.parametrize("kind", ["model", "bridge"])
def test_hook_z_sae_flattens_heads(request, kind, tokens):
    """A HookedTransformer's hook_z carries [..., n_heads, d_head]; a bridge's hook point carries the
    heads flat (only hooks see them split): the SAE reads and writes both."""
    model = request.getfixturevalue(kind)
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    sae = random_sae(hook_name="blocks.1.attn.hook_z", d_in=n_heads * d_head, reshape_activations="hook_z")
    clean, clean_cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_z")
    with sc.spliced(model, [sae], error_term=False):
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "hook_z" in n)
    z = cache["blocks.1.attn.hook_z.hook_sae_input"]
    assert z.shape[-1] == n_heads * d_head
    assert cache["blocks.1.attn.hook_z"].shape[-2:] == (n_heads, d_head)
    assert torch.allclose(cache["blocks.1.attn.hook_z"], sae(clean_cache["blocks.1.attn.hook_z"]), atol=1e-5)
    assert not torch.allclose(logits, clean)
    with sc.spliced(model, [sae]):
        assert torch.equal(model(tokens), clean)


@torch.no_grad()
@pytest.mark.parametrize("sub_hook", ["hook_sae_acts_post", "hook_sae_output"])
def test_splicing_onto_a_spliced_saes_hook_point_is_refused(model, sae, tokens, sub_hook):
    child_site = f"{SITE}.{sub_hook}"
    child = random_sae(hook_name=child_site, d_in=sae.cfg.d_sae if "acts" in sub_hook else D_MODEL, seed=3)
    parent_modules = [name for name, _ in sae.named_modules()]
    message = rf"cannot splice an SAE at '{re.escape(child_site)}': it is a hook point of the SAE spliced at '{SITE}'"
    sc.splice(model, [sae])
    try:
        hooks = set(model.hook_dict)
        logits = model(tokens)
        with pytest.raises(ValueError, match=message):
            sc.splice(model, [child])
        assert list(sc.saes_of(model)) == [SITE] and set(model.hook_dict) == hooks
        assert torch.equal(model(tokens), logits)
    finally:
        sc.unsplice(model)
    assert [name for name, _ in sae.named_modules()] == parent_modules  # the parent SAE is as it was
    assert "_sae_circuits_spliced_in" not in child.__dict__
    for saes in ([sae, child], [child, sae]):  # parent and child in one call, in either order
        with pytest.raises(ValueError, match=message):
            sc.splice(model, saes)
        assert not sc.saes_of(model)
    assert [name for name, _ in sae.named_modules()] == parent_modules


def test_transcoder_cannot_read_from_a_spliced_saes_hook_point(model, sae):
    tc = random_sae(
        "transcoder",
        hook_name=f"{SITE}.hook_sae_output",
        hook_name_out="blocks.1.hook_mlp_out",
        d_out=D_MODEL,
    )
    sc.splice(model, [sae])
    try:
        with pytest.raises(ValueError, match=rf"at '{re.escape(SITE)}.hook_sae_output'.*spliced at '{SITE}'"):
            sc.splice(model, [tc])
        assert list(sc.saes_of(model)) == [SITE]
    finally:
        sc.unsplice(model)


def _double(x, hook):
    return x * 2.0


def _double_in_place(x, hook):
    x.mul_(2.0)


@torch.no_grad()
def test_an_input_edit_in_place_equals_the_same_edit_returned(model, sae, tokens):
    """An in-place edit of hook_sae_input is the edit of a copy: output x + f(2x) W_dec - f(x) W_dec,
    and the model's own activation (which the prepared input may share memory with) is left alone."""
    with sc.spliced(model, [sae]):
        returned = model.run_with_hooks(tokens, fwd_hooks=[(f"{SITE}.hook_sae_input", _double)])
        seen = {}
        in_place = model.run_with_hooks(
            tokens,
            fwd_hooks=[
                (f"{SITE}.hook_sae_input", _double_in_place),
                (SITE, lambda x, hook: seen.setdefault("out", x.clone())),
            ],
        )  # fmt: skip
    _, cache = model.run_with_cache(tokens, names_filter=[SITE])
    x = cache[SITE]
    expected = x + (sae.encode(2 * x) - sae.encode(x)) @ sae.W_dec
    assert torch.equal(in_place, returned)
    assert torch.allclose(seen["out"], expected, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["layer_norm", "constant_norm_rescale"])
def test_an_input_edit_keeps_the_clean_error_of_a_normalising_sae(model, tokens, mode):
    """With a normalised input, the error term is the clean input's (its own normaliser), and the
    site outputs x + SAE(edited) - SAE(x), observed or not."""
    norm_sae = random_sae(hook_name=SITE, seed=5, normalize_activations=mode)
    _, cache = model.run_with_cache(tokens, names_filter=[SITE])
    x = cache[SITE]

    def edit(value, hook):
        return value * 3.0 + 1.0

    seen = {}
    with sc.spliced(model, [norm_sae]):
        plain = model.run_with_hooks(tokens, fwd_hooks=[(f"{SITE}.hook_sae_input", edit)])
        observed = model.run_with_hooks(
            tokens,
            fwd_hooks=[
                (f"{SITE}.hook_sae_input", edit),
                (f"{SITE}.hook_sae_error", lambda e, hook: seen.setdefault("error", e.clone())),
                (SITE, lambda o, hook: seen.setdefault("out", o.clone())),
            ],
        )  # fmt: skip
    assert torch.allclose(seen["error"], x - norm_sae(x), atol=1e-4)
    assert torch.allclose(seen["out"], x + norm_sae(edit(x, None)) - norm_sae(x), atol=1e-3)
    assert torch.allclose(plain, observed, atol=1e-5)


@torch.no_grad()
def test_a_transcoder_reads_its_input_after_the_hooks_on_it(model, tokens):
    """A hook that patches the MLP input (returning a new tensor, added before or after splicing)
    changes what the transcoder reads, as it changes what the MLP reads."""
    tc = random_sae("transcoder", hook_name="blocks.0.ln2.hook_normalized", d_out=D_MODEL, d_sae=128)
    tc.cfg.hook_name_out = "blocks.0.hook_mlp_out"
    patch = ("blocks.0.ln2.hook_normalized", lambda x, hook: x * 0.0 + 0.3)
    expected = tc(torch.full((1, tokens.shape[1], D_MODEL), 0.3))
    model.add_hook(*patch)  # before splicing
    try:
        with sc.spliced(model, [tc], error_term=False):
            _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_mlp_out"])
    finally:
        model.reset_hooks()
    assert torch.allclose(cache["blocks.0.hook_mlp_out"][0], expected[0], atol=1e-5)
    with sc.spliced(model, [tc], error_term=False):  # and a hook added while spliced
        with model.hooks(fwd_hooks=[patch]):
            _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_mlp_out"])
    assert torch.allclose(cache["blocks.0.hook_mlp_out"][0], expected[0], atol=1e-5)
    assert not model.blocks[0].ln2.hook_normalized._forward_hooks  # the tap is gone with the splice


def test_unsplicing_a_site_named_twice_and_an_error_after_unsplicing_inside_the_block(model, sae):
    sc.splice(model, [sae])
    sc.unsplice(model, [SITE, SITE])
    assert sc.saes_of(model) == {} and not any(name.startswith(f"{SITE}.") for name in model.hook_dict)
    with pytest.raises(RuntimeError, match="the caller's own error"):
        with sc.spliced(model, [sae]):
            sc.unsplice(model)
            raise RuntimeError("the caller's own error")  # not hidden by the cleanup
    assert sc.saes_of(model) == {}


@torch.no_grad()
def test_temporary_hooks_on_an_saes_own_hook_points_go_with_the_unsplice(model, sae, tokens):
    """model.reset_hooks() cannot reach a detached SAE's hook points, so unsplice removes what it
    would have (a hook added with model.add_hook), and keeps permanent ones."""
    clean = model(tokens)
    seen = []
    sc.splice(model, [sae])
    model.add_hook(f"{SITE}.hook_sae_acts_post", lambda f, hook: f * 0)  # an edit, left behind
    model.add_hook(f"{SITE}.hook_sae_acts_pre", lambda h, hook: seen.append(1), is_permanent=True)
    sc.unsplice(model)
    with sc.spliced(model, [sae]):
        assert torch.equal(model(tokens), clean)  # the zeroing hook did not come back
    assert len(seen) == 1  # the permanent one did
    sae.hook_sae_acts_pre.remove_hooks("both", including_permanent=True)


@pytest.mark.parametrize(
    ("listener", "edit", "hook"),
    [
        ("acts_post", None, None),
        ("acts_post", "clamp", None),
        ("acts_post", None, "recons"),  # the materialised path: the output goes through the recons
        ("acts_post", "clamp", "error"),
        ("acts_pre", "scale", None),
        ("acts_pre", None, "error"),
    ],
)
def test_features_get_gradients_when_a_backward_hook_listens(model, sae, tokens, listener, edit, hook):
    """With the error term on, a backward hook on ``hook_sae_acts_post`` sees SAELens's
    ``dL/df = dL/dout @ W_dec.T`` for every feature (it saw zeros), edited or not, once (it had
    seen twice that on the materialised path), and one on ``hook_sae_acts_pre`` sees that through
    the activation and the edit; the logits and the gradient upstream of the site are what they
    are without the listener (the model's own, with no edit)."""
    side_hooks = {
        None: [],
        "recons": [(f"{SITE}.hook_sae_recons", lambda x, hook: x)],  # watched, unchanged
        "error": [(f"{SITE}.hook_sae_error", lambda x, hook: 0.5 * x)],
    }[hook]

    def run(listen: bool):
        kept: dict = {}

        def keep(name):
            def keep_hook(x, hook):
                if x.requires_grad:
                    x.retain_grad()
                kept[name] = x
                return x

            return keep_hook

        def keep_grad(grad, hook):
            kept["features"] = grad.detach().clone()

        model.zero_grad(set_to_none=True)
        fwd = [
            ("blocks.0.hook_resid_pre", keep("embed")),
            (SITE, keep("site")),
            (f"{SITE}.hook_sae_acts_pre", keep("h")),
        ]
        bwd = [(f"{SITE}.hook_sae_{listener}", keep_grad)] if listen else []
        with model.hooks(fwd_hooks=fwd + side_hooks, bwd_hooks=bwd):
            logits = model(tokens)
            logits[:, -1].log_softmax(-1)[:, 7].sum().backward()
        return (
            logits.detach(),
            kept["embed"].grad,
            kept["site"].grad,
            kept.get("features"),
            kept["h"].detach(),
        )

    edits = {None: [], "clamp": [sc.clamp(SITE, 11, 5.0)], "scale": [sc.scale(SITE, [11, 12], 2.0)]}[edit]
    with sc.spliced(model, [sae]), sc.intervene(model, edits):
        logits, embed_grad, _, _, _ = run(listen=False)
        logits_heard, embed_heard, site_grad, features, h = run(listen=True)
    assert torch.equal(logits_heard, logits)
    assert torch.allclose(embed_heard, embed_grad, atol=1e-6, rtol=1e-4)
    expected = site_grad @ sae.W_dec.T  # dL/df, SAELens's (its error term is held constant)
    if listener == "acts_pre":  # through ReLU and the edit, as SAELens's autograd would go
        factor = torch.ones(expected.shape[-1])
        if edit == "scale":
            factor[[11, 12]] = 2.0
        expected = expected * (h > 0) * factor
    assert expected.abs().max() > 0.1
    assert torch.allclose(features.reshape(expected.shape), expected, atol=1e-5, rtol=1e-4)


def test_a_backward_hook_makes_no_forward_hook_an_edit(model, sae, tokens):
    """A backward hook hands the forward hooks of its hook point an alias of the activation, not
    the activation itself: that alias is no edit (it had sent the site down the edited path)."""
    from sae_circuits.splice import _run_hook

    with sc.spliced(model, [sae]):
        point = sae.hook_sae_acts_post
        with model.hooks(fwd_hooks=[(f"{SITE}.hook_sae_acts_post", lambda x, hook: x)],
                         bwd_hooks=[(f"{SITE}.hook_sae_acts_post", lambda g, hook: None)]):  # fmt: skip
            value = torch.randn(2, 3, sae.cfg.d_sae, requires_grad=True)
            hooked = _run_hook(point, value)
            assert hooked.value is not value and not hooked.changed
            assert _run_hook(point, value, protect=True).changed is False


@pytest.mark.parametrize("edit", [None, "clamp"])
def test_run_with_cache_incl_bwd_holds_each_features_gradient_once(model, sae, tokens, edit):
    """The documented way to read feature gradients: ``run_with_cache(incl_bwd=True)`` watches
    every hook point both ways. Each feature's cached gradient is ``dL/dout @ W_dec.T`` (it had
    been twice that: the cache's forward hooks had looked like edits)."""
    edits = [sc.clamp(SITE, 11, 5.0)] if edit else []
    with sc.spliced(model, [sae]), sc.intervene(model, edits):
        _, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    expected = cache[f"{SITE}_grad"] @ sae.W_dec.T
    got = cache[f"{SITE}.hook_sae_acts_post_grad"].reshape(expected.shape)
    assert expected.abs().max() > 1e-3
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("edit", [None, "clamp", "ablate"])
def test_retain_grad_in_a_forward_hook_is_a_listener_too(model, sae, tokens, edit):
    """A SAELens user's first try: ``retain_grad()`` on the activations in a forward hook. Its
    ``.grad`` is the full ``dL/df`` (it had been None, or under an edit the edited features only)."""
    kept: dict = {}

    def keep(name):
        def keep_hook(x, hook):
            x.retain_grad()
            kept[name] = x

        return keep_hook

    edits = {None: [], "clamp": [sc.clamp(SITE, 11, 5.0, positions=[3])], "ablate": [sc.ablate(SITE, 3)]}[
        edit
    ]
    with sc.spliced(model, [sae]), sc.intervene(model, edits):
        with model.hooks(fwd_hooks=[(f"{SITE}.hook_sae_acts_post", keep("f")), (SITE, keep("out"))]):
            logits = model(tokens)
            (logits[:, -1, 5] - logits[:, -1, 7]).sum().backward()
    expected = kept["out"].grad @ sae.W_dec.T
    assert kept["f"].grad is not None and expected.abs().max() > 0.1
    assert torch.allclose(kept["f"].grad.reshape(expected.shape), expected, atol=1e-5, rtol=1e-4)
