"""Train the tiny GPT-2 of the zoo on the packed corpus (CPU, one thread).

Its settings are :class:`LMTrainConfig` (a language model's; dictionaries are trained with
:class:`sae_circuits.train.TrainConfig`). The old name here, ``TrainConfig``, is a deprecated alias.

A plain loop: AdamW, linear warm-up then cosine decay, gradient clipping,
batches of ``seq_len`` token rows drawn in a seeded order.  The batch of a
step is a pure function of ``(seed, step)``, and dropout is off, so a run
resumed from its checkpoint follows exactly the path of an uninterrupted one.

Two entry points share the loop (:func:`_train_loop`, which takes token arrays): :func:`train`
reads the recipe's packed files, :func:`train_on_texts` packs any corpus mix in memory (here a
toy run of 3 steps; the zoo's model takes 3,300 steps of 512-token rows):

>>> from sae_circuits.recipes.train_lm import LMTrainConfig, train_on_texts
>>> from sae_circuits.zoo.loader import load_hf_gpt2
>>> cfg = LMTrainConfig(n_layer=1, n_embd=32, n_head=2, seq_len=16, batch_size=2, steps=3)
>>> run = train_on_texts({"markup": texts}, cfg=cfg, val_fraction=0.25, out_dir="my_model")
step 3: train ... val markup=...
>>> load_hf_gpt2("my_model").cfg.n_layers
1
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from sae_circuits._moved import renamed
from sae_circuits.languages.corpus import SUBCORPORA
from sae_circuits.recipes.pack import PackedCorpus, pack_mix
from sae_circuits.recipes.tokenizer import EOT, TOKENIZER_FILES, load_tokenizer
from sae_circuits.zoo import ROOT as ZOO_ROOT

ZOO_TOKENIZER = ZOO_ROOT / "tiny"
"""The zoo tokenizer's folder (``tokenizer.json`` and the ``transformers`` config files)."""


@dataclass(frozen=True)
class LMTrainConfig:
    """A language model's architecture and optimisation settings (defaults: the committed model).

    Not :class:`sae_circuits.train.TrainConfig`, which trains dictionaries on a model."""

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

    def __post_init__(self) -> None:
        positive = ("n_layer", "n_embd", "n_head", "seq_len", "batch_size", "steps", "eval_every",
                    "eval_rows", "checkpoint_every")  # fmt: skip
        for name in (*positive, "warmup_steps", "seed"):
            value = getattr(self, name)
            low = 1 if name in positive else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"LMTrainConfig: {name}={value!r}, expected an integer >= {low}")
        if self.n_embd % self.n_head:
            raise ValueError(f"LMTrainConfig: n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
        for name, low, high in (("lr", 0, math.inf), ("min_lr_ratio", 0, 1), ("weight_decay", 0, math.inf),
                                ("grad_clip", 0, math.inf)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"LMTrainConfig: {name}={value!r}, expected a number in [{low}, {high}]")
        if not (len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas)):
            raise ValueError(f"LMTrainConfig: adam_betas={self.adam_betas!r}, expected two numbers in [0, 1)")


def make_model(vocab_size: int, eot_id: int, cfg: LMTrainConfig) -> GPT2LMHeadModel:
    """A GPT-2 (``gelu_new``, tied embeddings, no dropout) with a fixed init seed (drawn from a
    forked RNG: the caller's global torch seed is left as it was)."""
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return GPT2LMHeadModel(config)


def lr_at(step: int, cfg: LMTrainConfig) -> float:
    """Learning rate of ``step``: linear warm-up, then cosine decay to the floor."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, cfg: LMTrainConfig) -> torch.optim.AdamW:
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
    if len(rows) == 0:
        raise ValueError("no rows to evaluate (an empty validation split?)")
    model.eval()
    total = sum(
        float(token_losses(model, rows[i : i + batch_size]).sum()) for i in range(0, len(rows), batch_size)
    )
    return total / (len(rows) * (rows.shape[1] - 1))


@torch.no_grad()
def loss_by_source(
    model: GPT2LMHeadModel,
    rows: np.ndarray,
    source: np.ndarray,
    batch_size: int = 8,
    names: Sequence[str] = SUBCORPORA,
) -> dict[str, float]:
    """Mean loss per sub-corpus (``names[source]``) of the *predicted* token, for mixed train rows."""
    model.eval()
    sums, counts = np.zeros(len(names)), np.zeros(len(names))
    for i in range(0, len(rows), batch_size):
        losses = token_losses(model, rows[i : i + batch_size]).numpy().reshape(-1)
        src = source[i : i + batch_size, 1:].reshape(-1)
        sums += np.bincount(src, weights=losses, minlength=len(names))
        counts += np.bincount(src, minlength=len(names))
    return {name: float(sums[k] / counts[k]) for k, name in enumerate(names) if counts[k]}


def val_losses(
    model: GPT2LMHeadModel, val: Path | Mapping[str, np.ndarray], max_rows: int | None = None
) -> dict[str, float]:
    """Validation loss of each sub-corpus (all rows, or the first ``max_rows``); ``val`` is the
    recipe's tokens folder (``val_<name>.npy``) or a dict of row arrays."""
    if isinstance(val, Mapping):
        return {name: mean_loss(model, np.asarray(rows[:max_rows])) for name, rows in val.items()}
    out = {}
    for name in SUBCORPORA:
        rows = np.load(val / f"val_{name}.npy", mmap_mode="r")[:max_rows]
        out[name] = mean_loss(model, np.asarray(rows))
    return out


