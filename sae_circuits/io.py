"""SAELens on-disk format: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``).

Reads the 6.x layout (hook names under ``metadata``) and the flat pre-6.0 layout (``hook_point``,
``activation_fn_str``, boolean ``normalize_activations``); writes the 6.x layout. Only JSON and
safetensors are ever read: nothing is unpickled. Every write goes to a temporary file in the
target directory and is renamed into place, so a failure never leaves a half-written SAE.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from sae_circuits.sae import ARCHITECTURES, SAE, SAEConfig, dtype_to_str, str_to_dtype

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
# The writer declares the 6.x layout: SAELens reads a cfg without this as pre-6.0 and would
# then lose the hook name (it lives under "metadata" in 6.x).
_LAYOUT_VERSION = "6.0.0"
_TOP_LEVEL_KEYS = {
    "architecture", "d_in", "d_sae", "d_out", "k", "rescale_acts_by_decoder_norm",
    "apply_b_dec_to_input", "normalize_activations", "reshape_activations", "dtype", "device",
}  # fmt: skip
# Keys that pre-6.0 configs keep at top level and 6.x moves into "metadata" (SAELens's list).
_PRE6_METADATA_KEYS = {
    "model_name", "hook_name", "model_class_name", "hook_head_index", "model_from_pretrained_kwargs",
    "prepend_bos", "exclude_special_tokens", "neuronpedia_id", "context_size", "seqpos_slice",
    "dataset_path", "sae_lens_version", "sae_lens_training_version", "hook_name_out",
    "hook_head_index_out", "hf_hook_name", "hf_hook_name_out",
}  # fmt: skip


class SAEFormatError(ValueError):
    """A ``cfg.json`` or weights file that does not describe a valid SAE."""


# --------------------------------------------------------------------------- config


def config_from_dict(raw: Mapping[str, Any], *, source: str = "cfg.json") -> SAEConfig:
    """Parse a SAELens config dict (6.x nested or pre-6.0 flat) into an :class:`SAEConfig`."""
    if not isinstance(raw, Mapping):
        raise SAEFormatError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    cfg = dict(raw)
    metadata = cfg.pop("metadata", None)
    if metadata is None:
        metadata = _pre6_to_metadata(cfg)
    elif not isinstance(metadata, Mapping):
        raise SAEFormatError(f"{source}: 'metadata' must be an object, got {type(metadata).__name__}")
    metadata = dict(metadata)

    def need(key: str, where: Mapping[str, Any]) -> Any:
        if key not in where or where[key] is None:
            raise SAEFormatError(f"{source}: missing required key {key!r}")
        return where[key]

    architecture = cfg.get("architecture", "standard")
    if architecture not in ARCHITECTURES:
        raise SAEFormatError(
            f"{source}: architecture={architecture!r} is not supported; expected one of {ARCHITECTURES}"
        )
    is_transcoder = "transcoder" in architecture
    normalize = cfg.get("normalize_activations", "none")
    if isinstance(normalize, bool):  # pre-6.0: True meant the (folded) expected-average scaling
        normalize = "expected_average_only_in" if normalize else "none"
    hook_name = need("hook_name", metadata)
    hook_name_out = metadata.pop("hook_name_out", None)
    del metadata["hook_name"]  # both live in SAEConfig fields; config_to_dict writes them back
    try:
        return SAEConfig(
            architecture=architecture,
            d_in=_int(need("d_in", cfg), "d_in", source),
            d_sae=_int(need("d_sae", cfg), "d_sae", source),
            hook_name=hook_name,
            hook_name_out=hook_name_out if is_transcoder else None,
            d_out=_int(cfg["d_out"], "d_out", source) if cfg.get("d_out") is not None else None,
            k=_int(cfg["k"], "k", source) if cfg.get("k") is not None else None,
            rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
            apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", not is_transcoder)),
            normalize_activations=normalize if normalize is not None else "none",
            reshape_activations=cfg.get(
                "reshape_activations", "hook_z" if str(hook_name).endswith("hook_z") else "none"
            ),
            dtype=str(cfg.get("dtype", "float32")),
            device=str(cfg.get("device", "cpu")),
            metadata=metadata,
        )
    except (TypeError, ValueError) as err:
        raise SAEFormatError(f"{source}: {err}") from err


def _int(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise SAEFormatError(f"{source}: {key}={value!r} must be an integer")
    return int(value)


def _pre6_to_metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    """Move the flat pre-6.0 keys into 6.x form, in place on ``cfg``; returns the metadata."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}
    for old, new in renames.items():
        if old in cfg:
            cfg.setdefault(new, cfg.pop(old))
    activation = cfg.pop("activation_fn_str", cfg.pop("activation_fn", "relu"))
    kwargs = cfg.pop("activation_fn_kwargs", None) or {}
    if activation == "topk" and "architecture" not in cfg:
        cfg["architecture"] = "topk"
        cfg.setdefault("k", kwargs.get("k"))
    return {key: cfg.pop(key) for key in list(cfg) if key in _PRE6_METADATA_KEYS}


