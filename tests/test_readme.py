"""The README's tour runs as written (offline), and its claims hold on what it computes."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no python block"
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)  # the tour writes graph.json
    exec(compile(blocks[0], str(README), "exec"), namespace)
    model, tokens = namespace["model"], namespace["tokens"]
    assert namespace["acts"].shape == (1, tokens.shape[1], namespace["saes"][1].cfg.d_sae)
    assert namespace["metrics"].explained_variance > 0.5
    assert namespace["out"].shape == (1, tokens.shape[1] + 20)
    assert torch.isfinite(namespace["loss"])
    assert namespace["steered"].shape == namespace["out"].shape
    import sae_circuits as sc

    with torch.no_grad():
        plain = model(tokens)
        with sc.intervene(model, [sc.steer(namespace["sae"], 7, coeff=4.0)]):
            assert not torch.allclose(model(tokens), plain, atol=1e-4)  # the tour's steer acts

    assert not sc.saes_of(model) and "forward" not in model.__dict__
    graph = sc.AttributionGraph.load(tmp_path / "graph.json")
    assert graph.equals(namespace["g"]) and graph.tokens == tokens[0].tolist()
    assert 0 < graph.scores()["replacement"] <= 1
