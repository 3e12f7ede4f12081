"""``.json``: lossless, the only format that loads back. Graphs in the attribution-graph front end's
schema (plus our exact columns), automata in ``sae_circuits.feature_automaton`` (see
:mod:`sae_circuits.graph.export` and :mod:`sae_circuits.fsa.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_circuits._files import atomic_write_text
from sae_circuits.writers import formatted

NAME = "json"
SUFFIXES = (".json",)
WRITES = ("graph", "automaton")
ORDER = 10
MEDIA_TYPE = "application/json"


def write(obj: Any, path: Path) -> Path:
    """Write ``obj`` as strict ASCII JSON."""
    return atomic_write_text(path, formatted(obj, "to_json"))


def read(path: Path, kind: str) -> Any:
    """The graph or automaton a ``.json`` file holds (clear errors for anything else)."""
    from sae_circuits.writers import _json_read

    return _json_read.read_graph(path) if kind == "graph" else _json_read.read_automaton(path)
