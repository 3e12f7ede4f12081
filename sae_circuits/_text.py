"""Text and numbers made safe for the file formats (JSON, GraphML, DOT), shared by the exporters."""

from __future__ import annotations

import math
import re
from typing import Any

# Control characters (which XML 1.0 forbids) and unencodable lone surrogates: byte-level BPE tokens
# can decode to them. GraphML and DOT show them as visible escapes instead.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\ud800-\udfff\ufffe\uffff]")


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
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if m.group() < "\x20" else "\ufffd", text)


def dot_string(text: str) -> str:
    escaped = printable(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
