"""The HTML pages as a person uses them: headless Chromium (Debian's chromium + chromedriver, which
`make test` installs) opens each generated file from disk; no console errors, the expected
number of nodes and edges drawn, hover and click work, nothing a token says gets executed, and a
screenshot of each page is kept in build/artifacts/ for a look."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

import sae_circuits as sc
from sae_circuits.graph.influence import Edges, NodeKind
from tests import chromium
from tests.chromium import CHROMEDRIVER, CHROMIUM

REQUIRED = os.environ.get("SAE_CIRCUITS_BROWSER_TESTS") == "1"  # set by `make test`: missing = failure
ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "artifacts"
EVIL = "</script><script>alert(1)</script>"

if not (CHROMIUM and CHROMEDRIVER and __import__("importlib").util.find_spec("selenium")):
    if REQUIRED:
        raise RuntimeError(
            "browser tests need Debian's chromium and chromium-driver and selenium (make test installs them)"
        )
    pytest.skip("no chromium/chromedriver/selenium here (make test installs them)", allow_module_level=True)

from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    flags = ("--allow-file-access-from-files", "--window-size=1400,900")
    driver = chromium.start(tmp_path_factory.mktemp("chromium"), flags)
    yield driver
    driver.quit()


def _open(driver, path: Path, shot: str) -> None:
    driver.get(path.resolve().as_uri())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{shot}.png"))
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - nothing may have opened an alert


def _data(driver, key: str) -> str:
    return driver.execute_script(f"return document.body.dataset.{key}")


@pytest.fixture(scope="module")
def graph():
    model = sc.zoo.load_model("tiny")
    with sc.spliced(model, sc.zoo.load_saes("tiny", kind="transcoder")):
        g = sc.attribute(model, "def foo(x):\n    return x +", prepend_bos=False, progress=False)
    g = g.prune(0.8, 0.98)
    g.labels[int(g.nodes_of(NodeKind.FEATURE)[0])] = EVIL  # a feature whose label is markup
    return g


def test_graph_page_draws_every_node_and_edge_and_reacts(browser, graph, tmp_path):
    _open(browser, graph.save(tmp_path / "graph.html"), "graph")
    assert int(_data(browser, "renderedNodes")) == graph.n_nodes
    assert int(_data(browser, "renderedEdges")) == min(graph.n_edges, 5000)
    assert len(browser.find_elements(By.CSS_SELECTOR, "circle.node")) == graph.n_nodes

    evil = int(graph.nodes_of(NodeKind.FEATURE)[0])  # hover shows the label, as text
    node = browser.find_element(By.ID, f"node-{evil}")
    ActionChains(browser).move_to_element(node).perform()
    tip = browser.find_element(By.ID, "tip")
    assert tip.is_displayed() and EVIL in tip.text

    node.click()  # click highlights exactly the node's inputs and outputs
    touching = int(((graph.edges.source == evil) | (graph.edges.target == evil)).sum())
    assert int(_data(browser, "highlightedEdges")) == touching > 0
    assert len(browser.find_elements(By.CSS_SELECTOR, "line.edge.hi")) == touching

    full = int(_data(browser, "visibleNodes"))  # the slider prunes
    browser.execute_script(
        "const s = document.getElementById('threshold'); s.value = 0.3; s.dispatchEvent(new Event('input'));"
    )
    assert int(_data(browser, "visibleNodes")) < full
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_large_graph_stays_responsive(browser, tmp_path):
    """3,000 nodes and 20,000 edges (the 5,000 strongest drawn): load and one slider move, timed."""
    n_tokens, per = 60, 50
    n = n_tokens * per
    gen = torch.Generator().manual_seed(0)
    target, source = torch.randint(n, (20_000,), generator=gen), torch.randint(n, (20_000,), generator=gen)
    keep = source < target
    g = sc.AttributionGraph(
        prompt="x" * n_tokens, tokens=list(range(n_tokens)), token_strings=["x"] * n_tokens, sites=["blocks.0.hook_mlp_out"],
        kind=torch.full((n,), int(NodeKind.FEATURE)), site=torch.zeros(n, dtype=torch.long), layer=torch.zeros(n, dtype=torch.long),
        stage=torch.arange(n) % 7, position=torch.arange(n) % n_tokens, index=torch.arange(n),
        activation=torch.rand(n, generator=gen), labels=[f"f{i}" for i in range(n)],
        target_weight=torch.zeros(n, dtype=torch.float64),
        edges=Edges(target[keep], source[keep], torch.randn(int(keep.sum()), generator=gen)), metadata={},
    )  # fmt: skip
    g.kind[-1], g.target_weight[-1] = int(NodeKind.TARGET), 1.0
    start = time.perf_counter()
    _open(browser, g.save(tmp_path / "big.html"), "graph_large")
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    browser.execute_script(
        "const s = document.getElementById('threshold'); s.value = 0.5; s.dispatchEvent(new Event('input'));"
    )
    moved = time.perf_counter() - start
    assert int(_data(browser, "renderedEdges")) == 5000 and int(_data(browser, "renderedNodes")) == n
    print(f"large graph: {n} nodes, 5000 edges drawn; load {loaded:.2f} s, slider {moved * 1000:.0f} ms")
    assert loaded < 10 and moved < 2


def test_automaton_page(browser, tmp_path):
    from sae_circuits.languages import corpus_texts

    model = sc.zoo.load_model("tiny")
    with sc.spliced(model, sc.zoo.load_saes("tiny", kind="resid")):
        fsa = sc.automaton(model, corpus_texts("kvlog", 30, 48)[0], max_states=24, attention_contexts=1,
                           prepend_bos=False, progress=False)  # fmt: skip
    fsa.states[0].label = EVIL
    _open(browser, fsa.save(tmp_path / "fsa.html"), "automaton")
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "alert(1)" not in browser.title
    circles = browser.find_elements(By.CSS_SELECTOR, "svg circle")
    assert len(circles) >= len(fsa.states)
    assert EVIL in browser.page_source.replace("&lt;", "<").replace("&gt;", ">") or EVIL in page


def test_feature_dashboard_page(browser, tmp_path):
    from sae_circuits.dashboard import write_dashboard

    model = sc.zoo.load_model("tiny")
    texts = [
        "The king said unto his daughter,",
        'DATA = "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ="',
        EVIL,
        "def f(x):\n    return x",
    ]
    sae = sc.zoo.load_saes("tiny", kind="resid")[1]
    with sc.spliced(model, [sae]):
        page = write_dashboard(model, sae.cfg.site, 5, texts, tmp_path / "feature.html", k=3, steer_tokens=6)
    _open(browser, page, "dashboard")
    assert int(_data(browser, "renderedContexts")) == 3 and int(_data(browser, "renderedBars")) == 30
    token = browser.find_elements(By.CSS_SELECTOR, "#contexts .tok")[0]
    ActionChains(browser).move_to_element(token).perform()
    assert token.get_attribute("title")  # hover tells the activation
    assert "alert(1)" not in browser.title


def test_feature_families_page(browser, tmp_path):
    import dataclasses

    model = sc.zoo.load_model("tiny")
    tokens = model.to_tokens(
        __import__("sae_circuits.languages", fromlist=["x"]).corpus_texts("markup", 8, 64)[0]
    )
    config = sc.TrainConfig(k=4, batch_size=64, total_tokens=256, buffer_tokens=128,
                            geometric_median_samples=64, progress=False)  # fmt: skip
    saes = [sc.train_sae(model, "blocks.1.hook_resid_post", tokens, dataclasses.replace(config, d_sae=d, seed=d))
            for d in (16, 32, 64)]  # fmt: skip
    families = sc.feature_families(saes, model, tokens)
    sizes = [families.size(0, f) for f in range(16)]
    root = max(range(16), key=sizes.__getitem__)
    families.levels[0].top_tokens[root] = [(EVIL, 1.0)]  # a token that is markup must stay text
    _open(browser, families.write_html(tmp_path / "families.html", family=root), "families")
    assert "alert(1)" not in browser.title
    nodes = browser.find_elements(By.CSS_SELECTOR, "svg#tree rect, svg#tree circle")
    assert len(nodes) >= sizes[root]  # every member of the family is drawn
    assert EVIL in browser.page_source.replace("&lt;", "<").replace("&gt;", ">")
