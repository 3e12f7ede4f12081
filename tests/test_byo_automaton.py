"""Bring your own automaton: specs, their validation, the generic generator, training a tiny model
on any corpus mix, the example end to end, and the CLI with ``--spec``."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import sae_circuits as sc
from sae_circuits.languages import automata
from sae_circuits.languages.automata import Automaton, load_automaton

ROOT = Path(__file__).resolve().parents[1]
SEXPR = ROOT / "examples" / "automata" / "sexpr.json"


def _spec(**changes):
    """A small valid spec (a loop of three states with an exit), with ``changes`` applied."""
    spec = {
        "name": "abc",
        "states": ["A", "B", "C", "END"],
        "transitions": {
            "START": {"A": ["a"]},
            "A": {"B": [" b", " bb"]},
            "B": {"C": [" c"]},
            "C": {"A": [" a"], "END": ["\n"]},
        },
        "final": ["END"],
        "length": [4, 12],
        "description": "a b c, repeated",
    }
    spec.update(changes)
    return spec


def test_spec_round_trip(tmp_path):
    fsa = Automaton.from_dict(_spec())
    assert fsa.final == ("END",) and fsa.length == (4, 12) and fsa.start == "START"
    path = fsa.save(tmp_path / "sub" / "abc.json")
    again = load_automaton(path)
    assert again == fsa and again.to_dict() == fsa.to_dict() == json.loads(path.read_text())
    assert automata.generate(again, 20, seed=3) == automata.generate(fsa, 20, seed=3)
    # the built-ins round trip too, and keep their bespoke generators
    for name, builtin in automata.AUTOMATA.items():
        copy = Automaton.from_dict(json.loads(json.dumps(builtin.to_dict())))
        assert copy == builtin
        assert automata.generate(copy, 5, seed=1) == automata.generate(name, 5, seed=1)


@pytest.mark.parametrize(
    "spec", sorted((ROOT / "examples" / "automata").glob("*.json")), ids=lambda p: p.stem
)
def test_the_shipped_specs_are_valid_and_single_tokens(spec, tmp_path):
    from sae_circuits.recipes.tokenizer import load_tokenizer, tokenizer_for_automaton

    fsa = load_automaton(spec)
    assert 6 <= len(fsa.states) <= 20 and fsa.name not in automata.AUTOMATA and fsa.name == spec.stem
    folder = tokenizer_for_automaton(fsa, str(tmp_path / "tok"))  # query's keywords need added tokens
    automata.verify_tokenizer(load_tokenizer(str(folder)), automata=[fsa], n_docs=100)  # a str is a path too
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transitions": {**_spec()["transitions"], "D": {"D": [" d"], "A": [" a"]}},
          "states": ["A", "B", "C", "END", "D"]}, r"states \['D'\] are unreachable"),
        ({"transitions": {**_spec()["transitions"], "C": {"A": [" a"], "END": [" a"]}}}, "non-deterministic"),
        ({"transitions": {**_spec()["transitions"], "C": {"A": [" a"], "END": ["\n"], "T": [" t"]}, "T": {"T": [" t"]}},
          "states": ["A", "B", "C", "END", "T"]}, r"dead end: no path from states \['T'\]"),
        ({"states": ["A", "B", "C", "END", "X"]}, r"states \['X'\] label no token"),
        ({"transitions": {**_spec()["transitions"], "B": {"Z": [" c"]}}}, r"B -> 'Z' names an unknown state"),
        ({"transitions": {**_spec()["transitions"], "B": {"C": [""]}}}, "symbol ''"),
        ({"transitions": {**_spec()["transitions"], "B": {"C": [3]}}}, "symbol 3"),
        ({"final": ["NOPE"]}, "NOPE"),
        ({"length": [5, 2]}, "length"),
        ({"length": [True, 5]}, r"length \[True, 5\]"),  # was read as [1, 5]
        ({"start": ["S"]}, r"start \['S'\]: expected the name of one state"),
        ({"transitions": {**_spec()["transitions"], "B": {"C": ["\ud83d"]}}}, r"'\\ud83d' is not valid Unicode"),
        ({"start": "S0"}, r"unknown state 'START'.*no transition leaves the start state 'S0'"),
        ({"transitions": {**_spec()["transitions"], "END": {"START": ["\n"]}}, "final": None},
         r"END -> 'START' enters the start state"),
        ({"states": ["START", "A", "B", "C", "END"]}, r"\['START'\] label no token.*only if the corpus returns"),
        ({"transitions": {**_spec()["transitions"], "B": {"C": [" c", " c"]}}}, r"B -> C lists the symbols \[' c'\] more"),
        ({"states": {"A": 1, "B": 2, "C": 3, "END": 4}}, "states {'A': 1.*expected a list"),  # was read as its keys
        ({"description": 5}, "description 5: expected a string"),
        ({"length": [2.5, 7.9]}, r"length \[2.5, 7.9\]: expected \[min, max\], two whole numbers"),
        ({"final": "END"}, "final 'END': expected a non-empty list"),
        ({"transitions": {**_spec()["transitions"], "B": {"C": [["c"]]}}}, r"symbol \['c'\] is not a non-empty"),
        ({"length": [2, 10**9]}, r"length \[2, 1000000000\]: .*max <= 100,000"),  # generate would hang
    ],
)  # fmt: skip
def test_bad_specs_fail_naming_the_bad_value(changes, message):
    with pytest.raises(ValueError, match=message):
        Automaton.from_dict(_spec(**changes))


def test_counts_and_lengths_of_corpora_are_integers():
    """A bool was one document or one symbol, a negative count no document, with nothing said; a
    code budget that only empty files fit gave a code corpus of empty texts."""
    from sae_circuits.languages import corpus_texts
    from sae_circuits.languages.texts import offline_mix

    for call, message in (
        (lambda: automata.generate("kvlog", True, seed=0), "n_docs=True"),
        (lambda: automata.generate("kvlog", -1, seed=0), "n_docs=-1"),
        (lambda: corpus_texts("markup", 4, True), "length=True"),
        (lambda: corpus_texts("markup", 0, 16), "n=0"),
        (lambda: offline_mix(code_bytes=True), "code_bytes=True"),
        (lambda: offline_mix(code_bytes=10, base64_docs=1, automaton_docs=1), "code_bytes=10: no standard"),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    assert automata.generate("kvlog", 0, seed=0) == []
    assert len(automata.generate("kvlog", np.int64(2), seed=0)) == 2  # NumPy's integers are counts


def test_an_unknown_key_alone_is_named_without_an_empty_missing_list():
    with pytest.raises(ValueError, match=r"'abc': unknown keys \['colour'\]; expected") as caught:
        Automaton.from_dict(_spec(colour="red"))
    assert "missing" not in str(caught.value)


def test_a_non_final_state_without_way_out_is_a_dead_end():
    spec = _spec(
        transitions={"START": {"A": ["a"]}, "A": {"B": [" b"], "END": ["\n"]}}, states=["A", "B", "END"]
    )
    with pytest.raises(ValueError, match=r"dead end.*'B'"):
        Automaton.from_dict(spec)


def test_load_automaton_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_spec(final=["NOPE"])))
    with pytest.raises(ValueError, match="bad.json"):
        load_automaton(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_automaton(bad)


def test_a_spec_that_repeats_a_key_is_refused_not_cut(tmp_path):
    """json keeps the last of repeated keys: a second row for a state, or a second symbol list for
    one transition, would silently define another language than the file reads."""
    good = json.dumps(_spec())
    row = good.replace('"transitions": {', '"transitions": {"A": {"B": [" x"]}, ', 1)
    symbol = good.replace('"B": [', '"B": [" x"], "B": [', 1)
    for text in (row, symbol):
        (tmp_path / "spec.json").write_text(text)
        with pytest.raises(ValueError, match=r"spec.json.*keys \[.*\] appear twice"):
            load_automaton(tmp_path / "spec.json")


def test_automata_are_hashable_and_equal_ones_hash_alike():
    assert hash(automata.MARKUP) == hash(Automaton.from_dict(automata.MARKUP.to_dict()))
    assert (
        len({automata.MARKUP, automata.AUTOMATA["kvlog"], Automaton.from_dict(automata.MARKUP.to_dict())})
        == 2
    )


def test_pack_mix_refuses_one_string_and_a_reserved_name_and_splits_exactly():
    from sae_circuits.recipes.pack import pack_mix
    from sae_circuits.recipes.tokenizer import load_tokenizer
    from sae_circuits.recipes.train_lm import ZOO_TOKENIZER

    tok = load_tokenizer(ZOO_TOKENIZER)
    texts = ["".join(s) for s, _ in automata.generate("kvlog", 100, seed=0)]
    with pytest.raises(ValueError, match="got one string"):
        pack_mix(tok, "".join(texts), seq_len=16)  # was one document per character
    with pytest.raises(ValueError, match="'train_rows'"):
        pack_mix(tok, {"train_rows": texts}, seq_len=16)
    holed = texts[:50] + [texts[50] + "<|endoftext|>" + texts[51]] + texts[52:]
    with pytest.raises(ValueError, match=r"sub-corpus 'kvlog', text 50: it holds '<\|endoftext\|>'"):
        pack_mix(tok, {"kvlog": holed}, seq_len=16)  # was two documents to the model
    for fraction in (0.07, 0.14, 0.28):  # 0.07 * 100 is 7.000000000000001: 8 texts were held out
        corpus = pack_mix(tok, {"kvlog": texts}, seq_len=16, val_fraction=fraction)
        assert corpus.sizes["kvlog"]["val"]["docs"] == round(fraction * 100)


def test_a_checkpoint_of_other_data_or_settings_is_refused_not_returned(tmp_path):
    """A run on another corpus used to resume a checkpoint of the same settings and come back as
    the old model, with no step trained."""
    import dataclasses

    from sae_circuits.recipes.train_lm import train_on_texts

    markup = ["".join(s) for s, _ in automata.generate("markup", 30, seed=0)]
    kvlog = ["".join(s) for s, _ in automata.generate("kvlog", 30, seed=0)]
    checkpoint = tmp_path / "ck.pt"
    train_on_texts({"m": markup}, cfg=_tiny_cfg(), checkpoint=checkpoint, log=lambda _: None)
    resumed: list[str] = []
    train_on_texts({"m": markup}, cfg=_tiny_cfg(), checkpoint=checkpoint, log=resumed.append)
    assert any("resumed" in line for line in resumed)
    with pytest.raises(ValueError, match="ck.pt.*trained on other rows"):
        train_on_texts({"m": kvlog}, cfg=_tiny_cfg(), checkpoint=checkpoint, log=lambda _: None)
    with pytest.raises(ValueError, match=r"ck.pt.*another configuration \(lr: "):
        train_on_texts({"m": markup}, cfg=dataclasses.replace(_tiny_cfg(), lr=1e-4), checkpoint=checkpoint)


@pytest.mark.parametrize(
    ("field", "value"),
    [("eval_every", 0), ("checkpoint_every", 0), ("steps", -1), ("n_head", 3), ("lr", -1.0)],
)
def test_lm_config_refuses_bad_values_naming_them(field, value):
    import dataclasses

    with pytest.raises(ValueError, match=f"{field}={value}|n_head={value}"):
        dataclasses.replace(_tiny_cfg(), **{field: value})


def test_saved_corpus_files_are_replaced_atomically(tmp_path, monkeypatch):
    from sae_circuits.languages import corpus as corpus_module

    docs = [corpus_module.Doc("a b", "x"), corpus_module.Doc("c", "x")]
    corpus_module.save_corpus({"c": {"train": docs}}, tmp_path)
    before = (tmp_path / "c.train.jsonl").read_text()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(corpus_module.json, "dumps", fail)
    with pytest.raises(OSError):
        corpus_module.save_corpus({"c": {"train": docs[:1]}}, tmp_path)
    assert (tmp_path / "c.train.jsonl").read_text() == before


def test_generic_generator_is_deterministic_accepted_by_label_and_ends_final():
    fsa = Automaton.from_dict(_spec())
    docs = automata.generate(fsa, 50, seed=0)
    assert docs == automata.generate(fsa, 50, seed=0) != automata.generate(fsa, 50, seed=1)
    for symbols, states in docs:
        assert automata.label(fsa, symbols) == states
        assert states[-1] in fsa.final_states
        assert fsa.length[0] <= len(symbols) <= fsa.length[1] + len(fsa.states)


def test_a_final_state_without_way_out_does_not_end_documents_early():
    """A walk into a final "sink" ended the document at once: [20, 30] gave 2-6 symbols."""
    sink = {"name": "sink", "states": ["B", "END"], "final": ["END"], "length": [20, 30],
            "transitions": {"START": {"B": ["b"]}, "B": {"B": [" b"], "END": [" ."]}}}  # fmt: skip
    docs = automata.generate(sink, 200, seed=0)  # a spec dict is an automaton too
    lengths = {len(symbols) for symbols, _ in docs}
    assert min(lengths) == 20 and max(lengths) <= 31  # the target, then the step into END
    assert all(automata.label(sink, symbols) == states for symbols, states in docs)


@pytest.mark.parametrize(
    ("length", "message"),
    [([32, 128], r"no document has between 32 and 128 symbols.*the lengths it can have are 2, so"),
     ([3, 3], r"between 3 and 3 symbols.*the lengths it can have are 2, 4, 6, 8, 10, \.\.\., so")],
)  # fmt: skip
def test_a_length_no_document_can_have_is_said_not_ignored(length, message):
    even = {"name": "pairs", "states": ["A", "B"], "final": ["B"], "length": length,
            "transitions": {"START": {"A": ["a"]}, "A": {"B": [" b"]}}}  # fmt: skip
    if length == [3, 3]:  # a loop of even lengths: 2, 4, 6, ...
        even["transitions"]["B"] = {"A": [" a"]}
    with pytest.warns(UserWarning, match=message):
        docs = automata.generate(even, 5, seed=0)
    assert docs  # still generated, outside the range, as the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # _spec's documents have 4, 7, 10, ... symbols
        for fine in ([4, 4], [7, 7], [3, 4], [4, 12]):
            automata.generate(_spec(length=fine), 5, seed=0)  # a length documents can have: nothing said
    for gap in ([5, 6], [1, 3]):  # between two lengths, and below the shortest
        with pytest.warns(UserWarning, match=r"the lengths it can have are 4, 7, 10, 13, 16, \.\.\., so"):
            automata.generate(_spec(length=gap), 1, seed=0)
    finite = {
        "name": "abc",
        "states": ["A"],
        "length": [20_000, 30_000],
        "transitions": {"START": {"A": ["a"]}},
    }
    with pytest.warns(UserWarning, match=r"the lengths it can have are 1, so"):  # not skipped as too long
        automata.generate(finite, 1, seed=0)


SHIPPED_CORPORA = {  # sha256 of generate(spec, 200, seed=1): every figure in the docs rests on these
    "abc": "ee355362fbdc4c22",
    "asm": "502c0206c9ea6e67",
    "chemeq": "659bb89401276109",
    "ini": "a76c6f7413aff9a4",
    "query": "19b311658ab75dbe",
    "recipe": "c4032faf957edd6b",
    "sexpr": "9205a51580c9a8ad",
    "shell": "0fc5ecdfbbe2d890",
    "url": "95cd85a15bfb98ff",
}


def test_the_shipped_specs_corpora_do_not_change():
    import hashlib

    shipped = sorted(p.stem for p in (ROOT / "examples" / "automata").glob("*.json"))
    assert shipped == sorted(SHIPPED_CORPORA), "a new shipped spec: pin its corpus here"
    for name, digest in SHIPPED_CORPORA.items():
        docs = automata.generate(load_automaton(ROOT / "examples" / "automata" / f"{name}.json"), 200, seed=1)
        assert hashlib.sha256(json.dumps(docs).encode()).hexdigest()[:16] == digest, name


def test_label_names_the_position_and_the_symbols_allowed():
    fsa = Automaton.from_dict(_spec())
    with pytest.raises(
        ValueError,
        match=r"at symbol 2 of the document \(counting from 0\): .*' a' is not allowed in state B; allowed there: \[' c'\]",
    ):
        automata.label(fsa, ["a", " b", " a"])
    with pytest.raises(ValueError, match="not one string"):
        automata.label(fsa, "a b c")


def test_specs_as_dicts_and_files_in_other_encodings(tmp_path):
    from sae_circuits.languages import corpus_texts

    texts, labels = corpus_texts(_spec(), 3, 8, seed=0)
    assert len(texts) == 3 and labels is not None and all(1 <= len(x) <= 8 for x in labels)
    with pytest.raises(ValueError, match="corpus 3: expected a name, an Automaton, a spec dict"):
        corpus_texts(3, 3, 8)
    with pytest.raises(ValueError, match="an Automaton or a spec dict"):
        automata.generate(["abc"], 1, seed=0)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(_spec()).encode())  # a byte-order mark is fine
    assert load_automaton(bom) == Automaton.from_dict(_spec())
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps(_spec(description="caf\u00e9"), ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ValueError, match="latin.json.*not UTF-8"):
        load_automaton(latin)


def test_a_special_token_inside_a_symbol_is_refused_by_any_tokenizer():
    """The model's own tokenizer read ``<|endoftext|>`` as one token: the CLI ran such a spec."""
    import sae_circuits as sc

    spec = Automaton.from_dict(_spec(transitions={**_spec()["transitions"], "B": {"C": ["<|endoftext|>"]}}))
    with pytest.raises(
        ValueError, match=r"symbols \['<\|endoftext\|>'\] contain the tokenizer's special tokens"
    ):
        automata.verify_tokenizer(sc.zoo.load_model("tiny").tokenizer, automata=[spec], n_docs=5)


