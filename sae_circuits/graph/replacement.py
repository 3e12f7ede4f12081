"""The frozen local replacement model of one prompt, in which attribution edges are direct effects.

Attention patterns and normalisation scales are frozen at their prompt values, and every
dictionary site's output is a leaf holding ``decode(f) + error`` (plus, for skip transcoders, the
live skip term ``x_in @ W_skip.T``, which is linear). With patterns and scales frozen, everything
between two sites is linear except MLPs that no dictionary replaces, so the gradient of a target's
pre-activation with respect to a site's output, dotted with a feature's decoded vector, is that
feature's direct effect on the target: exact through attention, first-order through a bare MLP.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sae_circuits.sae import SAE
from sae_circuits.splice import bypassed, saes_of

# Where each hook sits inside a TransformerLens block, in forward order. MLP nonlinearities sit
# at sub-stage 8, between ``mlp.hook_pre`` (7) and ``mlp.hook_post`` (9).
_SUB_STAGES = [
    (r"hook_resid_pre", 0),
    (r"ln1\.", 1),
    (r"attn\.hook_(q|k|v|attn_scores|pattern|rot_q|rot_k)", 2),
    (r"attn\.hook_z|hook_z", 3),
    (r"hook_attn_out|attn\.hook_result", 4),
    (r"hook_resid_mid", 5),
    (r"ln2\.|hook_mlp_in", 6),
    (r"mlp\.hook_pre", 7),
    (r"mlp\.hook_post", 9),
    (r"hook_mlp_out", 10),
    (r"hook_resid_post", 11),
]
_PER_BLOCK = 12
MLP_NONLINEARITY = 8


def stage_of(hook_name: str) -> int:
    """Rank of a hook in the forward pass: 0 is the embedding, ``1 + 12 * block + sub`` a block hook."""
    match = re.match(r"blocks\.(\d+)\.(.*)$", hook_name)
    if match is None:
        if hook_name in ("hook_embed", "hook_pos_embed", "hook_tokens"):
            return 0
        raise ValueError(
            f"cannot place hook {hook_name!r} in the forward pass (expected blocks.<layer>.<hook>)"
        )
    block, rest = int(match.group(1)), match.group(2)
    for pattern, sub in _SUB_STAGES:
        if re.match(pattern, rest):
            return 1 + _PER_BLOCK * block + sub
    raise ValueError(f"cannot place hook {hook_name!r} in the forward pass")


def block_of(hook_name: str) -> int:
    """The block index ``N`` of a ``blocks.N.*`` hook name; -1 for any other hook."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else -1


