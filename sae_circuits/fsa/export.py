"""File formats for :class:`~sae_circuits.fsa.automaton.FeatureAutomaton`: the text of each format,
from the automaton (the data); files are written by :mod:`sae_circuits.writers`, one writer per
format, which ``FeatureAutomaton.save``, the CLI and ``serve`` read.

- ``.json``: lossless (``load(save(fsa))`` gives back the same states, transitions, firing, lengths
  and metadata); ``firing`` is stored as zlib-compressed, base64-encoded packed bits (the reading is
  in :mod:`sae_circuits.writers.json_file`).
- ``.graphml`` (via :func:`to_networkx`), ``.dot`` (Graphviz, written here: no pydot) and a
  self-contained ``.html`` view (:mod:`sae_circuits.fsa.viewer`). These are views: only ``.json``
  loads back.

Every file is written through :func:`sae_circuits._files.atomic_write_text`, in ASCII except ``.dot``
(UTF-8, as the attribution-graph exporter writes it). Cycles are in :mod:`sae_circuits.fsa.loops`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from sae_circuits._export_io import dot_string, exact_float, finite_json, printable
from sae_circuits.fsa.loops import MAX_CYCLES as MAX_CYCLES  # re-exported, as before
from sae_circuits.fsa.loops import cycles as _cycles
from sae_circuits.fsa.viewer import members_text as _members
from sae_circuits.fsa.viewer import to_html as to_html
from sae_circuits.fsa.viewer import top_tokens as _top_tokens

if TYPE_CHECKING:
    from sae_circuits.fsa.automaton import FeatureAutomaton, Transition

FORMAT = "sae_circuits.feature_automaton"
FORMAT_VERSION = 1
_FIRING_ENCODING = "packbits-little+zlib+base64"
_MECHANISMS = ("attention", "token")
_COLORS = {"attention": "#1f77b4", "token": "#ff7f0e"}


def cycles(
    fsa: FeatureAutomaton, min_weight: float = 0.0, max_length: int = 6
) -> list[tuple[list[int], float]]:
    """Deprecated here: :func:`sae_circuits.fsa.loops.cycles` (``fsa.cycles()``), capped at this
    module's ``MAX_CYCLES``."""
    return _cycles(fsa, min_weight, max_length, max_cycles=MAX_CYCLES)


# --------------------------------------------------------------------------- networkx, GraphML


def to_networkx(fsa: FeatureAutomaton) -> nx.DiGraph:
    """An ``nx.DiGraph`` keyed by state id; one edge per ``(src, dst)``, both mechanisms merged.

    Node attributes: ``label`` (str), ``frequency``, ``max_activation`` (float), ``members`` (str,
    ``"site#index,..."``). Edge attributes: ``weight`` (total), ``attention_weight``,
    ``token_weight`` (0.0 where the mechanism has no transition), ``mechanism`` (``"attention"``,
    ``"token"`` or ``"both"``), ``tokens`` (the top tokens, quoted, counts of both mechanisms
    added), ``effect`` (float; NaN when not validated, the largest if the mechanisms differ),
    ``effect_removed`` (the necessity arm's, the same way) and ``confirmed`` (``"true"``,
    ``"false"`` or ``""`` when not validated; true if any mechanism's transition is). Only
    str/int/float values, so the graph writes to GraphML as it is.
    """
    graph = nx.DiGraph()
    for s in fsa.states:
        graph.add_node(s.id, label=s.label, frequency=float(s.frequency), members=_members(s),
                       max_activation=float(s.max_activation))  # fmt: skip
    by_pair: dict[tuple[int, int], list[Transition]] = {}
    for t in fsa.transitions:
        by_pair.setdefault((t.src, t.dst), []).append(t)
    for (src, dst), group in by_pair.items():
        weights = {m: float(sum(t.weight for t in group if t.mechanism == m)) for m in _MECHANISMS}
        kinds = {t.mechanism for t in group}
        tokens: Counter[str] = Counter()
        for t in group:
            tokens.update(t.tokens)
        effects = [float(t.effect) for t in group if t.effect is not None]
        removed = [float(t.effect_removed) for t in group if t.effect_removed is not None]
        verdicts = [t.confirmed for t in group if t.confirmed is not None]
        graph.add_edge(
            src, dst, weight=float(sum(t.weight for t in group)), attention_weight=weights["attention"],
            token_weight=weights["token"], mechanism=kinds.pop() if len(kinds) == 1 else "both",
            tokens=_top_tokens(tokens), effect=max(effects) if effects else math.nan,
            effect_removed=max(removed) if removed else math.nan,
            confirmed="" if not verdicts else "true" if any(verdicts) else "false",
        )  # fmt: skip
    return graph


