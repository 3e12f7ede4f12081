"""Feature monitors: record (and optionally stop or steer on) features that fire while a model runs.

The "safety monitor" use: watch a few features (a base64 feature, a deception feature) while a
model generates, and log, halt or suppress the moment one of them fires::

    with sc.spliced(model, [sae]), sc.monitor(model, {"base64": (sae, 1234)}, threshold=1.0) as mon:
        tokens = mon.generate(prompt, max_new_tokens=40)
    mon.firings      # every (sequence, row, position, site, feature, activation, token)
    mon.save("trace.jsonl")

The algorithm:

1. **Resolve the watches.** Each ``(site, feature or features[, threshold])`` names an SAE already
   spliced into the model (by hook name or the SAE itself); feature indices are checked against
   its ``d_sae``. Watches are grouped by site: one hook per site.
2. **Install** (all removed in ``finally``): the model's position tracker
   (:func:`sae_circuits.positions.tracking`, shared with :func:`sae_circuits.intervene`);
   wrappers on ``model.forward`` and ``model.generate`` that say when a new *sequence* starts (each
   ``generate`` call, and each forward pass that is not a KV-cached continuation); a pre-hook on the
   token embedding that keeps the token ids by absolute position; and a forward hook on each site's
   ``hook_sae_acts_post``.
3. **Keep each (row, position) once.** A forward pass covers absolute positions
   ``[start, start + length)`` (the tracker's chunk). With the KV cache each position is seen once;
   without it every step re-runs all earlier positions. Each site remembers how many positions of
   the current sequence it has kept, and keeps only those at or past that mark, from their first
   computation. Cached and uncached runs therefore keep the same positions, with activations equal
   to float tolerance. **Padding:** where the forward call is given an ``attention_mask`` (``generate``
   passes one for a batch of prompts, left-padded, with the cache on and off, on HookedTransformer
   and TransformerBridge alike), positions it marks 0 are not kept: they never fire, stop or steer,
   and have no trace row. Positions stay column indices of the padded batch (those of the tokens
   ``generate`` returns), so a row with ``k`` pads has its real tokens at ``k, k + 1, ...``: the
   positions of that row run alone, plus ``k``. The last token ``generate`` returns is never seen:
   it is sampled after the last forward pass, and no pass reads it.
4. **Act on firings** (activation ``> threshold``, both rounded to float32, the same comparison in
   firings, stop, steering and the trace): ``"record"`` only keeps them. ``"stop"`` raises
   :class:`MonitorStopped` right after the site's positions of this pass are kept, so the pass is cut
   short and no token is sampled after it; :meth:`Monitor.generate` catches it and returns the
   tokens so far. ``"ablate"`` and ``"clamp"`` (to ``value``) edit a feature in a row from its first
   firing position in that row on, that position included (``sc.clamp(site, feature, value,
   positions=slice(p, None))`` for that row), in every later forward pass, so steering is also
   identical with and without the cache. A callable is called when a forward pass has finished (before
   ``generate`` samples from it) with each :class:`Firing` of that pass, across all sites, in the
   order of :attr:`Monitor.firings`; it returns ``None`` or ``"stop"``, and a ``"stop"`` raises
   :class:`MonitorStopped` once it has seen all of them. (A site's hook that runs outside any
   ``model.forward`` call hands its firings over at once.)
5. **Read out.** :attr:`Monitor.firings` come from the kept activations (sorted by sequence,
   position, row, watch order); :meth:`Monitor.trace` gives one :class:`TraceRow` per kept token
   with the activation of every watched feature; :meth:`Monitor.save` writes it as JSONL or JSON
   (atomically) and :func:`load_trace` reads it back.

The monitor reads the features as the hooks registered before it left them: entered outside
``sc.intervene`` it sees the clean activations, inside it sees the edited ones. Firings record the
activation before the monitor's own edit.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias, cast

import torch
from jaxtyping import Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from sae_circuits._files import atomic_write_text
from sae_circuits._hooks import permanent_hook
from sae_circuits._model import cache_length, check_model
from sae_circuits.interventions import _feature_indices, _finite_float32
from sae_circuits.positions import PositionTracker, tracking
from sae_circuits.sae import SAE
from sae_circuits.splice import site_of

__all__ = ["Firing", "Monitor", "MonitorStopped", "OnFire", "TraceRow", "Watch", "load_trace", "monitor"]

OnFire: TypeAlias = Literal["record", "stop", "ablate", "clamp"] | Callable[["Firing"], "str | None"]
"""What a firing does: ``"record"`` (only record it), ``"stop"`` (stop generation),
``"ablate"``/``"clamp"`` (from the firing position on, set the feature in that row to 0 / ``value``),
or a callable ``on_fire(firing) -> None | "stop"`` (given the firings of each forward pass once it has
finished, in the order of :attr:`Monitor.firings`)."""

WatchSpec: TypeAlias = (
    Sequence[tuple[str | SAE, int | Sequence[int]] | tuple[str | SAE, int | Sequence[int], float]]
    | Mapping[str, tuple[str | SAE, int | Sequence[int]] | tuple[str | SAE, int | Sequence[int], float]]
)
"""``[(site, feature or features[, threshold]), ...]`` or ``{name: (site, feature or features[,
threshold])}``; a site is a spliced SAE's hook name or the SAE itself."""

