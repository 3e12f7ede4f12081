"""``.graphml`` (via networkx): nodes and edges with every column as attributes, pure ASCII; a view
(it does not load back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_circuits._files import atomic_write_text
from sae_circuits.writers import formatted

NAME = "graphml"
SUFFIXES = (".graphml",)
WRITES = ("graph", "automaton")
ORDER = 20
MEDIA_TYPE = "application/xml"


def write(obj: Any, path: Path) -> Path:
    """Write ``obj`` as GraphML text."""
    return atomic_write_text(path, formatted(obj, "to_graphml"))
