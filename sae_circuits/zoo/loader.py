"""Load a model saved in the Hugging Face layout, offline, as a ``HookedTransformer`` or a
``TransformerBridge`` with the same weights and no processing.

:func:`load_hf_model` takes any causal LM the installed TransformerLens bridge has an adapter for
(GPT-2, Llama, GPT-NeoX, ... : ``model_type`` in ``config.json``); a GPT-2 folder loads as either
kind, any other as the bridge. :func:`load_hf_gpt2` is the GPT-2 path alone.

TransformerLens 4 removed ``HookedTransformer``: there only ``kind="bridge"`` loads, and it is the
default (:func:`default_kind`); on TransformerLens 3.x the default stays ``"hooked"``.

TransformerLens's ``from_pretrained`` only knows official model names (and would ask the hub for
their configs), so the hooked model is built from the local ``config.json`` and converted with
TransformerLens's own GPT-2 weight converter. LayerNorm folding and weight centring are off, so
the hooked model's activations are the Hugging Face model's (and the SAEs, trained on those,
fit both kinds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch

from sae_circuits._compat import ensure_bridge_kv_cache, installed

ModelKind = Literal["hooked", "bridge"]


def transformer_lens_version() -> str:
    """The installed TransformerLens version, e.g. ``"3.9.1"`` or ``"4.3.0"``."""
    found = installed("transformer-lens")
    if found is None:  # a source checkout without metadata: ask the package itself
        import transformer_lens

        found = str(getattr(transformer_lens, "__version__", "0"))
    return found


def has_hooked_transformer() -> bool:
    """Whether the installed TransformerLens still has ``HookedTransformer`` (removed in 4.0)."""
    major = transformer_lens_version().split(".", 1)[0]
    return not major.isdigit() or int(major) < 4


def default_kind() -> ModelKind:
    """``"hooked"`` on TransformerLens 3.x, ``"bridge"`` on 4.x (which has no ``HookedTransformer``)."""
    return "hooked" if has_hooked_transformer() else "bridge"


def _require_hooked() -> None:
    if not has_hooked_transformer():
        raise ValueError(
            f"kind='hooked' needs HookedTransformer, which the installed TransformerLens "
            f"{transformer_lens_version()} no longer has (it was removed in 4.0); load the model with "
            "kind='bridge' (a TransformerBridge), or install 'transformer-lens<4' for kind='hooked'"
        )


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The Hugging Face tokenizer saved beside the model (``tokenizer.json`` + config files)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def hooked_config_from_hf(hf_config: Any) -> Any:
    """A ``HookedTransformerConfig`` equivalent to a ``GPT2Config`` (TransformerLens 3.x only)."""
    _require_hooked()
    from transformer_lens import HookedTransformerConfig

    if getattr(hf_config, "model_type", None) != "gpt2":
        raise ValueError(
            f"only GPT-2-architecture models are supported, got model_type={hf_config.model_type!r}"
        )
    return HookedTransformerConfig(
        d_model=hf_config.n_embd,
        d_head=hf_config.n_embd // hf_config.n_head,
        n_heads=hf_config.n_head,
        d_mlp=hf_config.n_inner or 4 * hf_config.n_embd,
        n_layers=hf_config.n_layer,
        n_ctx=hf_config.n_positions,
        eps=hf_config.layer_norm_epsilon,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.activation_function,
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        tokenizer_prepends_bos=False,
        default_prepend_bos=False,
        # the attention's scale: by 1/sqrt(d_head) unless scale_attn_weights=False, and by 1/(layer+1)
        scale_attn_by_inverse_layer_idx=bool(getattr(hf_config, "scale_attn_by_inverse_layer_idx", False)),
        use_attn_scale=bool(getattr(hf_config, "scale_attn_weights", True)),
    )


def load_hf_model(
    path: str | os.PathLike[str],
    kind: ModelKind | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Load the causal LM in the Hugging Face folder ``path`` with hooks, offline.

    A GPT-2 folder goes to :func:`load_hf_gpt2` (``kind=None``: :func:`default_kind`). Any other
    architecture (``config.json``'s ``model_type``: ``llama``, ``gpt_neox``, ...) loads as a
    ``TransformerBridge`` over ``AutoModelForCausalLM``; ``kind="hooked"`` is refused for it, since
    the hooked model is built here from a GPT-2 config only. The bridge's ``cfg.default_prepend_bos``
    is TransformerLens's default (``True`` for most architectures), not read from the tokenizer:
    set it to ``False`` for a tokenizer without a BOS habit. Loading draws from no global random
    stream of the caller.
    """
    folder = Path(path)
    model_type = _model_type(folder)
    if model_type == "gpt2":
        return load_hf_gpt2(folder, kind, device=device, dtype=dtype)
    if kind not in (None, "hooked", "bridge"):
        raise ValueError(f"kind={kind!r}: expected 'hooked' or 'bridge'")
    if kind == "hooked":
        raise ValueError(
            f"{str(folder)!r} holds a {model_type!r} model: kind='hooked' loads GPT-2 folders only; "
            "load it with kind='bridge' (a TransformerBridge)"
        )
    with torch.random.fork_rng(devices=[]):
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoModelForCausalLM

        hf_model = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, torch_dtype=dtype, use_safetensors=True
        )
        hf_model.eval()
        ensure_bridge_kv_cache()
        return TransformerBridge.boot_transformers(
            str(folder), hf_model=hf_model, tokenizer=load_tokenizer(folder), device=device, dtype=dtype
        )