_MODES = ("record", "stop", "ablate", "clamp")
_NEVER = torch.iinfo(torch.long).max  # "has not fired" in the first-firing tables
_ACTIVATIONS = "feature activations are non-negative"


class Watch(NamedTuple):
    """Features watched under one name, at one site."""

    name: str
    """The watch's name (a dict key, or ``"{site}[{feature}]"`` / ``site`` for a list entry)."""
    site: str
    """The site (hook name) of the spliced SAE the features belong to."""
    features: tuple[int, ...]
    """Feature indices watched."""
    threshold: float
    """A feature fires where its activation is ``> threshold`` (a float32 value: both are compared
    as float32)."""

    def column(self, feature: int) -> str:
        """The trace column of ``feature``: the watch's name, or ``"{name}[{feature}]"`` when the
        watch has several features."""
        return self.name if len(self.features) == 1 else f"{self.name}[{feature}]"


class Firing(NamedTuple):
    """One watched feature firing at one token."""

    sequence: int
    """Which sequence of the monitor's block: 0 for the first ``generate`` call or forward pass that
    is not a KV-cached continuation, 1 for the next, ..."""
    row: int
    """Batch row."""
    position: int
    """Absolute position in the row (prompt + generated, counted from 0; a left-padded row counts
    its pads, as the columns of the tokens ``generate`` returns)."""
    site: str
    """The SAE's site (hook name)."""
    feature: int
    """Feature index."""
    activation: float
    """The activation (as the monitor saw it, before its own edit)."""
    token: int
    """Token id at ``position`` (-1 when unknown: a prompt given as embeddings, not tokens)."""
    watch: str
    """Name of the watch the feature belongs to."""


class TraceRow(NamedTuple):
    """One token of a monitored sequence: what every watched feature did there."""

    sequence: int
    """Which sequence of the monitor's block (see :attr:`Firing.sequence`)."""
    row: int
    """Batch row."""
    position: int
    """Absolute position in the row."""
    token: int
    """Token id (-1 when unknown)."""
    text: str
    """The token as a string (``""`` when unknown or the model has no tokenizer)."""
    activations: dict[str, float | None]
    """Per watched feature (:meth:`Watch.column`), its activation; ``None`` where its site did not
    run at this token (a pass that ``"stop"`` cut short). It may be NaN (a broken feature); a saved
    trace (:meth:`Monitor.save`) holds non-finite values as ``null``, read back as ``None``."""
    fired: list[str]
    """The columns that fired at this token."""


class MonitorStopped(Exception):
    """Raised out of a forward pass or ``model.generate`` by a monitor with ``on_fire="stop"`` (or
    a callable that returned ``"stop"``); :meth:`Monitor.generate` catches it."""

    def __init__(self, firing: Firing, tokens: Int[Tensor, "batch pos"]) -> None:
        super().__init__(
            f"monitor stopped: {firing.watch!r} fired (feature {firing.feature} at {firing.site!r}, "
            f"activation {firing.activation:.4g}) at position {firing.position} of row {firing.row}"
        )
        self.firing = firing
        """The firing that stopped the run."""
        self.tokens = tokens
        """Tokens so far: every row up to the end of the forward pass that fired."""


# --------------------------------------------------------------------------- run-time state


