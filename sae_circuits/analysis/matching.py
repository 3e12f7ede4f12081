"""Match the features of one dictionary to those of another dictionary of the same site, by two
measures that need not agree: the direction each feature writes (decoder cosine) and when it
fires (activation correlation over a token set).

1. Check that both dictionaries read the same site: the same input hook and input width (a
   dictionary of another hook has other features, not a finer or coarser view of the same ones).
2. Decoder cosine: unit-normalise every decoder row, ``cos = dec_a @ dec_b.T``; every feature of
   ``a`` takes the row maximum over ``b``.
3. With a model and tokens: both dictionaries' activations from one model pass (nothing spliced,
   :func:`~sae_circuits.analysis._stats.dictionary_activations`), every feature's firing count,
   and the Pearson correlation of every feature of ``a`` with every feature of ``b`` (chunked);
   every feature of ``a`` takes the row maximum. A feature that never fires on the tokens has
   no variance and correlates 0 with everything: its firing count of 0 says so.
"""

from __future__ import annotations

from typing import NamedTuple

from jaxtyping import Float, Int
from torch import Tensor, nn

from sae_circuits.analysis._stats import check_tokens, correlation, decoder_cosine, dictionary_activations
from sae_circuits.sae import SAE

__all__ = [
    "FeatureMatch",
    "Similarities",
    "check_same_site",
    "firing_counts",
    "match_features",
    "similarities",
]


class FeatureMatch(NamedTuple):
    """For every feature of dictionary ``a``, its best match in dictionary ``b`` by each measure."""

    cosine: Float[Tensor, " d_sae_a"]
    """Largest decoder cosine with a feature of ``b``."""
    cosine_index: Int[Tensor, " d_sae_a"]
    """Which feature of ``b`` that is."""
    correlation: Float[Tensor, " d_sae_a"] | None
    """Largest activation correlation with a feature of ``b`` over the tokens (0 for a feature
    that never fires there); ``None`` without a model and tokens."""
    correlation_index: Int[Tensor, " d_sae_a"] | None
    """Which feature of ``b`` that is (0 when the correlation is 0 everywhere); ``None`` without tokens."""
    fires_a: Int[Tensor, " d_sae_a"] | None
    """On how many tokens each feature of ``a`` fires (> 0); ``None`` without tokens."""
    fires_b: Int[Tensor, " d_sae_b"] | None
    """On how many tokens each feature of ``b`` fires; ``None`` without tokens."""
    n_tokens: int
    """Tokens the activations were read over (0 without tokens)."""

    def agreement(self) -> float:
        """Fraction of the features of ``a`` (that fire) whose two best matches are the same feature
        of ``b``; NaN without tokens or when no feature fires."""
        if self.correlation_index is None or self.fires_a is None:
            return float("nan")
        alive = self.fires_a > 0
        if not bool(alive.any()):
            return float("nan")
        return float((self.cosine_index == self.correlation_index)[alive].float().mean())


def check_same_site(saes: list[SAE], what: str = "dictionaries") -> None:
    """Refuse dictionaries that do not read the same site, naming every hook and input width."""
    if not saes or not all(isinstance(s, SAE) for s in saes):
        kinds = [type(s).__name__ for s in saes]
        raise ValueError(f"{what}: expected sc.SAE dictionaries, got {kinds or 'none'}")
    sites = [(s.cfg.hook_name, s.cfg.d_in) for s in saes]
    if len(set(sites)) > 1:
        listed = ", ".join(f"{hook!r} (d_in={d_in})" for hook, d_in in sites)
        raise ValueError(f"{what} read different sites: {listed}; expected one hook and input width")


class Similarities(NamedTuple):
    """Both similarity matrices between the features of ``a`` (rows) and ``b`` (columns)."""

    cosine: Float[Tensor, "d_sae_a d_sae_b"]
    """Decoder cosines."""
    correlation: Float[Tensor, "d_sae_a d_sae_b"] | None
    """Activation correlations over the tokens; ``None`` without tokens."""
    acts_a: Float[Tensor, "n_tokens d_sae_a"] | None
    """Activations of ``a`` over the tokens (one row per token); ``None`` without tokens."""
    acts_b: Float[Tensor, "n_tokens d_sae_b"] | None
    """Activations of ``b``."""


def similarities(
    a: SAE,
    b: SAE,
    model: nn.Module | None = None,
    tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    batch_size: int = 16,
) -> Similarities:
    """Decoder cosine of every feature of ``a`` with every feature of ``b`` and, given a model and
    tokens, their activation correlation (steps 1-3 of the module docstring, without the maxima).

    >>> sim = similarities(sae, sae, model, tokens)
    >>> sim.cosine.shape, bool(torch.allclose(sim.cosine.diagonal(), torch.ones(2048), atol=1e-4))
    (torch.Size([2048, 2048]), True)
    """
    check_same_site([a, b], "match_features")
    cosine = decoder_cosine(a, b)  # [d_sae_a, d_sae_b]
    if (model is None) != (tokens is None):
        given = "model" if tokens is None else "tokens"
        raise ValueError(f"match_features: {given} given alone; pass both model and tokens, or neither")
    if model is None or tokens is None:
        return Similarities(cosine, None, None, None)
    acts_a, acts_b = dictionary_activations(model, [a, b], check_tokens(tokens, model), batch_size)
    return Similarities(cosine, correlation(acts_a, acts_b), acts_a, acts_b)


def match_features(
    a: SAE,
    b: SAE,
    model: nn.Module | None = None,
    tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    batch_size: int = 16,
) -> FeatureMatch:
    """Every feature of ``a``'s best match in ``b`` by decoder cosine and, given a model and tokens,
    by activation correlation over the tokens (position 0 of every row left out), with firing counts
    that tell dead features apart. ``a`` and ``b`` must read the same site; any widths.

    >>> m = match_features(sae, sae, model, tokens)  # a dictionary against itself
    >>> bool((m.cosine_index == torch.arange(2048)).all()), round(float(m.cosine.min()), 3)
    (True, 1.0)
    >>> alive = m.fires_a > 0  # a feature that fires correlates 1 with itself
    >>> int(alive.sum()) > 0, bool((m.correlation[alive] > 0.999).all()), float(m.correlation[~alive].max())
    (True, True, 0.0)
    """
    sim = similarities(a, b, model, tokens, batch_size=batch_size)
    cos_value, cos_index = sim.cosine.max(dim=1)
    if sim.correlation is None or sim.acts_a is None or sim.acts_b is None:
        return FeatureMatch(cos_value, cos_index, None, None, None, None, 0)
    corr_value, corr_index = sim.correlation.max(dim=1)
    return FeatureMatch(
        cos_value, cos_index, corr_value, corr_index,
        firing_counts(sim.acts_a), firing_counts(sim.acts_b), int(sim.acts_a.shape[0]),
    )  # fmt: skip


def firing_counts(acts: Float[Tensor, "n_tokens d_sae"]) -> Int[Tensor, " d_sae"]:
    """On how many rows each column is positive."""
    return (acts > 0).sum(0)
