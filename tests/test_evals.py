"""Evaluation metrics against hand-computed values and limiting cases."""

from __future__ import annotations

import pytest
import torch

import sae_circuits as sc
from sae_circuits.evals import evaluate, pca_baseline
from tests.conftest import D_MODEL, random_sae
from tests.shape_check import unchecked

SITE = "blocks.0.hook_resid_post"


@pytest.fixture
def eval_tokens(model):
    ids = model.tokenizer(open(__import__("json").__file__).read())["input_ids"]
    return torch.tensor(ids[: 6 * 24]).view(6, 24)


def _perfect_sae() -> sc.SAE:
    """A 'standard' SAE that reconstructs exactly: features are x and -x along the basis."""
    sae = sc.SAE(
        sc.SAEConfig("standard", d_in=D_MODEL, d_sae=2 * D_MODEL, hook_name=SITE, apply_b_dec_to_input=False)
    )
    eye = torch.eye(D_MODEL)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@torch.no_grad()
def test_perfect_reconstruction_scores_one(model, eval_tokens):
    result = evaluate(model, _perfect_sae(), eval_tokens, baseline=False)
    assert result.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert result.ce_loss_spliced == pytest.approx(result.ce_loss_clean, abs=1e-5)
    assert result.ce_loss_score == pytest.approx(1.0, abs=1e-4)
    assert result.kl_div_score == pytest.approx(1.0, abs=1e-4)
    assert result.l0 == pytest.approx(D_MODEL, abs=1.0)  # one of each ± pair, almost always non-zero
    assert result.n_tokens == eval_tokens.numel()


@torch.no_grad()
def test_metrics_match_a_direct_computation(model, eval_tokens):
    sae = random_sae()
    result = evaluate(model, sae, eval_tokens, baseline=False)
    logits, cache = model.run_with_cache(eval_tokens, names_filter=SITE)
    x = cache[SITE].reshape(-1, D_MODEL).double()
    x_hat = sae(cache[SITE]).reshape(-1, D_MODEL).double()
    ev = 1 - (x - x_hat).pow(2).sum(-1).mean() / (x.pow(2).sum(-1).mean() - x.mean(0).pow(2).sum())
    assert result.explained_variance == pytest.approx(float(ev), rel=1e-6)
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), eval_tokens[:, 1:].reshape(-1)
    )
    assert result.ce_loss_clean == pytest.approx(float(ce), rel=1e-5)
    f = sae.encode(cache[SITE])
    assert result.l0 == pytest.approx(float((f > 0).sum(-1).float().mean()), rel=1e-6)
    fires = (f > 0).reshape(-1, f.shape[-1]).float().mean(0)
    assert result.dead_fraction == pytest.approx(float((fires == 0).float().mean()))
    assert result.dense_fraction == pytest.approx(float((fires > 0.1).float().mean()))
    assert result.kl_div_zero > 0 and result.ce_loss_zero > result.ce_loss_clean


@torch.no_grad()
def test_special_tokens_can_be_left_out_of_the_reconstruction_metrics(model, eval_tokens):
    """As SAEBench: BOS/EOS/padding positions leave explained variance, L0 and the firing counts;
    the CE and KL metrics keep every position."""
    bos = model.tokenizer.bos_token_id
    tokens = eval_tokens.clone()
    tokens[:, 0] = bos
    tokens[2, 7] = bos  # a document boundary inside a row
    sae = random_sae()
    kept = evaluate(model, sae, tokens, baseline=False, exclude_special_tokens=True)
    every = evaluate(model, sae, tokens, baseline=False)
    _, cache = model.run_with_cache(tokens, names_filter=SITE)
    rows = (tokens != bos).reshape(-1)
    x = cache[SITE].reshape(-1, D_MODEL)[rows].double()
    x_hat = sae(cache[SITE]).reshape(-1, D_MODEL)[rows].double()
    ev = 1 - (x - x_hat).pow(2).sum(-1).mean() / (x.pow(2).sum(-1).mean() - x.mean(0).pow(2).sum())
    assert kept.n_tokens == int(rows.sum()) == tokens.numel() - 7
    assert kept.explained_variance == pytest.approx(float(ev), rel=1e-6)
    assert kept.explained_variance != pytest.approx(every.explained_variance, rel=1e-4)
    f = sae.encode(cache[SITE]).reshape(-1, sae.cfg.d_sae)[rows]
    assert kept.l0 == pytest.approx(float((f > 0).sum(-1).float().mean()), rel=1e-6)
    assert kept.ce_loss_clean == every.ce_loss_clean and kept.kl_div_spliced == every.kl_div_spliced
    with pytest.raises(ValueError, match="left no token to score"):
        evaluate(model, sae, torch.full_like(tokens, bos), baseline=False, exclude_special_tokens=True)


