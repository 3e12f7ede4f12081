"""Graph exports on a hand-made 15-node graph: ids, the front end's JSON (lossless round trip),
GraphML, DOT, the HTML view (no script injection, no network), atomic writes and clear errors."""

from __future__ import annotations

import json
import re

import networkx as nx
import numpy as np
import pytest
import torch

from sae_circuits._export_io import printable, script_json
from sae_circuits.graph import export
from sae_circuits.graph.attribution_graph import AttributionGraph
from sae_circuits.graph.influence import Edges, NodeKind

T, F, E, L, O = NodeKind.TOKEN, NodeKind.FEATURE, NodeKind.ERROR, NodeKind.TARGET, NodeKind.OTHER
EVIL = "</script><script>alert(1)</script>"
TRICKY = 'say "hi" \\ there\nbye'
SITES = ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
# kind, site, layer, stage, position, index, activation, target_weight, label, expected id
NODES = [
    (T, -1, -1, 0, 0, 10, 0.0, 0.0, "Hello", "E_10_0"),
    (T, -1, -1, 0, 1, 20, 0.0, 0.0, TRICKY, "E_20_1"),
    (T, -1, -1, 0, 2, 30, 0.0, 0.0, EVIL, "E_30_2"),
    (F, 0, 0, 1, 0, 1, 1.2345678, 0.0, "café ☃", "0_1_0"),
    (F, 0, 0, 1, 1, 5, 0.1, 0.0, "bell\x07 and \x1b escape", "0_5_1"),
    (F, 1, 1, 2, 1, 0, 3.3, 0.0, "f", "1m_0_1"),
    (F, 1, 1, 2, 2, 1, 0.7, 0.0, "g", "1m_1_2"),  # "1_1_2" without the site suffix ...
    (F, 2, 1, 3, 2, 1, 2.5, 0.0, "h", "1r_1_2"),  # ... and so is this one
    (E, 0, 0, 1, 1, -1, 0.0, 0.0, "err 0", "0_error_1"),
    (E, 1, 1, 2, 2, -1, 0.0, 0.0, "err 1", "1m_error_2"),
    (O, 2, 1, 3, -1, -1, 0.0, 0.0, "other 1r", "1r_other"),
    (L, -1, 2, 4, 2, 40, 0.6, 0.6, 'Output " x" (p=0.600)', "3_40_2"),
    (L, -1, 2, 4, 2, 50, 0.3, 0.3, 'Output " y" (p=0.300)', "3_50_2"),
    (L, -1, 2, 4, 2, -1, 0.0, 0.1, "x - y", "3_dir0_2"),
    (L, 1, 1, 2, 2, 7, 0.9, 0.05, "feature target", "1m_7_2"),
]
# (target, source, weight); (11, 7) appears twice
EDGES = [
    (3, 0, 1.5), (4, 1, 0.75), (4, 0, -0.5), (5, 4, 2.0), (5, 8, 0.25), (6, 3, -1.0), (6, 2, 0.5),
    (7, 5, 1.25), (7, 6, 0.3), (11, 7, 3.0), (11, 9, -0.4), (12, 6, 1.0), (13, 7, -2.0), (14, 4, 0.6),
    (11, 7, 0.5), (10, 1, 0.2), (12, 10, 0.1),
]  # fmt: skip
IDS = [n[-1] for n in NODES]


def make_graph(nodes=NODES, edges=EDGES, **metadata) -> AttributionGraph:
    cols = list(zip(*nodes))
    target, source, weight = zip(*edges)
    meta = {
        "model": "tiny-gpt2",
        "n_layers": 2,
        "first_order_stages": [2],
        "nested": {"a": [1, 2.5, None, True]},
    }
    meta.update(metadata)
    return AttributionGraph(
        prompt='Hello "x"\n' + EVIL,
        tokens=[10, 20, 30],
        token_strings=["Hello", TRICKY, EVIL],
        sites=list(SITES),
        **{name: torch.tensor(cols[i], dtype=torch.long) for i, name in enumerate(export._INT_COLUMNS)},
        activation=torch.tensor(cols[6], dtype=torch.float32),
        target_weight=torch.tensor(cols[7], dtype=torch.float64),
        labels=list(cols[8]),
        edges=Edges(torch.tensor(target), torch.tensor(source), torch.tensor(weight, dtype=torch.float32)),
        metadata=meta,
    )


@pytest.fixture
def g() -> AttributionGraph:
    return make_graph()


def strict_loads(text: str):
    def refuse(name: str):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def assert_identical(a: AttributionGraph, b: AttributionGraph) -> None:
    assert a.equals(b)
    for name in (*export._INT_COLUMNS, *export._FLOAT_COLUMNS):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    for x, y in zip(a.edges, b.edges):
        assert x.dtype == y.dtype and torch.equal(x, y)


