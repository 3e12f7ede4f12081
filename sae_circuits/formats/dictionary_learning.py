"""dictionary_learning (saprmarks; Sparse Feature Circuits) autoencoders saved as safetensors.

Their ``AutoEncoder`` state dict: ``encoder.weight [d_sae, d_in]``, ``encoder.bias [d_sae]``,
``decoder.weight [d_in, d_sae]`` (no decoder bias) and ``bias [d_in]``, computing
``f = ReLU(encoder(x - bias))`` and ``x_hat = decoder(f) + bias``: this library's ``standard``
SAE with ``W_enc = encoder.weight^T``, ``W_dec = decoder.weight^T``, ``b_enc = encoder.bias``,
``b_dec = bias`` and ``apply_b_dec_to_input=True``. Their ``AutoEncoderTopK`` (``b_dec`` instead
of ``bias``, an integer buffer ``k``, and a ``threshold`` buffer used only by their optional
threshold inference, ignored here) becomes a ``topk`` SAE. Their ``BatchTopKSAE`` saves the same
keys, but its inference keeps ``relu(h)`` above the learned scalar ``threshold`` (its ``encode``
default), not a per-token top k: a file whose ``config.json`` names ``dict_class: BatchTopKSAE``
(or ``trainer_class: BatchTopKTrainer``) becomes a ``jumprelu`` SAE with that threshold for every
feature. The released checkpoints are ``ae.pt``
files (pickles), which are refused: convert them once to ``ae.safetensors`` with the same keys
(``safetensors.torch.save_file(torch.load("ae.pt"), "ae.safetensors")`` where you trust the file).
An optional ``config.json`` beside the weights (theirs: ``{"trainer": {"k": ..., "lm_name": ...,
"layer": ...}}``) fills in ``k`` and the metadata; the hook is the caller's (their submodule names
are nnsight module paths, not TransformerLens hooks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sae_circuits.formats import _common
from sae_circuits.io import SAEFormatError, SAEState

NAME = "dictionary_learning"
LAYOUT = (
    "a dictionary_learning AutoEncoder safetensors file with encoder.weight [d_sae, d_in], "
    "encoder.bias [d_sae], decoder.weight [d_in, d_sae] and bias [d_in] (or b_dec and k for AutoEncoderTopK)"
)
FILENAME = "ae.safetensors"


def detect(path: Path) -> bool:
    """An ``ae.safetensors`` / ``ae.pt`` file, or a folder holding one."""
    if path.is_dir():
        return (path / FILENAME).is_file() or (path / "ae.pt").is_file()
    return path.name in (FILENAME, "ae.pt")


def read(
    path: Path,
    *,
    hook_name: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> list[SAEState]:
    """The autoencoder in ``path`` (an ``ae.safetensors`` file or its folder)."""
    file = path / FILENAME if path.is_dir() else path
    if path.is_dir() and not file.is_file() and (path / "ae.pt").is_file():
        file = path / "ae.pt"
    if file.suffix != ".safetensors":
        raise SAEFormatError(
            f"{file}: pickled checkpoints are never loaded; convert it to {FILENAME} (same keys); "
            f"expected {LAYOUT}"
        )
    if hook_name is None:
        raise ValueError(f"{file}: a dictionary_learning file names no TransformerLens hook; pass hook_name=")
    raw = _common.read_safetensors(file, LAYOUT)
    config = _read_config(file.parent / "config.json")
    trainer: dict[str, Any] = config["trainer"] if isinstance(config.get("trainer"), dict) else {}
    topk = "b_dec" in raw
    bias = "b_dec" if topk else "bias"
    _common.need_tensors(raw, ["encoder.weight", "encoder.bias", "decoder.weight", bias], file, LAYOUT)
    d_sae, d_in = _common.dim(raw["encoder.weight"], 2, "encoder.weight", file, LAYOUT)
    _common.dim(raw["decoder.weight"], 2, "decoder.weight", file, LAYOUT)
    tensors = {
        "W_enc": raw.pop("encoder.weight").T.contiguous(),
        "b_enc": raw.pop("encoder.bias"),
        "W_dec": raw.pop("decoder.weight").T.contiguous(),
        "b_dec": raw.pop(bias),
    }
    k_tensor = raw.pop("k", None)
    threshold = raw.pop("threshold", None) if topk else None
    batch_topk = topk and (
        trainer.get("dict_class") == "BatchTopKSAE" or trainer.get("trainer_class") == "BatchTopKTrainer"
    )
    if batch_topk:
        if threshold is None or threshold.numel() != 1:
            raise SAEFormatError(
                f"{file}: config.json names a BatchTopKSAE, whose inference needs its scalar "
                f"'threshold' tensor; the file has {'none' if threshold is None else list(threshold.shape)}"
            )
        tensors["threshold"] = threshold.reshape(()).expand(d_sae).to(tensors["W_enc"].dtype).clone()
    if raw:
        raise SAEFormatError(f"{file}: unexpected tensors {sorted(raw)}; expected {LAYOUT}")
    k = None
    if topk:
        k = trainer.get("k") if k_tensor is None else _scalar(k_tensor, file)
        if not isinstance(k, int) or isinstance(k, bool):
            raise SAEFormatError(
                f"{file}: a TopK autoencoder needs k (a 'k' tensor or trainer.k in config.json)"
            )
    metadata: dict[str, Any] = {"source_format": NAME}
    if batch_topk:
        metadata["batch_topk_k"] = k  # the k it was trained with; inference is by threshold
    for key in ("lm_name", "layer", "submodule_name", "dict_class"):
        if isinstance(trainer.get(key), (str, int)):
            metadata[key] = trainer[key]
    return [
        _common.state(
            file,
            tensors,
            to_device=device,
            to_dtype=dtype,
            architecture="jumprelu" if batch_topk else "topk" if topk else "standard",
            d_in=d_in,
            d_sae=d_sae,
            k=None if batch_topk else k,
            hook_name=hook_name,
            apply_b_dec_to_input=True,
            dtype=_common.file_dtype(tensors, "W_enc", file),
            metadata=metadata,
        )
    ]


def _scalar(tensor: torch.Tensor, file: Path) -> int:
    if tensor.numel() != 1 or tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise SAEFormatError(
            f"{file}: 'k' must be one integer, got {tensor.dtype} of shape {list(tensor.shape)}"
        )
    return int(tensor.item())


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError) as err:
        raise SAEFormatError(f"{path}: malformed JSON ({err})") from err
    if not isinstance(raw, dict):
        raise SAEFormatError(f"{path}: expected a JSON object")
    return raw
