"""Train the tiny GPT-2 of the zoo on the packed corpus (CPU, one thread).

A plain loop: AdamW, linear warm-up then cosine decay, gradient clipping,
batches of ``seq_len`` token rows drawn in a seeded order.  The batch of a
step is a pure function of ``(seed, step)``, and dropout is off, so a run
resumed from its checkpoint follows exactly the path of an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from sae_circuits.zoo.corpus import SUBCORPORA
from sae_circuits.zoo.tokenizer import EOT, TOKENIZER_FILES, load_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    """Architecture and optimisation settings (defaults: the committed model)."""

    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    seq_len: int = 512
    batch_size: int = 8  # rows of seq_len tokens per step
    steps: int = 3_300  # ~50 min at ~4.8k tokens/s on one thread
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 150
    weight_decay: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 250
    eval_rows: int = 8  # per sub-corpus for the evaluations during training
    checkpoint_every: int = 200


def make_model(vocab_size: int, eot_id: int, cfg: TrainConfig) -> GPT2LMHeadModel:
    """A GPT-2 (``gelu_new``, tied embeddings, no dropout) with a fixed init seed."""
    torch.manual_seed(cfg.seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.seq_len,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of ``step``: linear warm-up, then cosine decay to the floor."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases or LayerNorms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas)


class BatchSampler:
    """Row indices of each step: epochs of seeded permutations, no replacement."""

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)}
        return self._perms[epoch]

    def rows(self, step: int) -> np.ndarray:
        """Indices of the rows of ``step`` (a pure function of seed and step)."""
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return np.array([self._perm(p // self.n_rows)[p % self.n_rows] for p in positions])


def token_losses(model: GPT2LMHeadModel, rows: np.ndarray) -> torch.Tensor:
    """Next-token cross-entropy of every position but the last, shape ``(n, seq_len-1)``."""
    ids = torch.from_numpy(rows.astype(np.int64))
    logits = model(ids).logits[:, :-1]
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


@torch.no_grad()
def mean_loss(model: GPT2LMHeadModel, rows: np.ndarray, batch_size: int = 8) -> float:
    """Mean next-token loss over all predicted positions of ``rows``."""
    model.eval()
    total = sum(
        float(token_losses(model, rows[i : i + batch_size]).sum()) for i in range(0, len(rows), batch_size)
    )
    return total / (len(rows) * (rows.shape[1] - 1))


@torch.no_grad()
def loss_by_source(
    model: GPT2LMHeadModel, rows: np.ndarray, source: np.ndarray, batch_size: int = 8
) -> dict[str, float]:
    """Mean loss per sub-corpus of the *predicted* token, for mixed train rows."""
    model.eval()
    sums, counts = np.zeros(len(SUBCORPORA)), np.zeros(len(SUBCORPORA))
    for i in range(0, len(rows), batch_size):
        losses = token_losses(model, rows[i : i + batch_size]).numpy().reshape(-1)
        src = source[i : i + batch_size, 1:].reshape(-1)
        sums += np.bincount(src, weights=losses, minlength=len(SUBCORPORA))
        counts += np.bincount(src, minlength=len(SUBCORPORA))
    return {name: float(sums[k] / counts[k]) for k, name in enumerate(SUBCORPORA) if counts[k]}


def val_losses(model: GPT2LMHeadModel, tokens_dir: Path, max_rows: int | None = None) -> dict[str, float]:
    """Validation loss of each sub-corpus (all rows, or the first ``max_rows``)."""
    out = {}
    for name in SUBCORPORA:
        rows = np.load(tokens_dir / f"val_{name}.npy", mmap_mode="r")[:max_rows]
        out[name] = mean_loss(model, np.asarray(rows))
    return out


def _save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    cfg: TrainConfig,
    history: list[dict],
    elapsed: float,
) -> None:
    """Write atomically, so a kill during the write leaves the old checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "cfg": asdict(cfg),
            "history": history,
            "elapsed": elapsed,
        },
        tmp,
    )
    tmp.replace(path)


