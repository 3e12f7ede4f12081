"""Which rows of the adjacency matrix an attribution computes, and in which order.

A row is a target (a logit token or direction, or a feature's pre-activation) or a feature being
expanded. The sources of every row are the prompt's *active features*, numbered site by site
(:class:`ActiveFeatures`); the tokens and error nodes need no numbering of their own.

Targets come first. Features follow greedily (:class:`RowScheduler`): each computed row pushes
influence to its sources (its normalised absolute edges times its own weight), and the next
features are those with the highest influence so far, all from one site so that the backward
pass starts there. Without a budget every feature with a nonzero influence gets a row, earliest
positions first; under ``max_feature_nodes`` only the most influential ones do, and only they and
the likeliest next ones keep their edges itemised (:meth:`RowScheduler.itemised`).

Under a budget the features are chosen a *window* of ``WINDOW_BATCHES`` batches at a time (the
ranking is refreshed between windows, as circuit-tracer refreshes it every few batches), and a
window's batches are cut in position order: a batch's backward pass only runs up to its latest
row's position, so batches of early features are cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae_circuits.graph.replacement import SiteValues
from sae_circuits.graph.targets import ResolvedTarget
from sae_circuits.positions import is_int

_CANDIDATES_PER_NODE = 8  # under a budget, itemise edges to the top 8 x budget unexpanded features
WINDOW_BATCHES = 4  # under a budget, features are chosen this many batches at a time


@dataclass
class Row:
    """One row of the adjacency matrix: a target, or a feature being expanded."""

    weight: float  # target weight, or the feature's influence estimate when it was expanded
    target: int = -1  # index into the resolved targets
    active: int = -1  # index into the active features
    site: int = -1  # the feature's site (-1: a logit target, injected at the last position)
    position: int = -1
    index: int = -1


@dataclass
class ActiveFeatures:
    """Every feature active on the prompt, numbered site by site: the "active ids".

    Site ``i``'s features are the ids ``offsets[i]`` to ``offsets[i + 1] - 1``, in the site's own
    order (by position, then index)."""

    offsets: list[int]
    site: Int[Tensor, " n_active"]
    position: Int[Tensor, " n_active"]
    index: Int[Tensor, " n_active"]
    value: Float[Tensor, " n_active"]
    """Activation, in float32."""

    @classmethod
    def of(cls, sites: list[SiteValues]) -> ActiveFeatures:
        """Number the active features of ``sites`` (in the order given)."""
        offsets = [0]
        for s in sites:
            offsets.append(offsets[-1] + s.positions.numel())
        site = (
            torch.cat([torch.full_like(s.positions, i, device="cpu") for i, s in enumerate(sites)])
            if sites
            else torch.zeros(0, dtype=torch.long)
        )
        return cls(  # on the CPU, with the scheduling and the kept edges, wherever the model runs
            offsets=offsets,
            site=site,
            position=torch.cat([s.positions.cpu() for s in sites]),
            index=torch.cat([s.indices.cpu() for s in sites]),
            value=torch.cat([s.activations.cpu() for s in sites]).float(),
        )

    @property
    def count(self) -> int:
        """How many features are active."""
        return self.offsets[-1]


class FeatureTargets(NamedTuple):
    """Where the feature targets sit, by target number (token and direction targets left out)."""

    site: dict[int, int]
    """Target number -> index of its site in the prompt's sites."""
    active: dict[int, int]
    """Target number -> active id, for the feature targets that are active on the prompt."""


def locate_feature_targets(
    targets: list[ResolvedTarget], sites: list[SiteValues], active: ActiveFeatures
) -> FeatureTargets:
    """Check every feature target against the spliced dictionaries and find it among ``active``."""
    found: dict[int, int] = {}
    site_of: dict[int, int] = {}
    for t, target in enumerate(targets):
        if target.feature is None:
            continue
        site_name = target.feature.site
        matches = [i for i, s in enumerate(sites) if site_name in (s.name, s.sae.cfg.hook_name)]
        if not matches:
            raise ValueError(
                f"feature target site {site_name!r} has no spliced dictionary; "
                f"spliced: {[s.name for s in sites]}"
            )
        site = sites[matches[0]]
        if not is_int(target.feature.index) or not 0 <= target.feature.index < site.sae.cfg.d_sae:
            raise ValueError(
                f"feature target index {target.feature.index!r} is outside [0, {site.sae.cfg.d_sae}) "
                f"at {site.name!r}"
            )
        site_of[t] = matches[0]
        hit = ((site.positions == target.feature.position) & (site.indices == target.feature.index)).nonzero()
        if hit.numel():
            found[t] = active.offsets[matches[0]] + int(hit[0, 0])
    return FeatureTargets(site_of, found)


