"""Universality: do two models trained apart (another seed, the same architecture and tokenizer)
learn the same features? (Towards Monosemanticity, "Universality".)

The algorithm, for dictionaries of the same site in model A and model B:

1. Run both models on the same tokens and read, per site, the dictionary input and the MLP
   neurons of its block (``blocks.L.mlp.hook_post``), one row per token
   (:func:`~sae_circuits.analysis._stats.hook_activations`; position 0 dropped).
2. Encode with each model's dictionary; with ``random_baseline``, also with a random dictionary
   shaped like B's (:func:`sae_circuits.baselines.random_like`, thresholds calibrated on B over
   the same tokens).
3. Correlate (Pearson) every feature of A with every feature of B and keep each one's best match,
   both ways (A in B, B in A); a unit that never varies over the tokens (a dead feature, a
   constant neuron) is left out and counted.
4. The baselines, the same best-match correlation for: each MLP neuron of A among B's neurons at
   the same layer (neurons are the basis a universality claim has to beat), and each feature of A
   among the random dictionary's features (the floor a best-of-many maximum reaches by chance).
5. Summarise each distribution: median, mean, fraction above 0.5 and 0.7
   (:class:`Distribution`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sae_circuits.analysis._stats import best_match, check_tokens, correlation, encode_rows, hook_activations
from sae_circuits.analysis.neurons import neuron_hook_of
from sae_circuits.baselines import random_like
from sae_circuits.sae import SAE

__all__ = [
    "Distribution",
    "Matches",
    "SiteUniversality",
    "Universality",
    "best_matches",
    "check_same_tokenizer",
    "distribution",
    "universality",
]


class Distribution(NamedTuple):
    """Summary of a set of best-match correlations."""

    n: int
    """How many values (live units)."""
    median: float
    mean: float
    above_0_5: float
    """Fraction of values > 0.5."""
    above_0_7: float
    """Fraction of values > 0.7."""


def distribution(values: Float[Tensor, " n"]) -> Distribution:
    """Median, mean and fractions above 0.5 / 0.7 of ``values`` (NaN for none).

    >>> d = distribution(torch.tensor([0.2, 0.6, 0.8]))
    >>> d.n, round(d.median, 2), round(d.mean, 2), round(d.above_0_5, 2), round(d.above_0_7, 2)
    (3, 0.6, 0.53, 0.67, 0.33)
    """
    if values.numel() == 0:
        nan = float("nan")
        return Distribution(0, nan, nan, nan, nan)
    values = values.float()
    return Distribution(
        int(values.numel()),
        float(values.quantile(0.5)),  # torch's median() is the lower middle value of an even count
        float(values.mean()),
        float((values > 0.5).float().mean()),
        float((values > 0.7).float().mean()),
    )


class Matches(NamedTuple):
    """The best match of every live unit (feature or neuron) of one set among another set."""

    units: Int[Tensor, " n_live"]
    """The live units of the first set (indices into its columns)."""
    value: Float[Tensor, " n_live"]
    """Pearson correlation with their best match."""
    match: Int[Tensor, " n_live"]
    """Which column of the second set the best match is."""
    dead: int
    """Units of the first set left out: constant over the tokens (never fired)."""
    summary: Distribution
    """Summary of ``value``."""


def best_matches(a: Float[Tensor, "n_tokens n_a"], b: Float[Tensor, "n_tokens n_b"]) -> Matches:
    """For every column of ``a`` that varies over the tokens, its most correlated column of ``b``
    (the same tokens in the same order); constant columns are counted in ``dead``.

    >>> x = torch.randn(200, 4)
    >>> m = best_matches(x, x[:, [2, 0, 3, 1]])
    >>> m.match.tolist(), round(m.summary.median, 4)
    ([1, 3, 0, 2], 1.0)
    """
    live = (a.float().std(0) > 0).nonzero().flatten()
    match = best_match(correlation(a[:, live], b))
    return Matches(live, match.value, match.match, a.shape[1] - len(live), distribution(match.value))


def _both_ways(a: Tensor, b: Tensor) -> tuple[Matches, Matches]:
    """``best_matches(a, b), best_matches(b, a)`` from one correlation matrix (a dead column
    correlates 0 with everything, so it never changes a maximum above 0)."""
    similarity = correlation(a, b)  # [n_a, n_b]
    out = []
    for sim, x in ((similarity, a), (similarity.T, b)):
        live = (x.float().std(0) > 0).nonzero().flatten()
        match = best_match(sim[live])
        out.append(Matches(live, match.value, match.match, x.shape[1] - len(live), distribution(match.value)))
    return out[0], out[1]


@dataclass
class SiteUniversality:
    """Universality at one site: A's and B's dictionaries there, and the baselines."""

    hook_name: str
    """The dictionaries' input hook."""
    neuron_hook: str | None
    """Where the neurons were read (None: no neuron baseline)."""
    a_in_b: Matches
    """Every live feature of A matched among B's features."""
    b_in_a: Matches
    """Every live feature of B matched among A's features."""
    neurons: Matches | None
    """Every varying neuron of A matched among B's neurons of the same layer."""
    random: Matches | None
    """Every live feature of A matched among a random dictionary's features on B."""


@dataclass
class Universality:
    """Result of :func:`universality`: one entry per pair of dictionaries."""

    sites: list[SiteUniversality]
    n_tokens: int
    """Token rows the correlations are over."""