def test_multi_token_and_fused_symbols_are_named():
    from sae_circuits.recipes.tokenizer import load_tokenizer
    from sae_circuits.recipes.train_lm import ZOO_TOKENIZER

    tok = load_tokenizer(ZOO_TOKENIZER)
    multi = Automaton.from_dict(_spec(transitions={**_spec()["transitions"], "B": {"C": [" zqxjv"]}}))
    with pytest.raises(ValueError, match="not single tokens.*zqxjv"):
        automata.verify_tokenizer(tok, automata=[multi])
    # ")" then ")" fuses into the single pre-token "))" in context
    fused = Automaton.from_dict(_spec(transitions={"START": {"A": ["("]}, "A": {"B": ["x"]}, "B": {"C": [")"]},
                                                    "C": {"A": ["("], "END": [")"]}}))  # fmt: skip
    with pytest.raises(ValueError, match="fuse in context"):
        automata.verify_tokenizer(tok, automata=[fused], n_docs=20)


def test_tokenizer_for_automaton_keeps_the_zoo_tokenizer_when_every_symbol_fits(tmp_path):
    from sae_circuits.recipes.tokenizer import tokenizer_for_automaton
    from sae_circuits.recipes.train_lm import ZOO_TOKENIZER

    assert tokenizer_for_automaton(load_automaton(SEXPR), tmp_path / "tok") == ZOO_TOKENIZER
    assert not (tmp_path / "tok").exists()


