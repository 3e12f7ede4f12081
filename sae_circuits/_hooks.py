"""One TransformerLens forward hook for the length of a ``with`` block, removed however it ends.

The hook is added as *permanent*, so a ``model.reset_hooks()`` inside the block (TransformerLens's
``run_with_hooks`` calls it) keeps it; leaving the block removes exactly that hook and no other.
``sc.intervene`` and ``sc.monitor`` both install theirs this way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor
from transformer_lens.hook_points import HookPoint


@contextmanager
def permanent_hook(hook_point: HookPoint, fn: Callable[..., Tensor | None]) -> Iterator[None]:
    """``fn(tensor, *, hook)`` as a permanent forward hook on ``hook_point`` for the block."""
    hook_point.add_hook(fn, dir="fwd", is_permanent=True)
    handle = hook_point.fwd_hooks[-1]
    try:
        yield
    finally:
        handle.hook.remove()
        if handle in hook_point.fwd_hooks:
            hook_point.fwd_hooks.remove(handle)