def check_same_tokenizer(model_a: nn.Module, model_b: nn.Module) -> None:
    """Raise ``ValueError`` unless both models have the same vocabulary (size, and token for token
    where both have a tokenizer): the analyses feed them the same token ids.

    >>> check_same_tokenizer(model, model)
    """
    a, b = cast(Any, model_a), cast(Any, model_b)
    size_a, size_b = a.cfg.d_vocab, b.cfg.d_vocab
    if size_a != size_b:
        raise ValueError(
            f"model_a has d_vocab={size_a} and model_b d_vocab={size_b}: universality compares the models "
            "on the same token ids, which needs one tokenizer"
        )
    tok_a, tok_b = getattr(a, "tokenizer", None), getattr(b, "tokenizer", None)
    if tok_a is None or tok_b is None or tok_a is tok_b:
        return
    vocab_a, vocab_b = tok_a.get_vocab(), tok_b.get_vocab()
    if vocab_a != vocab_b:
        differ = sorted(set(vocab_a.items()) ^ set(vocab_b.items()), key=lambda kv: kv[1])[:3]
        raise ValueError(
            f"model_a and model_b have different tokenizers (same size {size_a}; (token, id) pairs in one "
            f"only: {differ}): universality compares the models on the same token ids"
        )


@torch.no_grad()
def universality(
    model_a: nn.Module,
    saes_a: SAE | Sequence[SAE],
    model_b: nn.Module,
    saes_b: SAE | Sequence[SAE],
    tokens: Int[Tensor, "batch pos"],
    *,
    neuron_hooks: Sequence[str | None] | None = None,
    random_baseline: bool = True,
    random_active: int = 20,
    seed: int = 0,
    batch_size: int = 16,
) -> Universality:
    """Best-match activation correlations between the dictionaries of two models, beside the
    neuron and random-dictionary baselines (module docstring, steps 1-5).

    ``saes_a[i]`` and ``saes_b[i]`` must read the same hook. ``neuron_hooks`` (one per pair, None
    to skip one) defaults to the MLP neurons of each site's block; ``seed`` seeds the random
    dictionaries, ``random_active`` their features firing per token.

    >>> three = model.to_tokens(texts[:3])  # random_like needs 103+ tokens to calibrate 2048 features
    >>> u = universality(model, [sae], model, [sae], three)  # a model against itself
    >>> site = u.sites[0]
    >>> site.neuron_hook, site.a_in_b.summary.median > 0.99, site.neurons.summary.median > 0.99
    ('blocks.1.mlp.hook_post', True, True)
    >>> site.random.summary.median < site.a_in_b.summary.median
    True
    """
    check_same_tokenizer(model_a, model_b)
    tokens = check_tokens(tokens, model_a)
    list_a = [saes_a] if isinstance(saes_a, SAE) else list(saes_a)
    list_b = [saes_b] if isinstance(saes_b, SAE) else list(saes_b)
    if len(list_a) != len(list_b) or not list_a:
        raise ValueError(
            f"saes_a holds {len(list_a)} dictionaries and saes_b {len(list_b)}: expected one pair per site"
        )
    for i, (sa, sb) in enumerate(zip(list_a, list_b)):
        if sa.cfg.hook_name != sb.cfg.hook_name:
            raise ValueError(
                f"saes_a[{i}] reads {sa.cfg.hook_name!r} but saes_b[{i}] reads {sb.cfg.hook_name!r}: "
                "universality compares dictionaries of the same site"
            )
    if neuron_hooks is None:  # MLP neurons where both models have them (not attention-only models)
        known = set(cast(Any, model_a).hook_dict) & set(cast(Any, model_b).hook_dict)
        neuron_hooks = [_default_neuron_hook(s.cfg.hook_name, known) for s in list_a]
    if len(neuron_hooks) != len(list_a):
        raise ValueError(
            f"neuron_hooks holds {len(neuron_hooks)} names for {len(list_a)} pairs of dictionaries"
        )
    # 1. inputs and neurons of both models over the same tokens
    names = [s.cfg.hook_name for s in list_a] + [h for h in neuron_hooks if h is not None]
    acts_a = hook_activations(model_a, names, tokens, batch_size)
    acts_b = hook_activations(model_b, names, tokens, batch_size)
    sites = []
    for i, (sa, sb) in enumerate(zip(list_a, list_b)):
        # 2. dictionary activations (and a random dictionary calibrated on B)
        fa, fb = encode_rows(sa, acts_a[sa.cfg.hook_name]), encode_rows(sb, acts_b[sb.cfg.hook_name])
        random = None
        if random_baseline:
            noise = random_like(sb, model_b, tokens, active=random_active, seed=seed + i)
            random = best_matches(fa, encode_rows(noise, acts_b[sb.cfg.hook_name]))
        # 3-4. best matches, both ways, and the neuron baseline
        hook = neuron_hooks[i]
        neurons = None if hook is None else best_matches(acts_a[hook], acts_b[hook])
        a_in_b, b_in_a = _both_ways(fa, fb)
        sites.append(SiteUniversality(sa.cfg.hook_name, hook, a_in_b, b_in_a, neurons, random))
    n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
    return Universality(sites, n_tokens)


def _default_neuron_hook(hook_name: str, known: set[str]) -> str | None:
    try:
        hook = neuron_hook_of(hook_name)
    except ValueError:
        return None
    return hook if hook in known else None
