"""Which rank this process is, and how ranks share per-item work: the plumbing under
:func:`~sae_circuits.distributed.attribute_prompts` and
:func:`~sae_circuits.distributed.sharded_automaton`. Only ``torch.distributed`` (launched with
``torchrun``), no cluster code of our own.

- :func:`ranks`: ``(rank, world_size)`` from the arguments, else the initialised process group,
  else the ``RANK`` / ``WORLD_SIZE`` variables that ``torchrun`` sets, else ``(0, 1)``; checked.
- :class:`RankMapper`: a mapper for :mod:`sae_circuits._shard_map`: rank ``r`` of ``W`` runs the
  items ``i`` with ``i % W == r``, then every rank receives every result (``all_gather_object``)
  and gets them back in item order, so that what follows runs on the same values everywhere.
- :func:`process_group_from_env`: the process group of a ``torchrun`` launch, for the command line.

>>> ranks(rank=1, world_size=2)
Ranks(rank=1, world_size=2, group=False)
>>> ranks(rank=2, world_size=2)
Traceback (most recent call last):
...
ValueError: rank=2: expected an integer with 0 <= rank < world_size=2
"""

from __future__ import annotations

import io
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sae_circuits.positions import is_int


class Ranks(NamedTuple):
    """This process's place among the ranks."""

    rank: int
    """This process, from 0."""
    world_size: int
    """How many processes share the work."""
    group: bool
    """Whether a ``torch.distributed`` process group is initialised (barriers and gathers work)."""


def _group() -> bool:
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r}: expected an integer") from None


def ranks(rank: int | None = None, world_size: int | None = None) -> Ranks:
    """This process's ``rank`` and the ``world_size``: as given, else the initialised process group's,
    else the ``RANK`` / ``WORLD_SIZE`` environment variables (``torchrun`` sets them), else 0 and 1.
    A ValueError names a bad value, and a value that contradicts the process group."""
    group = _group()
    if world_size is None:
        world_size = dist.get_world_size() if group else _env_int("WORLD_SIZE", 1)
    if not is_int(world_size) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: expected an integer >= 1")
    if rank is None:
        rank = dist.get_rank() if group else _env_int("RANK", 0)
    if not is_int(rank) or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank!r}: expected an integer with 0 <= rank < world_size={world_size}")
    if group and (rank, world_size) != (dist.get_rank(), dist.get_world_size()):
        raise ValueError(
            f"rank={rank}, world_size={world_size}: the initialised process group says rank "
            f"{dist.get_rank()} of {dist.get_world_size()}; leave them out or pass those"
        )
    return Ranks(int(rank), int(world_size), group)


def barrier(where: Ranks) -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if where.group and where.world_size > 1:
        dist.barrier()


def gather(where: Ranks, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    if not (where.group and where.world_size > 1):
        return [obj]
    found: list[Any] = [None] * where.world_size
    dist.all_gather_object(found, obj)
    return found


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> Any:
    # our own bytes, made by the ranks of this job a moment ago: full unpickling is safe here.
    # A tensor on a GPU comes back on this rank's current GPU (one GPU per rank), a CPU one on the CPU.
    def place(storage: Any, location: str) -> Any:
        return storage.cuda() if location.startswith("cuda") else storage

    return torch.load(io.BytesIO(data), map_location=place, weights_only=False)


class RankMapper:
    """Rank ``r`` of ``W`` computes items ``r, r + W, r + 2W, ...``; every rank gets every result, in
    item order, bit for bit as computed (serialised with ``torch.save``). If an item fails on one
    rank, every rank raises (the failing one its own exception) instead of waiting forever."""

    def __init__(self, where: Ranks) -> None:
        if where.world_size > 1 and not where.group:
            raise ValueError(
                f"sharing work over world_size={where.world_size} ranks needs an initialised "
                "torch.distributed process group (launch with torchrun and call "
                "torch.distributed.init_process_group)"
            )
        self.where = where

    def __call__(
        self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str, progress: bool
    ) -> list[Any]:
        rank, world = self.where.rank, self.where.world_size
        mine = range(rank, len(items), world)
        done: dict[int, bytes] = {}
        failure: tuple[int, str] | None = None
        error: BaseException | None = None
        for i in tqdm(mine, desc=desc, disable=not progress or rank != 0, leave=False):
            try:
                done[i] = _to_bytes(fn(items[i]))
            except Exception as err:  # every rank must hear of it, or the others wait forever
                failure, error = (i, "".join(traceback.format_exception_only(err)).strip()), err
                break
        everything = gather(self.where, (done, failure))
        failed = [(r, f) for r, (_, f) in enumerate(everything) if f is not None]
        if failed:
            if error is not None:
                raise error
            r, (i, message) = failed[0]
            raise RuntimeError(f"{desc or 'work'}: item {i} failed on rank {r}: {message}")
        merged: dict[int, bytes] = {}
        for part, _ in everything:
            merged.update(part)
        return [_from_bytes(merged[i]) for i in range(len(items))]


@contextmanager
def process_group_from_env(backend: str = "gloo") -> Iterator[Ranks]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1), initialise the default process group (``gloo``: the
    collectives here are small objects) unless one already is, and destroy it on the way out; with
    one process, nothing. Yields :func:`ranks`."""
    started = False
    if _env_int("WORLD_SIZE", 1) > 1 and not _group():
        dist.init_process_group(backend=backend)
        started = True
    try:
        yield ranks()
    finally:
        if started:
            dist.destroy_process_group()
