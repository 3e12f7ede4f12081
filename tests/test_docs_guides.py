"""The guides' opening code runs as written, offline (the README's tour and the analyses guide
have tests of their own): an API rename that leaves a guide behind fails here, not for a reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import sae_circuits as sc

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _run_first_block(guide: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **shrink: str) -> dict:
    """Execute a guide's first python block in ``tmp_path``; ``shrink`` maps a text of the block to
    a smaller stand-in (sizes only, so the test is quick), each of which must be there."""
    text = (DOCS / guide).read_text()
    block = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)[0]
    for old, new in shrink.items():
        assert old in block, f"{guide}: {old!r} is no longer in its first block"
        block = block.replace(old, new)
    monkeypatch.chdir(tmp_path)  # the guides write their files (graph.json, markup.html) here
    before = torch.get_num_threads()
    namespace: dict = {}
    exec(compile(block, str(DOCS / guide), "exec"), namespace)
    assert torch.get_num_threads() == before
    return namespace


def test_quickstart_runs(tmp_path, monkeypatch):
    ns = _run_first_block("quickstart.md", tmp_path, monkeypatch)
    assert ns["acts"].shape[-1] == ns["saes"][1].cfg.d_sae
    assert not sc.saes_of(ns["model"])  # its last line unsplices


def test_attribution_guide_runs(tmp_path, monkeypatch):
    ns = _run_first_block("attribution.md", tmp_path, monkeypatch)
    assert set(ns["g"].scores()) == {"replacement", "completeness"}
    assert ns["nxg"].number_of_edges() > 0 and (tmp_path / "graph.json").stat().st_size > 0
    assert ns["g2"].to_networkx().number_of_nodes() == ns["nxg"].number_of_nodes()  # it loads "small"


def test_automata_guide_runs(tmp_path, monkeypatch):
    ns = _run_first_block(
        "automata.md", tmp_path, monkeypatch,
        **{'corpus_texts("markup", 200, 128, seed=1)': 'corpus_texts("markup", 24, 64, seed=1)',
           "sc.automaton(model, texts, prepend_bos=False)": "sc.automaton(model, texts, prepend_bos=False, "
                                                              "max_states=16, attention_contexts=1)",
           "fsa.validate(model, top=20)": "fsa.validate(model, top=2, n_prompts=4, samples=2)",
           "sc.check_pairs(fsa, model, [(3, 7)])": "sc.check_pairs(fsa, model, [(3, 7)], n_prompts=4, samples=2)"},
    )  # fmt: skip
    assert ns["fsa"].states and (tmp_path / "markup.html").stat().st_size > 0
