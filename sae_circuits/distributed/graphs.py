"""Attribution graphs of many prompts, shared out over ranks: :func:`attribute_prompts`.

1. **Check** (every rank): the settings and a fingerprint of the model and its spliced dictionaries
   (names, shapes and a sample of every weight); every rank must hold the same ones and the same
   prompts. A folder that already holds graphs must have been made with the same fingerprint, and
   each of its prompts must be the one at that index now; otherwise a ValueError says what differs.
2. **Start** (rank 0, then a barrier; without a process group, the first rank to find no
   manifest): ``manifest.json`` records the fingerprint, the settings and
   every prompt's hash before any graph is written, so that every graph in the folder is known to
   come from these settings.
3. **Graphs** (every rank): rank ``r`` of ``W`` takes prompts ``i`` with ``i % W == r`` (round robin:
   lengths that trend along the file are spread evenly) and writes ``graph-{i:05d}.json`` atomically
   (``AttributionGraph.save``). A prompt whose file exists is skipped: a write is a rename, so a
   file that exists is whole, and a run killed half-way resumes where it stopped.
4. **Index** (rank 0, after a barrier): ``graph-metadata.json`` (the front end's list of graphs, in
   prompt order) and the final ``manifest.json`` (prompt index -> file and its SHA-256). Nothing in
   them, nor in a graph file, depends on the number of ranks: 1 and N ranks write the same bytes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from sae_circuits._digest import tensor_sample_bytes, weights_digest
from sae_circuits._files import atomic_write_text
from sae_circuits.distributed.ranks import Ranks, barrier, gather, ranks
from sae_circuits.graph import attribute
from sae_circuits.splice import saes_of
from sae_circuits.writers.json_file import GRAPH_METADATA, graph_metadata

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "sae_circuits.sharded_graphs"
VERSION = 1
_NOT_SETTINGS = ("model", "prompt", "progress")


class ShardedGraphs(NamedTuple):
    """What :func:`attribute_prompts` did on this rank."""

    files: list[Path]
    """Every prompt's graph file, in prompt order (other ranks write theirs)."""
    computed: list[int]
    """The prompts this rank attributed."""
    skipped: list[int]
    """This rank's prompts whose graph was already in the folder (a resumed run)."""
    manifest: Path | None
    """``manifest.json`` once the index is written (rank 0, every graph present), else None."""


def graph_file(index: int) -> str:
    """The file name of prompt ``index``'s graph: ``graph-00042.json``."""
    return f"graph-{index:05d}.json"


