"""Activations computed once, kept on disk as safetensors shards, streamed to every run and rank.

A sweep of dictionaries over the same hooks and tokens recomputes nothing: :func:`cache_activations`
runs the model once, :class:`CachedActivations` serves the training stream (the
:class:`~sae_circuits.train.activations.ActivationSource` interface the trainer reads) to
:func:`~sae_circuits.train.trainer.train_from_cache` and to every rank of
:mod:`sae_circuits.train.distributed`.

Writing (:func:`cache_activations`):

1. Fingerprint the request (:class:`Fingerprint`: the model's config and weights, the hooks, the
   tokens, ``skip_first_position``). A directory whose ``manifest.json`` has the same fingerprint
   is returned as it is; a different one is refused (``overwrite=True`` rebuilds it).
2. Order the sequences by a fixed seeded permutation (so that a shard holds unrelated contexts)
   and cut them into shards of about ``shard_tokens`` activation rows.
3. For every shard: run the model over its sequences (``model_batch_size`` at a time, stopping
   after the last layer needed) and write one safetensors file with one ``[rows, d]`` tensor per
   hook, through a temporary file and a rename. A shard that an interrupted run of the same
   request already completed (its metadata names the fingerprint and its index) is kept.
4. Write ``manifest.json`` last, atomically. A directory without it is an unfinished cache that
   no reader trusts.

Layout::

    directory/manifest.json            format, fingerprint, hooks and widths, dtype, shards, rows
    directory/shard_00000.safetensors  {hook: [rows, d]}, metadata {"fingerprint", "shard"}

Reading (:class:`CachedActivations`): shards in a seeded shuffled order, epoch after epoch, through
a shuffle buffer of ``buffer_tokens`` rows refilled by half (as
:class:`~sae_circuits.train.activations.ActivationStore`), so memory is the buffer plus one shard,
never the cache. Every rank runs the same seeded stream and serves its own rows
``[r * b / w, (r + 1) * b / w)`` of each global batch of ``b``: the ranks together see exactly the
batches of one process. (Each rank reads every shard; on one node the page cache shares them, and
reading is cheap next to the dictionary's step.)

Why safetensors rather than Arrow/Parquet: it is already a dependency (SAE weights use it), loads
no code (no pickle), maps the file and reads only the tensors asked for (a cache of several hooks
trains one without reading the others), and a shard is exactly what the trainer consumes: dense
``[rows, d]`` tensors with no columnar conversion. Arrow would add a dependency for row-group
features this access pattern (whole shards, shuffled in memory) does not use.

Stored dtype: ``float32`` by default (what the trainer computes in); ``dtype=torch.bfloat16`` halves
the disk for large models at the cost of rounding the activations. Rows are converted to
float32 when read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_circuits._digest import weights_digest
from sae_circuits._files import _atomic_files, atomic_write_text
from sae_circuits.train.activations import ActivationBatch, ActivationStore, Rows, shuffle_buffer

_FORMAT = "sae_circuits.activation_cache"
_VERSION = 1
_MANIFEST = "manifest.json"


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Fingerprint:
    """What a cache was computed from; a stale cache is refused by comparing these fields.

    >>> from sae_circuits.train import Fingerprint
    >>> fp = Fingerprint.of(model, tokens, ["blocks.0.hook_resid_post"])
    >>> fp.hook_names, fp.n_sequences == tokens.shape[0], len(fp.digest)
    (('blocks.0.hook_resid_post',), True, 16)
    """

    model_name: str | None
    """``model.cfg.model_name`` (for messages; the hashes decide)."""
    model_config: str
    """Hash of the model's config (``model.cfg`` without its device)."""
    weights: str
    """Digest of every parameter's name, shape, dtype and a strided sample of its entries
    (cheap on any model; catches another checkpoint or a fine-tune, not a single edited weight)."""
    hook_names: tuple[str, ...]
    """The hooks cached, sorted."""
    tokens: str
    """Hash of the token ids (and their shape)."""
    n_sequences: int
    """Sequences (rows of the token tensor)."""
    context: int
    """Tokens per sequence."""
    skip_first_position: bool
    """Whether position 0 of every sequence was dropped."""

    @classmethod
    def of(
        cls,
        model: nn.Module,
        tokens: Int[Tensor, "n_seq seq"],
        hook_names: str | Sequence[str],
        *,
        skip_first_position: bool = True,
    ) -> Fingerprint:
        """The fingerprint of caching ``hook_names`` of ``model`` over ``tokens``."""
        hooks = (hook_names,) if isinstance(hook_names, str) else tuple(hook_names)
        cfg = getattr(model, "cfg", None)
        items = {k: str(v) for k, v in sorted(vars(cfg).items())} if cfg is not None else {}
        items = {k: v for k, v in items.items() if "device" not in k and " at 0x" not in v}
        ids = tokens.detach().long().cpu().contiguous()
        return cls(
            model_name=getattr(cfg, "model_name", None),
            model_config=_sha(json.dumps(items, sort_keys=True).encode(), type(model).__name__.encode()),
            weights=weights_digest(model.named_parameters()),
            hook_names=tuple(sorted(set(hooks))),
            tokens=_sha(str(tuple(ids.shape)).encode(), ids.numpy().tobytes()),
            n_sequences=int(ids.shape[0]),
            context=int(ids.shape[1]),
            skip_first_position=skip_first_position,
        )

    @property
    def digest(self) -> str:
        """One hash of every field."""
        return _sha(json.dumps(asdict(self), sort_keys=True).encode())

    def describe(self) -> str:
        """The fingerprint in words, for error messages."""
        return (
            f"model {self.model_name!r} (config {self.model_config}, weights {self.weights}), hooks "
            f"{list(self.hook_names)}, tokens {self.tokens} ({self.n_sequences} x {self.context}), "
            f"skip_first_position={self.skip_first_position}"
        )

    def differences(self, expected: Fingerprint) -> list[str]:
        """The fields where this (a cache's) fingerprint does not serve ``expected``: every field
        must be equal, except that the cache may hold more hooks than ``expected`` asks for."""
        found = []
        for field in fields(self):
            mine, theirs = getattr(self, field.name), getattr(expected, field.name)
            if field.name == "hook_names":
                if not set(theirs) <= set(mine):
                    found.append(f"hooks {sorted(set(theirs) - set(mine))} are not cached")
            elif field.name != "model_name" and mine != theirs:
                found.append(f"{field.name}: {mine} in the cache, {theirs} asked")
        return found


