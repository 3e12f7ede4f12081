"""Features against neurons: is a dictionary feature something a single MLP neuron already
computes? (Towards Monosemanticity, "Features vs neurons".)

The algorithm, on one dictionary and the MLP neurons of its layer:

1. Read the dictionary's input and the neurons (``blocks.L.mlp.hook_post``) over the same tokens,
   one row per token (:func:`~sae_circuits.analysis._stats.hook_activations`; position 0 dropped).
2. Correlate every feature with every neuron (Pearson) and keep, per feature, its best-correlated
   neuron. A feature that never fires is dead: it gets neuron ``-1`` and correlation 0.
3. For every property (a boolean mask over the tokens: "is a base64 token", "is in a markup
   document", "is in automaton state ATTR_VALUE", made by :func:`token_properties`):

   a. the *feature* that predicts it best: the largest F1 of "the feature fires" (activation > 0)
      against the mask, over all features;
   b. that feature's best-correlated *neuron*, scored as a detector of the same property;
   c. the best *neuron overall* for the property (largest F1 over all neurons), so that a feature
      is not compared only with a neuron chosen for another reason.

   A neuron has no natural zero, so it "fires" above a threshold chosen to maximise its own F1
   (:func:`detect`). That choice favours the neurons (the features get no such tuning): a property
   that a feature predicts better than every neuron is then evidence for the feature, not an
   artefact of a badly placed neuron threshold.

Precision = tp / fired, recall = tp / positives, F1 = 2 tp / (fired + positives).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from sae_circuits.analysis._stats import (
    LabelledRows,
    best_match,
    check_tokens,
    correlation,
    encode_rows,
    hook_activations,
)
from sae_circuits.languages import automata
from sae_circuits.sae import SAE

__all__ = [
    "Detection",
    "FeaturesVsNeurons",
    "PropertyMatch",
    "Score",
    "detect",
    "features_vs_neurons",
    "neuron_hook_of",
    "token_properties",
]


class Detection(NamedTuple):
    """Every column of a matrix of activations, read as a detector of one property."""

    precision: Float[Tensor, " k"]
    """tp / tokens where the column fires (0 where it never fires)."""
    recall: Float[Tensor, " k"]
    """tp / tokens with the property."""
    f1: Float[Tensor, " k"]
    """2 tp / (fired + positives): the harmonic mean of the two."""
    threshold: Float[Tensor, " k"]
    """The column fires where its activation is > this (``-inf``: on every token)."""


class Score(NamedTuple):
    """One unit (a feature or a neuron) as a detector of one property."""

    unit: int
    """Feature or neuron index (-1 and NaN scores: no such unit, e.g. the neuron of a dead feature)."""
    precision: float
    recall: float
    f1: float
    threshold: float
    """Fires where the activation is > this (0 for a feature; F1-best for a neuron)."""


class PropertyMatch(NamedTuple):
    """The best feature for one property, its best-correlated neuron, and the best neuron."""

    positives: int
    """Tokens with the property."""
    feature: Score
    """The feature whose firing (> 0) has the largest F1 against the property."""
    feature_neuron: Score
    """That feature's best-correlated neuron, at its own F1-best threshold."""
    feature_neuron_correlation: float
    """Pearson correlation of the feature with that neuron."""
    best_neuron: Score
    """The neuron with the largest F1 against the property (F1-best threshold each)."""


@dataclass
class FeaturesVsNeurons:
    """Result of :func:`features_vs_neurons`."""

    hook_name: str
    """The dictionary's input hook."""
    neuron_hook: str
    """Where the neurons were read (``blocks.L.mlp.hook_post``)."""
    n_tokens: int
    """Token rows the statistics are over."""
    live: Bool[Tensor, " d_sae"]
    """Features that fire at least once (and not identically) on the tokens."""
    neuron: Int[Tensor, " d_sae"]
    """Best-correlated neuron of every feature (-1 for a dead feature)."""
    correlation: Float[Tensor, " d_sae"]
    """Its Pearson correlation (0 for a dead feature)."""
    properties: dict[str, PropertyMatch]
    """Per property name: the feature and neurons that detect it best."""


