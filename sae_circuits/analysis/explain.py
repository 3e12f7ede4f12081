"""Interpretability scores without an LLM: an explanation of a feature is a small, checkable
predicate (:mod:`sae_circuits.analysis.predicates`), scored by how well it predicts the feature on
held-out text, on the input side (activations) and on the output side (logit effects).

1. Activations: the dictionary's activations over the training and the held-out token rows,
   once for all features (:func:`~sae_circuits.analysis._stats.dictionary_activations`; position 0
   of every row is left out, and the predicates' values with it).
2. Propose (training split): an input explanation per feature, the :class:`TokenSet` of up to
   ``k`` tokens ranked by smoothed mean activation (activation mass on the token / (occurrences
   + 1)), cut where training correlation (or F1) is best; optionally the best of it and some
   candidate predicates (regexes, automaton states, an LLM's explanations) by training
   correlation (or F1). An output explanation per feature: the
   ``k_out`` next tokens most enriched where the feature fires (activation-weighted next-token
   distribution ``q`` against the corpus's ``p``, ranked by ``q log(q / p)``, ``q > p`` only).
3. Score the input explanation on the held-out split (:func:`activation_scores`): Pearson
   correlation of the predicate with the activation, and precision / recall / F1 of
   ``activation > 0`` against ``predicate > 0.5``.
4. Score the output explanation against the weights (:func:`logit_scores`): rank the vocabulary
   by the feature's direct logit effect ``W_dec[f] @ W_U``; AUROC of the set among all tokens
   (0.5 is chance) and precision at ``|set|`` (the fraction of the top ``|set|`` tokens in the set;
   ties at the cut share the places left, as random tie-breaking would on average).
   This score reads no held-out text: the set comes from the training split, the effect from
   the weights.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_circuits._caller import user_stacklevel
from sae_circuits.analysis._stats import check_tokens, dictionary_activations
from sae_circuits.analysis.predicates import Predicate, TokenRows, TokenSet, evaluate, token_rows
from sae_circuits.features import direct_logit_effects, residual_directions
from sae_circuits.sae import SAE

logger = logging.getLogger(__name__)


class ActivationScores(NamedTuple):
    """Input-side scores of one predicate per feature (NaN values of a predicate left out)."""

    correlation: Float[Tensor, " n_features"]
    """Pearson correlation of the predicate's values with the activation (0 if either is constant)."""
    precision: Float[Tensor, " n_features"]
    """Of the tokens the predicate selects (value > 0.5), the fraction where the feature fires."""
    recall: Float[Tensor, " n_features"]
    """Of the tokens where the feature fires (activation > 0), the fraction the predicate selects."""
    f1: Float[Tensor, " n_features"]
    """``2 P R / (P + R)``; 0 where nothing is both selected and fired."""


class LogitScores(NamedTuple):
    """Output-side scores of one token set per feature, against its direct logit effect."""

    auroc: Float[Tensor, " n_features"]
    """Probability that a token of the set has a larger logit effect than one outside (ties 1/2)."""
    precision: Float[Tensor, " n_features"]
    """Fraction of the ``|set|`` tokens of largest logit effect that are in the set; tokens tied at
    the cut count by their share of the places left (its expectation under random tie-breaking)."""


class ExplanationScore(NamedTuple):
    """The scores of one explanation of one feature (:func:`score_explanation`)."""

    correlation: float
    """Pearson correlation of the predicate with the activation."""
    precision: float
    """Fraction of the tokens the predicate selects where the feature fires."""
    recall: float
    """Fraction of the tokens where the feature fires that the predicate selects."""
    f1: float
    """Harmonic mean of precision and recall."""
    n_tokens: int
    """Tokens scored (those where the predicate gave a verdict)."""
    n_fired: int
    """Of those, where the feature fires."""
    n_selected: int
    """Of those, where the predicate says it fires (value > 0.5)."""
    logit_auroc: float
    """AUROC of the output token set under the logit effect (NaN without ``output``)."""
    logit_precision: float
    """Precision at ``|output|`` of the logit effect's ranking (NaN without ``output``)."""


