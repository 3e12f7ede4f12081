"""The example scripts run offline on the embedded model, and what they print holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import sae_circuits as sc

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_attribution_example_checks_an_edge_and_writes_every_format(tmp_path):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "attribution_graph.py"), "--out-dir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    edge, effect = map(float, re.search(r": ([-+][\d.]+); removing .* by ([-+][\d.]+)", out.stdout).groups())
    assert abs(edge - effect) <= 1e-4 * abs(edge) + 1e-5, out.stdout  # the edge is exact
    for suffix in ("json", "graphml", "dot", "html"):
        assert (tmp_path / f"graph.{suffix}").stat().st_size > 0
    graph = sc.AttributionGraph.load(tmp_path / "graph.json")
    assert graph.metadata["node_threshold"] == 0.8


@pytest.mark.end_to_end
def test_dashboard_and_automata_examples_run(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLES / "feature_dashboard.py"), "--out", str(tmp_path / "f.html")],
                   capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    assert "blocks.1.hook_resid_post" in (tmp_path / "f.html").read_text()
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "automata_loops.py"), "--contexts", "20", "--prompts", "4", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    assert "the paper's loop through the matched states" in out.stdout and "95% CI" in out.stdout
    assert "kvlog:" in out.stdout and "KEY" in out.stdout and "loops (no labels used)" in out.stdout
    assert "the base64 state" in out.stdout and "base64 continuations" in out.stdout
    assert (tmp_path / "markup.html").exists() and (tmp_path / "base64.json").exists()


@pytest.mark.end_to_end
def test_analysis_examples_run(tmp_path):
    def run(script: str, *args: str) -> str:
        return subprocess.run([sys.executable, str(EXAMPLES / script), *args],
                              capture_output=True, text=True, check=True, timeout=600).stdout  # fmt: skip

    families = run("feature_families.py", "--smoke")
    assert "The base64 family" in families and "->" in families
    scores = run("explanation_scores.py", "--smoke", "--out-dir", str(tmp_path))
    assert (tmp_path / "explanations.svg").read_text().startswith("<svg") and "random" in scores
    monitored = run("monitor_generation.py", "--out", str(tmp_path / "trace.jsonl"))
    assert "stop: halted at position" in monitored and sc.load_trace(tmp_path / "trace.jsonl")


@pytest.mark.end_to_end
def test_universality_and_neurons_example_without_a_second_model(tmp_path):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "universality_and_neurons.py"), "--second", str(tmp_path / "none"),
         "--cache", str(tmp_path / "cache"), "--figures", str(tmp_path), "--rows", "8"],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    assert "Skipping universality" in out.stdout and "markup:ATTR_VALUE" in out.stdout
    assert (tmp_path / "neurons.svg").read_text().startswith("<svg")
