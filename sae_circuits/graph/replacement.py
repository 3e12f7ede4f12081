"""The frozen local replacement model of one prompt, in which attribution edges are direct effects.

Attention patterns and normalisation scales are frozen at their prompt values, and every
dictionary site's output is a leaf holding ``decode(f) + error`` (plus, for skip transcoders, the
live skip term ``x_in @ W_skip.T``, which is linear). With patterns and scales frozen, everything
between two sites is linear except MLPs that no dictionary replaces, so the gradient of a target's
pre-activation with respect to a site's output, dotted with a feature's decoded vector, is that
feature's direct effect on the target: exact through attention, first-order through a bare MLP.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

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
    """Each active feature's contribution ``f_i * W_dec[i]`` to the site output (flattened, float32)."""
    error: Float[Tensor, "pos d_out"]
    """Site output minus the reconstruction (bias included): the error node's vector (float32)."""
    _padded: _DotLayout | None = None

    def node_dots(
        self, grad: Float[Tensor, "batch horizon d_out"]
    ) -> tuple[Float[Tensor, "batch n_before"], Float[Tensor, "batch horizon"]]:
        """The edges a gradient gives this site's nodes: ``features[b, k] = grad[b, positions[k]]
        · decoded[k]`` for the active features at positions before ``horizon`` (``grad`` may stop
        there: later positions get no gradient), and ``errors[b, p] = grad[b, p] · error[p]``.

        Positions holding at most ``slots`` features are grouped into a padded ``(pos, d_out,
        slots + 1)`` block (the error vector in the last slot), so most of the work is one batched
        matmul over positions; the few positions with many more features (a BOS token often has
        ten times the usual count) get a matmul of their own instead of widening every slot."""
        layout = self._padded = self._padded or _DotLayout.of(self)
        horizon, slots = grad.shape[1], layout.slots
        before = int(torch.searchsorted(self.positions, horizon))  # features are sorted by position
        dots = torch.bmm(grad.transpose(0, 1), layout.padded[:horizon])  # (horizon, batch, slots + 1)
        errors = dots[:, :, slots].transpose(0, 1)
        features = dots[:, :, :slots].transpose(0, 1).reshape(grad.shape[0], -1)[:, layout.flat[:before]]
        for position, first, last in layout.heavy:
            if position < horizon:
                features[:, first:last] = grad[:, position] @ self.decoded[first:last].T
        return features, errors

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
class _DotLayout:
    """How :meth:`SiteValues.node_dots` lays out a site's node vectors (see there)."""

    padded: Tensor
    """``(pos, d_out, slots + 1)``: each light position's decoded vectors, then its error vector."""
    flat: Tensor
    """Per active feature: its column in the flattened ``(pos, slots)`` dots (0 for heavy ones)."""
    slots: int
    heavy: list[tuple[int, int, int]]
    """``(position, first, last)``: positions with too many features to pad, and their range."""

    @classmethod
    def of(cls, site: SiteValues) -> _DotLayout:
        """The layout of ``site``'s active features and errors."""
        n_pos, d_out = site.error.shape
        positions, decoded = site.positions, site.decoded
        counts = torch.bincount(positions, minlength=n_pos)
        # pad to 2x the typical count, or to the 90th percentile where most positions are empty;
        # the few positions beyond that are "heavy" and computed apart
        typical = (
            max(1, 2 * int(counts.float().median()), int(counts.float().quantile(0.9)))
            if counts.numel()
            else 0
        )
        slots = min(int(counts.max()) if counts.numel() else 0, typical)
        start = torch.cumsum(counts, 0) - counts  # first active index of each position
        slot = torch.arange(positions.numel(), device=positions.device) - start[positions]
        light = slot < slots
        flat = torch.where(light, positions * slots + slot, 0)
        padded = decoded.new_zeros(n_pos * slots, d_out).index_copy_(0, flat[light], decoded[light])
        padded = torch.cat([padded.view(n_pos, slots, d_out), site.error.unsqueeze(1).to(decoded)], 1)
        heavy = [
            (p, int(start[p]), int(start[p] + counts[p]))
            for p in (counts > slots).nonzero().squeeze(-1).tolist()
        ]
        return cls(padded.transpose(1, 2).contiguous(), flat, slots, heavy)


