"""``sc.attribute``: the attribution graph of a prompt, by batched backward passes.

Edges are direct effects in the frozen replacement model of the prompt (``replacement.py``):
attention patterns and normalisation scales frozen, every dictionary's output a constant (its
features' decoded vectors plus its error). That model is linear in its leaves, so one forward
pass over one copy of the prompt serves every row: the graph's rows are computed ``batch_size``
at a time, each batch one batched vector-Jacobian product (``passes.py``), over the prefix of
the prompt that its latest row needs.

The algorithm, one function per step, each step logged (``logging``, INFO) with its time:

1. Capture (:func:`_capture`): run the spliced model once; keep each site's active features,
   their decoded vectors and its error, and the attention patterns and normalisation scales
   (``replacement.capture``). Resolve the targets and number the active features (``rows.py``).
2. Frozen forward (:func:`_frozen_forward`): run the frozen replacement model forward once over
   the prompt, keeping the autograd graph (``replacement.frozen_pass``); shorter prefixes get
   their own pass when a batch first needs one (``passes.FrozenPasses``, at most 8).
3. Target rows (:func:`_compute_target_rows`): per batch of targets, one backward pass
   (``passes.py``): a gradient dotted with each token embedding, error vector and active
   feature's decoded vector gives the batch's edges. Edges are kept (``edge_store.py``) and each
   row pushes influence to its feature sources (``rows.RowScheduler``).
4. Feature rows (:func:`_expand_features`): the same for features, the most influential first,
   ``batch_size`` at a time from one site, until no unexpanded feature has any influence or
   ``max_feature_nodes`` have a row. A feature without a row is not dropped: its edges are
   folded into an explicit "other" node of its site, so every row keeps its full input.
5. Graph (:func:`_assemble`): lay out the nodes by kind and map every kept edge onto them
   (``build.py``).

:func:`direct_effects` runs steps 1 to 3 only, for feature targets, and returns the edges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from sae_circuits._model import check_model
from sae_circuits._tokenize import token_row
from sae_circuits.graph.attribution_graph import AttributionGraph
from sae_circuits.graph.build import AttributionResult, build_graph
from sae_circuits.graph.edge_store import EdgeStore
from sae_circuits.graph.memory import auto_batch_size
from sae_circuits.graph.passes import FrozenPasses, edges_from_gradients, row_gradients
from sae_circuits.graph.replacement import PromptValues, capture
from sae_circuits.graph.rows import (
    ActiveFeatures,
    FeatureTargets,
    Row,
    RowScheduler,
    locate_feature_targets,
    target_rows,
)
from sae_circuits.graph.targets import Feature, ResolvedTarget, TargetSpec, resolve_targets
from sae_circuits.positions import is_int
from sae_circuits.splice import saes_of

logger = logging.getLogger(__name__)

DEFAULT_MAX_FEATURE_NODES = 7500
"""``sc.attribute``'s default node budget: circuit-tracer's default ``max_feature_nodes``."""


def attribute(
    model: Any,
    prompt: str | Sequence[int] | Int[Tensor, " pos"],
    targets: TargetSpec = None,
    *,
    batch_size: int | Literal["auto"] = 64,
    max_feature_nodes: int | None = DEFAULT_MAX_FEATURE_NODES,
    edge_tolerance: float = 0.0,
    prepend_bos: bool | None = None,
    progress: bool = True,
    zero_bos: bool = False,
    max_edges_per_row: int | None = None,
) -> AttributionGraph:
    """The attribution graph of ``prompt`` through the dictionaries spliced into ``model``.

    Args:
        model: a ``HookedTransformer`` with SAEs and/or transcoders spliced (:func:`sc.splice`).
        prompt: text, or token ids.
        targets: what to explain. ``None``: the most likely next tokens until their probability
            adds up to 0.95 (at most 10), weighted by probability. Or tokens (strings that are one
            token, or ids), a :class:`LogitDirection` (e.g. a logit difference), one or more
            :class:`Feature` (their pre-activations are explained), or a list mixing them.
        batch_size: rows per backward pass (each batch is one batched vector-Jacobian product;
            its memory grows as ``batch_size x positions x d_model x (sites + layers)``), or
            ``"auto"``: as many as fit in a quarter of the device's free memory
            (:mod:`sae_circuits.graph.memory`; under a node budget the graph then depends on the
            machine, so pass an integer where it must be reproducible).
        max_feature_nodes: most features to expand, the most influential first (default 7,500,
            circuit-tracer's default; None: every feature that reaches a target; 0: targets
            only). The rest are folded into one "other" node per site: nothing is dropped.
        edge_tolerance: per row, feature edges smaller than this share of the row's feature mass
            (the smallest ones, adding up to at most ``edge_tolerance``) are folded into their
            site's "other" node: memory for long prompts, nothing lost. 0 keeps every edge.
        prepend_bos: passed to ``model.to_tokens`` for text prompts (None: the model's default).
        progress: show a progress bar.
        zero_bos: no feature node at position 0 and no edge from its error nodes (its features and
            errors are zeroed, as circuit-tracer does by default for the BOS token); its token
            node stays. Default False: position 0 is like any other.
        max_edges_per_row: most feature edges kept one by one per row, the largest first; the
            rest are folded into their site's "other" node (None: no limit). Bounds memory on
            long prompts: kept edges cost 12 bytes each while the graph is built.

    Runs on the model's device, in its dtype; gradients are dotted with the nodes' vectors in
    float32 and the edges kept on the CPU. Timings per kind of work ("where the time went") are
    logged at INFO.

    Edges are direct effects in the frozen replacement model (attention patterns and
    normalisation scales frozen): exact wherever no bare MLP lies between source and target,
    first-order otherwise (:meth:`AttributionGraph.first_order_edges`).

    >>> with sc.spliced(model, sc.zoo.load_saes("tiny", kind="transcoder")):
    ...     g = sc.attribute(model, "<p>hi</p>", max_feature_nodes=10)
    >>> g
    AttributionGraph('<p>hi</p>': 7 token, 10 feature, 28 error, ... target, ... other; ... edges)
    >>> g.token_strings
    ['<', 'p', '>', 'hi', '</', 'p', '>']
    """
    check_model(model)
    if not saes_of(model):
        raise ValueError("no SAE or transcoder is spliced into the model; splice some first (sc.splice)")
    _check_settings(batch_size, max_feature_nodes, edge_tolerance)
    if not isinstance(zero_bos, bool):
        raise ValueError(f"zero_bos={zero_bos!r} must be True or False")
    if max_edges_per_row is not None and (not is_int(max_edges_per_row) or max_edges_per_row < 1):
        raise ValueError(f"max_edges_per_row={max_edges_per_row!r} must be None or an integer >= 1")
    tokens = _tokens(model, prompt, prepend_bos)
    with _input_gradients_only(model):
        run = _capture(
            model, tokens, targets, batch_size, max_feature_nodes, edge_tolerance,
            zero_bos=zero_bos, max_edges_per_row=max_edges_per_row,
        )  # fmt: skip
        bar = tqdm(
            total=len(run.targets) + run.scheduler.expected_rows(),
            desc="attribution rows", unit="row", disable=not progress, leave=False,
        )  # fmt: skip
        try:
            _frozen_forward(run)
            _compute_target_rows(run, bar)
            _expand_features(run, bar)
            bar.total = bar.n  # features that cannot reach a target never get a row
            bar.refresh()
        finally:
            bar.close()
            run.release()
        graph = _assemble(run, prompt if isinstance(prompt, str) else None)
        logger.info("where the time went: %s", run.clock.summary())
        return graph


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

    >>> targets = [sc.Feature("blocks.2.hook_mlp_out", -1, 0), sc.Feature("blocks.3.hook_mlp_out", -1, 5)]
    >>> with sc.spliced(model, transcoders):
    ...     rows = direct_effects(model, tokens[0, :8], targets)
    >>> rows.mass.shape, rows.row.unique().tolist()
    (torch.Size([2]), [0, 1])
    >>> rows.sites
    ['blocks.0.hook_mlp_out', 'blocks.1.hook_mlp_out', 'blocks.2.hook_mlp_out', 'blocks.3.hook_mlp_out']
    """
    check_model(model)
    if not saes_of(model):
        raise ValueError("no SAE or transcoder is spliced into the model; splice some first (sc.splice)")
    if not targets:
        raise ValueError("direct_effects needs at least one target feature")
    _check_settings(batch_size, None, 0.0)
    with _input_gradients_only(model):
        # no feature is expanded and the rows are few: every edge stays itemised
        run = _capture(model, tokens, list(targets), batch_size, 0, 0.0, itemise_all=True)
        try:
            _frozen_forward(run)
            _compute_target_rows(run, None)
        finally:
            run.release()
    stored = run.store.stored()
    return DirectEffects(
        stored.features.row.long(), stored.features.column.long(), stored.features.weight, stored.mass,
        run.active.site, run.active.position, run.active.index, [s.name for s in run.values.sites],
    )  # fmt: skip


def _check_settings(batch_size: Any, max_feature_nodes: Any, edge_tolerance: Any) -> None:
    if batch_size != "auto" and (not is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer or 'auto'")
    if max_feature_nodes is not None and (not is_int(max_feature_nodes) or max_feature_nodes < 0):
        raise ValueError(
            f"max_feature_nodes={max_feature_nodes!r} must be None (no budget), 0 (targets only) "
            "or a positive integer"
        )
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
    # not truncated: a prompt longer than the context must fail below, not be silently cut
    tokens = token_row(model, prompt, bos=prepend_bos)
    if not isinstance(prompt, str):
        if tokens.ndim == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tokens.ndim != 1 or tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise ValueError(
                f"prompt tokens must be a 1-D sequence of integer ids, got shape {tuple(tokens.shape)} "
                f"and dtype {tokens.dtype}"
            )
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


# --------------------------------------------------------------------------- the steps


@dataclass
class _Run:
    """The state of one attribution: what was captured, the rows computed, the edges kept."""

    model: Any
    values: PromptValues
    targets: list[ResolvedTarget]
    active: ActiveFeatures
    feature_targets: FeatureTargets
    scheduler: RowScheduler
    store: EdgeStore
    batch_size: int
    rows: list[Row] = field(default_factory=list)
    passes: FrozenPasses | None = None  # the frozen forwards' autograd graphs, while rows are computed
    zero_bos: bool = False
    clock: _Clock = field(default_factory=lambda: _Clock())

    def release(self) -> None:
        """Free the frozen forwards' autograd graphs."""
        if self.passes is not None:
            self.passes.clear()
        self.passes = None


class _Clock:
    """Seconds spent per kind of work, for the "where the time went" summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timing(self, what: str) -> Iterator[None]:
        """Add the time spent in the ``with`` block to ``what``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        """E.g. ``"backward 12.1s (70%), read-out 3.0s (17%), ..."``, the largest first."""
        total = sum(self.seconds.values()) or 1.0
        ordered = sorted(self.seconds.items(), key=lambda item: -item[1])
        return ", ".join(f"{what} {sec:.1f}s ({100 * sec / total:.0f}%)" for what, sec in ordered)


def _log_step(start: float, message: str, *args: Any) -> None:
    logger.info(message + " in %.2fs", *args, time.perf_counter() - start)


def _capture(
    model: Any,
    tokens: Int[Tensor, " pos"],
    targets: TargetSpec,
    batch_size: int | Literal["auto"],
    max_feature_nodes: int | None,
    edge_tolerance: float,
    itemise_all: bool = False,
    zero_bos: bool = False,
    max_edges_per_row: int | None = None,
) -> _Run:
    """Step 1: the clean pass's values, the resolved targets and the numbered active features."""
    start = time.perf_counter()
    values = capture(model, tokens)
    if zero_bos:
        values = _without_position_zero(values)
    resolved = resolve_targets(targets, values.probs, model, tokens.numel())
    at_bos = [t.feature for t in resolved if zero_bos and t.feature is not None and t.feature.position == 0]
    if at_bos:
        raise ValueError(
            f"feature target {at_bos[0]} is at position 0, where zero_bos=True removes every feature; "
            f"drop zero_bos or target another position"
        )
    active = ActiveFeatures.of(values.sites)
    if batch_size == "auto":
        batch_size = auto_batch_size(
            values.embedding.device, tokens.numel(), model.cfg.d_model, len(values.sites),
            model.cfg.n_layers, active.count, values.embedding.element_size(),
        )  # fmt: skip
        logger.info("batch_size='auto': %d rows per backward pass", batch_size)
    feature_targets = locate_feature_targets(resolved, values.sites, active)
    scheduler = RowScheduler(
        active, list(feature_targets.active.values()), batch_size, max_feature_nodes, itemise_all
    )
    store = EdgeStore(active.site, len(values.sites), edge_tolerance, max_edges_per_row)
    _log_step(
        start, "step 1, capture: %d tokens, %d sites, %d active features, %d targets",
        tokens.numel(), len(values.sites), active.count, len(resolved),
    )  # fmt: skip
    run = _Run(model, values, resolved, active, feature_targets, scheduler, store, batch_size)
    run.zero_bos = zero_bos
    run.clock.seconds["capture"] = time.perf_counter() - start
    return run


def _without_position_zero(values: PromptValues) -> PromptValues:
    """``zero_bos``: no active feature at position 0 and a zero error vector there. The frozen
    model's constants (``leaf``) are untouched, so every other edge is unchanged."""
    sites = []
    for site in values.sites:
        keep = site.positions != 0
        error = site.error.clone()
        error[0] = 0
        sites.append(
            replace(
                site, positions=site.positions[keep], indices=site.indices[keep],
                activations=site.activations[keep], decoded=site.decoded[keep], error=error, _padded=None,
            )
        )  # fmt: skip
    return replace(values, sites=sites)


def _frozen_forward(run: _Run) -> None:
    """Step 2: the frozen replacement model over the whole prompt (shorter prefixes follow when
    a batch first needs one)."""
    start = time.perf_counter()
    run.passes = FrozenPasses(run.model, run.values)
    with run.clock.timing("forward"):
        run.passes.for_rows([Row(1.0)])  # a logit row: every position
    _log_step(start, "step 2, frozen forward over %d positions", run.values.tokens.numel())


def _compute_rows(run: _Run, rows: list[Row]) -> None:
    """One backward pass for up to ``batch_size`` rows: keeps their edges and pushes influence."""
    assert run.passes is not None  # steps 3 and 4 run between step 2 and the release of its graph
    with run.clock.timing("forward"):
        pass_ = run.passes.for_rows(rows)
    with run.clock.timing("backward"):
        grads = row_gradients(run.model, pass_, run.values, run.targets, rows)
    with run.clock.timing("read-out"):
        block = edges_from_gradients(grads, run.values, run.active, rows)
        del grads
        magnitude = block.features.abs()  # [rows, cols], once: the mass, influence and tolerance read it
        mass = block.mass(magnitude)
    with run.clock.timing("schedule"):
        run.rows.extend(rows)
        run.scheduler.push_influence(rows, magnitude, block.feature_columns, mass)
        # the itemised set is read after this batch's influence is in (it may promote new candidates)
        itemised = run.scheduler.itemised()
    with run.clock.timing("keep edges"):
        run.store.keep(block, mass, itemised, magnitude)


def _compute_target_rows(run: _Run, bar: tqdm | None) -> None:
    """Step 3: every target's row, ``batch_size`` at a time."""
    start = time.perf_counter()
    rows = target_rows(run.targets, run.feature_targets)
    batches = [rows[first : first + run.batch_size] for first in range(0, len(rows), run.batch_size)]
    for batch in batches:
        _compute_rows(run, batch)
        if bar is not None:
            bar.update(len(batch))
    _log_step(start, "step 3, target rows: %d rows, %d backward passes", len(rows), len(batches))


def _expand_features(run: _Run, bar: tqdm | None) -> None:
    """Step 4: feature rows, the most influential features first, until none is left to expand."""
    start = time.perf_counter()
    passes = 0
    while batch := run.scheduler.next_feature_rows():
        _compute_rows(run, batch)
        passes += 1
        if bar is not None:
            bar.update(len(batch))
    _log_step(start, "step 4, feature rows: %d rows, %d backward passes", run.scheduler.expanded, passes)


def _assemble(run: _Run, prompt: str | None) -> AttributionGraph:
    """Step 5: the graph's nodes and edges."""
    start = time.perf_counter()
    settings: dict[str, Any] = {
        "batch_size": run.batch_size,
        "max_feature_nodes": run.scheduler.budget,
        "edge_tolerance": run.store.tolerance,
    }
    if run.zero_bos:
        settings["zero_bos"] = True
    if run.store.max_edges_per_row is not None:
        settings["max_edges_per_row"] = run.store.max_edges_per_row
    result = AttributionResult(
        run.values, run.active, run.targets, run.feature_targets, run.rows, run.store.stored(), settings
    )
    with run.clock.timing("graph"):
        graph = build_graph(run.model, result, prompt)
    _log_step(start, "step 5, graph: %d nodes, %d edges", graph.n_nodes, graph.n_edges)
    return graph
