"""Matryoshka BatchTopK training: the nested prefix losses, what they buy, and bad widths."""

from __future__ import annotations

import pytest
import torch

import sae_circuits as sc
from sae_circuits.architectures.matryoshka import prefix_widths
from sae_circuits.train import ActivationStore, SAETrainer, TrainConfig, train_sae
from tests.test_train import SITE, small


def _trainer(model, tokens, **overrides) -> tuple[SAETrainer, ActivationStore]:
    cfg = small(architecture="matryoshka_batchtopk", **overrides)
    store = ActivationStore(model, tokens, SITE, batch_size=cfg.batch_size, buffer_tokens=cfg.buffer_tokens)
    return SAETrainer(store, cfg, sc.SAEConfig("jumprelu", d_in=64, d_sae=256, hook_name=SITE)), store


def test_prefix_losses_are_the_dense_reconstructions_from_the_first_features(model, train_tokens):
    trainer, store = _trainer(model, train_tokens, matryoshka_widths=(16, 64))
    d = trainer.dictionary
    x = next(iter(store))[SITE] * trainer.scale_in
    h = d.pre_acts(x)
    code = d.activate(h)
    y_hat = d.decode(code)
    assert int(trainer.tokens_since_fired.max()) < trainer.cfg.dead_after_tokens  # no AuxK term
    dense = code.dense()
    expected = sum((x - (dense[:, :m] @ d.W_dec[:m] + d.b_dec)).pow(2).sum(-1).mean() for m in (16, 64))
    got = trainer._sparsity_loss(h, code, x - y_hat)
    assert torch.allclose(got, expected, rtol=1e-5)
    # the gradient reaches the decoder rows of every prefix
    (grad,) = torch.autograd.grad(got, [d.W_dec])
    used = dense[:, :64].ne(0).any(0).nonzero().squeeze(-1)
    assert grad[used].norm(dim=-1).gt(0).all()


def test_the_first_features_reconstruct_on_their_own_where_batchtopks_do_not(model, train_tokens):
    """What the extra losses buy: the first 16 of 256 features explain more of the activations
    alone, at little cost to the whole dictionary (a random model's activations, 30 steps)."""
    x = ActivationStore(model, train_tokens, SITE, batch_size=512, buffer_tokens=2048).sample(1024)[SITE]

    def prefix_explained(sae: sc.SAE, width: int) -> float:
        f = sae.encode(x)
        f[:, width:] = 0
        error = (sae.decode(f) - x).pow(2).sum()
        return 1 - float(error / (x - x.mean(0)).pow(2).sum())

    plain = train_sae(model, SITE, train_tokens, small(architecture="batchtopk"))
    nested = train_sae(
        model, SITE, train_tokens, small(architecture="matryoshka_batchtopk", matryoshka_widths=(16,))
    )
    assert nested.cfg.architecture == "jumprelu"  # saved as BatchTopK is
    assert nested.cfg.metadata["sae_circuits_training"]["architecture"] == "matryoshka_batchtopk"
    with torch.no_grad():  # measured (seeds 0-2): 0.070-0.074 against 0.009-0.013; whole: 0.24 and 0.22
        assert prefix_explained(nested, 16) > 3 * prefix_explained(plain, 16) + 0.03
        assert prefix_explained(nested, 256) > prefix_explained(plain, 256) - 0.05


def test_default_widths_double_up_to_half_the_dictionary():
    cfg = TrainConfig(architecture="matryoshka_batchtopk", k=8)
    assert prefix_widths(cfg, 1024) == (64, 128, 256, 512)
    assert prefix_widths(cfg, 32) == (8, 16)  # never below k
    assert prefix_widths(
        TrainConfig(architecture="matryoshka_batchtopk", k=8, matryoshka_widths=(4, 32)), 32
    ) == (4,)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(architecture="batchtopk", matryoshka_widths=(8,)), "applies only to"),
        (dict(architecture="matryoshka_batchtopk", matryoshka_widths=(32, 8)), "increasing"),
        (dict(architecture="matryoshka_batchtopk", matryoshka_widths=(8, 8)), "increasing"),
        (dict(architecture="matryoshka_batchtopk", matryoshka_widths=[8]), "tuple"),
        (dict(architecture="matryoshka_batchtopk", matryoshka_widths=(0,)), ">= 1"),
        (dict(architecture="matryoshka_batchtopk", matryoshka_widths=()), "tuple"),
        (dict(architecture="matryoshka_batchtopk", d_sae=16, matryoshka_widths=(8, 32)), "d_sae=16"),
    ],
)
def test_bad_widths_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_widths_wider_than_the_dictionary_are_named_before_training(model, train_tokens):
    with pytest.raises(ValueError, match=r"matryoshka_widths=\(512,\).*d_sae=256"):
        train_sae(
            model, SITE, train_tokens, small(architecture="matryoshka_batchtopk", matryoshka_widths=(512,))
        )


def test_the_distributed_command_takes_the_widths():
    from sae_circuits.train.distributed import _parser

    args = _parser().parse_args(
        [
            "--cache",
            "c",
            "--out",
            "o",
            "--architecture",
            "matryoshka_batchtopk",
            "--matryoshka-widths",
            "8",
            "32",
        ]
    )
    assert args.matryoshka_widths == [8, 32] and args.architecture == "matryoshka_batchtopk"


def test_a_matryoshka_transcoder_is_saved_as_a_jumprelu_transcoder(model, train_tokens):
    from sae_circuits.train import train_transcoder

    config = small(architecture="matryoshka_batchtopk", total_tokens=256 * 4)
    tc = train_transcoder(
        model, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", train_tokens, config
    )
    assert tc.cfg.architecture == "jumprelu_transcoder"
    with sc.spliced(model, [tc]):
        model(train_tokens[:2])
