"""TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): keep each token's ``k``
largest pre-activations (after a ReLU), trained with the AuxK loss for dead features.

SAELens option ``rescale_acts_by_decoder_norm``: rank ``h * ||W_dec_i||`` and divide by the norm
again when decoding. On disk: ``topk`` (SAELens has no TopK transcoder).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae_circuits.architectures.base import Architecture, Kind, SparseCode, register

if TYPE_CHECKING:
    from sae_circuits.sae import SAE
    from sae_circuits.sae_config import SAEConfig
    from sae_circuits.train.trainer import SAETrainer, TrainableDictionary


def top_k(h: Float[Tensor, "... d_sae"], k: int, *, sorted: bool) -> tuple[Tensor, Tensor]:
    """``(relu(values), indices)`` of each token's ``k`` largest pre-activations: the TopK
    activation, shared by inference (dense) and training (a :class:`SparseCode`)."""
    values, indices = torch.topk(h, k=k, dim=-1, sorted=sorted)
    return values.relu(), indices


@register
class TopK(Architecture):
    """TopK SAEs; ``cfg.k`` features per token."""

    name = "topk"
    saelens_names: ClassVar[Mapping[str, Kind] | None] = {"topk": "sae"}
    activation_fn_str: ClassVar[str | None] = "topk"
    trainable = True

    def check_config(self, cfg: SAEConfig) -> None:
        """``0 < k <= d_sae``."""
        k = cfg.k
        if not isinstance(k, int) or isinstance(k, bool) or not 0 < k <= cfg.d_sae:
            raise ValueError(f"topk SAE needs 0 < k <= d_sae={cfg.d_sae}, got k={k!r}")

    def config_fields(self, cfg: SAEConfig) -> dict[str, Any]:
        """``k`` and ``rescale_acts_by_decoder_norm``."""
        return {"k": cfg.k, "rescale_acts_by_decoder_norm": cfg.rescale_acts_by_decoder_norm}

    def read_pre6(self, cfg: dict[str, Any], kwargs: Mapping[str, Any]) -> None:
        """``activation_fn_str='topk'`` means architecture ``topk`` with ``k`` from the kwargs."""
        if cfg.get("architecture", "standard") not in ("standard", "topk"):
            raise ValueError(f"activation_fn_str='topk' contradicts architecture={cfg['architecture']!r}")
        cfg["architecture"] = "topk"
        if cfg.get("k") is None:
            cfg["k"] = kwargs.get("k")

    def activate(
        self, sae: SAE, h: Float[Tensor, "... d_sae"], gate: Bool[Tensor, "... d_sae"] | None
    ) -> Float[Tensor, "... d_sae"]:
        """The top ``k`` of ``h`` (of ``h * ||W_dec||`` when rescaling), after a ReLU; zeros elsewhere."""
        if sae.cfg.rescale_acts_by_decoder_norm:
            h = h * sae.W_dec.norm(dim=-1)
        assert sae.cfg.k is not None  # check_config guarantees it
        values, indices = top_k(h, sae.cfg.k, sorted=False)
        return torch.zeros_like(h).scatter_(-1, indices, values)

    def decode_linear(self, sae: SAE, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_out"]:
        """``f @ W_dec``, dividing ``f`` by the row norms first when rescaling."""
        if sae.cfg.rescale_acts_by_decoder_norm:
            f = f / sae.W_dec.norm(dim=-1).clamp_min(1e-8)  # a zero row (never fires): no NaN
        return f @ sae.W_dec

    def decoder_rows(self, sae: SAE, indices: Int[Tensor, " k"]) -> Float[Tensor, "k d_out"]:
        """``W_dec`` rows, unit-normed when rescaling."""
        rows = sae.W_dec[indices]
        if sae.cfg.rescale_acts_by_decoder_norm:
            rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        return rows

    # ------------------------------------------------------------------ training

    def saved_architecture(self, transcoder: bool) -> str:
        """``topk``; SAELens has no TopK transcoder (use ``batchtopk``)."""
        if transcoder:
            raise ValueError(
                "the SAELens format has no TopK transcoder; train it with architecture='batchtopk' "
                "(saved as jumprelu_transcoder)"
            )
        return "topk"

    def train_activate(self, dictionary: TrainableDictionary, h: Tensor) -> Tensor | SparseCode:
        """Each token's top ``k``, as a :class:`SparseCode`."""
        k = dictionary.cfg.k
        values, indices = top_k(h, k, sorted=True)
        offsets = torch.arange(0, h.shape[0] * k, k, device=h.device)
        return SparseCode(values.flatten(), indices.flatten(), offsets, h.shape[-1])

    def sparsity_loss(
        self, trainer: SAETrainer, h: Tensor, f: Tensor | SparseCode | None, residual: Tensor
    ) -> Tensor:
        """AuxK (:func:`aux_k_loss`), weighted by ``aux_coeff``."""
        return trainer.cfg.aux_coeff * aux_k_loss(trainer, h, residual.detach())


def aux_k_loss(trainer: SAETrainer, h: Tensor, residual: Tensor) -> Tensor:
    """AuxK: the top ``aux_k`` dead features must reconstruct what the live ones missed
    (normalised by the residual's energy, times its width; OpenAI's TopK recipe)."""
    dead = trainer.tokens_since_fired >= trainer.cfg.dead_after_tokens
    n_dead = int(dead.sum())
    if n_dead == 0:
        return h.new_zeros(())
    W_dec = trainer.dictionary.W_dec
    default = max(1, trainer.dictionary.W_enc.shape[0] // 2)
    aux_k = min(default if trainer.cfg.aux_k is None else trainer.cfg.aux_k, n_dead)
    dead_features = dead.nonzero().squeeze(-1)
    values, picked = h[:, dead_features].topk(aux_k, dim=-1)  # only the dead columns
    offsets = torch.arange(0, h.shape[0] * aux_k, aux_k, device=h.device)
    f_aux = SparseCode(values.relu().flatten(), dead_features[picked].flatten(), offsets, h.shape[-1])
    reconstruction = F.embedding_bag(
        f_aux.features, W_dec, f_aux.offsets, mode="sum", per_sample_weights=f_aux.values
    )
    error = (reconstruction - residual).pow(2).sum(-1).mean()
    energy = trainer.global_mean(residual.pow(2).sum(-1).mean())  # the whole batch's, over every rank
    return error / energy.clamp_min(1e-8) * residual.shape[-1]