def test_tokenizer_for_automaton_adds_split_and_fused_symbols(tmp_path):
    from sae_circuits.recipes.tokenizer import load_tokenizer, tokenizer_for_automaton
    from sae_circuits.recipes.train_lm import ZOO_TOKENIZER
    from sae_circuits.zoo.loader import load_tokenizer as load_hf_tokenizer

    zoo = load_tokenizer(ZOO_TOKENIZER)
    split = Automaton.from_dict(
        _spec(transitions={**_spec()["transitions"], "B": {"C": [" zqxjv", "<div>"]}})
    )
    fused = Automaton.from_dict(_spec(transitions={"START": {"A": ["("]}, "A": {"B": ["x"]}, "B": {"C": [")"]},
                                                    "C": {"A": ["("], "END": [")"]}}))  # fmt: skip
    for name, fsa in (("split", split), ("fused", fused)):
        with pytest.raises(ValueError):
            automata.verify_tokenizer(zoo, automata=[fsa], n_docs=20)
        folder = tokenizer_for_automaton(fsa, tmp_path / name, n_docs=20)
        assert folder == tmp_path / name
        tok = load_tokenizer(folder)
        automata.verify_tokenizer(tok, automata=[fsa], n_docs=50)  # one token each, in context too
        hf = load_hf_tokenizer(folder)  # what load_hf_gpt2 gives the model
        automata.verify_tokenizer(hf, automata=[fsa], n_docs=50)
        # every symbol is added (a symbol already in the vocabulary keeps its id)
        assert tok.get_vocab_size() <= zoo.get_vocab_size() + len(fsa.alphabet)
        added = set(tok.get_added_tokens_decoder().values()) - set(zoo.get_added_tokens_decoder().values())
        assert {a.content for a in added} == set(fsa.alphabet)
        other = "hello wörld 😀 <p>"  # text outside the language still encodes, and round trips
        assert tok.decode(tok.encode(other).ids) == other == hf.decode(hf.encode(other))
    assert load_tokenizer(tmp_path / "split").encode(" zqxjv<div>").tokens == [" zqxjv", "<div>"]


