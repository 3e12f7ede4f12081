"""Parity with sae-lens on the same weights: activations, logits, and files both ways."""

from __future__ import annotations

import pytest
import torch

import sae_circuits as sc

sae_lens = pytest.importorskip(
    "sae_lens", reason="sae-lens (the parity extra) is not installed: it needs transformer-lens < 4"
)
from sae_lens.saes.sae import SAEMetadata

RESID = "blocks.0.hook_resid_post"
MLP_IN, MLP_OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def _lens_sae(architecture: str, d_in: int = 64, d_sae: int = 256, seed: int = 0):
    """A sae-lens SAE of ``architecture`` with random weights that fire sparsely."""
    meta = SAEMetadata(hook_name=RESID)
    tmeta = SAEMetadata(hook_name=MLP_IN, hook_name_out=MLP_OUT)
    builders = {
        "standard": lambda: sae_lens.StandardSAE(
            sae_lens.StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta)
        ),
        "topk": lambda: sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=12, metadata=meta)),
        "topk_rescaled": lambda: sae_lens.TopKSAE(
            sae_lens.TopKSAEConfig(
                d_in=d_in, d_sae=d_sae, k=12, rescale_acts_by_decoder_norm=True, metadata=meta
            )
        ),
        "jumprelu": lambda: sae_lens.JumpReLUSAE(
            sae_lens.JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta)
        ),
        "gated": lambda: sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta)),
        "transcoder": lambda: sae_lens.Transcoder(
            sae_lens.TranscoderConfig(
                d_in=d_in, d_sae=d_sae, d_out=d_in, apply_b_dec_to_input=False, metadata=tmeta
            )
        ),
        "skip_transcoder": lambda: sae_lens.SkipTranscoder(
            sae_lens.SkipTranscoderConfig(
                d_in=d_in, d_sae=d_sae, d_out=d_in, apply_b_dec_to_input=False, metadata=tmeta
            )
        ),
        "jumprelu_transcoder": lambda: sae_lens.JumpReLUTranscoder(
            sae_lens.JumpReLUTranscoderConfig(
                d_in=d_in, d_sae=d_sae, d_out=d_in, apply_b_dec_to_input=False, metadata=tmeta
            )
        ),
    }
    sae = builders[architecture]()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            scale = 0.3 if name.startswith("W") else 0.1
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
            if name in ("b_enc", "b_gate"):
                param.sub_(0.5)
            if name == "threshold":
                param.copy_(torch.rand(param.shape, generator=gen) * 0.3)
    return sae


ARCHS = [
    "standard",
    "topk",
    "topk_rescaled",
    "jumprelu",
    "gated",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
]


def _lens_model(hooked):
    model = sae_lens.HookedSAETransformer(hooked.cfg, tokenizer=hooked.tokenizer)
    model.load_state_dict(hooked.state_dict(), strict=False)
    return model.eval()


@torch.no_grad()
@pytest.mark.parametrize("architecture", ARCHS)
@pytest.mark.parametrize("error_term", [True, False])
def test_spliced_activations_and_logits_match_sae_lens(hooked, tokens, tmp_path, architecture, error_term):
    lens_sae = _lens_sae(architecture)
    lens_sae.save_model(tmp_path)
    ours = sc.SAE.load(tmp_path)  # loaded from the files sae-lens wrote
    site = ours.cfg.site
    acts_name = f"{site}.hook_sae_acts_post"

    lens_model = _lens_model(hooked)
    assert torch.allclose(lens_model(tokens), hooked(tokens), atol=1e-5)
    lens_model.add_sae(lens_sae, use_error_term=error_term)
    lens_logits, lens_cache = lens_model.run_with_cache(tokens, names_filter=acts_name)
    with sc.spliced(hooked, [ours], error_term=error_term):
        logits, cache = hooked.run_with_cache(tokens, names_filter=acts_name)

    assert (cache[acts_name] > 0).any(), "the test SAE must fire"
    assert torch.allclose(cache[acts_name], lens_cache[acts_name], atol=1e-5)
    if architecture == "skip_transcoder" and not error_term:
        # sae-lens's splice wrapper drops the skip connection (it calls encode/decode only);
        # we output the transcoder's full prediction, which sae-lens's own forward() defines.
        mlp_in = hooked.run_with_cache(tokens, names_filter=MLP_IN)[1][MLP_IN]
        with sc.spliced(hooked, [ours], error_term=False):
            _, ours_cache = hooked.run_with_cache(tokens, names_filter=MLP_OUT)
        assert torch.allclose(ours_cache[MLP_OUT], lens_sae(mlp_in), atol=1e-5)
        assert not torch.allclose(logits, lens_logits, atol=1e-3)
    else:
        assert torch.allclose(logits, lens_logits, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "transcoder"])
