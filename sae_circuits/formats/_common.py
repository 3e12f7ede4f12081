"""Shared plumbing of the format readers: one config + tensors -> a validated :class:`SAEState`.

Every reader builds an :class:`~sae_circuits.sae_config.SAEConfig` and a state dict in this
library's names and orientation (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ...), then
calls :func:`state`, which checks the names, shapes, dtypes and finiteness with the same rules as
the SAELens reader (:func:`sae_circuits.io.validate_state_dict`) and moves the tensors. Errors
are :class:`~sae_circuits.io.SAEFormatError` naming the file and, where it helps, the layout that
was expected. Nothing here writes a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae_circuits import io
from sae_circuits.io import SAEFormatError, SAEState
from sae_circuits.sae_config import SAEConfig, device_str, dtype_to_str, str_to_dtype

PathLike = str | os.PathLike[str]


def read_safetensors(path: Path, layout: str) -> dict[str, Tensor]:
    """Every tensor of a safetensors file; a missing or unreadable file names ``layout``."""
    if not path.is_file():
        raise SAEFormatError(f"{path}: file not found; expected {layout}")
    try:
        return io._read_safetensors(path)
    except SAEFormatError as err:
        raise SAEFormatError(f"{err}; expected {layout}") from err


def need_tensors(tensors: Mapping[str, Tensor], names: list[str], source: Path, layout: str) -> None:
    """Raise naming the missing tensors and the expected layout."""
    missing = [name for name in names if name not in tensors]
    if missing:
        raise SAEFormatError(
            f"{source}: missing tensors {missing} (has {sorted(tensors)}); expected {layout}"
        )


def dim(tensor: Tensor, rank: int, name: str, source: Path, layout: str) -> tuple[int, ...]:
    """``tensor``'s shape, checked to have ``rank`` dimensions."""
    if tensor.dim() != rank:
        raise SAEFormatError(
            f"{source}: tensor {name!r} has shape {list(tensor.shape)}; expected {rank} dimensions ({layout})"
        )
    return tuple(tensor.shape)


def file_dtype(tensors: Mapping[str, Tensor], name: str, source: Path) -> str:
    """The dtype string of ``tensors[name]`` (what the SAE keeps unless told otherwise); an
    unsupported dtype is refused here, values are checked by :func:`state`."""
    dtype = tensors[name].dtype
    if dtype not in io._WEIGHT_DTYPES:
        supported = [dtype_to_str(d) for d in io._WEIGHT_DTYPES]
        raise SAEFormatError(
            f"{source}: tensor {name!r} has dtype {dtype_to_str(dtype)}; expected one of {supported}"
        )
    return dtype_to_str(dtype)


def state(
    source: Path,
    tensors: dict[str, Tensor],
    *,
    to_device: str | torch.device | None,
    to_dtype: str | torch.dtype | None,
    **config: Any,
) -> SAEState:
    """A validated state on ``to_device`` (default CPU) in ``to_dtype`` (default: ``config``'s
    ``dtype``, the file's); ``config`` builds the :class:`SAEConfig` (a bad value -> SAEFormatError)."""
    target_device = device_str(to_device) if to_device is not None else "cpu"
    target_dtype = str_to_dtype(to_dtype) if to_dtype is not None else None
    try:
        cfg = SAEConfig(device=target_device, **config)
    except ValueError as err:
        raise SAEFormatError(f"{source}: {err}") from err
    io.validate_state_dict(cfg, tensors, source=str(source))  # names, shapes, dtypes, finite values
    dtype = target_dtype if target_dtype is not None else str_to_dtype(cfg.dtype)
    cfg = replace(cfg, dtype=dtype_to_str(dtype))
    moved = {}
    for name, tensor in tensors.items():
        try:
            moved[name] = tensor.to(device=target_device, dtype=dtype)
        except (RuntimeError, AssertionError) as err:  # e.g. "cuda" on a machine without CUDA
            raise ValueError(f"device={target_device!r} is not usable on this machine ({err})") from err
        # a narrowing cast can overflow (float32 -> float16); values were checked before it
        if tensor.dtype != dtype and not torch.isfinite(moved[name]).all():
            raise SAEFormatError(
                f"{source}: tensor {name!r} overflows {dtype_to_str(dtype)} (values beyond its range)"
            )
    return SAEState(cfg, moved, None)