def attribute_prompts(
    model: Any,
    prompts: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    rank: int | None = None,
    world_size: int | None = None,
    node_threshold: float | None = None,
    edge_threshold: float | None = None,
    **attribute_kwargs: Any,
) -> ShardedGraphs:
    """The attribution graph of each of ``prompts``, written to ``out_dir``, this rank's share
    computed here (see the module docstring for the steps and the files).

    Args:
        model: a model with dictionaries spliced, the same on every rank.
        prompts: the texts, the same list on every rank; prompt ``i`` goes to ``graph-{i:05d}.json``.
        out_dir: the folder (on a file system every rank sees); created if missing.
        rank, world_size: this process's share (default: the process group, else ``RANK`` and
            ``WORLD_SIZE`` as ``torchrun`` sets them, else 0 of 1). Without a process group the
            ranks do not wait for one another; rank 0 writes the index only if every graph is there
            when it is done (run again with one rank to write it: every graph is then skipped).
        node_threshold, edge_threshold: prune each graph (``AttributionGraph.prune``; one given, the
            other takes its default); both None: the full graphs.
        attribute_kwargs: passed to :func:`sc.attribute` (``targets``, ``batch_size``,
            ``max_feature_nodes``, ...). ``progress`` (default True) shows one bar over this
            rank's prompts, on rank 0 only; each graph's own bar stays off.

    >>> with sc.spliced(model, transcoders):
    ...     done = attribute_prompts(model, ["<p>hi</p>", "<b>x</b>"], "graphs", max_feature_nodes=4,
    ...                              batch_size=16)
    >>> [f.name for f in done.files], done.computed, done.manifest.name
    (['graph-00000.json', 'graph-00001.json'], [0, 1], 'manifest.json')
    """
    where = ranks(rank, world_size)
    prompts = _checked_prompts(prompts)
    settings = _settings(attribute_kwargs, node_threshold, edge_threshold)
    show_progress = bool(attribute_kwargs.pop("progress", True))  # one bar over the prompts instead
    attribute_kwargs["progress"] = False
    folder = Path(out_dir)
    stamp = _fingerprint(model, settings)
    prompt_hashes = [hashlib.sha256(p.encode("utf-8")).hexdigest() for p in prompts]
    _check_ranks_agree(where, stamp["fingerprint"], prompt_hashes)
    _check_folder(folder, stamp, prompt_hashes)  # every rank: a bad folder stops them all alike
    folder.mkdir(parents=True, exist_ok=True)
    if where.rank == 0 if where.group else not (folder / MANIFEST).exists():
        # without a process group nothing waits: any rank records the run first (the same bytes)
        _write_manifest(folder, stamp, prompt_hashes, None)
    barrier(where)

    thresholds = {"node_threshold": node_threshold, "edge_threshold": edge_threshold}
    prune = {name: value for name, value in thresholds.items() if value is not None}
    computed, skipped = [], []
    mine = range(where.rank, len(prompts), where.world_size)
    for i in tqdm(
        mine, desc="graphs", unit="prompt", disable=not show_progress or where.rank != 0, leave=False
    ):
        path = folder / graph_file(i)
        if path.is_file():
            skipped.append(i)
            continue
        start = time.perf_counter()
        graph = attribute(model, prompts[i], **attribute_kwargs)
        if prune:
            graph = graph.prune(**prune)
        graph.save(path)
        computed.append(i)
        logger.info("rank %d: prompt %d in %.2fs -> %s", where.rank, i, time.perf_counter() - start, path)
    barrier(where)

    files = [folder / graph_file(i) for i in range(len(prompts))]
    manifest = None
    if where.rank == 0 and all(f.is_file() for f in files):
        listing = graph_metadata(folder, [f.name for f in files])
        text = json.dumps(listing, indent=2, ensure_ascii=True, allow_nan=False)
        atomic_write_text(folder / GRAPH_METADATA, text + "\n")
        manifest = _write_manifest(folder, stamp, prompt_hashes, [_sha256(f) for f in files])
    barrier(where)  # every rank returns once the index is there
    return ShardedGraphs(files, computed, skipped, manifest)


def _checked_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"prompts must be a non-empty list of strings, got {type(prompts).__name__}")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt {i} is {prompt!r}: expected a non-empty string")
    return list(prompts)


def _settings(
    kwargs: dict[str, Any], node_threshold: float | None, edge_threshold: float | None
) -> dict[str, Any]:
    """Everything that shapes a graph, as JSON values: ``sc.attribute``'s arguments (its defaults
    filled in, so that a changed default is a changed setting) and the pruning."""
    parameters = inspect.signature(attribute).parameters
    unknown = sorted(set(kwargs) - set(parameters) | set(kwargs) & {"model", "prompt"})
    if unknown:
        known = [p for p in parameters if p not in _NOT_SETTINGS]
        raise TypeError(f"attribute_prompts: unexpected argument(s) {unknown}; sc.attribute takes {known}")
    settings = {
        name: _plain(kwargs.get(name, p.default))
        for name, p in parameters.items()
        if name not in _NOT_SETTINGS
    }
    settings["node_threshold"], settings["edge_threshold"] = node_threshold, edge_threshold
    return settings