def target_rows(targets: list[ResolvedTarget], feature_targets: FeatureTargets) -> list[Row]:
    """One row per target, in the targets' order."""
    rows = []
    for i, t in enumerate(targets):
        if t.feature is None:
            rows.append(Row(t.weight, target=i))
        else:
            rows.append(
                Row(
                    t.weight,
                    target=i,
                    site=feature_targets.site[i],
                    position=t.feature.position,
                    index=t.feature.index,
                )
            )
    return rows


class RowScheduler:
    """Picks the features to expand, by the influence the computed rows push to them.

    Args:
        active: the prompt's active features.
        already: active ids that must never get a feature row (the active feature targets).
        batch_size: most rows per pass.
        max_feature_nodes: most features to expand (None: every one that reaches a target).
        itemise_all: keep every feature edge itemised even under a budget.
    """

    def __init__(
        self,
        active: ActiveFeatures,
        already: list[int],
        batch_size: int,
        max_feature_nodes: int | None,
        itemise_all: bool = False,
    ) -> None:
        self.active, self.batch, self.budget = active, batch_size, max_feature_nodes
        self.visited = torch.zeros(active.count, dtype=torch.bool)
        self.visited[torch.tensor(already, dtype=torch.long)] = True
        self.score = torch.zeros(active.count, dtype=torch.float64)
        self.expanded = 0  # feature rows handed out so far
        self.pending: list[int] = []  # the current window's features, in position order
        # Under a budget, only features with a row or likely to get one keep itemised edges; the
        # rest go to "other" straight away (memory).
        self.candidates = (
            None
            if max_feature_nodes is None or itemise_all
            else _CANDIDATES_PER_NODE * max(1, max_feature_nodes)
        )

    def expected_rows(self) -> int:
        """Most feature rows this run can compute (for a progress bar)."""
        return self.active.count if self.budget is None else min(self.budget, self.active.count)

    def push_influence(
        self,
        rows: list[Row],
        magnitude: Float[Tensor, "k cols"],
        columns: Int[Tensor, " cols"],
        mass: Float[Tensor, " k"],
    ) -> None:
        """Each row pushes its weight to its feature sources, in proportion to their share of the
        row's total absolute input ``mass``."""
        weights = torch.tensor([r.weight for r in rows], dtype=torch.float64)
        share = torch.where(mass > 0, weights / mass.clamp_min(1e-300), 0.0)
        self.score.index_add_(0, columns, (magnitude * share.float().unsqueeze(1)).sum(0).double())

    def next_feature_rows(self) -> list[Row]:
        """The next batch of features to expand (empty when done): the best unexpanded features
        of one site."""
        if not self.pending:
            self.pending = self._next_window()
        chosen = torch.tensor(self.pending[: self.batch], dtype=torch.long)
        del self.pending[: self.batch]
        if not chosen.numel():
            return []
        a = self.active
        return [
            Row(w, active=i, site=site, position=pos, index=index)
            for i, w, site, pos, index in zip(
                chosen.tolist(), self.score[chosen].tolist(), a.site[chosen].tolist(),
                a.position[chosen].tolist(), a.index[chosen].tolist(),
            )
        ]  # fmt: skip

    def _next_window(self) -> list[int]:
        """Active ids of the next features to expand, marked visited, in position order."""
        room = (
            self.batch
            if self.budget is None
            else min(self.batch * WINDOW_BATCHES, self.budget - self.expanded)
        )
        candidates = (~self.visited) & (self.score > 0)
        if room <= 0 or not bool(candidates.any()):
            return []
        a = self.active
        # one site per pass: the backward then only runs from that site's input (and reads only
        # the sites upstream of it); the site is the one holding the best candidate
        best = int(torch.where(candidates, self.score, -1.0).argmax())
        candidates &= a.site == a.site[best]
        count = min(room, int(candidates.sum()))
        if self.budget is None:  # every candidate gets a row: take the earliest positions, so the
            # pass's gradient stops early (active ids run in position order within a site)
            chosen = candidates.nonzero().squeeze(-1)[:count]
        else:  # the most influential, cut into batches in position order (ids are in position order)
            chosen = torch.where(candidates, self.score, -1.0).topk(count).indices.sort().values
        self.visited[chosen] = True
        self.expanded += len(chosen)
        return chosen.tolist()

    def itemised(self) -> Bool[Tensor, " n_active"] | None:
        """Features whose edges are kept one by one (None: all of them): under a budget, those
        with a row and the unexpanded ones most likely to get one (the highest influence so far)."""
        if self.candidates is None:
            return None
        keep = self.visited.clone()
        unvisited = torch.where(self.visited, -1.0, self.score)
        count = min(self.candidates, int((unvisited > 0).sum()))
        if count:
            keep[unvisited.topk(count).indices] = True
        return keep