class _Group:
    """The watched columns of one site."""

    def __init__(self, site: str, sae: SAE) -> None:
        self.site, self.sae = site, sae
        self.columns: list[tuple[Watch, int]] = []  # (watch, feature) per column

    def freeze(self, watches: list[Watch]) -> None:
        """Build the column tensors; ``ranks``: each column's place in the watches' order."""
        self.index = torch.tensor([f for _, f in self.columns])
        self.thresholds = torch.tensor([w.threshold for w, _ in self.columns], dtype=torch.float32)
        order = [(w.name, f) for w in watches for f in w.features]
        self.ranks = [order.index((w.name, f)) for w, f in self.columns]


class _Kept(NamedTuple):
    """The activations of one site kept from one forward pass."""

    start: int  # absolute position of the first kept position
    acts: Tensor  # [batch, kept, n] the watched columns
    valid: Tensor | None  # [batch, kept] False at padding (attention mask 0); None: all valid


@dataclass
class _Sequence:
    """What the monitor keeps of one sequence."""

    index: int
    tokens: Tensor | None = None  # [batch, known positions], -1 where unknown
    kept: dict[str, list[_Kept]] = field(default_factory=dict)  # site -> one per pass
    done: dict[str, int] = field(default_factory=dict)  # site -> positions kept so far
    first: dict[str, Tensor] = field(default_factory=dict)  # site -> [batch, n] first firing position

    def put_tokens(self, start: int, ids: Tensor) -> None:
        """Keep the token ids of absolute positions ``start ..`` (unknown positions stay -1)."""
        ids = ids.detach().long()
        if ids.ndim == 1:
            ids = ids[None]
        end = start + ids.shape[1]
        if self.tokens is None or self.tokens.shape[0] != ids.shape[0]:
            self.tokens = torch.full((ids.shape[0], 0), -1, dtype=torch.long, device=ids.device)
        if self.tokens.shape[1] < end:
            pad = self.tokens.new_full((ids.shape[0], end - self.tokens.shape[1]), -1)
            self.tokens = torch.cat([self.tokens, pad], dim=1)
        self.tokens[:, start:end] = ids.to(self.tokens.device)

    def token_table(self) -> list[list[int]]:
        """The known token ids as nested lists (one device read), ``[]`` when none are known."""
        return [] if self.tokens is None else self.tokens.tolist()


