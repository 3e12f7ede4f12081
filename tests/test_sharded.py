"""Graphs and automata over ranks (sae_circuits.distributed): two gloo processes on the CPU write
the same bytes as one process; resuming, and the refusals of bad ranks and stale folders.

Bytes match when every process uses the same number of intra-op threads (float32 reductions are
split by thread): torchrun sets OMP_NUM_THREADS=1, and so do the workers and the reference here."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import sae_circuits as sc
from sae_circuits.cli import main
from sae_circuits.distributed import attribute_prompts, ranks, sharded_automaton
from sae_circuits.distributed.graphs import MANIFEST
from sae_circuits.distributed.ranks import RankMapper, Ranks

PROMPTS = ["<p>hi</p>", "def f(x):", "<b>x</b>", "import os"]
GRAPH_SETTINGS = {"max_feature_nodes": 4, "batch_size": 16, "targets": None}
FSA_SETTINGS = {
    "max_states": 6,
    "attention_contexts": 2,
    "effect_contexts": 3,
    "effect_positions": 4,
    "progress": False,
}


def _texts() -> list[str]:
    from sae_circuits.languages import corpus_texts

    return corpus_texts("markup", 5, 24, seed=0)[0]


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _worker(rank: int, world_size: int, store: str, out: str) -> None:
    """One rank: its share of the graphs, then the automaton (every rank returns it)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        model = sc.zoo.load_model("tiny")
        with sc.spliced(model, sc.zoo.load_saes("tiny", kind="transcoder")):
            done = attribute_prompts(model, PROMPTS, Path(out, "graphs"), **GRAPH_SETTINGS)
        Path(out, f"computed-{rank}.json").write_text(json.dumps(done.computed))
        with sc.spliced(model, sc.zoo.load_saes("tiny", kind="resid")):
            # ranks may differ in progress bars alone (rank 0's shows), which change no result
            fsa = sharded_automaton(model, _texts(), **{**FSA_SETTINGS, "progress": rank == 0})
        fsa.save(Path(out, f"fsa-{rank}.json"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(_worker, args=(2, str(out / "store"), str(out)), nprocs=2, join=True)
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one_process")
    model = sc.zoo.load_model("tiny")
    with _one_thread():
        with sc.spliced(model, sc.zoo.load_saes("tiny", kind="transcoder")):
            attribute_prompts(model, PROMPTS, out / "graphs", rank=0, world_size=1, **GRAPH_SETTINGS)
        with sc.spliced(model, sc.zoo.load_saes("tiny", kind="resid")):
            sc.automaton(model, _texts(), **FSA_SETTINGS).save(out / "fsa.json")
    return out


def test_two_ranks_write_the_graphs_of_one_process_byte_for_byte(two_ranks: Path, one_process: Path) -> None:
    names = sorted(p.name for p in (one_process / "graphs").iterdir())
    assert names == [f"graph-{i:05d}.json" for i in range(4)] + ["graph-metadata.json", MANIFEST]
    assert sorted(p.name for p in (two_ranks / "graphs").iterdir()) == names
    for name in names:
        assert (two_ranks / "graphs" / name).read_bytes() == (one_process / "graphs" / name).read_bytes(), (
            name
        )
    # round robin: rank r took the prompts i % 2 == r
    assert [json.loads((two_ranks / f"computed-{r}.json").read_text()) for r in (0, 1)] == [[0, 2], [1, 3]]
    manifest = json.loads((two_ranks / "graphs" / MANIFEST).read_text())
    assert manifest["complete"] and [g["file"] for g in manifest["graphs"]] == names[:4]
    listed = json.loads((two_ranks / "graphs" / "graph-metadata.json").read_text())["graphs"]
    assert [g["slug"] for g in listed] == [f"graph-{i:05d}" for i in range(4)]
    assert sc.AttributionGraph.load(two_ranks / "graphs" / "graph-00001.json").prompt == PROMPTS[1]


def test_two_ranks_find_the_automaton_of_one_process(two_ranks: Path, one_process: Path) -> None:
    reference = (one_process / "fsa.json").read_bytes()
    assert (two_ranks / "fsa-0.json").read_bytes() == reference
    assert (two_ranks / "fsa-1.json").read_bytes() == reference


def test_a_resumed_run_computes_only_the_missing_graphs(one_process: Path, tmp_path: Path) -> None:
    folder = tmp_path / "graphs"
    shutil.copytree(one_process / "graphs", folder)
    (folder / "graph-00002.json").unlink()
    (folder / "graph-metadata.json").unlink()
    # what a rank killed mid-write leaves: a hidden temporary, never taken for the graph
    (folder / ".graph-00002.json.999999.x.tmp").write_text("{half")
    model = sc.zoo.load_model("tiny")
    with _one_thread(), sc.spliced(model, sc.zoo.load_saes("tiny", kind="transcoder")):
        done = attribute_prompts(model, PROMPTS, folder, world_size=1, **GRAPH_SETTINGS)
    assert done.computed == [2] and done.skipped == [0, 1, 3]
    for name in ("graph-00002.json", "graph-metadata.json", MANIFEST):
        assert (folder / name).read_bytes() == (one_process / "graphs" / name).read_bytes()


def test_ranks_without_a_process_group_share_the_folder(one_process: Path, tmp_path: Path) -> None:
    """Ranks started as separate jobs: nothing waits; the last one done (rank 0 here) writes the index."""
    model = sc.zoo.load_model("tiny")
    with _one_thread(), sc.spliced(model, sc.zoo.load_saes("tiny", kind="transcoder")):
        second = attribute_prompts(model, PROMPTS, tmp_path, rank=1, world_size=2, **GRAPH_SETTINGS)
        assert second.computed == [1, 3] and second.manifest is None
        first = attribute_prompts(model, PROMPTS, tmp_path, rank=0, world_size=2, **GRAPH_SETTINGS)
        assert first.computed == [0, 2] and first.manifest == tmp_path / MANIFEST
    for path in (one_process / "graphs").iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_folder_made_otherwise_is_refused(one_process: Path, tmp_path: Path) -> None:
    folder = tmp_path / "graphs"
    shutil.copytree(one_process / "graphs", folder)
    model = sc.zoo.load_model("tiny")
    with sc.spliced(model, sc.zoo.load_saes("tiny", kind="transcoder")):
        other = {**GRAPH_SETTINGS, "max_feature_nodes": 5}
        with pytest.raises(ValueError, match=r"other settings.*max_feature_nodes: 4 there, 5 now"):
            attribute_prompts(model, PROMPTS, folder, world_size=1, **other)
        with pytest.raises(ValueError, match=r"prompt 1 is not the prompt its graph .*graph-00001.json"):
            attribute_prompts(model, [PROMPTS[0], "changed", *PROMPTS[2:]], folder, **GRAPH_SETTINGS)
        with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['max_nodes'\]"):
            attribute_prompts(model, PROMPTS, folder, max_nodes=3)
        (folder / MANIFEST).unlink()
        with pytest.raises(ValueError, match=r"holds graph files \(graph-00000.json, ...\) but no manifest"):
            attribute_prompts(model, PROMPTS, folder, **GRAPH_SETTINGS)
    with sc.spliced(model, sc.zoo.load_saes("tiny", kind="resid")):  # another dictionary set
        (folder / MANIFEST).write_text((one_process / "graphs" / MANIFEST).read_text())
        with pytest.raises(ValueError, match=r"another model .*dictionaries:"):
            attribute_prompts(model, PROMPTS, folder, **GRAPH_SETTINGS)


def test_a_graph_left_by_a_longer_prompt_list_is_not_taken_for_another_prompt(
    one_process: Path, tmp_path: Path
) -> None:
    """A run on fewer prompts rewrites the manifest without the graphs it no longer lists; their
    files stay. A later, longer list must not take such a file for its own prompt at that index."""
    folder = tmp_path / "graphs"
    shutil.copytree(one_process / "graphs", folder)
    model = sc.zoo.load_model("tiny")
    with _one_thread(), sc.spliced(model, sc.zoo.load_saes("tiny", kind="transcoder")):
        done = attribute_prompts(model, PROMPTS[:2], folder, world_size=1, **GRAPH_SETTINGS)
        assert done.skipped == [0, 1] and (folder / "graph-00002.json").is_file()
        with pytest.raises(
            ValueError, match=r"holds graph-00002.json, which its manifest.json does not list"
        ):
            attribute_prompts(model, [*PROMPTS[:2], "changed"], folder, world_size=1, **GRAPH_SETTINGS)


@pytest.mark.parametrize(
    ("rank", "world_size", "message"),
    [
        (2, 2, r"rank=2: expected an integer with 0 <= rank < world_size=2"),
        (-1, 2, r"rank=-1: expected"),
        (0, 0, r"world_size=0: expected an integer >= 1"),
        (0, 1.5, r"world_size=1.5: expected an integer >= 1"),
    ],
)
def test_bad_ranks_are_refused(rank: int, world_size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ranks(rank, world_size)


def test_ranks_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert ranks() == Ranks(1, 3, False)
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match=r"environment variable RANK='one': expected an integer"):
        ranks()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert ranks() == Ranks(0, 1, False)


def test_sharing_work_needs_a_process_group() -> None:
    with pytest.raises(ValueError, match=r"world_size=2 ranks needs an initialised torch.distributed"):
        RankMapper(Ranks(0, 2, False))
    with pytest.raises(ValueError, match=r"needs an initialised"):
        sharded_automaton(object(), ["x"], rank=0, world_size=2)


def test_the_graph_command_takes_a_file_of_prompts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("<p>hi</p>\n\n<i>a\\nb</i>\n", encoding="utf-8")
    out = tmp_path / "out"
    args = [
        "graph",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--max-feature-nodes",
        "4",
        "--batch-size",
        "16",
    ]
    assert main(args) == 0
    assert "wrote 2 graphs" in capsys.readouterr().out
    assert sc.AttributionGraph.load(out / "graph-00001.json").prompt == "<i>a\nb</i>"
    assert main([*args, "--slug", "x"]) == 2
    assert "--slug: not with --prompts" in capsys.readouterr().err
    assert main([*args, "--max-feature-nodes", "5"]) == 2  # the folder holds other settings
    assert "max_feature_nodes: 4 there, 5 now" in capsys.readouterr().err