@pytest.mark.parametrize("in_place", [False, True])
def test_hooks_on_the_reconstruction_and_the_error_act_as_in_sae_lens(
    hooked, tokens, tmp_path, architecture, in_place
):
    """With the error term, SAELens adds the hooked reconstruction to the error of the clean one: a
    hook that halves the reconstruction changes the output. It used to be cancelled here (the error
    was taken from the hooked reconstruction) unless a feature was edited too."""
    lens_sae = _lens_sae(architecture)
    lens_sae.save_model(tmp_path)
    ours = sc.SAE.load(tmp_path)
    site = ours.cfg.site

    def half(value, hook):
        return value.mul_(0.5) if in_place else value * 0.5

    lens_model = _lens_model(hooked)
    lens_model.add_sae(lens_sae, use_error_term=True)
    clean = hooked(tokens)
    with sc.spliced(hooked, [ours]):
        for hook in ("hook_sae_recons", "hook_sae_error"):
            hooks = [(f"{site}.{hook}", half)]
            expected = lens_model.run_with_hooks(tokens, fwd_hooks=hooks)
            got = hooked.run_with_hooks(tokens, fwd_hooks=hooks)
            assert not torch.allclose(got, clean, atol=1e-3), hook
            assert torch.allclose(got, expected, atol=1e-4), hook
        logits, _ = hooked.run_with_cache(tokens)  # every hook point watched, nothing changed
        assert torch.equal(logits, clean)  # bitwise the unspliced model (it was off by ~1e-5)


@torch.no_grad()
@pytest.mark.parametrize("architecture", ARCHS)
def test_save_here_load_in_sae_lens(tmp_path, architecture):
    lens_sae = _lens_sae(architecture)
    ours = sc.SAE.from_sae_lens(lens_sae)
    ours.save(tmp_path, sparsity=torch.linspace(-5, 0, ours.cfg.d_sae))
    back = sae_lens.SAE.load_from_disk(str(tmp_path))
    assert type(back) is type(lens_sae)
    assert back.cfg.metadata.hook_name == lens_sae.cfg.metadata.hook_name
    assert back.cfg.metadata.hook_name_out == lens_sae.cfg.metadata.hook_name_out
    x = torch.randn(3, 5, 64)
    assert torch.allclose(back.encode(x), ours.encode(x), atol=1e-6)
    assert torch.allclose(back(x), ours(x), atol=1e-5)
    assert (ours.encode(x) > 0).any()
    reloaded = sc.SAE.load(tmp_path)
    assert torch.equal(reloaded.sparsity, torch.linspace(-5, 0, ours.cfg.d_sae))


@torch.no_grad()
@pytest.mark.parametrize("architecture", ARCHS)
def test_from_live_sae_lens_object_matches_forward(architecture):
    lens_sae = _lens_sae(architecture)
    ours = sc.SAE.from_sae_lens(lens_sae)
    x = torch.randn(4, 64)
    assert torch.allclose(ours.encode(x), lens_sae.encode(x), atol=1e-6)
    assert torch.allclose(ours(x), lens_sae(x), atol=1e-5)


