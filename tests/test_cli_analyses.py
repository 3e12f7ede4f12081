"""The analyses' subcommands: ``families`` writes the tree page and its JSON; ``monitor`` prints the
firings, stops where asked and saves a trace that loads back; bad input is one clear line."""

from __future__ import annotations

import dataclasses
import json

import pytest

import sae_circuits as sc
from sae_circuits.cli import main
from sae_circuits.cli_analyses import parse_watch
from sae_circuits.languages import corpus_texts

SITE = "blocks.1.hook_resid_post"


def test_families_writes_the_tree_and_its_data(tmp_path, capsys):
    model = sc.zoo.load_model("tiny")
    tokens = model.to_tokens(corpus_texts("markup", 8, 64, seed=3)[0])
    config = sc.TrainConfig(k=4, batch_size=64, total_tokens=256, buffer_tokens=128,
                            geometric_median_samples=64, progress=False)  # fmt: skip
    folders = []
    for width in (32, 64):
        sae = sc.train_sae(model, SITE, tokens, dataclasses.replace(config, d_sae=width, seed=width))
        sae.save(tmp_path / str(width))
        folders.append(str(tmp_path / str(width)))
    out, data = tmp_path / "fam.html", tmp_path / "fam.json"
    code = main(["families", "--saes", *folders, "--out", str(out), "--json", str(data), "--rows", "8",
                 "--length", "32", "--property", "base64"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    tree = json.loads(data.read_text())
    assert tree["widths"] == [32, 64] and len(tree["levels"][1]["parent"]) == 64
    assert tree["levels"][0]["f1"] is not None  # scored against the base64 rows
    assert '"widths"' in out.read_text()


def test_families_bad_input_is_one_clear_line(tmp_path, capsys):
    sae = sc.zoo.load_saes("tiny")[1]
    sae.save(tmp_path / "a")
    folder = str(tmp_path / "a")
    assert main(["families", "--saes", folder, folder, "--out", str(tmp_path / "f.html")]) == 2
    assert "width" in capsys.readouterr().err
    assert main(["families", "--saes", folder, "--out", str(tmp_path / "f.txt")]) == 2
    assert ".html" in capsys.readouterr().err


def test_monitor_stops_at_the_first_firing_and_saves_the_trace(tmp_path, capsys):
    trace = tmp_path / "trace.jsonl"
    args = [
        "monitor",
        "--prompt",
        "def parse(self, text):",
        "--watch",
        f"{SITE}:5,7",
        "--max-new-tokens",
        "12",
    ]
    assert main([*args, "--threshold", "0", "--out", str(trace)]) == 0
    recorded = capsys.readouterr().out
    rows = sc.load_trace(trace)
    assert rows and "firings" in recorded
    fired = [r for r in rows if r.fired]
    assert main([*args, "--threshold", "0", "--on-fire", "stop", "--no-cache"]) == 0
    stopped = capsys.readouterr().out
    if fired:  # the same first firing, cache on or off
        assert f"stopped at position {fired[0].position}" in stopped


def test_monitor_bad_input_is_one_clear_line(capsys):
    assert main(["monitor", "--prompt", "x", "--watch", f"{SITE}:99999"]) == 2
    assert "99999" in capsys.readouterr().err
    with pytest.raises(ValueError, match="SITE:FEATURE"):
        parse_watch("blocks.1.hook_resid_post")


def test_monitor_refuses_bad_options_before_generating(tmp_path, capsys, monkeypatch):
    """An empty prompt, a bad --out suffix and --max-new-tokens below 1 are named before the model
    loads or generates; --out takes .JSONL as .jsonl, as the other writers do."""
    import sae_circuits._cli_common as common

    monkeypatch.setattr(common, "load_model", lambda spec: pytest.fail("the model loaded before the checks"))
    watch = ["--watch", f"{SITE}:5"]
    for argv, message in (
        (["--prompt", "", *watch], "--prompt is empty"),
        (["--prompt", "x", *watch, "--out", str(tmp_path / "t.txt")], "--out"),
    ):
        assert main(["monitor", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["monitor", "--prompt", "x", *watch, "--max-new-tokens", "-4"])
    assert "argument --max-new-tokens: must be >= 1, got -4" in capsys.readouterr().err
    monkeypatch.undo()
    trace = tmp_path / "t.JSONL"
    assert main(["monitor", "--prompt", "x", *watch, "--max-new-tokens", "2", "--out", str(trace)]) == 0
    assert sc.load_trace(trace)
