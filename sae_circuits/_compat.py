"""Compatibility with upstream releases: each fix at the one place it is needed, with its cause.

**The bridge's KV cache on transformers >= 5.24.** transformers 5.24 renamed the attention
modules' ``past_key_values`` argument to ``cache`` (``@deprecate_kwarg("past_key_values", "5.40.0",
new_name="cache")`` on ``GPT2Attention.forward`` and its peers), and the decoder blocks now pass
``cache=``. TransformerLens's ``AttentionBridge._update_kv_cache`` (3.9.0 and 4.3.0) reads only
``past_key_values`` / ``layer_past``, so on those versions a ``TransformerBridge`` never writes its
KV cache: every cached decode step attends to itself alone, and cached generation is silently
wrong (logits off by up to 0.31 on a tiny GPT-2, though greedy tokens may happen to agree).
:func:`ensure_bridge_kv_cache` hands the renamed argument to TransformerLens under its old name.
sae_circuits applies it the first time it meets a bridge; it changes nothing where the kwarg is not
used. Attention bridges that do not go through ``_update_kv_cache`` are caught at run time
instead: :class:`sae_circuits.positions.PositionTracker` checks that a cached forward pass grew the
cache, and raises :class:`KVCacheNotFilledError` if it did not.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from typing import Any

_MARK = "_sae_circuits_reads_cache_kwarg"


# [lowest, first unsupported) release of each, as pyproject.toml declares them (None: no bound)
SUPPORTED: dict[str, tuple[tuple[int, int], tuple[int, int] | None]] = {
    "transformer-lens": ((3, 9), (5, 0)),
    "transformers": ((5, 9), None),
}


class KVCacheNotFilledError(RuntimeError):
    """A model's forward pass was given a KV cache and did not write to it."""


class UnsupportedVersionError(RuntimeError):
    """The installed TransformerLens or transformers is outside the range sae_circuits supports."""


def _release(version: str) -> tuple[int, int] | None:
    parts = re.findall(r"\d+", version)[:2]
    return (int(parts[0]), int(parts[1])) if len(parts) == 2 else None


@functools.cache
def check_versions() -> None:
    """Fail, naming what is installed and what to do, outside the supported release ranges."""
    for name, (low, high) in SUPPORTED.items():
        found = installed(name)
        if found is None:
            continue  # not installed: nothing to check (a HookedTransformer needs no transformers)
        release = _release(found)
        if release is None or (low <= release and (high is None or release < high)):
            continue
        wanted = f">={low[0]}.{low[1]}" + (f",<{high[0]}.{high[1]}" if high else "")
        raise UnsupportedVersionError(
            f"sae_circuits supports {name}{wanted}, but {name} {found} is installed ({versions()}); "
            f"install a supported release, e.g. pip install '{name}{wanted}'"
        )


def installed(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> str:
    """``"transformers X, transformer-lens Y"``, for error messages."""
    return ", ".join(
        f"{name} {installed(name) or '(not installed)'}" for name in ("transformers", "transformer-lens")
    )


def ensure_bridge_kv_cache() -> None:
    """Make TransformerLens's attention bridges fill the KV cache passed as ``cache=``
    (transformers >= 5.24). Idempotent; a no-op without TransformerLens's bridge."""
    try:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    except ImportError:  # a TransformerLens without the bridge
        return
    original = AttentionBridge._update_kv_cache
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def _update_kv_cache(self: Any, k: Any, v: Any, **kwargs: Any) -> Any:
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]  # transformers >= 5.24 spelling
        return original(self, k, v, **kwargs)

    setattr(_update_kv_cache, _MARK, True)
    AttentionBridge._update_kv_cache = _update_kv_cache  # type: ignore[method-assign]


def cache_not_filled(model: Any, before: int, after: int, new_tokens: int) -> KVCacheNotFilledError:
    """The error for a forward pass that was given a KV cache holding ``before`` tokens and left it
    at ``after`` instead of ``before + new_tokens``."""
    return KVCacheNotFilledError(
        f"{type(model).__name__} did not fill its KV cache: it held {before} tokens before a forward "
        f"pass over {new_tokens} new tokens and {after} after (expected {before + new_tokens}), so "
        f"cached generation would attend to the new tokens alone. Found {versions()}. "
        "transformers >= 5.24 passes the cache as `cache=`, which TransformerLens's attention "
        "bridges do not read; sae_circuits adapts the standard AttentionBridge, but this model's "
        "attention does not use it. Generate with use_past_kv_cache=False, or install "
        "'transformers<5.24'."
    )
