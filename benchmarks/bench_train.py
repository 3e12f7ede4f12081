"""Benchmark: SAE training throughput, ours against sae-lens, on the same activations.

Why: ``sae_circuits.train`` claims that its TopK training step is cheaper than sae-lens's because
it keeps the selected features as a :class:`~sae_circuits.train.trainer.SparseCode` (values,
feature indices, offsets) and decodes them with one ``F.embedding_bag`` over the ``k`` selected
decoder rows per token, instead of scattering them into a dense ``[batch, d_sae]`` tensor and
multiplying it by ``W_dec`` (and differentiating through that dense product). This script measures
what that is worth in a training loop, and checks that the cheaper step trains as good an SAE.

What (one process, ``torch.set_num_threads(1)``, float32, CPU):

* Activations: ``blocks.1.hook_resid_post`` (d_in = 128) of the embedded zoo model
  (``sae_circuits/zoo/tiny``) over rows of ``build/zoo/tokens/train.npy`` if both exist, otherwise
  of a random GPT-2 of width 128 (``sae_circuits.recipes.random_model.random_gpt2``) over stdlib source
  text. Position 0 of every row is dropped (ours' default). They are computed once, scaled by one
  constant so that E||x||^2 = d_in (the same tensor for every trainer; the trainers' own
  normalisation is off), and split into a training set and a disjoint held-out set.
* Every trainer gets the identical sequence of batches (one seeded shuffle), so only the trainer
  differs. Same architecture (TopK, k = 32), width (d_sae = 16 x 128 = 2048), batch (4096), Adam
  (lr 4e-4, betas 0.9/0.999), linear warm-up (100 steps), linear decay to 0 over the last 20%,
  gradient clipping at 1.0, and dead-feature window (1M tokens = 244 steps; AuxK uses it).
  Everything else is each library's own default recipe (ours: unit-norm decoder rows, geometric-
  median ``b_dec``, AuxK normalised by the residual's variance; sae-lens: decoder rows initialised
  at norm 0.1, ``rescale_acts_by_decoder_norm=True``, zero ``b_dec``, unnormalised AuxK).
* ours: ``sae_circuits.train.trainer.SAETrainer`` built around an in-memory store; timed:
  ``trainer.step({hook: batch})`` (forward, loss, backward, decoder-gradient projection, clipping,
  Adam, decoder renormalisation and our per-step bookkeeping: metrics with ``.item()``, firing
  counts, dead-feature tracking).
* ours, dense decode: the same trainer with ``dictionary.activate`` wrapped to return
  ``SparseCode.dense()`` (so ``decode`` runs ``f @ W_dec``): what the sparse decode buys.
* sae-lens: ``TopKTrainingSAE`` + ``sae_lens.training.sae_trainer.SAETrainer`` (wandb, checkpoints
  and evaluator off). Timed: the body of ``SAETrainer.fit()``'s loop without its wandb, checkpoint
  and progress-bar calls: ``maybe_reset_sparsity()``, ``step(batch)`` (its own bookkeeping, forward,
  backward, clipping, Adam, lr and coefficient schedulers), ``n_training_steps += 1``.
* Timing: the steps are run in chunks (default 10 steps); each chunk is run by every trainer in
  turn (order rotated from chunk to chunk) before the next chunk, so a noisy neighbour slows them
  alike. Throughput = activations / summed ``step`` time per chunk; we report the median over
  chunks, the ratio ours / sae-lens as the median of the per-chunk ratios, and the ratio of total
  times.
* Quality, after the same number of steps, on the held-out activations (in the normalised space):
  explained variance 1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2, mean L0, and the fraction of
  features that never fire on the held-out set.
* AuxK's cost: the step time of each trained trainer with no feature dead and with 10% of the
  features marked dead (so both run AuxK on the same number of features), interleaved, medians.
* Where the time goes: ``torch.profiler`` over a few extra steps of each trained trainer (AuxK
  active if it has dead features), self CPU time per step of the top operators.

Run ``python benchmarks/bench_train.py --write-docs`` to refresh the section in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

warnings.filterwarnings("ignore")

from _report import machine, versions, write_section

from sae_circuits.sae import SAEConfig
from sae_circuits.train.config import TrainConfig
from sae_circuits.train.trainer import SAETrainer, SparseCode

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## SAE training throughput (issue: embedded default)"
COMMAND = "python benchmarks/bench_train.py --write-docs"

TINY = REPO / "sae_circuits" / "zoo" / "tiny"
TOKENS = REPO / "build" / "zoo" / "tokens" / "train.npy"
HOOK = "blocks.1.hook_resid_post"
D_IN, EXPANSION, K = 128, 16, 32
D_SAE = EXPANSION * D_IN
BATCH, LR, WARMUP, DECAY_FRACTION, GRAD_CLIP = 4096, 4e-4, 100, 0.2, 1.0
DEAD_AFTER_TOKENS = 1_000_000
N_EVAL, SEQ = 50_000, 512
TARGET_RATIO, TARGET_EV_GAP = 1.5, 0.01

OURS, DENSE, LENS = "ours", "ours, dense decode", "sae-lens"


# --------------------------------------------------------------------------- activations


@dataclass
class Activations:
    train: torch.Tensor  # [n_train, d_in], normalised
    held_out: torch.Tensor  # [N_EVAL, d_in], normalised
    source: str  # one line for the docs
    scale: float


@torch.no_grad()
def _site_activations(model: Any, rows: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """``HOOK`` activations of ``rows`` (position 0 dropped), one row per token."""
    rows = rows[:, :n_ctx]
    out = []
    for start in range(0, len(rows), 16):
        _, cache = model.run_with_cache(rows[start : start + 16], names_filter=HOOK, stop_at_layer=2)
        out.append(cache[HOOK][:, 1:].reshape(-1, cache[HOOK].shape[-1]).float())
    return torch.cat(out)


def _stdlib_rows(tokenizer: Any, n_rows: int, seq: int) -> torch.Tensor:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    ids: list[int] = []
    for f in files:
        try:
            ids += tokenizer(f.read_text(encoding="utf-8", errors="replace"))["input_ids"]
        except (OSError, ValueError):
            continue
        if len(ids) >= n_rows * seq:
            break
    if len(ids) < n_rows * seq:
        raise RuntimeError(f"the stdlib gives {len(ids)} tokens, fewer than the {n_rows * seq} needed")
    return torch.tensor(ids[: n_rows * seq]).view(n_rows, seq)


def load_activations(source: str, n_train: int, seed: int) -> Activations:
    from sae_circuits.recipes.random_model import random_gpt2
    from sae_circuits.zoo.loader import load_hf_gpt2, load_tokenizer

    embedded = (TINY / "model.safetensors").is_file() and TOKENS.is_file()
    if source == "embedded" and not embedded:
        raise SystemExit(f"--source embedded: {TINY / 'model.safetensors'} or {TOKENS} is missing")
    use_embedded = source == "embedded" or (source == "auto" and embedded)
    if use_embedded:
        model = load_hf_gpt2(TINY)
        n_ctx = min(model.cfg.n_ctx, SEQ)
        per_row = n_ctx - 1
        n_rows = math.ceil((n_train + N_EVAL) / per_row)
        table = np.load(TOKENS, mmap_mode="r")
        if n_rows > len(table):
            raise SystemExit(f"{TOKENS} has {len(table)} rows, fewer than the {n_rows} needed")
        pick = np.sort(np.random.default_rng(seed).choice(len(table), size=n_rows, replace=False))
        rows = torch.from_numpy(np.asarray(table[pick]).astype(np.int64))
        what = (
            f"the embedded zoo model `sae_circuits/zoo/tiny` (d_model={model.cfg.d_model}, "
            f"{model.cfg.n_layers} layers, d_vocab={model.cfg.d_vocab}) over {n_rows} random rows of "
            f"`build/zoo/tokens/train.npy` (contexts of {n_ctx} tokens)"
        )
    else:
        folder = tempfile.mkdtemp(prefix="bench_train_")
        model = random_gpt2(folder, d_model=D_IN, n_layers=2, n_ctx=SEQ)
        n_ctx, per_row = SEQ, SEQ - 1
        n_rows = math.ceil((n_train + N_EVAL) / per_row)
        rows = _stdlib_rows(load_tokenizer(folder), n_rows, SEQ)
        rows = rows[torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))]
        what = (
            f"a random GPT-2 (`random_gpt2`, d_model={D_IN}, 2 layers, vocab {model.cfg.d_vocab}; the embedded model "
            f"was not available) over {n_rows} contexts of {SEQ} tokens of the stdlib's source"
        )
    if model.cfg.d_model != D_IN:
        raise SystemExit(f"the model's width is {model.cfg.d_model}, not {D_IN}")
    model.eval()
    # Held-out rows first (whole contexts, disjoint from the training ones).
    n_eval_rows = math.ceil(N_EVAL / per_row)
    held_out = _site_activations(model, rows[:n_eval_rows], n_ctx)[:N_EVAL]
    train = _site_activations(model, rows[n_eval_rows:], n_ctx)[:n_train]
    scale = math.sqrt(D_IN / float(train[:200_000].pow(2).sum(-1).mean()))
    train.mul_(scale)
    held_out.mul_(scale)
    return Activations(train, held_out, f"{what}; position 0 dropped", scale)


class BatchOrder:
    """The one shuffled sequence of training batches every trainer sees."""

    def __init__(self, acts: torch.Tensor, n_steps: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        needed = n_steps * BATCH
        perms = [torch.randperm(len(acts), generator=g) for _ in range(math.ceil(needed / len(acts)))]
        self.index = torch.cat(perms)[:needed]
        self.acts = acts
        self.epochs = needed / len(acts)

    def __getitem__(self, step: int) -> torch.Tensor:
        return self.acts[self.index[step * BATCH : (step + 1) * BATCH]]


# --------------------------------------------------------------------------- trainers


class _MemoryStore:
    """The two things ``SAETrainer`` asks of its store: ``sample(n)`` (initialisation) and iteration."""

    def __init__(self, order: BatchOrder) -> None:
        self.order = order

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        return {HOOK: self.order.acts[:n]}

    def __iter__(self):
        step = 0
        while True:
            yield {HOOK: self.order[step]}
            step += 1


@dataclass
class Runner:
    name: str
    step: Callable[[torch.Tensor], None]
    encode_decode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # -> (dense f, x_hat)
    own_dead_fraction: Callable[[], float]
    any_dead: Callable[[], bool]  # will this step run AuxK?
    mark_dead: Callable[[torch.Tensor | None], None]  # reset the dead tracking; mark these features dead
    chunk_times: list[float] = field(default_factory=list)
    aux_steps: int = 0


def make_ours(order: BatchOrder, n_steps: int, dense: bool) -> Runner:
    cfg = TrainConfig(
        architecture="topk", k=K, expansion_factor=EXPANSION, lr=LR, warmup_steps=WARMUP,
        decay_fraction=DECAY_FRACTION, grad_clip=GRAD_CLIP, batch_size=BATCH, total_tokens=n_steps * BATCH,
        dead_after_tokens=DEAD_AFTER_TOKENS, normalize_activations=False, progress=False, seed=0,
    )  # fmt: skip
    sae_cfg = SAEConfig("topk", d_in=D_IN, d_sae=D_SAE, hook_name=HOOK, k=K)
    trainer = SAETrainer(_MemoryStore(order), cfg, sae_cfg)  # type: ignore[arg-type]
    d = trainer.dictionary
    if dense:
        sparse_activate = d.activate
        d.activate = lambda h: sparse_activate(h).dense()  # decode then runs f @ W_dec
    d.train()

    def step(batch: torch.Tensor) -> None:
        trainer.step({HOOK: batch})

    @torch.no_grad()
    def encode_decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = d.activate(d.pre_acts(x))
        x_hat = d.decode(f)
        return (f.dense() if isinstance(f, SparseCode) else f), x_hat

    def own_dead() -> float:
        return float((trainer.tokens_since_fired >= cfg.dead_after_tokens).float().mean())

    def any_dead() -> bool:
        return bool((trainer.tokens_since_fired >= cfg.dead_after_tokens).any())

    def mark_dead(features: torch.Tensor | None) -> None:
        trainer.tokens_since_fired.zero_()
        if features is not None:
            trainer.tokens_since_fired[features] = cfg.dead_after_tokens

    return Runner(DENSE if dense else OURS, step, encode_decode, own_dead, any_dead, mark_dead)


def make_lens(n_steps: int) -> Runner:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer as LensTrainer

    torch.manual_seed(0)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=K, normalize_activations="none", dtype="float32", device="cpu"
        )
    )
    cfg = SAETrainerConfig(
        total_training_samples=n_steps * BATCH, train_batch_size_samples=BATCH, lr=LR, lr_end=LR,
        lr_scheduler_name="constant", lr_warm_up_steps=WARMUP, lr_decay_steps=int(DECAY_FRACTION * n_steps),
        adam_beta1=0.9, adam_beta2=0.999, device="cpu", autocast=False,
        dead_feature_window=DEAD_AFTER_TOKENS // BATCH, feature_sampling_window=10**9, n_checkpoints=0,
        checkpoint_path=None, save_final_checkpoint=False, logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    trainer = LensTrainer(cfg, sae, data_provider=iter(()))
    sae.train()

    def step(batch: torch.Tensor) -> None:  # fit()'s loop body, without wandb/checkpoints/progress bar
        trainer.maybe_reset_sparsity()
        trainer.step(batch)
        trainer.n_training_steps += 1

    @torch.no_grad()
    def encode_decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = sae.encode(x)
        return f, sae.decode(f)

    def own_dead() -> float:
        return float(trainer.dead_neurons.float().mean())

    def any_dead() -> bool:
        return bool(trainer.dead_neurons.any())

    def mark_dead(features: torch.Tensor | None) -> None:
        trainer.n_forward_passes_since_fired.zero_()
        if features is not None:
            trainer.n_forward_passes_since_fired[features] = cfg.dead_feature_window + 1

    return Runner(LENS, step, encode_decode, own_dead, any_dead, mark_dead)


# --------------------------------------------------------------------------- measurement


def train_interleaved(runners: list[Runner], order: BatchOrder, n_steps: int, chunk: int) -> None:
    n_chunks = math.ceil(n_steps / chunk)
    for c in range(n_chunks):
        steps = range(c * chunk, min(n_steps, (c + 1) * chunk))
        batches = [order[i].clone() for i in steps]
        rot = c % len(runners)
        for runner in runners[rot:] + runners[:rot]:
            total = 0.0
            for batch in batches:
                x = batch.clone()
                runner.aux_steps += runner.any_dead()
                t0 = time.perf_counter()
                runner.step(x)
                total += time.perf_counter() - t0
            runner.chunk_times.append(total)
        if (c + 1) % 5 == 0 or c + 1 == n_chunks:
            rates = ", ".join(f"{r.name}: {len(batches) * BATCH / r.chunk_times[-1]:,.0f}/s" for r in runners)
            print(f"  chunk {c + 1}/{n_chunks} (step {steps[-1] + 1}): {rates}", file=sys.stderr)


@torch.no_grad()
def evaluate(runner: Runner, x: torch.Tensor) -> dict[str, float]:
    sq_err, n_active, fired = 0.0, 0.0, torch.zeros(D_SAE, dtype=torch.bool)
    for start in range(0, len(x), 8192):
        xb = x[start : start + 8192]
        f, x_hat = runner.encode_decode(xb)
        sq_err += float((xb - x_hat).pow(2).sum())
        active = f > 0
        n_active += float(active.sum())
        fired |= active.any(0)
    variance = float((x - x.mean(0)).pow(2).sum())
    return {
        "ev": 1.0 - sq_err / variance,
        "mse": sq_err / len(x),
        "l0": n_active / len(x),
        "dead": 1.0 - float(fired.float().mean()),
        "own_dead": runner.own_dead_fraction(),
    }


def auxk_probe(
    runners: list[Runner], order: BatchOrder, rounds: int, fraction: float
) -> dict[str, tuple[float, float]]:
    """Median step time of each trained trainer with no feature dead and with ``fraction`` of them
    marked dead (the dead tracking is reset before every step, so each step sees exactly that)."""
    dead = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(2))[: int(fraction * D_SAE)]
    times: dict[str, tuple[list[float], list[float]]] = {r.name: ([], []) for r in runners}
    for i in range(rounds):
        rot = i % len(runners)
        for runner in runners[rot:] + runners[:rot]:
            for j, features in enumerate((None, dead)):
                runner.mark_dead(features)
                x = order[i % (len(order.index) // BATCH)].clone()
                t0 = time.perf_counter()
                runner.step(x)
                times[runner.name][j].append(time.perf_counter() - t0)
    return {name: (statistics.median(a), statistics.median(b)) for name, (a, b) in times.items()}


def profile_steps(runners: list[Runner], order: BatchOrder, n_steps: int, n_profile: int) -> dict[str, list]:
    """Top operators by self CPU time per step, over ``n_profile`` extra steps of each trainer."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for runner in runners:
        out[f"{runner.name}:auxk"] = runner.any_dead()
        batches = [order[(n_steps + i) % n_steps].clone() for i in range(n_profile)]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches:
                runner.step(batch)
        events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
        total = sum(e.self_cpu_time_total for e in events) / n_profile / 1e3  # ms per step
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
        out[runner.name] = [
            (e.key, e.self_cpu_time_total / n_profile / 1e3, e.count // n_profile) for e in top
        ]
        out[runner.name].append(("all aten ops", total, None))
    return out


# --------------------------------------------------------------------------- report


def report(acts: Activations, order: BatchOrder, runners: list[Runner], quality: dict[str, dict[str, float]],
           prof: dict[str, list] | None, probe: dict[str, tuple[float, float]] | None,
           args: argparse.Namespace) -> str:  # fmt: skip
    by_name = {r.name: r for r in runners}
    steps_per_chunk = [
        min(args.chunk, args.steps - c * args.chunk) for c in range(len(runners[0].chunk_times))
    ]

    def rates(r: Runner) -> list[float]:
        return [n * BATCH / t for n, t in zip(steps_per_chunk, r.chunk_times)]

    def median_rate(r: Runner) -> float:
        return statistics.median(rates(r))

    def ratio_to_lens(r: Runner) -> float:  # median of the per-chunk ratios
        return statistics.median(a / b for a, b in zip(rates(r), rates(by_name[LENS])))

    def total_ratio(r: Runner) -> float:
        return sum(by_name[LENS].chunk_times) / sum(r.chunk_times)

    # Before features can die (no AuxK work in either trainer) and after (AuxK runs whenever one is dead).
    dead_step = DEAD_AFTER_TOKENS // BATCH
    early = [c for c in range(len(steps_per_chunk)) if (c + 1) * args.chunk <= dead_step]
    late = [c for c in range(len(steps_per_chunk)) if c * args.chunk >= dead_step + 1]

    def phase_rate(r: Runner, chunks: list[int]) -> str:
        return f"{statistics.median(rates(r)[c] for c in chunks):,.0f}" if chunks else "-"

    def phase_ratio(r: Runner, chunks: list[int]) -> float | None:
        lens_rates = rates(by_name[LENS])
        return statistics.median(rates(r)[c] / lens_rates[c] for c in chunks) if chunks else None

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    early_span = f"steps 1-{early[-1] * args.chunk + steps_per_chunk[early[-1]]}" if early else "none"
    late_span = f"steps {late[0] * args.chunk + 1}-{args.steps}" if late else "none"

    lens_ev = quality[LENS]["ev"]
    lines = [
        SECTION,
        "",
        f"Command: `{COMMAND}`"
        + (f" (run here with `--steps {args.steps}`)" if args.steps != 400 else "")
        + f": {args.steps} steps of {BATCH} activations for each trainer, timed in chunks of {args.chunk} steps; "
        "each chunk runs every trainer in turn (rotating the order) before the next chunk, so a noisy "
        "neighbour slows them alike. Compare the ratios; the absolute rates are noisy.",
        "",
        f"- Machine: {machine()} (`torch.set_num_threads(1)`; other jobs were running on the machine).",
        f"- Versions: {versions()}.",
        f"- Date: {datetime.date.today().isoformat()}.",
        f"- Activations: `{HOOK}` (d_in = {D_IN}) of {acts.source}; scaled by {acts.scale:.4g} so that "
        f"E||x||^2 = {D_IN}; {len(acts.train):,} training activations ({order.epochs:.2f} passes in "
        f"{args.steps} steps) and a disjoint held-out set of {len(acts.held_out):,} (from other contexts).",
        f"- Same for every trainer: the batches (one seeded shuffle), TopK k = {K}, d_sae = {D_SAE} "
        f"({EXPANSION} x d_in), batch {BATCH}, Adam lr {LR:g} (betas 0.9/0.999), linear warm-up {WARMUP} steps, "
        f"linear decay to 0 over the last {DECAY_FRACTION:.0%}, gradient clipping {GRAD_CLIP:g}, a feature is dead "
        f"after {DEAD_AFTER_TOKENS:,} tokens without firing ({DEAD_AFTER_TOKENS // BATCH} steps; AuxK uses it), "
        "float32, normalisation off in both (the data are pre-scaled). Otherwise each library's own recipe: ours "
        "unit-norm decoder rows kept unit-norm, geometric-median `b_dec`, AuxK (k_aux = d_in/2 = 64) normalised "
        "by the residual's variance and weighted 1/32; sae-lens decoder rows initialised at norm 0.1, "
        "`rescale_acts_by_decoder_norm=True`, zero `b_dec`, AuxK (k_aux = d_in/2 = 64) unnormalised, weight 1.",
        f"- Timed for ours: `SAETrainer.step({{hook: batch}})` (forward, loss, backward, decoder-gradient "
        "projection, clipping, Adam, decoder renormalisation, and the per-step bookkeeping: metrics read with "
        f"`.item()`, firing counts, dead tracking). *{DENSE}*: the same trainer with `dictionary.activate` "
        "wrapped to return `SparseCode.dense()`, so `decode` runs `f @ W_dec` on a dense [batch, d_sae] tensor. "
        "For sae-lens: `TopKTrainingSAE` + `sae_lens.training.sae_trainer.SAETrainer` (wandb, checkpoints, "
        "evaluator off), the body of `SAETrainer.fit()`'s loop minus its wandb/checkpoint/progress-bar calls: "
        "`maybe_reset_sparsity()`, `step(batch)` (its bookkeeping, forward, backward, clipping, Adam, lr "
        "scheduler), `n_training_steps += 1`.",
        "",
        "| trainer | activations/s (median over chunks) | ms/step | ratio to sae-lens (median of per-chunk ratios) "
        "| ratio of total times | held-out EV | EV - sae-lens's | L0 | dead (held-out) | dead (trainer's own count) "
        "| steps that ran AuxK |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runners:
        q = quality[r.name]
        rate = median_rate(r)
        ratio = ratio_to_lens(r)
        ratio_s = f"{ratio:.2f}"
        gap = q["ev"] - lens_ev
        gap_s = f"{gap:+.4f}"
        if r.name == OURS:
            ratio_s = f"**{ratio:.2f}** (target >= {TARGET_RATIO})"
            gap_s = f"**{gap:+.4f}** (target >= -{TARGET_EV_GAP})"
        if r.name == LENS:
            ratio_s, gap_s = "1.00", "0"
        lines.append(
            f"| {r.name} | {rate:,.0f} | {BATCH / rate * 1e3:.0f} | {ratio_s} | {total_ratio(r):.2f} | "
            f"{q['ev']:.4f} | {gap_s} | {q['l0']:.1f} | {q['dead']:.3f} | {q['own_dead']:.3f} | {r.aux_steps} |"
        )
    lines += [
        "",
        f"Before any feature can be dead ({early_span}: no AuxK work in either trainer) and after "
        f"({late_span}: AuxK runs in a step whenever a feature is dead), median over chunks:",
        "",
        "| trainer | activations/s, "
        + early_span
        + " | ratio to sae-lens | activations/s, "
        + late_span
        + " | ratio to sae-lens |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in runners:
        lines.append(
            f"| {r.name} | {phase_rate(r, early)} | {fmt(phase_ratio(r, early))} | {phase_rate(r, late)} | "
            f"{fmt(phase_ratio(r, late))} |"
        )
    lines.append("")
    if probe:
        lens_off, lens_on = probe[LENS]
        lines += [
            f"AuxK's cost (after training, {args.probe_rounds} interleaved rounds, medians): one step of each trained "
            f"trainer with no feature dead, and with {args.probe_dead:.0%} of the features ({int(args.probe_dead * D_SAE)}) "
            "marked dead (the dead tracking reset before each step, so AuxK runs on exactly those):",
            "",
            "| trainer | ms/step, none dead | ms/step, AuxK on | AuxK's extra cost | ratio to sae-lens, none dead "
            "| ratio to sae-lens, AuxK on |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in runners:
            off, on = probe[r.name]
            lines.append(
                f"| {r.name} | {off * 1e3:.0f} | {on * 1e3:.0f} | {on / off - 1:+.0%} | {lens_off / off:.2f} | "
                f"{lens_on / on:.2f} |"
            )
        lines.append("")
    if prof:
        tables = {k: v for k, v in prof.items() if not k.endswith(":auxk")}
        with_aux = [k for k in tables if prof[f"{k}:auxk"]]
        lines += [
            f"Where the time goes (`torch.profiler`, {args.profile_steps} extra steps of each trained trainer, in the "
            f"state training left it: AuxK runs in {', '.join(with_aux) if with_aux else 'none of them'}; self CPU "
            "ms per step of the top aten operators; calls per step in brackets):",
            "",
            "| " + " | ".join(tables) + " |",
            "|" + "---|" * len(tables),
        ]
        depth = max(len(v) for v in tables.values())
        for i in range(depth):
            cells = []
            for rows in tables.values():
                if i < len(rows):
                    key, ms, calls = rows[i]
                    cells.append(f"`{key}` {ms:.0f}" + (f" ({calls})" if calls is not None else ""))
                else:
                    cells.append("")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        interpretation(
            by_name,
            quality,
            ratio_to_lens,
            prof,
            probe,
            phase_ratio(by_name[OURS], early),
            phase_ratio(by_name[OURS], late),
            late_span,
        ),
        "",
    ]
    return "\n".join(lines)


def interpretation(by_name: dict[str, Runner], quality: dict[str, dict[str, float]],
                   ratio_to_lens: Callable[[Runner], float], prof: dict[str, list] | None,
                   probe: dict[str, tuple[float, float]] | None, early_ratio: float | None,
                   late_ratio: float | None, late_span: str) -> str:  # fmt: skip
    ours, lens = by_name[OURS], by_name[LENS]
    ratio = ratio_to_lens(ours)
    gap = quality[OURS]["ev"] - quality[LENS]["ev"]
    flops = 2 * BATCH * D_IN * D_SAE / 1e9  # one dense [batch, d_in] x [d_in, d_sae] product
    sentences = [
        f"**Interpretation.** Ours trains at {ratio:.2f}x sae-lens's activations/s "
        f"({'meets' if ratio >= TARGET_RATIO else 'misses'} the >= {TARGET_RATIO} target) and reaches a held-out "
        f"explained variance {abs(gap):.4f} {'above' if gap >= 0 else 'below'} sae-lens's after the same steps "
        f"({'meets' if gap >= -TARGET_EV_GAP else 'misses'} the within-{TARGET_EV_GAP} target), with "
        f"{quality[OURS]['dead']:.1%} of its features silent on the held-out set against sae-lens's "
        f"{quality[LENS]['dead']:.1%}.",
        f"One dense product of the batch with a {D_IN} x {D_SAE} matrix is {flops:.2f} GFLOP. Without AuxK, ours "
        "runs two per step (the encoder's forward, one `addmm` with `b_dec` folded into the bias, and its weight "
        "gradient) and decodes the k selected rows with `embedding_bag` (k/d_sae = 1/64 of a dense "
        "decode's arithmetic, forward and backward); sae-lens scatters the top-k into a dense [batch, d_sae] tensor "
        "and runs the decoder as three more dense products (forward, weight gradient, activation gradient), and, "
        "with its default `rescale_acts_by_decoder_norm=True`, multiplies the dense pre-activations and the dense "
        "feature activations by the decoder row norms (and back-propagates through both).",
    ]
    if early_ratio is not None:
        sentences.append(
            f"Like for like, before any feature can be dead (so neither trainer runs AuxK), ours runs at "
            f"{early_ratio:.2f}x sae-lens."
        )
    if late_ratio is not None:
        sentences.append(
            f"Over {late_span} it runs at {late_ratio:.2f}x: sae-lens ran AuxK on {lens.aux_steps} of its steps and "
            f"ended with {quality[LENS]['own_dead']:.0%} of its features dead by its own count, ours ran it on "
            f"{ours.aux_steps} and ended with {quality[OURS]['own_dead']:.0%} dead, so part of that ratio is AuxK "
            "work that only sae-lens had to do in this run."
        )
    if probe:
        (o_off, o_on), (l_off, l_on) = probe[OURS], probe[LENS]
        sentences.append(
            f"Sae-lens builds AuxK's input densely (a masked [batch, d_sae] copy, a second `topk`, a zero-filled "
            f"scatter, a dense product with W_dec and its backward); ours takes the dead columns only and decodes "
            f"them with `embedding_bag`: with the probe's features marked dead, AuxK adds "
            f"{(o_on - o_off) * 1e3:.0f} ms to ours' step ({o_on / o_off - 1:.0%}) and {(l_on - l_off) * 1e3:.0f} ms to "
            f"sae-lens's ({l_on / l_off - 1:.0%}), so once features die in a longer run ours runs at "
            f"{l_on / o_on:.2f}x sae-lens."
        )
    if DENSE in by_name:
        dense_ratio = ratio_to_lens(by_name[DENSE])
        sentences.append(
            f"With the dense decode, ours runs at {dense_ratio:.2f}x sae-lens: the sparse decode alone makes ours "
            f"{ratio / dense_ratio:.2f}x faster."
        )
    if prof and OURS in prof and not prof[f"{OURS}:auxk"]:
        top = {k: (ms, calls) for k, ms, calls in prof[OURS]}
        total = top.get("all aten ops", (0.0, None))[0]
        mm, mm_calls = top.get("aten::mm", (0.0, 0))
        topk = top.get("aten::topk", (0.0, 0))[0]
        if total:
            sentences.append(
                f"In ours' profile the dense products ({mm_calls} per step) take {mm / total:.0%} of the operator "
                f"time and `topk` over the [batch, d_sae] pre-activations {topk / total:.0%}. The encoder's forward "
                "and `topk` are the floor of a dense-encoder TopK step; what is left above it is the encoder's "
                "weight gradient, dense although each row of the pre-activation gradient has only k non-zeros."
            )
    return " ".join(sentences)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=400, help=f"training steps of {BATCH} for each trainer (default 400)"
    )
    parser.add_argument("--chunk", type=int, default=10, help="steps per timed chunk (default 10)")
    parser.add_argument("--source", choices=("auto", "embedded", "random"), default="auto",
                        help="activations: the embedded zoo model if present (auto), or force one")  # fmt: skip
    parser.add_argument("--train-activations", type=int, default=None,
                        help="training activations to precompute (default: steps x batch, at most 2M; reused "
                             "in a new shuffle if the steps need more)")  # fmt: skip
    parser.add_argument("--no-dense", action="store_true", help="skip the dense-decode variant of ours")
    parser.add_argument(
        "--profile-steps", type=int, default=3, help="profiled extra steps per trainer (0: none)"
    )
    parser.add_argument("--probe-rounds", type=int, default=5, help="rounds of the AuxK-cost probe (0: none)")
    parser.add_argument(
        "--probe-dead", type=float, default=0.1, help="fraction of features marked dead in the probe"
    )
    parser.add_argument(
        "--write-docs", action="store_true", help=f"write the section into {DOCS.relative_to(REPO)}"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    n_train = args.train_activations or min(args.steps * BATCH, 2_000_000)
    t0 = time.perf_counter()
    print(f"computing {n_train:,} + {N_EVAL:,} activations ...", file=sys.stderr)
    acts = load_activations(args.source, n_train, seed=0)
    print(f"  done in {time.perf_counter() - t0:.0f} s: {acts.source}", file=sys.stderr)
    order = BatchOrder(acts.train, args.steps, seed=1)

    runners = [make_ours(order, args.steps, dense=False)]
    if not args.no_dense:
        runners.append(make_ours(order, args.steps, dense=True))
    runners.append(make_lens(args.steps))
    print(f"training {len(runners)} SAEs for {args.steps} steps ...", file=sys.stderr)
    train_interleaved(runners, order, args.steps, args.chunk)
    quality = {r.name: evaluate(r, acts.held_out) for r in runners}
    prof = profile_steps(runners, order, args.steps, args.profile_steps) if args.profile_steps else None
    print("timing steps with and without dead features ...", file=sys.stderr)
    probe = auxk_probe(runners, order, args.probe_rounds, args.probe_dead) if args.probe_rounds else None

    section = report(acts, order, runners, quality, prof, probe, args)
    print(section)
    if args.write_docs:
        write_section(section, SECTION, DOCS)
        print(f"wrote {DOCS.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
