"""Interventions: exact deltas, positions, and identical results with and without the KV cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

import sae_circuits as sc
from tests.conftest import random_sae

SITE = "blocks.0.hook_resid_post"
ACTS = f"{SITE}.hook_sae_acts_post"


def _site_output_and_acts(model, tokens, interventions=()):
    with sc.intervene(model, list(interventions)):
        _, cache = model.run_with_cache(tokens, names_filter=[SITE, ACTS])
    return cache[SITE], cache[ACTS]


@torch.no_grad()
@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "gated"])
def test_clamp_changes_site_output_by_exactly_the_decoded_delta(model, tokens, architecture):
    extra = {"k": 16} if architecture == "topk" else {}
    sae = random_sae(architecture, **extra)
    feature, value, position = 7, 12.0, 3
    with sc.spliced(model, [sae]):
        clean_out, f = _site_output_and_acts(model, tokens)
        out, f_edit = _site_output_and_acts(
            model, tokens, [sc.clamp(SITE, feature, value, positions=position)]
        )
    expected = (value - f[:, position, feature])[:, None] * sae.W_dec[feature]
    assert torch.allclose(out[:, position] - clean_out[:, position], expected, atol=1e-5)
    others = torch.ones(tokens.shape[1], dtype=torch.bool)
    others[position] = False
    assert torch.equal(out[:, others], clean_out[:, others])  # bitwise untouched elsewhere
    assert torch.equal(f_edit[:, position, feature], torch.full_like(f_edit[:, position, feature], value))


@torch.no_grad()
def test_ablate_scale_add_semantics(model, tokens, sae):
    with sc.spliced(model, [sae]):
        _, f = _site_output_and_acts(model, tokens)
        active = int((f > 0).sum((0, 1)).argmax())
        cases = {
            "ablate": (sc.ablate(SITE, [active, 3]), lambda a: torch.zeros_like(a)),
            "scale": (sc.scale(SITE, [active, 3], 2.5), lambda a: a * 2.5),
            "add": (sc.add(SITE, [active, 3], -0.25), lambda a: a - 0.25),
        }
        for name, (iv, fn) in cases.items():
            _, edited = _site_output_and_acts(model, tokens, [iv])
            assert torch.allclose(edited[..., [active, 3]], fn(f[..., [active, 3]])), name
            untouched = [i for i in range(sae.cfg.d_sae) if i not in (active, 3)]
            assert torch.equal(edited[..., untouched], f[..., untouched]), name


@torch.no_grad()
def test_interventions_on_one_site_apply_in_order(model, tokens, sae):
    with sc.spliced(model, [sae]):
        _, f = _site_output_and_acts(model, tokens, [sc.clamp(SITE, 5, 2.0), sc.scale(SITE, 5, 3.0)])
    assert torch.allclose(f[..., 5], torch.full_like(f[..., 5], 6.0))


@torch.no_grad()
def test_explicit_position_beyond_a_plain_forward_is_an_error(model, tokens, sae):
    with sc.spliced(model, [sae]):
        with pytest.raises(
            IndexError, match=r"position 99 is beyond the sequence: the forward pass has 12 tokens"
        ):
            with sc.intervene(model, [sc.clamp(SITE, 1, 1.0, positions=[2, 99])]):
                model(tokens)
        assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_bad_interventions_are_rejected_before_anything_changes(model, sae):
    with pytest.raises(ValueError, match="must be finite"):
        sc.clamp(SITE, 1, float("nan"))
    with pytest.raises(ValueError, match=r"value=-1.0 must be >= 0"):
        sc.clamp(SITE, 1, -1.0)
    with pytest.raises(ValueError, match=r"factor=-2.0 must be >= 0"):
        sc.scale(SITE, 1, -2.0)
    with pytest.raises(ValueError, match="feature index -3 is negative"):
        sc.ablate(SITE, [1, -3])
    with pytest.raises(TypeError, match="is not an int"):
        sc.ablate(SITE, [1.5])
    with pytest.raises(ValueError, match="-1 is negative; positions are absolute"):
        sc.ablate(SITE, 1, positions=-1)
    with pytest.raises(ValueError, match="expected 'prompt', 'generated'"):
        sc.ablate(SITE, 1, positions="last")
    with pytest.raises(ValueError, match="no SAE is spliced at 'blocks.0.hook_resid_post'"):
        with sc.intervene(model, [sc.ablate(SITE, 1)]):
            pass
    with sc.spliced(model, [sae]):
        with pytest.raises(IndexError, match=r"feature index 256 is out of range .* d_sae=256"):
            with sc.intervene(model, [sc.ablate(SITE, 1), sc.ablate(SITE, 256)]):
                pass
        assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    assert "forward" not in model.__dict__


def _generate(model, prompt, *, cache: bool, n: int = 8):
    out = model.generate(
        prompt, max_new_tokens=n, do_sample=False, use_past_kv_cache=cache, verbose=False,
        stop_at_eos=False, return_type="tokens", output_logits=True,
    )  # fmt: skip
    return out.sequences, torch.stack(out.logits, dim=1)


@torch.no_grad()
@pytest.mark.parametrize("positions", [None, "generated", "prompt", [4, 9, 13], slice(6, None, 2)])
def test_cached_and_uncached_generation_agree(model, tokens, sae, positions):
    prompt = tokens[:1, :6]
    with sc.spliced(model, [sae]):
        f_max = float(_site_output_and_acts(model, tokens)[1].max())
        edits = [
            sc.clamp(SITE, 11, 3 * f_max, positions=positions),
            sc.ablate(SITE, [0, 1, 2], positions=positions),
        ]
        _plain_tokens, plain_logits = _generate(model, prompt, cache=True)
        with sc.intervene(model, edits):
            cached = _generate(model, prompt, cache=True)
            uncached = _generate(model, prompt, cache=False)
    assert torch.equal(cached[0], uncached[0])
    assert torch.allclose(cached[1], uncached[1], atol=1e-4)
    assert not torch.allclose(cached[1], plain_logits, atol=1e-3)  # the edit did something
    if positions == "generated":  # the prompt's logits (first step) are untouched
        assert torch.equal(cached[1][:, 0], plain_logits[:, 0])


@torch.no_grad()
def test_steer_matches_in_cached_and_uncached_generation(model, tokens):
    sae = random_sae()  # not spliced: steering only needs its decoder
    prompt = tokens[:1, :6]
    plain = _generate(model, prompt, cache=True)
    with sc.intervene(model, [sc.steer(sae, 3, 8.0, positions="generated")]):
        cached = _generate(model, prompt, cache=True)
        uncached = _generate(model, prompt, cache=False)
    assert torch.equal(cached[0], uncached[0])
    assert torch.allclose(cached[1], uncached[1], atol=1e-4)
    assert torch.equal(cached[1][:, 0], plain[1][:, 0])  # prompt untouched
    assert not torch.allclose(cached[1][:, 1:], plain[1][:, 1:], atol=1e-3)  # generated steps steered


@torch.no_grad()
def test_clamp_in_a_cached_run_affects_exactly_that_position(hooked, tokens, sae):
    """Feed a sequence chunk by chunk through the KV cache: a clamp at absolute position p edits p only."""
    seq = tokens[:1]
    p, feature = 8, 9

    def chunked_acts(interventions):
        cache = TransformerLensKeyValueCache.init_cache(hooked.cfg, hooked.cfg.device, 1)
        acts, logits = [], []
        with sc.intervene(hooked, interventions):
            for start, stop in [(0, 5), (5, 6), (6, 9), (9, 12)]:
                out, c = hooked.run_with_cache(seq[:, start:stop], past_kv_cache=cache, names_filter=ACTS)
                acts.append(c[ACTS])
                logits.append(out)
        return torch.cat(acts, dim=1), torch.cat(logits, dim=1)

    with sc.spliced(hooked, [sae]):
        base_acts, base_logits = chunked_acts([])
        acts, logits = chunked_acts([sc.clamp(SITE, feature, 5.0, positions=p)])
        full_logits = hooked(seq)
    assert torch.allclose(base_logits, full_logits, atol=1e-4)  # chunking itself is faithful
    changed = (acts != base_acts).any(-1)[0]
    assert changed.nonzero().flatten().tolist() == [p]
    assert acts[0, p, feature] == 5.0
    assert torch.equal(logits[:, :p], base_logits[:, :p])  # causal: earlier positions untouched


@torch.no_grad()
def test_interventions_nest_and_unwind(model, tokens, sae):
    with sc.spliced(model, [sae]):
        _, f = _site_output_and_acts(model, tokens)
        with sc.intervene(model, [sc.clamp(SITE, 4, 1.5)]):
            with sc.intervene(model, [sc.clamp(SITE, 6, 2.5)]):
                _, both = _site_output_and_acts(model, tokens)
            _, outer = _site_output_and_acts(model, tokens)
        _, after = _site_output_and_acts(model, tokens)
    assert (both[..., 4] == 1.5).all() and (both[..., 6] == 2.5).all()
    assert (outer[..., 4] == 1.5).all() and torch.equal(outer[..., 6], f[..., 6])
    assert torch.equal(after, f)


@torch.no_grad()
def test_intervention_by_sae_object_and_transcoder_input_name(model, tokens):
    tc = random_sae("transcoder", hook_name="blocks.1.ln2.hook_normalized", d_out=64, d_sae=128)
    tc.cfg.hook_name_out = "blocks.1.hook_mlp_out"
    acts = "blocks.1.hook_mlp_out.hook_sae_acts_post"
    with sc.spliced(model, [tc]):
        for site in (tc, "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"):
            with sc.intervene(model, [sc.clamp(site, 2, 4.0)]):
                _, cache = model.run_with_cache(tokens, names_filter=acts)
            assert (cache[acts][..., 2] == 4.0).all()


@torch.no_grad()
def test_numpy_numbers_work_like_python_ones(model, tokens, sae):
    python = [
        sc.clamp(SITE, [3, 5], 2.0, positions=[1, 4]),
        sc.scale(SITE, 6, 2.0, positions=2),
        sc.add(SITE, 9, -1, positions=slice(2, None)),
        sc.steer(SITE, 7, 0.5, positions=[0, 3]),
    ]
    numpy = [
        sc.clamp(SITE, np.array([3, 5]), np.float32(2.0), positions=np.array([4, 1])),
        sc.scale(SITE, np.int64(6), np.array(2.0), positions=np.int64(2)),
        sc.add(SITE, np.int32(9), np.int64(-1), positions=slice(np.int64(2), None)),
        sc.steer(SITE, np.int64(7), np.float64(0.5), positions=np.array([0, 3], dtype=np.uint8)),
    ]
    assert numpy == python
    assert all(type(i) is int for iv in numpy for i in iv.features)  # plain ints from here on
    assert all(type(p) is int for p in numpy[0].positions) and type(numpy[2].positions.start) is int
    with sc.spliced(model, [sae]):
        expected = _site_output_and_acts(model, tokens, python)
        got = _site_output_and_acts(model, tokens, numpy)
        plain = _site_output_and_acts(model, tokens)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert not torch.equal(got[0], plain[0])  # the edits did something


@pytest.mark.parametrize(
    "bad",
    [np.float64(3.0), np.array([1.0, 2.0]), np.bool_(True), True, torch.tensor(True), np.array([[1, 2]])],
    ids=repr,
)
def test_features_are_integers_by_type_not_by_value(bad):
    with pytest.raises(TypeError, match="is not an int|expected an int"):
        sc.ablate(SITE, bad)


@pytest.mark.parametrize("bad", [np.bool_(True), np.array(True), torch.tensor(False), np.complex64(1), "1"])
def test_values_must_be_real_numbers(bad):
    with pytest.raises(TypeError, match="must be a number"):
        sc.add(SITE, 1, bad)


F32_MAX = float(torch.finfo(torch.float32).max)


@pytest.mark.parametrize(
    "make",
    [
        lambda v: sc.clamp(SITE, 1, v),
        lambda v: sc.scale(SITE, 1, v),
        lambda v: sc.add(SITE, 1, v),
        lambda v: sc.add(SITE, 1, -v),
        lambda v: sc.steer(SITE, 1, v),
    ],
    ids=["clamp", "scale", "add", "add-negative", "steer"],
)
def test_values_beyond_float32_or_not_finite_are_rejected_at_construction(make):
    for value in (1e300, np.float64(1e39), torch.tensor(1e300, dtype=torch.float64), 10**400, F32_MAX * 1.01):
        with pytest.raises(ValueError, match=r"=-?[\d.e+]+.* is beyond the float32 range"):
            make(value)
    with pytest.raises(ValueError, match=r"1e\+300 is beyond the float32 range"):
        make(1e300)
    for value in (float("inf"), np.float32("nan"), torch.tensor(float("-inf"))):
        with pytest.raises(ValueError, match="must be finite"):
            make(value)
    assert abs(make(F32_MAX).value) == F32_MAX  # the largest float32 is still fine


# --------------------------------------------------------------------------- one contract, many kinds


def test_each_kind_is_its_own_type_and_reachable_under_the_namespace():
    from sae_circuits import interventions as ivs

    made = {
        ivs.Ablate: sc.ablate(SITE, 1),
        ivs.Clamp: sc.clamp(SITE, 1, 2.0),
        ivs.Scale: sc.scale(SITE, 1, 2.0),
        ivs.Add: sc.add(SITE, 1, 2.0),
        ivs.Noise: sc.noise(SITE, 1, 2.0, seed=0),
        ivs.Steer: sc.steer(SITE, 1, 2.0),
    }
    for kind, iv in made.items():
        assert type(iv) is kind and isinstance(iv, sc.Intervention), kind
        assert kind.__doc__ and iv.op == kind.__name__.lower()
    assert sc.interventions is ivs
    for name in ("ablate", "clamp", "scale", "add", "noise", "steer", "intervene"):
        assert getattr(sc.interventions, name) is getattr(sc, name)
    # The classes check their arguments as the factories do, and normalise them the same way.
    assert ivs.Clamp(SITE, (3, 1, 3), 2.0, positions=[5, 2]) == sc.clamp(SITE, [3, 1], 2.0, positions=[2, 5])
    assert ivs.Scale(SITE, (1,), 2.0).factor == sc.scale(SITE, 1, 2).value == 2.0
    assert ivs.Steer(SITE, (4,), -1.0).feature == 4
    with pytest.raises(ValueError, match=r"value=-1.0 must be >= 0"):
        ivs.Clamp(SITE, (1,), -1.0)
    with pytest.raises(ValueError, match="steer takes a single feature index"):
        ivs.Steer(SITE, (1, 2), 1.0)


@torch.no_grad()
def test_a_new_kind_is_one_small_class(model, tokens, sae):
    """The ``edit`` contract is all :func:`intervene` needs: a kind defined here works unchanged."""
    from dataclasses import dataclass

    from sae_circuits.interventions import FeatureEdit

    @dataclass(frozen=True)
    class Negate(FeatureEdit):
        op = "negate"

        def new_values(self, f, where):
            return -f

    with sc.spliced(model, [sae]):
        _, f = _site_output_and_acts(model, tokens)
        _, edited = _site_output_and_acts(model, tokens, [Negate(SITE, (4, 9), positions=[1, 3])])
    expected = f.clone()
    expected[:, [1, 3], 4] = -f[:, [1, 3], 4]
    expected[:, [1, 3], 9] = -f[:, [1, 3], 9]
    assert torch.equal(edited, expected)


@torch.no_grad()
def test_feature_edits_and_steering_share_one_hook_per_hook_point(model, sae):
    with sc.spliced(model, [sae]):
        edits = [sc.clamp(SITE, 1, 2.0), sc.noise(SITE, 2, 0.1, seed=0), sc.steer(SITE, 3, 1.0)]
        with sc.intervene(model, edits):
            assert len(model.hook_dict[ACTS].fwd_hooks) == 1  # clamp and noise, in order
            assert len(model.hook_dict[SITE].fwd_hooks) == 1  # steer, on the activation
        assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


# --------------------------------------------------------------------------- noise


@torch.no_grad()
def test_noise_edits_only_the_chosen_features_and_positions(model, tokens, sae):
    with sc.spliced(model, [sae]):
        _, f = _site_output_and_acts(model, tokens)
        _, noisy = _site_output_and_acts(
            model, tokens, [sc.noise(SITE, [3, 5], 0.5, positions=[2, 4], seed=1)]
        )
    assert noisy.shape == f.shape and noisy.dtype == f.dtype
    changed = (noisy != f).nonzero()[:, 1:].unique(dim=0).tolist()  # (position, feature) pairs
    assert changed == [[2, 3], [2, 5], [4, 3], [4, 5]]
    delta = noisy[:, [2, 4]][..., [3, 5]] - f[:, [2, 4]][..., [3, 5]]
    assert 0.05 < float(delta.abs().mean()) < 2.0  # of the order of std = 0.5


@torch.no_grad()
def test_noise_with_a_seed_is_reproducible(model, tokens, sae):
    def noisy(**kwargs):
        return _site_output_and_acts(model, tokens, [sc.noise(SITE, [0, 7, 9], 1.0, **kwargs)])[1]

    with sc.spliced(model, [sae]):
        first, again, other = noisy(seed=3), noisy(seed=3), noisy(seed=4)
        torch.manual_seed(0)
        unseeded = noisy()
        torch.manual_seed(0)
        unseeded_again = noisy()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(unseeded, unseeded_again)  # seed=None draws from torch's generator
    assert sc.noise(SITE, 1, 1.0, seed=5) == sc.noise(SITE, 1, 1.0, seed=5)
    assert sc.noise(SITE, 1, 1.0).seed != sc.noise(SITE, 1, 1.0).seed


@torch.no_grad()
def test_zero_std_noise_is_exactly_a_no_op(model, tokens, sae):
    with sc.spliced(model, [sae]):
        clean_logits = model(tokens)
        clean = _site_output_and_acts(model, tokens)
        with sc.intervene(model, [sc.noise(SITE, list(range(sae.cfg.d_sae)), 0.0, seed=0)]):
            logits = model(tokens)
        edited = _site_output_and_acts(model, tokens, [sc.noise(SITE, [1, 2], -0.0)])
    assert torch.equal(logits, clean_logits)
    assert torch.equal(edited[0], clean[0]) and torch.equal(edited[1], clean[1])


@torch.no_grad()
@pytest.mark.parametrize("positions", [None, "generated", [3, 7, 9]])
def test_noise_is_identical_with_and_without_the_kv_cache(model, tokens, sae, positions):
    prompt = tokens[:1, :6]
    with sc.spliced(model, [sae]):
        f_max = float(_site_output_and_acts(model, tokens)[1].max())
        _plain_tokens, plain_logits = _generate(model, prompt, cache=True)
        edits = [sc.noise(SITE, list(range(0, sae.cfg.d_sae, 4)), 2 * f_max, positions=positions, seed=7)]
        with sc.intervene(model, edits):
            cached = _generate(model, prompt, cache=True)
            uncached = _generate(model, prompt, cache=False)
    assert torch.equal(cached[0], uncached[0])
    assert torch.allclose(cached[1], uncached[1], atol=1e-4)
    assert not torch.allclose(cached[1], plain_logits, atol=1e-3)  # the noise did something


@pytest.mark.parametrize(
    ("std", "message"),
    [
        (-0.5, r"std=-0.5 must be >= 0 \(a standard deviation\)"),
        (float("nan"), "std=nan must be finite"),
        (np.float64("inf"), "std=inf must be finite"),
        (1e300, r"std=1e\+300 is beyond the float32 range"),
    ],
)
def test_bad_noise_std_is_a_value_error_naming_it(std, message):
    with pytest.raises(ValueError, match=message):
        sc.noise(SITE, 1, std)


def test_bad_noise_arguments_are_rejected():
    with pytest.raises(TypeError, match="std='1' must be a number"):
        sc.noise(SITE, 1, "1")
    with pytest.raises(TypeError, match=r"seed=1.5 must be an int or None"):
        sc.noise(SITE, 1, 1.0, seed=1.5)
    with pytest.raises(ValueError, match=r"seed=-1 must be >= 0"):
        sc.noise(SITE, 1, 1.0, seed=-1)
    with pytest.raises(ValueError, match="-2 is negative; positions are absolute"):
        sc.noise(SITE, 1, 1.0, positions=-2)


def test_an_intervention_on_an_sae_prints_on_one_line():
    sae = random_sae()
    assert repr(sae) == "SAE(standard, d_in=64, d_sae=256, hook_name='blocks.0.hook_resid_post')"
    assert "\n" not in repr(sc.clamp(sae, 3, 1.0))  # it had printed the SAE's six hook points