def test_verify_tokenizer_checks_every_adjacent_pair_not_only_sampled_documents(tmp_path):
    from sae_circuits.recipes.tokenizer import load_tokenizer, tokenizer_for_automaton
    from sae_circuits.recipes.train_lm import ZOO_TOKENIZER

    # "(" then ")" fuses into "()", on a path that 200 sampled documents almost never take
    zoo = load_tokenizer(ZOO_TOKENIZER)
    words = [w for w in (f" {chr(97 + i)}{chr(97 + j)}" for i in range(26) for j in range(26))
             if len(zoo.encode(w).ids) == 1][:150]  # fmt: skip
    rare = Automaton.from_dict({"name": "rare", "states": ["A", "B", "C"], "final": ["A", "C"], "length": [2, 2],
                                "transitions": {"START": {"A": words, "B": ["("]}, "B": {"C": [")"]}}})  # fmt: skip
    assert ("(", ")") in automata.adjacent_pairs(rare)
    with pytest.raises(ValueError, match=r"fuse in context: \['\(', '\)'\]"):
        automata.verify_tokenizer(zoo, automata=[rare], n_docs=5)
    assert automata.unstable_symbols(zoo, rare, n_docs=5) == ["(", ")"]
    tok = load_tokenizer(tokenizer_for_automaton(rare, tmp_path / "tok", n_docs=5))
    assert tok.encode("()").tokens == ["(", ")"]


