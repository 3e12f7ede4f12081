"""SAELens on-disk format: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``).

Reads the 6.x layout (hook names under ``metadata``) and the flat pre-6.0 layout (``hook_point``,
``activation_fn_str``, boolean ``normalize_activations``); writes the 6.x layout. Only JSON and
safetensors are ever read: nothing is unpickled. An SAE is written to a hidden sibling directory
that is then swapped in (:func:`save_sae`), so a failure never leaves a half-written or mixed SAE.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from sae_circuits import architectures
from sae_circuits._export_io import finite_json
from sae_circuits._files import (  # the file plumbing, re-exported here as before
    _RETIRED,
    _STAGING,
    _atomic_files,
    _mode_of,
    _temporary_of,
    _umask,
    remove_stale_temporaries,
)
from sae_circuits._files import (
    atomic_write_text as atomic_write_text,
)
from sae_circuits._moved import renamed
from sae_circuits.sae_config import SAEConfig, device_str, dtype_to_str, str_to_dtype

if TYPE_CHECKING:  # sae.py imports this module; io never needs the SAE class at run time
    from sae_circuits.sae import SAE

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


_MAX_DIM = 2**40  # far beyond any real SAE; keeps shapes clear of int64 overflow
_MAX_CFG_BYTES = 16 * 2**20
# Weight dtypes a file may hold (they are cast to the SAE's dtype); complex, integer, bool and
# float8 tensors are refused rather than silently converted.
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class SAEFormatError(ValueError):
    """A ``cfg.json`` or weights file that does not describe a valid SAE."""


# --------------------------------------------------------------------------- config


def config_from_dict(raw: Mapping[str, Any], *, source: str = "cfg.json") -> SAEConfig:
    """Parse a SAELens config dict (6.x nested or pre-6.0 flat) into an :class:`SAEConfig`.

    Every malformed value raises :class:`SAEFormatError` whose message starts with ``source``.
    """
    if not isinstance(raw, Mapping):
        raise SAEFormatError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    try:
        return _config(dict(raw), source)
    except SAEFormatError:
        raise
    except (TypeError, ValueError, ArithmeticError, RecursionError) as err:
        raise SAEFormatError(f"{source}: {err}") from err


def _config(cfg: dict[str, Any], source: str) -> SAEConfig:
    """:func:`config_from_dict` proper; ``cfg`` is a private copy."""
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

    def text(key: str, where: Mapping[str, Any], default: str | None) -> Any:
        value = where.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise SAEFormatError(f"{source}: {key}={value!r} must be a string")
        return value

    architecture = text("architecture", cfg, "standard")
    try:
        _, kind = architectures.lookup(architecture)
    except ValueError as err:
        raise SAEFormatError(f"{source}: {err}") from None
    is_transcoder = kind != "sae"
    normalize: Any = cfg.get("normalize_activations")
    if isinstance(normalize, bool):  # pre-6.0: True meant the (folded) expected-average scaling
        normalize = "expected_average_only_in" if normalize else "none"
    else:
        normalize = text("normalize_activations", cfg, "none")
    hook_name = text("hook_name", metadata, None)
    if hook_name is None:
        need("hook_name", metadata)
    hook_name_out = text("hook_name_out", metadata, None)
    if is_transcoder and hook_name_out is None:  # else its site would silently be its input hook
        raise SAEFormatError(
            f"{source}: a {architecture} needs metadata.hook_name_out, the hook it writes "
            f"(e.g. 'blocks.0.hook_mlp_out' for one reading {hook_name!r})"
        )
    metadata.pop("hook_name", None)  # both live in SAEConfig fields; config_to_dict writes them back
    metadata.pop("hook_name_out", None)
    return SAEConfig(
        architecture=architecture,
        d_in=_int(need("d_in", cfg), "d_in", source),
        d_sae=_int(need("d_sae", cfg), "d_sae", source),
        hook_name=hook_name,
        hook_name_out=hook_name_out if is_transcoder else None,
        d_out=_int(cfg["d_out"], "d_out", source) if cfg.get("d_out") is not None else None,
        k=_int(cfg["k"], "k", source) if cfg.get("k") is not None else None,
        rescale_acts_by_decoder_norm=_bool(cfg, "rescale_acts_by_decoder_norm", False, source),
        apply_b_dec_to_input=_bool(cfg, "apply_b_dec_to_input", not is_transcoder, source),
        normalize_activations=normalize,
        reshape_activations=text(
            "reshape_activations", cfg, "hook_z" if hook_name.endswith("hook_z") else "none"
        ),
        dtype=text("dtype", cfg, "float32"),
        device=text("device", cfg, "cpu"),
        metadata=metadata,
    )


def _int(value: Any, key: str, source: str) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -_MAX_DIM <= value <= _MAX_DIM:
        raise SAEFormatError(f"{source}: {key}={value!r} must be an integer (at most {_MAX_DIM})")
    return value


def _bool(cfg: Mapping[str, Any], key: str, default: bool, source: str) -> bool:
    """A JSON boolean (absent or null: ``default``); strings such as ``"no"`` are refused, not truthy."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise SAEFormatError(f"{source}: {key}={value!r} must be true or false")
    return value