def _plain(value: Any) -> Any:
    """``value`` as JSON: numbers, strings and lists as they are; a tensor by its hash; anything
    else (a Feature, a LogitDirection) by its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return {
            "tensor": list(value.shape),
            "sha256": hashlib.sha256(tensor_sample_bytes(value, None)).hexdigest(),
        }
    return repr(value)


def _fingerprint(model: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """The model (its name and a digest of every weight's name, shape, dtype and evenly spaced
    sample), its spliced dictionaries (site, architecture, width, and the same digest) and the
    settings; ``fingerprint`` hashes them all."""
    saes = saes_of(model)
    named = [(f"model.{n}", t) for n, t in model.state_dict().items()]
    named += [(f"sae.{site}.{n}", t) for site in sorted(saes) for n, t in saes[site].state_dict().items()]
    described = {
        "model": str(getattr(model.cfg, "model_name", "")),
        "dictionaries": {
            site: f"{sae.cfg.architecture} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae}"
            for site, sae in sorted(saes.items())
        },
        "weights_sha256": weights_digest(named),
        "settings": settings,
    }
    text = json.dumps(described, sort_keys=True, ensure_ascii=True)
    return {"fingerprint": hashlib.sha256(text.encode()).hexdigest(), **described}


def _check_ranks_agree(where: Ranks, fingerprint: str, prompt_hashes: list[str]) -> None:
    everyone = gather(where, (fingerprint, hashlib.sha256("".join(prompt_hashes).encode()).hexdigest()))
    differ = [r for r, seen in enumerate(everyone) if seen != everyone[0]]
    if differ:
        raise ValueError(
            f"ranks {differ} hold another model, other settings or other prompts than rank 0: "
            "every rank must get the same ones"
        )


def _check_folder(folder: Path, stamp: dict[str, Any], prompt_hashes: list[str]) -> None:
    """A folder whose graphs were made otherwise is refused, saying what differs."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out_dir {str(folder)!r} is a file, not a folder")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        stray = sorted(folder.glob("graph-*.json")) if folder.is_dir() else []
        if stray:
            raise ValueError(
                f"out_dir {str(folder)!r} holds graph files ({stray[0].name}, ...) but no {MANIFEST}: "
                "they cannot be checked against these settings; use another folder or remove them"
            )
        return
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
        old_fingerprint, old_graphs = old["fingerprint"], old["graphs"]
        assert old.get("format") == FORMAT
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(f"{manifest}: not a manifest of {FORMAT}; use another folder") from None
    if old_fingerprint != stamp["fingerprint"]:
        differences = [
            f"{key}: {old.get('settings', {}).get(key)!r} there, {value!r} now"
            for key, value in stamp["settings"].items()
            if old.get("settings", {}).get(key) != value
        ] + [
            f"{key}: {old.get(key)!r} there, {stamp[key]!r} now"
            for key in ("model", "dictionaries", "weights_sha256")
            if old.get(key) != stamp[key]
        ]
        raise ValueError(
            f"out_dir {str(folder)!r} holds graphs made with other settings or another model "
            f"(fingerprint {old_fingerprint[:12]}, expected {stamp['fingerprint'][:12]}; "
            f"{'; '.join(differences) or 'another format'}); use another folder or these settings"
        )
    listed = set()
    for entry in old_graphs:
        i = entry.get("index") if isinstance(entry, dict) else None
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(prompt_hashes):
            continue  # a prompt the list no longer has: its file stays, unlisted
        listed.add(i)
        if entry.get("prompt_sha256") != prompt_hashes[i]:
            raise ValueError(
                f"prompt {i} is not the prompt its graph in {str(folder)!r} ({graph_file(i)}) was made "
                "from; use another folder, or the same prompts in the same order"
            )
    for i in range(len(prompt_hashes)):  # a file an earlier, longer list left: made from which prompt?
        if i not in listed and (folder / graph_file(i)).is_file():
            raise ValueError(
                f"out_dir {str(folder)!r} holds {graph_file(i)}, which its {MANIFEST} does not list (left by "
                "a longer list of prompts?): it cannot be checked against prompt "
                f"{i}; remove it or use another folder"
            )


def _write_manifest(
    folder: Path, stamp: dict[str, Any], prompt_hashes: list[str], file_hashes: list[str] | None
) -> Path:
    """``manifest.json``: format, fingerprint and what it hashes, and per prompt its hash, its graph
    file and that file's SHA-256 (null until the run is complete)."""
    graphs = [
        {
            "index": i,
            "prompt_sha256": h,
            "file": graph_file(i),
            "sha256": None if file_hashes is None else file_hashes[i],
        }
        for i, h in enumerate(prompt_hashes)
    ]
    body = {
        "format": FORMAT,
        "version": VERSION,
        "complete": file_hashes is not None,
        **stamp,
        "graphs": graphs,
    }
    return atomic_write_text(folder / MANIFEST, json.dumps(body, indent=2, ensure_ascii=True) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
