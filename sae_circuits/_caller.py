"""Where a warning should point: the user's line that called into the library.

A fixed ``stacklevel`` is wrong as soon as a decorator adds a frame (``torch.no_grad()``, a
run-time type checker wrapping the function in tests), so the level is counted: the first frame
outside this package, torch and the type checkers' wrappers.
"""

from __future__ import annotations

import sys
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)
_WRAPPERS = ("/torch/", "/jaxtyping/", "/typeguard/", "/beartype/")


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the calling function that names the user's
    line (1 names that function itself)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and _wrapper(frame.f_code.co_filename):
        frame = frame.f_back  # a type checker wrapping this function itself: not in warn's stack
    level = 1  # `frame` is the function that calls warnings.warn
    while frame.f_back is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(_PACKAGE) or _wrapper(name)):
            break
        level, frame = level + 1, frame.f_back
    return level


def _wrapper(filename: str) -> bool:
    return any(w in filename for w in _WRAPPERS)