@dataclass
class PromptValues:
    """Everything the frozen replacement model needs from the clean forward pass."""

    tokens: Int[Tensor, " pos"]
    sites: list[SiteValues]
    frozen: dict[str, Tensor]
    """Attention patterns and normalisation scales, by hook name."""
    embedding: Float[Tensor, "pos d_model"]
    """The input to block 0 (token plus positional embedding): the token nodes' vectors (the
    model's dtype: the frozen pass starts from it)."""
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
    # the nodes' vectors in float32 (edges are dot products with them), whatever the dtypes
    rows = sae.cfg.arch.decoder_rows(sae, indices).float()  # W_dec rows, rescaled as the architecture says
    decoded = f[positions, indices].float().unsqueeze(-1) * rows
    if norm.scale is not None:
        decoded = decoded * norm.scale[positions].float()
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
        error=(flat_out.float() - recons.float()).detach(),
    )


@dataclass
class FrozenPass:
    """One forward pass of the frozen model over the prompt's first ``horizon`` positions."""

    embedding: Tensor
    """Leaf ``(1, horizon, d_model)``: the block-0 input (token nodes read their gradient here)."""
    outputs: dict[str, Tensor]
    """Leaf per site: its output (feature and error nodes read their gradient here)."""
    inputs: dict[str, Tensor]
    """Each site's input as computed from the leaves (feature targets inject here)."""
    final: Tensor
    """The normalised final residual stream (logit targets inject here)."""

    @property
    def horizon(self) -> int:
        """How many positions this pass covers."""
        return int(self.embedding.shape[1])


def frozen_pass(model: Any, values: PromptValues, horizon: int | None = None) -> FrozenPass:
    """Forward one copy of the prompt's first ``horizon`` positions (None: all) through the frozen
    replacement model.

    The model is causal, so a row seeded at or before position ``horizon - 1`` gets the same
    gradients from this shorter pass. The pass is linear in its leaves, so one forward serves any
    number of rows: each backward pass is a batched vector-Jacobian product
    (``autograd.grad(..., is_grads_batched=True)``). The spliced dictionaries are bypassed (their
    outputs are leaves), MLPs whose output is a leaf are not run, and the autograd graph is kept
    so that many backward passes can reuse it.
    """
    n = values.tokens.numel()
    horizon = n if horizon is None else horizon
    if not 1 <= horizon <= n:
        raise ValueError(f"horizon={horizon!r} must be in [1, {n}]")
    embedding = values.embedding[None, :horizon].detach().requires_grad_(True)
    outputs = {s.name: s.leaf[None, :horizon].detach().requires_grad_(True) for s in values.sites}
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
                    # a bridge hook that reshapes (hook_z) views its output afterwards: a
                    # leaf cannot be viewed in place, so it gets its own memory there
                    x = x.contiguous()
                if site.sae.cfg.has_skip:
                    x = x + _skip(site, inputs[name])
            for site in taps.get(name, []):
                if site.sae.cfg.is_transcoder:
                    inputs[site.name] = x
            return x

        return hook

    frozen = {name: _prefix(name, value, horizon) for name, value in values.frozen.items()}
    frozen_blocks = {_pattern_block(name) for name in frozen}
    with (
        bypassed(model),
        _frozen_attention(model, frozen_blocks),
        _leaf_mlps(model, set(by_output), set(taps)),
        _frozen_norms(model, set(frozen)),
        _frozen_scales_expected(),
    ):
        fired: set[str] = set()
        hooks = [(name, _constant(value, lambda n=name: fired.add(n))) for name, value in frozen.items()]
        hooks.append(("blocks.0.hook_resid_pre", lambda x, hook: embedding))
        hooks += [(name, at(name)) for name in sorted(set(by_output) | set(taps))]
        last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        hooks.append((last, _stop_here))
        with model.hooks(fwd_hooks=hooks):
            try:  # the unembedding is never run: logit targets inject at the final LayerNorm
                model(values.tokens[None, :horizon])
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


def _prefix(name: str, value: Tensor, horizon: int) -> Tensor:
    """A frozen value restricted to the first ``horizon`` positions: patterns are
    ``(batch, heads, q, k)``, normalisation scales ``(batch, pos, ...)``."""
    if _pattern_block(name) >= 0:
        return value[:, :, :horizon, :horizon]
    return value[:, :horizon]


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


def _transformer_lens_class(module: str, name: str) -> type[Any] | None:
    """A HookedTransformer component class (None on TransformerLens 4, which has none)."""
    try:
        return cast(
            type[Any], getattr(importlib.import_module(f"transformer_lens.components.{module}"), name)
        )
    except (ImportError, AttributeError):
        return None


