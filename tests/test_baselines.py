"""Random-dictionary baselines (sae_circuits.baselines.random_like): shape and sites, determinism,
the global RNG left alone, the calibrated number of active features, errors."""

from __future__ import annotations

import pytest
import torch

import sae_circuits as sc
from sae_circuits.baselines import random_like
from sae_circuits.languages import automata
from tests.conftest import random_sae


@pytest.fixture(scope="module")
def embedded():
    model = sc.zoo.load_model("tiny")
    saes = sc.zoo.load_saes("tiny", kind="resid")
    docs = automata.generate("markup", 40, seed=5)
    rows = [model.to_tokens("".join(symbols), prepend_bos=False)[0] for symbols, _ in docs]
    tokens = torch.cat(rows)
    return model, saes, tokens[:1024].reshape(2, 512), tokens[1024:2048].reshape(2, 512)


def test_same_shape_and_sites():
    like = random_sae("standard", d_sae=96)
    random = random_like(like)
    assert random.cfg.architecture == "jumprelu"
    for field in ("d_in", "d_sae", "hook_name", "hook_name_out", "d_out", "dtype", "device"):
        assert getattr(random.cfg, field) == getattr(like.cfg, field), field
    norms = random.W_dec.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert torch.equal(random.W_enc, random.W_dec.T)
    assert not random.b_enc.any() and not random.b_dec.any()
    assert random.cfg.metadata["baseline"] == "random_like" and random.cfg.metadata["seed"] == 0


def test_transcoder_keeps_both_hooks():
    like = random_sae(
        "skip_transcoder", hook_name="blocks.0.ln2.hook_normalized", d_sae=64,
        hook_name_out="blocks.0.hook_mlp_out", d_out=48,
    )  # fmt: skip
    random = random_like(like, seed=3)
    assert random.cfg.architecture == "jumprelu_transcoder" and random.cfg.is_transcoder
    assert (random.cfg.hook_name, random.cfg.hook_name_out) == (like.cfg.hook_name, like.cfg.hook_name_out)
    assert (random.W_enc.shape, random.W_dec.shape) == (like.W_enc.shape, like.W_dec.shape)
    assert torch.allclose(random.W_enc.norm(dim=0), torch.ones(64), atol=1e-5)


def test_deterministic_by_seed_and_global_rng_untouched():
    like = random_sae(d_sae=128)
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    a, b, c = random_like(like, seed=7), random_like(like, seed=7), random_like(like, seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.threshold, b.threshold)
    assert not torch.equal(a.W_dec, c.W_dec)


def test_default_threshold_is_the_normal_quantile():
    like = random_sae(d_sae=200)
    random = random_like(like, active=10)
    x = torch.randn(4000, like.cfg.d_in)  # isotropic, norm ~ sqrt(d_in): the documented default
    assert float(random.threshold[0].detach()) == pytest.approx(1.6449, abs=1e-3)  # z of 1 - 10/200
    assert float((random.encode(x) > 0).sum(-1).float().mean()) == pytest.approx(10, rel=0.15)


def test_active_count_near_target_on_the_embedded_model(embedded):
    model, saes, calibration, held_out = embedded
    random = [random_like(sae, model, calibration, active=20, seed=k) for k, sae in enumerate(saes)]
    assert all(torch.equal(r.threshold, random_like(s, model, calibration, active=20, seed=k).threshold)
               for k, (r, s) in enumerate(zip(random[:1], saes[:1])))  # fmt: skip
    names = {f"{r.cfg.hook_name}.hook_sae_acts_post" for r in random}
    with sc.spliced(model, random):
        for tokens, tolerance in ((calibration, 0.1), (held_out, 0.5)):
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            for name in names:
                count = float((cache[name] > 0).sum(-1).float().mean())
                assert count == pytest.approx(20, rel=tolerance), (name, count)


def test_bad_input_errors(embedded):
    model, saes, calibration, _ = embedded
    like = saes[0]
    with pytest.raises(TypeError, match="sae must be an SAE"):
        random_like("blocks.0.hook_resid_post")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"active=0 must be .* d_sae=2048"):
        random_like(like, active=0)
    with pytest.raises(ValueError, match="active=2048"):
        random_like(like, active=2048)
    with pytest.raises(ValueError, match="seed=-1"):
        random_like(like, seed=-1)
    with pytest.raises(ValueError, match="model was given without tokens"):
        random_like(like, model)
    with pytest.raises(ValueError, match="tokens was given without model"):
        random_like(like, tokens=calibration)
    with pytest.raises(
        TypeError, match=r"integer tensor of token ids|parameter 'tokens'"
    ):  # or the shape check
        random_like(like, model, calibration.float())
    with pytest.raises(ValueError, match="too few to calibrate"):
        random_like(like, model, calibration[:, :10])
    with pytest.raises(ValueError, match="no hook 'blocks.9.hook_resid_post'"):
        random_like(random_sae(hook_name="blocks.9.hook_resid_post", d_in=128), model, calibration)


def test_a_float64_dictionary_is_calibrated_exactly_and_casts_keep_the_config_true(embedded, tmp_path):
    """The k-th pre-activation was taken in float32 and cast back: in float64 the threshold fell just
    below the token that sets it, which then fired too (about 10% more active features). And
    .double() left cfg.dtype at float32, so random_like and save/load went back to float32."""
    model, saes, _, _ = embedded
    calibration = torch.randint(0, 4096, (2, 256), generator=torch.Generator().manual_seed(0))  # few ties
    sae = random_sae(hook_name=saes[1].cfg.hook_name, d_in=saes[1].cfg.d_in, d_sae=256).double()
    assert sae.cfg.dtype == "float64"
    random = random_like(sae, model, calibration, active=20)
    assert random.W_dec.dtype == torch.float64 and random.cfg.dtype == "float64"
    single = random_like(random_sae(hook_name=saes[1].cfg.hook_name, d_in=saes[1].cfg.d_in, d_sae=256),
                         model, calibration, active=20)  # fmt: skip
    _, cache = model.run_with_cache(calibration, names_filter=[sae.cfg.hook_name])
    acts = cache[sae.cfg.hook_name]
    l0 = [
        float((r.pre_activations(acts.to(r.dtype)) > r.threshold).sum(-1).float().mean())
        for r in (random, single)
    ]
    assert l0[0] == pytest.approx(l0[1], rel=0.01)  # was 10% above in float64
    sae.save(tmp_path)
    assert sc.SAE.load(tmp_path).W_enc.dtype == torch.float64
    for cast, name in ((sae.half, "float16"), (sae.bfloat16, "bfloat16"), (sae.float, "float32")):
        assert cast().cfg.dtype == name


def test_token_rows_get_their_bos_on_their_own_device():
    from sae_circuits._tokenize import token_row

    model = sc.zoo.load_model("tiny")
    row = token_row(model, torch.tensor([5, 6, 7], device="meta"), bos=True, ids="like_text")
    assert row.device.type == "meta" and row.shape == (4,)
