"""circuit-tracer transcoder sets: ``config.yaml`` + one file per layer, read as this library's
transcoders (one :class:`~sae_circuits.SAE` per layer, in layer order).

The config (YAML; a ``config.json`` with the same keys is read too) has ``model_kind:
transcoder_set``, ``feature_input_hook`` and ``feature_output_hook`` (TransformerLens hook names
below ``blocks.L.``, e.g. ``ln2.hook_normalized`` and ``hook_mlp_out``), optionally
``model_name``, ``scan`` and ``transcoders``: a list of per-layer files (layer ``i`` = entry
``i``), each a path relative to the config, an absolute path or an ``hf://org/name/path`` URI
resolved in the local Hugging Face cache (offline). Without the list, the files are
``layer_0.safetensors``, ``layer_1.safetensors``, ... beside the config (circuit-tracer's own
cache and most released sets). ``cross_layer_transcoder`` sets are refused (one decoder per
target layer is not a single-site transcoder).

A layer file is one of:

* circuit-tracer's safetensors: ``W_enc [d_sae, d_in]`` (transposed relative to SAELens),
  ``W_dec [d_sae, d_out]``, ``b_enc [d_sae]``, ``b_dec [d_out]``, optional
  ``activation_function.threshold [d_sae]`` (JumpReLU) and ``W_skip [d_out, d_in]``; the forward
  pass is ``h = x W_enc^T + b_enc``, ``f = ReLU(h)`` or ``h * [h > threshold]``,
  ``y = f W_dec + b_dec (+ x W_skip^T)``;
* Gemma Scope 2's safetensors: ``w_enc [d_in, d_sae]``, ``w_dec``, ``b_enc``, ``b_dec``,
  ``threshold``, optional ``affine_skip_connection [d_in, d_out]``;
* a Gemma Scope ``.npz`` (:mod:`sae_circuits.formats.gemma_scope`).

The config's ``activation`` is followed as circuit-tracer follows it: ``relu`` makes every layer
ReLU (a threshold tensor in the file is then unused), ``jumprelu`` needs the threshold; TopK sets
(``activation: topk`` or a ``k``) are refused. circuit-tracer's JumpReLU is ``h * [h > threshold]``
and this library's ``ReLU(h) * [h > threshold]``: they agree when every threshold is >= 0, so a
negative threshold is refused (in every layer format, ``.npz`` included).
Hook names become ``blocks.{layer}.{feature_input_hook}`` -> ``blocks.{layer}.{feature_output_hook}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sae_circuits.formats import _common, _hf_cache, gemma_scope
from sae_circuits.io import SAEFormatError, SAEState

NAME = "circuit_tracer"
LAYOUT = (
    "a circuit-tracer transcoder file with W_enc [d_sae, d_in], W_dec [d_sae, d_out], b_enc [d_sae], "
    "b_dec [d_out], optional activation_function.threshold [d_sae] and W_skip [d_out, d_in]"
)
CONFIG_LAYOUT = (
    "a circuit-tracer config (model_kind: transcoder_set, feature_input_hook, feature_output_hook, "
    "optional transcoders: [per-layer paths])"
)
CONFIG_NAMES = ("config.yaml", "config.yml", "config.json")
_MAX_CONFIG_BYTES = 4 * 2**20


def detect(path: Path) -> bool:
    """A circuit-tracer config (it has a ``model_kind``), or a folder holding one."""
    config = _config_path(path)
    if config is None or not config.is_file():
        return False
    try:
        return "model_kind" in config.read_text(encoding="utf-8", errors="replace")[:_MAX_CONFIG_BYTES]
    except OSError:
        return False


def _config_path(path: Path) -> Path | None:
    if path.is_dir():
        return next((path / n for n in CONFIG_NAMES if (path / n).is_file()), None)
    return path if path.suffix in (".yaml", ".yml", ".json") else None


def read_config(path: Path) -> dict[str, Any]:
    """The parsed config (YAML through PyYAML's safe loader, or JSON)."""
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise SAEFormatError(f"{path}: cannot read ({err}); expected {CONFIG_LAYOUT}") from err
    if len(data) > _MAX_CONFIG_BYTES:
        raise SAEFormatError(f"{path}: larger than {_MAX_CONFIG_BYTES} bytes; not a transcoder-set config")
    try:
        text = data.decode("utf-8-sig")
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError as err:  # pragma: no cover - PyYAML comes with transformers
                raise SAEFormatError(f"{path}: reading YAML needs PyYAML (pip install pyyaml)") from err
            raw = yaml.safe_load(text)
    except SAEFormatError:
        raise
    except Exception as err:  # yaml.YAMLError, JSONDecodeError, UnicodeDecodeError, RecursionError
        raise SAEFormatError(f"{path}: malformed config ({err}); expected {CONFIG_LAYOUT}") from err
    if not isinstance(raw, dict):
        raise SAEFormatError(
            f"{path}: expected a mapping, got {type(raw).__name__}; expected {CONFIG_LAYOUT}"
        )
    return raw


def read(
    path: Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    cache_dir: str | None = None,
) -> list[SAEState]:
    """Every layer's transcoder of the set whose config is ``path`` (or is in the folder ``path``)."""
    config_path = _config_path(path)
    if config_path is None or not config_path.is_file():
        raise SAEFormatError(f"{path}: no {' / '.join(CONFIG_NAMES)}; expected {CONFIG_LAYOUT}")
    config = read_config(config_path)
    kind = config.get("model_kind")
    if kind != "transcoder_set":
        raise SAEFormatError(
            f"{config_path}: model_kind={kind!r} is not supported; expected 'transcoder_set' "
            "(cross-layer transcoders are not read)"
        )
    hooks = {}
    for key in ("feature_input_hook", "feature_output_hook"):
        value = config.get(key)
        if not isinstance(value, str) or not value:
            raise SAEFormatError(
                f"{config_path}: {key}={value!r} must be a hook name; expected {CONFIG_LAYOUT}"
            )
        hooks[key] = value
    activation = _activation(config, config_path)
    files = _layer_files(config_path, config, cache_dir)
    metadata = {key: config[key] for key in ("model_name", "scan") if isinstance(config.get(key), str)}
    states = []
    for layer, file in enumerate(files):
        hook_in = _hook(hooks["feature_input_hook"], layer)
        hook_out = _hook(hooks["feature_output_hook"], layer)
        meta = {"source_format": NAME, "layer": layer, **metadata}
        if file.suffix == ".npz":
            if activation == "relu":
                raise SAEFormatError(
                    f"{config_path}: activation='relu' but {file} is a Gemma Scope JumpReLU file"
                )
            read = gemma_scope.read(
                file, hook_name=hook_in, hook_name_out=hook_out, device=device, dtype=dtype, metadata=meta
            )
            for state in read:
                _check_threshold(state.tensors["threshold"], file)
            states += read
        else:
            states.append(_read_layer(file, hook_in, hook_out, device, dtype, meta, activation))
    return states


def _activation(config: dict[str, Any], config_path: Path) -> str | None:
    """The config's ``activation`` (circuit-tracer passes it and ``k`` to every layer): ``None``
    (from the files: JumpReLU with a threshold tensor, else ReLU), ``"relu"`` or ``"jumprelu"``.
    TopK sets are refused: circuit-tracer's keeps the top ``k`` raw pre-activations, no ReLU, which
    no architecture here computes."""
    activation, k = config.get("activation"), config.get("k")
    if activation in ("topk", "top_k") or k is not None:
        raise SAEFormatError(
            f"{config_path}: activation={activation!r}, k={k!r}: circuit-tracer's TopK transcoders "
            "(the top k raw pre-activations, no ReLU) are not read"
        )
    if activation not in (None, "relu", "jumprelu"):
        raise SAEFormatError(
            f"{config_path}: activation={activation!r}; expected 'relu', 'jumprelu' or none (from the files)"
        )
    return activation


def _check_threshold(threshold: torch.Tensor, file: Path) -> None:
    if bool((threshold < 0).any()):
        raise SAEFormatError(
            f"{file}: negative JumpReLU thresholds; circuit-tracer's h*[h>t] and ReLU(h)*[h>t] differ there"
        )


def _hook(name: str, layer: int) -> str:
    if "{layer}" in name:
        return name.replace("{layer}", str(layer))
    return name if name.startswith("blocks.") else f"blocks.{layer}.{name}"


def _layer_files(config_path: Path, config: dict[str, Any], cache_dir: str | None) -> list[Path]:
    folder = config_path.parent
    listed = config.get("transcoders")
    if listed is None:
        found = {}
        for file in folder.glob("layer_*.safetensors"):
            index = file.stem.removeprefix("layer_")
            if index.isdigit():
                found[int(index)] = file
        if not found:
            raise SAEFormatError(f"{folder}: no layer_<i>.safetensors files beside {config_path.name}")
        gaps = sorted(set(range(max(found) + 1)) - set(found))
        if gaps:
            raise SAEFormatError(f"{folder}: layer_{gaps[0]}.safetensors is missing (layers 0..{max(found)})")
        return [found[i] for i in range(len(found))]
    if not isinstance(listed, list) or not listed or not all(isinstance(p, str) for p in listed):
        raise SAEFormatError(f"{config_path}: 'transcoders' must be a non-empty list of paths")
    files = []
    for entry in listed:
        if entry.startswith("hf://"):
            repo_id, inside, revision = _hf_cache.parse_hf_uri(entry)
            files.append(_hf_cache.cached_file(repo_id, inside, revision, cache_dir))
        else:
            file = folder / entry
            if not file.is_file():
                raise SAEFormatError(f"{file}: listed in {config_path} but not found; expected {LAYOUT}")
            files.append(file)
    return files


def _read_layer(
    file: Path,
    hook_in: str,
    hook_out: str,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    metadata: dict[str, Any],
    activation: str | None = None,
) -> SAEState:
    raw = _common.read_safetensors(file, LAYOUT)
    if "w_enc" in raw:  # Gemma Scope 2: SAELens orientation, lower-case names
        _common.need_tensors(raw, ["w_enc", "w_dec", "b_enc", "b_dec", "threshold"], file, LAYOUT)
        tensors = {
            "W_enc": raw.pop("w_enc"),
            "W_dec": raw.pop("w_dec"),
            "threshold": raw.pop("threshold"),
        }
        if "affine_skip_connection" in raw:
            tensors["W_skip"] = raw.pop("affine_skip_connection").T.contiguous()
    else:
        _common.need_tensors(raw, ["W_enc", "W_dec", "b_enc", "b_dec"], file, LAYOUT)
        _common.dim(raw["W_enc"], 2, "W_enc", file, LAYOUT)
        tensors = {"W_enc": raw.pop("W_enc").T.contiguous(), "W_dec": raw.pop("W_dec")}
        if "activation_function.threshold" in raw:
            tensors["threshold"] = raw.pop("activation_function.threshold")
        if "W_skip" in raw:
            tensors["W_skip"] = raw.pop("W_skip")
    tensors["b_enc"] = raw.pop("b_enc")
    tensors["b_dec"] = raw.pop("b_dec")
    if activation == "relu":  # the config's activation wins, as in circuit-tracer: the threshold is unused
        tensors.pop("threshold", None)
    elif activation == "jumprelu" and "threshold" not in tensors:
        raise SAEFormatError(f"{file}: the config says activation='jumprelu' but the file has no threshold")
    if raw:
        raise SAEFormatError(f"{file}: unexpected tensors {sorted(raw)}; expected {LAYOUT}")
    d_in, d_sae = _common.dim(tensors["W_enc"], 2, "W_enc", file, LAYOUT)
    d_out = _common.dim(tensors["W_dec"], 2, "W_dec", file, LAYOUT)[1]
    jump = "threshold" in tensors
    if jump:
        _common.file_dtype(tensors, "threshold", file)
        _check_threshold(tensors["threshold"], file)
    architecture = ("jumprelu_" if jump else "") + (
        "skip_transcoder" if "W_skip" in tensors else "transcoder"
    )
    return _common.state(
        file,
        tensors,
        to_device=device,
        to_dtype=dtype,
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        d_out=d_out,
        hook_name=hook_in,
        hook_name_out=hook_out,
        apply_b_dec_to_input=False,
        dtype=_common.file_dtype(tensors, "W_enc", file),
        metadata=metadata,
    )
