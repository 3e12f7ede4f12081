"""BatchTopK (Bussmann et al. 2024): a training recipe that keeps the ``k * batch`` largest
pre-activations of the whole batch, then saves as a JumpReLU SAE whose threshold (the same for
every feature) is the running average of the smallest selected activation.

It has no on-disk name of its own: trained dictionaries are ``jumprelu`` / ``jumprelu_transcoder``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from sae_circuits.architectures.base import Architecture, Kind, SparseCode, register
from sae_circuits.architectures.topk import aux_k_loss

if TYPE_CHECKING:
    from sae_circuits.sae import SAE
    from sae_circuits.train.config import TrainConfig
    from sae_circuits.train.trainer import SAETrainer, TrainableDictionary


@register
class BatchTopK(Architecture):
    """BatchTopK training, exported as JumpReLU."""

    name = "batchtopk"
    saelens_names: ClassVar[Mapping[str, Kind] | None] = {}  # saved as jumprelu (see saved_architecture)
    trainable = True

    def saved_architecture(self, transcoder: bool) -> str:
        """Saved as JumpReLU (``jumprelu`` / ``jumprelu_transcoder``)."""
        return "jumprelu_transcoder" if transcoder else "jumprelu"

    def init_training(self, dictionary: TrainableDictionary, cfg: TrainConfig) -> None:
        """The running threshold buffer ``batch_threshold`` (-1 until the first batch)."""
        dictionary.register_buffer("batch_threshold", torch.tensor(-1.0))  # -1: not yet seen

    def train_activate(self, dictionary: TrainableDictionary, h: Tensor) -> Tensor | SparseCode:
        """The batch's ``k * batch`` largest activations, as a :class:`SparseCode`."""
        k = dictionary.cfg.k
        # Candidates: each token's top 4k (a global top-k*batch over all d_sae columns is 5x
        # slower); exact unless one token holds more than 4k of the batch's top entries.
        cap = min(h.shape[-1], 4 * k)
        row_values, row_features = h.relu().topk(cap, dim=-1)
        keep = min(k * h.shape[0], row_values.numel())
        if dictionary.distributed:  # the top k * batch of the global batch, over every rank
            values, picked, selected = _global_selection(row_values.flatten(), keep)
        else:
            selected, picked = row_values.flatten().topk(keep)
            picked, order = picked.sort()  # group the entries token by token
            values = selected[order]
        if dictionary.training:
            _update_threshold(dictionary.get_buffer("batch_threshold"), selected)
        rows = picked // cap
        offsets = torch.searchsorted(rows, torch.arange(h.shape[0], device=h.device))
        return SparseCode(values, row_features.flatten()[picked], offsets, h.shape[-1])

    def sparsity_loss(
        self, trainer: SAETrainer, h: Tensor, f: Tensor | SparseCode | None, residual: Tensor
    ) -> Tensor:
        """AuxK (:func:`~sae_circuits.architectures.topk.aux_k_loss`), weighted by ``aux_coeff``."""
        return trainer.cfg.aux_coeff * aux_k_loss(trainer, h, residual.detach())

    def export_training(self, dictionary: TrainableDictionary, sae: SAE) -> None:
        """The running threshold becomes every feature's JumpReLU threshold."""
        sae.threshold.fill_(max(float(dictionary.get_buffer("batch_threshold")), 0.0))


def _global_selection(candidates: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(values, positions, selected)``: this rank's entries among the ``keep * world`` largest
    ``candidates`` of all ranks (positions sorted), and all those largest values (the same on
    every rank). Each rank sends its own top ``keep * world``, which holds every entry of its own
    that can be in the global top. Ties at the threshold may keep a few extra entries."""
    from sae_circuits.train import _ranks

    world = _ranks.world_size(True)
    local = candidates.topk(min(keep * world, candidates.numel())).values
    selected = _ranks.all_gather_cat(local, True).topk(keep * world).values
    picked = (candidates >= selected[-1]).nonzero().squeeze(-1)
    return candidates[picked], picked, selected


@torch.no_grad()
def _update_threshold(threshold: Tensor, selected: Tensor) -> None:
    """Exponential moving average (0.99) of the smallest positive selected activation."""
    positive = selected[selected > 0]
    if positive.numel():
        low = positive.min()
        if threshold < 0:
            threshold.copy_(low)
        else:
            threshold.mul_(0.99).add_(0.01 * low)