class Monitor:
    """A running feature monitor (what :func:`monitor` yields): its records, trace and helpers.

    >>> site = "blocks.1.hook_resid_post"
    >>> with sc.spliced(model, [sae]), sc.monitor(model, {"m": (site, [21, 1603])}, 1.0) as mon:
    ...     _ = model(tokens[:1, :12])
    >>> row = next(row for row in mon.trace() if row.fired)  # the first token where one fired
    >>> row.position, row.text, row.fired, sorted(row.activations)
    (3, 'two', ['m[21]'], ['m[1603]', 'm[21]'])
    """

    def __init__(
        self,
        model: nn.Module,
        watches: list[Watch],
        groups: list[_Group],
        on_fire: OnFire,
        value: float,
        tracker: PositionTracker,
    ) -> None:
        self.model = model
        """The monitored model."""
        self.watches = tuple(watches)
        """The watches, in the order given."""
        self.on_fire = on_fire
        """What a firing does (see :data:`OnFire`)."""
        self.value = value
        """What ``"clamp"`` sets a firing feature to (0 for ``"ablate"``; unused otherwise)."""
        self.stopped: Firing | None = None
        """The firing that stopped the last run (``on_fire="stop"`` or a callable), else ``None``."""
        self._groups = groups
        self._tracker = tracker
        self._sequences: list[_Sequence] = []
        self._generating = False
        self._depth = 0  # nesting of forward calls
        self._forward_start = 0  # where the outermost forward call's tokens start
        self._mask: Tensor | None = None  # the outermost forward call's attention_mask [batch, key pos]
        self._pending: list[tuple[_Sequence, _Group, _Kept]] = []  # a callable's, until the pass ends

    # ------------------------------------------------------------------ public

    @property
    def firings(self) -> list[Firing]:
        """Every firing so far, sorted by (sequence, position, row, watch order)."""
        out: list[Firing] = []
        for seq in self._sequences:
            for group in self._groups:
                for kept in seq.kept.get(group.site, []):
                    out += _firings_in(seq, group, kept)
        return self._sorted(out)

    def generate(
        self, input: Int[Tensor, "batch prompt"] | str | list[str], **kwargs: Any
    ) -> Int[Tensor, "batch pos"]:
        """``model.generate(input, **kwargs)`` as tokens (``verbose=False`` unless given). When the
        monitor stops the run, the tokens so far: each row up to the end of the forward pass that
        fired (and :attr:`stopped` says which firing).

        >>> greedy = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False)
        >>> watch = [("blocks.1.hook_resid_post", 1603)]
        >>> with sc.spliced(model, [sae]), sc.monitor(model, watch, 1.0, on_fire="stop") as mon:
        ...     out = mon.generate(tokens[:1, :8], **greedy)
        >>> out.shape, mon.stopped.position  # it fired at the token at 11: 4 of the 6 new tokens
        (torch.Size([1, 12]), 11)
        """
        kwargs.setdefault("verbose", False)
        kwargs["return_type"] = "tokens"
        self.stopped = None
        try:
            out = cast(Any, self.model).generate(input, **kwargs)
        except MonitorStopped as stop:
            return stop.tokens
        return out.sequences if hasattr(out, "sequences") else out

    def trace(self) -> list[TraceRow]:
        """One row per kept token, in (sequence, row, position) order, with the activation of every
        watched feature (see :class:`TraceRow`)."""
        columns = [(g, c, w.column(f)) for g in self._groups for c, (w, f) in enumerate(g.columns)]
        thresholds = {w.column(f): w.threshold for g in self._groups for w, f in g.columns}
        names = [w.column(f) for w in self.watches for f in w.features]  # watch order
        rows: list[TraceRow] = []
        for seq in self._sequences:
            values: dict[tuple[int, int], dict[str, float | None]] = {}
            for group in self._groups:
                for start, acts, valid in seq.kept.get(group.site, []):
                    table = acts.float().cpu().tolist()  # [batch][pos][column]
                    keep = None if valid is None else valid.cpu().tolist()  # [batch][pos]
                    for row, per_row in enumerate(table):
                        for i, per_pos in enumerate(per_row):
                            if keep is not None and not keep[row][i]:
                                continue  # padding
                            cell = values.setdefault((row, start + i), {})
                            for g, c, name in columns:
                                if g is group:
                                    cell[name] = per_pos[c]
            table = seq.token_table()
            for (row, position), cell in sorted(values.items()):
                activations = {name: cell.get(name) for name in names}
                fired = [n for n, a in activations.items() if a is not None and a > thresholds[n]]
                known = table[row] if row < len(table) else []
                token = known[position] if position < len(known) else -1
                rows.append(TraceRow(seq.index, row, position, token, self._text(token), activations, fired))
        return rows

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the trace atomically: ``.jsonl``, one :class:`TraceRow` per line; ``.json``, an
        object with ``watches``, ``firings`` and ``trace``. Read it back with :func:`load_trace`.
        JSON has no NaN or infinity: a non-finite activation is written as ``null`` (so it reads
        back as ``None``, like a site that did not run at that token).

        >>> site = "blocks.1.hook_resid_post"
        >>> with sc.spliced(model, [sae]), sc.monitor(model, {"f21": (site, 21)}) as mon:
        ...     _ = model(tokens)
        >>> path = mon.save("trace.jsonl")
        >>> sc.load_trace(path) == mon.trace()
        True
        """
        target = Path(path)
        rows = [_json_row(row) for row in self.trace()]
        if target.suffix.lower() == ".jsonl":
            text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows)
        elif target.suffix.lower() == ".json":
            document = {
                "watches": [w._asdict() for w in self.watches],
                "firings": [_json_row(f) for f in self.firings],
                "trace": rows,
            }
            text = json.dumps(document, allow_nan=False, indent=1) + "\n"
        else:
            raise ValueError(f"path={str(path)!r}: expected a .jsonl or .json file name")
        return atomic_write_text(target, text)

    # ------------------------------------------------------------------ machinery

    def _text(self, token: int) -> str:
        tokenizer = getattr(self.model, "tokenizer", None)
        if token < 0 or tokenizer is None:
            return ""
        return cast(str, tokenizer.decode([token]))

    def _new_sequence(self) -> _Sequence:
        seq = _Sequence(len(self._sequences))
        self._sequences.append(seq)
        return seq

    def _current(self) -> _Sequence:
        return self._sequences[-1] if self._sequences else self._new_sequence()

    def _sorted(self, firings: list[Firing]) -> list[Firing]:
        """``firings`` sorted by (sequence, position, row, watch order)."""
        rank = {(g.site, f): g.ranks[c] for g in self._groups for c, (_, f) in enumerate(g.columns)}
        return sorted(firings, key=lambda e: (e.sequence, e.position, e.row, rank[e.site, e.feature]))

    def _wrap_forward(self, forward: Any) -> Any:
        @functools.wraps(forward)
        def monitored_forward(*args: Any, **kwargs: Any) -> Any:
            outermost = self._depth == 0
            if outermost:
                start = cache_length(kwargs)
                if not self._generating and start == 0:
                    self._new_sequence()  # a KV-cached continuation (start > 0) continues the last one
                self._forward_start = start
                # generate passes the padding as a [batch, cache + new] 0/1 mask (both backends)
                mask = kwargs.get("attention_mask")
                self._mask = mask if isinstance(mask, Tensor) and mask.ndim == 2 else None
                self._pending = []
            self._depth += 1
            try:
                out = forward(*args, **kwargs)
            finally:
                self._depth -= 1
                if outermost:
                    pending, self._pending, self._mask = self._pending, [], None
            if outermost and pending:
                self._dispatch(pending)  # the pass has finished, nothing is sampled from it yet
            return out

        return monitored_forward

    def _wrap_generate(self, generate: Any) -> Any:
        @functools.wraps(generate)
        def monitored_generate(*args: Any, **kwargs: Any) -> Any:
            saved = self._generating
            self._generating = True
            self.stopped = None
            seq = self._new_sequence()
            prompt = args[0] if args else kwargs.get("input")
            if isinstance(prompt, Tensor) and prompt.is_floating_point() and prompt.ndim == 3:
                # embeddings [batch, pos, d_model]: the prompt's tokens are unknown (-1), and the
                # sampled tokens, embedded one by one, are appended after them
                seq.put_tokens(0, torch.full(prompt.shape[:2], -1, dtype=torch.long, device=prompt.device))
            try:
                return generate(*args, **kwargs)
            finally:
                self._generating = saved

        return monitored_generate

    def _see_tokens(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Pre-hook on the token embedding: keep the ids by absolute position. Inside a forward call
        they start where its chunk starts; HookedTransformer.generate embeds outside forward, the
        prompt first, then one sampled token per step, so those are appended (after the unknown
        prompt positions when ``generate`` was given embeddings)."""
        ids = args[0] if args else kwargs.get("input_ids", kwargs.get("tokens"))
        if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.ndim not in (1, 2):
            return
        if self._depth > 0:
            self._current().put_tokens(self._forward_start, ids)
        elif self._generating:
            seq = self._current()
            seq.put_tokens(0 if seq.tokens is None else seq.tokens.shape[1], ids)

    def _valid(self, start: int, acts: Tensor) -> Tensor | None:
        """``[batch, length]``: False where the forward call's attention mask marks padding, for the
        chunk ``[start, start + length)`` of ``acts``; ``None`` when there is no usable mask. The mask
        covers the cache and the new tokens (as ``generate`` passes it) or the new tokens alone."""
        mask, (batch, length) = self._mask, acts.shape[:2]
        if mask is None or mask.shape[0] != batch:
            return None
        if mask.shape[1] >= start + length:
            mask = mask[:, start : start + length]
        elif mask.shape[1] != length:
            return None
        return mask.to(acts.device) != 0

    def _hook(self, group: _Group) -> Callable[..., Tensor]:
        steer = self.on_fire in ("ablate", "clamp")

        def watch_features(acts: Tensor, *, hook: HookPoint) -> Tensor:
            seq = self._current()
            chunk = self._tracker.chunk(acts.shape[1])
            valid = self._valid(chunk.start, acts)  # [batch, length] or None
            done = seq.done.get(group.site, 0)
            skip = min(max(done - chunk.start, 0), chunk.length)  # re-run positions (no KV cache)
            if skip < chunk.length:
                index = group.index.to(acts.device)
                new = acts[:, skip:].detach().index_select(-1, index)  # [batch, new, n]
                kept = _Kept(chunk.start + skip, new, None if valid is None else valid[:, skip:])
                seq.kept.setdefault(group.site, []).append(kept)
                seq.done[group.site] = chunk.start + chunk.length
                if steer:
                    self._note_first_firings(seq, group, kept)
                elif self.on_fire == "stop":
                    self._stop_on(seq, group, kept)
                elif self.on_fire != "record":
                    self._pending.append((seq, group, kept))
                    if self._depth == 0:  # not inside a forward call: no end of pass to wait for
                        pending, self._pending = self._pending, []
                        self._dispatch(pending)
            if steer and group.site in seq.first:
                acts = self._edit(acts, seq.first[group.site], chunk.start, group, valid)
            return acts

        return watch_features

    def _note_first_firings(self, seq: _Sequence, group: _Group, kept: _Kept) -> None:
        """Update the table of each (row, column)'s first firing position (no device sync)."""
        fires = _fires(group, kept)  # [batch, new, n]
        start, length = kept.start, kept.acts.shape[1]
        positions = torch.arange(start, start + length, device=fires.device)[None, :, None]
        first = torch.where(fires, positions, _NEVER).amin(dim=1)  # [batch, n]
        before = seq.first.get(group.site)
        seq.first[group.site] = first if before is None else torch.minimum(before, first)

    def _edit(self, acts: Tensor, first: Tensor, start: int, group: _Group, valid: Tensor | None) -> Tensor:
        """Set each column to ``value`` (0 for ablate) at and after its first firing in each row
        (padding left as it is)."""
        index = group.index.to(acts.device)
        positions = torch.arange(start, start + acts.shape[1], device=acts.device)[None, :, None]
        mask = positions >= first[:, None, :]  # [batch, pos, n]
        if valid is not None:
            mask &= valid[..., None]
        selected = acts.index_select(-1, index)
        edited = torch.where(mask, torch.full_like(selected, self.value), selected)
        return acts.index_copy(-1, index, edited)

    def _stop_on(self, seq: _Sequence, group: _Group, kept: _Kept) -> None:
        """``"stop"``: look at this site's firings of this pass now (a device sync)."""
        if bool(_fires(group, kept).any()):
            self._stop(seq, _firings_in(seq, group, kept)[0], kept)

    def _dispatch(self, pending: list[tuple[_Sequence, _Group, _Kept]]) -> None:
        """A callable: hand it the firings of a finished pass, all sites together, in the order of
        :attr:`firings`; stop at the first it answers ``"stop"`` to, once it has seen them all."""
        firings = self._sorted([f for seq, group, kept in pending for f in _firings_in(seq, group, kept)])
        stop: Firing | None = None
        for firing in firings:
            answer = cast(Callable[[Firing], Any], self.on_fire)(firing)
            if answer not in (None, "stop"):
                raise ValueError(f"on_fire returned {answer!r}; expected None or 'stop'")
            if answer == "stop" and stop is None:
                stop = firing
        if stop is not None:
            seq, _, kept = pending[-1]  # every site's positions of a pass end where the pass ends
            self._stop(seq, stop, kept)

    def _stop(self, seq: _Sequence, firing: Firing, kept: _Kept) -> None:
        """Raise :class:`MonitorStopped` with the tokens up to the end of ``kept``'s pass."""
        self.stopped = firing
        end = kept.start + kept.acts.shape[1]
        tokens = seq.tokens[:, :end] if seq.tokens is not None else torch.empty(0, 0, dtype=torch.long)
        raise MonitorStopped(firing, tokens)