def train(
    tokens_dir: Path,
    tok_dir: Path,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> tuple[GPT2LMHeadModel, dict]:
    """Train on ``tokens_dir/train.npy``; resume from ``checkpoint`` if it matches ``cfg``.

    Returns the model and a dict of statistics (losses, timing, tokens seen). Runs on one thread
    (the machine is shared); the caller's thread count is restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(tokens_dir, tok_dir, cfg, checkpoint, log)
    finally:
        torch.set_num_threads(threads)


def _train(
    tokens_dir: Path, tok_dir: Path, cfg: TrainConfig, checkpoint: Path | None, log: Callable[[str], None]
) -> tuple[GPT2LMHeadModel, dict]:
    tok = load_tokenizer(tok_dir)
    train_rows = np.load(tokens_dir / "train.npy", mmap_mode="r")
    if train_rows.shape[1] != cfg.seq_len:
        raise ValueError(f"rows of {train_rows.shape[1]} tokens, config says {cfg.seq_len}")
    eot = tok.token_to_id(EOT)
    assert eot is not None  # train_tokenizer makes EOT a special token (id 0)
    model = make_model(tok.get_vocab_size(), eot, cfg)
    opt = make_optimizer(model, cfg)
    start, history, elapsed = 0, [], 0.0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(
            checkpoint, weights_only=True
        )  # tensors and plain containers only: no unpickling of code
        if state["cfg"] == asdict(cfg):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            start, history, elapsed = state["step"], state["history"], state["elapsed"]
            log(f"resumed from {checkpoint} at step {start}")
    sampler = BatchSampler(len(train_rows), cfg.batch_size, cfg.seed)
    tokens_per_step = cfg.batch_size * cfg.seq_len

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, mininterval=5, desc="train")
    t0 = time.time() - elapsed
    for step in bar:
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = torch.from_numpy(np.asarray(train_rows[np.sort(sampler.rows(step))], dtype=np.int64))
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

        record = {
            "step": step + 1,
            "loss": loss.item(),
            "grad_norm": float(grad_norm),
            "lr": lr_at(step, cfg),
        }
        done = step + 1
        rate = (done - start) * tokens_per_step / max(1e-9, time.time() - t0 - elapsed)
        bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{rate:.0f}")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            record["val"] = val_losses(model, tokens_dir, cfg.eval_rows)
            log(
                f"step {done}: train {record['loss']:.3f} val "
                + " ".join(f"{k}={v:.3f}" for k, v in record["val"].items())
            )
        history.append(record)
        if checkpoint is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            _save_checkpoint(checkpoint, model, opt, done, cfg, history, time.time() - t0)
    wall = time.time() - t0
    bar.close()

    recent = [h["loss"] for h in history[-50:]]
    stats = {
        "steps": cfg.steps,
        "tokens_seen": cfg.steps * tokens_per_step,
        "epochs": cfg.steps * cfg.batch_size / len(train_rows),
        "wall_time_s": round(wall, 1),
        "tokens_per_s": round(cfg.steps * tokens_per_step / max(1e-9, wall), 1),  # evals included
        "final_train_loss_last50": float(np.mean(recent)) if recent else None,
        "history": history,
    }
    return model, stats


def save_model(model: GPT2LMHeadModel, tok_dir: Path, model_dir: Path) -> None:
    """Save in Hugging Face layout (safetensors, fp32) next to the tokenizer files."""
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    (model_dir / "model.safetensors").chmod(0o644)  # safetensors writes it owner-only
    for name in TOKENIZER_FILES:
        (model_dir / name).write_bytes((tok_dir / name).read_bytes())


@torch.no_grad()
def check_reload(model: GPT2LMHeadModel, model_dir: Path, rows: np.ndarray) -> float:
    """Reload with ``AutoModelForCausalLM`` offline; return max |logit difference|."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    AutoTokenizer.from_pretrained(model_dir, local_files_only=True)  # must load too
    ids = torch.from_numpy(rows.astype(np.int64))
    diff = float((loaded(ids).logits - model.eval()(ids).logits).abs().max())
    if diff > 1e-5:
        raise ValueError(f"reloaded model differs: max |delta logits| = {diff}")
    return diff
