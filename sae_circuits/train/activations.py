"""Stream activations from a hooked model through a shuffling buffer.

The model runs only up to the last layer needed (``stop_at_layer``). Activations are held in
memory: a buffer of ``buffer_tokens`` rows is filled, shuffled, and half of it is served as
batches before the served half is refilled, so batches mix many contexts. Memory is
``buffer_tokens * (d_in + d_out) * 4`` bytes (64k tokens of width 128: 64 MB). For runs beyond
memory the same interface can be backed by activations cached to disk (e.g. safetensors shards
read in shuffled order); nothing in the trainer depends on where batches come from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class ActivationBatch(NamedTuple):
    """Inputs (and, for transcoders, targets) of one training batch."""

    x: Float[Tensor, "batch d_in"]
    y: Float[Tensor, "batch d_out"]


def stop_layer(*hook_names: str) -> int | None:
    """The ``stop_at_layer`` that still runs every hook in ``hook_names`` (``None``: run all)."""
    layers = []
    for name in hook_names:
        match = re.match(r"blocks\.(\d+)\.", name)
        if match is None:
            return None
        layers.append(int(match.group(1)))
    return max(layers) + 1


class ActivationStore:
    """Serves shuffled activation batches from ``hook_in`` (and ``hook_out``) of ``model``."""

    def __init__(
        self,
        model: nn.Module,
        tokens: Int[Tensor, "n_seq seq"],
        hook_in: str,
        hook_out: str | None = None,
        *,
        batch_size: int,
        buffer_tokens: int,
        model_batch_size: int = 16,
        skip_first_position: bool = True,
        seed: int = 0,
    ) -> None:
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            raise ValueError(f"tokens must be a non-empty [n_seq, seq] tensor, got shape {list(tokens.shape)}")
        self.model = model
        self.tokens = tokens
        self.hook_in, self.hook_out = hook_in, hook_out or hook_in
        self.batch_size = batch_size
        self.buffer_tokens = buffer_tokens
        self.model_batch_size = model_batch_size
        self.first = 1 if skip_first_position and tokens.shape[1] > 1 else 0
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.randperm(tokens.shape[0], generator=self.generator)
        self._cursor = 0
        self.epochs = 0

    @torch.no_grad()
    def _next_sequences(self) -> Iterator[ActivationBatch]:
        """Activations of the next ``model_batch_size`` sequences, flattened; loops over epochs."""
        names = sorted({self.hook_in, self.hook_out})
        stop = stop_layer(*names)
        while True:
            if self._cursor >= len(self._order):
                self._order = torch.randperm(self.tokens.shape[0], generator=self.generator)
                self._cursor = 0
                self.epochs += 1
            index = self._order[self._cursor : self._cursor + self.model_batch_size]
            self._cursor += self.model_batch_size
            batch = self.tokens[index].to(_device(self.model))
            _, cache = self.model.run_with_cache(batch, names_filter=names, stop_at_layer=stop)
            x = cache[self.hook_in][:, self.first :]
            y = cache[self.hook_out][:, self.first :]
            yield ActivationBatch(x.reshape(-1, x.shape[-1]).float().cpu(), y.reshape(-1, y.shape[-1]).float().cpu())

    def _fill(self, source: Iterator[ActivationBatch], n: int) -> ActivationBatch:
        xs, ys, have = [], [], 0
        while have < n:
            chunk = next(source)
            xs.append(chunk.x)
            ys.append(chunk.y)
            have += chunk.x.shape[0]
        return ActivationBatch(torch.cat(xs)[:n], torch.cat(ys)[:n])

    def sample(self, n: int) -> ActivationBatch:
        """``n`` activations from a fresh pass (for initialisation and normalisation statistics)."""
        return self._fill(self._next_sequences(), n)

    def __iter__(self) -> Iterator[ActivationBatch]:
        source = self._next_sequences()
        buffer = self._fill(source, self.buffer_tokens)
        half = self.buffer_tokens // 2
        while True:
            perm = torch.randperm(self.buffer_tokens, generator=self.generator)
            buffer = ActivationBatch(buffer.x[perm], buffer.y[perm])
            for start in range(0, half - self.batch_size + 1, self.batch_size):
                yield ActivationBatch(
                    buffer.x[start : start + self.batch_size], buffer.y[start : start + self.batch_size]
                )
            fresh = self._fill(source, half)
            buffer = ActivationBatch(torch.cat([fresh.x, buffer.x[half:]]), torch.cat([fresh.y, buffer.y[half:]]))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
