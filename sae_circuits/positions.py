"""Token positions for interventions: absolute indices in the full sequence (prompt + generated).

A forward pass sees a *chunk* of the sequence: the whole of it without a KV cache, only the new
tokens with one. :class:`PositionTracker` follows where the current chunk starts (the cache
length passed to ``forward``) and, inside ``generate``, how long the prompt was, so a position
spec means the same tokens whether or not the cache is on.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor, nn

from sae_circuits._compat import cache_not_filled
from sae_circuits._model import CACHE_KWARGS, cache_length, hf_cache

NamedRange: TypeAlias = Literal["prompt", "generated"]
"""The prompt's tokens, or the tokens ``generate`` adds after it."""

Positions: TypeAlias = int | Sequence[int] | np.ndarray | Tensor | slice | NamedRange | None
"""Which tokens an intervention edits, as a caller writes it: ``None`` (every token), an int, a
list of ints (or a 0-d/1-d integer numpy array or tensor), a slice with non-negative bounds,
``"prompt"`` or ``"generated"``. Ints are absolute positions in the full sequence (prompt +
generated), counted from 0; bools and floats are refused, even whole ones. For example
``sc.clamp(site, 7, 4.0, positions=[3, 5])`` or ``sc.ablate(site, 7, positions=slice(6, None, 2))``
(examples that run: :func:`normalize_positions`).
"""

PositionSpec: TypeAlias = tuple[int, ...] | slice | NamedRange | None
"""A :data:`Positions` after :func:`normalize_positions`: ints become a sorted tuple of distinct
Python ints, a slice's bounds Python ints (or ``None``); what an intervention stores and what
:meth:`Chunk.mask` reads."""


def normalize_positions(positions: Positions) -> PositionSpec:
    """Validate a position spec; ints become a sorted tuple. Raises ``ValueError``/``TypeError``.

    >>> normalize_positions(np.array([5, 1, 5]))
    (1, 5)
    >>> normalize_positions(slice(6, None, 2)), normalize_positions("generated")
    (slice(6, None, 2), 'generated')
    >>> sc.clamp("blocks.1.hook_resid_post", 7, 4.0, positions=[5, 3]).positions
    (3, 5)
    """
    if positions is None:
        return positions
    if isinstance(positions, str):  # before any ``==``: an array compared to a string is elementwise
        if positions == "prompt" or positions == "generated":
            return positions
        raise ValueError(
            f"positions={positions!r}: expected 'prompt', 'generated', an int, a list or a slice"
        )
    if isinstance(positions, slice):
        parts = []
        for part in ("start", "stop", "step"):
            value = getattr(positions, part)
            if value is not None and (not is_int(value) or value < 0):
                raise ValueError(f"positions={positions!r}: slice {part} must be a non-negative int or None")
            parts.append(None if value is None else int(value))
        if parts[2] == 0:
            raise ValueError(f"positions={positions!r}: slice step must be positive")
        return slice(*parts)
    items: Any = [positions] if is_int(positions) else positions  # checked item by item below
    if isinstance(items, (Tensor, np.ndarray)):
        items = list(items)  # 0-d tensors / numpy scalars, which keep their dtype for is_int
    try:
        items = list(items)
    except TypeError:
        raise TypeError(
            f"positions={positions!r}: expected None, an int, a list of ints, a slice, "
            "'prompt' or 'generated'"
        ) from None
    for item in items:
        if not is_int(item):
            raise TypeError(f"positions={positions!r}: {item!r} is not an int")
        if item < 0:
            raise ValueError(
                f"positions={positions!r}: {item} is negative; positions are absolute indices "
                "into the full sequence (prompt + generated), counted from 0"
            )
    return tuple(sorted(set(int(i) for i in items)))


MAX_SEED = 2**32 - 1
"""The largest ``seed`` the library's seeded functions take: the streams they derive from it
(``seed * 1_000_003 + k``) must stay within torch's 64-bit seeds."""


def check_seed(seed: Any) -> None:
    """A ``ValueError`` naming ``seed`` unless it is a Python int in ``[0, MAX_SEED]`` (torch's
    generators take no NumPy or tensor seed)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed!r} must be an integer in [0, {MAX_SEED}] (2**32 - 1)")


def is_int(value: Any) -> bool:
    """An int (not a bool), a numpy integer, or a 0-d tensor or numpy array of an integer dtype.

    Judged by type, not value: ``3.0`` and ``np.float32(3)`` are not ints; bools are not either.
    """
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, int | np.integer):
        return True
    if isinstance(value, Tensor):
        return (
            value.ndim == 0
            and not value.is_floating_point()
            and not value.is_complex()
            and (value.dtype != torch.bool)
        )
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and np.issubdtype(value.dtype, np.integer)
    return False


@dataclass
class Chunk:
    """Where the tokens of the current forward pass sit in the full sequence."""

    start: int
    """Absolute position of the chunk's first token."""
    length: int
    """Number of tokens in the chunk."""
    prompt_length: int
    """Prompt length: inside ``generate``, the first call's tokens; otherwise the whole sequence."""
    generating: bool
    """Whether the forward pass is a step of ``generate``."""
    open_ended: bool = False
    """Whether later tokens may follow (generate, or a KV cache was passed): then positions past
    the chunk are not an error, they just have not been reached yet."""

    def mask(self, spec: PositionSpec, device: torch.device) -> Bool[Tensor, " length"] | None:
        """Boolean ``[length]`` mask of the chunk positions selected by ``spec`` (``None``: all)."""
        if spec is None:
            return None
        absolute = torch.arange(self.start, self.start + self.length, device=device)
        if spec == "prompt":
            return absolute < self.prompt_length
        if spec == "generated":
            return absolute >= self.prompt_length
        if isinstance(spec, slice):
            start = spec.start or 0
            selected = absolute >= start
            if spec.stop is not None:
                selected &= absolute < spec.stop
            if spec.step not in (None, 1):
                selected &= (absolute - start) % spec.step == 0
            return selected
        assert isinstance(spec, tuple)
        end = self.start + self.length
        if not self.open_ended and spec and spec[-1] >= end:
            raise IndexError(
                f"position {spec[-1]} is beyond the sequence: the forward pass has {end} tokens "
                f"(positions 0..{end - 1})"
            )
        wanted = torch.tensor(spec, device=device)
        return torch.isin(absolute, wanted)