@torch.no_grad()
def test_pca_baseline_is_the_best_rank_k_reconstruction(model, eval_tokens):
    sae = random_sae()
    base = pca_baseline(model, sae, eval_tokens, k=D_MODEL)  # full rank: exact
    _, cache = model.run_with_cache(eval_tokens, names_filter=SITE)
    assert torch.allclose(base(cache[SITE]), cache[SITE], atol=1e-4)
    result = evaluate(model, sae, eval_tokens)
    assert result.baseline is not None and result.baseline.site == SITE
    assert result.baseline.l0 <= round(result.l0) + 1e-6


@torch.no_grad()
def test_baseline_rank_is_capped_by_the_data(model, eval_tokens):
    base = pca_baseline(model, random_sae(), eval_tokens[:1, :10], k=32)
    assert base.cfg.d_sae == 2 * 10  # 10 tokens support at most 10 directions


@torch.no_grad()
def test_baseline_is_fitted_on_held_out_tokens(model, eval_tokens):
    """The baseline is scored on tokens it was not fitted on: on a short input it no longer
    reconstructs perfectly, and it warns when it cannot match the SAE's L0."""
    sae = _perfect_sae()  # L0 ~ D_MODEL: more than the 9 tokens below can fit
    short = eval_tokens[:1, :9]
    with pytest.warns(UserWarning, match="fitted on the tokens it is scored on"):
        evaluate(model, sae, short)
    with pytest.warns(UserWarning, match="support rank"):
        result = evaluate(model, sae, eval_tokens[:2, :9])
    assert result.baseline is not None and result.baseline.n_tokens == 9  # scored on the other row
    assert result.baseline.explained_variance < 0.999  # the same-token fit scored EV 1.0
    fit, scored = eval_tokens[1::2], eval_tokens[0::2]
    explicit = evaluate(model, random_sae(), scored, baseline_tokens=fit)
    assert explicit.baseline is not None and explicit.baseline.n_tokens == scored.numel()
    with pytest.raises(ValueError, match=r"baseline_tokens must be an integer tensor"), unchecked():
        evaluate(model, sae, eval_tokens, baseline_tokens=eval_tokens[0])


def test_evaluate_leaves_the_callers_random_numbers_alone_and_names_bad_input(model, eval_tokens):
    sae = _perfect_sae()
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    with pytest.warns(UserWarning, match="support rank") as caught:
        evaluate(model, sae, eval_tokens[:2, :9])
    assert torch.equal(torch.rand(2), expected)  # the baseline SAE drew its init from it
    assert caught[0].filename == __file__  # the warning points at the caller, not torch's wrapper
    as_int32 = evaluate(model, random_sae(), eval_tokens.int(), baseline=False)  # used to fail in nll_loss
    assert as_int32.ce_loss_clean == pytest.approx(
        evaluate(model, random_sae(), eval_tokens, baseline=False).ce_loss_clean
    )
    with (
        pytest.raises(ValueError, match=r"tokens must be an integer tensor .*got torch.float32"),
        unchecked(),
    ):
        evaluate(model, random_sae(), eval_tokens.float())
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size={bad} must be an integer >= 1"):
            evaluate(model, random_sae(), eval_tokens, batch_size=bad)


@torch.no_grad()
def test_the_transcoder_baseline_is_a_stable_fit(eval_tokens):
    """The MLP input is a LayerNorm output, centred: one input direction is float noise, and a plain
    least-squares fit put weights of ~1e5 on it (baselines moved between identical calls)."""
    model, _ = sc.zoo.load("tiny")
    tc = sc.zoo.load_saes("tiny", kind="transcoder")[1]
    tokens = torch.randint(0, 4096, (16, 64), generator=torch.Generator().manual_seed(0))
    fits = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        fits.append(pca_baseline(model, tc, tokens[1::2], 20))
    assert float(fits[0].W_enc.abs().max()) < 100
    assert torch.equal(fits[0].W_enc, fits[1].W_enc)
    with pytest.warns(UserWarning, match="underdetermined"):
        evaluate(model, tc, tokens[:2, :40])
