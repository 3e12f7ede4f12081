"""States as roles: features that fire on the same tokens become one state.

A role (an automaton state such as "inside a tag name") is usually carried by several features: the
same role at every layer, and near-duplicates within a layer. They fire on nearly the same tokens,
so the grouping is **average-linkage agglomerative clustering on the Jaccard overlap of firing
sets**: the two groups whose members overlap most on average merge, until no two groups overlap
by ``threshold`` or more. Average linkage (rather than single linkage, which chains a word feature
to a role feature through one shared neighbour) keeps groups tight; the threshold is on the mean
pairwise overlap, so a group's members agree with each other, not just with one seed.

A grouped state **fires where at least half of its members fire** (a majority vote). Taking the
union instead would let one broad member (a layer-0 feature that fires on a token in every
context) spread the state over every context of its token; the vote keeps the state as precise as
its typical member. Each state reports its **coherence**: the mean Jaccard overlap of its members'
firing sets with the state's own (1.0 for a single feature or perfect duplicates).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def jaccard(fire: Bool[Tensor, "tokens c"]) -> Float[Tensor, "c c"]:
    """Pairwise Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of the columns' firing sets (0 for two empty
    sets)."""
    f = fire.float()
    inter = f.T @ f
    sizes = inter.diagonal()
    return inter / (sizes[:, None] + sizes[None, :] - inter).clamp_min(1)


def average_linkage(similarity: Float[Tensor, "c c"], threshold: float) -> list[list[int]]:
    """Clusters of columns whose mean pairwise similarity is at least ``threshold``.

    Agglomerative: merge the most similar pair of clusters (similarity between clusters = the mean
    over their member pairs, kept up to date with the Lance-Williams update), until the best pair
    falls below ``threshold``. Each cluster lists its members, its first member being the one that
    was a cluster's first the longest (the most frequent, when columns are sorted by frequency);
    clusters come in order of their first member.
    """
    n = similarity.shape[0]
    if n == 0:
        return []
    sim = similarity.double().clone()
    sim.fill_diagonal_(-torch.inf)
    size = torch.ones(n, dtype=torch.float64)
    alive = torch.ones(n, dtype=torch.bool)
    members: list[list[int]] = [[i] for i in range(n)]
    best, partner = sim.max(1)  # each row's best partner, refreshed only for rows that change
    while n > 1:
        row = int(best.argmax())
        if float(best[row]) < threshold:
            break
        a, b = sorted((row, int(partner[row])))  # keep the lower index (the more frequent column)
        merged = (size[a] * sim[a] + size[b] * sim[b]) / (size[a] + size[b])
        sim[a], sim[:, a] = merged, merged
        sim[a, a] = -torch.inf
        sim[b], sim[:, b] = -torch.inf, -torch.inf
        size[a] += size[b]
        alive[b] = False
        members[a] += members[b]
        best[b] = -torch.inf
        # rows whose best partner was a or b may have a new best; a's row changed entirely
        stale = ((partner == a) | (partner == b) | (torch.arange(sim.shape[0]) == a)) & alive
        best[stale], partner[stale] = sim[stale].max(1)
        better = alive & (merged > best)
        best[better], partner[better] = merged[better], a
        n -= 1
    return [members[i] for i in alive.nonzero().squeeze(-1).tolist()]


def majority(fire: Bool[Tensor, "tokens c"], groups: list[list[int]]) -> Bool[Tensor, "tokens g"]:
    """Each group fires where at least half of its members fire."""
    if not groups:
        return torch.zeros(fire.shape[0], 0, dtype=torch.bool)
    f = fire.float()
    return torch.stack([2 * f[:, g].sum(1) >= len(g) for g in groups], dim=1)


def coherence(fire: Bool[Tensor, "tokens c"], group: list[int], state_fire: Bool[Tensor, " tokens"]) -> float:
    """Mean Jaccard overlap of the members' firing sets with the state's."""
    f = fire[:, group].float()
    s = state_fire.float()
    inter = s @ f
    union = f.sum(0) + s.sum() - inter
    return float((inter / union.clamp_min(1)).mean())
