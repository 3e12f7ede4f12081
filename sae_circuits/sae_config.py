"""The SAE configuration (:class:`SAEConfig`) and the dtype/device helpers it validates with.

Kept apart from :mod:`sae_circuits.sae` so that the file format (:mod:`sae_circuits.io`) can build
configs without importing the SAE module (which imports it): no import cycle. Everything here is
re-exported by :mod:`sae_circuits.sae`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from sae_circuits import architectures
from sae_circuits.architectures import Architecture, Kind

ArchitectureName = str
"""A ``cfg.json`` ``architecture`` string: one of :data:`ARCHITECTURES` (SAELens's ``standard``,
``topk``, ``jumprelu``, ``gated``, ``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``,
``jumprelu_skip_transcoder``) or the name of a newly registered architecture
(:mod:`sae_circuits.architectures`)."""
Normalization = Literal["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]
ARCHITECTURES: tuple[str, ...] = tuple(architectures.saved_names())
"""The on-disk architecture names registered when the package was imported."""
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)


@dataclass
class SAEConfig:
    """Everything needed to run an SAE, in the vocabulary of the SAELens 6.x ``cfg.json``."""

    architecture: ArchitectureName
    """Which encoder/activation/decoder family, and SAE or transcoder: a name of the
    architecture registry (see :data:`ARCHITECTURES` and :mod:`sae_circuits.architectures`)."""
    d_in: int
    """Width of the activation the SAE reads (for ``hook_z``: ``n_heads * d_head``)."""
    d_sae: int
    """Number of features (dictionary size)."""
    hook_name: str
    """TransformerLens hook the SAE reads; for transcoders, the input hook (e.g. the MLP input)."""
    hook_name_out: str | None = None
    """Transcoders only: the hook whose activation the transcoder replaces (e.g. the MLP output)."""
    d_out: int | None = None
    """Output width; ``None`` means ``d_in`` (plain SAEs reconstruct their input)."""
    k: int | None = None
    """TopK only: number of features kept per token."""
    rescale_acts_by_decoder_norm: bool = False
    """TopK only: rank pre-activations after scaling by decoder row norms (SAELens option)."""
    apply_b_dec_to_input: bool = True
    """Subtract ``b_dec`` from the input before encoding (never for transcoders)."""
    normalize_activations: Normalization = "none"
    """Run-time input normalisation. ``expected_average_only_in`` is a no-op at inference time
    (its constant is folded into the weights, as in SAELens)."""
    reshape_activations: Literal["none", "hook_z"] = "none"
    """``hook_z``: flatten heads (``... h d -> ... (h d)``) before encoding, unflatten after."""
    dtype: str = "float32"
    """Parameter dtype, as a string (``float32``, ``float16``, ``bfloat16``, ``float64``)."""
    device: str = "cpu"
    """Device the parameters live on."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Open bag kept verbatim from ``cfg.json`` (``model_name``, ``context_size``, ...)."""

    def __post_init__(self) -> None:
        arch, _ = architectures.lookup(self.architecture)  # ValueError naming the known names
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.d_out is not None and (
            not isinstance(self.d_out, int) or isinstance(self.d_out, bool) or self.d_out <= 0
        ):
            raise ValueError(f"d_out={self.d_out!r} must be a positive integer or None")
        if not isinstance(self.apply_b_dec_to_input, bool):  # "false" would act as True
            raise ValueError(f"apply_b_dec_to_input={self.apply_b_dec_to_input!r} must be True or False")
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise ValueError(f"hook_name={self.hook_name!r} must be a non-empty hook name")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r}; expected one of {NORMALIZATIONS}"
            )
        if self.reshape_activations not in ("none", "hook_z"):
            raise ValueError(f"reshape_activations={self.reshape_activations!r}; expected 'none' or 'hook_z'")
        if self.reshape_activations == "hook_z" and not self.hook_name.endswith("_z"):
            raise ValueError(  # it would fail at the first forward pass (as SAELens, which checks "_z")
                f"reshape_activations='hook_z' needs a hook_z site, not hook_name={self.hook_name!r}"
            )
        if isinstance(self.device, torch.device):
            self.device = str(self.device)
        self.device = device_str(self.device)
        arch.check_config(self)
        if self.is_transcoder:
            if not isinstance(self.hook_name_out, str) or not self.hook_name_out:
                raise ValueError(  # else its site would silently be its input hook (as the loader says)
                    f"a {self.architecture} needs hook_name_out, the hook it writes (e.g. "
                    f"'blocks.0.hook_mlp_out'); got {self.hook_name_out!r}"
                )
            if self.d_out is None:
                self.d_out = self.d_in
            if self.apply_b_dec_to_input:
                raise ValueError(
                    "apply_b_dec_to_input=True is not allowed for transcoders (b_dec has the output width)"
                )
            if self.normalize_activations in ("constant_norm_rescale", "layer_norm"):
                raise ValueError(
                    f"normalize_activations={self.normalize_activations!r} is not supported for transcoders"
                )
        elif self.hook_name_out not in (None, self.hook_name):
            raise ValueError(  # it would be spliced at a hook it does not read
                f"a {self.architecture} SAE reconstructs the hook it reads: hook_name_out="
                f"{self.hook_name_out!r} != hook_name={self.hook_name!r} (use a transcoder architecture)"
            )
        elif self.d_out not in (None, self.d_in):
            raise ValueError(
                f"a non-transcoder SAE reconstructs its input: d_out={self.d_out} != d_in={self.d_in}"
            )
        str_to_dtype(self.dtype)  # validates

    @property
    def arch(self) -> Architecture:
        """The registered :class:`~sae_circuits.architectures.Architecture` of ``architecture``."""
        return architectures.lookup(self.architecture)[0]

    @property
    def kind(self) -> Kind:
        """``"sae"``, ``"transcoder"`` or ``"skip_transcoder"``, from the architecture name."""
        return architectures.lookup(self.architecture)[1]

    @property
    def is_transcoder(self) -> bool:
        """Whether the SAE reads one hook and writes another."""
        return self.kind != "sae"

    @property
    def has_skip(self) -> bool:
        """Whether a linear skip connection ``x @ W_skip.T`` is added to the output."""
        return self.kind == "skip_transcoder"

    @property
    def activation(self) -> str:
        """The activation family (the registry name: ``relu``, ``topk``, ``jumprelu``, ``gated``,
        ...), independent of SAE vs transcoder."""
        return self.arch.name

    @property
    def output_width(self) -> int:
        """Width of the reconstruction (``d_out`` for transcoders, else ``d_in``)."""
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def site(self) -> str:
        """Hook whose activation the SAE replaces when spliced (``hook_name_out`` or ``hook_name``)."""
        return self.hook_name_out or self.hook_name

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape: the tensors of ``sae_weights.safetensors`` for this config."""
        d_in, d_sae, d_out = self.d_in, self.d_sae, self.output_width
        shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
        shapes.update(self.arch.parameter_shapes(d_sae))
        if self.has_skip:
            shapes["W_skip"] = (d_out, d_in)
        return shapes


_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
}


def str_to_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"torch.float32"`` -> ``torch.float32``, with a clear error otherwise."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"dtype={name!r} is not supported; expected one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def device_str(device: str | torch.device) -> str:
    """A device argument as torch's canonical string (``"cuda:0"``), with an error naming a malformed one."""
    if isinstance(device, torch.device):
        return str(device)
    if not isinstance(device, str):
        raise ValueError(f"device={device!r} must be a string such as 'cpu' or 'cuda:0'")
    try:
        return str(torch.device(device))
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a valid torch device ({err})") from None


def dtype_to_str(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")