@dataclass
class SiteValues:
    """One dictionary site on the prompt: its features, their decoded vectors and its error."""

    name: str
    sae: SAE
    stage: int
    input_stage: int
    x_in: Float[Tensor, "pos d_in"]
    """The dictionary's input (flattened, in the dictionary's dtype)."""
    leaf: Float[Tensor, "pos ..."]
    """The site output minus the live skip term: the constant the frozen model holds there."""
    positions: Int[Tensor, " n_active"]
    indices: Int[Tensor, " n_active"]
    activations: Float[Tensor, " n_active"]
    decoded: Float[Tensor, "n_active d_out"]
    """Each active feature's contribution ``f_i * W_dec[i]`` to the site output (flattened)."""
    error: Float[Tensor, "pos d_out"]
    """Site output minus the reconstruction (bias included): the error node's vector."""
    _padded: tuple[Tensor, Tensor] | None = None

    def feature_dots(self, grad: Float[Tensor, "batch horizon d_out"]) -> Float[Tensor, "batch n_before"]:
        """``out[b, k] = grad[b, positions[k]] · decoded[k]`` for the active features at positions
        before ``horizon`` (``grad`` may stop there: later positions get no gradient).

        Features are grouped by position into a padded ``(pos, slots, d_out)`` block, so this is
        one batched matmul over positions (no gathered ``batch x n_active x d_out`` copy)."""
        if self._padded is None:
            n_pos = self.x_in.shape[0]
            counts = torch.bincount(self.positions, minlength=n_pos)
            slots = int(counts.max()) if counts.numel() else 0
            start = torch.cumsum(counts, 0) - counts  # first active index of each position
            slot = torch.arange(self.positions.numel()) - start[self.positions]
            flat = self.positions * slots + slot
            padded = self.decoded.new_zeros(n_pos * slots, self.decoded.shape[-1]).index_copy_(
                0, flat, self.decoded
            )
            self._padded = (
                padded.view(n_pos, slots, -1).transpose(1, 2).contiguous(),
                flat,
            )  # (pos, d_out, slots)
        padded, flat = self._padded
        horizon = grad.shape[1]
        before = int(torch.searchsorted(self.positions, horizon))  # features are sorted by position
        dots = torch.bmm(grad.transpose(0, 1), padded[:horizon])  # (horizon, batch, slots)
        return dots.transpose(0, 1).reshape(grad.shape[0], -1)[:, flat[:before]]

    def encoder_directions(self, positions: Tensor, indices: Tensor) -> Float[Tensor, "k d_in"]:
        """d(pre-activation of feature ``indices`` at ``positions``)/d(input), with the
        dictionary's own input normalisation frozen like the model's."""
        sae, cfg = self.sae, self.sae.cfg
        weights = cfg.arch.encoder_directions(sae, indices)  # (k, d_in), e.g. gated: magnitude path
        if cfg.normalize_activations == "constant_norm_rescale":
            weights = weights * (cfg.d_in**0.5 / self.x_in[positions].norm(dim=-1, keepdim=True))
        elif cfg.normalize_activations == "layer_norm":
            x = self.x_in[positions]
            std = (x - x.mean(-1, keepdim=True)).std(dim=-1, keepdim=True)
            weights = (weights - weights.mean(-1, keepdim=True)) / (std + 1e-5)
        return weights.detach()


@dataclass
class PromptValues:
    """Everything the frozen replacement model needs from the clean forward pass."""

    tokens: Int[Tensor, " pos"]
    sites: list[SiteValues]
    frozen: dict[str, Tensor]
    """Attention patterns and normalisation scales, by hook name."""
    embedding: Float[Tensor, "pos d_model"]
    """The input to block 0 (token plus positional embedding): the token nodes' vectors."""
    probs: Float[Tensor, " d_vocab"]
    """Next-token probabilities at the last position."""


def capture(model: Any, tokens: Int[Tensor, " pos"]) -> PromptValues:
    """Run the spliced model once on ``tokens`` and keep what the frozen model needs."""
    saes = saes_of(model)
    names = set()
    for site in saes:
        names.update({site, f"{site}.hook_sae_input", f"{site}.hook_sae_acts_post"})
    frozen_filter = re.compile(r".*(attn\.hook_pattern|hook_scale)$")
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            tokens.unsqueeze(0),
            names_filter=lambda n: (
                n in names or n == "blocks.0.hook_resid_pre" or bool(frozen_filter.match(n))
            ),
        )
    sites = [_site_values(name, sae, cache) for name, sae in saes.items()]
    sites.sort(key=lambda s: s.stage)
    frozen = {name: value for name, value in cache.items() if frozen_filter.match(name)}
    unfrozen = [
        layer for layer in range(model.cfg.n_layers) if f"blocks.{layer}.attn.hook_pattern" not in frozen
    ]
    if unfrozen:
        raise ValueError(
            f"{type(model).__name__}: the attention of blocks {unfrozen} exposes no attn.hook_pattern, "
            "so attribution cannot freeze its pattern (edges would not be direct effects); "
            "attribution needs a HookedTransformer or a TransformerBridge whose attention is hooked"
        )
    return PromptValues(
        tokens=tokens,
        sites=sites,
        frozen=frozen,
        embedding=cache["blocks.0.hook_resid_pre"][0],
        probs=logits[0, -1].double().softmax(-1),
    )