def _save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    cfg: LMTrainConfig,
    history: list[dict],
    elapsed: float,
    data: str,
) -> None:
    """Write atomically, so a kill during the write leaves the old checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "cfg": asdict(cfg),
            "data": data,
            "history": history,
            "elapsed": elapsed,
        },
        tmp,
    )
    tmp.replace(path)


def _data_fingerprint(
    train_rows: np.ndarray, val: Mapping[str, np.ndarray], vocab_size: int, eot: int
) -> str:
    """SHA-256 of the training and validation rows and the vocabulary's size and end-of-text id."""
    digest = hashlib.sha256(f"{vocab_size} {eot} {train_rows.shape} {train_rows.dtype}".encode())
    digest.update(np.ascontiguousarray(train_rows).tobytes())
    for name in sorted(val):
        digest.update(f"{name} {val[name].shape}".encode())
        digest.update(np.ascontiguousarray(val[name]).tobytes())
    return digest.hexdigest()


def _check_resumable(
    path: Path, state: dict, cfg: LMTrainConfig, data: str, log: Callable[[str], None]
) -> None:
    """Refuse to resume a checkpoint of another configuration or other training data (a run on
    another corpus would come back as the old model, with no step trained)."""
    changed = {k: (v, state["cfg"].get(k)) for k, v in asdict(cfg).items() if state["cfg"].get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {old!r} there, {new!r} here" for k, (new, old) in changed.items())
        raise ValueError(f"checkpoint {str(path)!r} is of another configuration ({detail}); delete it "
                         "or give another checkpoint path to start over")  # fmt: skip
    if "data" not in state:
        log(f"{path}: an older checkpoint that does not record its training data; resuming unchecked")
    elif state["data"] != data:
        raise ValueError(f"checkpoint {str(path)!r} was trained on other rows or another vocabulary; "
                         "delete it or give another checkpoint path to start over")  # fmt: skip


def train(
    tokens_dir: Path,
    tok_dir: Path,
    cfg: LMTrainConfig,
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
    tokens_dir: Path, tok_dir: Path, cfg: LMTrainConfig, checkpoint: Path | None, log: Callable[[str], None]
) -> tuple[GPT2LMHeadModel, dict]:
    tok = load_tokenizer(tok_dir)
    train_rows = np.load(tokens_dir / "train.npy", mmap_mode="r")
    val = {name: np.load(tokens_dir / f"val_{name}.npy", mmap_mode="r") for name in SUBCORPORA}
    eot = tok.token_to_id(EOT)
    assert eot is not None  # train_tokenizer makes EOT a special token (id 0)
    return _train_loop(train_rows, val, tok.get_vocab_size(), eot, cfg, checkpoint, log)


def _train_loop(
    train_rows: np.ndarray,
    val: Mapping[str, np.ndarray],
    vocab_size: int,
    eot: int,
    cfg: LMTrainConfig,
    checkpoint: Path | None,
    log: Callable[[str], None],
) -> tuple[GPT2LMHeadModel, dict]:
    """The training loop proper, on ``(n_rows, seq_len)`` token rows and per-corpus validation rows."""
    if train_rows.ndim != 2 or len(train_rows) == 0:
        raise ValueError(f"training rows of shape {train_rows.shape}: expected (n_rows >= 1, seq_len)")
    if train_rows.shape[1] != cfg.seq_len:
        raise ValueError(f"rows of {train_rows.shape[1]} tokens, config says {cfg.seq_len}")
    empty = [name for name, rows in val.items() if len(rows) == 0]
    if not val or empty:
        raise ValueError(f"empty validation split: {empty or 'no sub-corpus'} (need at least one row each)")
    if checkpoint is not None and not checkpoint.parent.is_dir():  # not after checkpoint_every steps
        raise ValueError(
            f"checkpoint={str(checkpoint)!r}: the folder {str(checkpoint.parent)!r} does not exist"
        )
    model = make_model(vocab_size, eot, cfg)
    opt = make_optimizer(model, cfg)
    start, history, elapsed = 0, [], 0.0
    data = _data_fingerprint(train_rows, val, vocab_size, eot)
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(
            checkpoint, weights_only=True
        )  # tensors and plain containers only: no unpickling of code
        _check_resumable(checkpoint, state, cfg, data, log)
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
            record["val"] = val_losses(model, val, cfg.eval_rows)
            log(
                f"step {done}: train {record['loss']:.3f} val "
                + " ".join(f"{k}={v:.3f}" for k, v in record["val"].items())
            )
        history.append(record)
        if checkpoint is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            _save_checkpoint(checkpoint, model, opt, done, cfg, history, time.time() - t0, data)
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


class TrainedLM(NamedTuple):
    """What :func:`train_on_texts` returns."""

    model: GPT2LMHeadModel
    """The trained Hugging Face GPT-2 (load the saved folder with ``load_hf_gpt2`` for hooks)."""
    stats: dict
    """Losses (train, validation per sub-corpus), timing, tokens seen, the loss history."""
    corpus: PackedCorpus
    """The packed corpus it was trained on (train and validation rows)."""


def train_on_texts(
    texts: Mapping[str, Sequence[str]] | Sequence[str],
    tokenizer_dir: str | os.PathLike[str] = ZOO_TOKENIZER,
    cfg: LMTrainConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    checkpoint: str | os.PathLike[str] | None = None,
    threads: int = 1,
    log: Callable[[str], None] = tqdm.write,
) -> TrainedLM:
    """Train a tiny GPT-2 on any corpus mix: a list of texts, or ``name -> texts``.

    Encodes with the tokenizer in ``tokenizer_dir`` (default: the zoo's), packs with
    :func:`~sae_circuits.recipes.pack.pack_mix` (the last ``val_fraction`` of each sub-corpus is held
    out), trains with the recipe's loop on ``threads`` threads (the caller's count is restored),
    and, with ``out_dir``, saves the model in the Hugging Face layout beside the tokenizer files
    plus ``train_stats.json``, so ``sae_circuits.zoo.loader.load_hf_gpt2(out_dir)`` loads it.
    Raises ``ValueError`` for an empty corpus or an empty validation split.

    >>> cfg = LMTrainConfig(n_layer=1, n_embd=32, n_head=2, seq_len=16, batch_size=2, steps=3)
    >>> run = train_on_texts({"markup": texts}, cfg=cfg, val_fraction=0.25, log=lambda line: None)
    >>> list(run.stats["val_loss"]), run.stats["tokens_seen"], run.model.config.n_layer
    (['markup'], 96, 1)
    """
    cfg = cfg or LMTrainConfig()
    tok_dir = Path(tokenizer_dir)
    tok = load_tokenizer(tok_dir)
    eot = tok.token_to_id(EOT)
    if eot is None:
        raise ValueError(f"tokenizer in {str(tok_dir)!r} has no {EOT} token")
    corpus = pack_mix(tok, texts, cfg.seq_len, val_fraction=val_fraction, seed=cfg.seed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, stats = _train_loop(
            corpus.train, corpus.val, tok.get_vocab_size(), eot, cfg,
            None if checkpoint is None else Path(checkpoint), log,
        )  # fmt: skip
        stats["val_loss"] = val_losses(model, corpus.val)
        stats["corpus"] = corpus.sizes
    finally:
        torch.set_num_threads(before)
    if out_dir is not None:
        save_model(model, tok_dir, Path(out_dir))
        from sae_circuits._files import atomic_write_text

        summary = {
            **{k: v for k, v in stats.items() if k != "history"},
            "config": asdict(cfg),
            "threads": threads,
        }
        atomic_write_text(Path(out_dir) / "train_stats.json", json.dumps(summary, indent=2) + "\n")
    return TrainedLM(model, stats, corpus)


def save_model(model: GPT2LMHeadModel, tok_dir: Path, model_dir: Path) -> None:
    """Save in Hugging Face layout (safetensors, fp32) next to the tokenizer files.

    Everything is written into a temporary sibling folder first, then each file is moved into
    ``model_dir`` with an atomic rename, ``config.json`` last: an interrupted save leaves every
    file whole (the folder may hold other things, such as the zoo's dictionaries, so it is not
    swapped as a whole)."""
    import shutil
    import tempfile

    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.saving-", dir=model_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        (staging / "model.safetensors").chmod(0o644)  # safetensors writes it owner-only
        for name in TOKENIZER_FILES:
            (staging / name).write_bytes((tok_dir / name).read_bytes())
        files = sorted(staging.iterdir(), key=lambda f: f.name == "config.json")  # config.json last
        for f in files:
            f.replace(model_dir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


# deprecated (one release): the LM-training config has its own name beside the SAEs' TrainConfig
__getattr__ = renamed(__name__, {"TrainConfig": "sae_circuits.recipes.train_lm.LMTrainConfig"})
