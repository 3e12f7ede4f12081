"""ReLU with decoder-norm rescaling (Anthropic, "Circuits Updates, April 2024").

``f_i = relu(h_i) * ||W_dec_i||`` and decoding uses the unit rows ``W_dec_i / ||W_dec_i||``, so the
reconstruction is exactly a plain ReLU SAE's with the same weights, while each feature's
activation is in units of the norm it writes into the model. On disk: ``relu_decnorm`` (and its
``_transcoder`` / ``_skip_transcoder`` forms), which SAELens does not read.

Training keeps decoder rows at unit norm, where this is the ReLU SAE; the rescaling matters for
weights made elsewhere (e.g. an SAE trained with the norm inside its L1 penalty).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae_circuits.architectures.base import register
from sae_circuits.architectures.relu import ReLU

if TYPE_CHECKING:
    from sae_circuits.sae import SAE


@register
class ReLUDecoderNorm(ReLU):
    """ReLU SAE whose feature activations are scaled by their decoder row norms."""

    name = "relu_decnorm"
    saelens_names = None  # relu_decnorm, relu_decnorm_transcoder, relu_decnorm_skip_transcoder
    activation_fn_str = None

    def activate(
        self, sae: SAE, h: Float[Tensor, "... d_sae"], gate: Bool[Tensor, "... d_sae"] | None
    ) -> Float[Tensor, "... d_sae"]:
        """``relu(h_i) * ||W_dec_i||``."""
        return h.relu() * sae.W_dec.norm(dim=-1)

    def decode_linear(self, sae: SAE, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_out"]:
        """``(f / ||W_dec||) @ W_dec``: the plain ReLU SAE's decode of ``relu(h)`` (a zero row, a
        feature that never fires, divides by 1e-8 as SAELens does, not by 0: no NaN)."""
        return (f / sae.W_dec.norm(dim=-1).clamp_min(1e-8)) @ sae.W_dec

    def decoder_rows(self, sae: SAE, indices: Int[Tensor, " k"]) -> Float[Tensor, "k d_out"]:
        """Unit decoder rows ``W_dec_i / ||W_dec_i||``."""
        rows = sae.W_dec[indices]
        return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-8)
