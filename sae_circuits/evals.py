"""SAE evaluation with the SAEBench "core" definitions, beside a trivial baseline at the same L0.

- ``ce_loss_score = (CE_zero - CE_spliced) / (CE_zero - CE_clean)``: spliced replaces the site by the
  SAE's reconstruction (no error term); zero ablation sets the site to zero.
- ``kl_div_score = (KL_zero - KL_spliced) / KL_zero`` with ``KL(clean || other)`` per token, averaged.
- explained variance ``1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2)``, accumulated in float64.
- ``l0``: mean number of active features per token; dead: never fired in the eval window; dense:
  fires on more than 10% of tokens.

The baseline is PCA top-k at ``k = round(L0)`` (for transcoders: rank-k linear regression from the
input to the output), written as an ordinary SAE with a pair of ``±`` features per direction so that
it is spliced and scored by exactly the same code as the SAE. It is fitted on tokens it is not
scored on: ``baseline_tokens`` if given, else every other sequence of ``tokens`` (fitted on the odd
rows, scored on the even ones). With a single sequence, or too few tokens to support rank ``k``
(then its L0 falls below the SAE's), it warns: such a baseline flatters itself.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_circuits._caller import user_stacklevel
from sae_circuits.sae import SAE, SAEConfig
from sae_circuits.splice import spliced


@dataclass
class EvalResult:
    """Reconstruction and downstream metrics of one SAE (see the module docstring)."""

    site: str
    n_tokens: int
    ce_loss_clean: float
    ce_loss_spliced: float
    ce_loss_zero: float
    ce_loss_score: float
    kl_div_spliced: float
    kl_div_zero: float
    kl_div_score: float
    explained_variance: float
    mse: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    baseline: EvalResult | None = field(default=None)
    """The same metrics for the trivial baseline at the same L0, fitted on other tokens than it is
    scored on (``None`` if not computed; see the module docstring)."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain (JSON-ready) dict, the baseline's nested under ``"baseline"``."""
        return asdict(self)


