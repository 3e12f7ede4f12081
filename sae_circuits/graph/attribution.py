"""``sc.attribute``: the attribution graph of a prompt, by batched backward passes.

One forward pass of the frozen replacement model (``replacement.py``) over ``batch_size`` copies
of the prompt; then each backward pass injects ``batch_size`` different target vectors (a logit
direction at the last position, or a feature's encoder direction at its position) and reads the
gradient at every site output and at the embedding. Dotting those gradients with each active
feature's decoded vector, each error vector and each token embedding gives ``batch_size`` rows of
the adjacency matrix at once.

Which features get a row: all that can reach the targets (every active feature with a nonzero
path), or, with ``max_feature_nodes``, the most influential ones, chosen greedily by the influence
pushed to them from the rows computed so far. A feature without a row is not dropped: its direct
effects are folded into an explicit "other" node of its site, so every row keeps its full input.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from sae_circuits._model import check_model
from sae_circuits.graph.attribution_graph import AttributionGraph
from sae_circuits.graph.graph import Edges, NodeKind
from sae_circuits.graph.replacement import (
    MLP_NONLINEARITY,
    PromptValues,
    block_of,
    capture,
    frozen_pass,
    stage_of,
)
from sae_circuits.graph.targets import (
    Feature,
    ResolvedTarget,
    TargetSpec,
    resolve_targets,
)
from sae_circuits.positions import is_int
from sae_circuits.splice import saes_of

_CANDIDATES_PER_NODE = 8  # under a budget, itemise edges to the top 8 x budget unexpanded features


def attribute(
    model: Any,
    prompt: str | Sequence[int] | Int[Tensor, " pos"],
    targets: TargetSpec = None,
    *,
    batch_size: int = 64,
    max_feature_nodes: int | None = None,
    edge_tolerance: float = 0.0,
    prepend_bos: bool | None = None,
    progress: bool = True,
) -> AttributionGraph:
    """The attribution graph of ``prompt`` through the dictionaries spliced into ``model``.

    Args:
        model: a ``HookedTransformer`` with SAEs and/or transcoders spliced (:func:`sc.splice`).
        prompt: text, or token ids.
        targets: what to explain. ``None``: the most likely next tokens until their probability
            adds up to 0.95 (at most 10), weighted by probability. Or tokens (strings that are one
            token, or ids), a :class:`LogitDirection` (e.g. a logit difference), one or more
            :class:`Feature` (their pre-activations are explained), or a list mixing them.
        batch_size: target rows per backward pass (copies of the prompt in the forward pass).
        max_feature_nodes: most features to expand (None: every feature that reaches a target).
            The rest are folded into one "other" node per site.
        edge_tolerance: per row, feature edges smaller than this share of the row's feature mass
            (the smallest ones, adding up to at most ``edge_tolerance``) are folded into their
            site's "other" node: memory for long prompts, nothing lost. 0 keeps every edge.
        prepend_bos: passed to ``model.to_tokens`` for text prompts (None: the model's default).
        progress: show a progress bar.

    Edges are direct effects in the frozen replacement model (attention patterns and
    normalisation scales frozen): exact wherever no bare MLP lies between source and target,
    first-order otherwise (:meth:`AttributionGraph.first_order_edges`).

    >>> sc.splice(model, sc.zoo.load_saes("tiny", kind="transcoder"))   # doctest: +SKIP
    >>> g = sc.attribute(model, "def foo(x):\\n    return")               # doctest: +SKIP
    """
    check_model(model)
    if not saes_of(model):
        raise ValueError("no SAE or transcoder is spliced into the model; splice some first (sc.splice)")
    _check_settings(batch_size, max_feature_nodes, edge_tolerance)
    tokens = _tokens(model, prompt, prepend_bos)
    with _input_gradients_only(model):
        return _Attribution(
            model, capture(model, tokens), targets, batch_size, max_feature_nodes, edge_tolerance, progress
        ).run(prompt if isinstance(prompt, str) else None)


@contextmanager
def _input_gradients_only(model: Any) -> Iterator[None]:
    """Eval mode, gradients on, but none for the weights: autograd then keeps only what the
    input gradients need. Everything is restored on the way out."""
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        model.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)


class DirectEffects(NamedTuple):
    """The attribution rows of some feature targets: every active feature's direct effect on each.

    ``weight[k]`` is the effect of active feature ``source[k]`` (its site, position and index are
    ``active_site/active_pos/active_index[source[k]]``) on target ``row[k]``; ``mass[r]`` is row
    ``r``'s total absolute input (tokens, errors and features), to turn edges into shares."""

    row: Int[Tensor, " n_edges"]
    source: Int[Tensor, " n_edges"]
    weight: Float[Tensor, " n_edges"]
    mass: Float[Tensor, " n_rows"]
    active_site: Int[Tensor, " n_active"]
    active_pos: Int[Tensor, " n_active"]
    active_index: Int[Tensor, " n_active"]
    sites: list[str]


def direct_effects(
    model: Any, tokens: Int[Tensor, " pos"], targets: Sequence[Feature], batch_size: int = 64
) -> DirectEffects:
    """Direct effects of every active feature on each of ``targets`` (features of the spliced
    dictionaries), in the frozen replacement model of ``tokens``: the target rows of the
    attribution graph, every edge kept one by one (no feature is expanded).

    >>> rows = direct_effects(model, tokens, [sc.Feature("blocks.2.hook_resid_post", 9, 41)])  # doctest: +SKIP
    """
    check_model(model)
    if not saes_of(model):
        raise ValueError("no SAE or transcoder is spliced into the model; splice some first (sc.splice)")
    if not targets:
        raise ValueError("direct_effects needs at least one target feature")
    _check_settings(batch_size, None, 0.0)
    with _input_gradients_only(model):
        run = _Attribution(model, capture(model, tokens), list(targets), batch_size, 0, 0.0, False)
        run.candidates = None  # rows are few: keep every edge itemised
        run.pass_ = frozen_pass(model, run.values, min(batch_size, len(run.targets)))
        rows = run.target_rows()
        for start in range(0, len(rows), batch_size):
            run._compute(rows[start : start + batch_size])
        del run.pass_
    row, source, weight = _cat(run.feature_edges)
    return DirectEffects(
        row, source, weight, torch.cat(run.masses), run.active_site, run.active_pos, run.active_index,
        [s.name for s in run.values.sites],
    )  # fmt: skip


def _check_settings(batch_size: Any, max_feature_nodes: Any, edge_tolerance: Any) -> None:
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if max_feature_nodes is not None and (not is_int(max_feature_nodes) or max_feature_nodes < 0):
        raise ValueError(f"max_feature_nodes={max_feature_nodes!r} must be None or an integer >= 0")
    if (
        isinstance(edge_tolerance, bool)
        or not isinstance(edge_tolerance, (int, float))
        or not 0 <= edge_tolerance < 1
    ):
        raise ValueError(f"edge_tolerance={edge_tolerance!r} must be a number in [0, 1)")


def _tokens(model: Any, prompt: Any, prepend_bos: bool | None) -> Tensor:
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("the prompt is empty")
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("the model has no tokenizer: pass the prompt as token ids")
        # truncate=False: a prompt longer than the context must fail below, not be silently cut.
        tokens = model.to_tokens(prompt, prepend_bos=prepend_bos, truncate=False)[0]
    else:
        tokens = torch.as_tensor(prompt)
        if tokens.ndim == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tokens.ndim != 1 or tokens.is_floating_point():
            raise ValueError(f"prompt tokens must be a 1-D sequence of ids, got shape {tuple(tokens.shape)}")
        bad = tokens[(tokens < 0) | (tokens >= model.cfg.d_vocab)]
        if bad.numel():
            raise ValueError(
                f"prompt token id {int(bad[0])} is not in the vocabulary [0, {model.cfg.d_vocab})"
            )
    if tokens.numel() == 0:
        raise ValueError("the prompt is empty")
    if tokens.numel() > model.cfg.n_ctx:
        raise ValueError(
            f"the prompt has {tokens.numel()} tokens, more than the model's context of {model.cfg.n_ctx}"
        )
    return tokens.to(next(model.parameters()).device)


@dataclass
class _Row:
    """One row of the adjacency matrix: a target, or a feature being expanded."""

    weight: float  # target weight, or the feature's influence estimate when it was expanded
    target: int = -1  # index into the resolved targets
    active: int = -1  # index into the active features
    site: int = -1  # the feature's site (-1: a logit target, injected at the last position)
    position: int = -1
    index: int = -1


class _Attribution:
    """The state of one attribution run (active features, rows computed, edges kept)."""

    def __init__(
        self,
        model: Any,
        values: PromptValues,
        targets: TargetSpec,
        batch_size: int,
        max_feature_nodes: int | None,
        edge_tolerance: float,
        progress: bool,
    ) -> None:
        self.model, self.values, self.batch = model, values, batch_size
        self.budget, self.tolerance, self.progress = max_feature_nodes, edge_tolerance, progress
        self.n = values.tokens.numel()
        self.targets = resolve_targets(targets, values.probs, model, self.n)
        sites = values.sites
        # active features, numbered site by site
        self.offsets = [0]
        for s in sites:
            self.offsets.append(self.offsets[-1] + s.positions.numel())
        self.n_active = self.offsets[-1]
        self.active_site = (
            torch.cat([torch.full_like(s.positions, i) for i, s in enumerate(sites)])
            if sites
            else torch.zeros(0, dtype=torch.long)
        )
        self.active_pos = torch.cat([s.positions for s in sites])
        self.active_index = torch.cat([s.indices for s in sites])
        self.active_value = torch.cat([s.activations for s in sites]).float()
        self.target_features = self._check_feature_targets()
        self.rows: list[_Row] = []
        self.visited = torch.zeros(self.n_active, dtype=torch.bool)
        self.score = torch.zeros(self.n_active, dtype=torch.float64)
        for active in self.target_features.values():
            self.visited[active] = True
        # edges, kept per batch and concatenated at the end: (row, column, weight)
        self.token_edges: list[tuple[Tensor, Tensor, Tensor]] = []
        self.error_edges: list[tuple[Tensor, Tensor, Tensor]] = []  # column = site * n + pos
        self.feature_edges: list[tuple[Tensor, Tensor, Tensor]] = []  # column = active id
        self.folded: list[Tensor] = []  # per batch: (rows, sites) sums folded into "other" nodes
        self.masses: list[Tensor] = []  # per batch: each row's total |input| (tokens, errors, features)
        # Under a budget, only features with a row or likely to get one keep itemised edges; the
        # rest go to "other" straight away (memory), and ``missing`` counts what that cost features
        # that got a row later.
        self.candidates = (
            None if max_feature_nodes is None else _CANDIDATES_PER_NODE * max(1, max_feature_nodes)
        )
        self.missing = torch.zeros(self.n_active, dtype=torch.float64)

    def _check_feature_targets(self) -> dict[int, int]:
        """Target number -> active id for feature targets that are active (checked first); also
        fills ``target_site``, target number -> site of every feature target."""
        found: dict[int, int] = {}
        self.target_site: dict[int, int] = {}
        for t, target in enumerate(self.targets):
            if target.feature is None:
                continue
            site_name = target.feature.site
            matches = [
                i for i, s in enumerate(self.values.sites) if site_name in (s.name, s.sae.cfg.hook_name)
            ]
            if not matches:
                raise ValueError(
                    f"feature target site {site_name!r} has no spliced dictionary; spliced: {[s.name for s in self.values.sites]}"
                )
            site = self.values.sites[matches[0]]
            if not is_int(target.feature.index) or not 0 <= target.feature.index < site.sae.cfg.d_sae:
                raise ValueError(
                    f"feature target index {target.feature.index!r} is outside [0, {site.sae.cfg.d_sae}) at {site.name!r}"
                )
            self.target_site[t] = matches[0]
            hit = (
                (site.positions == target.feature.position) & (site.indices == target.feature.index)
            ).nonzero()
            if hit.numel():
                found[t] = self.offsets[matches[0]] + int(hit[0, 0])
        return found

    # ------------------------------------------------------------------ the loop

    def run(self, prompt: str | None) -> AttributionGraph:
        expected = len(self.targets) + (
            self.n_active if self.budget is None else min(self.budget, self.n_active)
        )
        bar = tqdm(
            total=expected, desc="attribution rows", unit="row", disable=not self.progress, leave=False
        )
        self.pass_ = frozen_pass(self.model, self.values, self.batch)
        try:
            targets = self.target_rows()
            for start in range(0, len(targets), self.batch):
                self._compute(targets[start : start + self.batch])
                bar.update(len(targets[start : start + self.batch]))
            while pending := self._next_features():
                self._compute(pending)
                bar.update(len(pending))
            bar.total = bar.n  # features that cannot reach a target never get a row
            bar.refresh()
        finally:
            bar.close()
            del self.pass_  # frees the autograd graph
        return self._graph(prompt)

    def target_rows(self) -> list[_Row]:
        rows = []
        for i, t in enumerate(self.targets):
            if t.feature is None:
                rows.append(_Row(t.weight, target=i))
            else:
                rows.append(
                    _Row(
                        t.weight,
                        target=i,
                        site=self.target_site[i],
                        position=t.feature.position,
                        index=t.feature.index,
                    )
                )
        return rows

    def _next_features(self) -> list[_Row]:
        expanded = len(self.rows) - len(self.targets)
        room = self.batch if self.budget is None else min(self.batch, self.budget - expanded)
        candidates = (~self.visited) & (self.score > 0)
        if room <= 0 or not bool(candidates.any()):
            return []
        # one site per pass: the backward then only runs from that site's input (and reads only
        # the sites upstream of it); the site is the one holding the best candidate
        best = int(torch.where(candidates, self.score, -1.0).argmax())
        candidates &= self.active_site == self.active_site[best]
        count = min(room, int(candidates.sum()))
        if self.budget is None:  # every candidate gets a row: take the earliest positions, so the
            # pass's gradient stops early (active ids run in position order within a site)
            chosen = candidates.nonzero().squeeze(-1)[:count]
        else:
            chosen = torch.where(candidates, self.score, -1.0).topk(count).indices
        self.visited[chosen] = True
        return [
            _Row(w, active=a, site=site, position=pos, index=index)
            for a, w, site, pos, index in zip(
                chosen.tolist(), self.score[chosen].tolist(), self.active_site[chosen].tolist(),
                self.active_pos[chosen].tolist(), self.active_index[chosen].tolist(),
            )
        ]  # fmt: skip

    def _compute(self, rows: list[_Row]) -> None:
        """One backward pass for up to ``batch`` rows; keeps their edges and pushes influence.

        Only the sites the gradient reaches are read: their active features are the columns
        (global active ids ``cols``) of this pass's dense ``(rows, cols)`` block."""
        first = len(self.rows)
        self.rows.extend(rows)
        grads = self._backward(rows)
        k = len(rows)
        h = 1 + max(
            self.n - 1 if row.site < 0 else row.position for row in rows
        )  # no gradient reaches later positions
        token_w = torch.zeros(k, self.n)
        if grads[0] is not None:  # else no path from the embedding to these rows
            token_w[:, :h] = (grads[0][:k, :h] * self.values.embedding[:h].to(grads[0].dtype)).sum(-1).float()
        site_grads = {i: g for i, g in enumerate(grads[1:]) if g is not None}
        live = sorted(site_grads)
        error_w: list[Tensor] = []
        feature_w: list[Tensor] = []
        error_col_list: list[Tensor] = []
        col_list: list[Tensor] = []
        for i in live:
            site = self.values.sites[i]
            g = site_grads[i][:k, :h].reshape(k, h, -1).to(site.decoded.dtype)
            error_w.append((g * site.error[:h]).sum(-1).float())  # (an einsum here would be a slow bmm)
            error_col_list.append(torch.arange(i * self.n, i * self.n + h))
            feature_w.append(site.feature_dots(g).float())
            col_list.append(torch.arange(self.offsets[i], self.offsets[i] + feature_w[-1].shape[1]))
        errors = torch.cat(error_w, dim=1) if live else torch.zeros(k, 0)  # (k, live sites * h)
        error_cols = torch.cat(error_col_list) if live else torch.zeros(0, dtype=torch.long)
        features = torch.cat(feature_w, dim=1) if live else torch.zeros(k, 0)  # (k, cols)
        cols = torch.cat(col_list) if live else torch.zeros(0, dtype=torch.long)
        row_ids = torch.arange(first, first + k)
        # influence pushed to the sources: each row's normalised |weights| times its weight
        magnitude = features.abs()
        mass = token_w.abs().sum(1).double() + errors.abs().sum(1).double() + magnitude.sum(1).double()
        self.masses.append(mass)
        weights = torch.tensor([r.weight for r in rows], dtype=torch.float64)
        share = torch.where(mass > 0, weights / mass.clamp_min(1e-300), 0.0)
        self.score.index_add_(0, cols, (magnitude * share.float().unsqueeze(1)).sum(0).double())
        folded = torch.zeros(k, len(self.values.sites), dtype=torch.float64)
        if self.tolerance > 0 and cols.numel():
            features = self._fold(features, cols, self._small_edges(magnitude), folded)
        if self.candidates is not None and cols.numel():
            features = self._fold(
                features, cols, ~self._candidates()[cols].unsqueeze(0), folded, count_missing=True
            )
        self.folded.append(folded)
        for store, dense, columns in (
            (self.token_edges, token_w, None), (self.error_edges, errors, error_cols), (self.feature_edges, features, cols)
        ):  # fmt: skip
            r, c = dense.nonzero(as_tuple=True)
            store.append((row_ids[r], c if columns is None else columns[c], dense[r, c]))

    def _backward(self, rows: list[_Row]) -> list[Tensor | None]:
        """Inject every row's target vector in its own copy of the prompt; one backward pass."""
        p = self.pass_
        seeds: dict[str, Tensor] = {}
        final_seed = None
        by_site: dict[int, list[tuple[int, int, int]]] = {}
        for b, row in enumerate(rows):
            if row.site < 0:  # a logit target
                if final_seed is None:
                    final_seed = torch.zeros_like(p.final)
                final_seed[b, -1] = self._logit_vector(self.targets[row.target]).to(p.final.dtype)
            else:
                by_site.setdefault(row.site, []).append((b, row.position, row.index))
        for site_i, entries in by_site.items():
            site = self.values.sites[site_i]
            x = p.inputs[site.name]
            copies, positions, indices = (torch.tensor(column) for column in zip(*entries))
            seed = torch.zeros_like(x)
            seed[copies, positions] = (
                site.encoder_directions(positions, indices).reshape(-1, *x.shape[2:]).to(x.dtype)
            )
            seeds[site.name] = seed
        outputs = [p.inputs[name] for name in seeds] + ([p.final] if final_seed is not None else [])
        grad_outputs = list(seeds.values()) + ([final_seed] if final_seed is not None else [])
        leaves = [p.embedding] + [p.outputs[s.name] for s in self.values.sites]
        live = [i for i, o in enumerate(outputs) if o.requires_grad]
        if not live:
            return [None] * len(leaves)
        return list(
            torch.autograd.grad(
                [outputs[i] for i in live],
                leaves,
                [grad_outputs[i] for i in live],
                retain_graph=True,
                allow_unused=True,
            )
        )

    def _logit_vector(self, target: ResolvedTarget) -> Tensor:
        """``W_U`` times the (vocabulary-demeaned) logit direction of a token or direction target."""
        w_u = self.model.W_U  # (d_model, d_vocab)
        if target.kind == "token":
            return w_u[:, target.token] - w_u.mean(dim=1)
        assert target.direction is not None
        direction = target.direction.to(w_u)
        return w_u @ direction - w_u.mean(dim=1) * direction.sum()

    def _small_edges(self, magnitude: Tensor) -> Tensor:
        """Each row's smallest feature edges holding at most ``tolerance`` of its feature mass."""
        ordered, order = magnitude.sort(dim=1)  # ascending: the tail first
        tail = ordered.double().cumsum(1) <= self.tolerance * magnitude.double().sum(1, keepdim=True)
        return torch.zeros_like(tail).scatter_(1, order, tail)

    def _candidates(self) -> Tensor:
        """Features whose edges are kept one by one under a budget: those with a row, and the
        unexpanded ones most likely to get one (the highest influence estimates so far)."""
        assert self.candidates is not None  # only called under a budget
        keep = self.visited.clone()
        unvisited = torch.where(self.visited, -1.0, self.score)
        count = min(self.candidates, int((unvisited > 0).sum()))
        if count:
            keep[unvisited.topk(count).indices] = True
        return keep

    def _fold(
        self, features: Tensor, cols: Tensor, fold: Tensor, sums: Tensor, count_missing: bool = False
    ) -> Tensor:
        """Move the ``fold`` entries of ``features`` (columns ``cols``) into per-(row, site) sums
        (the "other" nodes)."""
        folded = torch.where(fold, features, 0.0)
        sums.index_add_(1, self.active_site[cols], folded.double())
        if count_missing:
            self.missing.index_add_(0, cols, folded.abs().sum(0).double())
        return torch.where(fold, 0.0, features)

    # ------------------------------------------------------------------ assembly

    def _graph(self, prompt: str | None) -> AttributionGraph:
        v, sites, n = self.values, self.values.sites, self.n
        n_sites = len(sites)
        n_layers = self.model.cfg.n_layers
        # expanded features in reading order: by stage, then position, then index
        expanded = torch.tensor([r.active for r in self.rows if r.active >= 0], dtype=torch.long)
        site_stage = torch.tensor([site.stage for site in sites], dtype=torch.long)
        width = int(self.active_index.max()) + 1 if self.n_active else 1
        key = (
            site_stage[self.active_site[expanded]] * n + self.active_pos[expanded]
        ) * width + self.active_index[expanded]
        expanded = expanded[key.argsort()]
        columns = _Columns()
        # tokens
        token_ids = v.tokens.cpu()
        strings = [
            self.model.to_string(token_ids[i : i + 1]) if self.model.tokenizer is not None else str(int(t))
            for i, t in enumerate(token_ids)
        ]
        columns.add(
            NodeKind.TOKEN,
            site=-1,
            layer=-1,
            stage=0,
            position=torch.arange(n),
            index=token_ids,
            labels=strings,
        )
        # features with rows
        node_of_active = torch.full((self.n_active,), -1, dtype=torch.long)
        node_of_active[expanded] = torch.arange(expanded.numel()) + columns.size
        f_site = self.active_site[expanded]
        short = [_short(site.name) for site in sites]
        columns.add(
            NodeKind.FEATURE, site=f_site,
            layer=torch.tensor([block_of(site.name) for site in sites], dtype=torch.long)[f_site],
            stage=site_stage[f_site], position=self.active_pos[expanded],
            index=self.active_index[expanded], activation=self.active_value[expanded],
            labels=[f"{short[s]} #{i}" for s, i in zip(f_site.tolist(), self.active_index[expanded].tolist())],
        )  # fmt: skip
        # errors: site-major
        error_base = columns.size
        for i, s in enumerate(sites):
            columns.add(
                NodeKind.ERROR,
                site=i,
                layer=block_of(s.name),
                stage=s.stage,
                position=torch.arange(n),
                index=-1,
                labels=[f"{_short(s.name)} error"] * n,
            )
        # edges, row -> node
        row_node = torch.empty(len(self.rows), dtype=torch.long)
        target_rows = [(r, row) for r, row in enumerate(self.rows) if row.target >= 0]
        feature_rows = torch.tensor(
            [r for r, row in enumerate(self.rows) if row.active >= 0], dtype=torch.long
        )
        if feature_rows.numel():
            row_node[feature_rows] = node_of_active[
                torch.tensor([self.rows[r].active for r in feature_rows.tolist()])
            ]
        tok = _cat(self.token_edges)
        err = _cat(self.error_edges)
        feat = _cat(self.feature_edges)
        folded = torch.cat(self.folded) if self.folded else torch.zeros(0, n_sites, dtype=torch.float64)
        # feature edges from features without a row (and the tolerance's tail) -> "other" nodes
        has_node = node_of_active >= 0
        has_node[list(self.target_features.values())] = True
        unexpanded = (~has_node[feat[1]]).nonzero().squeeze(-1)
        other_sum = folded.clone()
        if unexpanded.numel():
            other_sum.index_put_(
                (feat[0][unexpanded], self.active_site[feat[1][unexpanded]]),
                feat[2][unexpanded].double(),
                accumulate=True,
            )
        other_rows, other_sites = (other_sum != 0).nonzero(as_tuple=True)
        other_node = torch.full((n_sites,), -1, dtype=torch.long)
        for i in sorted(set(other_sites.tolist())):
            other_node[i] = columns.size
            count = int(((self.active_site == i) & (node_of_active < 0)).sum())
            columns.add(
                NodeKind.OTHER,
                site=i,
                layer=block_of(sites[i].name),
                stage=sites[i].stage,
                position=-1,
                index=-1,
                labels=[f"{_short(sites[i].name)} other ({count} features without a row)"],
            )
        # targets
        target_node = {}
        for t, target in enumerate(self.targets):
            target_node[t] = columns.size
            if target.feature is not None:
                si = self.target_site[t]
                active = self.target_features.get(t)
                columns.add(
                    NodeKind.TARGET,
                    site=si,
                    layer=block_of(sites[si].name),
                    stage=sites[si].stage,
                    position=target.feature.position,
                    index=target.feature.index,
                    activation=float(self.active_value[active]) if active is not None else 0.0,
                    labels=[target.label],
                    weight=target.weight,
                )
                if active is not None:
                    node_of_active[active] = target_node[t]
            else:
                columns.add(
                    NodeKind.TARGET,
                    site=-1,
                    layer=n_layers,
                    stage=1 + 12 * n_layers,
                    position=n - 1,
                    index=target.token,
                    activation=target.probability,
                    labels=[target.label],
                    weight=target.weight,
                )
        for r, row in target_rows:
            row_node[r] = target_node[row.target]
        # feature sources that are feature targets map to the target node; recompute after targets
        feat_source = node_of_active[feat[1]]
        if unexpanded.numel():
            keep = feat_source >= 0
            feat, feat_source = (feat[0][keep], feat[1], feat[2][keep]), feat_source[keep]
        edges = Edges(
            target=torch.cat([row_node[tok[0]], row_node[err[0]], row_node[feat[0]], row_node[other_rows]]),
            source=torch.cat([tok[1], error_base + err[1], feat_source, other_node[other_sites]]),
            weight=torch.cat([tok[2], err[2], feat[2], other_sum[other_rows, other_sites].float()]),
        )
        late = float(self.missing[node_of_active[: self.n_active] >= 0].sum()) if self.n_active else 0.0
        input_stages = [s.input_stage for s in sites]
        covered = {stage_of(s.name) for s in sites}
        first_order = [
            1 + 12 * layer + MLP_NONLINEARITY
            for layer in range(n_layers)
            if not self.model.cfg.attn_only and not {1 + 12 * layer + 9, 1 + 12 * layer + 10} & covered
        ]
        metadata = {
            "model": str(getattr(self.model.cfg, "model_name", "")),
            "n_layers": n_layers,
            "batch_size": self.batch,
            "max_feature_nodes": self.budget,
            "edge_tolerance": self.tolerance,
            "n_active_features": self.n_active,
            "n_expanded_features": int(expanded.numel()),
            # share of the expanded features' outgoing mass that sits in "other" because they were
            # not yet candidates when some rows were computed (0 without a budget)
            "late_share": late / (late + float(feat[2].abs().double().sum())) if late > 0 else 0.0,
            "site_input_stages": input_stages,
            "first_order_stages": first_order,
        }
        return columns.build(
            prompt if prompt is not None else "".join(strings),
            token_ids.tolist(),
            strings,
            [s.name for s in sites],
            edges,
            metadata,
        )


def _cat(parts: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0)
    return (
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]),
    )