# --------------------------------------------------------------------------- ids


def test_node_ids(g):
    assert g.node_ids() == IDS


def test_node_ids_without_n_layers_and_ambiguous_sites(g):
    del g.metadata["n_layers"]  # falls back on the logit targets' layer: the same ids
    assert g.node_ids() == IDS
    assert export._site_labels(["blocks.0.hook_resid_mid", "blocks.0.hook_resid_post", "blocks.0.attn.hook_z"]) == [
        "0r0", "0r1", "0a",
    ]  # fmt: skip
    assert export._site_labels(["blocks.2.hook_z", "blocks.3.ln2.hook_normalized"]) == ["2", "3"]


def test_duplicate_ids_are_refused():
    twin = make_graph(nodes=[*NODES, NODES[6]])
    with pytest.raises(ValueError, match="duplicate node id '1m_1_2'"):
        twin.node_ids()


# --------------------------------------------------------------------------- JSON


def test_json_round_trip_is_exact(g, tmp_path):
    path = g.save(tmp_path / "g.json")
    assert path == tmp_path / "g.json"
    assert_identical(g, AttributionGraph.load(path))
    path.read_bytes().decode("ascii")  # ensure_ascii: independent of the locale's encoding


def test_json_follows_front_end_schema(g, tmp_path):
    raw = strict_loads(g.save(tmp_path / "g.json").read_text())
    meta = raw["metadata"]
    assert meta["prompt_tokens"] == g.token_strings and meta["prompt"] == g.prompt
    # the viewer's conventions (issue 15): scan names a dictionary set ("custom-..." for our own),
    # the slug is the file stem
    assert (
        meta["scan"].startswith("custom-") and meta["schema_version"] == 1 and meta["node_threshold"] is None
    )
    assert meta["slug"] == "g"
    assert raw["qParams"] == {
        "pinnedIds": [],
        "supernodes": [],
        "linkType": "both",
        "clickedId": "",
        "sg_pos": "",
    }
    fields = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
              "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}  # fmt: skip
    nodes = raw["nodes"]
    assert all(fields <= set(n) for n in nodes)
    # every logit clerp carries "(p=...)", which the viewer parses; other labels are kept as they are
    direction = IDS.index("3_dir0_2")
    assert [n["node_id"] for n in nodes] == IDS
    assert [n["clerp"] for n in nodes] == [
        *g.labels[:direction],
        'Output "x - y" (p=0.000)',
        *g.labels[direction + 1 :],
    ]
    by_id = {n["node_id"]: n for n in nodes}
    assert [by_id[i]["feature_type"] for i in ("E_10_0", "0_1_0", "0_error_1", "1r_other", "3_40_2", "3_dir0_2")] == [
        "embedding", "cross layer transcoder", "mlp reconstruction error", "other features", "logit", "logit",
    ]  # fmt: skip
    # a feature target is not a logit; block 1 hosts two sites, so each gets its own layer row
    assert (
        by_id["1m_7_2"]["feature_type"] == "cross layer transcoder" and not by_id["1m_7_2"]["is_target_logit"]
    )
    layers = [by_id[i]["layer"] for i in ("E_10_0", "0_1_0", "1m_7_2", "1r_1_2", "3_40_2", "3_dir0_2")]
    assert layers == ["E", "0", "1", "2", "3", "3"]
    # schema_version 1: tokens carry their position, features cantor(layer, index) = 20 for (0, 5)
    features = [by_id[i]["feature"] for i in ("E_20_1", "0_5_1", "0_error_1", "3_50_2", "3_dir0_2")]
    assert features == [1, 20, -1, 50, -1]
    assert by_id["3_40_2"]["token_prob"] == pytest.approx(0.6) and by_id["3_dir0_2"]["token_prob"] == 0.0
    assert by_id["0_1_0"]["reverse_ctx_idx"] == 2 and by_id["1r_other"]["reverse_ctx_idx"] == 0
    assert by_id["1m_error_2"]["jsNodeId"] == "1m_error-2" and by_id["E_30_2"]["jsNodeId"] == "E_30-2"
    # only the most likely logit is the target logit; influence is the cumulative share by rank
    # (the viewer's pruning slider), null on logits, reaching 1 on the weakest node of a full graph
    assert [n["node_id"] for n in nodes if n["is_target_logit"]] == ["3_40_2"]
    influence = g.influence().tolist()
    is_logit = [n["feature_type"] == "logit" for n in nodes]
    shares = [(n["influence"], influence[k]) for k, n in enumerate(nodes) if not is_logit[k]]
    assert all(n["influence"] is None for k, n in enumerate(nodes) if is_logit[k])
    assert all(0 < share <= 1 for share, _ in shares) and max(share for share, _ in shares) == pytest.approx(
        1.0
    )
    sources = [(n["influence"], influence[k]) for k, n in enumerate(nodes) if g.kind[k] != L]
    by_rank = sorted(sources, key=lambda pair: -pair[1])  # (feature targets also rank by their weight)
    assert [share for share, _ in by_rank] == sorted(share for share, _ in sources)
    assert by_id["0_1_0"]["influence"] > 0
    links = raw["links"]
    assert len(links) == g.n_edges and all(
        link["source"] in by_id and link["target"] in by_id for link in links
    )
    assert links[0] == {"source": "E_10_0", "target": "0_1_0", "weight": 1.5}