def _site_values(name: str, sae: SAE, cache: Any) -> SiteValues:
    x_in = cache[f"{name}.hook_sae_input"][0]
    f = cache[f"{name}.hook_sae_acts_post"][0]
    out = cache[name][0]
    flat_out = out.reshape(out.shape[0], -1).to(sae.dtype)
    norm = sae.encode_parts(x_in).normalizer
    recons = sae.finish_output(sae.decode_normalized(f), norm, x_in)
    skip = x_in @ sae.W_skip.T if sae.cfg.has_skip else torch.zeros_like(flat_out)
    positions, indices = f.nonzero(as_tuple=True)
    rows = sae.cfg.arch.decoder_rows(sae, indices)  # W_dec rows, rescaled where the architecture says
    decoded = f[positions, indices].unsqueeze(-1) * rows
    if norm.scale is not None:
        decoded = decoded * norm.scale[positions]
    return SiteValues(
        name=name,
        sae=sae,
        stage=stage_of(name),
        input_stage=stage_of(sae.cfg.hook_name),
        x_in=x_in.detach(),
        leaf=(flat_out - skip).reshape(out.shape).to(out.dtype).detach(),
        positions=positions,
        indices=indices,
        activations=f[positions, indices].detach(),
        decoded=decoded.detach(),
        error=(flat_out - recons).detach(),
    )


@dataclass
class FrozenPass:
    """One forward pass of the frozen model over ``batch`` copies of the prompt."""

    embedding: Tensor
    """Leaf: the block-0 input (token nodes read their gradient here)."""
    outputs: dict[str, Tensor]
    """Leaf per site: its output (feature and error nodes read their gradient here)."""
    inputs: dict[str, Tensor]
    """Each site's input as computed from the leaves (feature targets inject here)."""
    final: Tensor
    """The normalised final residual stream (logit targets inject here)."""


def frozen_pass(model: Any, values: PromptValues, batch: int) -> FrozenPass:
    """Forward ``batch`` copies of the prompt through the frozen replacement model.

    The spliced dictionaries are bypassed (their outputs are leaves); the autograd graph is kept
    so that many backward passes can reuse it.
    """

    def expand(t: Tensor) -> Tensor:  # a view: the copies share the prompt's memory
        return t.expand(batch, *t.shape)

    embedding = expand(values.embedding).detach().requires_grad_(True)
    outputs = {s.name: expand(s.leaf).detach().requires_grad_(True) for s in values.sites}
    inputs: dict[str, Tensor] = {}
    by_output = {s.name: s for s in values.sites}
    taps: dict[str, list[SiteValues]] = {}
    for s in values.sites:
        taps.setdefault(s.sae.cfg.hook_name, []).append(s)

    def at(name: str):  # one hook per hook point: replace the output first, then read inputs
        def hook(x: Tensor, hook: Any) -> Tensor:
            if name in by_output:
                site = by_output[name]
                if not site.sae.cfg.is_transcoder:
                    inputs[name] = x
                x = outputs[name]
                if getattr(hook, "hook_conversion", None) is not None:
                    # a bridge hook that reshapes (hook_z) views its output afterwards: an
                    # expanded leaf cannot be viewed, so it gets its own memory there
                    x = x.contiguous()
                if site.sae.cfg.has_skip:
                    x = x + _skip(site, inputs[name])
            for site in taps.get(name, []):
                if site.sae.cfg.is_transcoder:
                    inputs[site.name] = x
            return x

        return hook

    frozen_blocks = {_pattern_block(name) for name in values.frozen}
    with bypassed(model), _broadcast_attention(model, frozen_blocks) as light:
        fired: set[str] = set()
        hooks = [
            (
                name,
                _constant(
                    value if _pattern_block(name) in light else value.expand(batch, *value.shape[1:]),
                    lambda n=name: fired.add(n),
                ),
            )
            for name, value in values.frozen.items()
        ]
        hooks.append(("blocks.0.hook_resid_pre", lambda x, hook: embedding))
        hooks += [(name, at(name)) for name in sorted(set(by_output) | set(taps))]
        last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        hooks.append((last, _stop_here))
        with model.hooks(fwd_hooks=hooks):
            try:  # the unembedding is never run: logit targets inject at the final LayerNorm
                model(values.tokens.expand(batch, -1))
                raise RuntimeError(f"the forward pass never reached {last!r}")
            except _ResidualReached as reached:
                resid = reached.resid
            final = model.ln_final(resid) if getattr(model, "ln_final", None) is not None else resid
    if ignored := sorted(set(values.frozen) - fired):
        raise RuntimeError(
            f"{type(model).__name__} never called the hooks {ignored[:4]}{'...' if len(ignored) > 4 else ''} "
            "in its forward pass, so attribution cannot freeze them (edges would not be direct effects); "
            "attribution needs a HookedTransformer or a TransformerBridge whose attention and "
            "normalisation compute through their hook points"
        )
    return FrozenPass(embedding, outputs, inputs, final)


