"""The command line: demo runs offline; eval prints metrics; bad input gives one clear error."""

from __future__ import annotations

import json

from sae_circuits.cli import main
from tests.conftest import random_sae


def test_demo_runs(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Top features" in out and ("before:" in out or "without:" in out)


def test_eval_prints_metrics_and_writes_json(tiny_model_dir, tmp_path, capsys):
    sae_dir = tmp_path / "sae"
    random_sae().save(sae_dir)
    out_json = tmp_path / "m.json"
    code = main(["eval", "--sae", str(sae_dir), "--model", str(tiny_model_dir), "--sequences", "4",
                 "--seq-len", "32", "--json", str(out_json)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "explained_variance" in printed and "ce_loss_score" in printed
    metrics = json.loads(out_json.read_text())
    assert metrics["n_tokens"] == 4 * 32 and metrics["baseline"]["site"] == "blocks.0.hook_resid_post"


def test_eval_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["eval", "--sae", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "missing" in err and "Traceback" not in err