def _short(site: str) -> str:
    """``blocks.2.hook_mlp_out`` -> ``L2 mlp_out``."""
    rest = site.split(".", 2)[-1] if site.startswith("blocks.") else site
    return f"L{block_of(site)} {rest.replace('hook_', '')}" if block_of(site) >= 0 else rest


class _Columns:
    """Builds the node table column by column (scalars broadcast to a group's length)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {
            k: [] for k in ("kind", "site", "layer", "stage", "position", "index", "activation", "weight")
        }
        self.labels: list[str] = []
        self.size = 0

    def add(
        self, kind: NodeKind, *, labels: list[str], activation: Any = 0.0, weight: float = 0.0, **ints: Any
    ) -> None:
        m = len(labels)
        if m == 0:
            return
        for name, value in ints.items():
            self.parts[name].append(torch.as_tensor(value, dtype=torch.long).expand(m).clone())
        self.parts["kind"].append(torch.full((m,), int(kind), dtype=torch.long))
        self.parts["activation"].append(torch.as_tensor(activation, dtype=torch.float32).expand(m).clone())
        self.parts["weight"].append(torch.full((m,), weight, dtype=torch.float64))
        self.labels.extend(labels)
        self.size += m

    def build(
        self,
        prompt: str,
        tokens: list[int],
        strings: list[str],
        sites: list[str],
        edges: Edges,
        metadata: dict[str, Any],
    ) -> AttributionGraph:
        col = {k: torch.cat(v) for k, v in self.parts.items()}
        return AttributionGraph(
            prompt=prompt,
            tokens=tokens,
            token_strings=strings,
            sites=sites,
            kind=col["kind"],
            site=col["site"],
            layer=col["layer"],
            stage=col["stage"],
            position=col["position"],
            index=col["index"],
            activation=col["activation"],
            labels=self.labels,
            target_weight=col["weight"],
            edges=edges,
            metadata=metadata,
        )