def test_json_is_strict_with_non_finite_values(g, tmp_path):
    g.activation[3], g.activation[4] = float("nan"), float("-inf")
    g.metadata["score"] = float("nan")
    raw = strict_loads(g.save(tmp_path / "g.json").read_text())
    assert (
        raw["nodes"][3]["activation"] is None and raw["metadata"]["sae_circuits"]["metadata"]["score"] is None
    )
    loaded = AttributionGraph.load(tmp_path / "g.json")
    torch.testing.assert_close(loaded.activation, g.activation, equal_nan=True, rtol=0, atol=0)


def test_pruned_graph_round_trips(g, tmp_path):
    pruned = g.prune(0.8, 0.98)
    assert 0 < pruned.n_nodes < g.n_nodes
    loaded = AttributionGraph.load(pruned.save(tmp_path / "pruned.json"))
    assert_identical(pruned, loaded)
    assert strict_loads((tmp_path / "pruned.json").read_text())["metadata"]["node_threshold"] == 0.8


def test_empty_edge_list_round_trips(tmp_path):
    g = make_graph(nodes=NODES[:3], edges=[(1, 0, 1.0)])
    g = g.subgraph(torch.ones(3, dtype=torch.bool), torch.zeros(1, dtype=torch.bool))
    assert_identical(g, AttributionGraph.load(g.save(tmp_path / "g.json")))


# --------------------------------------------------------------------------- networkx, GraphML, DOT


def test_to_networkx_sums_repeated_edges(g):
    graph = g.to_networkx()
    assert list(graph.nodes) == IDS and graph.number_of_edges() == g.n_edges - 1
    assert graph.edges["1r_1_2", "3_40_2"]["weight"] == pytest.approx(3.5)
    assert graph.edges["E_10_0", "0_5_1"]["weight"] == -0.5
    node = graph.nodes["1r_1_2"]
    assert node["kind"] == "feature" and node["site"] == "blocks.1.hook_resid_post" and node["index"] == 1
    assert graph.nodes["E_10_0"]["site"] == "" and graph.nodes["3_dir0_2"]["kind"] == "target"


def test_graphml_loads_back(g, tmp_path):
    path = g.save(tmp_path / "g.GraphML")  # suffixes are case-insensitive
    path.read_bytes().decode("ascii")
    graph = nx.read_graphml(path)
    assert list(graph.nodes) == IDS and graph.number_of_edges() == g.n_edges - 1
    assert graph.edges["1r_1_2", "3_40_2"]["weight"] == pytest.approx(3.5)
    assert graph.nodes["0_1_0"]["label"] == "café ☃" and graph.nodes["E_30_2"]["label"] == EVIL
    assert graph.nodes["0_5_1"]["label"] == "bell\\x07 and \\x1b escape"  # XML 1.0 forbids control characters
    g.sites[0] = "blocks.0.hook\x07odd"  # a site name from a loaded file: control characters too
    graph = nx.read_graphml(g.save(tmp_path / "odd.graphml"))
    assert graph.nodes["0_1_0"]["site"] == "blocks.0.hook\\x07odd"
    assert (
        graph.nodes["0_1_0"]["activation"] == pytest.approx(1.2345678) and graph.nodes["0_1_0"]["layer"] == 0
    )


def test_dot_quotes_and_escapes(g, tmp_path):
    text = g.save(tmp_path / "g.dot").read_text()
    assert text.startswith("digraph attribution {") and "rankdir=BT" in text and text.rstrip().endswith("}")
    quoted = r'"(?:[^"\\]|\\.)*"'
    bare = re.sub(quoted, "S", text)
    assert '"' not in bare and bare.count("{") == bare.count("}")  # every string closed, braces balanced
    labels = dict(re.findall(rf"^  ({quoted}) \[label=({quoted}), shape=\w+\];$", text, flags=re.MULTILINE))

    def unquote(s: str) -> str:
        return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), s[1:-1])

    assert [unquote(k) for k in labels] == IDS
    assert [unquote(v) for v in labels.values()] == [printable(label) for label in g.labels]
    assert r'"say \"hi\" \\ there\nbye"' in text
    edges = re.findall(r'-> "[^"]+" \[attribution="([^"]+)", color="(#\w+)", penwidth=([\d.]+)', text)
    assert len(edges) == g.n_edges
    for (weight, color, width), (_, _, w) in zip(edges, EDGES):
        assert (
            weight == str(np.float32(w))
            and color == ("#d62728" if w < 0 else "#1f77b4")
            and 0.5 <= float(width) <= 4
        )
    assert max(float(e[2]) for e in edges) == 4.0


