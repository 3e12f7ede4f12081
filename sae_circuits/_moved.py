"""Old import paths of moved modules, kept working for one release.

A module that moved leaves a shim at its old path: importing the shim warns once
(``DeprecationWarning``) and every attribute read on it is forwarded to the new module, so
``from sae_circuits.zoo.train_lm import train_on_texts`` still gives the one function there is.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def forward_to(old: str, new: str) -> Callable[[str], Any]:
    """Warn that module ``old`` moved to ``new``; return the module ``__getattr__`` (PEP 562) that
    the shim at ``old`` installs to forward every name to ``new``."""
    warnings.warn(
        f"{old} moved to {new}; the old path is deprecated and will be removed in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    target = importlib.import_module(new)

    def __getattr__(name: str) -> Any:
        return getattr(target, name)

    return __getattr__


def renamed(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` (PEP 562) for names of ``module`` that were renamed or moved:
    ``names`` maps each old name to its new dotted path (``"package.module.attribute"``, looked
    up only when the old name is used, so no import cycle), and each use warns."""

    def __getattr__(name: str) -> Any:
        new = names.get(name)
        if new is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} is deprecated; use {new} (the old name will be removed in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return _resolve(new)

    return __getattr__


def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        try:
            value = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            value = getattr(value, attribute)
        return value
    raise ImportError(f"cannot resolve {dotted!r}")
