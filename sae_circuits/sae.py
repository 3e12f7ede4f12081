"""Sparse autoencoders and transcoders: weights, encode/decode, hook points.

One class covers every registered architecture (:mod:`sae_circuits.architectures`): SAELens's
``standard`` (ReLU), ``topk``, ``jumprelu``, ``gated`` and the transcoders (``transcoder``,
``skip_transcoder`` and their ``jumprelu_*`` variants), which read one hook and write another.
What differs between architectures (extra parameters, pre-activations, the activation function,
decoder rows) is asked of ``cfg.arch``; what they share (normalisation, ``b_dec``, ``hook_z``
reshaping, the skip connection, hook points) is here.

The forward pass is split into public pieces (:meth:`SAE.prepare_input` -> :meth:`SAE.encode_parts`
-> :meth:`SAE.activation_fn` -> :meth:`SAE.decode_normalized` -> :meth:`SAE.finish_output`) so that
a spliced site (:mod:`sae_circuits.splice`) can run each piece once, with its hook points in
between, keep the clean feature activations beside the edited ones, and decode only the edit
(:meth:`SAE.decode_delta`): ``out = x + (f_edited - f) @ W_dec``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, NamedTuple

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from sae_circuits import io
from sae_circuits.sae_config import (
    ARCHITECTURES,
    NORMALIZATIONS,
    ArchitectureName,
    Normalization,
    SAEConfig,
    device_str,
    dtype_to_str,
    str_to_dtype,
)

Architecture = ArchitectureName
"""Deprecated alias of :data:`sae_circuits.sae_config.ArchitectureName` (an on-disk architecture
string; it was a ``Literal``); the architecture classes are :mod:`sae_circuits.architectures`."""

__all__ = [
    "ARCHITECTURES",
    "HOOK_NAMES",
    "NORMALIZATIONS",
    "SAE",
    "Architecture",
    "ArchitectureName",
    "EncodeParts",
    "Normalization",
    "Normalizer",
    "SAEConfig",
    "device_str",
    "dtype_to_str",
    "str_to_dtype",
]

HOOK_NAMES = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
)


class Normalizer(NamedTuple):
    """Per-token affine map undone after decoding: ``x_out = y * scale + shift``."""

    scale: Tensor | None
    shift: Tensor | None


_IDENTITY = Normalizer(None, None)


class EncodeParts(NamedTuple):
    """What :meth:`SAE.encode_parts` computes before the activation function."""

    pre: Tensor
    """``[..., d_sae]`` pre-activations: what ``hook_sae_acts_pre`` sees."""
    normalizer: Normalizer
    """The input normalisation, undone on the output by :meth:`SAE.finish_output`."""
    gate: Tensor | None
    """``[..., d_sae]`` boolean gate (gated SAEs), else ``None``."""


class SAE(nn.Module):
    """A sparse autoencoder (or transcoder) with TransformerLens hook points.

    >>> cfg = SAEConfig("standard", d_in=8, d_sae=32, hook_name="blocks.0.hook_resid_post")
    >>> sae = SAE(cfg)
    >>> sae.encode(torch.randn(2, 5, 8)).shape
    torch.Size([2, 5, 32])

    Parameters follow SAELens: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``,
    ``W_skip [d_out, d_in]`` (skip transcoders), and the architecture's own
    (``cfg.arch.parameter_shapes``): ``b_enc [d_sae]``, plus ``threshold`` (jumprelu), or
    ``b_gate``/``b_mag``/``r_mag`` and no ``b_enc`` (gated).
    """

    # Set with setattr() in __init__ (one per name in HOOK_NAMES); declared here for type checkers.
    hook_sae_input: HookPoint
    hook_sae_acts_pre: HookPoint
    hook_sae_acts_post: HookPoint
    hook_sae_recons: HookPoint
    hook_sae_error: HookPoint
    hook_sae_output: HookPoint
    # Parameters, created from cfg.parameter_shapes() in __init__ and declared here for type
    # checkers: the shared ones, then those only some architectures have (a new architecture's
    # parameters need no entry here).
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    b_enc: nn.Parameter
    threshold: nn.Parameter
    b_gate: nn.Parameter
    b_mag: nn.Parameter
    r_mag: nn.Parameter
    W_skip: nn.Parameter

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dtype, device = str_to_dtype(cfg.dtype), torch.device(cfg.device)
        for name, shape in cfg.parameter_shapes().items():
            self.register_parameter(name, nn.Parameter(torch.zeros(*shape, dtype=dtype, device=device)))
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

        The weights go to ``device`` (default ``"cpu"``), whatever device ``cfg.json`` records;
        a directory that does not hold a valid SAE raises :class:`~sae_circuits.io.SAEFormatError`.

        >>> sae.save("sae_dir")
        >>> loaded = SAE.load("sae_dir")
        >>> loaded.cfg.hook_name, bool(torch.equal(loaded.W_dec, sae.W_dec))
        ('blocks.1.hook_resid_post', True)
        """
        return cls.from_state(io.read_sae(path, device=device, dtype=dtype))

    def save(self, path: str | os.PathLike[str], sparsity: Tensor | None = None) -> None:
        """Save in the SAELens 6.x layout (atomically); ``sparsity`` defaults to ``self.sparsity``."""
        io.save_sae(self, path, sparsity=sparsity)

    @classmethod
    def from_sae_lens(cls, obj: Any) -> SAE:
        """Convert a live ``sae_lens`` SAE or transcoder object (same weights, same hook names).
        The tensors are shared, not copied: an in-place edit of one SAE's weights shows in the
        other (``copy.deepcopy`` the result for an independent SAE)."""
        return cls.from_state(io.sae_lens_state(obj))

    @classmethod
    def from_state(cls, state: io.SAEState) -> SAE:
        """An SAE holding ``state``'s validated tensors (no copy, no random initialisation)."""
        with torch.device("meta"):
            sae = cls(replace(state.cfg, device="meta"))
        sae.load_state_dict(dict(state.tensors), assign=True)
        sae.cfg = state.cfg
        sae.sparsity = state.sparsity
        return sae

    @classmethod
    def empty(cls, cfg: SAEConfig) -> SAE:
        """An SAE of ``cfg`` with uninitialised parameters on ``cfg.device``, drawing nothing from
        the global RNG: for code that fills every parameter itself."""
        sae = cls(replace(cfg, device="meta")).to_empty(device=cfg.device)
        sae.cfg = cfg
        return sae

    # ------------------------------------------------------------------ public API

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype."""
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        """The parameters' device."""
        return self.W_enc.device

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations of ``x`` (runs ``hook_sae_input``, ``_acts_pre``, ``_acts_post``)."""
        inp = self.hook_sae_input(self.prepare_input(x))
        h, _, gate = self.encode_parts(inp)
        return self.hook_sae_acts_post(self.activation_fn(self.hook_sae_acts_pre(h), gate))

    def pre_activations(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature pre-activations of ``x``: what ``hook_sae_acts_pre`` sees, before the activation
        function (for gated SAEs, the magnitude path); no hooks run.

        >>> cfg = SAEConfig("jumprelu", d_in=8, d_sae=32, hook_name="blocks.0.hook_resid_post")
        >>> SAE(cfg).pre_activations(torch.randn(5, 8)).shape
        torch.Size([5, 32])
        """
        return self.encode_parts(self.prepare_input(x)).pre

    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_out"]:
        """Reconstruction from feature activations (runs ``hook_sae_recons``).

        For ``constant_norm_rescale``/``layer_norm`` SAEs this is in the normalised space; use
        :meth:`forward` for a reconstruction in the activation's own scale.
        """
        return self._unflatten(self.hook_sae_recons(self.decode_normalized(f)))

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """Reconstruction of ``x`` (a transcoder's prediction of its output hook)."""
        flat = self.prepare_input(x)
        inp = self.hook_sae_input(flat)
        h, norm, gate = self.encode_parts(inp)
        f = self.hook_sae_acts_post(self.activation_fn(self.hook_sae_acts_pre(h), gate))
        recons = self.hook_sae_recons(self.decode_normalized(f))
        out = self.finish_output(recons, norm, flat)
        return self.hook_sae_output(self._unflatten(out))

    def _apply(self, fn: Any, recurse: bool = True) -> SAE:
        # every move or cast (to, cuda, cpu, double, half, bfloat16, to_empty) goes through here:
        # keep cfg.dtype/cfg.device truthful, as save, load and random_like read them
        out = super()._apply(fn, recurse)
        self.cfg = replace(self.cfg, dtype=dtype_to_str(self.W_enc.dtype), device=str(self.W_enc.device))
        return out

    # ------------------------------------------------------------------ pieces (splicing, attribution)
    # The forward pass, piece by piece and without hooks, for code that runs the hook points
    # itself (a spliced site) or needs one intermediate (attribution).

    def prepare_input(self, x: Float[Tensor, "*shape"]) -> Float[Tensor, "... d_in"]:
        """``x`` cast to the SAE's dtype/device, with heads flattened for ``hook_z`` SAEs.

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

    def encode_parts(self, x: Float[Tensor, "... d_in"]) -> EncodeParts:
        """Pre-activations (what ``hook_sae_acts_pre`` sees), the normaliser to undo on the output,
        and the gate (gated SAEs) of a prepared input (:meth:`prepare_input`)."""
        normalized, norm = self._normalize(x)
        if self.cfg.apply_b_dec_to_input:
            normalized = normalized - self.b_dec
        h, gate = self.cfg.arch.pre_acts(self, normalized)
        return EncodeParts(h, norm, gate)

    def activation_fn(
        self, pre: Float[Tensor, "... d_sae"], gate: Bool[Tensor, "... d_sae"] | None = None
    ) -> Float[Tensor, "... d_sae"]:
        """The architecture's activation function: feature activations from pre-activations."""
        return self.cfg.arch.activate(self, pre, gate)

    def decode_normalized(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_out"]:
        """``f @ W_dec + b_dec`` in the normalised space (what ``hook_sae_recons`` sees); flat."""
        return self.cfg.arch.decode_linear(self, f) + self.b_dec

    def finish_output(
        self, recons: Float[Tensor, "... d_out"], normalizer: Normalizer, x: Float[Tensor, "... d_in"]
    ) -> Float[Tensor, "... d_out"]:
        """Undo the input normalisation of a reconstruction; add the skip connection of skip
        transcoders (``x``: the prepared input)."""
        if normalizer.scale is not None:
            recons = recons * normalizer.scale
        if normalizer.shift is not None:
            recons = recons + normalizer.shift
        if self.cfg.has_skip:
            recons = recons + x @ self.W_skip.T
        return recons

    def decode_delta(
        self, df: Float[Tensor, "... d_sae"], columns: Int[Tensor, " n_columns"]
    ) -> Float[Tensor, "... d_out"]:
        """``df @ W_dec`` (no bias, normalised space) where ``df`` is zero outside ``columns``: a
        small matmul for sparse edits of the activations."""
        return df[..., columns] @ self.cfg.arch.decoder_rows(self, columns)

    # Old private names of the pieces (tests and benchmarks written against them still work).
    def _flatten(self, x: Tensor) -> Tensor:
        return self.prepare_input(x)

    def _pre_acts(self, inp: Tensor) -> EncodeParts:
        return self.encode_parts(inp)

    def _activate(self, h: Tensor, gate: Tensor | None = None) -> Tensor:
        return self.activation_fn(h, gate)

    def _decode_linear(self, f: Tensor) -> Tensor:
        return self.cfg.arch.decode_linear(self, f)

    def _decode_columns(self, df: Tensor, columns: Tensor) -> Tensor:
        return self.decode_delta(df, columns)

    def _finish(self, recons: Tensor, norm: Normalizer, flat_input: Tensor) -> Tensor:
        return self.finish_output(recons, norm, flat_input)

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

    def extra_repr(self) -> str:
        """Architecture, sizes and site, for ``repr(sae)``."""
        c = self.cfg
        return f"{c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, hook_name={c.site!r}"

    def __repr__(self) -> str:
        """One line: the six hook points are the same for every SAE, and an intervention built on
        an SAE (``sc.clamp(sae, ...)``) prints it inside its own repr."""
        return f"{type(self).__name__}({self.extra_repr()})"