def neuron_hook_of(hook_name: str) -> str:
    """The MLP neurons of the block a hook belongs to.

    >>> neuron_hook_of("blocks.1.hook_resid_post")
    'blocks.1.mlp.hook_post'
    """
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    if match is None:
        raise ValueError(
            f"hook {hook_name!r} is not in a block ('blocks.L.…'): pass the neuron hook explicitly"
        )
    return f"blocks.{match[1]}.mlp.hook_post"


def detect(
    values: Float[Tensor, "n_tokens k"], mask: Bool[Tensor, " n_tokens"], threshold: float | None = None
) -> Detection:
    """Every column of ``values`` as a detector of ``mask``: it fires where ``value > threshold``.
    With ``threshold=None`` each column gets the threshold that maximises its F1 (between two
    observed values, so that ties fire together).

    >>> values = torch.tensor([[0.0], [2.0], [1.0], [3.0]])
    >>> mask = torch.tensor([False, True, False, True])
    >>> detect(values, mask, threshold=0.0).precision  # fires on 3 tokens, 2 of them in the mask
    tensor([0.6667])
    >>> best = detect(values, mask)
    >>> float(best.f1[0]), float(best.threshold[0])
    (1.0, 1.5)
    """
    if values.ndim != 2 or mask.shape != values.shape[:1]:
        raise ValueError(
            "detect: expected values [n, k] and a mask [n], "
            f"got {tuple(values.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    positives = mask.sum().float()
    if threshold is not None:
        fired = values > threshold  # [n, k]
        tp = (fired & mask[:, None]).sum(0).float()
        n_fired = fired.sum(0).float()
        t = torch.full((values.shape[1],), float(threshold))
        return _scores(tp, n_fired, positives, t)
    parts = [_best_cut(values[:, i : i + 256].float(), mask) for i in range(0, values.shape[1], 256)]
    tp, n_fired, t = (torch.cat(p) for p in zip(*parts))
    return _scores(tp, n_fired, positives, t)


def _scores(tp: Tensor, n_fired: Tensor, positives: Tensor, threshold: Tensor) -> Detection:
    precision = torch.where(n_fired > 0, tp / n_fired.clamp_min(1), torch.zeros_like(tp))
    recall = tp / positives.clamp_min(1)
    f1 = 2 * tp / (n_fired + positives).clamp_min(1)
    return Detection(precision, recall, f1, threshold)


def _best_cut(values: Float[Tensor, "n k"], mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """F1-best "fires on the top m tokens" cut of every column, at a change of value."""
    n = values.shape[0]
    positives = mask.sum().float()
    sorted_values, order = values.sort(dim=0, descending=True)  # [n, k]
    tp = mask[order].float().cumsum(0)  # true positives when the top i+1 tokens fire
    fired = torch.arange(1, n + 1, dtype=torch.float32)[:, None].expand_as(tp)
    f1 = 2 * tp / (fired + positives)
    # A cut inside a run of equal values is not a threshold: only the last of a run may be chosen.
    boundary = torch.ones_like(sorted_values, dtype=torch.bool)
    boundary[:-1] = sorted_values[:-1] != sorted_values[1:]
    f1 = torch.where(boundary, f1, torch.full_like(f1, -1.0))
    best = f1.argmax(0)  # [k]
    cols = torch.arange(values.shape[1])
    below = sorted_values[(best + 1).clamp_max(n - 1), cols]
    at = sorted_values[best, cols]
    # the midpoint (in float64: no overflow) in the values' dtype, kept strictly below ``at`` so that
    # ``value > threshold`` fires on it: two adjacent floats' midpoint rounds to one of them
    mid = ((at.double() + below.double()) / 2).to(at.dtype)
    mid = torch.where((mid >= at) | ~torch.isfinite(mid), below, mid)
    threshold = torch.where(best + 1 < n, mid, torch.full_like(mid, -torch.inf))
    return tp[best, cols], fired[best, cols], threshold


_NO_UNIT = Score(-1, float("nan"), float("nan"), float("nan"), float("nan"))
"""The score of a unit that does not exist (the neuron of a feature that never fires)."""


def _score(detection: Detection, unit: int) -> Score:
    return Score(
        unit,
        float(detection.precision[unit]),
        float(detection.recall[unit]),
        float(detection.f1[unit]),
        float(detection.threshold[unit]),
    )


@torch.no_grad()
def features_vs_neurons(
    model: nn.Module,
    sae: SAE,
    tokens: Int[Tensor, "batch pos"],
    *,
    neuron_hook: str | None = None,
    properties: Mapping[str, Tensor] | None = None,
    batch_size: int = 16,
) -> FeaturesVsNeurons:
    """Every feature's best-correlated MLP neuron, and, per property (a boolean mask with one entry
    per token row: ``tokens[:, 1:].flatten()``, position 0 dropped), the best feature, its neuron
    and the best neuron as detectors of it (module docstring, steps 1-3).

    >>> fvn = features_vs_neurons(model, sae, tokens)
    >>> fvn.neuron_hook, fvn.n_tokens, fvn.neuron.shape
    ('blocks.1.mlp.hook_post', 94, torch.Size([2048]))
    >>> tag = torch.tensor([t.strip().isalpha() for t in model.to_str_tokens(tokens[:, 1:].flatten())])
    >>> match = features_vs_neurons(model, sae, tokens, properties={"word": tag}).properties["word"]
    >>> match.feature.f1 > 0, match.best_neuron.f1 >= match.feature_neuron.f1
    (True, True)
    """
    tokens = check_tokens(tokens, model)
    neuron_hook = neuron_hook or neuron_hook_of(sae.cfg.hook_name)
    n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
    masks = _check_properties(properties or {}, n_tokens, tokens.shape)
    # 1. the dictionary's input and the neurons over the same tokens
    acts = hook_activations(model, [sae.cfg.hook_name, neuron_hook], tokens, batch_size)
    features = encode_rows(sae, acts[sae.cfg.hook_name])  # [n, d_sae]
    neurons = acts[neuron_hook]  # [n, d_mlp]
    # 2. best-correlated neuron of every live feature
    live = features.std(0) > 0
    match = best_match(correlation(features, neurons))
    neuron = torch.where(live, match.match, torch.full_like(match.match, -1))
    corr = torch.where(live, match.value, torch.zeros_like(match.value))
    # 3. per property: best feature, its neuron, best neuron
    results = {}
    for name, mask in masks.items():
        by_feature = detect(features, mask, threshold=0.0)
        by_neuron = detect(neurons, mask)
        best_feature = int(by_feature.f1.argmax())
        its_neuron = int(neuron[best_feature])  # -1 for a dead feature: no neuron to score
        results[name] = PropertyMatch(
            positives=int(mask.sum()),
            feature=_score(by_feature, best_feature),
            feature_neuron=_score(by_neuron, its_neuron) if its_neuron >= 0 else _NO_UNIT,
            feature_neuron_correlation=float(corr[best_feature]),
            best_neuron=_score(by_neuron, int(by_neuron.f1.argmax())),
        )
    return FeaturesVsNeurons(sae.cfg.hook_name, neuron_hook, n_tokens, live, neuron, corr, results)


def _check_properties(properties: Mapping[str, Any], n_tokens: int, shape: torch.Size) -> dict[str, Tensor]:
    masks = {}
    for name, mask in properties.items():
        if not isinstance(mask, Tensor) or mask.ndim != 1 or mask.is_floating_point():
            what = (
                f"shape {tuple(mask.shape)}, dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask)
            )
            raise ValueError(f"property {name!r}: expected a 1-d boolean tensor, got {what}")
        if mask.shape[0] != n_tokens:
            raise ValueError(
                f"property {name!r} has {mask.shape[0]} entries, but tokens of shape {tuple(shape)} give "
                f"{shape[0]} x {shape[1] - 1} = {n_tokens} rows (position 0 of every row is dropped)"
            )
        mask = mask.bool().cpu()
        if not mask.any():
            raise ValueError(f"property {name!r} holds no token among the {n_tokens}: nothing to detect")
        masks[name] = mask
    return masks


# --------------------------------------------------------------------------- properties

BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{16,}")
"""A base64-looking run (as :func:`sae_circuits.recipes.base64_steering.looks_like_base64`): 16+
characters of the standard alphabet, mixing upper and lower case and digits (checked separately).
The URL-safe ``-`` and ``_`` are left out: with them, snake_case names with digits in code match."""


def token_properties(
    model: nn.Module,
    rows: LabelledRows,
    *,
    states: Sequence[tuple[str, str]] = (("markup", "ATTR_VALUE"),),
    skip_first_position: bool = True,
) -> dict[str, Bool[Tensor, " n_tokens"]]:
    """Boolean masks over the token rows of :func:`~sae_circuits.analysis._stats.labelled_rows`
    (flattened, position 0 of every row dropped as the activations are), for
    :func:`features_vs_neurons`:

    - ``source=NAME``: the token comes from source ``NAME``;
    - ``base64``: most of the token's non-space characters lie in a base64-looking run (16+
      characters of the base64 alphabet mixing upper and lower case and digits), in any source;
    - ``AUTOMATON:STATE`` for each ``(automaton, state)`` of ``states``: the token's true state
      (:func:`sae_circuits.languages.automata.label` over the source named after the automaton,
      every symbol one token, documents split at end-of-text) is ``STATE``.

    >>> from sae_circuits.analysis._stats import labelled_rows
    >>> rows = labelled_rows(model, {"markup": texts}, 32, 4)
    >>> props = token_properties(model, rows, states=[("markup", "TAG_NAME")])
    >>> sorted(props), props["markup:TAG_NAME"].shape
    (['base64', 'markup:TAG_NAME', 'source=markup'], torch.Size([124]))
    """
    tl = cast(Any, model)
    tokenizer = tl.tokenizer
    eot = getattr(tokenizer, "eos_token_id", None)
    ids = rows.tokens
    pieces = tokenizer.batch_decode([[i] for i in range(int(ids.max()) + 1)])
    start = 1 if skip_first_position else 0
    out: dict[str, Tensor] = {}
    for s, name in enumerate(rows.names):
        out[f"source={name}"] = (rows.source == s)[:, None].expand(-1, ids.shape[1] - start).reshape(-1)
    base64 = torch.zeros(ids.shape, dtype=torch.bool)
    for s in range(len(rows.names)):  # a source's rows are one stream: runs may cross a row's end
        chosen = (rows.source == s).nonzero().flatten()
        found = _base64_tokens([pieces[i] for i in ids[chosen].flatten().tolist()])
        base64[chosen] = found.view(len(chosen), ids.shape[1])
    out["base64"] = base64[:, start:].reshape(-1)
    for automaton, state in states:
        fsa = automata.resolve(automaton)
        if state not in fsa.states:
            raise ValueError(f"state {state!r} is not a state of {fsa.name!r}: expected one of {fsa.states}")
        if fsa.name not in rows.names:
            raise ValueError(f"automaton {fsa.name!r} has no source of that name among {rows.names}")
        source = rows.names.index(fsa.name)
        chosen = (rows.source == source).nonzero().flatten()
        stream = ids[chosen].flatten().tolist()  # the rows of one source are one contiguous stream
        truth = torch.zeros(len(stream), dtype=torch.bool)
        doc: list[int] = []
        for pos, token in enumerate([*stream, eot]):
            if token != eot and pos < len(stream):
                doc.append(pos)
                continue
            try:
                labels = automata.label(fsa, [pieces[stream[p]] for p in doc])
            except ValueError as error:
                raise ValueError(
                    f"source {fsa.name!r}: a document does not follow the automaton (every symbol must be "
                    f"one token): {error}"
                ) from error
            truth[doc] = torch.tensor([lab == state for lab in labels], dtype=torch.bool)
            doc = []
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        mask[chosen] = truth.view(len(chosen), ids.shape[1])
        out[f"{fsa.name}:{state}"] = mask[:, start:].reshape(-1)
    return out


def _base64_tokens(pieces: Sequence[str]) -> Bool[Tensor, " pos"]:
    text = "".join(pieces)
    inside = torch.zeros(len(text), dtype=torch.bool)
    for run in BASE64_RUN.finditer(text):
        chars = run.group()
        if re.search("[A-Z]", chars) and re.search("[a-z]", chars) and re.search("[0-9]", chars):
            inside[run.start() : run.end()] = True
    out, offset = torch.zeros(len(pieces), dtype=torch.bool), 0
    for i, piece in enumerate(pieces):
        visible = [offset + j for j, ch in enumerate(piece) if not ch.isspace()]
        out[i] = bool(visible) and 2 * int(inside[visible].sum()) > len(visible)
        offset += len(piece)
    return out
