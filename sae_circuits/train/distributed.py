"""Train SAEs and transcoders on several processes: data parallel over one cached activation stream.

Launch with ``torchrun`` on a cache written by
:func:`~sae_circuits.train.activation_cache.cache_activations`::

    torchrun --nproc_per_node=2 -m sae_circuits.train.distributed --cache acts --out saes \\
        --sae blocks.0.hook_resid_post --architecture topk --d-sae 4096 --k 32 --batch-size 4096

Steps (every rank runs all of them):

1. Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
   ``MASTER_PORT``); ``gloo`` by default (CPU).
2. Check that the global batch splits evenly over the ranks, then open the cache as rank ``r`` of
   ``w``: every rank runs the same seeded shuffled stream and keeps rows ``[r*b/w, (r+1)*b/w)`` of
   each global batch of ``b``, so the ranks together see exactly the batches of one process.
3. Build the same trainers on every rank: the initialisation sample, the normalisation scales
   and the geometric-median ``b_dec`` come from the same cache rows, the weights from the same
   seed (and are broadcast from rank 0, as DistributedDataParallel does).
4. Train. Each rank's loss is the mean over its rows; after ``backward`` the gradients are
   averaged over the ranks (mean of equal shares = mean over the global batch), so clipping, Adam
   and the decoder-norm upkeep take the same step everywhere. Firing counts, dead-feature
   tracking, AuxK's normaliser, BatchTopK's batch-wide selection and threshold, and the logged
   metrics are summed over the ranks, so they are the global batch's. Two ranks with ``b/2`` rows
   each therefore give the SAE that one process gives with ``b`` (to float rounding: sums are
   taken in another order).
5. Rank 0 saves every dictionary (SAELens format) under ``--out``; the others wait at a barrier.

Why the gradients are averaged by an explicit all-reduce rather than by wrapping the dictionary in
``DistributedDataParallel``: DDP hooks the module's ``forward``, while a training step calls the
dictionary's parts (``pre_acts``, ``activate``, ``decode``, and the AuxK loss reads ``W_dec``
directly) and must project the decoder gradient *after* averaging. One all-reduce of the flat
gradient buffer is the collective DDP runs (in one bucket), with no unsupported use of the module.

Not done: dictionary (feature) parallelism. A 65k-feature dictionary on a 4k-wide residual is
2 x 65k x 4k float32 = 2 GB of weights (about 8 GB with gradients and Adam's moments), which
fits one accelerator, so data parallelism covers the widths in use; sharding features would need
a cross-rank top-k per token every step (TopK/BatchTopK), worth it only for dictionaries far
wider than one device holds.

GPUs: ``--device cuda --backend nccl`` trains each rank's dictionary on ``cuda:$LOCAL_RANK``
(``TrainConfig.device``); untested here (no GPU on this project's machines).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist

from sae_circuits.sae import SAE
from sae_circuits.train.activation_cache import Fingerprint
from sae_circuits.train.config import TrainConfig
from sae_circuits.train.trainer import DictionarySpec, _train_cached


def train_distributed(
    cache: str | os.PathLike[str],
    specs: Sequence[DictionarySpec],
    config: TrainConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    expect_fingerprint: Fingerprint | None = None,
) -> list[SAE]:
    """Train one dictionary per spec from ``cache``, data parallel over the ranks of
    torch.distributed's default group (steps 2-5 of the module docstring); without an initialised
    group, in this one process (as :func:`~sae_circuits.train.trainer.train_from_cache`).
    ``config.batch_size`` is the global batch. Rank 0 saves to ``out`` (when given; one folder per
    dictionary, named after its site); every rank returns the same trained SAEs.

    >>> from sae_circuits.train import DictionarySpec, cache_activations, train_distributed
    >>> _ = cache_activations(model, tokens, ["blocks.0.hook_resid_post"], "acts", progress=False)
    >>> config = sc.TrainConfig(architecture="topk", d_sae=64, k=8, batch_size=16, total_tokens=64,
    ...                         buffer_tokens=32, geometric_median_samples=32, progress=False)
    >>> [sae] = train_distributed("acts", [DictionarySpec("blocks.0.hook_resid_post")], config, "saes")
    >>> from pathlib import Path
    >>> sorted(p.name for p in Path("saes").iterdir())
    ['blocks.0.hook_resid_post']
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if config.batch_size % world:
        raise ValueError(
            f"the global batch_size={config.batch_size} does not split evenly over world_size={world} "
            f"ranks; use a multiple of {world}"
        )
    if distributed and config.device == "cuda":  # one GPU per rank: torchrun's LOCAL_RANK
        config = dataclasses.replace(config, device=f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
    saes = _train_cached(
        cache, specs, config, expect_fingerprint=expect_fingerprint, rank=rank, world_size=world
    )
    if out is not None and rank == 0:
        for name, sae in zip(_folder_names(saes), saes):
            sae.save(Path(out) / name)
    if distributed:
        dist.barrier()  # the files exist on every rank's return
    return saes


def _folder_names(saes: list[SAE]) -> list[str]:
    sites = [sae.cfg.site for sae in saes]
    return sites if len(set(sites)) == len(sites) else [f"{i}_{site}" for i, site in enumerate(sites)]


_CACHE_FIELDS = ("model_batch_size", "skip_first_position")  # fixed when the cache was written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sae_circuits.train.distributed",
        description="Train SAEs/transcoders from an activation cache; run it under "
        "`torchrun --nproc_per_node=N` for N data-parallel processes.",
    )
    parser.add_argument("--cache", required=True, help="directory written by cache_activations")
    parser.add_argument("--out", required=True, help="directory for the trained dictionaries (rank 0)")
    parser.add_argument("--sae", action="append", default=[], metavar="HOOK", help="train an SAE on HOOK")
    parser.add_argument(
        "--transcoder", action="append", default=[], nargs=2, metavar=("HOOK_IN", "HOOK_OUT"),
        help="train a transcoder from HOOK_IN to HOOK_OUT",
    )  # fmt: skip
    parser.add_argument("--backend", default="gloo", help="torch.distributed backend (default gloo)")
    for field in dataclasses.fields(TrainConfig):  # every TrainConfig field is an option
        if field.name in _CACHE_FIELDS:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = str(field.type)
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        elif kind.startswith("tuple[int"):  # matryoshka_widths: --matryoshka-widths 32 64 128
            parser.add_argument(
                flag,
                type=int,
                nargs="+",
                default=field.default,
                help="(default: d_sae / 16, / 8, / 4 and / 2)",
            )
        else:
            convert = int if kind.startswith("int") else float if kind == "float" else str
            parser.add_argument(flag, type=convert, default=field.default, help=f"(default {field.default})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``python -m sae_circuits.train.distributed`` entry point (step 1, then
    :func:`train_distributed`); works with and without ``torchrun``."""
    args = _parser().parse_args(argv)
    specs = [DictionarySpec(h) for h in args.sae] + [DictionarySpec(a, b) for a, b in args.transcoder]
    if not specs:
        print("nothing to train: give --sae HOOK and/or --transcoder HOOK_IN HOOK_OUT", file=sys.stderr)
        return 2
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in _CACHE_FIELDS
    }
    config = TrainConfig(**values)
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # set by torchrun
    if launched and not dist.is_initialized():
        dist.init_process_group(args.backend)
    try:
        train_distributed(args.cache, specs, config, args.out)
    finally:
        if launched:
            dist.destroy_process_group()
    if not dist.is_initialized() and int(os.environ.get("RANK", "0")) == 0:
        print(f"saved {len(specs)} dictionaries under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