@pytest.mark.parametrize(
    "transitions",
    [  # a newcomer's languages: quotes and braces that touch; non-ASCII symbols, tabs, an emoji
        {"START": {"OPEN": ["{"]}, "OPEN": {"KEY": ['"key"', '"id"'], "CLOSE": ["}"]}, "KEY": {"COLON": [":"]},
         "COLON": {"VALUE": [" true", " null", ' "x"']}, "VALUE": {"COMMA": [","], "CLOSE": ["}"]},
         "COMMA": {"KEY": ['"key"', '"id"']}, "CLOSE": {"NL": ["\n"]}, "NL": {"OPEN": ["{"]}},
        {"START": {"OPEN": ["λ"]}, "OPEN": {"KEY": [" café", " naïve"]}, "KEY": {"COLON": ["→"], "KEY": ["\t"]},
         "COLON": {"VALUE": [" 🙂", " ünïcode"]}, "VALUE": {"VALUE": [" ·", "\t"], "CLOSE": [" ∎"]},
         "CLOSE": {"NL": ["\n"]}, "NL": {"OPEN": ["λ"]}},
    ],
    ids=["json-like", "unicode"],
)  # fmt: skip
def test_tokenizer_for_automaton_keeps_odd_symbols_whole_for_every_loader(transitions, tmp_path):
    from sae_circuits.recipes.tokenizer import load_tokenizer, tokenizer_for_automaton
    from sae_circuits.zoo.loader import load_tokenizer as load_hf_tokenizer

    states = sorted({dst for row in transitions.values() for dst in row})
    fsa = Automaton.from_dict({"name": "odd", "states": states, "final": ["NL"], "length": [20, 60],
                               "transitions": transitions})  # fmt: skip
    folder = tokenizer_for_automaton(fsa, tmp_path / "tok", n_docs=50)
    for tok in (load_tokenizer(folder), load_hf_tokenizer(folder)):
        for symbols, _ in automata.generate(fsa, 20, seed=3):
            ids = automata._token_ids(tok, "".join(symbols))
            assert len(ids) == len(symbols) and tok.decode(ids) == "".join(symbols)


def test_pairs_are_all_checked_up_to_a_budget_then_sampled(monkeypatch):
    fsa = load_automaton(SEXPR)
    every = automata.adjacent_pairs(fsa)
    assert automata._pairs_to_check(fsa, seed=0) == every  # under the budget: all of them
    monkeypatch.setattr(automata, "MAX_PAIRS", 50)  # a huge language, in small
    drawn = automata._pairs_to_check(fsa, seed=0)
    assert 0 < len(drawn) <= 50 and set(drawn) <= set(every)
    assert drawn == automata._pairs_to_check(fsa, seed=0) != automata._pairs_to_check(fsa, seed=1)


def test_a_symbol_that_spells_others_is_found_exhaustively_and_refused(tmp_path):
    from sae_circuits.recipes.tokenizer import load_tokenizer, tokenizer_for_automaton

    # "aqc" starts where "a" does and runs into "cd": read longest first, it swallows "a" and "q"
    tri = Automaton.from_dict({"name": "tri", "states": ["A", "B", "C", "D"], "final": ["C", "D"], "length": [1, 3],
                               "transitions": {"START": {"A": ["a"], "D": ["aqc"]}, "A": {"B": ["q"]},
                                               "B": {"C": ["cd"]}}})  # fmt: skip
    assert automata.swallowing_symbol(tri) == ("aqc", ["a", "q", "cd"])
    with pytest.raises(
        ValueError, match=r"'aqc' is read first where a document has the symbols \['a', 'q', 'cd'\]"
    ):
        tokenizer_for_automaton(tri, tmp_path / "tri", n_docs=20)
    # "bqc" starts inside " ab": whole-symbol matching reads " ab" first, so nothing is swallowed,
    # however rare the path (only the failing symbols added would read ' a' 'bqc' 'd')
    fine = Automaton.from_dict({"name": "fine", "states": ["A", "B", "C", "D"], "final": ["C", "D"], "length": [1, 3],
                                "transitions": {"START": {"A": [" ab"], "D": ["bqc"]}, "A": {"B": ["q"]},
                                                "B": {"C": ["cd"]}}})  # fmt: skip
    assert automata.swallowing_symbol(fine) is None
    tok = load_tokenizer(tokenizer_for_automaton(fine, tmp_path / "fine", n_docs=20))
    assert tok.encode(" abqcd").tokens == [" ab", "q", "cd"] and tok.encode("bqc").tokens == ["bqc"]


def test_tokenizer_for_automaton_names_a_language_ambiguous_as_text(tmp_path):
    from sae_circuits.recipes.tokenizer import tokenizer_for_automaton

    # "x" then "y" reads as the symbol "xy": no tokenizer can recover the symbols
    ambiguous = Automaton.from_dict(_spec(states=["A", "B", "C", "END"], transitions={
        "START": {"A": ["x"]}, "A": {"B": ["y"], "C": ["xy"]},
        "B": {"A": ["x"], "END": ["\n"]}, "C": {"A": ["x"], "END": ["\n"]}}))  # fmt: skip
    with pytest.raises(ValueError, match=r"'xy' is read first where a document has the symbols \['x', 'y'\]"):
        tokenizer_for_automaton(ambiguous, tmp_path / "tok", n_docs=20)
    eot = Automaton.from_dict(_spec(transitions={**_spec()["transitions"], "B": {"C": ["<|endoftext|>"]}}))
    with pytest.raises(ValueError, match="document separator"):
        tokenizer_for_automaton(eot, tmp_path / "tok2")
    # the separator formed across two symbols: they fuse into it
    halves = Automaton.from_dict(_spec(transitions={**_spec()["transitions"], "A": {"B": ["<|endof"]},
                                                    "B": {"C": ["text|>"]}}))  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"the symbols \['<\|endof', 'text\|>'\] spell '<\|endoftext\|>', the document separator",
    ):
        tokenizer_for_automaton(halves, tmp_path / "tok3", n_docs=20)
    # added as a token, "°C" would decode as raw bytes: refused by name, not a garbled tokenizer
    accent = Automaton.from_dict(_spec(transitions={**_spec()["transitions"], "B": {"C": ["°C", " zé"]}}))
    with pytest.raises(ValueError, match=r"\['°C'\], added as tokens, do not decode back"):
        tokenizer_for_automaton(accent, tmp_path / "tok4", n_docs=20)
    assert not [p.name for p in tmp_path.iterdir()]  # nothing written, not even a staging folder


