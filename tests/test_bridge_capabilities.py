"""Every capability on the TransformerBridge gives the HookedTransformer's result on the same
weights: attribution graphs, automata and their causal checks, dashboards, evaluation, training.

Both models are the embedded one (``sc.zoo.load(kind=...)``), with copies of the same dictionaries.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

import sae_circuits as sc
from sae_circuits.languages import automata
from tests.conftest import NO_HOOKED

TOL = 1e-4
pytestmark = pytest.mark.skipif(bool(NO_HOOKED), reason=str(NO_HOOKED))


@pytest.fixture(scope="module")
def models():
    return {kind: sc.zoo.load_model("tiny", kind=kind) for kind in ("hooked", "bridge")}


@pytest.fixture(scope="module")
def tokens(models):
    text = "def parse(self, text):\n    return text.split()"
    return models["hooked"].to_tokens(text, prepend_bos=False)[0, :12]


def _each(models, dictionaries):
    """Yield (kind, model) with a fresh copy of ``dictionaries`` spliced; unspliced afterwards."""
    for kind, model in models.items():
        with sc.spliced(model, copy.deepcopy(dictionaries)):
            yield kind, model


def test_attribution_graph_is_the_same(models, tokens):
    dictionaries = sc.zoo.load_saes("tiny", kind="transcoder") + [sc.zoo.load_saes("tiny", kind="resid")[1]]
    graphs = {
        kind: sc.attribute(model, tokens, progress=False) for kind, model in _each(models, dictionaries)
    }
    hooked, bridge = graphs["hooked"], graphs["bridge"]
    assert hooked.n_nodes == bridge.n_nodes > 100 and hooked.n_edges == bridge.n_edges > 1000
    for column in ("kind", "site", "position", "index"):
        assert torch.equal(getattr(hooked, column), getattr(bridge, column)), column
    assert torch.equal(hooked.edges.target, bridge.edges.target)
    assert torch.equal(hooked.edges.source, bridge.edges.source)
    scale = float(hooked.edges.weight.abs().max())
    assert torch.allclose(hooked.edges.weight, bridge.edges.weight, atol=TOL * scale, rtol=0)
    assert torch.allclose(hooked.activation, bridge.activation, atol=TOL, equal_nan=True)
    pruned = {kind: g.prune(0.8, 0.98) for kind, g in graphs.items()}
    assert pruned["hooked"].n_nodes == pruned["bridge"].n_nodes
    scores = {kind: g.scores() for kind, g in pruned.items()}
    assert scores["hooked"] == pytest.approx(scores["bridge"], abs=1e-4)


def test_automaton_and_its_validation_are_the_same(models):
    docs = automata.generate("markup", 12, seed=3)
    texts = ["".join(symbols[:48]) for symbols, _ in docs]
    labels = [states[:48] for _, states in docs]
    fsas, probes = {}, {}
    for kind, model in _each(models, sc.zoo.load_saes("tiny", kind="resid")[:2]):
        fsa = sc.automaton(model, texts, max_states=24, attention_contexts=2, progress=False)
        fsas[kind] = fsa.validate(model, top=3, n_prompts=6, progress=False)
        probes[kind] = sc.probe_states(fsa, model, labels, sites=["blocks.1.hook_resid_post"])
    assert probes["hooked"].best_mean_f1 == pytest.approx(probes["bridge"].best_mean_f1, abs=1e-3)
    hooked, bridge = fsas["hooked"], fsas["bridge"]
    assert [s.members for s in hooked.states] == [s.members for s in bridge.states]
    assert torch.equal(hooked.firing, bridge.firing)
    for mechanism in ("token", "attention"):
        assert torch.allclose(hooked.weights[mechanism], bridge.weights[mechanism], atol=TOL), mechanism
    checked = {kind: [t for t in fsa.transitions if t.effect is not None] for kind, fsa in fsas.items()}
    assert len(checked["hooked"]) == len(checked["bridge"]) == 3
    for a, b in zip(checked["hooked"], checked["bridge"]):
        assert (a.src, a.dst, a.confirmed) == (b.src, b.dst, b.confirmed)
        assert a.effect == pytest.approx(b.effect, abs=TOL)
        assert a.effect_removed == pytest.approx(b.effect_removed, abs=TOL)


def test_dashboard_is_the_same(models):
    texts = [
        "import os\nfor name in os.listdir(path):\n    print(name)",
        "<div class=x>hello</div>",
        "def parse(self, text):\n    return text.split()",
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY",
        "<ul><li>one</li></ul>",
    ]
    pages = {
        kind: sc.feature_dashboard(model, "blocks.1.hook_resid_post", 5, texts, k=4, steer_tokens=6)
        for kind, model in _each(models, [sc.zoo.load_saes("tiny", kind="resid")[1]])
    }
    # the same page, numbers to float round-off (the two models' activations differ by ~1e-6)
    rounded = {
        kind: re.sub(r"-?\d+\.\d+(e-?\d+)?", lambda m: f"{float(m[0]):.3f}", page)
        for kind, page in pages.items()
    }
    assert len(pages["hooked"]) > 1000 and rounded["hooked"] == rounded["bridge"]


def test_evaluation_is_the_same(models):
    rows = models["hooked"].to_tokens(
        ["def f(x):\n    return x + 1\n" * 3, "<p>a b</p><p>c</p>" * 4],
        prepend_bos=False,
        padding_side="right",
    )[:, :24]
    sae = sc.zoo.load_saes("tiny", kind="resid")[2]
    results = {kind: sc.evaluate(model, copy.deepcopy(sae), rows).to_dict() for kind, model in models.items()}
    hooked, bridge = results["hooked"], results["bridge"]
    assert hooked.keys() == bridge.keys()
    for key, value in hooked.items():
        if isinstance(value, float):
            assert math.isclose(value, bridge[key], rel_tol=1e-3, abs_tol=1e-4), key


def test_training_from_bridge_activations_is_the_same(models):
    rows = torch.randint(
        0, models["hooked"].cfg.d_vocab, (64, 33), generator=torch.Generator().manual_seed(0)
    )
    config = sc.TrainConfig(
        k=8, expansion_factor=2, total_tokens=2048, batch_size=128, buffer_tokens=1024, warmup_steps=2,
        geometric_median_samples=256, model_batch_size=8, progress=False, seed=0,
    )  # fmt: skip
    saes = {
        kind: sc.train_sae(model, "blocks.1.hook_resid_post", rows, config) for kind, model in models.items()
    }
    for name, param in saes["hooked"].named_parameters():
        other = dict(saes["bridge"].named_parameters())[name]
        assert torch.allclose(param, other, atol=1e-3), name