def _pre6_to_metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    """Move the flat pre-6.0 keys into 6.x form, in place on ``cfg``; returns the metadata."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}
    for old, new in renames.items():
        if old in cfg:
            cfg.setdefault(new, cfg.pop(old))
    activation = cfg.pop("activation_fn_str", cfg.pop("activation_fn", "relu"))
    kwargs = cfg.pop("activation_fn_kwargs", None) or {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"activation_fn_kwargs={kwargs!r} must be an object")
    # e.g. SAELens's old "tanh-relu" is not this library's maths: ValueError
    architectures.by_activation_fn_str(activation).read_pre6(cfg, kwargs)
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
    out.update(cfg.arch.config_fields(cfg))
    if cfg.is_transcoder:
        out["d_out"] = cfg.output_width
    return out


# --------------------------------------------------------------------------- weights


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape that ``sae_weights.safetensors`` must hold for ``cfg``."""
    return cfg.parameter_shapes()


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
        _check_values(tensors[name], name, source)


def _check_values(tensor: Tensor, name: str, source: str) -> None:
    """A supported floating dtype (complex, integer, bool, float8 are refused) and finite values."""
    if tensor.dtype not in _WEIGHT_DTYPES:
        supported = [dtype_to_str(d) for d in _WEIGHT_DTYPES]
        raise SAEFormatError(
            f"{source}: tensor {name!r} has dtype {dtype_to_str(tensor.dtype)}; expected one of {supported}"
        )
    if not torch.isfinite(tensor).all():
        raise SAEFormatError(f"{source}: tensor {name!r} contains NaN or Inf values")


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        detail = str(err).replace(str(path), "the file")  # name the path once
        raise SAEFormatError(f"{path}: not a readable safetensors file ({detail})") from err


def _drop_unit_scaling_factor(tensors: dict[str, Tensor], source: str) -> None:
    """Old SAELens files may carry an all-ones ``scaling_factor``; anything else is unsupported."""
    scale = tensors.pop("scaling_factor", None)
    if scale is None:
        return
    _check_values(scale, "scaling_factor", source)
    if not torch.allclose(scale, torch.ones_like(scale)):
        raise SAEFormatError(
            f"{source}: a non-trivial 'scaling_factor' (finetuning scaling) is not supported"
        )


class SAEState(NamedTuple):
    """A validated SAE read from somewhere, ready for :meth:`sae_circuits.SAE.from_state`."""

    cfg: SAEConfig
    """Its configuration (``dtype`` and ``device`` those of ``tensors``)."""
    tensors: dict[str, Tensor]
    """Every parameter, by name, with the shapes of ``cfg.parameter_shapes()``."""
    sparsity: Tensor | None
    """log10 firing frequency per feature ``[d_sae]``, when the source has it."""


