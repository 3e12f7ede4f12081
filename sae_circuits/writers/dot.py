"""``.dot``: Graphviz, written directly (no pydot); a view (it does not load back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_circuits._files import atomic_write_text
from sae_circuits.writers import formatted

NAME = "dot"
SUFFIXES = (".dot",)
WRITES = ("graph", "automaton")
ORDER = 30
MEDIA_TYPE = "text/plain; charset=utf-8"


def write(obj: Any, path: Path) -> Path:
    """Write ``obj`` as Graphviz DOT (UTF-8)."""
    return atomic_write_text(path, formatted(obj, "to_dot"))
