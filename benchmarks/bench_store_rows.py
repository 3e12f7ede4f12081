"""How many of the rows the model computes the activation store serves (no model runs).

What (seconds, one thread): ``ActivationStore`` with ``TrainConfig``'s defaults (batch 4096,
buffer 65,536, 16 sequences per model batch) on token rows of several widths, its model pass
replaced by one that only counts rows; 400 batches are drawn and the served rows are divided by
the rows computed beyond the first buffer fill. Before 6 December 2026 a fill dropped the rest of
its last model batch: the zoo's 512-token rows served 80% of what the model computed.

    python benchmarks/bench_store_rows.py
"""

from __future__ import annotations

import torch
from torch import nn

from sae_circuits.train import ActivationStore, TrainConfig


class CountingStore(ActivationStore):
    """The store with a model pass that makes zero rows and counts them."""

    computed = 0

    def _activations(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = len(index) * (self.tokens.shape[1] - self.first)
        self.computed += rows
        return {name: torch.zeros(rows, 1) for name in self.hook_names}


def main() -> None:
    torch.set_num_threads(1)
    config = TrainConfig()
    print("| token rows | first position skipped | served / computed |")
    print("|---|---|---|")
    for width, skip in ((512, True), (201, True), (129, True), (256, False)):
        store = CountingStore(nn.Identity(), torch.zeros(2000, width, dtype=torch.long), "blocks.0.hook_resid_post",
                              batch_size=config.batch_size, buffer_tokens=config.buffer_tokens,
                              model_batch_size=config.model_batch_size, skip_first_position=skip)  # fmt: skip
        batches = 400
        for _ in zip(store, range(batches)):
            pass
        served = batches * config.batch_size
        print(f"| {width} | {skip} | {served / (store.computed - config.buffer_tokens):.3f} |")


if __name__ == "__main__":
    main()