def activation_scores(
    activations: Float[Tensor, "n_tokens n_features"], values: Float[Tensor, "n_tokens n_features"]
) -> ActivationScores:
    """Score predicate ``values`` (one column per feature; NaN: no verdict, left out) against
    ``activations`` (step 3 of the module docstring).

    >>> acts = torch.tensor([[0.0], [2.0], [1.0], [0.0]])
    >>> s = activation_scores(acts, torch.tensor([[0.0], [1.0], [0.0], [0.0]]))
    >>> round(float(s.correlation), 4), float(s.precision), float(s.recall), round(float(s.f1), 4)
    (0.8704, 1.0, 0.5, 0.6667)
    """
    if activations.shape != values.shape:
        raise ValueError(
            f"activation_scores: activations {tuple(activations.shape)} and values "
            f"{tuple(values.shape)} must have the same [n_tokens, n_features] shape"
        )
    if activations.shape[1] > 256:  # columns apart: a few [n_tokens, 256] float64 temporaries at a time
        parts = [activation_scores(activations[:, i : i + 256], values[:, i : i + 256])
                 for i in range(0, activations.shape[1], 256)]  # fmt: skip
        return ActivationScores(*(torch.cat(x) for x in zip(*parts, strict=True)))
    keep = ~torch.isnan(values)
    n = keep.sum(0).double()
    v = torch.where(keep, values, 0).double()
    a = torch.where(keep, activations, 0).double()
    vc = torch.where(keep, v - v.sum(0) / n.clamp_min(1), 0)  # centred over the kept tokens
    ac = torch.where(keep, a - a.sum(0) / n.clamp_min(1), 0)
    denom = vc.norm(dim=0) * ac.norm(dim=0)
    corr = torch.where(denom > 1e-12, (vc * ac).sum(0) / denom.clamp_min(1e-300), 0.0)
    fired, chosen = (a > 0) & keep, (v > 0.5) & keep
    both = (fired & chosen).sum(0).double()
    precision = both / chosen.sum(0).clamp_min(1)
    recall = both / fired.sum(0).clamp_min(1)
    f1 = 2 * both / (chosen.sum(0) + fired.sum(0)).clamp_min(1)  # = 2PR / (P + R)
    return ActivationScores(*(x.float() for x in (corr.clamp(-1, 1), precision, recall, f1)))


def _shared_scores(activations: Tensor, values: Tensor) -> ActivationScores:
    """:func:`activation_scores` of one predicate's ``[n_tokens]`` values against every column,
    as matrix-vector products (a candidate predicate is scored against all features at once)."""
    keep = ~torch.isnan(values)
    a, v = activations[keep].double(), values[keep].double()  # [n, F], [n]
    vc = v - v.mean()
    cov = vc @ a  # = sum (v - mean v)(a - mean a), as sum (v - mean v) = 0
    var_a = (a**2).sum(0) - a.sum(0) ** 2 / max(1, len(v))
    denom = (vc.norm() * var_a.clamp_min(0).sqrt()).clamp_min(1e-300)
    corr = torch.where(denom > 1e-12, cov / denom, 0.0)
    fired, chosen = (a > 0).double(), (v > 0.5).double()
    both, n_fired = chosen @ fired, fired.sum(0)
    precision = both / chosen.sum().clamp_min(1)
    recall = both / n_fired.clamp_min(1)
    f1 = 2 * both / (chosen.sum() + n_fired).clamp_min(1)
    return ActivationScores(*(x.float() for x in (corr.clamp(-1, 1), precision, recall, f1)))


