"""The writer registry (sae_circuits.writers): discovery, suffix errors, the CSV edge list (a format
added as one file), and what reads the registry: ``save``/``load``, the CLI's ``--out`` and ``serve``."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import torch

from sae_circuits import writers
from sae_circuits.fsa.automaton import FeatureAutomaton, Transition
from sae_circuits.graph.attribution_graph import AttributionGraph
from sae_circuits.serve import SERVED_SUFFIXES, serve
from sae_circuits.writers import csv_edges
from tests.test_fsa_score_export import fsa_from_firing
from tests.test_graph_export import make_graph


@pytest.fixture
def g() -> AttributionGraph:
    return make_graph()


@pytest.fixture
def fsa() -> FeatureAutomaton:
    transitions = [
        Transition(0, 1, "token", 0.5, {"<": 3, "a": 1}, effect=0.25, confirmed=True),
        Transition(1, 0, "attention", math.inf),
        Transition(1, 1, "token", 0.125, {'"x"\n': 2}, effect=-0.5, confirmed=False),
    ]
    return fsa_from_firing([[1, 0], [0, 1], [1, 1]], transitions)


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


# --------------------------------------------------------------------------- registry


def test_every_writer_module_is_discovered():
    package = Path(writers.__file__).parent
    modules = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")}
    assert {w.module.__name__.rsplit(".", 1)[1] for w in writers.writers()} == modules
    assert [w.name for w in writers.writers()] == ["json", "graphml", "dot", "html", "csv"]
    for kind in writers.KINDS:
        assert writers.suffixes(kind) == [".json", ".graphml", ".dot", ".html", ".csv"]
    assert [w.name for w in writers.writers() if w.loads_back] == ["json"]
    assert writers.suffix_list("graph") == ".json, .graphml, .dot, .html or .csv"


def test_a_new_writer_is_one_file(tmp_path, g, monkeypatch):
    """A module dropped into the package's path is a format: nothing else to edit."""
    (tmp_path / "tab_separated.py").write_text(
        "NAME = 'tsv'\nSUFFIXES = ('.tsv',)\nWRITES = ('graph',)\nORDER = 99\n"
        "def write(obj, path):\n"
        "    from sae_circuits._files import atomic_write_text\n"
        "    return atomic_write_text(path, '\\n'.join(obj.node_ids()))\n"
    )
    monkeypatch.setattr(writers, "__path__", [*writers.__path__, str(tmp_path)])
    writers._registry.cache_clear()
    try:
        assert writers.suffixes("graph")[-1] == ".tsv" and ".tsv" not in writers.suffixes("automaton")
        assert g.save(tmp_path / "g.tsv").read_text().split("\n") == g.node_ids()
    finally:
        monkeypatch.undo()
        writers._registry.cache_clear()
        sys.modules.pop("sae_circuits.writers.tab_separated", None)
    assert ".tsv" not in writers.suffixes()


def test_a_malformed_writer_is_named(tmp_path, monkeypatch):
    (tmp_path / "half_done.py").write_text("NAME = 'x'\nSUFFIXES = ('.x',)\n")
    monkeypatch.setattr(writers, "__path__", [*writers.__path__, str(tmp_path)])
    writers._registry.cache_clear()
    try:
        with pytest.raises(TypeError, match=r"half_done does not declare WRITES, ORDER, write"):
            writers.writers()
    finally:
        monkeypatch.undo()
        writers._registry.cache_clear()
        sys.modules.pop("sae_circuits.writers.half_done", None)


def test_unknown_suffix_names_it_and_the_known_ones(g, fsa, tmp_path):
    known = r"\.json, \.graphml, \.dot, \.html, \.csv"
    with pytest.raises(ValueError, match=rf"unsupported suffix '\.xlsx'; supported: {known}"):
        g.save(tmp_path / "g.xlsx")
    with pytest.raises(ValueError, match=rf"unsupported suffix '\.parquet'; supported: {known}"):
        fsa.save(tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=r"unsupported suffix ''"):
        writers.save(g, tmp_path / "no_suffix")
    assert not list(tmp_path.iterdir())
    with pytest.raises(TypeError, match="cannot save a dict"):
        writers.save({}, tmp_path / "x.json")
    with pytest.raises(ValueError, match=r"'\.csv' is a view; only '\.json' loads back"):
        AttributionGraph.load(g.save(tmp_path / "g.csv"))
    with pytest.raises(ValueError, match=r"'\.txt' is not a format of sae_circuits"):
        FeatureAutomaton.load(tmp_path / "a.txt")


