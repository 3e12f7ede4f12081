"""JumpReLU (Rajamanoharan et al. 2024): ``f = h * [h > threshold]`` with a learned per-feature
threshold, trained with an L0 penalty through straight-through estimators (rectangle kernel).

On disk: ``jumprelu``, ``jumprelu_transcoder``, ``jumprelu_skip_transcoder``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from sae_circuits.architectures.base import Architecture, SparseCode, register

if TYPE_CHECKING:
    from sae_circuits.sae import SAE
    from sae_circuits.train.config import TrainConfig
    from sae_circuits.train.trainer import SAETrainer, TrainableDictionary


def jump_relu(
    h: Float[Tensor, "... d_sae"], threshold: Float[Tensor, " d_sae"], bandwidth: float | None = None
) -> Float[Tensor, "... d_sae"]:
    """The JumpReLU activation ``relu(h) * [h > threshold]``, the one definition used for
    inference and training. With ``bandwidth`` (training), ``threshold`` gets the rectangle-kernel
    pseudo-gradient of the JumpReLU paper; without it, ordinary autograd (zero almost everywhere)."""
    if bandwidth is None:
        return h.relu() * (h > threshold)
    return _JumpReLU.apply(h, threshold, bandwidth)


# Both autograd functions take the raw pre-activation, as the paper and SAELens do: the kernel
# window |h - t| < bandwidth / 2 must not see a negative h as 0, which it would take for a value
# near a threshold below bandwidth / 2 (about half of all entries, each pushing the threshold).
class _JumpReLU(torch.autograd.Function):
    """``relu(h) * (h > t)``; the threshold gets a rectangle-kernel pseudo-gradient."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        """``relu(h) * (h > threshold)``."""
        ctx.save_for_backward(h, threshold)
        ctx.bandwidth = bandwidth
        return h.relu() * (h > threshold)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        """Straight-through for ``h``; rectangle-kernel pseudo-gradient for the threshold."""
        h, threshold = ctx.saved_tensors
        window = ((h - threshold).abs() < ctx.bandwidth / 2).to(grad.dtype)
        grad_threshold = -(threshold / ctx.bandwidth) * window * grad
        return ((h > threshold) & (h > 0)) * grad, grad_threshold.sum(0), None


class _Step(torch.autograd.Function):
    """``(h > t)`` with the same pseudo-gradient for the threshold: a differentiable L0."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        """``(h > threshold)`` as floats."""
        ctx.save_for_backward(h, threshold)
        ctx.bandwidth = bandwidth
        return (h > threshold).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        """No gradient for ``h``; rectangle-kernel pseudo-gradient for the threshold."""
        h, threshold = ctx.saved_tensors
        window = ((h - threshold).abs() < ctx.bandwidth / 2).to(grad.dtype)
        return None, (-(1.0 / ctx.bandwidth) * window * grad).sum(0), None


@register
class JumpReLU(Architecture):
    """JumpReLU SAEs and transcoders (a ``threshold`` parameter beside ``b_enc``)."""

    name = "jumprelu"
    trainable = True

    def parameter_shapes(self, d_sae: int) -> dict[str, tuple[int, ...]]:
        """``b_enc`` and the per-feature ``threshold``."""
        return {"b_enc": (d_sae,), "threshold": (d_sae,)}

    def activate(
        self, sae: SAE, h: Float[Tensor, "... d_sae"], gate: Bool[Tensor, "... d_sae"] | None
    ) -> Float[Tensor, "... d_sae"]:
        """:func:`jump_relu` with the SAE's thresholds."""
        return jump_relu(h, sae.threshold)

    # Training learns the threshold itself, kept >= 0 by projection before each step. Adam moves a
    # parameter by about lr per step, so a learned log(threshold) (the paper's positivity device)
    # moves a small threshold by a factor of at most exp(lr * steps): 1.2 over a default run, too
    # little to sparsify (SAELens made the same change, its issue #494).
    def init_training(self, dictionary: TrainableDictionary, cfg: TrainConfig) -> None:
        """``threshold``, initialised at ``cfg.jumprelu_init_threshold``."""
        d_sae = dictionary.W_enc.shape[1]
        threshold = torch.full((d_sae,), float(cfg.jumprelu_init_threshold))
        dictionary.register_parameter("threshold", nn.Parameter(threshold))

    def train_activate(self, dictionary: TrainableDictionary, h: Tensor) -> Tensor | SparseCode:
        """:func:`jump_relu` with the threshold's pseudo-gradient, the threshold first projected
        to >= 0 (each step's first use of it; the sparsity loss reads it after)."""
        threshold = dictionary.get_parameter("threshold")
        with torch.no_grad():  # on the data: a clamp in the graph would zero its gradient at 0
            threshold.clamp_(min=0.0)
        return jump_relu(h, threshold, dictionary.cfg.jumprelu_bandwidth)

    def sparsity_loss(
        self, trainer: SAETrainer, h: Tensor, f: Tensor | SparseCode | None, residual: Tensor
    ) -> Tensor:
        """L0 through the step function's pseudo-gradient, weighted by ``l0_coeff``."""
        cfg = trainer.cfg
        threshold = trainer.dictionary.get_parameter("threshold")
        fired = _Step.apply(h, threshold, cfg.jumprelu_bandwidth)
        return cfg.l0_coeff * fired.sum(-1).mean()

    def export_training(self, dictionary: TrainableDictionary, sae: SAE) -> None:
        """The learned ``threshold`` (>= 0)."""
        sae.threshold.copy_(dictionary.get_parameter("threshold").clamp_min(0))
