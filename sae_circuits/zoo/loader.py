"""Load a GPT-2-architecture model saved in the Hugging Face layout, offline, as a
``HookedTransformer`` or a ``TransformerBridge`` with the same weights and no processing.

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

ModelKind = Literal["hooked", "bridge"]


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The Hugging Face tokenizer saved beside the model (``tokenizer.json`` + config files)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def hooked_config_from_hf(hf_config: Any) -> Any:
    """A ``HookedTransformerConfig`` equivalent to a ``GPT2Config``."""
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
    )


def load_hf_gpt2(
    path: str | os.PathLike[str],
    kind: ModelKind = "hooked",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Load the GPT-2 model in ``path`` as a ``HookedTransformer`` or ``TransformerBridge``."""
    if kind not in ("hooked", "bridge"):
        raise ValueError(f"kind={kind!r}: expected 'hooked' or 'bridge'")
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} has no config.json (expected a Hugging Face model directory)"
        )
    from transformers import GPT2LMHeadModel

    tokenizer = load_tokenizer(folder)
    hf_model = GPT2LMHeadModel.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
    hf_model.eval()
    if kind == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(
            str(folder), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
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
    return model.to(device).eval()
