"""One digest of many weights, cheap for any model size: a fingerprint, not a checksum.

Each tensor contributes its name, shape, dtype and an evenly strided sample of ``sample`` of its
entries, hashed as raw bytes (so any dtype, bfloat16 included, and any device). It tells another
checkpoint or a fine-tune apart; a single edited weight can slip between the samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import Tensor

SAMPLED_PER_TENSOR = 4096


def tensor_sample_bytes(tensor: Tensor, sample: int | None = SAMPLED_PER_TENSOR) -> bytes:
    """The raw bytes of ``tensor``'s strided sample (all of it when ``sample`` is None or larger)."""
    flat = tensor.detach().reshape(-1)
    if sample is not None and flat.numel() > sample:
        flat = flat[:: flat.numel() // sample][:sample]
    return flat.cpu().contiguous().view(torch.uint8).numpy().tobytes()


def weights_digest(named: Iterable[tuple[str, Tensor]], sample: int | None = SAMPLED_PER_TENSOR) -> str:
    """SHA-256 over ``named`` tensors, in name order: each name, shape, dtype and sample.

    >>> import torch
    >>> a = weights_digest([("w", torch.ones(3))]); a == weights_digest([("w", torch.ones(3))])
    True
    >>> a == weights_digest([("w", torch.zeros(3))])
    False
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
        digest.update(hashlib.sha256(tensor_sample_bytes(tensor, sample)).digest())
    return digest.hexdigest()
