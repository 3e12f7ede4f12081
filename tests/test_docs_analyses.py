"""The analyses guide's opening code (docs/analyses.md) runs as written, offline, and its objects
hold what the guide says they hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

import sae_circuits as sc

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "analyses.md"


def test_the_guides_code_runs(tmp_path, monkeypatch):
    block = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)[0]
    monkeypatch.chdir(tmp_path)  # it writes families.html and trace.jsonl
    before = torch.get_num_threads()
    ns: dict = {}
    exec(compile(block, str(GUIDE), "exec"), ns)
    assert torch.get_num_threads() == before
    assert ns["families"].widths == [256, 512] and ns["match"].cosine.shape == (512,)
    assert ns["shared"].sites[0].neurons is not None and ns["shared"].sites[0].random is not None
    assert {"base64", "markup:ATTR_VALUE"} <= set(ns["versus"].properties)
    assert ns["score"].correlation > 0.5  # the base64 feature is explained by the base64 regex
    assert (tmp_path / "families.html").stat().st_size > 0
    # one row per token the model read: the last sampled token is never run through it
    assert len(sc.load_trace(tmp_path / "trace.jsonl")) == ns["out"].shape[1] - 1
    assert not sc.saes_of(ns["model"])
    json.loads((tmp_path / "trace.jsonl").read_text().splitlines()[0])
