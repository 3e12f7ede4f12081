"""Reading back the ``.json`` files of :mod:`sae_circuits.writers.json_file` (graphs and automata):
every key checked, errors naming the file and the key. Imported only when a file is loaded.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_circuits._export_io import json_get, read_json
from sae_circuits.fsa.automaton import FeatureAutomaton, State, Transition
from sae_circuits.fsa.export import _CHECK_FIELDS, _FIRING_ENCODING, _MECHANISMS, FORMAT
from sae_circuits.fsa.export import FORMAT_VERSION as AUTOMATON_VERSION
from sae_circuits.graph.attribution_graph import AttributionGraph
from sae_circuits.graph.export import _FLOAT_COLUMNS, _INT_COLUMNS, FORMAT_VERSION
from sae_circuits.graph.influence import Edges

# --------------------------------------------------------------------------- attribution graphs


def read_graph(path: str | os.PathLike[str]) -> AttributionGraph:
    """Rebuild a graph from a ``.json`` file written by :func:`~sae_circuits.graph.export.save`: same
    nodes, edges, order, dtypes. A graph JSON written by circuit-tracer (no ``metadata.sae_circuits``,
    but its ``scan``/``prompt_tokens``) is read by :func:`read_circuit_tracer_graph`."""
    path, raw = read_json(path, "graph")
    meta = raw.get("metadata") if isinstance(raw, dict) else None
    if isinstance(meta, dict) and "sae_circuits" not in meta and {"scan", "prompt_tokens"} & meta.keys():
        return read_circuit_tracer_graph(
            path, raw
        )  # not ours: the front end's schema, as circuit-tracer writes
    ours = json_get(path, "a graph JSON", raw, "metadata", "sae_circuits")
    version = json_get(path, "a graph JSON", ours, "format_version", at="metadata.sae_circuits")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r} is not supported (reads {FORMAT_VERSION})")
    nodes = json_get(path, "a graph JSON", raw, "nodes")
    rows = [json_get(path, "a graph JSON", node, "sc", at=f"nodes[{i}]") for i, node in enumerate(nodes)]
    columns = {}
    for c, dtype in {**dict.fromkeys(_INT_COLUMNS, torch.long), **_FLOAT_COLUMNS}.items():
        cast = int if dtype == torch.long else float  # float() also reads our "nan"/"inf" strings
        values = [
            cast(json_get(path, "a graph JSON", row, c, at=f"nodes[{i}].sc")) for i, row in enumerate(rows)
        ]
        columns[c] = torch.tensor(values, dtype=dtype)
    index = {
        json_get(path, "a graph JSON", node, "node_id", at=f"nodes[{i}]"): i for i, node in enumerate(nodes)
    }
    triplets = []
    for k, link in enumerate(json_get(path, "a graph JSON", raw, "links")):
        t, s, w = (
            json_get(path, "a graph JSON", link, key, at=f"links[{k}]")
            for key in ("target", "source", "weight")
        )
        if t not in index or s not in index:
            raise ValueError(f"{path}: links[{k}] refers to an unknown node ({s!r} -> {t!r})")
        triplets.append((index[t], index[s], math.nan if w is None else float(w)))
    target, source, weight = zip(*triplets) if triplets else ((), (), ())
    edges = Edges(
        torch.tensor(target, dtype=torch.long),
        torch.tensor(source, dtype=torch.long),
        torch.tensor(weight, dtype=torch.float32),
    )
    return AttributionGraph(
        prompt=json_get(path, "a graph JSON", raw, "metadata", "prompt"),
        tokens=list(json_get(path, "a graph JSON", ours, "tokens", at="metadata.sae_circuits")),
        token_strings=list(json_get(path, "a graph JSON", raw, "metadata", "prompt_tokens")),
        sites=list(json_get(path, "a graph JSON", ours, "sites", at="metadata.sae_circuits")),
        labels=[  # "label": the label when the clerp was adapted for the front end (logit directions)
            row["label"]
            if "label" in row
            else json_get(path, "a graph JSON", node, "clerp", at=f"nodes[{i}]")
            for i, (node, row) in enumerate(zip(nodes, rows))
        ],
        edges=edges,
        metadata=json_get(path, "a graph JSON", ours, "metadata", at="metadata.sae_circuits"),
        **columns,
    )


# --------------------------------------------------------------------------- circuit-tracer's graphs

CIRCUIT_TRACER_SCHEMA = 1
_CT = "a circuit-tracer graph JSON"


def _ct_get(path: Path, obj: Any, *keys: str, at: str = "") -> Any:
    """``obj[key0][key1]...``, or a ValueError naming the file and the first missing key."""
    return json_get(path, _CT, obj, *keys, at=at, by=None)


def _ct_int(path: Path, value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{path}: {where} is {value!r}; expected an integer")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}: {where} is {value!r}; expected an integer") from None


def _ct_header(path: Path, raw: Any) -> tuple[dict[str, Any], list[Any], list[Any], list[Any]]:
    """``(metadata, prompt_tokens, nodes, links)`` of a circuit-tracer file, checked."""
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not {_CT} (the top level is not an object)")
    meta = _ct_get(path, raw, "metadata")
    version = meta.get("schema_version", 0) if isinstance(meta, dict) else 0
    version = 0 if version is None else version
    if isinstance(version, bool) or not isinstance(version, int) or version > CIRCUIT_TRACER_SCHEMA:
        raise ValueError(
            f"{path}: schema_version {version!r} is newer than this version of sae_circuits reads "
            f"(up to {CIRCUIT_TRACER_SCHEMA}); upgrade sae_circuits"
        )
    strings, _ = (
        _ct_get(path, meta, "prompt_tokens", at="metadata"),
        _ct_get(path, meta, "prompt", at="metadata"),
    )
    nodes, links = _ct_get(path, raw, "nodes"), _ct_get(path, raw, "links")
    if not (isinstance(strings, list) and isinstance(nodes, list) and isinstance(links, list)):
        raise ValueError(f"{path}: metadata.prompt_tokens, nodes and links must be lists")
    return meta, strings, nodes, links


class _CTNodes:
    """The node table of a circuit-tracer file, one node at a time (see :func:`read_circuit_tracer_graph`)."""

    def __init__(self, path: Path, strings: list[Any], nodes: list[Any]) -> None:
        self.path, self.strings = path, strings
        self.fields = [
            {
                k: _ct_get(path, node, k, at=f"nodes[{i}]")
                for k in ("node_id", "layer", "ctx_idx", "feature_type")
            }
            for i, node in enumerate(nodes)
        ]
        logit_layers = [
            _ct_int(path, f["layer"], "a logit's layer") for f in self.fields if f["feature_type"] == "logit"
        ]
        layers = {
            _ct_int(path, f["layer"], f"nodes[{i}].layer")
            for i, f in enumerate(self.fields)
            if f["feature_type"] not in ("logit", "embedding")
        }
        self.site_layers = sorted(layers)
        last = max(logit_layers) - 1 if logit_layers else None
        self.n_layers = last if last is not None else (self.site_layers[-1] + 1 if self.site_layers else 0)
        self.sites = [f"blocks.{layer}.hook_mlp_out" for layer in self.site_layers]
        self.tokens = [-1] * len(strings)
        self.columns: dict[str, list[Any]] = {k: [] for k in (*_INT_COLUMNS, *_FLOAT_COLUMNS)}
        self.labels: list[str] = []
        self.index_of: dict[Any, int] = {}
        for i, node in enumerate(nodes):
            self.add(i, node)

    def _id_number(self, at: str, node_id: Any, layout: str) -> int:
        parts = str(node_id).split("_")
        return _ct_int(self.path, parts[1] if len(parts) == 3 else None, f"{at}.node_id ({layout})")

    def add(self, i: int, node: dict[str, Any]) -> None:
        """Append node ``i``."""
        from sae_circuits.graph.build import short_site_name, unembedding_stage
        from sae_circuits.graph.influence import NodeKind
        from sae_circuits.graph.replacement import stage_of

        f, at, n = self.fields[i], f"nodes[{i}]", len(self.strings)
        pos = _ct_int(self.path, f["ctx_idx"], f"{at}.ctx_idx")
        if not 0 <= pos < n:
            raise ValueError(f"{self.path}: {at}.ctx_idx {pos} is outside the prompt's {n} tokens")
        clerp, kind_name = node.get("clerp") or "", f["feature_type"]
        activation, weight, site, index = 0.0, 0.0, -1, -1
        if kind_name == "embedding":
            kind, layer, stage = NodeKind.TOKEN, -1, 0
            index = self.tokens[pos] = self._id_number(at, f["node_id"], "E_token_pos")
            label = clerp or str(self.strings[pos])
        elif kind_name == "logit":
            kind, layer, stage = NodeKind.TARGET, self.n_layers, unembedding_stage(self.n_layers)
            index = self._id_number(at, f["node_id"], "layer_token_pos")
            activation = weight = float(node.get("token_prob") or 0.0)
            label = clerp or f"Output {index} (p={weight:.3f})"
        else:
            layer = _ct_int(self.path, f["layer"], f"{at}.layer")
            site = self.site_layers.index(layer)
            stage, name = stage_of(self.sites[site]), short_site_name(self.sites[site])
            if "error" in str(kind_name):
                kind, label = NodeKind.ERROR, clerp or f"{name} error"
            else:
                kind, index = NodeKind.FEATURE, self._id_number(at, f["node_id"], "layer_index_pos")
                value = node.get("activation")
                activation = float(value) if isinstance(value, (int, float)) else math.nan
                label = clerp or f"{name} #{index}"
        if f["node_id"] in self.index_of:
            raise ValueError(f"{self.path}: {at}.node_id {f['node_id']!r} appears twice")
        self.index_of[f["node_id"]] = i
        for c, v in zip(_INT_COLUMNS, (int(kind), site, layer, stage, pos, index)):
            self.columns[c].append(v)
        self.columns["activation"].append(activation)
        self.columns["target_weight"].append(weight)
        self.labels.append(str(label))

    def edges(self, links: list[Any]) -> Edges:
        """The links as edges between the nodes' rows."""
        triplets = []
        for k, link in enumerate(links):
            s, t, w = (
                _ct_get(self.path, link, key, at=f"links[{k}]") for key in ("source", "target", "weight")
            )
            if t not in self.index_of or s not in self.index_of:
                raise ValueError(f"{self.path}: links[{k}] refers to an unknown node ({s!r} -> {t!r})")
            if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float))):
                raise ValueError(f"{self.path}: links[{k}].weight is {w!r}; expected a number")
            triplets.append((self.index_of[t], self.index_of[s], math.nan if w is None else float(w)))
        targets, sources, weights = zip(*triplets) if triplets else ((), (), ())
        return Edges(
            torch.tensor(targets, dtype=torch.long),
            torch.tensor(sources, dtype=torch.long),
            torch.tensor(weights, dtype=torch.float32),
        )


