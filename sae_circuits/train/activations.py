"""Stream activations from a hooked model through a shuffling buffer.

The model runs only up to the last layer needed (``stop_at_layer``). Activations are held in
memory: a buffer of ``buffer_tokens`` rows is filled, shuffled, and (whole batches of) half of it
is served before the served rows are refilled, so batches mix many contexts. Every row the model
computes is served once: what a fill computes beyond its need waits for the next fill. Memory is
``buffer_tokens * (d_in + d_out) * 4`` bytes (64k tokens of width 128: 64 MB). The trainer asks
only for the :class:`ActivationSource` interface, so the same loop trains from activations cached
to disk (:class:`~sae_circuits.train.activation_cache.CachedActivations`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

ActivationBatch = dict[str, Float[Tensor, "batch d"]]
"""Hook name -> activations of the same ``batch`` tokens (one row per token)."""


class ActivationSource(Protocol):
    """What a trainer reads activations from: :class:`ActivationStore` (a model's forward) or
    :class:`~sae_circuits.train.activation_cache.CachedActivations` (shards on disk)."""

    hook_names: list[str]
    """The hooks every batch holds, sorted."""
    batch_size: int
    """Rows per batch served by ``__iter__`` (this rank's share of the global batch)."""

    def sample(self, n: int) -> ActivationBatch:
        """``n`` activations for initialisation statistics, the same on every call (and rank)."""
        ...

    def __iter__(self) -> Iterator[ActivationBatch]:
        """Shuffled training batches, without end."""
        ...


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
    """Serves shuffled batches of the activations at ``hook_names`` of ``model`` (one forward
    pass feeds every hook, so several dictionaries can train from one stream)."""

    def __init__(
        self,
        model: nn.Module,
        tokens: Int[Tensor, "n_seq seq"],
        hook_names: str | Sequence[str],
        *,
        batch_size: int,
        buffer_tokens: int,
        model_batch_size: int = 16,
        skip_first_position: bool = True,
        seed: int = 0,
    ) -> None:
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            raise ValueError(
                f"tokens must be a non-empty [n_seq, seq] tensor, got shape {list(tokens.shape)}"
            )
        self.model = model
        self.tokens = tokens
        self.hook_names = sorted({hook_names} if isinstance(hook_names, str) else set(hook_names))
        self.batch_size = batch_size
        self.buffer_tokens = buffer_tokens
        self.model_batch_size = model_batch_size
        self.first = 1 if skip_first_position and tokens.shape[1] > 1 else 0
        self.seed = seed
        self._samples: dict[int, ActivationBatch] = {}
        self.stop = stop_layer(*self.hook_names)
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.randperm(tokens.shape[0], generator=self.generator)
        self._cursor = 0
        self.epochs = 0

    @torch.no_grad()
    def _activations(self, index: Tensor) -> ActivationBatch:
        """Activations of the sequences ``index``, flattened to one row per token."""
        batch = self.tokens[index].to(_device(self.model))
        tl = cast(Any, self.model)  # HookedTransformer or TransformerBridge: TL API, not on nn.Module
        _, cache = tl.run_with_cache(batch, names_filter=self.hook_names, stop_at_layer=self.stop)
        return {
            name: cache[name][:, self.first :].reshape(-1, cache[name].shape[-1]).float().cpu()
            for name in self.hook_names
        }

    def _next_sequences(self) -> Iterator[ActivationBatch]:
        """The training stream: batches of sequences in shuffled order, epoch after epoch."""
        while True:
            if self._cursor >= len(self._order):
                self._order = torch.randperm(self.tokens.shape[0], generator=self.generator)
                self._cursor = 0
                self.epochs += 1
            index = self._order[self._cursor : self._cursor + self.model_batch_size]
            self._cursor += self.model_batch_size
            yield self._activations(index)

    def sample(self, n: int) -> ActivationBatch:
        """``n`` activations for initialisation statistics, from a fixed seeded order of sequences
        that does not move the training stream (so trainers sharing a store start alike)."""
        cached = self._samples.get(n)
        if cached is not None:  # trainers sharing a store ask for the same sample
            return cached
        order = torch.randperm(self.tokens.shape[0], generator=torch.Generator().manual_seed(self.seed + 1))
        chunks = (self._activations(order[i : i + self.model_batch_size])
                  for i in range(0, len(order), self.model_batch_size))  # fmt: skip
        try:
            self._samples = {n: Rows(chunks, self.hook_names).take(n)}
            return self._samples[n]
        except StopIteration:
            raise ValueError(f"the tokens hold fewer than the {n} activations needed to initialise") from None

    def __iter__(self) -> Iterator[ActivationBatch]:
        return shuffle_buffer(
            Rows(self._next_sequences(), self.hook_names), self.buffer_tokens, self.batch_size, self.generator
        )


class Rows:
    """Rows taken ``n`` at a time from a stream of row blocks (model batches, shards), keeping what
    a block has left over for the next take: no row of the stream is lost or read twice."""

    def __init__(self, source: Iterator[ActivationBatch], hook_names: list[str]) -> None:
        self.source, self.hook_names = source, hook_names
        self.left: ActivationBatch = {}

    def take(self, n: int) -> ActivationBatch:
        """The next ``n`` rows of every hook (``StopIteration`` when the stream ends first)."""
        parts, have = [], 0
        while have < n:
            part = self.left or next(self.source)
            rows = part[self.hook_names[0]].shape[0]
            used = min(rows, n - have)
            parts.append({h: t[:used] for h, t in part.items()})
            self.left = {h: t[used:] for h, t in part.items()} if used < rows else {}
            have += used
        return {h: torch.cat([p[h] for p in parts]) for h in self.hook_names}


def shuffle_buffer(
    rows: Rows, buffer_tokens: int, batch_size: int, generator: torch.Generator, part: slice = slice(None)
) -> Iterator[ActivationBatch]:
    """Batches of ``batch_size`` rows from a buffer of ``buffer_tokens``, shuffled with ``generator``:
    whole batches of half the buffer are served, then exactly those rows are replaced by the next
    rows of ``rows``, so every row is served once and batches mix many contexts. ``part`` selects
    this rank's share of each batch (all of it by default)."""
    buffer = rows.take(buffer_tokens)
    served = buffer_tokens // 2 // batch_size * batch_size
    while True:
        perm = torch.randperm(buffer_tokens, generator=generator)
        buffer = {name: acts[perm] for name, acts in buffer.items()}
        for start in range(0, served, batch_size):
            yield {name: acts[start : start + batch_size][part] for name, acts in buffer.items()}
        fresh = rows.take(served)
        buffer = {name: torch.cat([fresh[name], buffer[name][served:]]) for name in fresh}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