# --------------------------------------------------------------------------- HTML


def _html_data(html: str) -> dict:
    match = re.search(
        r'<script type="application/json" id="graph-data">(.*?)</script>', html, flags=re.DOTALL
    )
    assert match
    return strict_loads(match.group(1))


def test_html_is_self_contained_and_injection_safe(g, tmp_path):
    html = g.save(tmp_path / "g.html").read_text()
    assert html.count("<script") == 2 and html.count("</script>") == 2  # ours only: EVIL is inert data
    assert "alert(1)</script>" not in html and "<!--" not in html
    assert "http://" not in html and "https://" not in html and not re.search(r"(src|href)\s*=", html)
    assert "innerHTML" not in html and "default-src 'none'" in html
    data = _html_data(html)
    assert [n["label"] for n in data["nodes"]] == g.labels and data["tokens"] == g.token_strings
    assert [n["id"] for n in data["nodes"]] == IDS and len(data["links"]) == g.n_edges
    positions = {(n["x"], n["y"]) for n in data["nodes"]}
    assert len(positions) == g.n_nodes  # nodes sharing a (position, stage) cell sit side by side


# --------------------------------------------------------------------------- atomicity and errors


def test_failed_writes_leave_the_old_file(g, tmp_path, monkeypatch, full_disk):
    path = tmp_path / "g.json"
    path.write_text("old")
    full_disk()
    with pytest.raises(OSError, match="disk full"):
        g.save(path)
    monkeypatch.undo()
    monkeypatch.setattr(export.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        g.save(path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["g.json"]


def test_clear_errors(g, tmp_path):
    with pytest.raises(ValueError, match=r"'\.txt'.*\.json, \.graphml, \.dot, \.html"):
        g.save(tmp_path / "g.txt")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        AttributionGraph.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"'\.graphml'.*'\.json'"):
        AttributionGraph.load(g.save(tmp_path / "g.graphml"))
    (tmp_path / "other.json").write_text(json.dumps({"metadata": {"slug": "x"}, "nodes": [], "links": []}))
    with pytest.raises(ValueError, match=r"other\.json.*'metadata\.sae_circuits'"):
        AttributionGraph.load(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        AttributionGraph.load(tmp_path / "broken.json")


BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_html_shows_bidi_controls_as_visible_escapes(tmp_path):
    spoof = "evil\u202egnp.exe"  # would display as "evilexe.png"
    nodes = [NODES[0][:8] + (spoof,) + NODES[0][9:], NODES[1][:8] + (BIDI,) + NODES[1][9:], *NODES[2:]]
    g = make_graph(nodes)
    g.prompt, g.token_strings = f"a{BIDI}b", ["Hello", spoof, EVIL]
    html = g.save(tmp_path / "g.html").read_text(encoding="utf-8")
    assert not any(c in html for c in BIDI)  # not raw in the page ...
    data = _html_data(html)
    labels = [n["label"] for n in data["nodes"]]
    assert labels[0] == "evil\\u202egnp.exe"  # ... but shown as text: a backslash, "u" and the code
    assert labels[1] == "".join(f"\\u{ord(c):04x}" for c in BIDI)
    assert labels[2:] == g.labels[2:] and data["prompt"] == f"a{labels[1]}b"
    assert data["tokens"] == ["Hello", labels[0], EVIL]
    assert AttributionGraph.load(g.save(tmp_path / "g.json")).labels[:2] == [spoof, BIDI]  # data kept as is


def test_script_json_escapes_bidi_controls_in_every_string():
    data = {f"key{BIDI}": [f"x{BIDI}", {"y": BIDI}], "n": 1.5, "evil": EVIL, "plain": "café ☃ \u200b"}
    text = script_json(data)
    assert not any(c in text for c in BIDI) and "<" not in text and ">" not in text
    escaped = "".join(f"\\u{ord(c):04x}" for c in BIDI)
    assert strict_loads(text) == {
        f"key{escaped}": [f"x{escaped}", {"y": escaped}], "n": 1.5, "evil": EVIL, "plain": "café ☃ \u200b"
    }  # fmt: skip
