"""Our graph JSON in the public attribution-graph viewer: circuit-tracer 0.5.0's own front end
(staged by tools/fetch_viewer.py from its wheel and the npm registry, cached in build/viewer/),
served on 127.0.0.1 the way its local server does (``/data/graph-metadata.json``,
``/graph_data/<slug>.json``), opened in headless Chromium for each kind of graph we write.

Each kind is checked as a person would see it: no console errors, every node the viewer keeps
(after its own pruning) drawn inside the plot, the prompt's tokens on the x axis, distinct sites
on distinct rows, the detail panel's feature number when a feature is clicked, and the pruning
slider keeping the strongest nodes. The page may make no request off 127.0.0.1 (Chromium resolves
no other host; its network log is checked). Gated like tests/test_browser.py."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import torch

import sae_circuits as sc
from sae_circuits.graph.influence import NodeKind
from tests import chromium
from tests.chromium import CHROMEDRIVER, CHROMIUM

REQUIRED = os.environ.get("SAE_CIRCUITS_BROWSER_TESTS") == "1"  # set by `make test`: missing = failure
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "build" / "artifacts"
PROMPT = "def foo(x):\n    return x +"

if not (CHROMIUM and CHROMEDRIVER and importlib.util.find_spec("selenium")):
    if REQUIRED:
        raise RuntimeError(
            "browser tests need Debian's chromium and chromium-driver and selenium (make test installs them)"
        )
    pytest.skip("no chromium/chromedriver/selenium here (make test installs them)", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By


def _stage_viewer() -> Path:
    spec = importlib.util.spec_from_file_location("fetch_viewer", ROOT / "tools" / "fetch_viewer.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not os.environ.get("SAE_CIRCUITS_BROWSER_TESTS") and not (ROOT / "build" / "viewer").is_dir():
        pytest.skip("circuit-tracer's viewer is not staged (make viewer; make test does it)")
    return module.stage(ROOT / "build" / "viewer")  # cached: no network once staged


# --------------------------------------------------------------------------- the graphs


def _graphs() -> dict[str, sc.AttributionGraph]:
    model = sc.zoo.load_model("tiny")
    transcoders = sc.zoo.load_saes("tiny", kind="transcoder")
    resid = sc.zoo.load_saes("tiny", kind="resid")
    graphs = {}
    with sc.spliced(model, transcoders):
        full = sc.attribute(model, PROMPT, prepend_bos=False, progress=False)
        graphs["plain"] = full.prune(0.8, 0.98)
        a, b = (int(full.index[t]) for t in full.nodes_of(NodeKind.TARGET)[:2])
        direction = torch.zeros(model.cfg.d_vocab)
        direction[a], direction[b] = 1.0, -1.0
        graphs["direction"] = sc.attribute(
            model,
            PROMPT,
            targets=[a, b, sc.LogitDirection(direction, "a - b")],
            prepend_bos=False,
            progress=False,
        ).prune(0.8, 0.98)
        graphs["budget"] = sc.attribute(
            model, PROMPT, prepend_bos=False, progress=False, max_feature_nodes=6
        ).prune(0.8, 0.98)
        plain = graphs["plain"]
        node = int(plain.nodes_of(NodeKind.FEATURE)[-1])  # a feature the plain graph keeps
        target = sc.Feature(
            plain.sites[int(plain.site[node])], int(plain.position[node]), int(plain.index[node])
        )
        graphs["feature_target"] = sc.attribute(
            model, PROMPT, targets=target, prepend_bos=False, progress=False
        ).prune(0.8, 0.98)
    with sc.spliced(model, [*resid, *transcoders]):
        graphs["resid_transcoder"] = sc.attribute(model, PROMPT, prepend_bos=False, progress=False).prune(
            0.8, 0.98
        )
    return graphs


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The staged viewer, our graphs saved into one data folder, and a loopback server for both."""
    viewer = _stage_viewer()
    data = tmp_path_factory.mktemp("graph_data")
    graphs = _graphs()
    try:  # what `sae-circuits graph --out DIR/` calls after writing each graph
        from sae_circuits.writers.json_file import update_graph_metadata
    except ImportError:
        update_graph_metadata = None
    for slug, g in graphs.items():
        path = g.save(data / f"{slug}.json")
        if update_graph_metadata is not None:
            update_graph_metadata(path)
    written = (data / "graph-metadata.json").exists()
    if not written:  # the render checks still run; test_graph_metadata_is_written_beside_the_graphs fails
        entries = []
        for slug in graphs:
            meta = json.loads((data / f"{slug}.json").read_text())["metadata"]
            entries.append({**{k: v for k, v in meta.items() if k != "sae_circuits"}, "slug": slug})
        (data / "graph-metadata.json").write_text(json.dumps({"graphs": entries}))
    requests: list[str] = []
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, viewer, data, requests)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "data": data, "graphs": graphs,
           "metadata_written": written, "requests": requests}  # fmt: skip
    server.shutdown()
    server.server_close()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """circuit-tracer's local server, as its front end expects it: the assets at the root,
    ``/data/...`` and ``/graph_data/...`` both from the data folder (JSON)."""

    def __init__(self, viewer: Path, data: Path, requests: list[str], *args, **kwargs):
        self.data, self.requests = data, requests
        super().__init__(*args, directory=str(viewer), **kwargs)

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        if self.path == "/favicon.ico":  # the browser's own request; circuit-tracer's server 404s it
            self.send_response(204)
            self.end_headers()
            return
        for prefix in ("/data/", "/graph_data/"):
            if self.path.startswith(prefix):
                path = self.data / self.path[len(prefix) :].split("?")[0]
                if path.resolve().parent != self.data.resolve() or not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        super().do_GET()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    flags = ("--window-size=1600,1100", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    driver = chromium.start(tmp_path_factory.mktemp("chromium"), flags, logs=("browser", "performance"))
    driver.set_script_timeout(20)
    yield driver
    driver.quit()


# --------------------------------------------------------------------------- what the viewer should show


def _viewer_keeps(nodes: list[dict], n_tokens: int, threshold: float | None) -> list[str]:
    """The node ids the viewer draws (util-cg.js formatData): embeddings, logits and nodes with
    ``influence <= threshold`` (a null influence counts as 0), less any featureId shared by more
    than 2/3 of the prompt's tokens."""
    kept = [
        n for n in nodes
        if threshold is None or n["feature_type"] in ("embedding", "logit") or (n.get("influence") or 0) <= threshold
    ]  # fmt: skip
    groups: dict[str, list[str]] = {}
    for n in kept:
        fid = f"{_js(n['layer'])}_{_js(n['feature'])}_{_js(n['ctx_idx'])}"
        if "error" in n["feature_type"]:
            fid += f"__err_idx_{n_tokens - n['ctx_idx']}"
        groups.setdefault(fid, []).append(n["node_id"])
    return [i for ids in groups.values() if len(ids) <= n_tokens * 2 / 3 for i in ids]


def _js(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _replace_whitespace(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


DRAWN = """return d3.selectAll('.link-graph text.node').data().map(d => ({
  id: d.node_id, x: d.pos[0], y: d.pos[1], row: d.streamIdx, featureId: d.featureId,
  type: d.feature_type, clerp: d.ppClerp ?? d.clerp}))"""
PLOT = "var r = document.querySelector('.link-graph svg rect'); return r && [+r.getAttribute('width'), +r.getAttribute('height')]"


def _severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _off_host(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if (
                urlparse(url).scheme in ("http", "https", "ws", "wss")
                and urlparse(url).hostname != "127.0.0.1"
            ):
                urls.append(url)
    return urls


def _wait(driver, condition: str, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if driver.execute_script(condition):
            return True
        time.sleep(0.1)
    return False


def _drawn(driver) -> list[dict]:
    return driver.execute_script(DRAWN)


def _settle(driver) -> list[dict]:
    """The drawn nodes once two reads 0.4 s apart agree (the slider re-renders after a 300 ms debounce)."""
    previous = None
    for _ in range(30):
        time.sleep(0.4)
        now = sorted(d["id"] for d in _drawn(driver))
        if now == previous:
            break
        previous = now
    return _drawn(driver)


KINDS = ["plain", "direction", "budget", "resid_transcoder", "feature_target"]


@pytest.mark.parametrize("kind", KINDS)
def test_graph_opens_correctly_in_circuit_tracers_viewer(browser, site, kind):
    graph = site["graphs"][kind]
    raw = json.loads((site["data"] / f"{kind}.json").read_text())
    nodes, tokens = raw["nodes"], raw["metadata"]["prompt_tokens"]
    by_id = {n["node_id"]: n for n in nodes}
    sites = raw["metadata"].get("sae_circuits", {}).get("sites", graph.sites)
    listing = json.loads((site["data"] / "graph-metadata.json").read_text())["graphs"]
    threshold = next((g.get("node_threshold") for g in listing if g["slug"] == kind), None)
    threshold = threshold if isinstance(threshold, (int, float)) else None
    problems = [
        f"logit node {n['node_id']} has clerp {n.get('clerp')!r}: the viewer parses '(p=...)' from every logit clerp"
        for n in nodes
        if n["feature_type"] == "logit" and n.get("clerp") and "(p=" not in n["clerp"]
    ]

    browser.get_log("browser"), browser.get_log("performance")  # drain the previous page's entries
    browser.get(f"{site['url']}/index.html?slug={kind}")
    drew = _wait(browser, "return document.querySelectorAll('.link-graph text.node').length > 0")
    time.sleep(0.5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"viewer_{kind}.png"))
    errors = _severe(browser)
    if errors:
        problems.append(f"console errors on load: {[e['message'] for e in errors]}")
    off = _off_host(browser)
    if off:
        problems.append(f"requests off 127.0.0.1 on load: {off}")
    if not drew:
        pytest.fail("\n".join([f"[{kind}] the viewer drew no node (blank graph)", *problems]))

    # Every node the viewer keeps is drawn, inside the plot (not in the axis gutter).
    drawn = _drawn(browser)
    expected = _viewer_keeps(nodes, len(tokens), threshold)
    if sorted(d["id"] for d in drawn) != sorted(expected):
        problems.append(f"drew {len(drawn)} nodes, the JSON has {len(expected)} the viewer keeps")
    width, height = browser.execute_script(PLOT)
    outside = [d["id"] for d in drawn if not (0 <= d["x"] <= width and 0 <= d["y"] <= height)]
    if outside:
        problems.append(f"{len(outside)} nodes drawn outside the plot ({width}x{height}): {outside[:4]} "
                        f"(ctx_idx {sorted({by_id[i]['ctx_idx'] for i in outside})})")  # fmt: skip

    # The prompt's tokens label the x axis (every position with an embedding node).
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".link-graph g.prompt-token text")]
    with_embedding = sorted({n["ctx_idx"] for n in nodes if n["feature_type"] == "embedding"})
    want = [_replace_whitespace(tokens[p]) for p in with_embedding]
    if [s.strip() for s in labels] != [s.strip() for s in want]:
        problems.append(f"x-axis token labels {labels}, expected {want}")

    # One site per row, one featureId per (site, kind, index, position), errors named for their site.
    rows: dict[int, set[str]] = {}
    owners: dict[str, set[tuple]] = {}
    for d in drawn:
        col = by_id[d["id"]].get("sc", {})
        if col.get("site", -1) >= 0 and d["type"] not in ("embedding", "logit"):
            rows.setdefault(d["row"], set()).add(sites[col["site"]])
        owners.setdefault(d["featureId"], set()).add(
            (col.get("site"), col.get("kind"), col.get("index"), col.get("position"))
        )
        if (
            "error" in d["type"]
            and col.get("site", -1) >= 0
            and "mlp" not in sites[col["site"]]
            and "mlp" in (d["clerp"] or "").lower()
        ):
            problems.append(f"error node {d['id']} at {sites[col['site']]} is labelled {d['clerp']!r}")
            break
    shared = {row: s for row, s in rows.items() if len(s) > 1}
    if shared:
        problems.append(f"sites sharing one layer row: {shared}")
    collide = {f: o for f, o in owners.items() if len(o) > 1}
    if collide:
        problems.append(f"{len(collide)} featureIds name several nodes, e.g. {next(iter(collide.items()))}")

    # The detail panel names the clicked feature by its dictionary index.
    features = [d for d in drawn if d["type"] == "cross layer transcoder"]
    if features:
        browser.get_log("browser"), browser.get_log("performance")
        target = features[len(features) // 2]
        element = browser.execute_script(
            "return [...document.querySelectorAll('.link-graph text.node')].find(e => e.__data__.node_id == arguments[0])",
            target["id"],
        )
        ActionChains(browser).move_to_element(element).click().perform()
        time.sleep(0.3)
        clicked = parse_qs(urlparse(browser.current_url).query).get("clickedId", [None])[0]
        title = browser.execute_script(
            "return document.querySelector('.feature-detail .feature-title')?.textContent || ''"
        )
        node = by_id.get(clicked)
        if node is None:
            problems.append(f"clicking a feature selected {clicked!r}, no node of the JSON")
        else:
            index = node["sc"]["index"]
            shown = re.search(r"L\S*/(\d+)", title)
            if not shown or int(shown.group(1)) != index:
                problems.append(
                    f"detail panel shows {title.strip()!r} for feature index {index} (node {clicked}; with "
                    f"schema_version {raw['metadata'].get('schema_version')} the viewer shows "
                    f"cantor_unpair(feature)[1] of feature={node['feature']})"
                )
        # Only the viewer's feature-example lookup (huggingface.co / cloudfront) may be attempted.
        lookups = _off_host(browser)
        print(
            f"[{kind}] feature-example lookups the viewer tried (Chromium resolves no host but 127.0.0.1): {lookups}"
        )
        off = [u for u in lookups if "/features/" not in u]
        if off:
            problems.append(f"requests off 127.0.0.1 after the click: {off}")
        others = [
            e["message"]
            for e in _severe(browser)
            if not re.search(r"features/|Failed to fetch|is not valid JSON", e["message"])
        ]
        if others:
            problems.append(f"console errors after the click: {others}")

    # The pruning slider: half the threshold keeps fewer nodes, and keeps the strongest ones.
    slider = browser.find_elements(By.CSS_SELECTOR, ".slider-container input[type=range]")
    if threshold is None or not slider:
        problems.append(f"no pruning slider (graph-metadata.json node_threshold={threshold!r})")
    else:
        lower = round(threshold / 2, 2)
        browser.execute_script(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))",
            slider[0],
            str(lower),
        )
        after = _settle(browser)
        kept = {d["id"] for d in after}
        if kept != set(_viewer_keeps(nodes, len(tokens), lower)):
            problems.append(f"slider at {lower}: drew {len(kept)} nodes, the JSON's influence keeps "
                            f"{len(_viewer_keeps(nodes, len(tokens), lower))}")  # fmt: skip
        strength = dict(zip(_node_ids(graph), graph.influence().tolist()))
        prunable = [  # features and errors; targets (a feature target too) are never pruned
            d["id"]
            for d in drawn
            if d["type"] not in ("embedding", "logit")
            and d["id"] in strength
            and by_id[d["id"]].get("sc", {}).get("kind") != int(NodeKind.TARGET)
        ]
        stay = [strength[i] for i in prunable if i in kept]
        gone = [strength[i] for i in prunable if i not in kept]
        if not gone:
            top = max((n.get("influence") or 0 for n in nodes if n["node_id"] in prunable), default=None)
            problems.append(f"slider at {lower} of {threshold} removed no node (largest influence in the JSON: "
                            f"{top}; the viewer drops nodes with influence > threshold: it expects the "
                            f"cumulative share by rank in (0, 1])")  # fmt: skip
        elif stay and min(stay) < max(gone) - 1e-9:
            problems.append(f"slider at {lower} keeps weaker nodes than it drops: kept influence >= {min(stay):.3g}, "
                            f"dropped up to {max(gone):.3g} (the viewer keeps influence <= threshold: it expects the "
                            f"cumulative share by rank)")  # fmt: skip
        browser.save_screenshot(str(ARTIFACTS / f"viewer_{kind}_slider.png"))

    assert not problems, f"[{kind}] " + "\n".join(problems)


def _node_ids(graph) -> list[str]:
    from sae_circuits.graph.node_ids import node_ids

    return node_ids(graph)


def test_graph_metadata_is_written_beside_the_graphs(site):
    """The viewer lists graphs from graph-metadata.json (slug = file stem) next to the graph files."""
    assert site["metadata_written"], (
        "nothing wrote graph-metadata.json beside the graphs "
        "(sae_circuits.writers.json_file.update_graph_metadata, which `sae-circuits graph --out DIR/` calls)"
    )
    listing = json.loads((site["data"] / "graph-metadata.json").read_text())["graphs"]
    assert sorted(g["slug"] for g in listing) == sorted(site["graphs"])
    for slug in site["graphs"]:
        assert json.loads((site["data"] / f"{slug}.json").read_text())["metadata"]["slug"] == slug


def test_served_files_stay_on_loopback(site):
    """Everything the pages asked for came from this server: the viewer's files and our JSON."""
    assert site["requests"], "the server saw no request"
    assert any(p.startswith("/graph_data/") for p in site["requests"])
    assert any(p.startswith("/lib/") for p in site["requests"])