class _Accumulator:
    """Running sums (float64) for the per-token metrics."""

    def __init__(self, d_sae: int) -> None:
        self.tokens = 0
        self.sq_error = self.sq_norm = 0.0
        self.sum_x: Tensor | None = None
        self.active = 0.0
        self.fires = torch.zeros(d_sae, dtype=torch.float64)
        self.ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
        self.kl = {"spliced": 0.0, "zero": 0.0}
        self.ce_tokens = 0

    def add_reconstruction(self, y: Tensor, y_hat: Tensor, f: Tensor, keep: Tensor | None = None) -> None:
        """Add a batch's site activations ``y``, their reconstruction ``y_hat`` and features ``f``
        (only the tokens where ``keep``, a ``[batch, pos]`` mask, is true)."""
        y, y_hat = y.reshape(-1, y.shape[-1]).double(), y_hat.reshape(-1, y.shape[-1]).double()
        f = f.reshape(-1, f.shape[-1])
        if keep is not None:
            rows = keep.reshape(-1).to(y.device)
            y, y_hat, f = y[rows], y_hat[rows], f[rows.to(f.device)]
        self.tokens += y.shape[0]
        self.sq_error += float((y - y_hat).pow(2).sum())
        self.sq_norm += float(y.pow(2).sum())
        self.sum_x = y.sum(0) if self.sum_x is None else self.sum_x + y.sum(0)
        active = (f > 0).double()
        self.active += float(active.sum())
        self.fires += active.sum(0).cpu()

    def add_logits(self, tokens: Tensor, clean: Tensor, spliced_logits: Tensor, zero: Tensor) -> None:
        """Add a batch's next-token CE losses and ``KL(clean || ·)`` for the three runs' logits."""
        target = tokens[:, 1:].reshape(-1).long()  # nll_loss takes int64 targets only
        logp = {k: F.log_softmax(v[:, :-1].double(), -1).reshape(target.shape[0], -1)
                for k, v in (("clean", clean), ("spliced", spliced_logits), ("zero", zero))}  # fmt: skip
        for name, values in logp.items():
            self.ce[name] += float(F.nll_loss(values, target, reduction="sum"))
        p_clean = logp["clean"].exp()
        for name in ("spliced", "zero"):
            self.kl[name] += float((p_clean * (logp["clean"] - logp[name])).sum())
        self.ce_tokens += target.shape[0]

    def result(self, site: str, baseline: EvalResult | None) -> EvalResult:
        """The metrics over everything added so far (token means)."""
        n, m = self.tokens, self.ce_tokens
        assert self.sum_x is not None
        variance = self.sq_norm / n - float(self.sum_x.div(n).pow(2).sum())
        ce = {k: v / m for k, v in self.ce.items()}
        kl = {k: v / m for k, v in self.kl.items()}
        frequency = self.fires / n
        return EvalResult(
            site=site,
            n_tokens=n,
            ce_loss_clean=ce["clean"],
            ce_loss_spliced=ce["spliced"],
            ce_loss_zero=ce["zero"],
            ce_loss_score=_ratio(ce["zero"] - ce["spliced"], ce["zero"] - ce["clean"]),
            kl_div_spliced=kl["spliced"],
            kl_div_zero=kl["zero"],
            kl_div_score=_ratio(kl["zero"] - kl["spliced"], kl["zero"]),
            explained_variance=1.0 - (self.sq_error / n) / variance,
            mse=self.sq_error / n / (self.sum_x.shape[0]),
            l0=self.active / n,
            dead_fraction=float((frequency == 0).double().mean()),
            dense_fraction=float((frequency > 0.1).double().mean()),
            baseline=baseline,
        )


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else float("nan")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    sae: SAE,
    tokens: Int[Tensor, "n_seq seq"],
    *,
    batch_size: int = 8,
    baseline: bool = True,
    baseline_tokens: Int[Tensor, "n_fit seq_fit"] | None = None,
    progress: bool = False,
    exclude_special_tokens: bool = False,
) -> EvalResult:
    """Evaluate ``sae`` on ``model`` over ``tokens`` (SAEBench core metrics, see module docstring).

    ``baseline_tokens``: the tokens the PCA baseline is fitted on (default: the odd rows of
    ``tokens``, and the baseline is then scored on the even rows).

    ``exclude_special_tokens``: leave the tokenizer's BOS, EOS and padding tokens out of the
    reconstruction and sparsity metrics (explained variance, MSE, L0, dead and dense fractions), as
    SAEBench does by default; the CE and KL metrics keep every position. Off by default, so that
    the figures in the docs are reproduced; turn it on for a model whose BOS activation is an
    outlier (GPT-2's residual stream there is ~30x the others' norm) or to compare with SAEBench.

    >>> result = sc.evaluate(model, sae, tokens, baseline_tokens=model.to_tokens(texts[2:]))
    >>> result.n_tokens, result.baseline.l0 == round(result.l0)  # the baseline at the SAE's L0
    (96, True)
    >>> round(result.ce_loss_score, 2), round(result.baseline.ce_loss_score, 2)
    (1.0, 1.0)
    """
    for name, value in (("tokens", tokens), ("baseline_tokens", baseline_tokens)):
        if value is None and name == "baseline_tokens":
            continue
        if (
            not isinstance(value, Tensor) or value.ndim != 2 or value.shape[1] < 2 or value.shape[0] == 0
            or value.dtype == torch.bool or value.is_floating_point() or value.is_complex()
        ):  # fmt: skip
            shape = (
                f"{value.dtype} {list(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            )
            raise ValueError(
                f"{name} must be an integer tensor [n_sequences, sequence_length >= 2], got {shape}"
            )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    if not isinstance(exclude_special_tokens, bool):
        raise ValueError(f"exclude_special_tokens={exclude_special_tokens!r} must be True or False")
    special = _special_ids(model) if exclude_special_tokens else []
    hook_in, site = sae.cfg.hook_name, sae.cfg.site
    acc = _Accumulator(sae.cfg.d_sae)
    tl = cast(Any, model)  # HookedTransformer or TransformerBridge: its TL API is not on nn.Module
    device = next(model.parameters()).device
    for start in tqdm(range(0, tokens.shape[0], batch_size), disable=not progress, desc=f"eval {site}"):
        batch = tokens[start : start + batch_size].to(device)
        clean, cache = tl.run_with_cache(batch, names_filter=sorted({hook_in, site}))
        x, y = cache[hook_in], cache[site]
        f = sae.encode(x)
        keep = ~torch.isin(batch, torch.tensor(special, device=batch.device)) if special else None
        acc.add_reconstruction(y.reshape(*y.shape[:2], -1), sae(x).reshape(*y.shape[:2], -1), f, keep)
        with spliced(model, [sae], error_term=False):
            spliced_logits = model(batch)
        zero = tl.run_with_hooks(batch, fwd_hooks=[(site, lambda act, hook: torch.zeros_like(act))])
        acc.add_logits(batch, clean, spliced_logits, zero)
    if acc.tokens == 0:
        raise ValueError(f"exclude_special_tokens=True left no token to score (special ids {special})")
    base = None
    if baseline:
        k = max(1, round(acc.active / acc.tokens))
        base = _held_out_baseline(model, sae, tokens, baseline_tokens, k, batch_size, exclude_special_tokens)
    return acc.result(site, base)


def _special_ids(model: nn.Module) -> list[int]:
    """The tokenizer's BOS, EOS and padding ids (none without a tokenizer)."""
    tokenizer = getattr(model, "tokenizer", None)
    ids = {getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}
    return sorted(i for i in ids if isinstance(i, int))


def _held_out_baseline(
    model: nn.Module, sae: SAE, tokens: Tensor, fit: Tensor | None, k: int, batch_size: int, exclude: bool
) -> EvalResult:
    """The rank-``k`` baseline fitted on ``fit`` (default: the odd rows of ``tokens``) and scored
    on the rest, with a warning where it cannot be fair."""
    scored = tokens
    if fit is None:
        if tokens.shape[0] < 2:
            warnings.warn(
                f"evaluate: one sequence of {tokens.shape[1]} tokens, so the PCA baseline is fitted on the "
                "tokens it is scored on (optimistic); pass baseline_tokens=... or more sequences",
                stacklevel=user_stacklevel(),
            )
            fit = tokens
        else:
            fit, scored = tokens[1::2], tokens[0::2]
    base = pca_baseline(model, sae, fit, k)
    rank = base.cfg.d_sae // 2
    if rank < k:
        warnings.warn(
            f"evaluate: the baseline's {fit.numel()} fitting tokens support rank {rank}, below the SAE's "
            f"L0 of {k}, so the baseline's L0 is not the same; evaluate on more tokens",
            stacklevel=user_stacklevel(),
        )
    if sae.cfg.is_transcoder and fit.numel() <= sae.cfg.d_in:
        warnings.warn(
            f"evaluate: the regression baseline is fitted on {fit.numel()} tokens, no more than its "
            f"{sae.cfg.d_in} inputs: it is underdetermined and says little on other tokens; evaluate on more",
            stacklevel=user_stacklevel(),
        )
    return evaluate(
        model, base, scored, batch_size=batch_size, baseline=False, exclude_special_tokens=exclude
    )


@torch.no_grad()
def pca_baseline(model: nn.Module, sae: SAE, tokens: Tensor, k: int, max_tokens: int = 20_000) -> SAE:
    """A rank-``k`` linear baseline in SAE form: PCA top-``k`` of the activation (for a
    transcoder, rank-``k`` regression of its output on its input); ``2k`` features (``±``)."""
    hook_in, site = sae.cfg.hook_name, sae.cfg.site
    xs, ys, have = [], [], 0
    for start in range(0, tokens.shape[0], 8):
        _, cache = cast(Any, model).run_with_cache(
            tokens[start : start + 8], names_filter=sorted({hook_in, site})
        )
        x, y = cache[hook_in], cache[site]
        xs.append(x.reshape(-1, sae.cfg.d_in).double().cpu())
        ys.append(y.reshape(-1, sae.cfg.output_width).double().cpu())
        have += xs[-1].shape[0]
        if have >= max_tokens:
            break
    x, y = torch.cat(xs), torch.cat(ys)
    mean_x, mean_y = x.mean(0), y.mean(0)
    if sae.cfg.is_transcoder:
        # minimum-norm least squares, directions below 1e-7 of the largest singular value cut: the
        # input (a LayerNorm's output) is centred, so one direction is float noise (weights ~1e5)
        weights = torch.linalg.pinv(x - mean_x, rtol=1e-7) @ (y - mean_y)  # [d_in, d_out]
        fitted = (x - mean_x) @ weights
        directions = torch.linalg.svd(fitted, full_matrices=False).Vh[:k]  # [k, d_out]
        encoder = weights @ directions.T  # [d_in, k]
    else:
        directions = torch.linalg.svd(y - mean_y, full_matrices=False).Vh[:k]
        encoder = directions.T
    k = directions.shape[0]  # fewer tokens than k: the rank the data supports
    cfg = SAEConfig(
        "transcoder" if sae.cfg.is_transcoder else "standard",
        d_in=sae.cfg.d_in,
        d_sae=2 * k,
        hook_name=hook_in,
        hook_name_out=sae.cfg.hook_name_out,
        d_out=sae.cfg.d_out if sae.cfg.is_transcoder else None,
        apply_b_dec_to_input=False,
        reshape_activations=sae.cfg.reshape_activations,
        metadata={"baseline": f"pca_top{k}" if not sae.cfg.is_transcoder else f"rank{k}_regression"},
    )
    base = SAE.empty(replace(cfg, device=sae.cfg.device))  # no draw from the global RNG
    base.W_enc.copy_(torch.cat([encoder, -encoder], dim=1).float())
    base.b_enc.copy_((-(mean_x @ torch.cat([encoder, -encoder], dim=1))).float())
    base.W_dec.copy_(torch.cat([directions, -directions]).float())
    base.b_dec.copy_(mean_y.float())
    return base
