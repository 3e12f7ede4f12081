"""Our graph JSON against what circuit-tracer 0.5's front end and pydantic model expect, and graph JSON
written by circuit-tracer loaded as an :class:`AttributionGraph`.

The pydantic models below mirror the field list of ``circuit_tracer/frontend/graph_models.py``
(``Metadata``, ``QParams``, ``Node``, ``Model``: names, types, defaults); ``viewer_problems`` restates
what the front end's JavaScript (``attribution_graph/util-cg.js``, ``init-cg-link-graph.js``,
``init-cg-feature-detail.js``, ``index.html``) does with each field.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict

import sae_circuits as sc
from sae_circuits.graph.attribution_graph import AttributionGraph
from sae_circuits.graph.influence import NodeKind
from sae_circuits.writers import json_file
from sae_circuits.writers._json_read import read_circuit_tracer_graph
from tests.test_graph_export import NODES, make_graph

# --------------------------------------------------------------------------- circuit-tracer's model


class CTMetadata(BaseModel):
    model_config = ConfigDict(strict=True)
    slug: str
    scan: str
    transcoder_list: list[str]
    prompt_tokens: list[str]
    prompt: str
    node_threshold: float | None = None
    schema_version: int | None = 1


class CTQParams(BaseModel):
    model_config = ConfigDict(strict=True)
    pinnedIds: list[str]
    supernodes: list[list[str]]
    linkType: str
    clickedId: str
    sg_pos: str


class CTNode(BaseModel):
    model_config = ConfigDict(strict=True)
    node_id: str
    feature: int
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None


class CTModel(BaseModel):
    metadata: CTMetadata
    qParams: CTQParams
    nodes: list[CTNode]
    links: list[dict]


def cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def cantor_unpair(z: int) -> tuple[int, int]:  # util.js cantorUnpair
    w = math.floor((math.sqrt(8 * z + 1) - 1) / 2)
    y = z - (w * w + w) // 2
    return w - y, y


def schema_differences(raw: dict[str, Any]) -> list[str]:
    """Every way ``raw`` departs from circuit-tracer's model: validation errors, plus fields its
    model would fill by default (we write every field explicitly)."""
    problems = []
    try:
        CTModel.model_validate(raw)
    except Exception as err:  # pydantic.ValidationError: one line per field
        problems += [line for line in str(err).splitlines() if line and not line.startswith(" ")]
    for name, model, rows in (("metadata", CTMetadata, [raw["metadata"]]), ("nodes", CTNode, raw["nodes"])):
        for i, row in enumerate(rows):
            problems += [f"{name}[{i}] lacks {f}" for f in model.model_fields if f not in row]
    for i, link in enumerate(raw["links"]):
        if set(link) != {"source", "target", "weight"} or not isinstance(link["weight"], float):
            problems.append(f"links[{i}] is {link}")
    return problems


def viewer_problems(raw: dict[str, Any]) -> list[str]:
    """What would go wrong in the front end (its JavaScript restated)."""
    problems, meta, nodes = [], raw["metadata"], raw["nodes"]
    n = len(meta["prompt_tokens"])
    feature_ids: dict[str, str] = {}
    for node in nodes:
        nid = node["node_id"]
        if node["feature_type"] == "logit":
            clerp = node["clerp"]
            if "(p=" not in clerp or not re.fullmatch(r"[-+0-9.eE]+", clerp.split("(p=")[1].split(")")[0]):
                problems.append(f"{nid}: logit clerp {clerp!r} has no (p=...)")  # item 1: blank page
            if len(clerp.split('"')) < 3:
                problems.append(f"{nid}: no quoted logit token in {clerp!r}")
            if node["influence"] is not None:
                problems.append(f"{nid}: influence on a logit")
            continue
        if not 0 <= node["ctx_idx"] < n:  # item 2: drawn in the gutter, token labels cut
            problems.append(f"{nid}: ctx_idx {node['ctx_idx']} outside the prompt")
        if node["layer"] != "E" and not node["layer"].isdigit():  # streamIdx = isFinite(layer) ? ...
            problems.append(f"{nid}: layer {node['layer']!r} is not a number")
        feature_id = f"{node['layer']}_{node['feature']}_{node['ctx_idx']}"
        if "error" in node["feature_type"]:
            feature_id += f"__err_idx_{n - node['ctx_idx']}"
        if feature_id in feature_ids:  # item 3: two nodes drawn as one
            problems.append(f"{nid}: featureId {feature_id} also {feature_ids[feature_id]}")
        feature_ids[feature_id] = nid
        if node["feature_type"] == "embedding" and node["feature"] != node["ctx_idx"]:
            problems.append(f"{nid}: a token's feature must be its position")  # item 4
        share = node["influence"]
        if share is None or not 0 < share <= 1:  # item 5
            problems.append(f"{nid}: influence {share} is not a share in (0, 1]")
    if min((node["ctx_idx"] for node in nodes), default=0) != 0:
        problems.append("the x axis would start after position 0")
    if sum(node["is_target_logit"] for node in nodes) > 1:
        problems.append("is_target_logit on more than the top logit")
    return problems


def slider_count(raw: dict[str, Any], threshold: float) -> int:
    """Nodes the front end keeps at a pruning threshold (util-cg.js formatData)."""
    return sum(
        n["feature_type"] in ("embedding", "logit") or n["influence"] <= threshold for n in raw["nodes"]
    )


def saved(g: AttributionGraph, path: Path) -> dict[str, Any]:
    return json.loads(g.save(path).read_text())


# --------------------------------------------------------------------------- the hand-made graph


def test_hand_made_graph_matches_circuit_tracer_model_and_viewer(tmp_path):
    g = make_graph()
    raw = saved(g, tmp_path / "hand.json")
    assert schema_differences(raw) == []
    assert viewer_problems(raw) == []
    assert AttributionGraph.load(tmp_path / "hand.json").equals(g)  # still lossless


def test_direction_target_gets_a_parsable_clerp_and_keeps_its_label(tmp_path):
    g = make_graph()
    raw = saved(g, tmp_path / "g.json")
    node = next(n for n in raw["nodes"] if n["node_id"] == "3_dir0_2")
    assert node["clerp"] == 'Output "x - y" (p=0.000)' and node["feature_type"] == "logit"
    token = next(n for n in raw["nodes"] if n["node_id"] == "3_40_2")
    assert token["clerp"] == 'Output " x" (p=0.600)'  # token targets' labels already parse
    assert AttributionGraph.load(tmp_path / "g.json").labels == g.labels


def test_other_nodes_sit_at_the_last_position_and_stay_identifiable(tmp_path):
    raw = saved(make_graph(), tmp_path / "g.json")
    other = next(n for n in raw["nodes"] if n["node_id"] == "1r_other")
    assert other["ctx_idx"] == 2 and other["reverse_ctx_idx"] == 0
    assert other["feature_type"] == "other features" and other["sc"]["position"] == -1


def test_two_sites_of_one_block_get_distinct_rows_and_right_error_types(tmp_path):
    g = make_graph()
    rows = {(n[1]): None for n in NODES}
    raw = saved(g, tmp_path / "g.json")
    by_id = {n["node_id"]: n for n in raw["nodes"]}
    # sites blocks.0 mlp, blocks.1 mlp, blocks.1 resid: block 1 hosts two, so rows are ranks
    assert [by_id[i]["layer"] for i in ("0_1_0", "1m_0_1", "1r_1_2", "1m_error_2", "1r_other")] == [
        "0", "1", "2", "1", "2",
    ]  # fmt: skip
    assert rows  # every site has a row
    resid_error = make_graph(nodes=[*NODES, (NodeKind.ERROR, 2, 1, 3, 0, -1, 0.0, 0.0, "e", "1r_error_0")])
    raw = saved(resid_error, tmp_path / "r.json")
    node = next(n for n in raw["nodes"] if n["node_id"] == "1r_error_0")
    assert node["feature_type"] == "residual reconstruction error" and node["layer"] == "2"
    assert viewer_problems(raw) == []


def test_rows_are_blocks_when_each_block_hosts_one_site(tmp_path):
    from sae_circuits.graph.node_ids import viewer_rows

    assert viewer_rows(["blocks.0.hook_mlp_out", "blocks.3.hook_mlp_out"]) == [0, 3]
    assert viewer_rows(["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"]) == [0, 1]
    assert viewer_rows(["hook_embed"]) == [0]


def test_feature_is_cantor_of_row_and_index_and_position_for_tokens(tmp_path):
    raw = saved(make_graph(), tmp_path / "g.json")
    by_id = {n["node_id"]: n for n in raw["nodes"]}
    assert by_id["0_5_1"]["feature"] == cantor(0, 5) and cantor_unpair(by_id["0_5_1"]["feature"]) == (0, 5)
    assert cantor_unpair(by_id["1r_1_2"]["feature"]) == (2, 1)  # "L2/1" in the detail panel
    assert cantor_unpair(by_id["1m_7_2"]["feature"]) == (1, 7)  # a feature target is drawn as a feature
    assert [by_id[i]["feature"] for i in ("E_10_0", "E_20_1", "E_30_2")] == [0, 1, 2]


def test_influence_is_the_cumulative_share_by_rank(tmp_path):
    g = make_graph()
    raw = saved(g, tmp_path / "g.json")
    influence = g.influence().tolist()
    ranked = [
        (influence[i], n["influence"]) for i, n in enumerate(raw["nodes"]) if n["feature_type"] != "logit"
    ]
    ranked.sort(key=lambda pair: -pair[0])
    shares = [share for value, share in ranked if value > 0]
    assert shares == sorted(shares) and 0 < shares[0] and shares[-1] == pytest.approx(1.0)
    assert [n["influence"] for n in raw["nodes"] if n["feature_type"] == "logit"] == [None] * 3
    # the strongest node's share is its own influence over the total of the ranked nodes
    total = sum(v for v, _ in ranked) + 0.05  # + the feature target's weight
    assert shares[0] == pytest.approx(ranked[0][0] / total)


def test_pruned_graph_shows_every_node_at_the_default_slider(tmp_path):
    pruned = make_graph().prune(0.8, 0.98)
    raw = saved(pruned, tmp_path / "p.json")
    assert raw["metadata"]["node_threshold"] == 0.8
    assert slider_count(raw, 0.8) == len(raw["nodes"]) > slider_count(raw, 0.3)
    assert max(n["influence"] for n in raw["nodes"] if n["influence"] is not None) <= 0.8


def test_scan_transcoder_list_slug_activation_and_top_logit(tmp_path):
    g = make_graph()
    raw = saved(g, tmp_path / "my-graph.json")
    meta = raw["metadata"]
    assert meta["slug"] == "my-graph" and re.fullmatch(r"custom-\d+", meta["scan"])
    assert meta["transcoder_list"] == [
        "tiny-gpt2/blocks.0.hook_mlp_out", "tiny-gpt2/blocks.1.hook_mlp_out", "tiny-gpt2/blocks.1.hook_resid_post",
    ]  # fmt: skip
    assert saved(g, tmp_path / "again.json")["metadata"]["scan"] == meta["scan"]  # stable across runs
    by_id = {n["node_id"]: n for n in raw["nodes"]}
    assert [n["node_id"] for n in raw["nodes"] if n["is_target_logit"]] == ["3_40_2"]  # the top logit only
    assert (
        by_id["0_1_0"]["activation"] == pytest.approx(1.2345678) and by_id["1m_7_2"]["activation"] is not None
    )
    assert [by_id[i]["activation"] for i in ("E_10_0", "0_error_1", "1r_other", "3_40_2")] == [None] * 4
    named = make_graph(scan="gemma-2-2b")
    assert saved(named, tmp_path / "n.json")["metadata"]["scan"] == "gemma-2-2b"


def test_graph_metadata_is_written_and_updated_beside_the_graphs(tmp_path):
    first, second = make_graph().save(tmp_path / "a.json"), make_graph().save(tmp_path / "b.json")
    listing = json_file.update_graph_metadata(first)
    json_file.update_graph_metadata(second)
    json_file.update_graph_metadata(first)  # replaced, not repeated
    graphs = json.loads(listing.read_text())["graphs"]
    assert listing.name == "graph-metadata.json" and [x["slug"] for x in graphs] == ["b", "a"]
    assert set(graphs[0]) == set(CTMetadata.model_fields) and CTMetadata.model_validate(graphs[0])
    listing.write_text("{")
    with pytest.raises(ValueError, match="graph-metadata.json: not valid JSON"):
        json_file.update_graph_metadata(first)
    assert listing.read_text() == "{"  # left as it was


def test_serve_answers_graph_metadata(tmp_path):
    import http.client
    import threading

    from sae_circuits.serve import serve

    make_graph().save(tmp_path / "one.json")
    (tmp_path / "sub").mkdir()
    make_graph().save(tmp_path / "sub" / "two.json")
    server = serve(tmp_path, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for route in ("/graph-metadata.json", "/data/graph-metadata.json"):
            client = http.client.HTTPConnection("127.0.0.1", server.server_address[1])
            client.request("GET", route)
            response = client.getresponse()
            body = json.loads(response.read())
            client.close()
            assert response.status == 200 and response.getheader("Access-Control-Allow-Origin") == "*"
            assert sorted(x["slug"] for x in body["graphs"]) == ["one", "sub/two"]
        json_file.update_graph_metadata(tmp_path / "one.json")  # a folder's own file wins
        client = http.client.HTTPConnection("127.0.0.1", server.server_address[1])
        client.request("GET", "/graph-metadata.json")
        assert [x["slug"] for x in json.loads(client.getresponse().read())["graphs"]] == ["one"]
        client.close()
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- the CLI's prompt


def test_prompt_escapes():
    from sae_circuits.cli import unescape_prompt

    assert unescape_prompt(r"def foo(x):\n\treturn") == "def foo(x):\n\treturn"
    assert unescape_prompt(r"a\\nb \d \x41\u00e9 é") == "a\\nb \\d Aé é"
    assert unescape_prompt("real\nnewline") == "real\nnewline"


# --------------------------------------------------------------------------- real graphs


@pytest.fixture(scope="module")
def embedded():
    return sc.zoo.load_model("tiny")


@pytest.fixture(scope="module")
def both_kinds(embedded):
    return [*sc.zoo.load_saes("tiny", kind="transcoder"), *sc.zoo.load_saes("tiny", kind="resid")]


def test_real_graphs_of_every_kind_open_in_the_viewer(embedded, both_kinds, tmp_path):
    prompt = "<p>hi</p>"
    vocab = embedded.cfg.d_vocab
    direction = torch.zeros(vocab)
    direction[embedded.to_single_token("<")] = 1.0
    direction[embedded.to_single_token("p")] = -1.0
    with sc.spliced(embedded, both_kinds):
        graphs = {
            "plain": sc.attribute(embedded, prompt, progress=False).prune(),
            "direction": sc.attribute(
                embedded, prompt, sc.LogitDirection(direction, '"<" - "p"'), progress=False
            ),
            "budget": sc.attribute(embedded, prompt, max_feature_nodes=3, progress=False),
        }
    for name, g in graphs.items():
        raw = saved(g, tmp_path / f"{name}.json")
        assert schema_differences(raw) == [], name
        assert viewer_problems(raw) == [], name
        assert raw["metadata"]["slug"] == name and AttributionGraph.load(tmp_path / f"{name}.json").equals(g)
    assert any(
        n["feature_type"] == "other features"
        for n in json.loads((tmp_path / "budget.json").read_text())["nodes"]
    )


def test_zero_bos_drops_position_zero_features_and_error_edges(embedded):
    transcoders = sc.zoo.load_saes("tiny", kind="transcoder")
    with sc.spliced(embedded, transcoders):
        plain = sc.attribute(embedded, "<p>hi</p>", progress=False)
        zeroed = sc.attribute(embedded, "<p>hi</p>", progress=False, zero_bos=True)
        with pytest.raises(ValueError, match="zero_bos"):
            sc.attribute(embedded, "<p>hi</p>", zero_bos="yes")  # type: ignore[arg-type]

    def at_zero(g, kind):
        return (g.kind == kind) & (g.position == 0)

    assert bool(at_zero(plain, NodeKind.FEATURE).any()) and not bool(at_zero(zeroed, NodeKind.FEATURE).any())
    errors = at_zero(zeroed, NodeKind.ERROR).nonzero().squeeze(-1)
    assert not bool(torch.isin(zeroed.edges.source, errors).any())
    assert zeroed.metadata["zero_bos"] is True and "zero_bos" not in plain.metadata
    assert zeroed.n_nodes > 0 and (zeroed.kind == NodeKind.TOKEN).sum() == len(zeroed.tokens)


def test_cli_graph_into_a_folder_with_escapes(tmp_path, capsys):
    from sae_circuits.cli import main

    out = tmp_path / "graphs"
    argv = [
        "graph",
        "--prompt",
        r"<p>\nhi",
        "--out",
        f"{out}/",
        "--max-feature-nodes",
        "4",
        "--slug",
        "first",
    ]
    assert main(argv) == 0
    g = AttributionGraph.load(out / "first.json")
    assert g.prompt == "<p>\nhi"
    (tmp_path / "prompt.txt").write_text(r"<p>\n", encoding="utf-8")
    argv = [
        "graph",
        "--prompt-file",
        str(tmp_path / "prompt.txt"),
        "--out",
        str(out),
        "--max-feature-nodes",
        "4",
    ]
    assert main(argv) == 0
    listing = json.loads((out / "graph-metadata.json").read_text())["graphs"]
    assert [x["slug"] for x in listing] == ["first", "p-n"]
    assert AttributionGraph.load(out / "p-n.json").prompt == "<p>\\n"  # a file is taken as it is
    assert main(["graph", "--prompt", "x", "--out", str(tmp_path / "g.json"), "--slug", "s"]) == 2
    assert "--slug" in capsys.readouterr().err


# --------------------------------------------------------------------------- circuit-tracer's files


def circuit_tracer_file(n_layers: int = 2) -> dict[str, Any]:
    """A small graph as circuit-tracer's create_graph_files writes it (Node.feature_node etc.)."""

    def feature(layer, pos, idx, influence, activation):
        return {"node_id": f"{layer}_{idx}_{pos}", "feature": cantor(layer, idx), "layer": str(layer),
                "ctx_idx": pos, "feature_type": "cross layer transcoder", "token_prob": 0.0,
                "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": f"{layer}_{idx}-0",
                "clerp": "", "influence": influence, "activation": activation}  # fmt: skip

    def error(layer, pos, influence):
        return {"node_id": f"0_{layer}_{pos}", "feature": -1, "layer": str(layer), "ctx_idx": pos,
                "feature_type": "mlp reconstruction error", "token_prob": 0.0, "is_target_logit": False,
                "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": f"{layer}_{pos}-0", "clerp": "",
                "influence": influence, "activation": None}  # fmt: skip

    def token(pos, vocab, influence):
        return {"node_id": f"E_{vocab}_{pos}", "feature": pos, "layer": "E", "ctx_idx": pos,
                "feature_type": "embedding", "token_prob": 0.0, "is_target_logit": False, "run_idx": 0,
                "reverse_ctx_idx": 0, "jsNodeId": f"E_{vocab}-{pos}", "clerp": "", "influence": influence,
                "activation": None}  # fmt: skip

    def logit(pos, vocab, text, p, top):
        return {"node_id": f"{n_layers + 1}_{vocab}_{pos}", "feature": vocab, "layer": str(n_layers + 1),
                "ctx_idx": pos, "feature_type": "logit", "token_prob": p, "is_target_logit": top, "run_idx": 0,
                "reverse_ctx_idx": 0, "jsNodeId": f"L_{vocab}-{pos}", "clerp": f'Output "{text}" (p={p:.3f})',
                "influence": None, "activation": None}  # fmt: skip

    nodes = [
        feature(0, 1, 17, 0.2, 3.5), feature(1, 2, 4, 0.4, 1.25), error(0, 2, 0.6), error(1, 2, 0.7),
        token(0, 2, 0.9), token(1, 818, 0.95), token(2, 262, 1.0),
        logit(2, 11, " x", 0.7, True), logit(2, 13, " y", 0.2, False),
    ]  # fmt: skip
    links = [
        ("E_818_1", "0_17_1", 1.5), ("E_2_0", "0_17_1", 0.25), ("0_17_1", "1_4_2", 2.0), ("E_262_2", "1_4_2", 0.5),
        ("0_0_2", "1_4_2", -0.3), ("1_4_2", "3_11_2", 1.75), ("0_1_2", "3_11_2", 0.4), ("1_4_2", "3_13_2", -0.6),
        ("E_262_2", "3_13_2", 0.2),
    ]  # fmt: skip
    return {
        "metadata": {
            "slug": "ct-graph",
            "scan": "gemma-2-2b",
            "transcoder_list": [],
            "prompt_tokens": ["<bos>", " The", " cat"],
            "prompt": "<bos> The cat",
            "node_threshold": 0.8,
            "schema_version": 1,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": [{"source": s, "target": t, "weight": w} for s, t, w in links],
    }


def test_circuit_tracer_graph_loads_and_works(tmp_path):
    raw = circuit_tracer_file()
    assert CTModel.model_validate(raw)  # the synthetic file follows their model
    path = tmp_path / "ct.json"
    path.write_text(json.dumps(raw, indent=2))
    g = AttributionGraph.load(path)
    assert g.sites == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"] and g.tokens == [2, 818, 262]
    assert g.token_strings == ["<bos>", " The", " cat"] and g.metadata["n_layers"] == 2
    assert g.metadata["source"] == "circuit-tracer" and g.metadata["scan"] == "gemma-2-2b"
    assert g.node_ids() == [
        "0_17_1", "1_4_2", "0_error_2", "1_error_2", "E_2_0", "E_818_1", "E_262_2", "3_11_2", "3_13_2",
    ]  # fmt: skip
    assert g.activation[0] == pytest.approx(3.5) and g.target_weight[-2:].tolist() == pytest.approx(
        [0.7, 0.2]
    )
    assert g.n_edges == 9 and g.edges.weight[0] == pytest.approx(1.5)
    assert g.labels[0] == "L0 mlp_out #17" and g.labels[-2] == 'Output " x" (p=0.700)'
    scores = g.scores()
    assert 0 < scores["replacement"] < 1 and 0 < scores["completeness"] < 1
    pruned = g.prune(0.8, 0.98)
    assert 0 < pruned.n_nodes <= g.n_nodes
    assert read_circuit_tracer_graph(path).equals(g)
    # and back out in the front end's schema, which loads back exactly
    out = saved(g, tmp_path / "ours.json")
    assert schema_differences(out) == [] and viewer_problems(out) == []
    assert AttributionGraph.load(tmp_path / "ours.json").equals(g)
    assert "<svg" in g.save(tmp_path / "ct.html").read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw["metadata"].update(schema_version=2), r"schema_version 2 is newer"),
        (lambda raw: raw["metadata"].pop("prompt_tokens"), r"missing key 'metadata\.prompt_tokens'"),
        (lambda raw: raw["nodes"][3].pop("feature_type"), r"missing key 'nodes\[3\]\.feature_type'"),
        (lambda raw: raw["links"][0].update(target="9_9_9"), r"links\[0\] refers to an unknown node"),
        (lambda raw: raw["nodes"][0].update(node_id="0_x_1"), r"nodes\[0\]\.node_id"),
        (lambda raw: raw["nodes"][0].update(ctx_idx=7), r"ctx_idx 7 is outside"),
        (lambda raw: raw.pop("links"), r"missing key 'links'"),
    ],
)
def test_bad_circuit_tracer_files_are_one_clear_error(tmp_path, edit, message):
    raw = circuit_tracer_file()
    edit(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message) as err:
        AttributionGraph.load(path)
    assert "bad.json" in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["bad.json"]  # nothing written


def test_truncated_circuit_tracer_file(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(circuit_tracer_file())[:500])
    with pytest.raises(ValueError, match="cut.json: not valid JSON"):
        AttributionGraph.load(path)
