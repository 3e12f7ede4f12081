"""Training configuration for SAEs and transcoders."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from sae_circuits import architectures

TrainArchitecture = str
"""A trainable architecture's registry name: ``topk``, ``batchtopk``, ``jumprelu``, ``relu``, or
any other registered architecture with ``trainable = True`` (:mod:`sae_circuits.architectures`)."""


@dataclass
class TrainConfig:
    """How to train one dictionary. Defaults suit a small model on a CPU."""

    architecture: TrainArchitecture = "batchtopk"
    """``topk`` (saved as ``topk``), ``batchtopk`` (top ``k * batch`` over the batch; saved as
    ``jumprelu`` with the learned global threshold), ``jumprelu`` (learned per-feature thresholds,
    L0 penalty through a straight-through estimator), ``relu`` (ReLU + L1 penalty),
    ``matryoshka_batchtopk`` (BatchTopK whose first features must also reconstruct alone, see
    ``matryoshka_widths``; saved as ``jumprelu``), or another trainable architecture of the
    registry (e.g. ``relu_decnorm``)."""
    d_sae: int | None = None
    """Number of features; ``None`` means ``expansion_factor * d_in``."""
    expansion_factor: int = 16
    """Width multiplier used when ``d_sae`` is ``None``."""
    k: int = 32
    """Active features per token for ``topk``/``batchtopk`` (on average, for ``batchtopk`` and
    ``matryoshka_batchtopk``)."""
    matryoshka_widths: tuple[int, ...] | None = None
    """``matryoshka_batchtopk``: the nested prefix widths whose reconstructions from the first
    features alone add to the loss, increasing, at least one below ``d_sae`` (the full width is
    always a level: the main loss); any sequence of integers, kept as a tuple. ``None``: ``d_sae``
    / 16, / 8, / 4 and / 2, none below ``k``."""
    aux_k: int | None = None
    """AuxK: how many dead features reconstruct the residual error (``None``: ``d_in // 2``)."""
    aux_coeff: float = 1 / 32
    """Weight of the AuxK loss (OpenAI's TopK recipe)."""
    dead_after_tokens: int = 1_000_000
    """A feature that has not fired for this many training tokens counts as dead."""
    l1_coeff: float = 5.0
    """``relu``: weight of the L1 penalty on feature activations (activations normalised)."""
    l0_coeff: float = 1.0
    """``jumprelu``: weight of the (straight-through) L0 penalty (SAELens's default)."""
    jumprelu_bandwidth: float = 0.05
    """``jumprelu``: width of the rectangle kernel in the threshold's pseudo-gradient (SAELens's
    default)."""
    jumprelu_init_threshold: float = 0.01
    """``jumprelu``: initial threshold of every feature (SAELens's default). The threshold is
    learned directly and Adam moves it by about ``lr`` per step, so JumpReLU needs long runs to
    sparsify (on the tiny model, 236 steps leave an L0 of 250): for short runs use ``batchtopk``."""
    lr: float = 4e-4
    """Peak learning rate (Adam)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up from 0 (a run of fewer steps never reaches ``lr``: the toy
    runs of the docstrings peak at a few percent of it)."""
    decay_fraction: float = 0.2
    """Fraction of training, at the end, over which the learning rate decays linearly to 0."""
    grad_clip: float = 1.0
    """Gradient norm clipping."""
    batch_size: int = 4096
    """Activations (tokens) per optimiser step."""
    total_tokens: int = 2_000_000
    """Training tokens; the number of steps is ``total_tokens // batch_size``."""
    buffer_tokens: int = 65_536
    """Shuffling buffer size in activations; it is refilled by half at a time."""
    model_batch_size: int = 16
    """Sequences per model forward pass when filling the buffer."""
    skip_first_position: bool = True
    """Drop position 0 of every sequence (its activations are outliers in most models)."""
    normalize_activations: bool = True
    """Train on activations scaled so that their mean norm is ``sqrt(d)`` (SAELens's convention);
    the scale is folded into the
    weights when saving, so the saved SAE reads raw activations."""
    geometric_median_samples: int = 8192
    """Activations used for the geometric-median initialisation of the decoder bias."""
    seed: int = 0
    """Seeds initialisation and the buffer's shuffling: the same seed gives the same SAE."""
    progress: bool = True
    """Show a tqdm progress bar with loss, explained variance, L0 and dead fraction."""
    log_every: int = 20
    """Steps between progress-bar updates (metrics cost a little)."""
    device: str = "cpu"
    """Where the dictionary trains (``"cuda"``, ``"cuda:1"``, ...). Activations are gathered on
    the CPU (from the model wherever it runs, or from a cache) and moved there batch by batch;
    the saved SAE is on the CPU."""

    def __post_init__(self) -> None:
        trainable = [n for n in architectures.names() if architectures.get(n).trainable]
        if self.architecture not in trainable:
            raise ValueError(f"architecture={self.architecture!r}; expected one of {trainable}")

        def whole(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")

        def number(name: str, low: float, *, strict: bool) -> None:
            value = getattr(self, name)
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            if bad or value < low or (strict and value == low):
                bound = f"> {low}" if strict else f">= {low}"
                raise ValueError(f"{name}={value!r} must be a finite number {bound}")

        positive = ["expansion_factor", "k", "batch_size", "total_tokens", "buffer_tokens"]
        positive += ["model_batch_size", "log_every", "geometric_median_samples", "dead_after_tokens"]
        for name in positive:
            whole(name, 1)
        whole("warmup_steps", 0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer")
        for name in ("d_sae", "aux_k"):
            if getattr(self, name) is not None:
                whole(name, 1)
        for name in ("lr", "grad_clip", "jumprelu_bandwidth"):
            number(name, 0, strict=True)
        for name in ("l1_coeff", "l0_coeff", "aux_coeff", "jumprelu_init_threshold"):
            number(name, 0, strict=False)
        number("decay_fraction", 0, strict=False)
        if self.decay_fraction > 1:
            raise ValueError(f"decay_fraction={self.decay_fraction} must be in [0, 1]")
        for name in ("skip_first_position", "normalize_activations", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if self.buffer_tokens < 2 * self.batch_size:
            raise ValueError(
                f"buffer_tokens={self.buffer_tokens} must be at least 2 * batch_size={2 * self.batch_size}"
            )
        self._check_matryoshka_widths()
        if (
            self.architecture in ("topk", "batchtopk", "matryoshka_batchtopk")
            and self.d_sae is not None
            and self.k > self.d_sae
        ):
            raise ValueError(f"k={self.k} must be at most d_sae={self.d_sae} ({self.architecture})")
        from sae_circuits.placement import check_device

        check_device(self.device)  # a clear error now, not at the first step

    def _check_matryoshka_widths(self) -> None:
        """Refuse widths that are not increasing whole numbers, or that the width cannot use when
        ``d_sae`` is given; keep any sequence as a tuple."""
        widths = self.matryoshka_widths
        if widths is None:
            return
        if self.architecture != "matryoshka_batchtopk":
            raise ValueError(
                f"matryoshka_widths={widths!r} applies only to architecture='matryoshka_batchtopk', "
                f"not {self.architecture!r}"
            )
        expected = f"matryoshka_widths={widths!r} must be a sequence of increasing integers >= 1"
        if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
            raise ValueError(expected)
        try:  # NumPy and torch integers too, never bools or floats
            values = tuple(w if isinstance(w, int) else operator.index(w) for w in widths)
        except TypeError:
            raise ValueError(expected) from None
        if (
            not values
            or any(isinstance(w, bool) or w < 1 for w in values)
            or list(values) != sorted(set(values))
        ):
            raise ValueError(expected)
        self.matryoshka_widths = values
        if self.d_sae is not None:  # against the width now; else once training knows d_in
            from sae_circuits.architectures.matryoshka import prefix_widths

            prefix_widths(self, self.d_sae)

    @property
    def n_steps(self) -> int:
        """Optimiser steps: ``total_tokens // batch_size`` (at least 1)."""
        return max(1, self.total_tokens // self.batch_size)