@pytest.mark.parametrize("threshold", [1e-3, 4e-4, 1e-4])
def test_jumprelu_training_gradients_match_sae_lens(threshold):
    """The threshold's pseudo-gradients (activation and L0 step) equal SAELens's on the same
    pre-activations, also for a threshold below half the bandwidth, where a kernel read on
    ``relu(h)`` took every negative entry for one near the threshold."""
    from sae_lens.saes.jumprelu_sae import JumpReLU as LensJumpReLU
    from sae_lens.saes.jumprelu_sae import Step as LensStep

    from sae_circuits.architectures.jumprelu import _Step, jump_relu

    generator = torch.Generator().manual_seed(0)
    h = torch.randn(256, 8, generator=generator, dtype=torch.float64) * 2e-3
    upstream = torch.randn(256, 8, generator=generator, dtype=torch.float64)
    bandwidth = 1e-3
    grads = {}
    for name, fn in {
        "ours": lambda x, t: jump_relu(x, t, bandwidth),
        "lens": lambda x, t: LensJumpReLU.apply(x, t, bandwidth, False),
        "ours_step": lambda x, t: _Step.apply(x, t, bandwidth),
        "lens_step": lambda x, t: LensStep.apply(x, t, bandwidth, False),
    }.items():
        x = h.clone().requires_grad_(True)
        t = torch.full((8,), threshold, dtype=torch.float64, requires_grad=True)
        (fn(x, t) * upstream).sum().backward()
        grads[name] = (t.grad, x.grad)
    assert grads["ours"][0].abs().sum() > 0 and grads["ours_step"][0].abs().sum() > 0
    torch.testing.assert_close(grads["ours"][0], grads["lens"][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads["ours_step"][0], grads["lens_step"][0], rtol=1e-12, atol=0)
    # straight-through for the pre-activation where the unit is on (SAELens: x > threshold)
    torch.testing.assert_close(grads["ours"][1], grads["lens"][1], rtol=0, atol=0)


@pytest.mark.parametrize("architecture", ARCHS)
def test_feature_gradients_match_sae_lens_and_the_upstream_gradient_stays_the_models(hooked, tokens, tmp_path,
                                                                                     architecture):  # fmt: skip
    """With the error term on, a backward hook on ``hook_sae_acts_post`` sees SAELens's feature
    gradient ``dL/df`` (it saw zeros), while the gradient upstream of the site stays the unspliced
    model's (SAELens's goes through the reconstruction) and the logits stay bitwise the model's."""
    lens_sae = _lens_sae(architecture)
    lens_sae.save_model(tmp_path)
    ours = sc.SAE.load(tmp_path)
    acts = f"{ours.cfg.site}.hook_sae_acts_post"

    def run(model, grads):
        model.zero_grad(set_to_none=True)
        embed = {}

        def keep_embed(x, hook):
            x.retain_grad()
            embed["x"] = x
            return x

        def keep_grad(grad, hook):
            grads.append(grad.detach().clone())

        logits = model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.0.hook_resid_pre", keep_embed)], bwd_hooks=[(acts, keep_grad)]
        )
        logits[:, -1].log_softmax(-1)[:, 7].sum().backward()
        return logits.detach(), embed["x"].grad.detach()

    clean = hooked(tokens).detach()
    embed_plain = _embedding_gradient(hooked, tokens)
    lens_model = _lens_model(hooked)
    lens_model.add_sae(lens_sae, use_error_term=True)
    lens_grads: list = []
    _, lens_embed = run(lens_model, lens_grads)
    grads: list = []
    with sc.spliced(hooked, [ours]):
        logits, embed_grad = run(hooked, grads)
    assert torch.equal(logits, clean)
    assert lens_grads[0].abs().max() > 0, "the metric must reach the features"
    assert torch.allclose(grads[0].reshape(lens_grads[0].shape), lens_grads[0], atol=1e-5, rtol=1e-4)
    assert torch.allclose(embed_grad, embed_plain, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(lens_embed, embed_plain, atol=1e-4)  # SAELens's goes through the SAE


def _embedding_gradient(model, tokens):
    embed = {}

    def keep(x, hook):
        x.retain_grad()
        embed["x"] = x
        return x

    model.zero_grad(set_to_none=True)
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", keep)])
    logits[:, -1].log_softmax(-1)[:, 7].sum().backward()
    return embed["x"].grad.detach()
