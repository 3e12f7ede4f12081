"""The :class:`Architecture` base class and the registry it fills.

An architecture is everything that differs between dictionary families (ReLU, TopK, JumpReLU,
gated, ...); everything they share (input normalisation, ``b_dec`` handling, ``hook_z`` reshaping,
skip connections, hook points, the file format) lives in :mod:`sae_circuits.sae` and
:mod:`sae_circuits.io`, which ask the registered architecture for the rest:

1. **On-disk names**: which ``cfg.json`` ``architecture`` strings it reads and writes
   (:attr:`Architecture.saelens_names`, each as a plain SAE or a transcoder), the pre-6.0
   ``activation_fn_str`` that means it, and extra ``cfg.json`` keys (:meth:`config_fields`).
2. **Parameters**: the encoder-side tensors beyond the shared ``W_enc``, ``W_dec``, ``b_dec``
   (and ``W_skip``), by name and shape (:meth:`parameter_shapes`); they start at zero.
3. **Encoding**: the pre-activation ``h`` (what ``hook_sae_acts_pre`` sees) and an optional gate
   (:meth:`pre_acts`), then the activation function (:meth:`activate`), which exists only here.
4. **Decoding**: the linear decode ``f @ W_dec`` and the effective decoder rows, for
   architectures whose features are not in ``W_dec``'s units (:meth:`decode_linear`,
   :meth:`decoder_rows`).
5. **Attribution**: the derivative of the pre-activation with respect to the (normalised,
   ``b_dec``-subtracted) input, row by row (:meth:`encoder_directions`).
6. **Training** (only where :attr:`trainable`): extra trainable parameters, the training-time
   activation, the sparsity loss and how the trained tensors are exported.

A new architecture is one module in this package that defines a subclass and decorates it with
:func:`register`; the package imports every module in it, so nothing else changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, TypeVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

if TYPE_CHECKING:  # for annotations only: these modules import this one
    from sae_circuits.sae import SAE
    from sae_circuits.sae_config import SAEConfig
    from sae_circuits.train.config import TrainConfig
    from sae_circuits.train.trainer import SAETrainer, TrainableDictionary

Kind = Literal["sae", "transcoder", "skip_transcoder"]
"""What an on-disk architecture name says beyond the architecture: a plain SAE, a transcoder, or a
transcoder with a linear skip connection."""


class SparseCode(NamedTuple):
    """Feature activations stored as their selected entries, token after token (TopK training:
    only the selected entries exist, so decoding skips the zeros)."""

    values: Tensor
    """``[n]`` activation of each entry (differentiable)."""
    features: Tensor
    """``[n]`` feature index of each entry."""
    offsets: Tensor
    """``[batch]`` where each token's entries start."""
    d_sae: int

    def dense(self) -> Tensor:
        """The same activations as a dense ``[batch, d_sae]`` tensor."""
        counts = torch.diff(self.offsets, append=self.offsets.new_tensor([self.values.numel()]))
        rows = torch.repeat_interleave(torch.arange(len(self.offsets), device=self.values.device), counts)
        out = self.values.new_zeros(len(self.offsets), self.d_sae)
        return out.index_put((rows, self.features), self.values)