def _fires(group: _Group, kept: _Kept) -> Tensor:
    """``[batch, pos, n]``: where a kept column fires, ``activation > threshold`` compared as float32
    (the thresholds are float32 values; :meth:`Monitor.trace` compares the same numbers), padding
    excluded."""
    fires = kept.acts.float() > group.thresholds.to(kept.acts.device)
    if kept.valid is not None:
        fires &= kept.valid[..., None]
    return fires


def _firings_in(seq: _Sequence, group: _Group, kept: _Kept) -> list[Firing]:
    """The firings in ``kept`` (``[batch, pos, n]`` from position ``kept.start``), sorted by
    (position, row, column)."""
    fires = _fires(group, kept)
    hits = fires.nonzero().tolist()  # [row, i, column], row-major
    values = kept.acts.float()[fires].tolist()
    table = seq.token_table()
    start = kept.start

    def token(row: int, position: int) -> int:
        known = table[row] if row < len(table) else []
        return known[position] if position < len(known) else -1

    keyed = sorted(
        ((start + i, row, group.ranks[c]), Firing(
            seq.index, row, start + i, group.site, group.columns[c][1], value,
            token(row, start + i), group.columns[c][0].name,
        ))
        for (row, i, c), value in zip(hits, values)
    )  # fmt: skip
    return [firing for _, firing in keyed]