def logit_scores(
    effects: Float[Tensor, "n_features d_vocab"], members: Bool[Tensor, "n_features d_vocab"]
) -> LogitScores:
    """Score token sets (``members``) against logit ``effects`` (step 4 of the module docstring).

    >>> effects = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    >>> s = logit_scores(effects, torch.tensor([[True, False, True, False]]))
    >>> float(s.auroc), float(s.precision)
    (0.75, 0.5)
    >>> float(logit_scores(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[True, False, False]])).precision)
    0.5
    """
    if effects.shape != members.shape:
        raise ValueError(
            f"logit_scores: effects {tuple(effects.shape)} and members {tuple(members.shape)} differ"
        )
    effects = effects.double()
    # average ranks (ties share the mean rank), 1 = smallest: Mann-Whitney U = R_set - m(m+1)/2
    order = effects.argsort(dim=1)
    ranks = torch.empty_like(effects).scatter_(
        1, order, torch.arange(1, effects.shape[1] + 1, dtype=effects.dtype).expand_as(effects).contiguous()
    )
    for row in range(effects.shape[0]):  # ties: rare for float effects, cheap to fix
        values, inverse, counts = effects[row].unique(return_inverse=True, return_counts=True)
        if len(values) < effects.shape[1]:
            mean_rank = torch.zeros(len(values), dtype=effects.dtype).index_add_(0, inverse, ranks[row])
            ranks[row] = (mean_rank / counts)[inverse]
    m = members.sum(1).double()
    rest = effects.shape[1] - m
    u = (ranks * members).sum(1) - m * (m + 1) / 2
    auroc = torch.where((m > 0) & (rest > 0), u / (m * rest).clamp_min(1), float("nan"))
    # precision@m, expected over random tie-breaking: the tokens above the m-th largest effect t are
    # in the top m; the g tokens tied at t share its m - #above remaining places, (m - #above) / g each
    size = members.sum(1)
    ordered = effects.sort(dim=1, descending=True).values  # [n_features, d_vocab]
    t = ordered.gather(1, (size - 1).clamp_min(0)[:, None]) if effects.shape[1] else ordered[:, :1]
    above, tied = effects > t, effects == t  # [n_features, d_vocab]
    share = (m - above.sum(1)) / tied.sum(1).clamp_min(1)
    in_top = (above & members).sum(1) + (tied & members).sum(1) * share
    precision = torch.where(m > 0, in_top / m.clamp_min(1), float("nan"))
    return LogitScores(auroc.float(), precision.float())


def logit_effect_matrix(
    model: nn.Module, sae: SAE, features: Sequence[int]
) -> Float[Tensor, "n_features d_vocab"]:
    """Direct logit effect of every feature in ``features``: ``W_dec[f]`` through the final norm's
    gain into ``W_U`` (:func:`~sae_circuits.features.direct_logit_effects`; CPU, float32)."""
    return (
        direct_logit_effects(model, residual_directions(model, sae, features).detach()).detach().float().cpu()
    )


class _Split(NamedTuple):
    rows: TokenRows
    acts: Float[Tensor, "n_tokens n_features"]
    ids: Int[Tensor, " n_tokens"]
    next_ids: Int[Tensor, " n_tokens"]  # -1 at the last position of a row


def _split(model: nn.Module, sae: SAE, tokens: Tensor, batch_size: int) -> _Split:
    tokens = check_tokens(tokens, model).cpu()
    if tokens.shape[1] < 3:
        raise ValueError(
            f"tokens: rows of {tokens.shape[1]} tokens; expected at least 3 (position 0 is left out)"
        )
    acts = dictionary_activations(model, [sae], tokens, batch_size)[0]
    after = torch.cat([tokens[:, 2:], torch.full((tokens.shape[0], 1), -1)], dim=1)
    return _Split(token_rows(model, tokens), acts, tokens[:, 1:].reshape(-1), after.reshape(-1))


def _flat(values: Tensor) -> Tensor:
    return values[:, 1:].reshape(-1)  # position 0 left out, as dictionary_activations does


def score_explanation(
    model: nn.Module,
    sae: SAE,
    feature: int,
    predicate: Predicate,
    tokens: Int[Tensor, "batch pos"],
    *,
    output: TokenSet | None = None,
    batch_size: int = 16,
) -> ExplanationScore:
    """Score ``predicate`` as an explanation of ``feature`` on ``tokens`` (held-out text), and the
    optional ``output`` token set as an explanation of its logit effect (module docstring, steps
    3 and 4).

    >>> from sae_circuits.analysis.predicates import TokenSet
    >>> tags = TokenSet(["img", "meta", "hr", "br"])  # what feature 253 promotes
    >>> s = score_explanation(model, sae, 253, TokenSet(["<"]), tokens, output=tags)
    >>> round(s.correlation, 3), s.f1, s.n_fired, s.n_tokens, s.logit_precision
    (0.999, 1.0, 5, 94, 1.0)
    """
    _check_feature(sae, feature)
    split = _split(model, sae, tokens, batch_size)
    values = _flat(evaluate(predicate, split.rows))
    act = split.acts[:, feature]
    s = activation_scores(act[:, None], values[:, None])
    keep = ~torch.isnan(values)
    auroc = precision = math.nan
    if output is not None:
        members = torch.zeros(1, len(split.rows.vocab), dtype=torch.bool)
        members[0, output.ids(split.rows)] = True
        logit = logit_scores(logit_effect_matrix(model, sae, [feature]), members)
        auroc, precision = float(logit.auroc[0]), float(logit.precision[0])
    return ExplanationScore(
        float(s.correlation[0]),
        float(s.precision[0]),
        float(s.recall[0]),
        float(s.f1[0]),
        int(keep.sum()),
        int(((act > 0) & keep).sum()),
        int(((values > 0.5) & keep).sum()),
        auroc,
        precision,
    )


