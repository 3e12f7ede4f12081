"""Gemma Scope's ``params.npz``: a JumpReLU SAE or transcoder as numpy arrays, read without pickle.

Layout (Google DeepMind's release, and circuit-tracer's Gemma transcoder sets): ``W_enc
[d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_enc [d_sae]``, ``b_dec [d_out]``, ``threshold
[d_sae]`` (some files spell the matrices ``w_enc``/``w_dec``; an all-ones ``scaling_factor`` is
ignored). The forward pass is ``h = x W_enc + b_enc``, ``f = ReLU(h) * [h > threshold]``,
``x_hat = f W_dec + b_dec``, with ``b_dec`` *not* subtracted from the input: this library's
``jumprelu`` (``jumprelu_transcoder`` when ``hook_name_out`` is given) with
``apply_b_dec_to_input=False``. The file names no hook, so the caller does (for a release read
through :func:`sae_circuits.formats.pretrained.load_pretrained`, the hook follows the repository
and folder names, as SAELens does). The archive is read with ``numpy.load(allow_pickle=False)``:
an object array is refused, never unpickled.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_circuits.formats import _common
from sae_circuits.io import SAEFormatError, SAEState

NAME = "gemma_scope"
LAYOUT = (
    "a Gemma Scope params.npz with arrays W_enc [d_in, d_sae], W_dec [d_sae, d_out], "
    "b_enc [d_sae], b_dec [d_out], threshold [d_sae]"
)
FILENAME = "params.npz"


def detect(path: Path) -> bool:
    """A ``.npz`` file, or a folder holding ``params.npz``."""
    return path.suffix == ".npz" or (path.is_dir() and (path / FILENAME).is_file())


def read_arrays(path: Path) -> dict[str, torch.Tensor]:
    """The arrays of an ``.npz`` as tensors (``w_`` renamed ``W_``), with no pickle allowed."""
    if not path.is_file():
        raise SAEFormatError(f"{path}: file not found; expected {LAYOUT}")
    out: dict[str, torch.Tensor] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise SAEFormatError(f"{path}: a single .npy array, not an .npz archive; expected {LAYOUT}")
            for key in archive.files:
                array = archive[key]
                if array.dtype.kind != "f":
                    raise SAEFormatError(f"{path}: array {key!r} has dtype {array.dtype}; expected floats")
                name = "W_" + key[2:] if key.startswith("w_") else key
                out[name] = torch.from_numpy(np.ascontiguousarray(array))
    except SAEFormatError:
        raise
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise SAEFormatError(f"{path}: not a readable .npz archive ({err}); expected {LAYOUT}") from err
    return out


def read(
    path: Path,
    *,
    hook_name: str | None = None,
    hook_name_out: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[SAEState]:
    """The one SAE (or transcoder, with ``hook_name_out``) of a ``params.npz`` (or its folder)."""
    file = path / FILENAME if path.is_dir() else path
    if hook_name is None:
        raise ValueError(f"{file}: a Gemma Scope file names no hook; pass hook_name= (and hook_name_out=)")
    tensors = read_arrays(file)
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not torch.all(scale == 1):
        raise SAEFormatError(f"{file}: a non-trivial 'scaling_factor' is not supported")
    _common.need_tensors(tensors, ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"], file, LAYOUT)
    d_in, d_sae = _common.dim(tensors["W_enc"], 2, "W_enc", file, LAYOUT)
    d_out = _common.dim(tensors["W_dec"], 2, "W_dec", file, LAYOUT)[1]
    transcoder = hook_name_out is not None
    return [
        _common.state(
            file,
            tensors,
            to_device=device,
            to_dtype=dtype,
            architecture="jumprelu_transcoder" if transcoder else "jumprelu",
            d_in=d_in,
            d_sae=d_sae,
            d_out=d_out if transcoder else None,
            hook_name=hook_name,
            hook_name_out=hook_name_out,
            apply_b_dec_to_input=False,
            dtype=_common.file_dtype(tensors, "W_enc", file),
            reshape_activations="hook_z" if hook_name.endswith("hook_z") else "none",
            metadata={"source_format": NAME, **(metadata or {})},
        )
    ]


def hook_for(repo_id: str, folder: str) -> str:
    """The hook of a Gemma Scope release folder, from the repository and folder names (SAELens's
    rule: ``res`` -> ``blocks.L.hook_resid_post``, ``mlp`` -> ``blocks.L.hook_mlp_out``, ``att`` ->
    ``blocks.L.attn.hook_z``)."""
    match = re.search(r"layer_(\d+)", folder)
    if match is None:
        raise SAEFormatError(f"{repo_id}/{folder}: no 'layer_N' in the folder name; pass hook_name=")
    layer = int(match.group(1))
    name = repo_id.split("/")[-1]
    for key, hook in (("res", "hook_resid_post"), ("mlp", "hook_mlp_out"), ("att", "attn.hook_z")):
        if f"-{key}" in name:
            return f"blocks.{layer}.{hook}"
    raise SAEFormatError(
        f"{repo_id}/{folder}: cannot tell the hook from the repository name; pass hook_name="
    )
