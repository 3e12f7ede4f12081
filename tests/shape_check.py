"""Run-time checks of the jaxtyping shape annotations, for the test suite (see ``conftest.py``).

``check_shapes`` is the type checker that jaxtyping's import hook puts under ``@jaxtyped`` on every
function and dataclass of ``sae_circuits``. Unlike beartype or typeguard it checks only the
jaxtyping annotations (``Float[Tensor, "batch pos d_model"]``): array kinds, dtypes and shapes,
with named dimensions consistent across a call's arguments and return value. Plain annotations
are left to the library's own validation, whose error messages the tests check.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Union

from jaxtyping import AbstractArray, TypeCheckError


def _array_types(annotation: Any) -> tuple[type, ...] | None:
    """The jaxtyping array types an annotation accepts (``X | None`` included), or None when it
    is not a jaxtyping annotation (then it is not checked)."""
    if isinstance(annotation, type) and issubclass(annotation, AbstractArray):
        return (annotation,)
    if typing.get_origin(annotation) in (Union, getattr(__import__("types"), "UnionType", Union)):
        members = typing.get_args(annotation)
        arrays = tuple(m for m in members if isinstance(m, type) and issubclass(m, AbstractArray))
        if arrays and all(m in arrays or m is type(None) for m in members):
            return arrays + ((type(None),) if type(None) in members else ())
    return None


_enabled = True


@contextmanager
def unchecked() -> Iterator[None]:
    """Switch the checks off inside the block: for tests of the library's own messages about bad
    input, which the shape check would otherwise pre-empt."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def check_shapes(fn: Any) -> Any:
    """Wrap ``fn`` so that its jaxtyping-annotated arguments and return value are checked."""
    if not callable(fn) or isinstance(fn, type):
        return fn
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn
    hints: dict[str, Any] | None = None

    def resolved() -> dict[str, Any]:
        nonlocal hints
        if hints is None:  # resolved on first call: the module is fully defined by then
            try:
                raw = typing.get_type_hints(fn)
            except Exception:  # names only imported under TYPE_CHECKING: leave them unchecked
                raw = {}
            hints = {name: types for name, hint in raw.items() if (types := _array_types(hint))}
        return hints

    def check(name: str, value: Any, types: tuple[type, ...]) -> None:
        if not isinstance(value, types):
            shape = tuple(getattr(value, "shape", ())) or type(value).__name__
            raise TypeCheckError(
                f"{fn.__qualname__}: {name} is {shape}, expected {' or '.join(map(str, types))}"
            )

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        wanted = resolved() if _enabled else {}
        if wanted:
            bound = signature.bind(*args, **kwargs)
            for name, value in bound.arguments.items():
                if name in wanted:
                    check(f"argument {name!r}", value, wanted[name])
        out = fn(*args, **kwargs)
        if "return" in wanted:
            check("the return value", out, wanted["return"])
        return out

    return checked