def _check_feature(sae: SAE, feature: Any) -> int:
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(f"feature={feature!r}: expected an int in [0, {sae.cfg.d_sae})")
    return feature


def _propose_inputs(
    acts: Tensor, ids: Tensor, n_vocab: int, k: int, by: str
) -> tuple[Int[Tensor, "k n_features"], Int[Tensor, " n_features"]]:
    """Step 2, input side, for every feature at once: the top-k tokens by smoothed mean activation
    and the length of the prefix with the best training correlation (or F1), both in closed form."""
    acts = acts.double().clamp_min(0)
    mass = torch.zeros(n_vocab, acts.shape[1], dtype=acts.dtype).index_add_(0, ids, acts)  # [vocab, F]
    fired_at = torch.zeros_like(mass).index_add_(0, ids, (acts > 0).double())
    count = torch.bincount(ids, minlength=n_vocab).double()
    order = torch.where(fired_at > 0, mass / (count[:, None] + 1), -1.0).topk(min(k, n_vocab), dim=0).indices
    selected = count[order].cumsum(0)  # [k, F]: tokens a prefix selects
    if by == "f1":  # 2 TP / (selected + fired)
        score = 2 * fired_at.gather(0, order).cumsum(0) / (selected + (acts > 0).sum(0)).clamp_min(1)
    else:  # Pearson of a 0/1 predicate: (S - N mean) / sqrt(N (1 - N/n) * sum (a - mean)^2)
        n, total = len(ids), acts.sum(0)
        cov = mass.gather(0, order).cumsum(0) - selected * total / n
        var = selected * (1 - selected / n) * ((acts**2).sum(0) - total**2 / n)
        score = cov / var.clamp_min(1e-12).sqrt()
    return order, score.argmax(0) + 1


def _propose_outputs(
    acts: Tensor, next_ids: Tensor, n_vocab: int, k_out: int
) -> tuple[Int[Tensor, "k n_features"], Bool[Tensor, "k n_features"]]:
    """Step 2, output side: the ``k_out`` next tokens most enriched where each feature fires."""
    has_next = next_ids >= 0
    nxt, weights = next_ids[has_next], acts[has_next].clamp_min(0)
    q = torch.zeros(n_vocab, acts.shape[1]).index_add_(0, nxt, weights)
    q = q / q.sum(0).clamp_min(1e-12)
    p = torch.bincount(nxt, minlength=n_vocab).float()[:, None] / max(1, len(nxt))
    gain = torch.where(q > p, q * torch.log(q / p.clamp_min(1e-12)), -1.0)
    top = gain.topk(min(k_out, n_vocab), dim=0)
    return top.indices, top.values > 0