def _json_row(row: Firing | TraceRow) -> dict[str, Any]:
    """``row`` as a JSON object; JSON has no NaN or infinity, so a non-finite activation is null."""
    out = row._asdict()
    if isinstance(row, Firing):
        out["activation"] = _finite_or_none(row.activation)
    else:
        out["activations"] = {name: _finite_or_none(a) for name, a in row.activations.items()}
    return out


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------- the context manager


@contextmanager
def monitor(
    model: nn.Module,
    features: WatchSpec,
    threshold: float = 0.0,
    *,
    on_fire: OnFire = "record",
    value: float | None = None,
) -> Iterator[Monitor]:
    """Watch ``features`` in every forward pass and ``generate`` step inside the block.

    ``features``: ``[(site, feature), ...]`` or ``{name: (site, feature or [features])}``; an entry
    may add its own threshold as a third item. Each site must be a spliced SAE (its hook name or the
    SAE). A feature fires where its activation is ``> threshold`` (the threshold rounded once to
    float32, the activation compared as float32). ``on_fire``: ``"record"``,
    ``"stop"``, ``"ablate"``, ``"clamp"`` (to ``value``), or a callable (see :data:`OnFire` and the
    module docstring). Positions are absolute (prompt + generated; a left-padded row counts its
    pads, which are never recorded where the forward call has an ``attention_mask``, as in
    ``generate``) and each (row, position) is recorded once, so records are the same with the KV
    cache on and off. When ``generate`` is given embeddings, the prompt's positions have token -1
    and the generated tokens follow them. Watch names and trace columns must be distinct. Nests with
    :func:`sae_circuits.intervene`; hooks and wrappers are removed on exit, even on error.

    >>> site = "blocks.1.hook_resid_post"
    >>> greedy = dict(max_new_tokens=4, do_sample=False, stop_at_eos=False, verbose=False)
    >>> with sc.spliced(model, [sae]), sc.monitor(model, {"f21": (site, 21)}, 0.5) as mon:
    ...     cached = model.generate(tokens[:1, :8], use_past_kv_cache=True, **greedy)
    ...     uncached = model.generate(tokens[:1, :8], use_past_kv_cache=False, **greedy)
    >>> [[f.position for f in mon.firings if f.sequence == s] for s in (0, 1)]  # cache on, off
    [[3, 4, 5, 6, 7], [3, 4, 5, 6, 7]]
    """
    check_model(model)
    mode = _check_on_fire(on_fire, value)
    fill = 0.0 if mode != "clamp" else _finite_float32(value, "value", minimum_why=_ACTIVATIONS)
    default = _threshold(threshold)
    watches, groups = _resolve(model, features, default)
    with ExitStack() as stack:
        tracker = stack.enter_context(tracking(model))
        mon = Monitor(model, watches, groups, on_fire, fill, tracker)
        stack.enter_context(_instance_wrapped(model, "forward", mon._wrap_forward))
        if hasattr(model, "generate"):
            stack.enter_context(_instance_wrapped(model, "generate", mon._wrap_generate))
        embed = getattr(model, "embed", None)
        if isinstance(embed, nn.Module):
            handle = embed.register_forward_pre_hook(mon._see_tokens, with_kwargs=True)
            stack.callback(handle.remove)
        for group in groups:
            stack.enter_context(permanent_hook(group.sae.hook_sae_acts_post, mon._hook(group)))
        yield mon