def test_verify_tokenizer_accepts_a_hugging_face_tokenizer():
    from sae_circuits import zoo
    from sae_circuits.zoo.loader import load_tokenizer

    hf = load_tokenizer(zoo.model_path("tiny"))
    automata.verify_tokenizer(hf, n_docs=10, automata=["markup", load_automaton(SEXPR)])


def _tiny_cfg(**changes):
    from sae_circuits.recipes.train_lm import LMTrainConfig

    base = {"n_layer": 1, "n_embd": 16, "n_head": 2, "seq_len": 32, "batch_size": 2, "steps": 3,
            "warmup_steps": 1, "eval_every": 3, "eval_rows": 1}  # fmt: skip
    return LMTrainConfig(**{**base, **changes})


def test_train_on_texts_refuses_an_empty_corpus_and_an_empty_validation_split():
    from sae_circuits.recipes.train_lm import train_on_texts

    with pytest.raises(ValueError, match="empty corpus"):
        train_on_texts({}, cfg=_tiny_cfg())
    with pytest.raises(ValueError, match="empty corpus"):
        train_on_texts({"a": ["", ""]}, cfg=_tiny_cfg())
    texts = ["".join(s) for s, _ in automata.generate("kvlog", 20, seed=0)]
    with pytest.raises(ValueError, match="empty validation split.*'short'"):
        train_on_texts({"kvlog": texts, "short": ["x y"] * 10}, cfg=_tiny_cfg())


def test_train_on_texts_mix_saves_a_loadable_model_and_restores_threads(tmp_path):
    from sae_circuits.recipes.train_lm import train_on_texts
    from sae_circuits.zoo.loader import load_hf_gpt2

    mix = {name: ["".join(s) for s, _ in automata.generate(name, 30, seed=0)] for name in ("kvlog", "markup")}
    mix["sexpr"] = ["".join(s) for s, _ in automata.generate(load_automaton(SEXPR), 30, seed=0)]
    before = torch.get_num_threads()
    run = train_on_texts(mix, cfg=_tiny_cfg(), out_dir=tmp_path / "m", log=lambda _: None)
    assert torch.get_num_threads() == before
    assert set(run.stats["val_loss"]) == set(mix) == set(run.corpus.names)
    assert run.corpus.train.shape[1] == 32 and set(run.corpus.train_source.ravel().tolist()) == {0, 1, 2}
    model = load_hf_gpt2(tmp_path / "m")
    assert model.cfg.n_layers == 1 and model.cfg.d_model == 16
    assert json.loads((tmp_path / "m" / "train_stats.json").read_text())["steps"] == 3


def _byo_example(monkeypatch):
    sys.path.insert(0, str(ROOT / "examples"))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the suite's thread count alone
    try:
        import byo_automaton
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return byo_automaton


def test_example_smoke_runs_end_to_end(tmp_path, monkeypatch):
    report = _byo_example(monkeypatch).main(["--smoke", "--out", str(tmp_path)])
    assert report["tokenizer"]["added_symbols"] == 0  # sexpr fits the zoo tokenizer as it is
    assert (tmp_path / "model" / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "saes").iterdir()) == [  # the residual SAE and the transcoder
        "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"
    ]  # fmt: skip
    transcoder = sc.SAE.load(tmp_path / "saes" / "blocks.0.hook_mlp_out")
    assert (transcoder.cfg.hook_name, transcoder.cfg.site) == (
        "blocks.0.ln2.hook_normalized",
        "blocks.0.hook_mlp_out",
    )
    assert set(report["saes"]) >= {"blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"}  # both evaluated
    assert (tmp_path / "automaton.html").is_file()
    assert list(report["automaton"]["probe"]) == [
        "blocks.0.hook_resid_post"
    ]  # the model's ceiling, per layer
    assert 0 <= report["automaton"]["mean_f1"] <= 1 and set(report["automaton"]["state_f1"]) <= set(
        load_automaton(SEXPR).states
    )