@dataclass
class ExplanationScores:
    """Held-out scores of offline explanations of many features (:func:`explanation_scores`)."""

    features: Int[Tensor, " n_features"]
    """The features explained."""
    explanations: list[Predicate]
    """The input explanation chosen for each feature on the training split."""
    outputs: list[list[str]]
    """The output explanation (next tokens) of each feature; may be empty."""
    train_correlation: Float[Tensor, " n_features"]
    """Training-split correlation of the chosen explanation (what it was chosen by, or near)."""
    activation: ActivationScores
    """Held-out input-side scores."""
    logit: LogitScores
    """Output-side scores (NaN for an empty output set)."""
    seconds: float
    """Wall time of the call."""

    def summary(self) -> dict[str, dict[str, float]]:
        """Median (the mean of the two middle values for an even count), mean and fraction above
        0.5 of every score (NaN left out).

        >>> r = explanation_scores(model, sae, tokens, tokens, features=[253])
        >>> sorted(r.summary()["f1"])
        ['fraction_above_half', 'mean', 'median']
        """
        out = {}
        for name, x in [
            *self.activation._asdict().items(),
            *(("logit_" + k, v) for k, v in self.logit._asdict().items()),
        ]:
            x = x[~torch.isnan(x)]
            out[name] = {
                "median": float(x.quantile(0.5)) if len(x) else math.nan,  # torch's median: the lower middle
                "mean": float(x.mean()) if len(x) else math.nan,
                "fraction_above_half": float((x > 0.5).float().mean()) if len(x) else math.nan,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: one record per feature, and the wall time."""
        records = []
        for i, f in enumerate(self.features.tolist()):
            records.append(
                {
                    "feature": f,
                    "explanation": self.explanations[i].name,
                    "description": self.explanations[i].description,
                    "output": self.outputs[i],
                    "train_correlation": float(self.train_correlation[i]),
                    **{k: float(v[i]) for k, v in self.activation._asdict().items()},
                    **{"logit_" + k: float(v[i]) for k, v in self.logit._asdict().items()},
                }
            )
        return {"features": records, "seconds": self.seconds}


def _choose_features(
    acts: Tensor, features: Sequence[int] | int | None, min_fired: int, seed: int
) -> list[int]:
    if isinstance(features, bool):
        raise ValueError(f"features={features!r}: expected feature indices, a count or None")
    if features is None or isinstance(features, int):
        live = ((acts > 0).sum(0) >= min_fired).nonzero().flatten()
        if features is None:
            return live.tolist()
        if features < 1:
            raise ValueError(f"features={features!r}: expected a positive count of live features")
        gen = torch.Generator().manual_seed(seed)
        return sorted(live[torch.randperm(len(live), generator=gen)[:features]].tolist())
    chosen = list(features)
    bad = [f for f in chosen if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < acts.shape[1]]
    if bad or not chosen:
        raise ValueError(f"features: {bad or chosen!r} are not feature indices in [0, {acts.shape[1]})")
    return chosen


def explanation_scores(
    model: nn.Module,
    sae: SAE,
    train_tokens: Int[Tensor, "batch pos"],
    test_tokens: Int[Tensor, "test_batch test_pos"],
    *,
    features: Sequence[int] | int | None = None,
    k: int = 20,
    k_out: int = 5,
    candidates: Sequence[Predicate] = (),
    select_by: Literal["correlation", "f1"] = "correlation",
    min_fired: int = 5,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool | None = None,
) -> ExplanationScores:
    """Explain features on ``train_tokens`` and score the explanations on ``test_tokens`` (every
    step of the module docstring).

    Args:
        features: indices, a number of live features (firing at least ``min_fired`` times on the
            training split) drawn with ``seed`` (all of them where fewer are live), or ``None`` for
            every live feature.
        k: at most this many tokens in a proposed :class:`TokenSet`.
        k_out: at most this many next tokens in an output explanation.
        candidates: predicates to choose from besides the proposed token set (by ``select_by``
            on the training split).
        progress: a progress bar (default: for more than 200 features).

    A dictionary off the residual stream (an MLP's hidden layer) gets its input-side scores and
    NaN output-side ones, with a warning: its features have no direct logit effect.

    >>> r = explanation_scores(model, sae, tokens, tokens, features=[253, 151])
    >>> r.explanations[0], [round(f1, 2) for f1 in r.activation.f1.tolist()]
    (TokenSet(['<']), [1.0, 0.91])
    """
    start = time.perf_counter()
    if select_by not in ("correlation", "f1"):
        raise ValueError(f"select_by={select_by!r}: expected 'correlation' or 'f1'")
    for name, value in (("k", k), ("k_out", k_out), ("min_fired", min_fired)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive int")
    train = _split(model, sae, train_tokens, batch_size)
    chosen = _choose_features(train.acts, features, min_fired, seed)
    if not chosen:
        raise ValueError(f"no feature fires at least min_fired={min_fired} times on the training tokens")
    test = _split(model, sae, test_tokens, batch_size)
    logger.info(
        "activations: %d + %d tokens, %.1fs", len(train.ids), len(test.ids), time.perf_counter() - start
    )
    train_acts, test_acts = train.acts[:, chosen], test.acts[:, chosen]
    n_vocab = len(train.rows.vocab)

    # step 2: proposals for every feature at once, then the candidates' training scores
    order, length = _propose_inputs(train_acts, train.ids, n_vocab, k, select_by)
    out_ids, out_ok = _propose_outputs(train_acts, train.next_ids, n_vocab, k_out)
    proposals, member = [], torch.zeros(n_vocab, len(chosen), dtype=torch.bool)  # [vocab, F]
    show = len(chosen) > 200 if progress is None else progress
    for f in tqdm(range(len(chosen)), desc="token sets", disable=not show):
        strings = dict.fromkeys(train.rows.vocab[i] for i in order[: length[f], f].tolist())
        proposals.append(TokenSet(list(strings)))
        member[proposals[-1].ids(train.rows), f] = True
    proposed = activation_scores(train_acts, member[train.ids].float())
    best, train_corr = getattr(proposed, select_by).clone(), proposed.correlation.clone()
    pick = torch.full((len(chosen),), -1)  # -1: the proposed token set, else a candidate
    test_values = member[test.ids].float()  # [n_test, F]
    for c, cand in enumerate(candidates):
        s = _shared_scores(train_acts, _flat(evaluate(cand, train.rows)))
        better = getattr(s, select_by) > best
        if better.any():
            pick[better] = c
            best[better], train_corr[better] = getattr(s, select_by)[better], s.correlation[better]
            test_values[:, better] = _flat(evaluate(cand, test.rows))[:, None]
    explanations = [proposals[f] if c < 0 else candidates[c] for f, c in enumerate(pick.tolist())]
    outputs = [[train.rows.vocab[i] for i in out_ids[out_ok[:, f], f].tolist()] for f in range(len(chosen))]

    # step 3: held-out input-side scores, one column per feature
    activation = activation_scores(test_acts, test_values)

    # step 4: output-side scores against the weights
    out_members = torch.zeros(len(chosen), n_vocab, dtype=torch.bool)
    for f in range(len(chosen)):
        out_members[f, out_ids[out_ok[:, f], f]] = True
    try:
        logit = logit_scores(logit_effect_matrix(model, sae, chosen), out_members)
    except ValueError as err:  # a site off the residual stream: no direct logit effect to score against
        warnings.warn(f"explanation_scores: no output-side scores (NaN): {err}", stacklevel=user_stacklevel())
        nan = torch.full((len(chosen),), math.nan, dtype=torch.float64)
        logit = LogitScores(nan, nan.clone())
    seconds = time.perf_counter() - start
    logger.info("%d features explained and scored, %.1fs", len(chosen), seconds)
    return ExplanationScores(
        torch.tensor(chosen), explanations, outputs, train_corr, activation, logit, seconds
    )


class Explanation(NamedTuple):
    """One feature's offline explanation and its held-out scores (:func:`explain_feature`)."""

    predicate: Predicate
    """The input explanation (what the feature fires on)."""
    output: list[str]
    """The output explanation: next tokens enriched where it fires."""
    score: ExplanationScore
    """Held-out scores of both."""


def explain_feature(
    model: nn.Module,
    sae: SAE,
    feature: int,
    train_tokens: Int[Tensor, "batch pos"],
    test_tokens: Int[Tensor, "test_batch test_pos"],
    *,
    k: int = 20,
    k_out: int = 5,
    candidates: Sequence[Predicate] = (),
    select_by: Literal["correlation", "f1"] = "correlation",
) -> Explanation:
    """Explain one feature on ``train_tokens`` and score it on ``test_tokens``
    (:func:`explanation_scores` for one feature).

    >>> e = explain_feature(model, sae, 253, tokens, tokens)
    >>> e.predicate, e.score.f1
    (TokenSet(['<']), 1.0)
    """
    _check_feature(sae, feature)
    r = explanation_scores(
        model, sae, train_tokens, test_tokens, features=[feature], k=k, k_out=k_out,
        candidates=candidates, select_by=select_by, progress=False,
    )  # fmt: skip
    output = TokenSet(r.outputs[0]) if r.outputs[0] else None
    score = score_explanation(model, sae, feature, r.explanations[0], test_tokens, output=output)
    return Explanation(r.explanations[0], r.outputs[0], score)
