"""SAELens pretrained releases by ``(release, sae_id)``, read from the local Hugging Face cache.

SAELens's ``pretrained_saes.yaml`` maps a release to a repository (``repo_id``), a
``conversion_func`` and, per ``sae_id``, a folder in that repository. It is read from the installed
``sae_lens`` package's files without importing ``sae_lens`` (or from ``directory=``, a YAML file of
the same shape). Without ``sae_lens`` (e.g. with TransformerLens 4), pass ``repo_id=`` and
``path=`` (the folder in the repository) instead of a release name. The files come from the hub
cache only (:mod:`sae_circuits.formats._hf_cache`, ``HF_HUB_OFFLINE=1`` semantics); a missing file
is an :class:`~sae_circuits.io.SAEFormatError` naming it.

Releases read: ``conversion_func: null`` (SAELens's folder layout, :mod:`sae_circuits.io`) and
``gemma_2`` (Gemma Scope ``params.npz``, :mod:`sae_circuits.formats.gemma_scope`, the hook from
the repository and folder names as SAELens does; Gemma Scope embedding SAEs are not). Other
conversions are refused by name.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sae_circuits import io
from sae_circuits.formats import _hf_cache, gemma_scope
from sae_circuits.io import SAEFormatError, SAEState
from sae_circuits.sae import SAE

SUPPORTED_CONVERSIONS = (None, "gemma_2")


def sae_lens_directory_file() -> Path | None:
    """The installed ``sae_lens/pretrained_saes.yaml`` (found without importing sae_lens), or None."""
    try:
        spec = importlib.util.find_spec("sae_lens")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "pretrained_saes.yaml"
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def read_directory(path: Path) -> dict[str, dict[str, Any]]:
    """release -> ``{"repo_id", "conversion_func", "model", "saes": {sae_id: entry}}``."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError as err:  # pragma: no cover - PyYAML comes with transformers
        raise SAEFormatError(f"{path}: reading it needs PyYAML (pip install pyyaml)") from err
    try:
        with path.open("r", encoding="utf-8") as f:
            raw = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise SAEFormatError(f"{path}: not a readable releases file ({err})") from err
    if not isinstance(raw, dict):
        raise SAEFormatError(f"{path}: expected a mapping of releases")
    out: dict[str, dict[str, Any]] = {}
    for release, value in raw.items():
        if not isinstance(value, dict) or not isinstance(value.get("repo_id"), str):
            raise SAEFormatError(f"{path}: release {release!r} has no repo_id")
        saes = {}
        for entry in value.get("saes") or []:
            if isinstance(entry, dict) and "id" in entry and "path" in entry:
                saes[str(entry["id"])] = entry
        out[str(release)] = {**value, "saes": saes}
    return out


def resolve(
    release: str, sae_id: str, directory: str | os.PathLike[str] | None = None
) -> tuple[str, str, str | None, dict[str, Any]]:
    """``(repo_id, folder, conversion_func, entry)`` of a release's SAE."""
    file = Path(directory) if directory is not None else sae_lens_directory_file()
    if file is None:
        raise ValueError(
            f"release {release!r}: release names are looked up in sae_lens's pretrained_saes.yaml, and "
            "sae_lens is not installed; pass repo_id= and path= (the folder in the repository) instead, "
            "or directory= (a pretrained_saes.yaml)"
        )
    releases = read_directory(file)
    if release not in releases:
        raise ValueError(
            f"{file}: unknown release {release!r}; pass repo_id= and path= for other repositories"
        )
    info = releases[release]
    if sae_id not in info["saes"]:
        some = sorted(info["saes"])[:5]
        raise ValueError(f"{file}: release {release!r} has no sae_id {sae_id!r} (e.g. {some})")
    entry = dict(info["saes"][sae_id])
    overrides = info.get("config_overrides")
    if isinstance(overrides, dict):  # e.g. model_from_pretrained_kwargs: kept with the metadata
        entry["config_overrides"] = overrides
    return info["repo_id"], str(entry["path"]), info.get("conversion_func"), entry


