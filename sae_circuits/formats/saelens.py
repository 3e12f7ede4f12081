"""SAELens's own folder layout (``cfg.json`` + ``sae_weights.safetensors``), read by
:func:`sae_circuits.io.read_sae`; listed here so that :func:`sae_circuits.formats.load` finds it."""

from __future__ import annotations

from pathlib import Path

import torch

from sae_circuits import io
from sae_circuits.io import SAEFormatError, SAEState

NAME = "saelens"


def detect(path: Path) -> bool:
    """A folder holding ``cfg.json``."""
    return path.is_dir() and (path / io.CFG_FILENAME).is_file()


def read(
    path: Path, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> list[SAEState]:
    """The SAE of the folder ``path``; a missing file is an :class:`SAEFormatError` naming it."""
    for name in (io.CFG_FILENAME, io.WEIGHTS_FILENAME):
        if not (path / name).is_file():
            raise SAEFormatError(
                f"{path / name}: file not found; expected a SAELens folder (cfg.json + {io.WEIGHTS_FILENAME})"
            )
    return [io.read_sae(path, device=device, dtype=dtype)]