def config_to_dict(cfg: SAEConfig) -> dict[str, Any]:
    """The 6.x ``cfg.json`` layout of ``cfg``."""
    metadata = dict(cfg.metadata)
    metadata.setdefault("sae_lens_version", _LAYOUT_VERSION)
    metadata["hook_name"] = cfg.hook_name
    if cfg.is_transcoder:
        metadata["hook_name_out"] = cfg.hook_name_out
    out: dict[str, Any] = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": cfg.reshape_activations,
        "metadata": metadata,
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    if cfg.is_transcoder:
        out["d_out"] = cfg.output_width
    return out


# --------------------------------------------------------------------------- weights


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape that ``sae_weights.safetensors`` must hold for ``cfg``."""
    d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.output_width
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if cfg.activation == "gated":
        shapes.update(b_gate=(d_sae,), b_mag=(d_sae,), r_mag=(d_sae,))
    else:
        shapes["b_enc"] = (d_sae,)
    if cfg.activation == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if cfg.has_skip:
        shapes["W_skip"] = (d_out, d_in)
    return shapes


def validate_state_dict(cfg: SAEConfig, tensors: Mapping[str, Tensor], *, source: str) -> None:
    """Raise :class:`SAEFormatError` naming any missing, extra, misshapen or non-finite tensor."""
    shapes = expected_shapes(cfg)
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise SAEFormatError(f"{source}: missing tensors {missing} for a {cfg.architecture} SAE")
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise SAEFormatError(
            f"{source}: unexpected tensors {extra} for a {cfg.architecture} SAE; expected {sorted(shapes)}"
        )
    for name, shape in shapes.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise SAEFormatError(f"{source}: tensor {name!r} has shape {list(got)}, expected {list(shape)}")
        if not torch.isfinite(tensors[name]).all():
            raise SAEFormatError(f"{source}: tensor {name!r} contains NaN or Inf values")


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise SAEFormatError(f"{path}: not a readable safetensors file ({err})") from err


def _drop_unit_scaling_factor(tensors: dict[str, Tensor], source: str) -> None:
    """Old SAELens files may carry an all-ones ``scaling_factor``; anything else is unsupported."""
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not torch.allclose(scale, torch.ones_like(scale)):
        raise SAEFormatError(
            f"{source}: a non-trivial 'scaling_factor' (finetuning scaling) is not supported"
        )


def load_sae(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> SAE:
    """Load an SAE saved in the SAELens layout (``sae_lens`` 6.x or pre-6.0)."""
    folder = Path(path)
    cfg_path = folder / CFG_FILENAME
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE directory {str(folder)!r} does not exist")
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {CFG_FILENAME}")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise SAEFormatError(f"{cfg_path}: malformed JSON ({err.msg} at line {err.lineno})") from err
    cfg = config_from_dict(raw, source=str(cfg_path))
    weights_path = folder / WEIGHTS_FILENAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {WEIGHTS_FILENAME}")
    tensors = _read_safetensors(weights_path)
    _drop_unit_scaling_factor(tensors, str(weights_path))
    validate_state_dict(cfg, tensors, source=str(weights_path))
    sparsity = _load_sparsity(folder / SPARSITY_FILENAME, cfg.d_sae)
    return _build(cfg, tensors, sparsity, device=device, dtype=dtype)


def _load_sparsity(path: Path, d_sae: int) -> Tensor | None:
    if not path.is_file():
        return None
    tensors = _read_safetensors(path)
    sparsity = tensors.get("sparsity")
    if sparsity is None or tuple(sparsity.shape) != (d_sae,):
        got = None if sparsity is None else list(sparsity.shape)
        raise SAEFormatError(f"{path}: expected key 'sparsity' of shape [{d_sae}], got {got}")
    return sparsity.float()


def _build(
    cfg: SAEConfig,
    tensors: Mapping[str, Tensor],
    sparsity: Tensor | None,
    *,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
) -> SAE:
    from dataclasses import replace

    target_dtype = str_to_dtype(dtype) if dtype is not None else str_to_dtype(cfg.dtype)
    target_device = str(device) if device is not None else cfg.device
    cfg = replace(cfg, dtype=dtype_to_str(target_dtype), device=target_device)
    with torch.device("meta"):
        sae = SAE(replace(cfg, device="meta"))
    sae.load_state_dict(
        {k: v.to(device=target_device, dtype=target_dtype) for k, v in tensors.items()}, assign=True
    )
    sae.cfg = cfg
    sae.sparsity = sparsity
    return sae


def save_sae(sae: SAE, path: str | os.PathLike[str], sparsity: Tensor | None = None) -> Path:
    """Write ``sae`` in the SAELens 6.x layout; ``sparsity`` is log10 firing frequency ``[d_sae]``."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    sparsity = sparsity if sparsity is not None else getattr(sae, "sparsity", None)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    validate_state_dict(sae.cfg, tensors, source=f"SAE being saved to {folder}")
    cfg = config_to_dict(sae.cfg)
    with _atomic_files(folder) as write:
        write(WEIGHTS_FILENAME, lambda p: save_file(tensors, p))
        if sparsity is not None:
            sparsity = sparsity.detach().float().cpu().contiguous()
            if tuple(sparsity.shape) != (sae.cfg.d_sae,):
                raise ValueError(f"sparsity has shape {list(sparsity.shape)}, expected [{sae.cfg.d_sae}]")
            write(SPARSITY_FILENAME, lambda p: save_file({"sparsity": sparsity}, p))
        write(CFG_FILENAME, lambda p: Path(p).write_text(json.dumps(cfg, indent=2, default=_json_default)))
    return folder


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable")