def read(
    release: str | None = None,
    sae_id: str | None = None,
    *,
    repo_id: str | None = None,
    path: str | None = None,
    conversion: str | None = None,
    revision: str = "main",
    cache_dir: str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
    hook_name: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> SAEState:
    """The validated state of a release's SAE (see :func:`load_pretrained`)."""
    metadata: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    entry: dict[str, Any] = {}
    if repo_id is None:
        if release is None or sae_id is None:
            raise ValueError("pass (release, sae_id), or repo_id= and path=")
        repo_id, path, conversion, entry = resolve(release, sae_id, directory)
        metadata = {"release": release, "sae_id": sae_id}
        if isinstance(entry.get("neuronpedia"), str):
            metadata["neuronpedia_id"] = entry["neuronpedia"]
        overrides = dict(entry.get("config_overrides", {}))
        metadata.update((key, value) for key, value in overrides.items() if key in io._PRE6_METADATA_KEYS)
    if path is None:
        raise ValueError(
            f"repo_id={repo_id!r}: pass path= (the SAE's folder in the repository; '' for its root)"
        )
    if conversion not in SUPPORTED_CONVERSIONS:
        raise SAEFormatError(
            f"{repo_id}/{path}: SAELens conversion {conversion!r} is not read offline by sae_circuits; "
            f"supported: {SUPPORTED_CONVERSIONS}"
        )
    root = _hf_cache.snapshot(repo_id, revision, cache_dir)
    folder = root / _hf_cache.relative(path) if path.strip("/") else root
    if conversion == "gemma_2":
        file = _hf_cache.cached_file(
            repo_id, f"{path.strip('/')}/{gemma_scope.FILENAME}", revision, cache_dir
        )
        hook = hook_name or gemma_scope.hook_for(repo_id, path)
        meta = {"repo_id": repo_id, **metadata}
        return gemma_scope.read(file, hook_name=hook, device=device, dtype=dtype, metadata=meta)[0]
    for name in (io.CFG_FILENAME, io.WEIGHTS_FILENAME):
        if not (folder / name).is_file():
            raise SAEFormatError(
                f"{folder / name}: {name} of {repo_id!r} ({path or 'root'}) is not in the local Hugging Face "
                f"cache; expected a SAELens folder (cfg.json + {io.WEIGHTS_FILENAME})"
            )
    state = io.read_sae(folder, device=device, dtype=dtype, overrides=overrides)
    cfg = replace(state.cfg, metadata={**state.cfg.metadata, "repo_id": repo_id, **metadata})
    state = state._replace(cfg=cfg)
    factor = entry.get("norm_scaling_factor")
    if cfg.normalize_activations == "expected_average_only_in" and factor is not None:
        state = _fold_norm_scaling(state, factor, f"{repo_id}/{path}")
    return state


def _fold_norm_scaling(state: SAEState, factor: Any, source: str) -> SAEState:
    """The release's ``norm_scaling_factor`` folded into the weights, as SAELens does for an
    ``expected_average_only_in`` SAE (the constant lives in the release list, not in the files):
    ``W_enc * s``, ``W_dec / s``, ``b_dec / s``; the SAE then reads raw activations."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < float("inf"):
        raise SAEFormatError(f"{source}: norm_scaling_factor={factor!r} must be a positive number")
    tensors = dict(state.tensors)
    tensors["W_enc"] = tensors["W_enc"] * factor
    tensors["W_dec"] = tensors["W_dec"] / factor
    tensors["b_dec"] = tensors["b_dec"] / factor
    metadata = {**state.cfg.metadata, "norm_scaling_factor_folded": float(factor)}
    cfg = replace(state.cfg, normalize_activations="none", metadata=metadata)
    return state._replace(cfg=cfg, tensors=tensors)


def load_pretrained(
    release: str | None = None,
    sae_id: str | None = None,
    *,
    repo_id: str | None = None,
    path: str | None = None,
    conversion: str | None = None,
    revision: str = "main",
    cache_dir: str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
    hook_name: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> SAE:
    """A SAELens pretrained SAE, from the local Hugging Face cache only.

    ``load_pretrained("gpt2-small-res-jb", "blocks.8.hook_resid_pre")`` looks the release up in
    sae_lens's ``pretrained_saes.yaml``; ``load_pretrained(repo_id="org/name", path="folder")``
    needs no sae_lens (``conversion="gemma_2"`` for a Gemma Scope folder). ``revision`` is a
    branch, tag or commit of the cached repository; ``cache_dir`` defaults to huggingface_hub's
    (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``); ``hook_name`` overrides
    the hook of a Gemma Scope folder.
    """
    return SAE.from_state(
        read(
            release,
            sae_id,
            repo_id=repo_id,
            path=path,
            conversion=conversion,
            revision=revision,
            cache_dir=cache_dir,
            directory=directory,
            hook_name=hook_name,
            device=device,
            dtype=dtype,
        )
    )
