"""Train SAEs and transcoders on activations streamed from a hooked model.

Recipe (Towards Monosemanticity; OpenAI's TopK paper; Gated/JumpReLU papers): decoder bias
initialised at the geometric median of the targets; decoder rows kept at unit norm (the gradient
component parallel to each row is removed before every step, the rows renormalised after);
activations scaled so that their mean norm is sqrt(d) (SAELens's convention) and the scale
folded into the saved weights; AuxK for dead features of TopK/BatchTopK; linear warm-up, a
linear decay over the last part of training, gradient clipping. The loop is
:meth:`SAETrainer.step`, read top to bottom.
What differs per architecture (activation, sparsity loss, extra parameters, the saved name) is
asked of :mod:`sae_circuits.architectures`.

Activations come from any :class:`~sae_circuits.train.activations.ActivationSource`: a model's
forward (:func:`train_dictionaries`) or a cache on disk (:func:`train_from_cache`). With
``distributed=True`` (:mod:`sae_circuits.train.distributed`) every rank steps on its share of the
global batch and the trainer averages the gradients and sums the batch statistics over the ranks,
so that the ranks together take the step one process takes on the whole batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_circuits import architectures
from sae_circuits.architectures import SparseCode
from sae_circuits.architectures.topk import aux_k_loss
from sae_circuits.sae import SAE, SAEConfig
from sae_circuits.train import _ranks
from sae_circuits.train.activations import ActivationBatch, ActivationSource, ActivationStore
from sae_circuits.train.config import TrainConfig

if TYPE_CHECKING:
    from sae_circuits.train.activation_cache import Fingerprint


@torch.no_grad()
def geometric_median(
    points: Float[Tensor, "n d"], iters: int = 100, tol: float = 1e-6
) -> Float[Tensor, " d"]:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to ``points``."""
    median = points.mean(dim=0)
    for _ in range(iters):
        weights = 1.0 / (points - median).norm(dim=-1).clamp_min(1e-8)
        updated = (weights[:, None] * points).sum(0) / weights.sum()
        if (updated - median).norm() < tol * median.norm().clamp_min(1.0):
            return updated
        median = updated
    return median


