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


GENERATE = dict(
    max_new_tokens=6,
    do_sample=False,
    verbose=False,
    stop_at_eos=False,
    return_type="tokens",
    output_logits=True,
)


def _step_logits(out) -> torch.Tensor:
    return torch.stack(out.logits, 1)  # [batch, new tokens, d_vocab]


@torch.no_grad()
def test_bridge_cached_generation_equals_hugging_face_full_forward(bridge, tiny_model_dir, tokens):
    """No SAE: each cached step's logits are the unwrapped Hugging Face model's on the whole
    sequence (on transformers >= 5.24 only with sae_circuits._compat's KV-cache adapter)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(tiny_model_dir), local_files_only=True).eval()
    prompt = tokens[:1, :5]
    for cache in (True, False):
        out = bridge.generate(prompt, use_past_kv_cache=cache, **GENERATE)
        reference = hf(out.sequences).logits[:, prompt.shape[1] - 1 : -1]
        assert torch.allclose(_step_logits(out), reference, atol=1e-4), cache


@torch.no_grad()
@pytest.mark.parametrize("positions", ["generated", [5, 8]])
def test_bridge_generation_cached_equals_uncached(bridge, hooked, tokens, positions):
    """Under a clamp: bridge and HookedTransformer, cached and uncached, all give the logits of
    one full forward pass of the clamped model over the generated sequence."""
    sae = random_sae(hook_name=SITE)
    prompt = tokens[:1, :5]
    outs = {}
    for name, model, s in (("bridge", bridge, sae), ("hooked", hooked, copy.deepcopy(sae))):
        with sc.spliced(model, [s]), sc.intervene(model, [sc.clamp(SITE, 17, 8.0, positions=positions)]):
            for cache in (True, False):
                out = model.generate(prompt, use_past_kv_cache=cache, **GENERATE)
                outs[name, cache] = (out.sequences, _step_logits(out))
    sequence = outs["hooked", False][0]
    absolute = list(range(prompt.shape[1], sequence.shape[1])) if positions == "generated" else positions
    with sc.spliced(bridge, [sae]), sc.intervene(bridge, [sc.clamp(SITE, 17, 8.0, positions=absolute)]):
        reference = bridge(sequence)[:, prompt.shape[1] - 1 : -1]
    for key, (seq, logits) in outs.items():
        assert torch.equal(seq, sequence), key
        assert torch.allclose(logits, reference, atol=1e-4), key


def test_kv_cache_adapter_reads_the_renamed_argument(bridge):
    """transformers >= 5.24 passes the attention's KV cache as ``cache=``; the adapted
    ``_update_kv_cache`` writes it (TransformerLens's own reads only ``past_key_values``)."""
    from transformers import DynamicCache

    attn = bridge.blocks[0].attn
    cache = DynamicCache()
    k = v = torch.randn(1, 4, 3, 16)
    attn._update_kv_cache(k, v, cache=cache)
    assert cache.get_seq_length() == 3


@torch.no_grad()
def test_unfilled_kv_cache_fails_loudly(bridge, tokens, monkeypatch):
    """A bridge whose attention ignores the cache is an error inside sae_circuits, not a silently
    wrong generation."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    from sae_circuits._compat import KVCacheNotFilledError

    monkeypatch.setattr(AttentionBridge, "_update_kv_cache", lambda self, k, v, **kwargs: (k, v))
    with sc.spliced(bridge, [random_sae(hook_name=SITE)]), sc.intervene(bridge, [sc.ablate(SITE, 3)]):
        with pytest.raises(
            KVCacheNotFilledError, match=r"did not fill its KV cache.*use_past_kv_cache=False"
        ):
            bridge.generate(tokens[:1, :5], use_past_kv_cache=True, **GENERATE)
        out = bridge.generate(tokens[:1, :5], use_past_kv_cache=False, **GENERATE)  # the advised way out
    assert out.sequences.shape == (1, 11)


def test_attribution_refuses_a_model_it_cannot_freeze(hooked, tokens, monkeypatch):
    """A model whose attention exposes no hook_pattern, or never calls a hook that attribution
    freezes, is refused with an error naming it (its edges would not be direct effects)."""
    from sae_circuits.graph import replacement

    with sc.spliced(hooked, [random_sae(hook_name="blocks.0.hook_mlp_out")]):
        hook_dict = dict(hooked.hook_dict)
        del hook_dict["blocks.1.attn.hook_pattern"]
        monkeypatch.setattr(hooked, "hook_dict", hook_dict)
        with pytest.raises(ValueError, match=r"attention of blocks \[1\] exposes no attn.hook_pattern"):
            sc.attribute(hooked, tokens[0], progress=False)
        monkeypatch.undo()

        values = replacement.capture(hooked, tokens[0])
        values.frozen["blocks.0.attn.hook_result"] = values.frozen["blocks.0.attn.hook_pattern"]  # never run
        with pytest.raises(RuntimeError, match=r"never called the hooks \['blocks.0.attn.hook_result'\]"):
            replacement.frozen_pass(hooked, values)


def test_unsupported_versions_fail_with_what_was_found(model, monkeypatch):
    import importlib.metadata

    from sae_circuits import _compat

    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "3.2.0" if name == "transformer-lens" else real(name)
    )
    _compat.check_versions.cache_clear()
    try:
        with pytest.raises(
            _compat.UnsupportedVersionError, match=r"transformer-lens>=3.9,<5.0.*3\.2\.0 is installed"
        ):
            sc.splice(model, [random_sae()])
    finally:
        monkeypatch.undo()
        _compat.check_versions.cache_clear()
    _compat.check_versions()  # the real versions pass


def test_two_names_of_one_bridge_hook_point_take_one_sae(bridge):
    """blocks.1.hook_resid_post and blocks.1.hook_out are one hook point on the bridge: a second
    SAE there had been accepted and silently replaced the first (its edits did nothing)."""
    assert bridge.hook_dict["blocks.1.hook_out"] is bridge.hook_dict[SITE]
    with sc.spliced(bridge, [random_sae(hook_name=SITE)]):
        with pytest.raises(ValueError, match=r"'blocks.1.hook_out' is the hook point the SAE at "):
            sc.splice(bridge, [random_sae(hook_name="blocks.1.hook_out")])
        assert list(sc.saes_of(bridge)) == [SITE]
    with pytest.raises(ValueError, match="another name for it"):  # both in one call
        sc.splice(bridge, [random_sae(hook_name=SITE), random_sae(hook_name="blocks.1.hook_out")])
    assert sc.saes_of(bridge) == {}


@pytest.mark.parametrize("kind", ["hooked", "bridge"])
def test_generation_paths_that_skip_generate_are_refused_inside_an_intervention(kind, hooked, bridge):
    """generate_stream (and the bridge's hf_generate) bypass model.generate, so the prompt's end is
    unknown: "generated" was a no-op there and "prompt" edited every token. Refused, then restored."""
    model = hooked if kind == "hooked" else bridge
    names = [n for n in ("generate_stream", "hf_generate") if hasattr(model, n)]
    assert "generate_stream" in names
    with sc.spliced(model, [random_sae(hook_name=SITE)]):
        with sc.intervene(model, sc.clamp(SITE, 3, 5.0, positions="generated")):
            for name in names:
                with pytest.raises(RuntimeError, match=f"{name} does not go through .*use model.generate"):
                    getattr(model, name)("def f", max_new_tokens=2)
    assert not any(n in model.__dict__ for n in names)  # the class's own methods are back