@contextmanager
def _frozen_attention(model: Any, blocks: set[int]) -> Iterator[None]:
    """Skip the attention scores where the pattern is frozen: they are never used, so a dummy
    ``(1, heads, q, k)`` stands in, and ``z = pattern @ v`` reads the frozen pattern. Attention
    classes that override these methods (and bridges) are left alone."""
    abstract = _transformer_lens_class("abstract_attention", "AbstractAttention")

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
                attn.calculate_z_scores = partial(_pattern_z, attn)
                patched.append(attn)
        yield
    finally:
        for attn in patched:
            del attn.calculate_attention_scores, attn.calculate_z_scores


def _dummy_scores(attn: Any, q: Tensor, k: Tensor) -> Tensor:
    return q.new_zeros(1, attn.cfg.n_heads, q.shape[1], k.shape[1])


def _pattern_z(attn: Any, v: Tensor, pattern: Tensor) -> Tensor:
    return attn.hook_z(_FrozenPatternZ.apply(pattern, v))


class _FrozenPatternZ(torch.autograd.Function):
    """``z = pattern @ v`` per head with the pattern a constant, and a backward written as one
    einsum, ``grad_v = pattern^T @ grad_z``: under ``vmap`` (batched backward passes) the rows
    become a free dimension of that einsum, one batched matmul over heads, instead of autograd's
    own einsum backward, which expands the ``heads x n^2`` pattern once per row."""

    generate_vmap_rule = True

    @staticmethod
    def forward(pattern: Tensor, v: Tensor) -> Tensor:
        """``z[b, q, h] = sum_k pattern[b, h, q, k] v[b, k, h]``."""
        return torch.einsum("bhqk,bkhd->bqhd", pattern, v)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        """Keep the pattern for the backward."""
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        """``grad_v``; the pattern gets none (it is a constant)."""
        (pattern,) = ctx.saved_tensors
        return None, _PatternTransposed.apply(pattern, grad)


class _PatternTransposed(torch.autograd.Function):
    """``grad_v[b, k, h] = sum_q pattern[b, h, q, k] grad_z[b, q, h]``, with a batching rule
    that folds the rows of a batched backward into the matmul's columns (one ``(k, q) @ (q, rows x
    d_head)`` product per head) rather than broadcasting the pattern over the rows."""

    @staticmethod
    def forward(pattern: Tensor, grad: Tensor) -> Tensor:
        """One row's product."""
        return (pattern.transpose(-1, -2) @ grad.transpose(1, 2)).transpose(1, 2)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        """Nothing to keep: this product is never differentiated."""

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, int | None], pattern: Tensor, grad: Tensor) -> Any:
        """Every row's product at once (see the class docstring)."""
        pattern_dim, grad_dim = in_dims
        if pattern_dim is not None or grad_dim is None:  # not the batched-rows case: no shortcut
            size = info.batch_size
            pattern = (
                pattern.movedim(pattern_dim, 0)
                if pattern_dim is not None
                else pattern.expand(size, *pattern.shape)
            )
            grad = grad.movedim(grad_dim, 0) if grad_dim is not None else grad.expand(size, *grad.shape)
            return (pattern.transpose(-1, -2) @ grad.transpose(2, 3)).transpose(2, 3), 0
        rows = grad.movedim(grad_dim, -2)  # (b, q, h, rows, d)
        b, q, h, n_rows, d = rows.shape
        folded = rows.permute(0, 2, 1, 3, 4).reshape(b, h, q, n_rows * d)
        out = (pattern.transpose(-1, -2) @ folded).view(b, h, -1, n_rows, d)
        return out.permute(3, 0, 2, 1, 4), 0  # (rows, b, k, h, d)


@contextmanager
def _leaf_mlps(model: Any, outputs: set[str], inputs: set[str]) -> Iterator[None]:
    """Do not run the MLPs whose output the frozen model replaces with a leaf (a transcoder at
    ``blocks.L.hook_mlp_out``, nothing read inside the MLP or at its output): a zero of the right
    shape stands in for the MLP's output until the leaf replaces it, which saves most of a block's
    forward. An SAE at ``hook_mlp_out`` reads the MLP's output itself, so its MLP runs.
    HookedTransformer blocks only; other models run their MLPs as they are."""
    block_class = _transformer_lens_class("transformer_block", "TransformerBlock")
    patched: list[nn.Module] = []
    try:
        for layer, block in enumerate(model.blocks):
            inside = f"blocks.{layer}.mlp."
            if (
                block_class is not None
                and isinstance(block, block_class)
                and f"blocks.{layer}.hook_mlp_out" in outputs
                and f"blocks.{layer}.hook_mlp_out" not in inputs  # an SAE there reads the MLP's output
                and not any(name.startswith(inside) for name in outputs | inputs)
            ):
                block.mlp.forward = partial(_zero_mlp, model.cfg.d_model)
                patched.append(block.mlp)
        yield
    finally:
        for mlp in patched:
            del mlp.forward