def to_graphml(fsa: FeatureAutomaton) -> str:
    """GraphML text of :func:`to_networkx` (strings made XML-safe; pure ASCII)."""
    graph = to_networkx(fsa)
    for _, attrs in graph.nodes(data=True):
        attrs.update({k: printable(v) for k, v in attrs.items() if isinstance(v, str)})
    for _, _, attrs in graph.edges(data=True):
        attrs.update({k: printable(v) for k, v in attrs.items() if isinstance(v, str)})
    buffer = io.BytesIO()
    nx.write_graphml(graph, buffer, encoding="utf-8")
    # Character references keep the file ASCII, whatever encoding atomic_write_text uses.
    return buffer.getvalue().decode("utf-8").encode("ascii", "xmlcharrefreplace").decode("ascii")


# --------------------------------------------------------------------------- DOT


def to_dot(fsa: FeatureAutomaton) -> str:
    """Graphviz DOT: one node per state (``"s{id}"``, labelled ``id: label`` and its frequency), one
    edge per transition: blue for attention, orange for token, pen width 0.5..4 by ``|weight|``
    relative to the largest, labelled by its top tokens; solid if confirmed, dashed if validation
    did not confirm it, Graphviz's default if not validated.

    The weight is the edge attribute ``transition_weight``: Graphviz's own ``weight`` is a
    non-negative integer layout hint.
    """
    lines = [
        "digraph automaton {", "  rankdir=LR;", "  node [shape=ellipse, style=filled, fillcolor=white];",
        "  // edges: blue = attention, orange = token; solid = confirmed, dashed = not confirmed",
    ]  # fmt: skip
    for s in fsa.states:
        label = f"{s.id}: {s.label}\n{100 * s.frequency:.2f}% of tokens"
        lines.append(
            f"  {dot_string(f's{s.id}')} [label={dot_string(label)}, tooltip={dot_string(_members(s))}];"
        )
    largest = max((abs(t.weight) for t in fsa.transitions if math.isfinite(t.weight)), default=0.0) or 1.0
    for t in fsa.transitions:
        width = min(4.0, 0.5 + 3.5 * abs(t.weight) / largest) if math.isfinite(t.weight) else 4.0
        attrs = [
            f'transition_weight="{t.weight!r}"', f"mechanism={dot_string(str(t.mechanism))}",
            f'color="{_COLORS.get(t.mechanism, "#555555")}"', f"penwidth={width:.3f}",
            f"label={dot_string(_top_tokens(t.tokens, 3))}",
            f"tooltip={dot_string(f'{t.mechanism} {t.weight:.4g}; tokens {_top_tokens(t.tokens)}')}",
        ]  # fmt: skip
        if t.effect is not None:
            attrs.append(f'effect="{float(t.effect)!r}"')
        if t.effect_removed is not None:
            attrs.append(f'effect_removed="{float(t.effect_removed)!r}"')
        if t.confirmed is not None:
            attrs += [
                f'confirmed="{str(bool(t.confirmed)).lower()}"',
                f"style={'solid' if t.confirmed else 'dashed'}",
            ]
        lines.append(f"  {dot_string(f's{t.src}')} -> {dot_string(f's{t.dst}')} [{', '.join(attrs)}];")
    return "\n".join([*lines, "}", ""])


# --------------------------------------------------------------------------- JSON