class PositionTracker:
    """Follows the absolute offset of each forward call on one model (see module docstring)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.refused: list[str] = []
        """Generation entry points replaced by a refusal while tracking (:data:`UNTRACKED`)."""

    @property
    def _state(self) -> dict[str, Any]:
        if not hasattr(self._local, "state"):
            self._local.state = {"offset": 0, "cached": False, "generating": False, "prompt_length": None}
        return self._local.state

    def chunk(self, length: int) -> Chunk:
        """The chunk of ``length`` tokens being processed now (called from inside hooks)."""
        state = self._state
        start = state["offset"]
        if state["generating"]:
            if state["prompt_length"] is None:  # the first forward of generate holds the prompt
                state["prompt_length"] = start + length
            prompt_length = state["prompt_length"]
        else:
            prompt_length = start + length
        open_ended = state["generating"] or state["cached"]
        return Chunk(start, length, prompt_length, state["generating"], open_ended)

    def wrap_forward(self, forward: Any) -> Any:
        """``forward`` wrapped to record, for the call's duration, where its chunk starts (the
        KV cache's length) and whether a cache was passed; it then checks that a Hugging Face
        cache grew."""

        @functools.wraps(forward)
        def tracked_forward(*args: Any, **kwargs: Any) -> Any:
            state = self._state
            previous = state["offset"], state["cached"]
            state["offset"] = before = cache_length(kwargs)
            state["cached"] = any(kwargs.get(k) is not None for k in CACHE_KWARGS)
            try:
                out = forward(*args, **kwargs)
            finally:
                state["offset"], state["cached"] = previous
            _check_cache_filled(forward, args, kwargs, before)
            return out

        return tracked_forward

    def wrap_generate(self, generate: Any) -> Any:
        """``generate`` wrapped to mark its forward calls as generation, so the first one's
        length is taken as the prompt's (for ``"prompt"``/``"generated"``)."""

        @functools.wraps(generate)
        def tracked_generate(*args: Any, **kwargs: Any) -> Any:
            state = self._state
            saved = dict(state)
            state.update(generating=True, prompt_length=None, offset=0)
            try:
                return generate(*args, **kwargs)
            finally:
                state.update(saved)

        return tracked_generate


def _check_cache_filled(forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any], before: int) -> None:
    """Fail loudly when a Hugging Face KV cache given to the forward pass did not grow: later
    steps would then attend to their own token alone (see ``sae_circuits._compat``)."""
    cache = hf_cache(kwargs)
    tokens = args[0] if args else kwargs.get("input")
    if cache is None or not hasattr(cache, "get_seq_length") or not isinstance(tokens, Tensor):
        return
    if kwargs.get("stop_at_layer") is not None:  # a pass cut short may leave later layers unwritten
        return
    after = int(cache.get_seq_length())
    if tokens.ndim >= 1 and tokens.shape[-1] > 0 and after == before:
        raise cache_not_filled(getattr(forward, "__self__", forward), before, after, int(tokens.shape[-1]))


UNTRACKED = ("generate_stream", "hf_generate")
"""Generation entry points that bypass ``model.generate``: refused while positions are tracked
(``"generated"`` was a no-op there, ``"prompt"`` edited every token, a list past the prompt failed)."""


def _refused(model_name: str, name: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"{model_name}.{name} does not go through {model_name}.generate, which sae_circuits "
            f"tracks to know where the prompt ends: inside an intervention or monitor, use "
            f"model.generate"
        )

    return refuse


_trackers: weakref.WeakKeyDictionary[nn.Module, tuple[PositionTracker, int]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@contextmanager
def tracking(model: nn.Module) -> Iterator[PositionTracker]:
    """Install (or reuse, when nested) the model's position tracker for the duration of the block.

    It wraps ``model.forward`` and ``model.generate`` as instance attributes; leaving the
    outermost block deletes them, so the model's class methods are back as they were.
    """
    with _lock:
        tracker, depth = _trackers.get(model, (None, 0))
        if tracker is None:
            tracker = PositionTracker()
            had = {name: name in model.__dict__ for name in ("forward", "generate")}
            if any(had.values()):
                raise RuntimeError(
                    f"{type(model).__name__} already has an instance-level forward/generate; "
                    "sae_circuits cannot track positions on it"
                )
            model.forward = tracker.wrap_forward(model.forward)
            if hasattr(model, "generate"):
                model.generate = tracker.wrap_generate(model.generate)
            for name in UNTRACKED:  # they would run with no idea where the prompt ends
                if hasattr(model, name) and name not in model.__dict__:
                    setattr(model, name, _refused(type(model).__name__, name))
                    tracker.refused.append(name)
        _trackers[model] = (tracker, depth + 1)
    try:
        yield tracker
    finally:
        with _lock:
            tracker, depth = _trackers[model]
            if depth == 1:
                del _trackers[model]
                for name in ("forward", "generate", *tracker.refused):
                    model.__dict__.pop(name, None)
            else:
                _trackers[model] = (tracker, depth - 1)