@contextmanager
def _instance_wrapped(model: nn.Module, name: str, wrap: Callable[[Any], Any]) -> Iterator[None]:
    """Wrap the instance attribute ``name`` (the position tracker's wrapper) for the block."""
    previous = model.__dict__[name]
    model.__dict__[name] = wrap(previous)
    try:
        yield
    finally:
        model.__dict__[name] = previous


def load_trace(path: str | os.PathLike[str]) -> list[TraceRow]:
    """The trace that :meth:`Monitor.save` wrote to ``path`` (``.jsonl`` or ``.json``); a non-finite
    activation, saved as ``null``, is read back as ``None``."""
    target = Path(path)
    text = target.read_text(encoding="utf-8")
    if target.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif target.suffix.lower() == ".json":
        rows = json.loads(text)["trace"]
    else:
        raise ValueError(f"path={str(path)!r}: expected a .jsonl or .json file name")
    return [TraceRow(**row) for row in rows]


# --------------------------------------------------------------------------- argument checks


def _check_on_fire(on_fire: Any, value: Any) -> str:
    if callable(on_fire):
        mode = "callable"
    elif isinstance(on_fire, str) and on_fire in _MODES:
        mode = on_fire
    else:
        raise ValueError(f"on_fire={on_fire!r}: expected one of {list(_MODES)} or a callable(firing)")
    if mode == "clamp" and value is None:
        raise ValueError("on_fire='clamp' needs value=, the activation to clamp a firing feature to")
    if mode != "clamp" and value is not None:
        raise ValueError(f"value={value!r} is only used with on_fire='clamp' (got on_fire={on_fire!r})")
    return mode


