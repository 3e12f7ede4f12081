"""ReLU: ``f = relu(x @ W_enc + b_enc)``, trained with an L1 penalty (Towards Monosemanticity).

On disk: ``standard``, ``transcoder`` and ``skip_transcoder`` (SAELens's names).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from jaxtyping import Bool, Float
from torch import Tensor

from sae_circuits.architectures.base import Architecture, Kind, SparseCode, register

if TYPE_CHECKING:
    from sae_circuits.sae import SAE
    from sae_circuits.train.trainer import SAETrainer, TrainableDictionary


@register
class ReLU(Architecture):
    """The standard SAE (and transcoder): a ReLU on an affine encoder."""

    name = "relu"
    saelens_names: ClassVar[Mapping[str, Kind] | None] = {
        "standard": "sae",
        "transcoder": "transcoder",
        "skip_transcoder": "skip_transcoder",
    }
    activation_fn_str: ClassVar[str | None] = "relu"
    trainable = True

    def activate(
        self, sae: SAE, h: Float[Tensor, "... d_sae"], gate: Bool[Tensor, "... d_sae"] | None
    ) -> Float[Tensor, "... d_sae"]:
        """``relu(h)``."""
        return h.relu()

    def train_activate(self, dictionary: TrainableDictionary, h: Tensor) -> Tensor | SparseCode:
        """``relu(h)``."""
        return h.relu()

    def sparsity_loss(
        self, trainer: SAETrainer, h: Tensor, f: Tensor | SparseCode | None, residual: Tensor
    ) -> Tensor:
        """L1 of the activations, weighted by ``l1_coeff``."""
        assert isinstance(f, Tensor)  # dense: only TopK-style families give a SparseCode
        return trainer.cfg.l1_coeff * f.sum(-1).mean()