class _ResidualReached(Exception):
    """Ends a forward pass at the last block's output. ``stop_at_layer`` would too, but a
    ``TransformerBridge`` cannot stop after its last block (Hugging Face runs the loop)."""

    def __init__(self, resid: Tensor) -> None:
        super().__init__("final residual stream reached")
        self.resid = resid


def _stop_here(resid: Tensor, hook: Any) -> Tensor:
    raise _ResidualReached(resid)


def _pattern_block(hook_name: str) -> int:
    match = re.match(r"blocks\.(\d+)\.attn\.hook_pattern$", hook_name)
    return int(match.group(1)) if match else -1


@contextmanager
def _broadcast_attention(model: Any, blocks: set[int]) -> Iterator[set[int]]:
    """Let frozen attention patterns stay one ``(1, heads, q, k)`` copy for all prompt copies.

    With patterns frozen, attention scores are never needed (a dummy ``(1, heads, q, k)`` stands in)
    and ``z = pattern @ v`` broadcasts the pattern over the copies inside one einsum, so neither the
    forward pass nor autograd holds ``batch x heads x n^2`` tensors (4 GB at 1,024 tokens and 64
    copies). Yields the blocks patched; attention classes that override these methods are left alone.
    """
    abstract: type[Any] | None
    try:  # HookedTransformer's attention; a bridge wraps the Hugging Face module instead
        from transformer_lens.components.abstract_attention import AbstractAttention as abstract
    except ImportError:  # TransformerLens 4 has no HookedTransformer components
        abstract = None

    def own(attn: nn.Module, method: str) -> bool:
        return abstract is not None and getattr(type(attn), method, None) is getattr(abstract, method)

    patched: list[nn.Module] = []
    try:
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            if (
                layer in blocks
                and own(attn, "calculate_attention_scores")
                and own(attn, "calculate_z_scores")
            ):  # only where the pattern really is frozen
                attn.calculate_attention_scores = partial(_dummy_scores, attn)
                attn.calculate_z_scores = partial(_broadcast_z, attn)
                patched.append(attn)
        yield {layer for layer, block in enumerate(model.blocks) if block.attn in patched}
    finally:
        for attn in patched:
            del attn.calculate_attention_scores, attn.calculate_z_scores


def _dummy_scores(attn: Any, q: Tensor, k: Tensor) -> Tensor:
    return q.new_zeros(1, attn.cfg.n_heads, q.shape[1], k.shape[1])


def _broadcast_z(attn: Any, v: Tensor, pattern: Tensor) -> Tensor:
    z = torch.einsum("hqk,bkhd->bqhd", pattern[0], v)  # one pattern for every copy
    return attn.hook_z(z)


def _constant(value: Tensor, ran: Any) -> Any:
    """A hook that replaces the activation with ``value`` (and calls ``ran()``: it did run)."""

    def hook(x: Tensor, hook: Any) -> Tensor:
        ran()
        return value

    return hook


def _skip(site: SiteValues, x_in: Tensor) -> Tensor:
    flat = site.sae.prepare_input(x_in)
    return (flat @ site.sae.W_skip.T).reshape(*x_in.shape[:-1], -1).to(x_in.dtype)