def _threshold(threshold: Any) -> float:
    number = _finite_float32(threshold, "threshold")
    if number < 0:
        raise ValueError(
            f"threshold={number}: expected a number >= 0 ({_ACTIVATIONS}, so a negative threshold "
            "would fire on every token)"
        )
    return float(torch.tensor(number, dtype=torch.float32))  # one rounding, compared as float32


def _resolve(model: nn.Module, features: Any, default: float) -> tuple[list[Watch], list[_Group]]:
    """The watches, checked against the spliced SAEs, and their columns grouped by site."""
    if isinstance(features, Mapping):
        entries = [(name, spec) for name, spec in features.items()]
        for name, _ in entries:
            if not isinstance(name, str) or not name:
                raise ValueError(f"watch name {name!r}: expected a non-empty string")
    elif isinstance(features, Sequence) and not isinstance(features, str):
        entries = [(None, spec) for spec in features]
    else:
        raise TypeError(
            f"features={features!r}: expected a list of (site, feature) pairs or a dict "
            "{name: (site, feature or [features])}"
        )
    if not entries:
        raise ValueError("features is empty: give at least one (site, feature) to watch")
    watches: list[Watch] = []
    groups: dict[str, _Group] = {}
    seen: dict[tuple[str, int], str] = {}
    for name, spec in entries:
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise ValueError(
                f"watch {spec!r}: expected (site, feature or [features]) or (site, features, threshold)"
            )
        site_spec, indices = spec[0], spec[1]
        limit = _threshold(spec[2]) if len(spec) == 3 else default
        try:
            site = site_of(model, site_spec)
        except ValueError as error:
            raise ValueError(f"cannot monitor {_site_name(site_spec)!r}: {error}") from None
        chosen = _feature_indices(indices)
        d_sae = site.sae.cfg.d_sae
        for index in chosen:
            if index >= d_sae:
                raise ValueError(
                    f"feature index {index} at {site.name!r} is out of range: the SAE there has "
                    f"d_sae={d_sae} (valid: 0..{d_sae - 1})"
                )
        if name is None:
            name = site.name if len(chosen) > 1 else f"{site.name}[{chosen[0]}]"
        watch = Watch(name, site.name, chosen, limit)
        if any(w.name == name for w in watches):
            raise ValueError(f"two watches are named {name!r}")
        for index in chosen:
            if (site.name, index) in seen:
                raise ValueError(
                    f"feature {index} at {site.name!r} is watched twice ({seen[site.name, index]!r} "
                    f"and {name!r})"
                )
            seen[site.name, index] = name
        watches.append(watch)
        group = groups.setdefault(site.name, _Group(site.name, site.sae))
        group.columns += [(watch, index) for index in chosen]
    columns: dict[str, list[Watch]] = {}
    for watch in watches:
        for index in watch.features:
            columns.setdefault(watch.column(index), []).append(watch)
    clashes = {column: [w.name for w in ws] for column, ws in columns.items() if len(ws) > 1}
    if clashes:
        raise ValueError(
            "trace column names collide (a watch with several features has columns "
            f"'name[feature]'): {', '.join(f'{c!r} (watches {n})' for c, n in clashes.items())}; "
            "rename the watches"
        )
    for group in groups.values():
        group.freeze(watches)
    return watches, list(groups.values())


def _site_name(site: Any) -> str:
    return site.cfg.site if isinstance(site, SAE) else str(site)
