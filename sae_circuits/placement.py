"""``sc.place``: put a model and its spliced dictionaries on a device, or split them over GPUs.

One device: the model moves (and optionally changes dtype) and every spliced dictionary moves
with it; dictionaries keep their own dtype unless ``dictionary_dtype`` says otherwise (float32
dictionaries on a bfloat16 model are the usual choice: attribution dots edges in float32 anyway).

Several GPUs (``n_devices``): a ``HookedTransformer``'s blocks are split evenly in layer order
the way TransformerLens splits them (``get_device_for_block_index``: its forward pass moves the
residual stream from block to block), the embedding sits with the first block, the final norm
and unembedding with the last, and each dictionary sits with the block of its site, so a
dictionary's encode and decode run where its activations are. Attribution then runs on that
placement as it is: each site's gradients and edges are computed on its device and the kept
edges gathered on the CPU. A ``TransformerBridge`` is placed by Hugging Face when it is loaded
(``device_map``); ``place`` refuses to split one.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch
from torch import nn

from sae_circuits.splice import saes_of


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, if this machine has it; a clear error if not.

    >>> check_device("cpu")
    device(type='cpu')
    >>> check_device("cuda:7")  # doctest: +SKIP
    ValueError: device 'cuda:7' does not exist: this machine has 1 CUDA device (cuda:0)
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device {device!r} is not a device name (expected e.g. 'cpu', 'cuda', 'cuda:1')"
        ) from err
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device {str(device)!r} does not exist: torch sees no CUDA device on this machine"
            )
        if parsed.index is not None and parsed.index >= count:
            names = ", ".join(f"cuda:{i}" for i in range(count))
            raise ValueError(
                f"device {str(device)!r} does not exist: this machine has {count} CUDA device"
                f"{'s' if count > 1 else ''} ({names})"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} does not exist: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r} is not supported (expected cpu, cuda or mps)")
    return parsed


def place(
    model: nn.Module,
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype | None = None,
    dictionary_dtype: torch.dtype | None = None,
    n_devices: int = 1,
) -> nn.Module:
    """Move ``model`` and its spliced dictionaries to ``device`` (or split over ``n_devices`` GPUs).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``, dictionaries spliced or not
            (dictionaries spliced later are not moved: splice first).
        device: where to put everything (None: where the model is now). With ``n_devices > 1``,
            the first GPU (``"cuda"`` means ``"cuda:0"``).
        dtype: the model's new dtype (e.g. ``torch.bfloat16``); None keeps it.
        dictionary_dtype: the dictionaries' new dtype; None keeps theirs.
        n_devices: split a ``HookedTransformer``'s blocks over this many consecutive GPUs.

    Returns the model (moved in place).

    >>> sc.place(model, "cpu", dtype=torch.bfloat16).cfg.dtype
    torch.bfloat16
    >>> sc.place(model, dtype=torch.float32).cfg.dtype
    torch.float32
    """
    for name, value in (("dtype", dtype), ("dictionary_dtype", dictionary_dtype)):
        if value is not None and (not isinstance(value, torch.dtype) or not value.is_floating_point):
            raise ValueError(f"{name}={value!r} must be a floating-point torch.dtype, e.g. torch.bfloat16")
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices={n_devices!r} must be an integer >= 1")
    target = check_device(device) if device is not None else next(model.parameters()).device
    tl: Any = model  # HookedTransformer / TransformerBridge API, not nn.Module's
    if n_devices > 1:
        _split(tl, target, n_devices)
        if dtype is not None:
            _move(tl, dtype)
    else:
        # as a string: given a torch.device, TransformerLens keeps only its type ("cuda" for cuda:1)
        # in cfg.device, and would send the tokens to cuda:0
        _move(tl, str(target))
        if dtype is not None:
            _move(tl, dtype)
    for site, sae in saes_of(model).items():
        sae.to(_block_device(tl, site) if n_devices > 1 else target)
        if dictionary_dtype is not None:
            sae.to(dictionary_dtype)
    return model


def _move(model: Any, where: str | torch.device | torch.dtype) -> None:
    """``model.to(where)``; TransformerLens's ``to`` (a HookedTransformer's or a bridge's: one
    device or dtype, and it updates the config) prints what it does unless told not to."""
    from sae_circuits._model import is_bridge

    if "print_details" in inspect.signature(model.to).parameters or is_bridge(model):
        model.to(where, print_details=False)
    else:
        model.to(where)


def _split(model: Any, first: torch.device, n_devices: int) -> None:
    from sae_circuits._model import is_bridge

    if is_bridge(model):
        raise ValueError(
            "place(n_devices=...) splits a HookedTransformer; a TransformerBridge is placed by "
            "Hugging Face when it is loaded (pass device_map='auto' to its from_pretrained)"
        )
    if first.type != "cuda":
        raise ValueError(
            f"n_devices={n_devices} splits a model over GPUs; device {str(first)!r} is not a GPU"
        )
    start = first.index or 0
    for index in range(start, start + n_devices):
        check_device(f"cuda:{index}")
    from transformer_lens.utilities.multi_gpu import get_device_for_block_index

    model.cfg.n_devices, model.cfg.device = n_devices, f"cuda:{start}"
    blocks = [get_device_for_block_index(i, model.cfg) for i in range(model.cfg.n_layers)]
    for block, where in zip(model.blocks, blocks):
        block.to(where)
    for name in ("embed", "hook_embed", "pos_embed", "hook_pos_embed"):
        if hasattr(model, name):
            getattr(model, name).to(blocks[0])
    for name in ("ln_final", "unembed"):
        if hasattr(model, name):
            getattr(model, name).to(blocks[-1])


def _block_device(model: Any, site: str) -> torch.device:
    match = re.match(r"blocks\.(\d+)\.", site)
    if match is None:  # an embedding-side hook
        return next(model.embed.parameters()).device
    return next(model.blocks[int(match.group(1))].parameters()).device