class CacheManifest(NamedTuple):
    """What ``manifest.json`` says about a finished cache."""

    directory: Path
    """The cache's directory."""
    fingerprint: Fingerprint
    """What the activations were computed from."""
    widths: dict[str, int]
    """Hook name -> activation width ``d``."""
    dtype: str
    """Stored dtype (``float32`` unless asked otherwise); rows are read back as float32."""
    shards: list[tuple[str, int]]
    """``(file name, rows)`` per shard, in write order."""

    @property
    def n_tokens(self) -> int:
        """Activation rows in the cache (tokens, less position 0 of each sequence if skipped)."""
        return sum(rows for _, rows in self.shards)

    def to_json(self) -> str:
        """The manifest's text."""
        return json.dumps(
            {
                "format": _FORMAT, "version": _VERSION, "fingerprint": asdict(self.fingerprint),
                "digest": self.fingerprint.digest, "widths": self.widths, "dtype": self.dtype,
                "shards": [{"file": f, "rows": r} for f, r in self.shards], "n_tokens": self.n_tokens,
            },
            indent=1,
        )  # fmt: skip


def read_manifest(directory: str | os.PathLike[str]) -> CacheManifest:
    """The manifest of the finished cache in ``directory``; clear errors for a missing directory, an
    unfinished cache (no manifest) and a manifest of another format.

    >>> from sae_circuits.train import read_manifest
    >>> read_manifest("no/such/cache")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no activation cache at no/such/cache: the directory does not exist
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"no activation cache at {folder}: the directory does not exist")
    path = folder / _MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"the activation cache at {folder} is unfinished: it has no {_MANIFEST} (the run that wrote "
            f"it stopped before the end); run cache_activations on it again to complete it"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != _FORMAT or raw.get("version") != _VERSION:
            raise ValueError(f"format {raw.get('format')!r} version {raw.get('version')!r}")
        fp = raw["fingerprint"]
        fingerprint = Fingerprint(**{**fp, "hook_names": tuple(fp["hook_names"])})
        shards = [(str(s["file"]), int(s["rows"])) for s in raw["shards"]]
        manifest = CacheManifest(folder, fingerprint, {k: int(v) for k, v in raw["widths"].items()},
                                 str(raw["dtype"]), shards)  # fmt: skip
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not an sae_circuits activation-cache manifest ({error})") from None
    missing = [name for name, _ in shards if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the activation cache at {folder} lacks shard files {missing[:3]}")
    return manifest


def cache_activations(
    model: nn.Module,
    tokens: Int[Tensor, "n_seq seq"],
    hook_names: str | Sequence[str],
    directory: str | os.PathLike[str],
    *,
    shard_tokens: int = 65_536,
    model_batch_size: int = 16,
    skip_first_position: bool = True,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    progress: bool = True,
) -> CacheManifest:
    """Run ``model`` over ``tokens`` once and store the activations at ``hook_names`` in
    ``directory`` (the steps and the layout are in the module docstring). Returns the manifest;
    a finished cache of the same fingerprint is returned without running the model.

    >>> from sae_circuits.train import cache_activations
    >>> manifest = cache_activations(model, tokens, "blocks.0.hook_resid_post", "acts", progress=False)
    >>> manifest.widths, manifest.n_tokens == tokens.shape[0] * (tokens.shape[1] - 1)
    ({'blocks.0.hook_resid_post': 128}, True)
    """
    from sae_circuits._model import get_hook_point

    if (
        not isinstance(tokens, Tensor)
        or tokens.ndim != 2
        or tokens.dtype.is_floating_point
        or tokens.numel() == 0
    ):
        raise ValueError("tokens must be a non-empty integer tensor of shape [n_sequences, sequence_length]")
    if shard_tokens <= 0 or model_batch_size <= 0:
        raise ValueError(
            f"shard_tokens={shard_tokens} and model_batch_size={model_batch_size} must be positive"
        )
    hooks = sorted({hook_names} if isinstance(hook_names, str) else set(hook_names))
    for name in hooks:
        get_hook_point(model, name)
    folder = Path(directory)
    fingerprint = Fingerprint.of(model, tokens, hooks, skip_first_position=skip_first_position)
    if (folder / _MANIFEST).is_file():
        existing = read_manifest(folder)
        if existing.fingerprint == fingerprint and existing.dtype == str(dtype).removeprefix("torch."):
            return existing
        if not overwrite:
            raise ValueError(
                f"{folder} already holds an activation cache of {existing.fingerprint.describe()}; "
                f"this run asks for {fingerprint.describe()}; choose another directory or pass overwrite=True"
            )
        (folder / _MANIFEST).unlink()  # from here on the directory is an unfinished cache
    folder.mkdir(parents=True, exist_ok=True)

    # Step 2: a fixed permutation of the sequences, cut into shards of ~shard_tokens rows.
    store = ActivationStore(
        model, tokens.long(), hooks, batch_size=1, buffer_tokens=2,
        model_batch_size=model_batch_size, skip_first_position=skip_first_position,
    )  # fmt: skip
    per_sequence = tokens.shape[1] - store.first
    order = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(0))
    step = max(1, shard_tokens // per_sequence)
    groups = [order[i : i + step] for i in range(0, len(order), step)]

    shards, widths = [], {}
    for index, group in enumerate(tqdm(groups, disable=not progress, desc="cache activations")):
        name = f"shard_{index:05d}.safetensors"
        # which sequences a shard holds depends on shard_tokens, and its values on dtype: a shard
        # of an interrupted run is reused only when both match, not just its index and row count
        meta = {
            "fingerprint": fingerprint.digest, "shard": str(index),
            "sequences": _sha(group.numpy().astype("<i8").tobytes()),
            "dtype": str(dtype).removeprefix("torch."),
        }  # fmt: skip
        done = _finished_shard(folder / name, meta, len(group) * per_sequence, hooks)
        if done is None:  # Step 3: run the model and write the shard atomically
            parts = [
                store._activations(group[i : i + model_batch_size])
                for i in range(0, len(group), model_batch_size)
            ]
            tensors = {h: torch.cat([p[h] for p in parts]).to(dtype).contiguous() for h in hooks}
            with _atomic_files(folder) as write:
                write(name, _shard_writer(tensors, meta))
            done = {h: int(t.shape[1]) for h, t in tensors.items()}
        widths = done
        shards.append((name, len(group) * per_sequence))
    for stale in sorted(folder.glob("shard_*.safetensors"))[len(shards) :]:
        stale.unlink()  # shards of an earlier, larger cache in the same directory
    manifest = CacheManifest(folder, fingerprint, widths, str(dtype).removeprefix("torch."), shards)
    atomic_write_text(folder / _MANIFEST, manifest.to_json())  # Step 4: last
    return manifest


def _shard_writer(tensors: dict[str, Tensor], metadata: dict[str, str]) -> Callable[[str], None]:
    def write(path: str) -> None:
        save_file(tensors, path, metadata=metadata)

    return write


def _finished_shard(
    path: Path, expected: dict[str, str], rows: int, hooks: list[str]
) -> dict[str, int] | None:
    """The widths of the shard at ``path`` if an earlier run of the same request completed it:
    every entry of ``expected`` (fingerprint, index, the sequences it holds, dtype) in its metadata."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as shard:
            meta = shard.metadata() or {}
            if any(meta.get(key) != value for key, value in expected.items()):
                return None
            shapes = {h: shard.get_slice(h).get_shape() for h in hooks}
    except Exception:  # a foreign or damaged file: rewrite it
        return None
    if any(shape[0] != rows or len(shape) != 2 for shape in shapes.values()):
        return None
    return {h: int(shape[1]) for h, shape in shapes.items()}