def read_circuit_tracer_graph(path: str | os.PathLike[str], raw: Any = None) -> AttributionGraph:
    """An :class:`AttributionGraph` from a graph JSON written by circuit-tracer
    (``create_graph_files``, schema_version 1, the front end's schema): one site
    ``blocks.{layer}.hook_mlp_out`` per transcoder layer, feature indices from the node ids
    (``{layer}_{index}_{pos}``), token ids from ``E_{token}_{pos}``, logit targets weighted by
    ``token_prob``. Clear errors for a newer schema, a truncated file or a missing key.

    Nodes the file does not hold (pruned away by circuit-tracer) are absent: influence, pruning
    and scores are those of the graph as written."""
    if raw is None:
        path, raw = read_json(path, "graph")
    path = Path(path)
    meta, strings, nodes, links = _ct_header(path, raw)
    table = _CTNodes(path, strings, nodes)
    kept: dict[str, Any] = {
        k: meta[k] for k in ("slug", "scan", "transcoder_list", "node_threshold") if k in meta
    }
    return AttributionGraph(
        prompt=str(meta["prompt"]),
        tokens=table.tokens,
        token_strings=[str(x) for x in strings],
        sites=table.sites,
        labels=table.labels,
        activation=torch.tensor(table.columns["activation"], dtype=torch.float32),
        target_weight=torch.tensor(table.columns["target_weight"], dtype=torch.float64),
        edges=table.edges(links),
        metadata={
            "source": "circuit-tracer",
            "model": str(meta.get("scan") or ""),
            "n_layers": table.n_layers,
            **kept,
        },
        **{c: torch.tensor(table.columns[c], dtype=torch.long) for c in _INT_COLUMNS},
    )


