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


def test_graph_writes_a_loadable_pruned_graph_and_html(tmp_path, capsys):
    import sae_circuits as sc
    from sae_circuits.graph.graph import NodeKind

    out = tmp_path / "g.json"
    assert main(["graph", "--prompt", "def foo(x):\n    return", "--out", str(out), "--html"]) == 0
    printed = capsys.readouterr().out
    assert "replacement" in printed and f"wrote {out}" in printed
    g = sc.AttributionGraph.load(out)
    assert g.prompt == "def foo(x):\n    return" and g.metadata["node_threshold"] == 0.8
    assert (g.kind == NodeKind.FEATURE).sum() > 0 and (g.kind == NodeKind.TARGET).sum() >= 1
    assert json.loads(out.read_text())["metadata"]["prompt_tokens"] == g.token_strings
    assert "<svg" in out.with_suffix(".html").read_text()


def test_graph_bad_input_is_one_clear_line(tmp_path, capsys):
    for argv, message in (
        (["--prompt", "", "--out", str(tmp_path / "g.json")], "the prompt is empty"),
        (["--prompt", "x", "--out", str(tmp_path / "g.txt")], "suffix must be .json"),
        (
            ["--prompt", "x", "--out", str(tmp_path / "g.json"), "--node-threshold", "1.5"],
            "--node-threshold 1.5",
        ),
        (["--prompt", "x", "--out", str(tmp_path / "g.json"), "--target", "99999"], "token id 99999"),
    ):
        assert main(["graph", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_automaton_scores_against_the_true_automaton_and_saves(tmp_path, capsys):
    from sae_circuits.fsa import FeatureAutomaton

    out = tmp_path / "fsa.json"
    argv = ["automaton", "--corpus", "kvlog", "--contexts", "20", "--length", "48", "--attention-contexts", "1",
            "--max-states", "64", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean state F1" in printed and "transition AUROC" in printed and f"wrote {out}" in printed
    fsa = FeatureAutomaton.load(out)
    from sae_circuits.cli import corpus_texts

    labels = corpus_texts("kvlog", 20, 48)[1]
    assert len(fsa.states) == 64 and fsa.lengths.tolist() == [len(row) for row in labels]


def test_automaton_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["automaton", "--corpus", "nope", "--out", str(tmp_path / "f.json")]) == 2
    assert "--corpus 'nope'" in capsys.readouterr().err
    assert main(["automaton", "--out", str(tmp_path / "f.txt")]) == 2
    assert "suffix" in capsys.readouterr().err


def test_features_writes_a_dashboard(tmp_path, capsys):
    out = tmp_path / "f.html"
    assert main(["features", "--site", "blocks.1.hook_resid_post", "--feature", "5", "--out", str(out), "-k", "3",
                 "--chars", "300"]) == 0  # fmt: skip
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    assert "blocks.1.hook_resid_post" in page and "http://" not in page
    assert (
        main(
            [
                "features",
                "--site",
                "blocks.9.hook_resid_post",
                "--feature",
                "5",
                "--out",
                str(tmp_path / "g.html"),
            ]
        )
        == 2
    )
    assert "blocks.9.hook_resid_post" in capsys.readouterr().err