class _FrozenNorm(torch.autograd.Function):
    """``(x - mean(x)) / scale`` (``center=False``: ``x / scale``) with ``scale`` a constant: the
    normalisation of the frozen model, with a fused backward ``center(grad / scale)`` (autograd's
    own chain of sub, mean, div and their accumulations costs about twice as many passes over
    the ``(rows, pos, d)`` gradient). Works under ``vmap`` (batched backward passes)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, scale: Tensor, center: bool) -> Tensor:
        """The normalisation, as TransformerLens computes it."""
        return ((x - x.mean(-1, keepdim=True)) if center else x) / scale

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        """Keep the scale for the backward."""
        _, scale, center = inputs
        ctx.save_for_backward(scale)
        ctx.center = center

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        """``center(grad / scale)``."""
        (scale,) = ctx.saved_tensors
        grad = grad / scale
        return (grad - grad.mean(-1, keepdim=True)) if ctx.center else grad, None, None


_NORMS = {  # TransformerLens normalisation class -> (subtracts the mean, affine weight, bias)
    ("layer_norm", "LayerNorm"): (True, True, True),
    ("layer_norm_pre", "LayerNormPre"): (True, False, False),
    ("rms_norm", "RMSNorm"): (False, True, False),
    ("rms_norm_pre", "RMSNormPre"): (False, False, False),
}


@contextmanager
def _frozen_scales_expected() -> Iterator[None]:
    """Hide the bridge's warning that a hook edited a normalisation's scale (RMSNorm on the
    native-autograd path: Llama, NeoX): freezing it is the point, and the frozen pass's edges are
    checked against interventions (tests/test_architecture_shapes.py). Other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A forward hook edited hook_scale", category=UserWarning)
        yield


@contextmanager
def _frozen_norms(model: Any, frozen: set[str]) -> Iterator[None]:
    """Run HookedTransformer normalisations whose scale is frozen through :class:`_FrozenNorm`.

    Same hooks, same values; only the backward is fused. A normalisation is patched only if it
    is exactly one of TransformerLens's four classes (a subclass may compute differently)."""
    classes: dict[type[Any], tuple[bool, bool, bool]] = {}
    for (file, class_name), spec in _NORMS.items():
        cls = _transformer_lens_class(file, class_name)
        if cls is not None:
            classes[cls] = spec
    patched: list[nn.Module] = []
    try:
        for name, module in model.named_modules():
            found = classes.get(type(module))
            if found is not None and f"{name}.hook_scale" in frozen:
                module.forward = partial(_frozen_norm_forward, module, *found)
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def _frozen_norm_forward(norm: Any, center: bool, weight: bool, bias: bool, x: Tensor) -> Tensor:
    if norm.cfg.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    scale = norm.hook_scale(x[..., :1])  # the frozen constant replaces this stand-in
    x = norm.hook_normalized(_FrozenNorm.apply(x, scale, center))
    if weight:
        if not bias and x.device != norm.w.device:  # as TransformerLens's RMSNorm does
            norm.to(x.device)
        x = x.to(norm.cfg.dtype) * norm.w
    if bias:
        x = x + norm.b
    return x if weight else x.to(norm.cfg.dtype)


def _zero_mlp(d_model: int, x: Tensor) -> Tensor:
    return x.new_zeros(()).expand(*x.shape[:-1], d_model)


def _constant(value: Tensor, ran: Any) -> Any:
    """A hook that replaces the activation with ``value`` (and calls ``ran()``: it did run)."""

    def hook(x: Tensor, hook: Any) -> Tensor:
        ran()
        return value

    return hook


def _skip(site: SiteValues, x_in: Tensor) -> Tensor:
    flat = site.sae.prepare_input(x_in)
    return (flat @ site.sae.W_skip.T).reshape(*x_in.shape[:-1], -1).to(x_in.dtype)
