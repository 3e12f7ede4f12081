"""``.html``: one self-contained page (inline SVG, CSS and JS; no network): see
:mod:`sae_circuits.graph.viewer` and :mod:`sae_circuits.fsa.viewer`. A view (it does not load back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_circuits._files import atomic_write_text
from sae_circuits.writers import formatted

NAME = "html"
SUFFIXES = (".html",)
WRITES = ("graph", "automaton")
ORDER = 40
MEDIA_TYPE = "text/html; charset=utf-8"


def write(obj: Any, path: Path) -> Path:
    """Write ``obj``'s page."""
    return atomic_write_text(
        path, formatted(obj, "to_html", ("sae_circuits.graph.viewer", "sae_circuits.fsa.viewer"))
    )
