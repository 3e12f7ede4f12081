"""Dictionary architectures (ReLU, TopK, JumpReLU, gated, ...), one module each, found by a registry.

Every module of this package is imported here, and each registers its :class:`Architecture`
subclass with :func:`register`; :mod:`sae_circuits.sae`, :mod:`sae_circuits.io`, attribution and
training ask the registry (:func:`get`, :func:`lookup`) instead of branching on names. Adding an
architecture is therefore one new module (see :mod:`sae_circuits.architectures.base` for the hooks
and :mod:`sae_circuits.architectures.relu_decnorm` for a short example).

>>> from sae_circuits import architectures
>>> "jumprelu" in architectures.names()
True
"""

from __future__ import annotations

import importlib
import pkgutil

from sae_circuits.architectures.base import (
    Architecture,
    Kind,
    SparseCode,
    by_activation_fn_str,
    get,
    lookup,
    names,
    register,
    saved_names,
)

__all__ = [
    "Architecture",
    "Kind",
    "SparseCode",
    "by_activation_fn_str",
    "get",
    "lookup",
    "names",
    "register",
    "saved_names",
]

# Discovery (as einops finds its backends): every public module here defines one architecture.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