def test_suffixes_are_case_insensitive_and_writes_are_atomic(g, tmp_path, full_disk):
    assert writers.writer_for("G.CSV").name == "csv"
    path = tmp_path / "g.csv"
    path.write_text("old")
    full_disk()
    with pytest.raises(OSError, match="disk full"):
        g.save(path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["g.csv"]


def test_listing_the_writers_does_not_load_torch():
    code = (
        "import sys; from sae_circuits import writers, serve; "
        "assert '.csv' in writers.suffixes() and '.csv' in serve.SERVED_SUFFIXES; "
        "assert 'torch' not in sys.modules, 'torch loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- CSV


def test_csv_round_trips_the_graph_edges(g, tmp_path):
    table = rows(g.save(tmp_path / "g.csv"))
    assert list(table[0]) == list(csv_edges.GRAPH_HEADER)
    index = {node_id: i for i, node_id in enumerate(g.node_ids())}
    assert torch.equal(torch.tensor([index[r["source"]] for r in table]), g.edges.source)
    assert torch.equal(torch.tensor([index[r["target"]] for r in table]), g.edges.target)
    weights = torch.tensor([float(r["weight"]) for r in table], dtype=torch.float32)
    assert torch.equal(weights, g.edges.weight)
    first_order = g.first_order_edges().tolist()
    for k, r in enumerate(table):
        s, t = int(g.edges.source[k]), int(g.edges.target[k])
        assert r["source_label"] == g.labels[s].replace("\x07", "\\x07").replace("\x1b", "\\x1b")
        assert int(r["target_feature"]) == int(g.index[t]) and int(r["source_layer"]) == int(g.layer[s])
        assert (
            int(r["source_position"]) == int(g.position[s])
            and r["first_order"] == str(first_order[k]).lower()
        )
    assert {r["source_kind"] for r in table} <= {"token", "feature", "error", "other"}


def test_csv_of_an_automaton_lists_its_transitions(fsa, tmp_path):
    table = rows(fsa.save(tmp_path / "a.csv"))
    assert list(table[0]) == list(csv_edges.AUTOMATON_HEADER)
    assert [(int(r["source"]), int(r["target"]), float(r["weight"])) for r in table] == [
        (t.src, t.dst, t.weight) for t in fsa.transitions
    ]
    assert [r["confirmed"] for r in table] == ["true", "", "false"]
    assert [r["effect"] for r in table] == ["0.25", "", "-0.5"] and table[1]["weight"] == "inf"
    assert table[0]["tokens"] == '"<" "a"' and table[0]["source_label"] == "s0"


def test_csv_of_an_empty_graph_is_its_header(g, tmp_path):
    empty = g.subgraph(torch.zeros(g.n_nodes, dtype=torch.bool), torch.zeros(g.n_edges, dtype=torch.bool))
    text = empty.save(tmp_path / "e.csv").read_text()
    assert text == ",".join(csv_edges.GRAPH_HEADER) + "\n" and text.startswith(csv_edges.SIGNATURE)


# --------------------------------------------------------------------------- CLI and serve


def test_cli_writes_a_csv(tmp_path, capsys):
    from sae_circuits.cli import main

    out = tmp_path / "x.csv"
    assert main(["graph", "--prompt", "def foo(x):\n    return", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    table = rows(out)
    assert table and {"token", "feature"} <= {r["source_kind"] for r in table}
    assert main(["graph", "--prompt", "x", "--out", str(tmp_path / "g.xlsx")]) == 2
    assert ".html or .csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["graph", "--help"])
    assert ".html or .csv" in " ".join(capsys.readouterr().out.split())


def test_serve_lists_and_serves_a_csv_it_wrote_and_no_other(g, fsa, tmp_path):
    assert ".csv" in SERVED_SUFFIXES
    g.save(tmp_path / "graph.csv")
    fsa.save(tmp_path / "sub" / "automaton.csv")
    (tmp_path / "data.csv").write_text("1,2\n")  # not the library's: neither listed nor served
    srv = serve(tmp_path, port=0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        with urllib.request.urlopen(base + "/api/list") as response:
            listed = {f["path"]: f for f in json.load(response)["files"]}
        assert set(listed) == {"graph.csv", "sub/automaton.csv"}
        with urllib.request.urlopen(base + "/graph.csv") as response:
            assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
            assert response.read() == (tmp_path / "graph.csv").read_bytes()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(base + "/data.csv")
        with urllib.request.urlopen(base + "/") as response:
            assert "graph.csv" in response.read().decode()
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
