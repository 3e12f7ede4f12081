"""Matryoshka BatchTopK (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka
Sparse Autoencoders"; Nabeshima 2024): BatchTopK whose dictionary's first features must also
reconstruct on their own.

The features are kept in a fixed order and the loss adds, for each prefix width ``m`` of
``TrainConfig.matryoshka_widths``, the squared error of the reconstruction from the first ``m``
features alone. An early feature then cannot leave a general direction ("inside a tag", "a
number") to be absorbed into many specific late ones ("this tag's name", "this digit"), which
plain sparsity rewards. The encoder and the selection are BatchTopK's, so the trained dictionary
is saved as JumpReLU exactly as BatchTopK's is; only training differs.

The prefix terms are *summed* with the main error (as the paper's loss and SAELens's
``MatryoshkaBatchTopKTrainingSAE`` do; Bussmann's reference code averages over the levels and
adds one of ``b_dec`` alone), so the total is about ``1 + len(widths)`` times the error: AuxK's
``aux_coeff`` and ``grad_clip`` weigh relatively less than for BatchTopK, and the logged ``loss``
holds the prefix terms (``mse`` and the explained variance are the full dictionary's). AuxK reads
the full reconstruction's residual.

>>> config = sc.TrainConfig(architecture="matryoshka_batchtopk", d_sae=64, k=8,
...                         matryoshka_widths=(8, 32), batch_size=32, total_tokens=128,
...                         buffer_tokens=64, geometric_median_samples=64, progress=False)
>>> sc.train_sae(model, "blocks.0.hook_resid_post", tokens, config).cfg.architecture
'jumprelu'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from sae_circuits.architectures.base import SparseCode, register
from sae_circuits.architectures.batchtopk import BatchTopK

if TYPE_CHECKING:
    from sae_circuits.train.config import TrainConfig
    from sae_circuits.train.trainer import SAETrainer, TrainableDictionary


def prefix_widths(cfg: TrainConfig, d_sae: int) -> tuple[int, ...]:
    """The nested prefix widths below ``d_sae`` whose reconstructions add to the loss:
    ``cfg.matryoshka_widths``, or by default ``d_sae / 16, / 8, / 4, / 2`` (doubling groups, none
    below ``k``). Refuses widths beyond ``d_sae``, and widths that leave no prefix below it (that
    would be plain BatchTopK under another name)."""
    widths = cfg.matryoshka_widths
    if widths is None:
        chosen = tuple(sorted({max(d_sae // 2**p, min(cfg.k, d_sae)) for p in (4, 3, 2, 1)}))
    elif widths[-1] > d_sae:
        raise ValueError(
            f"matryoshka_widths={widths} go beyond d_sae={d_sae} (expansion_factor * d_in when d_sae is None)"
        )
    else:
        chosen = widths
    below = tuple(w for w in chosen if w < d_sae)  # the full width is the main loss already
    if not below:
        given = f"matryoshka_widths={widths}" if widths is not None else f"the default widths at k={cfg.k}"
        raise ValueError(
            f"{given} leave no prefix below the dictionary's d_sae={d_sae}: it would train plain "
            "BatchTopK; give matryoshka_widths below d_sae"
        )
    return below


@register
class MatryoshkaBatchTopK(BatchTopK):
    """BatchTopK training with nested prefix reconstructions, exported as JumpReLU."""

    name = "matryoshka_batchtopk"

    def init_training(self, dictionary: TrainableDictionary, cfg: TrainConfig) -> None:
        """BatchTopK's running threshold; the prefix widths are checked against the width now."""
        super().init_training(dictionary, cfg)
        prefix_widths(cfg, dictionary.W_dec.shape[0])

    def sparsity_loss(
        self, trainer: SAETrainer, h: Tensor, f: Tensor | SparseCode | None, residual: Tensor
    ) -> Tensor:
        """AuxK plus, for each prefix width ``m``, ``|y - decode(f[:m])|^2`` (summed over the
        output, averaged over the batch, as the main error): the full reconstruction's residual
        plus what the features from ``m`` on added to it."""
        loss = super().sparsity_loss(trainer, h, f, residual)
        if f is None:
            return loss
        W_dec = trainer.dictionary.W_dec
        for width in prefix_widths(trainer.cfg, W_dec.shape[0]):  # a few integers: cheap per step
            if isinstance(f, SparseCode):
                late = (f.features >= width).to(f.values.dtype)
                tail = F.embedding_bag(
                    f.features, W_dec, f.offsets, mode="sum", per_sample_weights=f.values * late
                )
            else:
                tail = f[:, width:] @ W_dec[width:]
            loss = loss + (residual + tail).pow(2).sum(-1).mean()
        return loss