def _model_type(folder: Path) -> str:
    """``model_type`` of the Hugging Face folder's ``config.json`` (read as JSON, nothing run), once
    the folder is checked to hold safetensors weights."""
    import json

    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} has no config.json (expected a Hugging Face model directory)"
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{str(config)!r}: not a JSON object with a model_type ({err})") from None
    if not isinstance(model_type, str):
        raise ValueError(f"{str(config)!r}: model_type {model_type!r} is not a name")
    if not any(folder.glob("*.safetensors")):  # a pickled checkpoint could run code on loading
        raise ValueError(
            f"{str(folder)!r} holds no .safetensors weights: sae_circuits loads safetensors only, never a "
            "pickle (.bin); convert it once with model.save_pretrained(folder, safe_serialization=True)"
        )
    return model_type


def load_hf_gpt2(
    path: str | os.PathLike[str],
    kind: ModelKind | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Load the GPT-2 model in ``path`` as a ``HookedTransformer`` or ``TransformerBridge``
    (``kind=None``: :func:`default_kind`, the bridge on TransformerLens 4). Loading draws from no
    global random stream of the caller (the models' initialisation runs on a forked one)."""
    with torch.random.fork_rng(devices=[]):
        return _load_hf_gpt2(path, kind, device=device, dtype=dtype)


def _load_hf_gpt2(path: str | os.PathLike[str], kind: ModelKind | None, *, device: str | torch.device,
                  dtype: torch.dtype) -> Any:  # fmt: skip
    if kind is None:
        kind = default_kind()
    if kind not in ("hooked", "bridge"):
        raise ValueError(f"kind={kind!r}: expected 'hooked' or 'bridge'")
    if kind == "hooked":
        _require_hooked()
    folder = Path(path)
    model_type = _model_type(folder)
    if model_type != "gpt2":  # GPT2LMHeadModel would take it, with fresh weights for what it lacks
        raise ValueError(
            f"{str(folder)!r} holds a {model_type!r} model, not GPT-2: load it with "
            "sc.zoo.load_hf_model (a TransformerBridge)"
        )
    from transformers import GPT2LMHeadModel

    tokenizer = load_tokenizer(folder)
    hf_model = GPT2LMHeadModel.from_pretrained(
        str(folder), local_files_only=True, torch_dtype=dtype, use_safetensors=True
    )
    hf_model.eval()
    if kind == "bridge" and not getattr(hf_model.config, "scale_attn_weights", True):
        raise ValueError(  # measured: its logits differ from the Hugging Face model's by ~6
            f"{str(folder)!r} sets scale_attn_weights=False, which TransformerLens's bridge does not "
            "follow; load it with kind='hooked' (TransformerLens 3.x)"
        )
    if kind == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        ensure_bridge_kv_cache()
        bridge = TransformerBridge.boot_transformers(
            str(folder), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
        bridge.cfg.default_prepend_bos = False  # as the hooked model: the tokenizer has no BOS habit
        return bridge
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    cfg = hooked_config_from_hf(hf_model.config)
    cfg.device = str(device)
    cfg.dtype = dtype
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    state_dict = convert_gpt2_weights(hf_model, cfg)
    model.load_and_process_state_dict(
        state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False,
    )  # fmt: skip
    return model.to(device, print_details=False).eval()  # no "Moving model to device" on stdout
