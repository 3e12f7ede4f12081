"""Dictionaries published by others, read offline and without pickle: one module per format,
found by a registry.

Each public module here with a ``NAME`` is a format: ``detect(path) -> bool`` (is this file or
folder mine?) and ``read(path, *, device=None, dtype=None, ...) -> list[SAEState]`` (every
dictionary in it, validated, in this library's parameter names and orientation). Adding a format
is one new module; :func:`load` finds it. Registered: ``circuit_tracer`` (transcoder sets),
``gemma_scope`` (``params.npz``), ``dictionary_learning`` (``ae.safetensors``), ``saelens``
(``cfg.json`` folders). SAELens pretrained releases are not files but ``(release, sae_id)`` names
resolved in the local Hugging Face cache: :func:`load_pretrained` (:mod:`.pretrained`).

Every reader refuses what it cannot read with an :class:`~sae_circuits.io.SAEFormatError` (a
``ValueError``) naming the file and the layout it expected; nothing is written, and no pickle is
ever loaded (numpy archives with ``allow_pickle=False``, weights from safetensors only).

>>> sc.formats.names()
['circuit_tracer', 'dictionary_learning', 'gemma_scope', 'saelens']
>>> sae.save("sae_dir")
>>> [loaded] = sc.formats.load("sae_dir")  # the format is detected
>>> loaded.cfg.hook_name == sae.cfg.hook_name, bool(torch.equal(loaded.W_dec, sae.W_dec))
(True, True)
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from sae_circuits.formats.pretrained import load_pretrained
from sae_circuits.io import SAEFormatError, SAEState
from sae_circuits.sae import SAE

__all__ = ["detect", "get", "load", "load_one", "load_pretrained", "names", "read"]

_REGISTRY: dict[str, ModuleType] = {}


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            name = getattr(module, "NAME", None)
            if isinstance(name, str):
                _REGISTRY[name] = module


def names() -> list[str]:
    """The registered format names."""
    return sorted(_REGISTRY)


def get(name: str) -> ModuleType:
    """The module of format ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown format {name!r}; known: {names()}")
    return _REGISTRY[name]


def detect(path: str | os.PathLike[str]) -> str:
    """The name of the format of ``path``; an :class:`SAEFormatError` naming the formats if none."""
    target = Path(path)
    if not target.exists():
        raise SAEFormatError(f"{target}: no such file or folder")
    # the SAELens folder first: its cfg.json is this library's own format
    for name in sorted(_REGISTRY, key=lambda n: (n != "saelens", n)):
        if _REGISTRY[name].detect(target):
            return name
    raise SAEFormatError(f"{target}: not a file or folder of a known format ({names()})")


def read(path: str | os.PathLike[str], format: str | None = None, **options: Any) -> list[SAEState]:
    """Every dictionary in ``path`` as validated states (``format`` default: :func:`detect`)."""
    module = get(format) if format is not None else get(detect(path))
    states: list[SAEState] = module.read(Path(path), **options)
    return states


def load(
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **options: Any,
) -> list[SAE]:
    """Every dictionary in ``path`` as :class:`~sae_circuits.SAE` objects (a transcoder set: one
    per layer, in layer order). ``options`` go to the format's ``read`` (e.g. ``hook_name=`` for
    Gemma Scope and dictionary_learning files, which name no hook)."""
    return [SAE.from_state(s) for s in read(path, format, device=device, dtype=dtype, **options)]


def load_one(
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **options: Any,
) -> SAE:
    """The single dictionary in ``path`` (an error if it holds several, e.g. a transcoder set)."""
    saes = load(path, format, device=device, dtype=dtype, **options)
    if len(saes) != 1:
        raise ValueError(f"{path}: holds {len(saes)} dictionaries; use sae_circuits.formats.load")
    return saes[0]


_discover()