class Architecture:
    """One dictionary family. Subclass it in its own module of this package and :func:`register` it.

    The defaults describe a plain ReLU-style encoder ``h = x @ W_enc + b_enc`` and a linear
    decoder ``f @ W_dec``; a subclass overrides what differs. Methods get the live :class:`SAE`
    (for its parameters and ``cfg``); none of them runs hooks.
    """

    name: ClassVar[str] = ""
    """Registry key (``sae_circuits.architectures.get(name)``), also used in ``TrainConfig``."""
    saelens_names: ClassVar[Mapping[str, Kind] | None] = None
    """``cfg.json`` ``architecture`` strings of this family. ``None`` (the default) means
    ``{name: "sae", name_transcoder: "transcoder", name_skip_transcoder: "skip_transcoder"}``;
    ``{}`` marks a training recipe that saves as another architecture."""
    activation_fn_str: ClassVar[str | None] = None
    """The pre-6.0 SAELens ``activation_fn_str`` that means this family, if any."""
    trainable: ClassVar[bool] = False
    """Whether ``sc.train_sae`` can train it (the training hooks below are implemented)."""

    # ------------------------------------------------------------------ 1. on-disk names, config

    def names_on_disk(self) -> dict[str, Kind]:
        """:attr:`saelens_names`, with the default filled in."""
        if self.saelens_names is not None:
            return dict(self.saelens_names)
        return {self.name: "sae", f"{self.name}_transcoder": "transcoder",
                f"{self.name}_skip_transcoder": "skip_transcoder"}  # fmt: skip

    def check_config(self, cfg: SAEConfig) -> None:
        """Validate (and normalise, in place) the fields only this family uses; called from
        ``SAEConfig.__post_init__``. By default the TopK-only fields are cleared (SAELens ignores them)."""
        cfg.k, cfg.rescale_acts_by_decoder_norm = None, False

    def config_fields(self, cfg: SAEConfig) -> dict[str, Any]:
        """Extra top-level ``cfg.json`` keys this family writes (e.g. TopK's ``k``)."""
        return {}

    def read_pre6(self, cfg: dict[str, Any], kwargs: Mapping[str, Any]) -> None:
        """Turn a pre-6.0 flat config whose ``activation_fn_str`` is this family's into 6.x keys,
        in place; ``kwargs`` is its ``activation_fn_kwargs``. By default nothing changes."""

    # ------------------------------------------------------------------ 2. parameters

    def parameter_shapes(self, d_sae: int) -> dict[str, tuple[int, ...]]:
        """Encoder-side parameters by name and shape, beyond ``W_enc``, ``W_dec``, ``b_dec``
        (and ``W_skip``); these are also the tensor names in ``sae_weights.safetensors``."""
        return {"b_enc": (d_sae,)}

    # ------------------------------------------------------------------ 3. encoding

    def pre_acts(
        self, sae: SAE, x: Float[Tensor, "... d_in"]
    ) -> tuple[Float[Tensor, "... d_sae"], Bool[Tensor, "... d_sae"] | None]:
        """Pre-activations ``h`` (what ``hook_sae_acts_pre`` sees) and the gate (gated families;
        else ``None``) of an input already normalised and with ``b_dec`` subtracted."""
        return x @ sae.W_enc + sae.b_enc, None

    def activate(
        self, sae: SAE, h: Float[Tensor, "... d_sae"], gate: Bool[Tensor, "... d_sae"] | None
    ) -> Float[Tensor, "... d_sae"]:
        """The activation function: feature activations from pre-activations (and the gate)."""
        raise NotImplementedError(f"architecture {self.name!r} defines no activation function")

    # ------------------------------------------------------------------ 4. decoding

    def decode_linear(self, sae: SAE, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_out"]:
        """The decoder without its bias: ``f @ W_dec`` unless features are rescaled."""
        return f @ sae.W_dec

    def decoder_rows(self, sae: SAE, indices: Int[Tensor, " k"]) -> Float[Tensor, "k d_out"]:
        """What one unit of each feature in ``indices`` adds to the (normalised) reconstruction,
        so that ``decode_linear(f) == f @ decoder_rows(all)``."""
        return sae.W_dec[indices]

    # ------------------------------------------------------------------ 5. attribution

    def encoder_directions(self, sae: SAE, indices: Int[Tensor, " k"]) -> Float[Tensor, "k d_in"]:
        """``d h[indices] / d x`` for the pre-activations of :meth:`pre_acts`: the linear map that
        attribution differentiates (the gated family's magnitude path, for instance)."""
        return sae.W_enc[:, indices].T

    # ------------------------------------------------------------------ 6. training

    def saved_architecture(self, transcoder: bool) -> str:
        """The ``SAEConfig.architecture`` a trained dictionary of this family is saved as."""
        want: Kind = "transcoder" if transcoder else "sae"
        for saved, kind in self.names_on_disk().items():
            if kind == want:
                return saved
        raise ValueError(f"architecture {self.name!r} has no {want} form in the SAELens format")

    def init_training(self, dictionary: TrainableDictionary, cfg: TrainConfig) -> None:
        """Add this family's trainable parameters and buffers to ``dictionary`` (which already
        holds ``W_dec``, ``W_enc``, ``b_enc``, ``b_dec``). By default none."""

    def train_activate(self, dictionary: TrainableDictionary, h: Tensor) -> Tensor | SparseCode:
        """Training-time feature activations of ``[batch, d_sae]`` pre-activations (decoder rows
        have unit norm there)."""
        raise NotImplementedError(f"architecture {self.name!r} is not trainable")

    def sparsity_loss(
        self, trainer: SAETrainer, h: Tensor, f: Tensor | SparseCode | None, residual: Tensor
    ) -> Tensor:
        """The loss term added to the reconstruction MSE (L1, L0, AuxK, ...); ``residual`` is the
        (detached where needed) reconstruction error ``y - y_hat``."""
        raise NotImplementedError(f"architecture {self.name!r} is not trainable")

    def export_training(self, dictionary: TrainableDictionary, sae: SAE) -> None:
        """Copy this family's trained parameters into ``sae`` (the shared ones are copied, with
        the normalisation folded in, by the trainer). By default none."""

    def __repr__(self) -> str:
        return f"<architecture {self.name!r}>"


_REGISTRY: dict[str, Architecture] = {}
_ON_DISK: dict[str, tuple[Architecture, Kind]] = {}
_ArchitectureClass = TypeVar("_ArchitectureClass", bound=type[Architecture])


def register(cls: _ArchitectureClass) -> _ArchitectureClass:
    """Class decorator: add one instance of ``cls`` to the registry under ``cls.name``.

    Its on-disk names must not clash with a registered family's; registering the same name
    again replaces the old entry (so a module can be reloaded).
    """
    arch = cls()
    if not arch.name or not isinstance(arch.name, str):
        raise ValueError(f"{cls.__name__}.name must be a non-empty string")
    old = _REGISTRY.get(arch.name)
    for saved in arch.names_on_disk():
        owner = _ON_DISK.get(saved)
        if owner is not None and owner[0].name != arch.name:
            raise ValueError(
                f"{cls.__name__}: on-disk name {saved!r} already belongs to architecture {owner[0].name!r}"
            )
    if old is not None:
        for saved in old.names_on_disk():
            _ON_DISK.pop(saved, None)
    _REGISTRY[arch.name] = arch
    for saved, kind in arch.names_on_disk().items():
        _ON_DISK[saved] = (arch, kind)
    return cls


def get(name: str) -> Architecture:
    """The registered architecture called ``name`` (e.g. ``"relu"``, ``"topk"``).

    >>> get("topk").name
    'topk'
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown architecture {name!r}; known: {names()}") from None


def names() -> list[str]:
    """Registry keys of every registered architecture, sorted."""
    return sorted(_REGISTRY)


def lookup(saved: str) -> tuple[Architecture, Kind]:
    """The architecture and kind (SAE, transcoder, skip transcoder) of a ``cfg.json``
    ``architecture`` string such as ``"standard"`` or ``"jumprelu_transcoder"``."""
    try:
        return _ON_DISK[saved]
    except (KeyError, TypeError):
        raise ValueError(
            f"architecture={saved!r} is not supported; expected one of {tuple(saved_names())}"
        ) from None


def saved_names() -> list[str]:
    """Every ``cfg.json`` ``architecture`` string a registered architecture reads, in
    registration order (``SAEConfig.architecture`` takes one of these)."""
    return list(_ON_DISK)


def by_activation_fn_str(activation: str) -> Architecture:
    """The architecture a pre-6.0 ``activation_fn_str`` means."""
    for arch in _REGISTRY.values():
        if arch.activation_fn_str is not None and arch.activation_fn_str == activation:
            return arch
    known = " or ".join(repr(a.activation_fn_str) for a in _REGISTRY.values() if a.activation_fn_str)
    raise ValueError(f"activation_fn_str={activation!r} is not supported; expected {known}")
