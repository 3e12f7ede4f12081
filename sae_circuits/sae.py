"""Sparse autoencoders and transcoders: config, weights, encode/decode, hook points.

One class covers every architecture of the SAELens on-disk format: ``standard`` (ReLU),
``topk``, ``jumprelu``, ``gated`` and the transcoders (``transcoder``, ``skip_transcoder`` and
their ``jumprelu_*`` variants), which read one hook and write another.

The forward pass is split into small pieces (``_flatten`` -> ``_pre_acts`` -> ``_activate`` ->
``_decode_linear`` -> ``_finish``) so that a spliced site (:mod:`sae_circuits.splice`) can run
each piece once, keep the clean feature activations beside the edited ones, and decode only the
edit: ``out = x + (f_edited - f) @ W_dec``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, get_args

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

Architecture = Literal[
    "standard",
    "topk",
    "jumprelu",
    "gated",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
]
Normalization = Literal["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
HOOK_NAMES = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
)


@dataclass
class SAEConfig:
    """Everything needed to run an SAE, in the vocabulary of the SAELens 6.x ``cfg.json``."""

    architecture: Architecture
    """Which encoder/activation/decoder family; see the module docstring."""
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
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture={self.architecture!r} is not supported; expected one of {ARCHITECTURES}"
            )
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.d_out is not None and (not isinstance(self.d_out, int) or self.d_out <= 0):
            raise ValueError(f"d_out={self.d_out!r} must be a positive integer or None")
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
        if self.architecture != "topk":  # TopK-only fields mean nothing elsewhere (SAELens ignores them)
            self.k, self.rescale_acts_by_decoder_norm = None, False
        elif not isinstance(self.k, int) or isinstance(self.k, bool) or not 0 < self.k <= self.d_sae:
            raise ValueError(f"topk SAE needs 0 < k <= d_sae={self.d_sae}, got k={self.k!r}")
        if self.is_transcoder:
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
        elif self.d_out not in (None, self.d_in):
            raise ValueError(
                f"a non-transcoder SAE reconstructs its input: d_out={self.d_out} != d_in={self.d_in}"
            )
        str_to_dtype(self.dtype)  # validates

    @property
    def is_transcoder(self) -> bool:
        """Whether the SAE reads one hook and writes another."""
        return "transcoder" in self.architecture

    @property
    def has_skip(self) -> bool:
        """Whether a linear skip connection ``x @ W_skip.T`` is added to the output."""
        return self.architecture.endswith("skip_transcoder")

    @property
    def activation(self) -> Literal["relu", "topk", "jumprelu", "gated"]:
        """The activation family, independent of SAE vs transcoder."""
        if self.architecture.startswith("jumprelu"):
            return "jumprelu"
        if self.architecture in ("topk", "gated"):
            return self.architecture
        return "relu"

    @property
    def output_width(self) -> int:
        """Width of the reconstruction (``d_out`` for transcoders, else ``d_in``)."""
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def site(self) -> str:
        """Hook whose activation the SAE replaces when spliced (``hook_name_out`` or ``hook_name``)."""
        return self.hook_name_out or self.hook_name


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


class Normalizer(NamedTuple):
    """Per-token affine map undone after decoding: ``x_out = y * scale + shift``."""

    scale: Tensor | None
    shift: Tensor | None


_IDENTITY = Normalizer(None, None)


class SAE(nn.Module):
    """A sparse autoencoder (or transcoder) with TransformerLens hook points.

    >>> cfg = SAEConfig("standard", d_in=8, d_sae=32, hook_name="blocks.0.hook_resid_post")
    >>> sae = SAE(cfg)
    >>> sae.encode(torch.randn(2, 5, 8)).shape
    torch.Size([2, 5, 32])

    Parameters follow SAELens: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_enc [d_sae]``,
    ``b_dec [d_out]``; plus ``threshold`` (jumprelu), ``b_gate``/``b_mag``/``r_mag`` (gated, which
    has no ``b_enc``) and ``W_skip [d_out, d_in]`` (skip transcoders).
    """

    # Set with setattr() in __init__ (one per name in HOOK_NAMES); declared here for type checkers.
    hook_sae_input: HookPoint
    hook_sae_acts_pre: HookPoint
    hook_sae_acts_post: HookPoint
    hook_sae_recons: HookPoint
    hook_sae_error: HookPoint
    hook_sae_output: HookPoint

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dtype, device = str_to_dtype(cfg.dtype), torch.device(cfg.device)

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape, dtype=dtype, device=device))

        self.W_enc = param(cfg.d_in, cfg.d_sae)
        self.W_dec = param(cfg.d_sae, cfg.output_width)
        self.b_dec = param(cfg.output_width)
        if cfg.activation == "gated":
            self.b_gate, self.b_mag, self.r_mag = param(cfg.d_sae), param(cfg.d_sae), param(cfg.d_sae)
        else:
            self.b_enc = param(cfg.d_sae)
        if cfg.activation == "jumprelu":
            self.threshold = param(cfg.d_sae)
        if cfg.has_skip:
            self.W_skip = param(cfg.output_width, cfg.d_in)
        if device.type != "meta":
            self.reset_parameters()
        for name in HOOK_NAMES:
            setattr(self, name, HookPoint())
            getattr(self, name).name = name
        self._d_head: int | None = None  # remembered from the last hook_z encode, for decode()
        self.sparsity: Tensor | None = None
        """log10 firing frequency per feature, when loaded from ``sparsity.safetensors``."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random unit-norm decoder rows, encoder = decoder transpose, zero biases/thresholds/skip
        (the usual SAE initialisation; uses torch's global RNG)."""
        for param in self.parameters():
            param.zero_()
        direction = torch.randn(
            self.cfg.d_sae, self.cfg.output_width, device=self.device, dtype=torch.float32
        )
        self.W_dec.copy_(direction / direction.norm(dim=-1, keepdim=True))
        if self.cfg.d_in == self.cfg.output_width:
            self.W_enc.copy_(self.W_dec.T)
        else:  # transcoders: an independent random encoder
            enc = torch.randn(self.cfg.d_in, self.cfg.d_sae, device=self.device, dtype=torch.float32)
            self.W_enc.copy_(enc / enc.norm(dim=0, keepdim=True))

    # ------------------------------------------------------------------ I/O (see io.py)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> SAE:
        """Load an SAE saved in the SAELens layout (``cfg.json`` + ``sae_weights.safetensors``).

        >>> sae = SAE.load("path/to/sae_dir")  # doctest: +SKIP
        """
        from sae_circuits.io import load_sae

        return load_sae(path, device=device, dtype=dtype)

    def save(self, path: str | os.PathLike[str], sparsity: Tensor | None = None) -> None:
        """Save in the SAELens 6.x layout (atomically); ``sparsity`` defaults to ``self.sparsity``."""
        from sae_circuits.io import save_sae

        save_sae(self, path, sparsity=sparsity)

    @classmethod
    def from_sae_lens(cls, obj: Any) -> SAE:
        """Convert a live ``sae_lens`` SAE or transcoder object (same weights, same hook names)."""
        from sae_circuits.io import from_sae_lens

        return from_sae_lens(obj)

    # ------------------------------------------------------------------ public API

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations of ``x`` (runs ``hook_sae_input``, ``_acts_pre``, ``_acts_post``)."""
        inp = self.hook_sae_input(self._flatten(x))
        h, _, gate = self._pre_acts(inp)
        return self.hook_sae_acts_post(self._activate(self.hook_sae_acts_pre(h), gate))

    def pre_activations(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature pre-activations of ``x``: what ``hook_sae_acts_pre`` sees, before the activation
        function (for gated SAEs, the magnitude path); no hooks run.

        >>> SAE(SAEConfig("jumprelu", d_in=8, d_sae=32, hook_name="blocks.0.hook_resid_post")).pre_activations(
        ...     torch.randn(5, 8)
        ... ).shape
        torch.Size([5, 32])
        """
        return self._pre_acts(self._flatten(x))[0]

    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_out"]:
        """Reconstruction from feature activations (runs ``hook_sae_recons``).

        For ``constant_norm_rescale``/``layer_norm`` SAEs this is in the normalised space; use
        :meth:`forward` for a reconstruction in the activation's own scale.
        """
        return self._unflatten(self.hook_sae_recons(self._decode_linear(f) + self.b_dec))

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """Reconstruction of ``x`` (a transcoder's prediction of its output hook)."""
        flat = self._flatten(x)
        inp = self.hook_sae_input(flat)
        h, norm, gate = self._pre_acts(inp)
        f = self.hook_sae_acts_post(self._activate(self.hook_sae_acts_pre(h), gate))
        recons = self.hook_sae_recons(self._decode_linear(f) + self.b_dec)
        out = self._finish(recons, norm, flat)
        return self.hook_sae_output(self._unflatten(out))

    def to(self, *args: Any, **kwargs: Any) -> SAE:  # keeps cfg.dtype/device truthful
        out = super().to(*args, **kwargs)
        self.cfg = replace(self.cfg, dtype=dtype_to_str(self.W_enc.dtype), device=str(self.W_enc.device))
        return out

    # ------------------------------------------------------------------ pieces

    def _flatten(self, x: Tensor) -> Tensor:
        """Cast to the SAE's dtype/device and flatten heads for ``hook_z`` SAEs.

        A HookedTransformer's ``hook_z`` carries ``[..., n_heads, d_head]``; a TransformerBridge's
        hook point itself carries the heads already flattened (only hooks see them split), and
        that stays flat on the way out."""
        if self.cfg.reshape_activations == "hook_z":
            # [..., n_heads, d_head] unless the last axis is already d_in wide; one head of width
            # d_in is told apart by rank (TransformerLens's z is [batch, pos, n_heads, d_head])
            one_head = x.ndim >= 4 and x.shape[-2] == 1
            flat = x.shape[-1] == self.cfg.d_in and not one_head
            self._d_head = None if flat else x.shape[-1]
            if not flat:
                x = einops.rearrange(x, "... n_heads d_head -> ... (n_heads d_head)")
        return x.to(device=self.device, dtype=self.dtype)

    def _unflatten(self, y: Tensor) -> Tensor:
        if self.cfg.reshape_activations == "hook_z" and self._d_head is not None:
            return einops.rearrange(y, "... (n_heads d_head) -> ... n_heads d_head", d_head=self._d_head)
        return y

    def _normalize(self, x: Tensor) -> tuple[Tensor, Normalizer]:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = self.cfg.d_in**0.5 / x.norm(dim=-1, keepdim=True)
            return x * coeff, Normalizer(1.0 / coeff, None)
        if mode == "layer_norm":  # as SAELens: unbiased std, eps added to the std
            mu = x.mean(dim=-1, keepdim=True)
            centred = x - mu
            std = centred.std(dim=-1, keepdim=True)
            return centred / (std + 1e-5), Normalizer(std, mu)
        return x, _IDENTITY

    def _pre_acts(self, inp: Tensor) -> tuple[Tensor, Normalizer, Tensor | None]:
        """Pre-activations ``h``, the normaliser to undo on the output, and the gate (gated SAEs)."""
        x, norm = self._normalize(inp)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        if self.cfg.activation == "gated":
            gate = (x @ self.W_enc + self.b_gate) > 0
            return x @ (self.W_enc * self.r_mag.exp()) + self.b_mag, norm, gate
        return x @ self.W_enc + self.b_enc, norm, None

    def _activate(self, h: Tensor, gate: Tensor | None = None) -> Tensor:
        """Feature activations from pre-activations (no hooks)."""
        kind = self.cfg.activation
        if kind == "topk":
            if self.cfg.rescale_acts_by_decoder_norm:
                h = h * self.W_dec.norm(dim=-1)
            values, indices = torch.topk(h, k=self.cfg.k, dim=-1, sorted=False)  # type: ignore[arg-type]
            return torch.zeros_like(h).scatter_(-1, indices, values.relu())
        if kind == "jumprelu":
            return h.relu() * (h > self.threshold)
        if kind == "gated":
            assert gate is not None
            return h.relu() * gate
        return h.relu()

    def _decode_linear(self, f: Tensor) -> Tensor:
        """``f @ W_dec`` (no bias), undoing TopK's decoder-norm rescaling."""
        if self.cfg.rescale_acts_by_decoder_norm:
            f = f / self.W_dec.norm(dim=-1)
        return f @ self.W_dec

    def _decode_columns(self, df: Tensor, columns: Tensor) -> Tensor:
        """``df @ W_dec`` where ``df`` is zero outside ``columns``: a small matmul for sparse edits."""
        rows = self.W_dec[columns]
        if self.cfg.rescale_acts_by_decoder_norm:
            rows = rows / rows.norm(dim=-1, keepdim=True)
        return df[..., columns] @ rows

    def _finish(self, recons: Tensor, norm: Normalizer, flat_input: Tensor) -> Tensor:
        """Undo input normalisation; add the skip connection of skip transcoders."""
        if norm.scale is not None:
            recons = recons * norm.scale
        if norm.shift is not None:
            recons = recons + norm.shift
        if self.cfg.has_skip:
            recons = recons + flat_input @ self.W_skip.T
        return recons

    def extra_repr(self) -> str:
        c = self.cfg
        return f"{c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, hook_name={c.site!r}"
