"""The pieces every self-contained page of the library shares (the attribution-graph view, the
automaton view): the page's opening with its Content-Security-Policy, the JSON data island, and
the small SVG helper of their inline scripts. Nothing is fetched from the network.

A page is a template holding ``__DATA__`` where its data goes (:func:`fill`).
"""

from __future__ import annotations

from typing import Any

from sae_circuits._export_io import page_start, script_json

__all__ = ["SVG_ADD", "fill", "page_start", "script_json"]

SVG_ADD = """function add(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const k of Object.keys(attrs)) e.setAttribute(k, String(attrs[k]));
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}
"""
"""JavaScript: ``add(tag, attrs, parent, text)`` makes an SVG (or, under an HTML parent, any)
element in the namespace ``NS`` (which the page defines), sets its attributes and text, appends it
to ``parent`` and returns it."""


def fill(template: str, data: Any) -> str:
    """``template`` with its ``__DATA__`` replaced by ``data`` as JSON safe inside ``<script>``."""
    return template.replace("__DATA__", script_json(data))