@pytest.mark.filterwarnings("ignore:evaluate. one sequence")  # --smoke holds out one row
def test_example_on_a_one_state_language_reports_no_probe_instead_of_crashing(tmp_path, monkeypatch):
    """A probe needs two true states: the example raised after training, with nothing written."""
    spec = Automaton.from_dict({"name": "one", "states": ["A"], "length": [40, 60],
                                "transitions": {"START": {"A": ["a"]}, "A": {"A": [" a"]}}})  # fmt: skip
    report = _byo_example(monkeypatch).main(
        ["--smoke", "--spec", str(spec.save(tmp_path / "one.json")), "--out", str(tmp_path / "out")]
    )
    assert report["automaton"]["probe"] is None and (tmp_path / "out" / "report.json").is_file()
    # strict JSON: the AUROC of a one-state language (no pairs to rank) is null, not NaN
    strict = json.loads((tmp_path / "out" / "report.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert strict["automaton"]["transition_auroc"] is None


def test_example_refuses_a_bad_spec_or_out_before_training_and_leaves_no_global_state(
    tmp_path, monkeypatch, capsys
):
    example = _byo_example(monkeypatch)
    spec = str(SEXPR)
    (tmp_path / "file").write_text("x")
    for argv, message in [
        (["--spec", str(tmp_path)], "not a file (expected an automaton spec"),
        (["--spec", spec, "--out", str(tmp_path / "file")], "is a file, expected a folder"),
        (["--spec", spec, "--out", str(tmp_path / "file" / "below")], "cannot write there"),
        (["--spec", spec, "--docs", "0"], "--docs 0"),
    ]:
        with pytest.raises(SystemExit):
            example.main(["--smoke", "--out", str(tmp_path / "out"), *argv])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(example, "_run", lambda args, out: {"docs": args.docs, "contexts": args.contexts})
    report = example.main(["--smoke", "--docs", "300", "--out", str(tmp_path / "out")])
    assert report == {"docs": 300, "contexts": 6}  # an explicit --docs counts with --smoke
    assert calls == [1, torch.get_num_threads()]  # one thread while it runs, then as it was


def test_importing_the_example_keeps_the_warnings_filters(monkeypatch):
    sys.modules.pop("byo_automaton", None)
    before = list(warnings.filters)
    _byo_example(monkeypatch)
    assert warnings.filters == before


def test_example_refuses_a_bad_spec_in_one_line_without_a_traceback(tmp_path):
    import subprocess

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_spec(final=["NOPE"])))
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "byo_automaton.py"), "--spec", str(bad), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "byo_automaton.py: error:" in run.stderr and "NOPE" in run.stderr


def test_tokenizer_for_automaton_refuses_a_file_as_its_folder(tmp_path):
    from sae_circuits.recipes.tokenizer import tokenizer_for_automaton

    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="'.*file' is a file: expected a folder"):
        tokenizer_for_automaton(Automaton.from_dict(_spec()), tmp_path / "file")


@pytest.mark.filterwarnings("ignore:evaluate. one sequence")  # --smoke holds out one row
def test_example_smoke_with_words_the_zoo_tokenizer_splits(tmp_path, monkeypatch):
    from sae_circuits.zoo.loader import load_hf_gpt2

    spec = _spec(transitions={**_spec()["transitions"], "B": {"C": [" SELECT", "<div>"]}})
    path = tmp_path / "words.json"
    path.write_text(json.dumps(spec))
    report = _byo_example(monkeypatch).main(["--smoke", "--spec", str(path), "--out", str(tmp_path / "out")])
    assert 2 <= report["tokenizer"]["added_symbols"] <= len(Automaton.from_dict(spec).alphabet)
    model = load_hf_gpt2(tmp_path / "out" / "model")  # the model was trained on, and loads, the new tokenizer
    assert model.to_str_tokens("a bb SELECT a b<div>", prepend_bos=False) == [
        "a",
        " bb",
        " SELECT",
        " a",
        " b",
        "<div>",
    ]
    assert model.cfg.d_vocab == len(model.tokenizer)
    assert set(report["automaton"]["state_f1"]) <= {"A", "B", "C", "END"}


def test_corpus_texts_with_a_spec(tmp_path):
    from sae_circuits.languages import corpus_texts

    fsa = load_automaton(SEXPR)
    texts, labels = corpus_texts(str(SEXPR), 5, 40, seed=2)
    again = corpus_texts(fsa, 5, 40, seed=2)
    assert (texts, labels) == again and labels is not None
    docs = automata.generate(fsa, 5, seed=2)
    assert texts == ["".join(s[:40]) for s, _ in docs] and all(len(row) <= 40 for row in labels)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        corpus_texts(str(tmp_path / "missing.json"), 5, 40)