def _json_default(value: Any) -> Any:
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def to_json_dict(fsa: FeatureAutomaton) -> dict[str, Any]:
    """Everything :func:`load` needs. Floats are exact (NaN/inf as ``"nan"``/``"inf"`` strings);
    ``firing`` is ``np.packbits`` (little bit order, row-major) of the bool matrix, zlib-compressed
    (it is sparse), base64-encoded. Metadata goes through as JSON (tuples come back as lists,
    non-finite floats as None)."""
    firing = fsa.firing.detach().cpu().bool()
    packed = np.packbits(firing.numpy().reshape(-1), bitorder="little")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "states": [
            {"id": s.id, "members": [[site, int(index)] for site, index in s.members], "label": s.label,
             "frequency": exact_float(float(s.frequency)),
             "max_activation": exact_float(float(s.max_activation)),
             "pin_values": [exact_float(float(v)) for v in s.pin_values],
             "coherence": exact_float(float(s.coherence))}
            for s in fsa.states
        ],
        "transitions": [
            {"src": t.src, "dst": t.dst, "mechanism": t.mechanism, "weight": exact_float(float(t.weight)),
             "tokens": {str(k): int(v) for k, v in t.tokens.items()},
             "effect": None if t.effect is None else exact_float(float(t.effect)),
             "confirmed": None if t.confirmed is None else bool(t.confirmed),
             "observed": None if t.observed is None else bool(t.observed),
             **{k: _optional(getattr(t, k)) for k in _CHECK_FIELDS}}
            for t in fsa.transitions
        ],
        "firing": {
            "shape": list(firing.shape), "encoding": _FIRING_ENCODING,
            "data": base64.b64encode(zlib.compress(packed.tobytes(), 6)).decode("ascii"),
        },
        "lengths": [int(n) for n in fsa.lengths.tolist()],
        "metadata": finite_json(fsa.metadata),
        "tokens": None if fsa.tokens is None else [int(t) for t in fsa.tokens.tolist()],
        "weights": {  # every pair's weight per mechanism: float64 bytes, exact
            m: {"shape": list(w.shape), "data": base64.b64encode(zlib.compress(
                w.detach().cpu().double().contiguous().numpy().tobytes(), 6)).decode("ascii")}
            for m, w in fsa.weights.items()
        },
    }  # fmt: skip


_CHECK_FIELDS = ("effect_ci", "effect_greedy", "effect_sampled", "effect_removed", "effect_removed_ci")
"""Optional transition fields of a causal check (absent in files written before them)."""


def _optional(value: Any) -> Any:
    """None, a float or a pair of floats, exactly."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return [exact_float(float(v)) for v in value]
    return exact_float(float(value))


def to_json(fsa: FeatureAutomaton) -> str:
    """:func:`to_json_dict` as strict JSON text (no NaN tokens; ASCII, so the locale cannot matter)."""
    return json.dumps(to_json_dict(fsa), ensure_ascii=True, allow_nan=False, default=_json_default)


# --------------------------------------------------------------------------- load, save


def load(path: str | os.PathLike[str]) -> FeatureAutomaton:
    """Rebuild an automaton from a ``.json`` file written by :func:`save` (``FeatureAutomaton.load``)."""
    from sae_circuits.writers import load

    return load(path, "automaton")


def save(fsa: FeatureAutomaton, path: str | os.PathLike[str]) -> Path:
    """Write ``fsa`` atomically in the format its suffix names (:mod:`sae_circuits.writers`: ``.json``,
    ``.graphml``, ``.dot``, ``.html``, ...); only ``.json`` loads back (:func:`load`).

    >>> with sc.spliced(model, saes):
    ...     fsa = sc.automaton(model, texts[:4], max_states=8, attention_contexts=0,
    ...                        effect_contexts=2, effect_positions=4)
    >>> save(fsa, "markup.html").name, save(fsa, "markup.json").name
    ('markup.html', 'markup.json')
    >>> load("markup.json").firing.equal(fsa.firing)
    True
    """
    from sae_circuits.writers import save

    return save(fsa, path)
