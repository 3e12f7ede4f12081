"""The command line: demo runs offline; eval prints metrics; bad input gives one clear error."""

from __future__ import annotations

import json
import re

from sae_circuits.cli import main
from tests.conftest import random_sae


def test_demo_runs(capsys):
    import torch

    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Top features" in out and ("before:" in out or "without:" in out)
    assert torch.equal(torch.rand(2), expected)  # seeded inside, the caller's stream untouched


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
    from sae_circuits.graph.influence import NodeKind

    out = tmp_path / "g.json"
    argv = [
        "graph",
        "--prompt",
        "def foo(x):\n    return",
        "--out",
        str(out),
        "--html",
        "--batch-size",
        "auto",
    ]
    assert main(argv) == 0
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
    assert re.search(
        r"the model's own ceiling .*: mean state F1 (0|1)\.\d{3} at blocks\.\d\.hook_resid_post", printed
    )
    fsa = FeatureAutomaton.load(out)
    from sae_circuits.languages import corpus_texts

    labels = corpus_texts("kvlog", 20, 48, seed=1)[1]  # the command's default: held out
    assert len(fsa.states) == 64 and fsa.lengths.tolist() == [len(row) for row in labels]
    assert (fsa.metadata["effect"], fsa.metadata["exclusive"]) == ("pin", True)  # sc.automaton's defaults
    assert main([*argv, "--effect", "both", "--no-exclusive"]) == 0
    meta = FeatureAutomaton.load(out).metadata
    assert (meta["effect"], meta["exclusive"]) == ("both", False)


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


def test_help_is_fast_and_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\nfrom sae_circuits.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "import sae_circuits as sc\nassert 'torch' not in sys.modules and 'transformer_lens' not in sys.modules\n"
        "print(sc.KVCacheNotFilledError.__name__, sorted(sc.__all__) == sc.__all__ or sc.__all__[0])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: sae-circuits" in done.stdout and "KVCacheNotFilledError" in done.stdout


def test_lazy_package_keeps_its_names():
    import sae_circuits as sc
    import sae_circuits.splice  # importing the submodule must not hide the function

    assert callable(sc.splice) and sc.splice.__name__ == "splice" and callable(sc.attribute)
    assert sc.zoo.__name__ == "sae_circuits.zoo" and set(sc.__all__) <= set(dir(sc))
    assert all(getattr(sc, name) is not None for name in sc.__all__)


def test_eval_sequences_must_be_positive(capsys):
    import pytest

    for flag, value in (("--sequences", "0"), ("--seq-len", "1")):
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "--sae", "x", flag, value])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: must be >= " in err and f"got {value}" in err and "too short" not in err


