"""The main job: read a prompt's features, then steer generation by clamping one.

Runs on the embedded model when its weights are installed (``sae_circuits/zoo/tiny``), otherwise on
a small randomly initialised GPT-2 with a real tokenizer and random SAEs (which shows the
mechanics, not meaningful features).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from sae_circuits.features import logit_effects
from sae_circuits.interventions import clamp, intervene
from sae_circuits.sae import SAE, SAEConfig
from sae_circuits.splice import spliced


@dataclass
class TopFeature:
    """A feature active at a position, with the tokens its decoder direction promotes."""

    site: str
    index: int
    activation: float
    top_tokens: list[str]


def top_features(
    model: nn.Module, saes: Sequence[SAE], prompt: str, k: int = 3
) -> dict[str, list[TopFeature]]:
    """The ``k`` strongest features at the prompt's last token, per site, with the tokens each
    feature's decoder row promotes through the unembedding (a direct-logit view)."""
    tl = cast(Any, model)  # HookedTransformer or TransformerBridge: its TL API is not on nn.Module
    tokens = tl.to_tokens(prompt, prepend_bos=False)
    names = [f"{sae.cfg.site}.hook_sae_acts_post" for sae in saes]
    with torch.no_grad(), spliced(model, list(saes)):
        _, cache = tl.run_with_cache(tokens, names_filter=names)
    result: dict[str, list[TopFeature]] = {}
    for sae, name in zip(saes, names):
        acts = cache[name][0, -1]
        values, indices = acts.topk(k)
        rows = []
        for value, index in zip(values.tolist(), indices.tolist()):
            if value <= 0:
                break
            promoted, _ = logit_effects(model, sae, index, k=5)
            rows.append(TopFeature(sae.cfg.site, index, value, promoted))
        result[sae.cfg.site] = rows
    return result


def steer_text(
    model: nn.Module, sae: SAE, feature: int, value: float, prompt: str, max_new_tokens: int = 30
) -> tuple[str, str]:
    """Greedy continuations of ``prompt`` without and with ``feature`` clamped at ``value`` on
    the generated tokens (KV cache on)."""
    tl = cast(Any, model)  # HookedTransformer or TransformerBridge: its TL API is not on nn.Module
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, verbose=False, stop_at_eos=False)
    tokens = tl.to_tokens(prompt, prepend_bos=False)
    with torch.no_grad(), spliced(model, [sae]):
        before = tl.generate(tokens, **kwargs)
        with intervene(model, [clamp(sae, feature, value, positions="generated")]):
            after = tl.generate(tokens, **kwargs)
    n = tokens.shape[1]
    return tl.to_string(before[0, n:]), tl.to_string(after[0, n:])


def _random_setup(folder: str) -> tuple[nn.Module, list[SAE]]:
    from sae_circuits.recipes.random_model import random_gpt2

    model = random_gpt2(folder, d_model=64, n_layers=2, n_heads=4, n_ctx=128)
    saes = []
    for layer in range(model.cfg.n_layers):
        cfg = SAEConfig("topk", d_in=64, d_sae=1024, hook_name=f"blocks.{layer}.hook_resid_post", k=16)
        sae = SAE(cfg)
        gen = torch.Generator().manual_seed(layer)
        with torch.no_grad():
            sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(1024, 64, generator=gen), dim=-1))
            sae.W_enc.copy_(sae.W_dec.T)
        saes.append(sae)
    return model, saes


def _embedded() -> tuple[nn.Module, list[SAE]] | None:
    from sae_circuits import zoo

    if "tiny" not in zoo.names():
        return None
    try:
        return zoo.load("tiny")
    except FileNotFoundError:  # the model is installed but its dictionaries are not
        return None


def _label_corpus(model: nn.Module) -> torch.Tensor:
    """A small offline corpus (stdlib code, markup, base64) for labelling features by the tokens
    they fire on."""
    from sae_circuits.languages import automata, probe_texts

    blobs, code = probe_texts()
    markup = ["".join(symbols) for symbols, _ in automata.generate("markup", 8, seed=1)]
    rows = [cast(Any, model).to_tokens(t, prepend_bos=False)[0, :64] for t in code[:24] + blobs[:8] + markup]
    return torch.stack([r for r in rows if r.numel() == 64])


def run_embedded(model: nn.Module, saes: list[SAE], prompt: str, out: Callable[[str], None]) -> None:
    """The demo on the embedded model: labelled top features per layer, then base64 steering."""
    from sae_circuits.features import feature_activations, top_activating_tokens
    from sae_circuits.recipes import base64_steering

    corpus = _label_corpus(model)
    cfg = cast(Any, model).cfg  # HookedTransformerConfig (or the bridge's); not on nn.Module
    out(f"Embedded model 'tiny': {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{len(saes)} residual SAEs of {saes[0].cfg.d_sae} features.")  # fmt: skip
    out(f"\nPrompt: {prompt!r}\n\nTop features at the last token (fires on ... | promotes ...):")
    for site, rows in top_features(model, saes, prompt).items():
        sae = next(s for s in saes if s.cfg.site == site)
        acts = feature_activations(model, sae, corpus)
        out(f"  {site}")
        for row in rows:
            fires = [t.token for t in top_activating_tokens(model, acts, corpus, row.index, k=5)]
            out(
                f"    #{row.index:<5} act={row.activation:6.2f}  fires on {fires} "
                f"| promotes {row.top_tokens[:4]}"
            )

    out("\nThe paper's classic: pin the base64 feature at its maximum observed activation.")
    result = base64_steering.measure(model, saes, progress=True)  # all 20 prompts: a few seconds
    out(f"  base64 feature: {result.site} #{result.feature} (fires on {result.rate_in:.0%} of base64 tokens, "
        f"{result.rate_out:.1%} of English/code tokens); pinned at {result.value:.2f}")  # fmt: skip
    for prompt_text, plain, pinned in result.samples:
        out(f"  prompt {prompt_text!r}")
        out(f"    without: {plain!r}")
        out(f"    pinned:  {pinned!r}")
    out(f"  continuations with a base64-looking run (16+ base64 characters mixing cases and digits), "
        f"over {result.n_prompts} English/code prompts: {result.fraction_without:.0%} without, "
        f"{result.fraction_with:.0%} pinned")  # fmt: skip


def run(prompt: str = "def parse(self, text):\n    return", out: Callable[[str], None] = print) -> None:
    """Print the demo: top features per layer, then text before/after a clamp (seeded; the caller's
    random numbers go on as if it had not run)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _run(prompt, out)


def _run(prompt: str, out: Callable[[str], None]) -> None:
    embedded = _embedded()
    if embedded is not None:
        with torch.no_grad():
            run_embedded(*embedded, prompt=prompt, out=out)
        return
    with tempfile.TemporaryDirectory() as folder:
        out("No embedded model installed: using a random GPT-2 (d_model 64) with random TopK SAEs.")
        model, saes = _random_setup(folder)
        out(f"\nPrompt: {prompt!r}\n\nTop features at the last token:")
        for site, rows in top_features(model, saes, prompt).items():
            out(f"  {site}")
            for row in rows:
                out(f"    #{row.index:<5} act={row.activation:6.2f}  promotes {row.top_tokens}")
        sae = saes[-1]
        feature = top_features(model, [sae], prompt, k=1)[sae.cfg.site][0].index
        before, after = steer_text(model, sae, feature, 20.0, prompt)
        out(f"\nSteering: clamp {sae.cfg.site} feature #{feature} at 20.0 on generated tokens")
        out(f"  before: {before!r}")
        out(f"  after:  {after!r}")
