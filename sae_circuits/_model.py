"""What splicing needs to know about a hooked model, for HookedTransformer and TransformerBridge.

Nothing here imports ``HookedTransformer``: the two model kinds are told apart by duck typing so
that the same code serves a TransformerLens 4.x bridge.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from sae_circuits._compat import check_versions, ensure_bridge_kv_cache


def is_bridge(model: nn.Module) -> bool:
    """A TransformerBridge keeps its hook points in a registry instead of ``setup()``."""
    return hasattr(model, "_hook_registry")


def check_model(model: Any) -> None:
    """Fail unless ``model`` is a hooked model; on a bridge, adapt the KV cache to transformers."""
    if not isinstance(model, nn.Module) or not hasattr(model, "hook_dict"):
        raise TypeError(f"expected a HookedTransformer or TransformerBridge, got {type(model).__name__}")
    check_versions()
    if is_bridge(model):
        ensure_bridge_kv_cache()


def check_token_ids(tokens: Any, model: Any, what: str, *, context: bool = True) -> None:
    """A ``TypeError`` naming ``what`` unless ``tokens`` is an integer tensor, a ``ValueError``
    unless its ids are in the model's vocabulary (a negative id would index from the end, silently)
    and, with ``context``, its rows no longer than the model's context."""
    if not torch.is_tensor(tokens) or tokens.dtype == torch.bool or tokens.is_floating_point():
        raise TypeError(
            f"{what} must be an integer tensor of token ids, got {type(tokens).__name__}"
            + (f" of {tokens.dtype}" if torch.is_tensor(tokens) else "")
        )
    vocab, n_ctx = model.cfg.d_vocab, model.cfg.n_ctx
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(
            f"{what}: token ids {int(tokens.min())}..{int(tokens.max())} fall outside the model's "
            f"vocabulary (0..{vocab - 1})"
        )
    if context and tokens.ndim and tokens.shape[-1] > n_ctx:
        raise ValueError(f"{what}: rows of {tokens.shape[-1]} tokens; the model's context is {n_ctx}")


def get_hook_point(model: nn.Module, name: str) -> HookPoint:
    """The hook point called ``name`` (bridge aliases such as ``hook_resid_post`` resolved)."""
    if not isinstance(name, str):
        raise TypeError(f"hook name must be a string, got {type(name).__name__}: {name!r}")
    hook_dict: Mapping[str, Any] = cast(Any, model).hook_dict
    hook_point = hook_dict.get(name)
    if isinstance(hook_point, HookPoint):
        return hook_point
    close = difflib.get_close_matches(name, list(hook_dict), n=3, cutoff=0.6)
    hint = f"; did you mean {close}?" if close else ""
    raise ValueError(f"unknown hook name {name!r} for {type(model).__name__}{hint}")


def register_hook_points(model: nn.Module, added: Mapping[str, HookPoint], removed: list[str]) -> None:
    """Make the model's hook dictionary (and so ``run_with_cache``/``hooks``) see a change of
    hook points that were added to or removed from hook points already in the module tree."""
    if is_bridge(model):
        registry: dict[str, HookPoint] = model._hook_registry  # type: ignore[assignment]
        for name in removed:
            registry.pop(name, None)
        for name, hook_point in added.items():
            hook_point.name = name
            registry[name] = hook_point
    else:
        model.setup()  # type: ignore[operator]  # HookedRootModule rebuilds hook_dict/mod_dict
        for name, hook_point in added.items():  # the user's spelling, for messages and caches
            hook_point.name = name


_BLOCK = r"blocks\.\d+\."
_D_MODEL_HOOKS = re.compile(
    rf"^(hook_embed|hook_pos_embed|ln_final\.hook_normalized|{_BLOCK}(hook_resid_(pre|mid|post)"
    rf"|hook_attn_out|hook_mlp_out|hook_attn_in|hook_mlp_in|hook_out|hook_in"
    rf"|ln[12]\.hook_normalized|ln[12]\.hook_out))$"
)
_D_MLP_HOOKS = re.compile(rf"^{_BLOCK}mlp\.(hook_pre|hook_post)$")
_HEAD_HOOKS = re.compile(rf"^{_BLOCK}attn\.hook_(z|q)$")


def expected_width(model: nn.Module, name: str) -> int | None:
    """Width of the activation at ``name`` known from the model config (heads flattened), or
    ``None`` when the name is not a standard one (then the first forward pass checks it)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return None
    d_model = getattr(cfg, "d_model", None)
    if _D_MODEL_HOOKS.match(name):
        return d_model
    if _D_MLP_HOOKS.match(name):
        return getattr(cfg, "d_mlp", None)
    if _HEAD_HOOKS.match(name):
        n_heads, d_head = getattr(cfg, "n_heads", None), getattr(cfg, "d_head", None)
        return n_heads * d_head if n_heads and d_head else None
    return None


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    param = next(model.parameters())
    return param.dtype, param.device


CACHE_KWARGS = ("past_kv_cache", "past_key_values", "cache")
"""Forward keywords that carry a KV cache: HookedTransformer's own cache object; a Hugging Face
cache under its old name and (transformers >= 5.24) its new one."""


def hf_cache(kwargs: Mapping[str, Any]) -> Any:
    """The Hugging Face KV cache passed to a bridge's forward call, under either name, or None."""
    cache = kwargs.get("past_key_values")
    return cache if cache is not None else kwargs.get("cache")


def cache_length(kwargs: Mapping[str, Any]) -> int:
    """Tokens already in the KV cache passed to a forward call (0 when there is none).

    HookedTransformer takes ``past_kv_cache`` (its own cache object); the bridge forwards a
    Hugging Face cache (``past_key_values``, or ``cache`` on transformers >= 5.24).
    """
    cache = kwargs.get("past_kv_cache")
    if cache is not None:
        entries = getattr(cache, "entries", None)
        if entries:
            return int(entries[0].past_keys.shape[1])
        return 0
    cache = hf_cache(kwargs)
    if cache is not None:
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
            return int(cache[0][0].shape[-2])  # legacy tuple cache: (batch, heads, pos, d_head)
    position = kwargs.get("cache_position")
    if isinstance(position, torch.Tensor) and position.numel():
        return int(position.reshape(-1)[0])
    return 0
