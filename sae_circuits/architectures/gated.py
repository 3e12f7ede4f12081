"""Gated SAEs (Rajamanoharan et al. 2024): a gate path decides which features fire, a magnitude
path (the same encoder, rescaled per feature by ``exp(r_mag)``) how strongly.

``f = relu(x @ (W_enc * exp(r_mag)) + b_mag) * [x @ W_enc + b_gate > 0]``; there is no ``b_enc``.
Inference only (SAELens's ``gated``); pre-activations are the magnitude path's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae_circuits.architectures.base import Architecture, Kind, register

if TYPE_CHECKING:
    from sae_circuits.sae import SAE


@register
class Gated(Architecture):
    """Gated SAE: gate and magnitude paths sharing ``W_enc``."""

    name = "gated"
    saelens_names: ClassVar[Mapping[str, Kind] | None] = {"gated": "sae"}

    def parameter_shapes(self, d_sae: int) -> dict[str, tuple[int, ...]]:
        """Gate bias, magnitude bias and per-feature log scale of the magnitude path."""
        return {"b_gate": (d_sae,), "b_mag": (d_sae,), "r_mag": (d_sae,)}

    def pre_acts(
        self, sae: SAE, x: Float[Tensor, "... d_in"]
    ) -> tuple[Float[Tensor, "... d_sae"], Bool[Tensor, "... d_sae"] | None]:
        """The magnitude path's pre-activations and the gate path's verdict."""
        gate = (x @ sae.W_enc + sae.b_gate) > 0
        return x @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag, gate

    def activate(
        self, sae: SAE, h: Float[Tensor, "... d_sae"], gate: Bool[Tensor, "... d_sae"] | None
    ) -> Float[Tensor, "... d_sae"]:
        """``relu(h)`` where the gate is open."""
        assert gate is not None, "a gated SAE's activation needs the gate of pre_acts"
        return h.relu() * gate

    def encoder_directions(self, sae: SAE, indices: Int[Tensor, " k"]) -> Float[Tensor, "k d_in"]:
        # attribution differentiates the magnitude path: d h / d x = W_enc[:, i] * exp(r_mag[i])
        """The magnitude path's encoder columns, scaled by ``exp(r_mag)``."""
        return sae.W_enc[:, indices].T * sae.r_mag[indices].exp().unsqueeze(-1)
