"""A random GPT-2-small-shaped HookedTransformer with 12 random JumpReLU transcoders (for scale
benchmarks): 12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50,257, context 1,024; each
transcoder ``blocks.L.ln2.hook_normalized -> blocks.L.hook_mlp_out`` with 12,288 features and
thresholds set for ~45 active features per token (as trained GPT-2 transcoders)."""

from __future__ import annotations

import torch

import sae_circuits as sc

D_MODEL, LAYERS, D_SAE, ACTIVE = 768, 12, 12_288, 45


def gpt2_small_shape(seed: int = 0, dtype: torch.dtype = torch.float32):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=LAYERS, d_model=D_MODEL, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50_257,
        n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=seed, dtype=dtype,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    model.eval()
    saes = []
    for layer in range(LAYERS):
        config = sc.SAEConfig(
            "jumprelu_transcoder", d_in=D_MODEL, d_sae=D_SAE, hook_name=f"blocks.{layer}.ln2.hook_normalized",
            apply_b_dec_to_input=False,
        )  # fmt: skip
        config.hook_name_out = f"blocks.{layer}.hook_mlp_out"
        torch.manual_seed(seed + 1 + layer)
        sae = sc.SAE(config)
        sae.reset_parameters()
        saes.append(sae)
    tokens = prompt(256, seed)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens[None], names_filter=lambda n: n.endswith("ln2.hook_normalized")
        )
        for sae in saes:
            pre = sae._pre_acts(cache[sae.cfg.hook_name][0])[0]
            sae.threshold.copy_(pre.quantile(1 - ACTIVE / D_SAE, dim=0).clamp_min(1e-3))
    sc.splice(model, saes)
    return model


def prompt(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` deterministic token ids (a random model has no tokenizer worth using)."""
    return torch.randint(0, 50_257, (n,), generator=torch.Generator().manual_seed(1000 + seed))