def test_eval_hostile_cfg_is_one_clear_line(tmp_path, capsys):
    sae_dir = tmp_path / "sae"
    random_sae().save(sae_dir)
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    for key, value in (("d_in", "1e400"), ("d_sae", "-1e999"), ("d_in", '"sixteen"')):
        text = json.dumps({**cfg, key: "@@"}).replace('"@@"', value)
        (sae_dir / "cfg.json").write_text(text)
        assert main(["eval", "--sae", str(sae_dir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sae-circuits eval: error: ") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    (sae_dir / "cfg.json").unlink()
    (sae_dir / "cfg.json").symlink_to(sae_dir / "cfg.json")  # a symlink loop: OSError, not ValueError
    (tmp_path / "dir_sae").mkdir()
    (tmp_path / "dir_sae" / "cfg.json").mkdir()  # IsADirectoryError
    for path in (sae_dir, tmp_path / "dir_sae"):
        assert main(["eval", "--sae", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sae-circuits eval: error: ") and "cfg.json" in err and "Traceback" not in err


def test_unwritable_out_fails_fast_with_one_line(tmp_path, capsys):
    import os

    (tmp_path / "a_file").write_text("")
    bad = tmp_path / "a_file" / "g.json"
    for argv in (
        ["graph", "--prompt", "x", "--out", str(bad)],
        ["automaton", "--out", str(bad)],
        [
            "features",
            "--site",
            "blocks.1.hook_resid_post",
            "--feature",
            "1",
            "--out",
            str(bad.with_suffix(".html")),
        ],
        ["eval", "--sae", "x", "--json", str(bad)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "cannot write to" in err and "a_file" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert main(["graph", "--prompt", "x", "--out", str(ro / "g.json")]) == 2
            assert "Permission denied" in capsys.readouterr().err
        finally:
            ro.chmod(0o700)


def test_out_that_is_a_folder_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "g.json"
    out.write_text("earlier graph")
    out.with_suffix(".html").mkdir()  # --html would write here, after --out had been replaced
    assert main(["graph", "--prompt", "x", "--out", str(out), "--html"]) == 2
    err = capsys.readouterr().err
    assert "--html" in err and "is a folder" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "earlier graph"
    (tmp_path / "d.json").mkdir()
    assert main(["automaton", "--out", str(tmp_path / "d.json")]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_unknown_model_is_one_clear_line(capsys):
    assert main(["graph", "--prompt", "x", "--out", "g.json", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sae-circuits graph: error: --model 'no-such-model'") and "Traceback" not in err


def test_genuine_bugs_still_raise(monkeypatch):
    import pytest

    from sae_circuits import cli

    def bug(args):
        raise RuntimeError("a genuine bug")

    monkeypatch.setattr(cli, "_serve", bug)
    with pytest.raises(RuntimeError, match="a genuine bug"):
        cli.main(["serve", "."])


def test_graph_refuses_to_overwrite_the_folder_listing_before_any_work(tmp_path, capsys):
    """--out DIR/ --slug graph-metadata would put a graph where the viewer reads the folder's
    list of graphs; a malformed existing listing is reported before the attribution runs."""
    assert main(["graph", "--prompt", "hi", "--out", f"{tmp_path}/", "--slug", "graph-metadata"]) == 2
    assert "list of graphs" in capsys.readouterr().err and not list(tmp_path.iterdir())
    (tmp_path / "graph-metadata.json").write_text("[1, 2]")
    assert main(["graph", "--prompt", "hi", "--out", f"{tmp_path}/g.json"]) == 2
    assert 'expected {"graphs": [...]}' in capsys.readouterr().err and not (tmp_path / "g.json").exists()


def test_integer_options_are_bounded_where_they_are_read(capsys):
    """--validate, --chars, -k and the automaton's sizes are refused by argparse, naming the option,
    before any work (a negative --validate used to fail after the whole extraction)."""
    import pytest

    for argv, flag in (
        (["automaton", "--validate", "-2"], "--validate"),
        (["automaton", "--max-states", "0"], "--max-states"),
        (["features", "--site", "s", "--feature", "1", "--out", "f.html", "--chars", "-1000"], "--chars"),
        (["features", "--site", "s", "--feature", "1", "--out", "f.html", "-k", "0"], "-k"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert f"argument {flag}: must be >= " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["graph", "--prompt", "x", "--out", "g.json", "--batch-size", "0"])
    assert "'0' is not a batch size (an integer >= 1, or 'auto')" in capsys.readouterr().err


def test_an_empty_or_broken_prompt_is_refused(tmp_path, capsys, monkeypatch):
    import sae_circuits.demo

    monkeypatch.setattr(sae_circuits.demo, "run", None)  # never reached
    assert main(["demo", "--prompt", ""]) == 2
    assert "--prompt is empty" in capsys.readouterr().err
    assert main(["graph", "--prompt", r"a\ud800b", "--out", str(tmp_path / "g.json")]) == 2
    assert "'\\ud800' at character 1 is not a character" in capsys.readouterr().err


def test_main_leaves_the_callers_warning_filters_alone():
    import warnings

    before = list(warnings.filters)
    main(["serve", "no-such-folder"])
    assert warnings.filters == before


def test_error_lines_keep_the_spaces_inside_a_quoted_value():
    """The one-line error kept only single spaces, so a symbol such as '  two  spaces' was quoted
    as ' two spaces', which the user's spec does not contain."""
    from sae_circuits.cli import _message

    error = ValueError("symbols ['  two  spaces'] are not single tokens:\n  pass --model")
    assert _message(error) == "symbols ['  two  spaces'] are not single tokens: pass --model"


def test_lengths_past_the_context_and_other_encodings_are_one_clear_line(tmp_path, capsys):
    """A reviewer's walk through the CLI: these had been tracebacks (a tensor size mismatch at
    --seq-len 600, an IndexError past 512 generated tokens), a silently cut prompt, characters
    silently dropped from a Latin-1 file, and an error naming the staging file, not --out."""
    sae = "sae_circuits/zoo/tiny/saes/blocks.1.hook_resid_post"
    assert main(["eval", "--sae", sae, "--sequences", "1", "--seq-len", "600"]) == 2
    assert "--seq-len 600: 600 tokens, more than the model's context of 512" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"caf\xe9 " * 200)
    assert main(["eval", "--sae", sae, "--text", str(latin1)]) == 2
    assert "cannot read it as UTF-8 text" in capsys.readouterr().err
    watch = ["--watch", "blocks.1.hook_resid_post:5"]
    assert main(["monitor", "--prompt", "def f(x):", *watch, "--max-new-tokens", "5000"]) == 2
    assert "plus --max-new-tokens 5000: 5005 tokens, more than the model's context" in capsys.readouterr().err
    assert main(["monitor", "--prompt", "x " * 600, *watch, "--max-new-tokens", "1"]) == 2
    assert "more than the model's context of 512" in capsys.readouterr().err  # not cut to 512
    (tmp_path / "trace.jsonl").mkdir()
    assert main(["monitor", "--prompt", "def f(x):", *watch, "--max-new-tokens", "2",
                 "--out", str(tmp_path / "trace.jsonl")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"'{tmp_path / 'trace.jsonl'}'" in err and ".tmp" not in err


def test_features_refuses_a_site_its_sae_does_not_sit_at(tmp_path, capsys):
    """--site blocks.2 with an --sae of blocks.1 had written blocks.1's page without a word."""
    sae = "sae_circuits/zoo/tiny/saes/blocks.1.hook_resid_post"
    out = tmp_path / "f.html"
    argv = [
        "features",
        "--site",
        "blocks.2.hook_resid_post",
        "--sae",
        sae,
        "--feature",
        "5",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    assert "--site 'blocks.2.hook_resid_post': the --sae dictionary sits at 'blocks.1.hook_resid_post'" in (
        capsys.readouterr().err
    )
    assert not out.exists()
