"""The few collectives that data-parallel training needs, on torch.distributed's default group.

Every function is the identity (or a plain local computation) when ``distributed`` is false, so the
trainer and the architectures call them unconditionally and one process needs no process group.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world_size(distributed: bool) -> int:
    """Processes in the default group (1 when not ``distributed``)."""
    return dist.get_world_size() if distributed else 1


def all_reduce_sum(x: Tensor, distributed: bool) -> Tensor:
    """The sum of ``x`` over every rank (a new tensor; no gradient flows through it)."""
    x = x.detach().clone()
    if distributed:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_cat(x: Tensor, distributed: bool) -> Tensor:
    """Every rank's ``x`` (same shape on every rank), concatenated along dim 0 in rank order."""
    if not distributed:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


@torch.no_grad()
def average_gradients(parameters: Iterable[nn.Parameter], distributed: bool) -> None:
    """Replace every gradient by its mean over the ranks, in one all-reduce of a flat buffer (the
    collective DistributedDataParallel runs, bucketed into one). A parameter with no gradient on
    any rank keeps none (so Adam skips it, as in one process); with one on some ranks only, the
    others count zeros."""
    if not distributed:
        return
    params = list(parameters)
    flat = torch.cat(
        [p.grad.flatten() if p.grad is not None else p.new_zeros(p.numel()) for p in params]
        + [torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)]
    )  # (sum numel + n_params,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    present = flat[-len(params) :] > 0
    offset = 0
    for p, has_grad in zip(params, present.tolist()):
        chunk = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        if has_grad:
            p.grad = chunk.clone() if p.grad is None else p.grad.copy_(chunk)


@torch.no_grad()
def broadcast_from_rank0(module: nn.Module, distributed: bool) -> None:
    """Copy rank 0's parameters and buffers to every rank (as DistributedDataParallel does when
    it wraps a module), so that the ranks start from bitwise the same dictionary."""
    if distributed:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)