class TrainableDictionary(nn.Module):
    """The parameters being trained and the training-time forward pass (normalised space).

    ``W_dec``, ``W_enc``, ``b_enc``, ``b_dec`` are shared; the architecture (``cfg.architecture``,
    from :mod:`sae_circuits.architectures`) adds its own (``threshold`` for JumpReLU,
    ``batch_threshold`` for BatchTopK) and supplies the activation and sparsity loss.
    """

    distributed: bool = False
    """Whether batch-level choices (BatchTopK's selection) are made over every rank's rows."""

    def __init__(self, d_in: int, d_out: int, d_sae: int, cfg: TrainConfig, b_dec: Tensor, transcoder: bool):
        super().__init__()
        self.cfg, self.transcoder = cfg, transcoder
        self.arch = architectures.get(cfg.architecture)
        generator = torch.Generator().manual_seed(cfg.seed)  # the global RNG is left alone
        direction = torch.randn(d_sae, d_out, generator=generator)
        self.W_dec = nn.Parameter(direction / direction.norm(dim=-1, keepdim=True))
        encoder = (
            self.W_dec.data.T.clone()
            if not transcoder
            else torch.randn(d_in, d_sae, generator=generator) / math.sqrt(d_in)
        )
        self.W_enc = nn.Parameter(encoder)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(b_dec.clone())
        self.arch.init_training(self, cfg)

    def pre_acts(self, x: Tensor) -> Tensor:
        """Pre-activations ``(x - b_dec) @ W_enc + b_enc`` (``x @ W_enc + b_enc`` for transcoders)."""
        # The bias folded: b_dec's gradient is then a vector-matrix product instead of a full
        # [batch, d_sae] x [d_sae, d_in] one (25% of a step).
        bias = self.b_enc if self.transcoder else self.b_enc - self.b_dec @ self.W_enc
        return torch.addmm(bias, x, self.W_enc)

    def activate(self, h: Tensor) -> Tensor | SparseCode:
        """Feature activations: a :class:`SparseCode` for TopK/BatchTopK (only the selected
        entries exist, so decoding skips the zeros), a dense tensor otherwise."""
        return self.arch.train_activate(self, h)

    def decode(self, f: Tensor | SparseCode) -> Tensor:
        """``f @ W_dec + b_dec`` (a sum of selected rows for a :class:`SparseCode`)."""
        if isinstance(f, SparseCode):  # sum of value * W_dec row over each token's entries
            return (
                F.embedding_bag(f.features, self.W_dec, f.offsets, mode="sum", per_sample_weights=f.values)
                + self.b_dec
            )
        return f @ self.W_dec + self.b_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Rescale every decoder row to unit norm."""
        self.W_dec.data /= self.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Project out the part of each decoder row's gradient that would change its norm."""
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec.data).sum(-1, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec.data


class StepMetrics(NamedTuple):
    """What one optimiser step measured (in the normalised space)."""

    loss: float
    mse: float
    explained_variance: float
    l0: float
    dead_fraction: float


class SAETrainer:
    """Trains one dictionary from an :class:`~sae_circuits.train.activations.ActivationSource`
    (an :class:`ActivationStore` or a cache on disk); ``run()`` returns the saved-format SAE.

    ``distributed=True``: this process is one rank of torch.distributed's default group and
    ``store`` serves its share of each global batch; everything that decides the next step
    (initialisation, normalisation scales, gradients, firing counts) is then the same on all ranks.
    """

    last_metrics: StepMetrics
    """The latest step's metrics, set by :func:`run_trainers` (absent before its first step)."""

    def __init__(
        self, store: ActivationSource, cfg: TrainConfig, sae_cfg: SAEConfig, *, distributed: bool = False
    ) -> None:
        self.store, self.cfg, self.sae_cfg = store, cfg, sae_cfg
        self.distributed = distributed
        self.hook_in, self.hook_out = sae_cfg.hook_name, sae_cfg.site
        sample = store.sample(max(cfg.geometric_median_samples, cfg.batch_size))
        x, y = sample[self.hook_in], sample[self.hook_out]
        # Scale so that the mean norm E||x|| is sqrt(d) (SAELens's convention); inputs and targets
        # separately.
        self.scale_in = _norm_scale(x) if cfg.normalize_activations else 1.0
        self.scale_out = self.scale_in if not sae_cfg.is_transcoder else (
            _norm_scale(y) if cfg.normalize_activations else 1.0
        )  # fmt: skip
        b_dec = geometric_median(y[: cfg.geometric_median_samples] * self.scale_out)
        self.device = torch.device(cfg.device)
        self.dictionary = TrainableDictionary(
            sae_cfg.d_in, sae_cfg.output_width, sae_cfg.d_sae, cfg, b_dec, sae_cfg.is_transcoder
        ).to(self.device)
        # The sample, hence the scales and b_dec, is the same on every rank, and so is the seeded
        # initialisation; the broadcast makes "the same" bitwise, as DDP does when it wraps a module.
        self.dictionary.distributed = distributed
        _ranks.broadcast_from_rank0(self.dictionary, distributed)
        self.optimizer = torch.optim.Adam(self.dictionary.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        self.steps_done = 0
        self.tokens_since_fired = torch.zeros(sae_cfg.d_sae, dtype=torch.long, device=self.device)
        self.fire_counts = torch.zeros(sae_cfg.d_sae, dtype=torch.long, device=self.device)
        self.counted_tokens = 0

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then a linear decay over the last ``decay_fraction`` of the
        steps that would reach 0 at step ``n_steps``, one past the last: the last step runs at
        ``lr / decay_steps``, as transformers' linear schedule does (a step at 0 would change nothing)."""
        cfg, total = self.cfg, self.cfg.n_steps
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        decay_start = total * (1 - cfg.decay_fraction)
        decay = 1.0 if step < decay_start else max(0.0, (total - step) / max(1.0, total - decay_start))
        return cfg.lr * warm * decay

    def step(self, batch: ActivationBatch) -> StepMetrics:
        """One optimiser step on one batch."""
        cfg, model = self.cfg, self.dictionary
        x = batch[self.hook_in].to(self.device, non_blocking=True) * self.scale_in
        y = batch[self.hook_out].to(self.device, non_blocking=True) * self.scale_out
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.steps_done)

        h = model.pre_acts(x)
        f = model.activate(h)
        y_hat = model.decode(f)
        mse = (y_hat - y).pow(2).sum(-1).mean()
        loss = mse + self._sparsity_loss(h, f, y - y_hat)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # of this rank's mean: the ranks' average is the global batch's mean
        _ranks.average_gradients(model.parameters(), self.distributed)
        model.remove_parallel_gradient()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        model.normalise_decoder()
        self.steps_done += 1
        return self._bookkeeping(f, y, y_hat.detach(), loss.item(), mse.item())

    def _sparsity_loss(self, h: Tensor, f: Tensor | SparseCode | None, residual: Tensor) -> Tensor:
        """The architecture's sparsity term (L1, L0, AuxK, ...)."""
        return self.dictionary.arch.sparsity_loss(self, h, f, residual)

    def global_mean(self, x: Tensor) -> Tensor:
        """The mean over the ranks of a per-rank mean ``x`` (``x`` itself in one process): the
        global batch's mean, as a constant (no gradient flows through it)."""
        return _ranks.all_reduce_sum(x, self.distributed) / _ranks.world_size(self.distributed)

    def _aux_k_loss(self, h: Tensor, residual: Tensor) -> Tensor:
        """AuxK: the top ``aux_k`` dead features must reconstruct what the live ones missed."""
        return aux_k_loss(self, h, residual)

    @torch.no_grad()
    def _bookkeeping(
        self, f: Tensor | SparseCode, y: Tensor, y_hat: Tensor, loss: float, mse: float
    ) -> StepMetrics:
        if isinstance(f, SparseCode):
            counts = torch.bincount(f.features[f.values > 0], minlength=f.d_sae)
        else:
            counts = (f > 0).sum(0)
        # One all-reduce of every batch statistic, so that dead-feature tracking and firing
        # counts (which steer AuxK and the saved sparsity) are the global batch's on every rank.
        y64 = y.double()  # sum ||y - mean||^2 = sum ||y||^2 - ||sum y||^2 / n, in float64 (cancellation)
        error = (y - y_hat).pow(2).sum().double()
        scalars = torch.stack(
            [y64.new_tensor(y.shape[0]), error, y64.pow(2).sum(), y64.new_tensor(loss), y64.new_tensor(mse)]
        )
        stats = _ranks.all_reduce_sum(
            torch.cat([counts.double(), y64.sum(0), scalars.double()]), self.distributed
        )
        d_sae, d_out = counts.shape[0], y.shape[1]
        counts = stats[:d_sae].round().long()
        y_sum = stats[d_sae : d_sae + d_out]
        n, error, energy, loss_sum, mse_sum = stats[d_sae + d_out :].tolist()
        n_tokens, world = int(n), _ranks.world_size(self.distributed)
        loss, mse = loss_sum / world, mse_sum / world
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[counts > 0] = 0
        if self.steps_done > self.cfg.n_steps * 0.8:  # firing frequencies over the last 20%
            self.fire_counts += counts
            self.counted_tokens += n_tokens
        variance = energy - float(y_sum.pow(2).sum()) / n_tokens  # sum ||y - mean(y)||^2
        explained = 1.0 - error / max(variance, 1e-12)
        l0 = float(counts.sum()) / n_tokens
        dead = float((self.tokens_since_fired >= self.cfg.dead_after_tokens).float().mean())
        return StepMetrics(loss, mse, explained, l0, dead)

    def run(self) -> SAE:
        """Train for ``cfg.n_steps`` steps on this trainer's own stream; return the SAE."""
        return run_trainers(self.store, [self])[0]

    @torch.no_grad()
    def export(self) -> SAE:
        """The trained dictionary in the inference format, reading and writing raw activations."""
        d = self.dictionary
        sae = SAE(self.sae_cfg)
        # Fold the input scale into the encoder and the output scale into the decoder:
        # h = (s_in x - b) W + c = (x - b/s_in) (s_in W) + c; out = (f W_dec + b_dec) / s_out.
        sae.W_enc.copy_(d.W_enc * self.scale_in)
        sae.W_dec.copy_(d.W_dec / self.scale_out)
        sae.b_dec.copy_(d.b_dec / self.scale_out)
        sae.b_enc.copy_(d.b_enc)
        d.arch.export_training(d, sae)
        frequency = self.fire_counts.double() / max(self.counted_tokens, 1)
        sae.sparsity = torch.log10(frequency + 1e-10).float().cpu()
        return sae


def _norm_scale(x: Tensor) -> float:
    return math.sqrt(x.shape[-1]) / float(x.norm(dim=-1).mean())


def _saved_architecture(cfg: TrainConfig, transcoder: bool) -> str:
    return architectures.get(cfg.architecture).saved_architecture(transcoder)


def _width(model: nn.Module, tokens: Tensor, hook_name: str) -> int:
    from sae_circuits.train.activations import stop_layer

    with torch.no_grad():
        _, cache = cast(Any, model).run_with_cache(  # TL API, not on nn.Module
            tokens[:1, :2], names_filter=hook_name, stop_at_layer=stop_layer(hook_name)
        )
    if hook_name not in cache.keys():
        raise ValueError(f"hook {hook_name!r} produced no activation in {type(model).__name__}")
    return int(cache[hook_name].shape[-1])


class DictionarySpec(NamedTuple):
    """Where one dictionary reads (and, for a transcoder, writes)."""

    hook_in: str
    hook_out: str | None = None


def run_trainers(store: ActivationSource, trainers: list[SAETrainer]) -> list[SAE]:
    """Step every trainer on every batch of one shared stream; one progress bar for all (on
    rank 0 only, when distributed)."""
    cfg = trainers[0].cfg
    label = trainers[0].sae_cfg.site if len(trainers) == 1 else f"{len(trainers)} dictionaries"
    quiet = not cfg.progress or (trainers[0].distributed and torch.distributed.get_rank() != 0)
    bar = tqdm(total=cfg.n_steps, disable=quiet, desc=f"train {label}")
    for trainer in trainers:
        trainer.dictionary.train()
    for step, batch in zip(range(cfg.n_steps), store):  # range first: no batch drawn past the last step
        metrics = [trainer.step(batch) for trainer in trainers]
        for trainer, m in zip(trainers, metrics):
            trainer.last_metrics = m
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.n_steps:
            worst = min(metrics, key=lambda m: m.explained_variance)
            bar.set_postfix(
                loss=f"{worst.loss:.3g}", ev=f"{worst.explained_variance:.3f}",
                l0=f"{worst.l0:.1f}", dead=f"{max(m.dead_fraction for m in metrics):.3f}",
            )  # fmt: skip
        bar.update(1)
    bar.close()
    return [trainer.export() for trainer in trainers]


def train_dictionaries(
    model: nn.Module, specs: list[DictionarySpec], tokens: Int[Tensor, "n_seq seq"], config: TrainConfig
) -> list[SAE]:
    """Train one dictionary per spec from a single activation stream (one model pass for all)."""
    from sae_circuits._model import get_hook_point

    if (
        not isinstance(tokens, Tensor)
        or tokens.ndim != 2
        or tokens.dtype not in (torch.long, torch.int32, torch.int64)
    ):
        raise ValueError("tokens must be an integer tensor of shape [n_sequences, sequence_length]")
    names = sorted({n for spec in specs for n in spec if n is not None})
    for name in names:
        get_hook_point(model, name)
    store = ActivationStore(
        model, tokens.long(), names,
        batch_size=config.batch_size, buffer_tokens=config.buffer_tokens,
        model_batch_size=config.model_batch_size, skip_first_position=config.skip_first_position,
        seed=config.seed,
    )  # fmt: skip
    with _caller_rng_kept():  # the trainer seeds torch's global RNG; the caller's stream goes on after
        trainers = [SAETrainer(store, config, _sae_config(model, spec, tokens, config)) for spec in specs]
        return run_trainers(store, trainers)


def _caller_rng_kept() -> Any:
    """Restore torch's global RNG state (CPU and every CUDA device) when the block ends: training
    seeds it with ``config.seed`` for a reproducible initialisation, which must not reseed the
    caller's own random numbers."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=devices)


def _sae_config(model: nn.Module, spec: DictionarySpec, tokens: Tensor, config: TrainConfig) -> SAEConfig:
    widths = {name: _width(model, tokens, name) for name in spec if name is not None}
    model_name = getattr(getattr(model, "cfg", None), "model_name", None)
    return _sae_config_of(
        spec, widths, config, {"model_name": model_name, "context_size": int(tokens.shape[1])}
    )


def _sae_config_of(
    spec: DictionarySpec, widths: Mapping[str, int], config: TrainConfig, metadata: Mapping[str, Any]
) -> SAEConfig:
    """The saved config of the dictionary ``spec`` over hooks of the given ``widths``."""
    transcoder = spec.hook_out is not None
    d_in = widths[spec.hook_in]
    return SAEConfig(
        _saved_architecture(config, transcoder),
        d_in=d_in,
        d_sae=config.d_sae or config.expansion_factor * d_in,
        hook_name=spec.hook_in,
        hook_name_out=spec.hook_out,
        d_out=widths[spec.hook_out] if spec.hook_out is not None else None,
        k=config.k,  # kept by the architectures that use it (TopK), dropped by the others
        apply_b_dec_to_input=not transcoder,
        metadata={**metadata, "prepend_bos": False, "sae_circuits_training": asdict(config)},
    )


def train_from_cache(
    cache: str | os.PathLike[str],
    specs: Sequence[DictionarySpec],
    config: TrainConfig | None = None,
    *,
    expect_fingerprint: Fingerprint | None = None,
) -> list[SAE]:
    """Train one dictionary per spec on activations cached by
    :func:`~sae_circuits.train.activation_cache.cache_activations`: no model forward, so a sweep
    pays for the model once. ``expect_fingerprint`` refuses a cache made from another model,
    other tokens or other hooks. ``config.model_batch_size`` and ``skip_first_position`` were the
    cache's business and are not used; the rest (seed, batch, buffer, ...) is as for
    :func:`train_dictionaries` (the same seed gives the same dictionaries on every run).
    :mod:`sae_circuits.train.distributed` trains from the same cache on several processes.

    >>> from sae_circuits.train import DictionarySpec, cache_activations, train_from_cache
    >>> _ = cache_activations(model, tokens, ["blocks.0.hook_resid_post"], "acts", progress=False)
    >>> config = sc.TrainConfig(architecture="topk", d_sae=64, k=8, batch_size=16, total_tokens=64,
    ...                         buffer_tokens=32, geometric_median_samples=32, progress=False)
    >>> [sae] = train_from_cache("acts", [DictionarySpec("blocks.0.hook_resid_post")], config)
    >>> sae.cfg.hook_name, sae.W_dec.shape
    ('blocks.0.hook_resid_post', torch.Size([64, 128]))
    """
    return _train_cached(cache, specs, config or TrainConfig(), expect_fingerprint=expect_fingerprint)


def _train_cached(
    cache: str | os.PathLike[str],
    specs: Sequence[DictionarySpec],
    config: TrainConfig,
    *,
    expect_fingerprint: Fingerprint | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> list[SAE]:
    """:func:`train_from_cache` as rank ``rank`` of ``world_size`` (``world_size > 1`` needs an
    initialised torch.distributed default group); what :mod:`sae_circuits.train.distributed` runs."""
    from sae_circuits.train.activation_cache import CachedActivations

    specs = [DictionarySpec(*spec) for spec in specs]
    if not specs:
        raise ValueError("no dictionary to train: specs is empty")
    names = sorted({n for spec in specs for n in spec if n is not None})
    store = CachedActivations(
        cache, names, batch_size=config.batch_size, buffer_tokens=config.buffer_tokens, seed=config.seed,
        rank=rank, world_size=world_size, expect_fingerprint=expect_fingerprint,
    )  # fmt: skip
    manifest = store.manifest
    metadata = {
        "model_name": manifest.fingerprint.model_name,
        "context_size": manifest.fingerprint.context,
        "activation_cache": manifest.fingerprint.digest,
    }
    with _caller_rng_kept():
        trainers = [
            SAETrainer(
                store,
                config,
                _sae_config_of(spec, manifest.widths, config, metadata),
                distributed=world_size > 1,
            )
            for spec in specs
        ]
        return run_trainers(store, trainers)


def train_sae(
    model: nn.Module, hook_name: str, tokens: Int[Tensor, "n_seq seq"], config: TrainConfig | None = None
) -> SAE:
    """Train an SAE on the activations at ``hook_name`` of ``model`` over ``tokens``.

    A few steps at a tiny size (real runs want ~10^6 tokens; see :class:`TrainConfig`):

    >>> config = sc.TrainConfig(d_sae=64, k=8, batch_size=32, total_tokens=128, buffer_tokens=64,
    ...                         geometric_median_samples=64, progress=False)
    >>> sae = sc.train_sae(model, "blocks.0.hook_resid_post", tokens, config)
    >>> sae.cfg.architecture, sae.cfg.hook_name, sae.W_dec.shape  # batchtopk is saved as jumprelu
    ('jumprelu', 'blocks.0.hook_resid_post', torch.Size([64, 128]))
    >>> sae.save("my_sae")
    """
    return train_dictionaries(model, [DictionarySpec(hook_name)], tokens, config or TrainConfig())[0]


def train_transcoder(
    model: nn.Module,
    hook_in: str,
    hook_out: str,
    tokens: Int[Tensor, "n_seq seq"],
    config: TrainConfig | None = None,
) -> SAE:
    """Train a transcoder predicting the activation at ``hook_out`` from the one at ``hook_in``
    (e.g. ``blocks.L.ln2.hook_normalized`` -> ``blocks.L.hook_mlp_out``).

    >>> config = sc.TrainConfig(d_sae=64, k=8, batch_size=32, total_tokens=128, buffer_tokens=64,
    ...                         geometric_median_samples=64, progress=False)
    >>> tc = sc.train_transcoder(model, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out",
    ...                          tokens, config)
    >>> tc.cfg.site, tc.W_enc.shape, tc.W_dec.shape  # spliced at its output hook
    ('blocks.0.hook_mlp_out', torch.Size([128, 64]), torch.Size([64, 128]))
    """
    return train_dictionaries(model, [DictionarySpec(hook_in, hook_out)], tokens, config or TrainConfig())[0]