# --------------------------------------------------------------------------- automata


def _inflate(compressed: bytes, size: int) -> bytes:
    """``zlib.decompress``, refusing more than ``size`` bytes before making them (a small file must
    not inflate into gigabytes before its length is checked)."""
    inflater = zlib.decompressobj()
    data = inflater.decompress(compressed, size + 1)
    if len(data) > size or inflater.unconsumed_tail:
        raise ValueError(f"it inflates past the {size} bytes its shape needs")
    data += inflater.flush()
    if not inflater.eof:
        raise ValueError("the compressed stream is cut short")
    return data


def _firing(path: Path, raw: Any) -> torch.Tensor:
    shape = json_get(path, "an automaton JSON", raw, "shape", at="firing")
    encoding = json_get(path, "an automaton JSON", raw, "encoding", at="firing")
    if encoding != _FIRING_ENCODING:
        raise ValueError(
            f"{path}: firing encoding {encoding!r} is not supported (reads {_FIRING_ENCODING!r})"
        )
    if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(n) and n >= 0 for n in shape)):
        raise ValueError(f"{path}: firing.shape is {shape!r}; expected [tokens, states]")
    count = shape[0] * shape[1]
    try:
        text = json_get(path, "an automaton JSON", raw, "data", at="firing")
        packed = _inflate(base64.b64decode(text, validate=True), (count + 7) // 8)
    except (binascii.Error, zlib.error, TypeError, ValueError) as err:
        raise ValueError(f"{path}: firing.data is corrupt ({err})") from err
    if len(packed) != (count + 7) // 8:
        raise ValueError(
            f"{path}: firing.data holds {len(packed)} bytes; shape {shape} needs {(count + 7) // 8}"
        )
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=count, bitorder="little")
    return torch.from_numpy(bits.astype(bool).reshape(shape))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Fields:
    """Typed reads of one automaton file's values, each error naming the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, value: Any, expected: str) -> ValueError:
        return ValueError(f"{self.path}: {where} is {value!r:.80}; expected {expected}")

    def get(self, obj: Any, key: str, at: str = "") -> Any:
        return json_get(self.path, "an automaton JSON", obj, key, at=at)

    def integer(self, where: str, value: Any, low: int | None = None) -> int:
        if not _is_int(value) or (low is not None and value < low):
            raise self.fail(where, value, "an integer" + (f" >= {low}" if low is not None else ""))
        return int(value)

    def number(self, where: str, value: Any) -> float:
        # a JSON number, or the writer's "nan"/"inf"/"-inf" for the non-finite ones
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.fail(where, value, 'a number (or "nan", "inf", "-inf")')
        if isinstance(value, str) and value not in ("nan", "inf", "-inf"):
            raise self.fail(where, value, 'a number (or "nan", "inf", "-inf")')
        return float(value)

    def text(self, where: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(where, value, "a string")
        return value

    def array(self, where: str, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(where, value, "a list")
        return value

    def mapping(self, where: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, value, "an object")
        return value

    def optional(self, where: str, value: Any) -> Any:
        """None, a number or a pair of numbers (a causal check's optional fields)."""
        if value is None:
            return None
        if isinstance(value, list):
            if len(value) != 2:
                raise self.fail(where, value, "null, a number or [low, high]")
            return (self.number(where, value[0]), self.number(where, value[1]))
        return self.number(where, value)


def _state(f: _Fields, i: int, row: Any) -> State:
    at = f"states[{i}]"
    members = []
    for j, member in enumerate(f.array(f"{at}.members", f.get(row, "members", at))):
        if not (isinstance(member, list) and len(member) == 2):
            raise f.fail(f"{at}.members[{j}]", member, "[site, feature index]")
        members.append(
            (f.text(f"{at}.members[{j}]", member[0]), f.integer(f"{at}.members[{j}]", member[1], 0))
        )
    pins = [f.number(f"{at}.pin_values", v) for v in f.array(f"{at}.pin_values", row.get("pin_values", []))]
    if pins and len(pins) != len(members):
        raise f.fail(f"{at}.pin_values", pins, f"one value per member ({len(members)})")
    return State(
        id=f.integer(f"{at}.id", f.get(row, "id", at), 0),
        members=members,
        label=f.text(f"{at}.label", f.get(row, "label", at)),
        frequency=f.number(f"{at}.frequency", f.get(row, "frequency", at)),
        max_activation=f.number(f"{at}.max_activation", f.get(row, "max_activation", at)),
        pin_values=pins,
        coherence=f.number(f"{at}.coherence", row.get("coherence", 1.0)),
    )


def _transition(f: _Fields, k: int, row: Any, ids: set[int]) -> Transition:
    at = f"transitions[{k}]"
    mechanism = f.get(row, "mechanism", at)
    if mechanism not in _MECHANISMS:
        raise f.fail(f"{at}.mechanism", mechanism, f"one of {_MECHANISMS}")
    # "observed" is absent in files written before it
    verdicts = {"confirmed": f.get(row, "confirmed", at), "observed": row.get("observed")}
    for key, verdict in verdicts.items():
        if verdict is not None and not isinstance(verdict, bool):
            raise f.fail(f"{at}.{key}", verdict, "true, false or null")
    ends = {}
    for key in ("src", "dst"):
        ends[key] = f.integer(f"{at}.{key}", f.get(row, key, at))
        if ends[key] not in ids:
            raise f.fail(f"{at}.{key}", ends[key], "the id of one of the file's states")
    tokens = f.mapping(f"{at}.tokens", f.get(row, "tokens", at))
    effect = f.get(row, "effect", at)
    return Transition(
        src=ends["src"], dst=ends["dst"], mechanism=mechanism,
        weight=f.number(f"{at}.weight", f.get(row, "weight", at)),
        tokens={x: f.integer(f"{at}.tokens[{x!r}]", n, 0) for x, n in tokens.items()},
        effect=None if effect is None else f.number(f"{at}.effect", effect), **verdicts,
        **{key: f.optional(f"{at}.{key}", row.get(key)) for key in _CHECK_FIELDS},
    )  # fmt: skip


def read_automaton(path: str | os.PathLike[str]) -> FeatureAutomaton:
    """Rebuild an automaton from a ``.json`` file written by :func:`~sae_circuits.fsa.export.save`
    (tensors on the CPU; ``lengths`` as int64). Every value is type-checked and the parts must fit
    together (firing ``[sum(lengths), states]``, weights ``[states, states]``, transitions between
    the file's state ids), else a ``ValueError`` names the file and the key."""
    path, raw = read_json(path, "automaton")
    f = _Fields(path)
    fmt, version = f.get(raw, "format"), f.get(raw, "format_version")
    if fmt != FORMAT or not _is_int(version) or version != AUTOMATON_VERSION:
        raise ValueError(f"{path}: format {fmt!r} version {version!r} is not supported "
                         f"(reads {FORMAT!r} version {AUTOMATON_VERSION})")  # fmt: skip
    states = [_state(f, i, row) for i, row in enumerate(f.array("states", f.get(raw, "states")))]
    ids = [s.id for s in states]
    if len(set(ids)) != len(ids):
        raise f.fail("states[*].id", sorted(i for i in set(ids) if ids.count(i) > 1), "distinct ids")
    rows = f.array("transitions", f.get(raw, "transitions"))
    transitions = [_transition(f, k, row, set(ids)) for k, row in enumerate(rows)]
    firing = _firing(path, f.get(raw, "firing"))
    lengths = [f.integer("lengths", n, 0) for n in f.array("lengths", f.get(raw, "lengths"))]
    if list(firing.shape) != [sum(lengths), len(states)]:
        raise f.fail(
            "firing.shape", list(firing.shape), f"[sum(lengths), states] = [{sum(lengths)}, {len(states)}]"
        )
    weights = f.mapping("weights", raw.get("weights", {}))
    unknown = sorted(set(weights) - set(_MECHANISMS))
    if unknown:
        raise f.fail("weights", unknown, f"mechanisms among {_MECHANISMS}")
    tokens = raw.get("tokens")
    if tokens is not None:
        tokens = [f.integer("tokens", t, 0) for t in f.array("tokens", tokens)]
        if len(tokens) != sum(lengths):
            raise f.fail("tokens", f"{len(tokens)} ids", f"one per firing row ({sum(lengths)})")
    return FeatureAutomaton(
        states=states,
        transitions=transitions,
        firing=firing,
        lengths=torch.tensor(lengths, dtype=torch.long),
        metadata=f.mapping("metadata", f.get(raw, "metadata")),
        weights={m: _weights(path, m, w, len(states)) for m, w in weights.items()},
        tokens=None if tokens is None else torch.tensor(tokens, dtype=torch.long),
    )


def _weights(path: Path, mechanism: str, raw: Any, n_states: int) -> torch.Tensor:
    try:
        if not isinstance(raw, dict) or raw.get("shape") != [n_states, n_states]:
            raise ValueError(f"shape {raw.get('shape') if isinstance(raw, dict) else raw!r:.40}, expected "
                             f"[{n_states}, {n_states}] (states x states)")  # fmt: skip
        data = _inflate(base64.b64decode(raw["data"], validate=True), 8 * n_states * n_states)
        values = np.frombuffer(data, dtype=np.float64).copy()
        return torch.from_numpy(values).reshape(n_states, n_states)
    except (KeyError, TypeError, ValueError, zlib.error, RuntimeError) as err:
        raise ValueError(f"{path}: weights[{mechanism!r}] is corrupt ({err})") from err
