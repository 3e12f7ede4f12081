"""``.csv``: an edge list for spreadsheets, pandas and graph tools; a view (it does not load back).

One row per edge, in the object's order, with a header; the first three columns are always
``source,target,weight`` (what ``serve`` checks before serving a ``.csv``):

- attribution graph: one row per stored edge ``A[target, source]`` (repeated pairs stay separate
  rows, as in ``g.edges``), ``source``/``target`` the node ids of ``g.node_ids()``, ``weight`` the
  edge's float32 weight (the shortest text that reads back to the same float32); then, for each
  end, its ``kind``, ``layer``, ``position``, ``feature`` (feature index, or token id for tokens and
  token targets; -1 otherwise) and ``label``; and ``first_order`` (``true`` where the edge crosses
  an MLP that no dictionary replaces).
- automaton: one row per transition, ``source``/``target`` the state ids, ``weight`` the
  transition's; then ``mechanism``, ``tokens`` (the top tokens, quoted), ``effect`` (empty when not
  validated), ``confirmed`` (``true``/``false``/empty) and both states' labels.

Labels are made printable (control characters but tab and newline as ``\\xNN``); NaN and
infinities are written as ``nan``/``inf``/``-inf``, which ``float()`` reads back. UTF-8, ``\\n``
line ends.

>>> with sc.spliced(model, transcoders):
...     graph = sc.attribute(model, "def foo(x):\\n    return")
>>> print(graph.save("graph.csv").read_text()[:50])
source,target,weight,source_kind,source_layer,sour
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from sae_circuits._files import atomic_write_text
from sae_circuits.writers import kind_of

NAME = "csv"
SUFFIXES = (".csv",)
WRITES = ("graph", "automaton")
ORDER = 50
MEDIA_TYPE = "text/csv; charset=utf-8"
SIGNATURE = "source,target,weight,"

_NODE_COLUMNS = ("kind", "layer", "position", "feature", "label")
GRAPH_HEADER = (
    "source", "target", "weight", *(f"source_{c}" for c in _NODE_COLUMNS),
    *(f"target_{c}" for c in _NODE_COLUMNS), "first_order",
)  # fmt: skip
AUTOMATON_HEADER = (
    "source", "target", "weight", "mechanism", "tokens", "effect", "confirmed",
    "source_label", "target_label",
)  # fmt: skip


def write(obj: Any, path: Path) -> Path:
    """Write ``obj``'s edges (a graph) or transitions (an automaton) as CSV."""
    return atomic_write_text(path, to_csv(obj))


def to_csv(obj: Any) -> str:
    """The CSV text :func:`write` writes."""
    buffer = io.StringIO()
    rows = csv.writer(buffer, lineterminator="\n")
    if kind_of(obj) == "graph":
        rows.writerow(GRAPH_HEADER)
        rows.writerows(_graph_rows(obj))
    else:
        rows.writerow(AUTOMATON_HEADER)
        rows.writerows(_automaton_rows(obj))
    return buffer.getvalue()


def _graph_rows(g: Any) -> list[list[Any]]:
    from sae_circuits._export_io import printable
    from sae_circuits.graph.influence import NodeKind

    ids = g.node_ids()
    kinds = [NodeKind(k).name.lower() for k in g.kind.tolist()]
    layer, position, index = g.layer.tolist(), g.position.tolist(), g.index.tolist()
    nodes = [(kinds[i], layer[i], position[i], index[i], printable(g.labels[i])) for i in range(g.n_nodes)]
    first_order = g.first_order_edges().tolist()
    weights = [str(w) for w in g.edges.weight.detach().cpu().numpy()]  # numpy: shortest float32 text
    return [
        [ids[s], ids[t], w, *nodes[s], *nodes[t], str(f).lower()]
        for s, t, w, f in zip(g.edges.source.tolist(), g.edges.target.tolist(), weights, first_order)
    ]


def _automaton_rows(fsa: Any) -> list[list[Any]]:
    from sae_circuits._export_io import printable
    from sae_circuits.fsa.viewer import top_tokens

    labels = {s.id: printable(s.label) for s in fsa.states}
    return [
        [t.src, t.dst, repr(float(t.weight)), t.mechanism, printable(top_tokens(t.tokens)),
         "" if t.effect is None else repr(float(t.effect)),
         "" if t.confirmed is None else str(bool(t.confirmed)).lower(),
         labels.get(t.src, ""), labels.get(t.dst, "")]
        for t in fsa.transitions
    ]  # fmt: skip
