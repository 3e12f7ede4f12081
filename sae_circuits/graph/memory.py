"""``batch_size="auto"``: as many rows per backward pass as fit in a share of free memory.

A batched backward pass holds, per row, a gradient of ``positions x d_model`` at every dictionary
site and at the embedding, a few more per layer while it runs (the residual stream, the
attention's value path), and a dense row of edges over the active features. The estimate is
deliberately generous; the batch is the largest power of two that fits in ``share`` of the free
memory of the model's device (CUDA: ``torch.cuda.mem_get_info``; CPU: ``MemAvailable``), between
1 and 256.

Under a node budget the batch size changes which features are expanded (influence is pushed
batch by batch), so a graph made with ``"auto"`` can differ between machines: pass an integer
for graphs that must be reproducible everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

MAX_AUTO_BATCH = 256


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (CPU: the kernel's ``MemAvailable``; 8 GiB if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        match = None
    return int(match.group(1)) * 1024 if match else 8 * 2**30


def row_bytes(
    n_positions: int, d_model: int, n_sites: int, n_layers: int, n_active: int, element_size: int
) -> int:
    """Estimated bytes one row of a batched backward pass needs."""
    gradients = n_positions * d_model * element_size * (n_sites + 1 + 4 * n_layers)
    read_out = n_positions * d_model * 4 * 2 + n_active * 4 * 4  # float32 copies, dense edge rows
    return gradients + read_out


def auto_batch_size(
    device: torch.device,
    n_positions: int,
    d_model: int,
    n_sites: int,
    n_layers: int,
    n_active: int,
    element_size: int,
    share: float = 0.25,
) -> int:
    """The largest power of two (1 to 256) whose rows fit in ``share`` of ``device``'s free memory.

    >>> auto_batch_size(torch.device("cpu"), 64, 128, 8, 4, 15_000, 4) >= 1
    True
    """
    per_row = row_bytes(n_positions, d_model, n_sites, n_layers, n_active, element_size)
    fit = int(share * free_memory(device)) // max(per_row, 1)
    batch = 1
    while batch * 2 <= min(fit, MAX_AUTO_BATCH):
        batch *= 2
    return batch