@contextmanager
def _atomic_files(folder: Path) -> Iterator[Callable[[str, Callable[[str], Any]], None]]:
    """Stage files as temporaries in ``folder``; rename them all into place only if every write worked."""
    staged: list[tuple[str, Path]] = []

    def write(name: str, writer: Callable[[str], Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        staged.append((tmp, folder / name))
        writer(tmp)

    try:
        yield write
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; give them the usual permissions
        for tmp, final in staged:
            os.chmod(tmp, mode)
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_files(target.parent) as write:
        write(target.name, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return target


# --------------------------------------------------------------------------- sae_lens objects


def from_sae_lens(obj: Any) -> SAE:
    """Convert a live ``sae_lens`` SAE/transcoder object (same weights, same hook names)."""
    to_dict = getattr(getattr(obj, "cfg", None), "to_dict", None)
    if to_dict is None or not hasattr(obj, "state_dict"):
        raise TypeError(f"expected a sae_lens SAE object, got {type(obj).__name__}")
    raw = to_dict()
    raw["metadata"] = dict(raw.get("metadata") or {})
    tensors = {k: v.detach() for k, v in obj.state_dict().items()}
    if "log_threshold" in tensors:  # older JumpReLU checkpoints
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    cfg = config_from_dict(raw, source=f"sae_lens {type(obj).__name__}")
    validate_state_dict(cfg, tensors, source=f"sae_lens {type(obj).__name__}")
    return _build(cfg, tensors, None, device=str(obj.W_enc.device), dtype=obj.W_enc.dtype)
