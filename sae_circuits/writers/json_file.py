"""``.json``: lossless, the only format that loads back. Graphs in the attribution-graph front end's
schema (plus our exact columns; the graph's ``slug`` is the file stem), automata in
``sae_circuits.feature_automaton`` (see :mod:`sae_circuits.graph.export` and
:mod:`sae_circuits.fsa.export`). Graph JSON written by circuit-tracer loads too.

``graph-metadata.json`` is the front end's list of the graphs in a folder (one entry per graph: its
metadata without our own key, ``slug`` = the file stem): :func:`update_graph_metadata` adds or
replaces one entry, :func:`graph_metadata` builds the list from the graph files themselves (what
``sae-circuits serve`` answers when the folder has none). Stdlib only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sae_circuits._files import atomic_write_text
from sae_circuits.writers import formatted, kind_of

NAME = "json"
SUFFIXES = (".json",)
WRITES = ("graph", "automaton")
ORDER = 10
MEDIA_TYPE = "application/json"


GRAPH_METADATA = "graph-metadata.json"
_ENTRY_KEYS = (
    "slug",
    "scan",
    "transcoder_list",
    "prompt_tokens",
    "prompt",
    "node_threshold",
    "schema_version",
)


def write(obj: Any, path: Path) -> Path:
    """Write ``obj`` as strict ASCII JSON (a graph's ``slug``: the file stem)."""
    if kind_of(obj) == "graph":
        from sae_circuits.graph.export import to_json

        return atomic_write_text(path, to_json(obj, slug=Path(path).stem))
    return atomic_write_text(path, formatted(obj, "to_json"))


def metadata_entry(raw: Any, slug: str) -> dict[str, Any] | None:
    """The ``graph-metadata.json`` entry of a parsed graph JSON (None if ``raw`` is no graph)."""
    if not (isinstance(raw, dict) and isinstance(raw.get("metadata"), dict) and "nodes" in raw):
        return None
    entry = {k: raw["metadata"][k] for k in _ENTRY_KEYS if k in raw["metadata"]}
    entry["slug"] = slug
    return entry


def update_graph_metadata(graph_file: str | os.PathLike[str]) -> Path:
    """Add (or replace) the entry of the graph JSON ``graph_file`` in the ``graph-metadata.json``
    beside it, atomically; entries of other graphs are kept. Returns the metadata file."""
    graph_file = Path(graph_file)
    entry = metadata_entry(json.loads(graph_file.read_text(encoding="utf-8")), graph_file.stem)
    if entry is None:
        raise ValueError(f"{graph_file}: not a graph JSON")
    listing = graph_file.parent / GRAPH_METADATA
    graphs = [
        g for g in listed_graphs(graph_file) if not (isinstance(g, dict) and g.get("slug") == entry["slug"])
    ]
    text = json.dumps({"graphs": [*graphs, entry]}, indent=2, ensure_ascii=True, allow_nan=False)
    return atomic_write_text(listing, text + "\n")


def listed_graphs(graph_file: str | os.PathLike[str]) -> list[Any]:
    """The entries of the ``graph-metadata.json`` beside ``graph_file`` (none when there is no such
    file); a ValueError when ``graph_file`` would overwrite that listing or the listing is
    malformed, so that a caller can check before any work is done."""
    graph_file = Path(graph_file)
    listing = graph_file.parent / GRAPH_METADATA
    if graph_file.name.lower() == GRAPH_METADATA:
        raise ValueError(
            f"{graph_file}: that name is the folder's list of graphs; choose another --out or --slug"
        )
    if not listing.is_file():
        return []
    try:
        old = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{listing}: not valid JSON ({err}); remove it or fix it") from err
    if not (isinstance(old, dict) and isinstance(old.get("graphs"), list)):
        raise ValueError(f'{listing}: expected {{"graphs": [...]}}')
    return list(old["graphs"])


def graph_metadata(folder: str | os.PathLike[str], files: list[str]) -> dict[str, Any]:
    """``{"graphs": [...]}`` for the graph JSONs ``files`` ("/"-separated paths under ``folder``;
    slug: the path without ``.json``); files that do not parse or hold no graph are skipped."""
    graphs = []
    for rel in files:
        try:
            raw = json.loads((Path(folder) / rel).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        entry = metadata_entry(raw, rel[: -len(".json")] if rel.lower().endswith(".json") else rel)
        if entry is not None:
            graphs.append(entry)
    return {"graphs": graphs}


def read(path: Path, kind: str) -> Any:
    """The graph or automaton a ``.json`` file holds (clear errors for anything else)."""
    from sae_circuits.writers import _json_read

    return _json_read.read_graph(path) if kind == "graph" else _json_read.read_automaton(path)