def test_cli_automaton_with_a_spec_on_the_embedded_model(tmp_path, capsys):
    from sae_circuits.cli import main

    out = tmp_path / "fsa.json"
    argv = ["automaton", "--spec", str(SEXPR), "--contexts", "4", "--length", "32", "--attention-contexts", "1",
            "--max-states", "32", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "against the true sexpr automaton" in printed and "ARG2" in printed and out.is_file()
    assert main(["automaton", "--spec", str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    assert "nope.json" in capsys.readouterr().err
    query = ROOT / "examples" / "automata" / "query.json"  # its keywords are not zoo tokens
    assert main(["automaton", "--spec", str(query), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "not single tokens" in error and "--model 'tiny'" in error and "OUT/model" in error
    eot = Automaton.from_dict(_spec(transitions={**_spec()["transitions"], "B": {"C": ["<|endoftext|>"]}}))
    assert main(["automaton", "--spec", str(eot.save(tmp_path / "eot.json")), "--out", str(out)]) == 2
    error = capsys.readouterr().err  # it ran and scored before; no model can carry such a symbol
    assert "contain the tokenizer's special tokens; rename them" in error and "OUT/model" not in error


@pytest.mark.filterwarnings("ignore:state .* is off at only")  # texts of a few tokens: few windows
def test_cli_automaton_reads_a_spec_given_as_corpus_and_checks_validation_windows_early(tmp_path, capsys):
    from sae_circuits.cli import main
    from sae_circuits.fsa import FeatureAutomaton

    out = tmp_path / "fsa.json"
    query = ROOT / "examples" / "automata" / "query.json"  # as --corpus: the tokenizer check runs first
    assert main(["automaton", "--corpus", str(query), "--out", str(out)]) == 2
    assert "not single tokens" in capsys.readouterr().err and not out.exists()
    small = ["--contexts", "4", "--attention-contexts", "1", "--max-states", "16", "--out", str(out)]
    assert main(["automaton", "--spec", str(SEXPR), "--length", "32", "--validate", "2", *small]) == 2
    assert "--length 32: --validate draws windows of --validate-context 32" in capsys.readouterr().err
    assert not out.exists()  # refused before the extraction
    short = Automaton.from_dict({**load_automaton(SEXPR).to_dict(), "length": [6, 12]})  # about 6-14 tokens
    short = short.save(tmp_path / "short.json")
    assert main(["automaton", "--corpus", str(short), "--length", "64", "--validate", "2", *small]) == 2
    error = capsys.readouterr().err
    assert "lower context (--validate-context 32;" in error and "holds the automaton, unvalidated" in error
    assert out.is_file() and all(t.confirmed is None for t in FeatureAutomaton.load(out).transitions)
    argv = [
        "automaton",
        "--corpus",
        str(short),
        "--length",
        "64",
        "--validate",
        "2",
        "--validate-context",
        "3",
    ]
    assert main([*argv, *small]) == 0
    assert "(with the checks)" in capsys.readouterr().out
    assert any(t.confirmed is not None for t in FeatureAutomaton.load(out).transitions)


def test_save_model_replaces_files_atomically_and_keeps_the_folder(tmp_path):
    """The model folder may hold other things (the zoo keeps its dictionaries there): saving
    replaces the model's files, leaves the rest, and leaves no staging folder behind."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from sae_circuits.recipes.train_lm import ZOO_TOKENIZER, save_model

    model = GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    folder = tmp_path / "model"
    (folder / "saes").mkdir(parents=True)
    (folder / "saes" / "keep.txt").write_text("mine")
    (folder / "config.json").write_text("{}")
    save_model(model, ZOO_TOKENIZER, folder)
    assert (folder / "saes" / "keep.txt").read_text() == "mine"
    assert '"n_embd": 16' in (folder / "config.json").read_text()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_distance_to_final_is_the_shortest_path():
    """A state set in one round was read by the next state of the same round, one step too far
    (3 of 578 random automata); the walk's "steps that bring it closer" rely on it."""
    import collections
    import random

    from sae_circuits.languages.automata import _distance_to_final

    def shortest(a):
        before = collections.defaultdict(set)
        for src, row in a.transitions.items():
            for dst in row:
                before[dst].add(src)
        dist, queue = dict.fromkeys(a.final_states, 0), collections.deque(a.final_states)
        while queue:
            state = queue.popleft()
            for src in sorted(before[state]):
                if src not in dist:
                    dist[src] = dist[state] + 1
                    queue.append(src)
        return dist

    rng, checked = random.Random(2), 0
    for i in range(3000):
        states = [f"S{j}" for j in range(rng.randint(2, 7))]
        table = {}
        for src in ["START", *states]:
            row = {}
            for symbol in "abcd":
                if rng.random() < 0.4:
                    row.setdefault(rng.choice(states), []).append(symbol)
            if row:
                table[src] = row
        try:
            a = Automaton(f"r{i}", tuple(states), table, final=rng.sample(states, 1))
        except ValueError:
            continue
        checked += 1
        assert _distance_to_final(a) == shortest(a), a.to_dict()
    assert checked > 500


def test_symbols_that_spell_the_separator_are_refused_even_with_the_zoo_tokenizer(tmp_path):
    from sae_circuits.recipes.tokenizer import tokenizer_for_automaton

    chain = ["<", "|", "end", "of", "text", "|", ">"]
    states = ("X", *(f"C{i}" for i in range(len(chain))))
    table = {"START": {"X": ("x",)}, "X": {"X": (" the",), "C0": ("<",)}}
    for i in range(1, len(chain)):
        table[f"C{i - 1}"] = {f"C{i}": (chain[i],), "X": (" a",)}
    table[f"C{len(chain) - 1}"] = {"X": (" z",)}
    spelled = Automaton("eotspell", states, table, final=("X",), length=(5, 10))
    with pytest.raises(
        ValueError, match=r"eotspell: the symbols \['<', '\|', 'end'.*spell '<\|endoftext\|>'"
    ):
        tokenizer_for_automaton(spelled, tmp_path / "tok", n_docs=200)


def test_pack_and_checkpoint_arguments_fail_before_any_work(tmp_path):
    import torch

    from sae_circuits.recipes.pack import pack_mix
    from sae_circuits.recipes.random_model import random_gpt2
    from sae_circuits.recipes.tokenizer import load_tokenizer
    from sae_circuits.recipes.train_lm import ZOO_TOKENIZER, LMTrainConfig, train_on_texts

    tok = load_tokenizer(ZOO_TOKENIZER)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"seq_len={bad!r}: expected an integer >= 1"):
            pack_mix(tok, {"a": ["x y z"] * 20}, bad)
    cfg = LMTrainConfig(n_layer=1, n_embd=32, n_head=2, seq_len=16, batch_size=2, steps=3)
    texts = {"markup": ["".join(s) for s, _ in automata.generate("markup", 20, seed=1)]}
    with pytest.raises(ValueError, match="the folder .*nowhere' does not exist"):
        train_on_texts(texts, cfg=cfg, val_fraction=0.25, checkpoint=tmp_path / "nowhere" / "ck.pt",
                       log=lambda line: None)  # fmt: skip
    torch.manual_seed(7)  # a new random model leaves the caller's random numbers alone
    expected = torch.rand(2)
    torch.manual_seed(7)
    random_gpt2(tmp_path / "rand")  # the loader's default kind: HookedTransformer or bridge
    assert torch.equal(torch.rand(2), expected)
