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
    nodes, edges, order, dtypes."""
    path, raw = read_json(path, "graph")
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
        labels=[
            json_get(path, "a graph JSON", node, "clerp", at=f"nodes[{i}]") for i, node in enumerate(nodes)
        ],
        edges=edges,
        metadata=json_get(path, "a graph JSON", ours, "metadata", at="metadata.sae_circuits"),
        **columns,
    )


# --------------------------------------------------------------------------- automata


def _read_optional(path: Path, where: str, value: Any) -> Any:
    try:
        if value is None:
            return None
        if isinstance(value, list):
            if len(value) != 2:
                raise ValueError(f"{len(value)} numbers")
            return (float(value[0]), float(value[1]))
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: {where} is {value!r}; expected null, a number or [low, high] ({err})"
        ) from None


def _firing(path: Path, raw: Any) -> torch.Tensor:
    shape = json_get(path, "an automaton JSON", raw, "shape", at="firing")
    encoding = json_get(path, "an automaton JSON", raw, "encoding", at="firing")
    if encoding != _FIRING_ENCODING:
        raise ValueError(
            f"{path}: firing encoding {encoding!r} is not supported (reads {_FIRING_ENCODING!r})"
        )
    if not (
        isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and n >= 0 for n in shape)
    ):
        raise ValueError(f"{path}: firing.shape is {shape!r}; expected [tokens, states]")
    try:
        packed = zlib.decompress(
            base64.b64decode(json_get(path, "an automaton JSON", raw, "data", at="firing"), validate=True)
        )
    except (binascii.Error, zlib.error, TypeError, ValueError) as err:
        raise ValueError(f"{path}: firing.data is corrupt ({err})") from err
    count = shape[0] * shape[1]
    if len(packed) != (count + 7) // 8:
        raise ValueError(
            f"{path}: firing.data holds {len(packed)} bytes; shape {shape} needs {(count + 7) // 8}"
        )
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=count, bitorder="little")
    return torch.from_numpy(bits.astype(bool).reshape(shape))


def read_automaton(path: str | os.PathLike[str]) -> FeatureAutomaton:
    """Rebuild an automaton from a ``.json`` file written by :func:`~sae_circuits.fsa.export.save`
    (tensors on the CPU; ``lengths`` as int64)."""
    path, raw = read_json(path, "automaton")
    version = json_get(path, "an automaton JSON", raw, "format_version")
    if json_get(path, "an automaton JSON", raw, "format") != FORMAT or version != AUTOMATON_VERSION:
        raise ValueError(f"{path}: format {raw['format']!r} version {version!r} is not supported "
                         f"(reads {FORMAT!r} version {AUTOMATON_VERSION})")  # fmt: skip
    states = []
    for i, row in enumerate(json_get(path, "an automaton JSON", raw, "states")):
        f = {
            k: json_get(path, "an automaton JSON", row, k, at=f"states[{i}]")
            for k in ("id", "members", "label", "frequency", "max_activation")
        }
        states.append(State(
            id=int(f["id"]), members=[(str(site), int(index)) for site, index in f["members"]],
            label=f["label"], frequency=float(f["frequency"]), max_activation=float(f["max_activation"]),
            pin_values=[float(v) for v in row.get("pin_values", [])],
            coherence=float(row.get("coherence", 1.0)),
        ))  # fmt: skip
    transitions = []
    for k, row in enumerate(json_get(path, "an automaton JSON", raw, "transitions")):
        keys = ("src", "dst", "mechanism", "weight", "tokens", "effect", "confirmed")
        f = {key: json_get(path, "an automaton JSON", row, key, at=f"transitions[{k}]") for key in keys}
        if f["mechanism"] not in _MECHANISMS:
            raise ValueError(
                f"{path}: transitions[{k}].mechanism is {f['mechanism']!r}; expected one of {_MECHANISMS}"
            )
        if f["confirmed"] not in (None, True, False):
            raise ValueError(
                f"{path}: transitions[{k}].confirmed is {f['confirmed']!r}; expected true, false or null"
            )
        transitions.append(Transition(
            src=int(f["src"]), dst=int(f["dst"]), mechanism=f["mechanism"], weight=float(f["weight"]),
            tokens={str(x): int(n) for x, n in f["tokens"].items()},
            effect=None if f["effect"] is None else float(f["effect"]), confirmed=f["confirmed"],
            **{key: _read_optional(path, f"transitions[{k}].{key}", row.get(key)) for key in _CHECK_FIELDS},
        ))  # fmt: skip
    return FeatureAutomaton(
        states=states,
        transitions=transitions,
        firing=_firing(path, json_get(path, "an automaton JSON", raw, "firing")),
        lengths=torch.tensor(json_get(path, "an automaton JSON", raw, "lengths"), dtype=torch.long),
        metadata=json_get(path, "an automaton JSON", raw, "metadata"),
        weights={m: _weights(path, m, w) for m, w in raw.get("weights", {}).items()},
        tokens=None if raw.get("tokens") is None else torch.tensor(raw["tokens"], dtype=torch.long),
    )


def _weights(path: Path, mechanism: str, raw: Any) -> torch.Tensor:
    try:
        shape = [int(n) for n in raw["shape"]]
        data = zlib.decompress(base64.b64decode(raw["data"], validate=True))
        values = np.frombuffer(data, dtype=np.float64).copy()
        return torch.from_numpy(values).reshape(shape)
    except (KeyError, TypeError, ValueError, zlib.error, RuntimeError) as err:
        raise ValueError(f"{path}: weights[{mechanism!r}] is corrupt ({err})") from err
