"""The per-item work of the automaton extraction, handed to a mapper: serial by default, shared
out over ranks under :func:`sae_circuits.distributed.sharded_automaton`.

The extraction calls :func:`map_items` where it runs the model once per item (a text's activations,
a text's frozen inputs, a chunk of single-position rows, a text's attribution rows). Whatever the
mapper, the answer is ``[fn(item) for item in items]`` in item order, so the code around it (sums,
concatenations, clustering) runs unchanged and gives the same bits on every rank as in one
process. :func:`using` installs another mapper for a block (a context variable: threads and
nested calls see their own).

>>> map_items(lambda x: x * x, [1, 2, 3])
[1, 4, 9]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


class Mapper(Protocol):
    """``mapper(fn, items, desc, progress)``: ``[fn(item) for item in items]``, in item order."""

    def __call__(
        self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str, progress: bool
    ) -> list[Any]: ...


def serial(fn: Callable[[Any], Any], items: Sequence[Any], desc: str, progress: bool) -> list[Any]:
    """Every item here, in order (the default mapper)."""
    return [fn(item) for item in tqdm(items, desc=desc, disable=not progress, leave=False)]


_MAPPER: ContextVar[Mapper] = ContextVar("sae_circuits_mapper", default=serial)


def map_items(fn: Callable[[T], R], items: Sequence[T], desc: str = "", progress: bool = False) -> list[R]:
    """``[fn(item) for item in items]`` by the mapper in use (:func:`serial` unless :func:`using`)."""
    return _MAPPER.get()(fn, items, desc, progress)


@contextmanager
def using(mapper: Mapper) -> Iterator[None]:
    """Map items with ``mapper`` inside the block; the previous mapper is back on the way out."""
    token = _MAPPER.set(mapper)
    try:
        yield
    finally:
        _MAPPER.reset(token)
