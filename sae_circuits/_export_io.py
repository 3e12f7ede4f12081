"""What the exporters share: text and numbers made safe for JSON, GraphML, DOT and HTML pages,
JSON files read with clear errors, and writing in the format a file's suffix names."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

# Control characters (which XML 1.0 forbids) and unencodable lone surrogates: byte-level BPE tokens
# can decode to them. GraphML and DOT show them as visible escapes instead.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\ud800-\udfff\ufffe\uffff]")


# Bidirectional-text controls (embeddings, overrides, isolates, marks): raw in a page they reorder
# what is displayed around them (a label can be made to read as something else), so pages show them
# as visible escapes, e.g. ``\u202e``.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def exact_float(value: float) -> float | str:
    """Finite floats as they are; NaN/inf as ``"nan"``/``"inf"``/``"-inf"``, which ``float()`` reads back."""
    return value if math.isfinite(value) else str(value)


def printable(text: str) -> str:
    """``text`` with control characters as visible ``\\xNN`` escapes; lone surrogates, U+FFFE and
    U+FFFF as U+FFFD."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if m.group() < "\x20" else "\ufffd", text)


def dot_string(text: str) -> str:
    """``text`` as a quoted Graphviz DOT string (printable, with backslashes, quotes and newlines escaped)."""
    escaped = printable(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def page_start(title: str) -> str:
    """The opening of every page we write, up to an open ``<style>``: inline style and script only,
    nothing fetched from anywhere (the CSP forbids every other source)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy"\n'
        """ content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">\n"""
        f"<title>{title}</title>\n<style>\n"
    )


def script_json(data: Any) -> str:
    """``data`` as strict JSON to embed in a page's ``<script type="application/json">``.

    Inside ``<script>``, ``"</script>"`` or ``"<!--"`` in a token would end or derail the element,
    so ``<``, ``>`` and ``&`` are written as JSON escapes: the page never holds them raw. Strings'
    bidirectional controls become visible text (:func:`visible_bidi`) so they cannot reorder a label.
    """
    text = json.dumps(_visible_bidi(finite_json(data)), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def visible_bidi(text: str) -> str:
    """``text`` with every bidirectional control written as a visible escape (``"\\u202e"``)."""
    return _BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _visible_bidi(value: Any) -> Any:
    """``value`` with :func:`visible_bidi` applied to every string in it (dict keys included)."""
    if isinstance(value, str):
        return visible_bidi(value)
    if isinstance(value, dict):
        return {_visible_bidi(k): _visible_bidi(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_visible_bidi(v) for v in value]
    return value


def read_json(path: str | os.PathLike[str], what: str) -> tuple[Path, Any]:
    """``(path, parsed)`` of a ``.json`` file that ``what`` (e.g. "graph") was saved as; clear errors
    for another suffix, a missing file and invalid JSON."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise ValueError(f"cannot load {path}: suffix {path.suffix!r} is a view; only '.json' loads back")
    if path.is_dir():
        raise IsADirectoryError(f"{what} file {str(path)!r} is a folder, not a file saved as .json")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def json_get(
    path: Path, what: str, obj: Any, *keys: str, at: str = "", by: str | None = "sae_circuits"
) -> Any:
    """``obj[key0][key1]...``, or a ValueError naming the file, what it should be (``what``,
    written by ``by``) and the first missing key."""
    for n, key in enumerate(keys):
        if not isinstance(obj, dict) or key not in obj:
            where = ".".join([at, *keys[: n + 1]] if at else keys[: n + 1])
            author = f" written by {by}" if by else ""
            raise ValueError(f"{path}: not {what}{author} (missing key {where!r})")
        obj = obj[key]
    return obj
