"""The embedded default: small models and their dictionaries, shipped inside the package.

>>> model, saes = sc.zoo.load("tiny")
>>> model.cfg.n_layers, [sae.cfg.hook_name for sae in saes][:2]
(4, ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'])
>>> transcoders = sc.zoo.load_saes("tiny", kind="transcoder")
>>> transcoders[0].cfg.hook_name, transcoders[0].cfg.site  # reads ln2's output, writes the MLP's
('blocks.0.ln2.hook_normalized', 'blocks.0.hook_mlp_out')

Everything loads from files inside the installed package; nothing touches the network. The
weights are rebuilt by the build pipeline in :mod:`sae_circuits.recipes` (see ``docs/zoo.md``); the
model loader is :mod:`sae_circuits.zoo.loader`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from sae_circuits.sae import SAE
from sae_circuits.zoo.loader import ModelKind, load_hf_gpt2, load_hf_model

ROOT = Path(__file__).resolve().parent
DictionaryKind = Literal["resid", "transcoder"]
_SUBDIRS = {"resid": "saes", "transcoder": "transcoders"}

__all__ = ["ROOT", "load", "load_hf_model", "load_model", "load_saes", "model_path", "names"]


def names() -> list[str]:
    """Names of the embedded models installed with the package."""
    return sorted(p.name for p in ROOT.iterdir() if (p / "config.json").is_file())


def _is_folder(name: object) -> bool:
    return isinstance(name, (str, Path)) and Path(name, "config.json").is_file()


def model_path(name: str = "tiny") -> Path:
    """Folder of the embedded model ``name`` (Hugging Face layout)."""
    if not isinstance(name, str) or name not in names():
        hint = (
            "; for a Hugging Face model folder use sc.zoo.load_hf_model(folder)" if _is_folder(name) else ""
        )
        raise ValueError(f"unknown embedded model {name!r}; installed: {names() or 'none'}{hint}")
    return ROOT / name


def load_model(name: str = "tiny", kind: ModelKind | None = None, device: str | torch.device = "cpu") -> Any:
    """The embedded model as a ``HookedTransformer`` (``kind="hooked"``) or ``TransformerBridge``
    (``kind="bridge"``); by default the former on TransformerLens 3.x and the latter on 4.x, which
    has no ``HookedTransformer``."""
    return load_hf_gpt2(model_path(name), kind, device=device)


def load_saes(
    name: str = "tiny", kind: DictionaryKind = "resid", device: str | torch.device = "cpu"
) -> list[SAE]:
    """The embedded model's dictionaries, in layer order: residual-stream SAEs after every block
    (``kind="resid"``) or per-layer MLP transcoders (``kind="transcoder"``)."""
    if kind not in _SUBDIRS:
        raise ValueError(f"kind={kind!r}: expected 'resid' or 'transcoder'")
    folder = model_path(name) / _SUBDIRS[kind]
    dirs = (
        sorted((p for p in folder.glob("*") if (p / "cfg.json").is_file()), key=_layer_of)
        if folder.is_dir()
        else []
    )
    if not dirs:
        raise FileNotFoundError(
            f"embedded model {name!r} has no {kind} dictionaries in {folder}; rebuild them with "
            "`python -m sae_circuits.recipes.build dictionaries`"
        )
    return [SAE.load(d, device=device) for d in dirs]


def load(
    name: str = "tiny", kind: ModelKind | None = None, device: str | torch.device = "cpu"
) -> tuple[Any, list[SAE]]:
    """``(model, residual SAEs)`` of the embedded model ``name``; nothing is spliced yet."""
    return load_model(name, kind, device), load_saes(name, "resid", device)


def _layer_of(path: Path) -> int:
    digits = "".join(ch if ch.isdigit() else " " for ch in path.name).split()
    return int(digits[0]) if digits else 0