class CachedActivations:
    """Serves shuffled batches from a cache written by :func:`cache_activations` (the interface of
    :class:`~sae_circuits.train.activations.ActivationStore`, so the trainer takes either).

    ``batch_size`` is the global batch; this rank serves its ``batch_size // world_size`` rows
    ``[rank * b / w, (rank + 1) * b / w)`` of each (the attribute ``batch_size`` is that share).
    The same ``seed`` gives the same global batches on every rank and run.
    ``expect_fingerprint`` (:meth:`Fingerprint.of` the model and tokens of this run) refuses a
    cache made from anything else.

    >>> from sae_circuits.train import CachedActivations, cache_activations
    >>> _ = cache_activations(model, tokens, "blocks.0.hook_resid_post", "acts", progress=False)
    >>> store = CachedActivations("acts", "blocks.0.hook_resid_post", batch_size=8, buffer_tokens=32)
    >>> next(iter(store))["blocks.0.hook_resid_post"].shape
    torch.Size([8, 128])
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        hook_names: str | Sequence[str] | None = None,
        *,
        batch_size: int,
        buffer_tokens: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        expect_fingerprint: Fingerprint | None = None,
    ) -> None:
        self.manifest = read_manifest(directory)
        fp, where = self.manifest.fingerprint, self.manifest.directory
        wanted = self.manifest.fingerprint.hook_names if hook_names is None else hook_names
        self.hook_names = sorted({wanted} if isinstance(wanted, str) else set(wanted))
        missing = [h for h in self.hook_names if h not in self.manifest.widths]
        if missing:
            raise ValueError(
                f"hooks {missing} are not in the activation cache at {where} (it holds {list(fp.hook_names)})"
            )
        if expect_fingerprint is not None and (problems := fp.differences(expect_fingerprint)):
            raise ValueError(
                f"the activation cache at {where} was made from {fp.describe()}; this run asks for "
                f"{expect_fingerprint.describe()}: {'; '.join(problems)}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not one of world_size={world_size} ranks")
        if batch_size <= 0 or batch_size % world_size:
            raise ValueError(
                f"the global batch_size={batch_size} must be a positive multiple of world_size={world_size} "
                f"(every rank takes an equal share of each batch)"
            )
        if buffer_tokens < 2 * batch_size:
            raise ValueError(
                f"buffer_tokens={buffer_tokens} must be at least 2 * batch_size={2 * batch_size}"
            )
        self.global_batch_size, self.buffer_tokens, self.seed = batch_size, buffer_tokens, seed
        self.rank, self.world_size = rank, world_size
        self.batch_size = batch_size // world_size
        self._samples: dict[int, ActivationBatch] = {}
        self.epochs = 0

    def _read(self, shard: int) -> ActivationBatch:
        name = self.manifest.shards[shard][0]
        with safe_open(str(self.manifest.directory / name), framework="pt") as file:
            return {h: file.get_tensor(h).float() for h in self.hook_names}

    def _shards(self, generator: torch.Generator, *, count_epochs: bool) -> Iterator[ActivationBatch]:
        """Every shard in a seeded order, epoch after epoch."""
        while True:
            for shard in torch.randperm(len(self.manifest.shards), generator=generator).tolist():
                yield self._read(shard)
            self.epochs += count_epochs

    def sample(self, n: int) -> ActivationBatch:
        """``n`` activations for initialisation statistics: the first rows of the shards in a fixed
        seeded order, the same on every call and every rank (the training stream is not moved)."""
        if n not in self._samples:
            if n > self.manifest.n_tokens:
                raise ValueError(
                    f"the cache holds {self.manifest.n_tokens} activations, "
                    f"fewer than the {n} needed to initialise"
                )
            generator = torch.Generator().manual_seed(self.seed + 1)
            self._samples = {n: Rows(self._shards(generator, count_epochs=False), self.hook_names).take(n)}
        return self._samples[n]

    def __iter__(self) -> Iterator[ActivationBatch]:
        generator = torch.Generator().manual_seed(self.seed)
        rows = Rows(self._shards(generator, count_epochs=True), self.hook_names)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)  # of each global batch
        return shuffle_buffer(rows, self.buffer_tokens, self.global_batch_size, generator, mine)