def read_sae(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> SAEState:
    """Read and validate an SAE saved in the SAELens layout (``sae_lens`` 6.x or pre-6.0);
    :meth:`sae_circuits.SAE.load` builds the SAE from it. ``overrides``: config keys set over
    ``cfg.json``'s before it is parsed, as SAELens applies a release's ``config_overrides`` (a
    metadata key goes into a 6.x config's ``metadata``).

    The weights go to ``device`` (default ``"cpu"``, as in SAELens), never to the ``device`` recorded
    in ``cfg.json``, so an SAE saved on a GPU loads on a CPU-only machine. A file that does not
    describe a valid SAE raises :class:`SAEFormatError` naming it; a malformed ``device`` or
    ``dtype`` argument raises :class:`ValueError` naming the value.
    """
    target_device = device_str(device) if device is not None else "cpu"
    target_dtype = str_to_dtype(dtype) if dtype is not None else None
    folder = Path(path)
    cfg_path = folder / CFG_FILENAME
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE directory {str(folder)!r} does not exist")
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {CFG_FILENAME}")
    raw = _read_json(cfg_path)
    if isinstance(raw, dict):
        raw["device"] = target_device  # where the file was saved does not matter here
        for key, value in (overrides or {}).items():
            nested = isinstance(raw.get("metadata"), dict) and key in _PRE6_METADATA_KEYS
            (raw["metadata"] if nested else raw)[key] = value
    cfg = config_from_dict(raw, source=str(cfg_path))
    weights_path = folder / WEIGHTS_FILENAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {WEIGHTS_FILENAME}")
    tensors = _read_safetensors(weights_path)
    _drop_unit_scaling_factor(tensors, str(weights_path))
    validate_state_dict(cfg, tensors, source=str(weights_path))
    sparsity = _load_sparsity(folder / SPARSITY_FILENAME, cfg.d_sae)
    return _moved(cfg, tensors, sparsity, device=target_device, dtype=target_dtype, source=str(weights_path))


def _read_json(path: Path) -> Any:
    """The parsed ``cfg.json``; anything but a readable UTF-8 JSON document is an :class:`SAEFormatError`."""
    with path.open("rb") as f:
        data = f.read(_MAX_CFG_BYTES + 1)
    if len(data) > _MAX_CFG_BYTES:
        raise SAEFormatError(f"{path}: larger than {_MAX_CFG_BYTES} bytes; not an SAE config")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SAEFormatError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SAEFormatError(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from err
    except RecursionError as err:
        raise SAEFormatError(f"{path}: malformed JSON (nested too deeply)") from err
    except ValueError as err:  # e.g. an integer literal past Python's digit limit
        raise SAEFormatError(f"{path}: malformed JSON ({err})") from err


def _load_sparsity(path: Path, d_sae: int) -> Tensor | None:
    if not path.is_file():
        return None
    tensors = _read_safetensors(path)
    sparsity = tensors.get("sparsity")
    if sparsity is None or tuple(sparsity.shape) != (d_sae,):
        got = None if sparsity is None else list(sparsity.shape)
        raise SAEFormatError(f"{path}: expected key 'sparsity' of shape [{d_sae}], got {got}")
    _check_values(sparsity, "sparsity", str(path))
    return sparsity.float()


def _moved(
    cfg: SAEConfig,
    tensors: Mapping[str, Tensor],
    sparsity: Tensor | None,
    *,
    device: str,
    dtype: torch.dtype | None,
    source: str,
) -> SAEState:
    """The state with its tensors on ``device`` in ``dtype`` (default: ``cfg.dtype``)."""
    target_dtype = dtype if dtype is not None else str_to_dtype(cfg.dtype)
    cfg = replace(cfg, dtype=dtype_to_str(target_dtype), device=device)
    try:
        moved = {k: v.to(device=device, dtype=target_dtype) for k, v in tensors.items()}
    except (RuntimeError, AssertionError) as err:  # e.g. "cuda" on a machine without CUDA
        raise ValueError(f"device={device!r} is not usable on this machine ({err})") from err
    for name, tensor in moved.items():
        if not torch.isfinite(tensor).all():
            raise SAEFormatError(
                f"{source}: tensor {name!r} overflows {dtype_to_str(target_dtype)} (values beyond its range)"
            )
    return SAEState(cfg, moved, sparsity)


def save_sae(sae: SAE, path: str | os.PathLike[str], sparsity: Tensor | None = None) -> Path:
    """Write ``sae`` in the SAELens 6.x layout; ``sparsity`` is log10 firing frequency ``[d_sae]``.

    The save is atomic as a whole: the files are written to a hidden sibling directory that is then
    swapped in for ``path``, so a reader (or a crash) sees the old SAE or the new one, never new
    weights beside an old ``cfg.json``; a failed save leaves the old files as they were. Hidden
    temporaries left beside ``path`` by earlier killed saves are removed. A folder that also holds
    files other than an SAE's is updated file by file instead, with ``cfg.json`` removed first and
    written last, so that an interrupted save leaves no loadable mixture.
    """
    folder = Path(path)
    if sae.cfg.is_transcoder and sae.cfg.hook_name_out is None:  # the loader would refuse the file
        raise ValueError(
            f"this {sae.cfg.architecture} reading {sae.cfg.hook_name!r} has no hook_name_out (the hook "
            "it writes); set sae.cfg.hook_name_out before saving"
        )
    sparsity = sparsity if sparsity is not None else getattr(sae, "sparsity", None)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    validate_state_dict(sae.cfg, tensors, source=f"SAE being saved to {folder}")
    if sparsity is not None:
        sparsity = sparsity.detach().float().cpu().contiguous()
        if tuple(sparsity.shape) != (sae.cfg.d_sae,):
            raise ValueError(f"sparsity has shape {list(sparsity.shape)}, expected [{sae.cfg.d_sae}]")
        if not bool(torch.isfinite(sparsity).all()):  # the loader refuses it: the save would not load
            bad = int((~torch.isfinite(sparsity)).sum())
            raise ValueError(
                f"sparsity has {bad} NaN or infinite values (log10 of a zero frequency?); add a floor, "
                f"e.g. (frequency + 1e-10).log10()"
            )
    # strict JSON: a NaN or infinite metadata value is written as null
    cfg_text = json.dumps(
        finite_json(config_to_dict(sae.cfg)), indent=2, default=_json_default, allow_nan=False
    )
    files: dict[str, Callable[[str], Any]] = {WEIGHTS_FILENAME: lambda p: save_file(tensors, p)}
    if sparsity is not None:
        files[SPARSITY_FILENAME] = lambda p: save_file({"sparsity": sparsity}, p)
    files[CFG_FILENAME] = lambda p: Path(p).write_text(cfg_text)  # last: it marks a complete save

    real = folder.resolve()
    if real.exists() and not real.is_dir():
        raise FileExistsError(f"cannot save an SAE to {str(folder)!r}: it exists and is not a directory")
    real.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(real)
    if real.is_dir():
        for name in _SAE_FILES:
            remove_stale_temporaries(real / name)
    if real.is_dir() and (_holds_other_files(real) or _cwd_inside(real)):
        obsolete = [name for name in _SAE_FILES if name not in files]
        with _atomic_files(real, commit_last=CFG_FILENAME, obsolete=obsolete) as write:
            for name, writer in files.items():
                write(name, writer)
        return folder
    staging = Path(tempfile.mkdtemp(prefix=f".{real.name}.{os.getpid()}.", suffix=_STAGING, dir=real.parent))
    try:
        for name, writer in files.items():
            writer(str(staging / name))
            os.chmod(staging / name, _mode_of(real / name, 0o666 & ~_umask()))  # some writers make 0600 files
        os.chmod(staging, stat.S_IMODE(real.stat().st_mode) if real.is_dir() else 0o777 & ~_umask())
        if real.is_dir():
            _swap_in(staging, real)
        else:
            os.rename(staging, real)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


_SAE_FILES = (CFG_FILENAME, WEIGHTS_FILENAME, SPARSITY_FILENAME)


def _cwd_inside(folder: Path) -> bool:
    """Whether the working directory is ``folder`` or below it (swapping it would orphan the process)."""
    try:
        return Path.cwd().resolve().is_relative_to(folder)
    except OSError:
        return False


def _holds_other_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything but an SAE's files and this library's temporaries."""
    return any(
        entry not in _SAE_FILES and not any(_temporary_of(name, entry) for name in _SAE_FILES)
        for entry in os.listdir(folder)
    )


def _swap_in(staging: Path, folder: Path) -> None:
    """Put the directory ``staging`` where ``folder`` is and delete the old one.

    One ``renameat2(RENAME_EXCHANGE)`` where the platform has it (Linux); elsewhere two renames,
    undone if the second fails (a crash between them leaves both complete, hidden, beside ``folder``;
    the next save puts the old one back)."""
    if _exchange(staging, folder):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the old files
        return
    retired = folder.parent / f".{folder.name}.{os.getpid()}.{os.urandom(4).hex()}{_RETIRED}"
    os.rename(folder, retired)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(retired, folder)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's ``renameat2``; False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # the kernel or the file system cannot exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------- sae_lens objects


def sae_lens_state(obj: Any) -> SAEState:
    """The validated state of a live ``sae_lens`` SAE/transcoder object (same weights, same hook
    names); :meth:`sae_circuits.SAE.from_sae_lens` builds the SAE from it."""
    to_dict = getattr(getattr(obj, "cfg", None), "to_dict", None)
    if to_dict is None or not hasattr(obj, "state_dict"):
        raise TypeError(f"expected a sae_lens SAE object, got {type(obj).__name__}")
    raw = to_dict()
    raw["metadata"] = dict(raw.get("metadata") or {})
    tensors = {k: v.detach() for k, v in obj.state_dict().items()}
    if "log_threshold" in tensors:  # older JumpReLU checkpoints
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    source = f"sae_lens {type(obj).__name__}"
    cfg = config_from_dict(raw, source=source)
    validate_state_dict(cfg, tensors, source=source)
    return _moved(
        cfg, tensors, None, device=device_str(obj.W_enc.device), dtype=obj.W_enc.dtype, source=source
    )


# Deprecated aliases (one release): these return an SAE, so they now live on the class; resolved
# lazily so that this module never imports sae_circuits.sae (which imports it).
__getattr__ = renamed(
    __name__,
    {"load_sae": "sae_circuits.sae.SAE.load", "from_sae_lens": "sae_circuits.sae.SAE.from_sae_lens"},
)
