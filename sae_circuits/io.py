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
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from sae_circuits.sae import ARCHITECTURES, SAE, SAEConfig, device_str, dtype_to_str, str_to_dtype

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
    if architecture not in ARCHITECTURES:
        raise SAEFormatError(
            f"{source}: architecture={architecture!r} is not supported; expected one of {ARCHITECTURES}"
        )
    is_transcoder = "transcoder" in architecture
    normalize: Any = cfg.get("normalize_activations")
    if isinstance(normalize, bool):  # pre-6.0: True meant the (folded) expected-average scaling
        normalize = "expected_average_only_in" if normalize else "none"
    else:
        normalize = text("normalize_activations", cfg, "none")
    hook_name = text("hook_name", metadata, None)
    if hook_name is None:
        need("hook_name", metadata)
    hook_name_out = text("hook_name_out", metadata, None)
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
    if activation not in ("relu", "topk"):  # e.g. SAELens's old "tanh-relu": not this library's maths
        raise ValueError(f"activation_fn_str={activation!r} is not supported; expected 'relu' or 'topk'")
    if activation == "topk":
        if cfg.get("architecture", "standard") not in ("standard", "topk"):
            raise ValueError(f"activation_fn_str='topk' contradicts architecture={cfg['architecture']!r}")
        cfg["architecture"] = "topk"
        if cfg.get("k") is None:
            cfg["k"] = kwargs.get("k")
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


def load_sae(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> SAE:
    """Load an SAE saved in the SAELens layout (``sae_lens`` 6.x or pre-6.0).

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
    cfg = config_from_dict(raw, source=str(cfg_path))
    weights_path = folder / WEIGHTS_FILENAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {WEIGHTS_FILENAME}")
    tensors = _read_safetensors(weights_path)
    _drop_unit_scaling_factor(tensors, str(weights_path))
    validate_state_dict(cfg, tensors, source=str(weights_path))
    sparsity = _load_sparsity(folder / SPARSITY_FILENAME, cfg.d_sae)
    return _build(cfg, tensors, sparsity, device=target_device, dtype=target_dtype, source=str(weights_path))


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


def _build(
    cfg: SAEConfig,
    tensors: Mapping[str, Tensor],
    sparsity: Tensor | None,
    *,
    device: str,
    dtype: torch.dtype | None,
    source: str,
) -> SAE:
    from dataclasses import replace

    target_dtype = dtype if dtype is not None else str_to_dtype(cfg.dtype)
    cfg = replace(cfg, dtype=dtype_to_str(target_dtype), device=device)
    with torch.device("meta"):
        sae = SAE(replace(cfg, device="meta"))
    try:
        moved = {k: v.to(device=device, dtype=target_dtype) for k, v in tensors.items()}
    except (RuntimeError, AssertionError) as err:  # e.g. "cuda" on a machine without CUDA
        raise ValueError(f"device={device!r} is not usable on this machine ({err})") from err
    for name, tensor in moved.items():
        if not torch.isfinite(tensor).all():
            raise SAEFormatError(
                f"{source}: tensor {name!r} overflows {dtype_to_str(target_dtype)} (values beyond its range)"
            )
    sae.load_state_dict(moved, assign=True)
    sae.cfg = cfg
    sae.sparsity = sparsity
    return sae


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
    sparsity = sparsity if sparsity is not None else getattr(sae, "sparsity", None)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    validate_state_dict(sae.cfg, tensors, source=f"SAE being saved to {folder}")
    if sparsity is not None:
        sparsity = sparsity.detach().float().cpu().contiguous()
        if tuple(sparsity.shape) != (sae.cfg.d_sae,):
            raise ValueError(f"sparsity has shape {list(sparsity.shape)}, expected [{sae.cfg.d_sae}]")
    cfg_text = json.dumps(config_to_dict(sae.cfg), indent=2, default=_json_default)
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
            os.chmod(staging / name, 0o666 & ~_umask())  # some writers make 0600 files
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
_STAGING, _RETIRED = ".saetmp", ".saeold"
_STALE_AFTER_S = 60.0  # a temporary of a dead process younger than this is left alone (shared folders)


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


def _temporary_of(name: str, entry: str) -> tuple[int | None, str] | None:
    """``(pid or None, kind)`` when ``entry`` is a hidden temporary this library made for ``name``."""
    match = re.fullmatch(
        rf"\.{re.escape(name)}\.(?:(\d+)\.)?([a-z0-9_]+)(\.tmp|{_STAGING}|{_RETIRED})", entry
    )
    if match is None:
        return None
    return (int(match[1]) if match[1] else None), match[3]


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no safe liveness probe: os.kill would terminate the process on Windows
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden temporaries that killed saves of ``target`` left beside it; returns them.

    A temporary is stale when the process that made it is gone (or it predates process tagging)
    and it is older than a minute. If ``target`` itself is missing because a save was killed between
    its two renames, the old copy is put back instead of deleted.
    """
    target = Path(target)
    parent = target.parent
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    removed = []
    now = time.time()
    for entry in sorted(entries):
        found = _temporary_of(target.name, entry)
        if found is None:
            continue
        pid, kind = found
        path = parent / entry
        try:
            old_enough = now - path.lstat().st_mtime > _STALE_AFTER_S
        except OSError:
            continue
        if not old_enough or (pid is not None and _alive(pid)):
            continue
        if kind == _RETIRED and not target.exists() and not path.is_symlink():
            os.rename(path, target)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable")


@contextmanager
def _atomic_files(
    folder: Path, commit_last: str | None = None, obsolete: Sequence[str] = ()
) -> Iterator[Callable[[str, Callable[[str], Any]], None]]:
    """Stage files as temporaries in ``folder``; rename them all into place only if every write worked.

    ``commit_last``: that file is deleted before the others are renamed and renamed in last, so an
    interrupted commit leaves it missing rather than paired with the wrong files; ``obsolete``
    files are deleted just before it.
    """
    staged: list[tuple[str, Path]] = []

    def write(name: str, writer: Callable[[str], Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=folder)
        os.close(fd)
        staged.append((tmp, folder / name))
        writer(tmp)

    try:
        yield write
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; give them the usual permissions
        for tmp, _ in staged:
            os.chmod(tmp, mode)
        staged.sort(key=lambda item: item[1].name == commit_last)
        if commit_last is not None:
            (folder / commit_last).unlink(missing_ok=True)
        for tmp, final in staged:
            if final.name == commit_last:
                for name in obsolete:
                    (folder / name).unlink(missing_ok=True)
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
    """Write ``text`` to ``path`` through a temporary file and a rename (stale temporaries of
    earlier killed writes of ``path`` are removed first)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
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
    source = f"sae_lens {type(obj).__name__}"
    cfg = config_from_dict(raw, source=source)
    validate_state_dict(cfg, tensors, source=source)
    return _build(
        cfg, tensors, None, device=device_str(obj.W_enc.device), dtype=obj.W_enc.dtype, source=source
    )
