"""Matryoshka BatchTopK training: the nested prefix losses, what they buy, and bad widths."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import sae_circuits as sc
from sae_circuits.architectures.matryoshka import prefix_widths
from sae_circuits.train import ActivationStore, TrainConfig, train_sae
from tests.test_train import SITE, small


@pytest.mark.parametrize("transcoder", [False, True])
def test_prefix_losses_and_gradients_are_the_dense_definitions(transcoder):
    """The loss (and its gradient for every parameter) is the dense sum over prefixes ``m`` of
    ``|y - (f[:, :m] @ W_dec[:m] + b_dec)|^2``, summed over the output and averaged over the batch."""
    from sae_circuits.train.trainer import TrainableDictionary

    torch.manual_seed(0)
    cfg = small(architecture="matryoshka_batchtopk", k=6, matryoshka_widths=(8, 24))
    d = TrainableDictionary(
        16, 12 if transcoder else 16, 64, cfg, torch.randn(12 if transcoder else 16), transcoder
    )
    # no feature dead, so no AuxK term
    trainer = SimpleNamespace(cfg=cfg, dictionary=d, tokens_since_fired=torch.zeros(64))
    x = torch.randn(40, 16)
    y = torch.randn(40, 12) if transcoder else x
    h = d.pre_acts(x)
    code = d.activate(h)
    got = d.arch.sparsity_loss(trainer, h, code, y - d.decode(code))
    dense = code.dense()
    expected = sum((y - (dense[:, :m] @ d.W_dec[:m] + d.b_dec)).pow(2).sum(-1).mean() for m in (8, 24))
    assert torch.allclose(got, expected, rtol=1e-5)
    params = [d.W_dec, d.W_enc, d.b_enc, d.b_dec]
    for a, b in zip(
        torch.autograd.grad(got, params, retain_graph=True), torch.autograd.grad(expected, params)
    ):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # and it is not zero: the prefixes miss what the later features add
    assert got > 0 and not torch.allclose(got, 2 * (y - d.decode(code)).pow(2).sum(-1).mean())


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
        (dict(architecture="matryoshka_batchtopk", matryoshka_widths=32), "sequence"),
        (dict(architecture="matryoshka_batchtopk", matryoshka_widths=(8.0,)), "sequence"),
        (dict(architecture="matryoshka_batchtopk", matryoshka_widths=(True,)), "sequence"),
        (dict(architecture="matryoshka_batchtopk", matryoshka_widths=(0,)), ">= 1"),
        (dict(architecture="matryoshka_batchtopk", matryoshka_widths=()), "sequence"),
        (dict(architecture="matryoshka_batchtopk", d_sae=16, matryoshka_widths=(8, 32)), "beyond d_sae=16"),
        (dict(architecture="matryoshka_batchtopk", d_sae=16, matryoshka_widths=(16,)), "plain BatchTopK"),
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
