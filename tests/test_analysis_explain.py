"""Offline interpretability scores: predicates on hand-made rows, scores against hand-computed
values, a planted feature scoring 1 and a random explanation about 0, trained above random
dictionaries on the embedded model, and errors that name the bad value."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import sae_circuits as sc
from sae_circuits.analysis._stats import labelled_rows
from sae_circuits.analysis.explain import (
    _shared_scores,
    activation_scores,
    explain_feature,
    explanation_scores,
    logit_scores,
    score_explanation,
)
from sae_circuits.analysis.predicates import (
    AutomatonState,
    FromFunction,
    Regex,
    TokenRows,
    TokenSet,
    evaluate,
    token_rows,
)
from sae_circuits.languages import automata, corpus_texts, offline_mix

EOT = "<|endoftext|>"


def rows_of(*rows: list[str]) -> TokenRows:
    """Hand-made rows: the vocabulary is every string used, in order of appearance."""
    vocab = list(dict.fromkeys([EOT, *(s for row in rows for s in row)]))
    ids = torch.tensor([[vocab.index(s) for s in row] for row in rows])
    return TokenRows(ids, [list(r) for r in rows], vocab, EOT)


# ---------------------------------------------------------------------------- predicates


def test_regex_maps_character_offsets_to_the_tokens_a_match_overlaps() -> None:
    rows = rows_of(["ab", "c=", "12", " x"], ["=1", "2", "3=", "y"])
    # row 0 text "abc=12 x": "=12" is characters [3, 6): it overlaps "c=" [2, 4) and "12" [4, 6)
    # but not " x" [6, 8), which starts where the match ends
    assert Regex(r"=\d+").values(rows).tolist() == [[0, 1, 1, 0], [1, 1, 1, 0]]
    # two matches in one token ("3=" ends one match and starts nothing; "=1" holds a whole match)
    assert Regex(r"\d").values(rows).tolist() == [[0, 0, 1, 0], [1, 1, 1, 0]]
    # empty matches select nothing; a match never crosses rows ("x" + "=1" is not searched)
    assert Regex(r"q*").values(rows).tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert Regex(r"x=").values(rows).sum() == 0
    assert rows.spans(0) == [(0, 2), (2, 4), (4, 6), (6, 8)] and rows.text(1) == "=123=y"


def test_regex_on_decoded_model_tokens(model_and_saes) -> None:
    model, _ = model_and_saes
    tokens = model.to_tokens(["<b id=new src=here lang=that>"])
    rows = token_rows(model, tokens)
    assert rows.text(0) == "<b id=new src=here lang=that>"
    chosen = [s for s, v in zip(rows.strings[0], Regex(r"=\w+").values(rows)[0].tolist()) if v]
    assert chosen == ["=", "new", "=", "here", "=", "that"]


def test_token_set_matches_every_id_of_its_strings() -> None:
    rows = rows_of(["a", "b", "a", "c"])
    assert TokenSet(["a", "c"]).values(rows).tolist() == [[1, 0, 1, 1]]
    rows.vocab.append("a")  # a second id decoding to "a"
    assert TokenSet(["a"]).ids(rows) == [1, len(rows.vocab) - 1]


def test_byte_tokens_have_names_of_their_own(model_and_saes) -> None:
    """The 128 byte tokens that are no UTF-8 character alone all decode to U+FFFD; as vocabulary
    names they are their bytes, so a token set proposed from one means that token, not all 128."""
    model, _ = model_and_saes
    tokens = model.to_tokens(["naïve café — über"], prepend_bos=False)
    rows = token_rows(model, tokens)
    assert len(set(rows.vocab)) == len(rows.vocab)
    assert (
        rows.text(0) == "na\ufffd\ufffdve caf\ufffd\ufffd \ufffd\ufffd\ufffd \ufffd\ufffdber"
    )  # decoded text
    names = [rows.vocab[i] for i in tokens[0].tolist()]
    assert names[1:3] == ["<0xC3>", "<0xAF>"] and names[9:12] == ["<0xE2>", "<0x80>", "<0x94>"]
    assert {n for n in rows.vocab if n.startswith("<0x")} == {f"<0x{b:02X}>" for b in range(128, 256)}
    assert TokenSet(["<0xC3>"]).values(rows)[0].tolist() == [float(n == "<0xC3>") for n in names]


AB = automata.Automaton(
    "ab", ("A", "B"), {"START": {"A": ("a",)}, "A": {"B": (" b",)}, "B": {"A": (" a",)}}, final=("B",)
)
ALTERNATE = automata.Automaton(
    "alt", ("A", "B"), {"START": {"A": ("a",)}, "A": {"B": ("a",)}, "B": {"A": ("a",)}}
)


def test_automaton_state_restarts_at_end_of_text_and_syncs_mid_document() -> None:
    rows = rows_of(
        ["a", " b", " a", EOT, "a"],  # from the start: A B A | A
        [" b", " a", " b", "x", " a"],  # mid-document: " b" is read only from A, so B; "x" leaves
    )
    assert AutomatonState(AB, ["A"]).values(rows).tolist() == [[1, 0, 1, 0, 1], [0, 1, 0, 0, 0]]
    assert AutomatonState(AB, "B").values(rows).tolist() == [[0, 1, 0, 0, 0], [1, 0, 1, 0, 0]]
    # "a" alternates A and B: mid-document the state stays unknown (NaN) until an end-of-text
    alt = AutomatonState(ALTERNATE, ["A"]).values(rows_of(["a", "a", EOT, "a", "a"]))
    assert torch.isnan(alt[0, :2]).all() and alt[0, 2:].tolist() == [0, 1, 0]


def test_automaton_state_agrees_with_the_true_labels_of_generated_documents(model_and_saes) -> None:
    model, _ = model_and_saes
    texts, states = corpus_texts("markup", 6, 40, seed=3)
    assert states is not None
    eot = model.tokenizer.eos_token_id
    stream = [t for text in texts for t in [eot, *model.to_tokens(text, prepend_bos=False)[0].tolist()]]
    rows = token_rows(model, torch.tensor([stream]))
    truth = [s for doc in states for s in ["-", *doc]]
    for state in ("TEXT", "ATTR_VALUE", "CLOSE"):
        values = AutomatonState("markup", [state]).values(rows)[0].tolist()
        assert values == [float(t == state) for t in truth], state


def test_a_function_plugs_in_as_a_predicate() -> None:
    rows = rows_of(["a", "B", "c"])
    upper = FromFunction.per_token(lambda s, i: s[i].isupper(), name="upper case", description="capitals")
    assert evaluate(upper, rows).tolist() == [[0, 1, 0]] and upper.description == "capitals"
    graded = FromFunction(lambda r: [[0.25, float("nan"), 1.0]], name="llm")
    assert torch.isnan(graded.values(rows)[0, 1]) and graded.values(rows)[0, 0] == 0.25


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: Regex("(unclosed"), "(unclosed"),
        (lambda: Regex(""), "''"),
        (lambda: TokenSet([]), "[]"),
        (lambda: TokenSet("abc"), "'abc'"),
        (lambda: TokenSet(["a", ""]), "''"),
        (lambda: AutomatonState("markup", ["OPEN", "NOPE"]), "NOPE"),
        (lambda: AutomatonState("markup", []), "[]"),
        (lambda: AutomatonState("nope", ["A"]), "nope"),
        (lambda: FromFunction("not callable", name="x"), "not callable"),
        (lambda: evaluate("a string", rows_of(["a"])), "a string"),  # type: ignore[arg-type]
        (lambda: TokenSet(["zz"]).values(rows_of(["a"])), "zz"),
        (lambda: FromFunction(lambda r: [[1.0]], name="wrong").values(rows_of(["a", "b"])), "(1, 2)"),
    ],
)
def test_bad_explanations_raise_errors_naming_the_value(make, named: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        make()
    assert named in str(info.value)


# ---------------------------------------------------------------------------- scores


def test_activation_scores_match_hand_computed_values() -> None:
    acts = torch.tensor([[0.0, 1.0], [2.0, 1.0], [1.0, 0.0], [0.0, 5.0]])
    values = torch.tensor([[0.0, 1.0], [1.0, float("nan")], [0.0, 0.0], [0.0, 1.0]])
    s = activation_scores(acts, values)
    # column 0: a = (0 2 1 0), v = (0 1 0 0): cov 1.25, |a - mean|^2 2.75, |v - mean|^2 0.75
    assert s.correlation[0].item() == pytest.approx(1.25 / (2.75 * 0.75) ** 0.5, abs=1e-6)
    assert (s.precision[0].item(), s.recall[0].item(), s.f1[0].item()) == pytest.approx((1, 0.5, 2 / 3))
    # column 1: the NaN token is left out: a = (1 0 5), v = (1 0 1); fired {0, 2}, chosen {0, 2}
    a, v = torch.tensor([1.0, 0, 5]), torch.tensor([1.0, 0, 1])
    r = ((a - a.mean()) * (v - v.mean())).sum() / ((a - a.mean()).norm() * (v - v.mean()).norm())
    assert s.correlation[1].item() == pytest.approx(r.item(), abs=1e-6) and s.f1[1].item() == 1.0
    constant = activation_scores(torch.zeros(3, 1), torch.tensor([[1.0], [0], [1]]))
    assert constant.correlation.item() == 0 and constant.f1.item() == 0


def test_activation_scores_in_chunks_equal_one_column_at_a_time() -> None:
    gen = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(50, 300, generator=gen))
    values = (torch.rand(50, 300, generator=gen) < 0.3).float()
    values[::7, ::3] = float("nan")
    together = activation_scores(acts, values)
    for f in (0, 255, 256, 299):
        alone = activation_scores(acts[:, f : f + 1], values[:, f : f + 1])
        for a, b in zip(together, alone, strict=True):
            assert a[f].item() == pytest.approx(b[0].item(), abs=1e-6)


def test_one_predicate_against_every_feature_equals_the_general_scores() -> None:
    gen = torch.Generator().manual_seed(1)
    acts = torch.relu(torch.randn(80, 5, generator=gen))
    values = (torch.rand(80, generator=gen) < 0.4).float()
    values[::9] = float("nan")
    fast, general = _shared_scores(acts, values), activation_scores(acts, values[:, None].expand(80, 5))
    for a, b in zip(fast, general, strict=True):
        assert a.tolist() == pytest.approx(b.tolist(), abs=1e-5)


def test_logit_scores_match_hand_computed_values() -> None:
    effects = torch.tensor([[0.5, 3.0, 1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 0.0, 2.0]])
    members = torch.tensor([[0, 1, 0, 1, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    s = logit_scores(effects, members)
    # row 0: the set is the top 2 -> AUROC 1, precision@2 1
    # row 1: set {1.0, 2.0} vs rest {1.0, 1.0, 0.0}: 1.0 wins 1 + ties 2 x 1/2, 2.0 wins 3: 5 of 6
    assert s.auroc.tolist() == pytest.approx([1.0, 5 / 6])
    assert s.precision[0].item() == 1.0
    empty = logit_scores(effects[:1], torch.zeros(1, 5, dtype=torch.bool))
    assert torch.isnan(empty.auroc).all()


def test_logit_precision_counts_ties_at_the_cut_fairly() -> None:
    """Precision@|set| does not depend on how ties are ordered: it is the mean over every order
    of the tokens (every tie-breaking), computed here by brute force."""
    swapped = logit_scores(
        torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2), torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]]) > 0
    )
    assert swapped.precision.tolist() == [0.5, 0.5]  # one of two tied places
    generator = torch.Generator().manual_seed(0)
    effects = torch.randint(0, 3, (40, 6), generator=generator).float()
    members = torch.rand(40, 6, generator=generator) < 0.4
    members[0], members[1] = False, True  # the empty set (NaN) and the whole vocabulary (1)
    got = logit_scores(effects, members).precision
    orders = torch.tensor(list(itertools.permutations(range(6))))  # [720, 6]
    for row in range(40):
        size = int(members[row].sum())
        if size == 0:
            assert torch.isnan(got[row])
            continue
        # a tie-breaking: sort by effect, equal effects in the order of ``order`` (stable sort)
        hits = [
            members[row][o[effects[row][o].argsort(descending=True, stable=True)][:size]].sum()
            for o in orders
        ]
        assert got[row].item() == pytest.approx(float(torch.stack(hits).double().mean()) / size), row


# ---------------------------------------------------------------------------- on a model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread (the machine is shared), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_and_saes():
    torch.manual_seed(0)
    return sc.zoo.load("tiny")


@pytest.fixture(scope="module")
def splits(model_and_saes):
    """Rows of 64 tokens from every source of the offline mix: a training and a held-out split."""
    model, _ = model_and_saes
    small = {"code_bytes": 60_000, "base64_docs": 20, "automaton_docs": 40}
    train_mix, test_mix = offline_mix(seed=11, **small), offline_mix(seed=12, **small)
    test_mix["code"] = test_mix["code"][::-1]  # the code is the same files in the same order
    train, test = labelled_rows(model, train_mix, 64, 8), labelled_rows(model, test_mix, 64, 8)
    assert not set(map(tuple, train.tokens.tolist())) & set(map(tuple, test.tokens.tolist()))
    return train.tokens, test.tokens


def planted(model, token_ids: list[int], output: list[int] | None = None) -> sc.SAE:
    """Feature 0 reads the token embedding and fires (value 1) exactly on ``token_ids``; its
    decoder, if ``output`` is given, is the least-squares direction whose logit effect is 1 on
    ``output`` and 0 elsewhere."""
    w_e = model.W_E.detach().float()
    cfg = sc.SAEConfig("standard", d_in=w_e.shape[1], d_sae=4, hook_name="hook_embed")
    sae = sc.SAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        # the least-norm w with W_E[t] . w = 1 for every t of token_ids: smaller elsewhere
        w = torch.linalg.pinv(w_e[token_ids]) @ torch.ones(len(token_ids))
        pre = w_e @ w
        others = pre[[i for i in range(len(pre)) if i not in token_ids]].max()
        assert others < 0.9, others
        mid = (1 + others) / 2  # relu((pre - mid) / (1 - mid)): 1 on the set, 0 off (with a margin)
        sae.W_enc[:, 0] = w / (1 - mid)
        sae.b_enc[0] = -mid / (1 - mid)
        sae.W_dec[1:] = torch.randn(3, w_e.shape[1], generator=torch.Generator().manual_seed(0))
        if output is not None:
            y = torch.zeros(model.W_U.shape[1])
            y[output] = 1.0
            sae.W_dec[0] = torch.linalg.lstsq(model.W_U.detach().float().T, y[:, None]).solution[:, 0]
    return sae


def test_a_planted_feature_scores_one_and_a_random_explanation_about_zero(model_and_saes, splits) -> None:
    model, _ = model_and_saes
    train, test = splits
    if "hook_embed" not in model.hook_dict:
        pytest.skip("this model kind has no hook_embed")
    rows = token_rows(model, test)
    target = rows.vocab.index("=")
    outputs = [rows.vocab.index(s) for s in ("div", " class", "span")]
    sae = planted(model, [target], outputs)
    exact = score_explanation(
        model, sae, 0, TokenSet(["="]), test, output=TokenSet(["div", " class", "span"])
    )
    assert exact.correlation == pytest.approx(1.0, abs=1e-4) and exact.f1 == 1.0
    assert exact.n_fired == exact.n_selected == int((test[:, 1:] == target).sum()) > 20
    assert exact.logit_auroc > 0.99 and exact.logit_precision == 1.0
    gen = torch.Generator().manual_seed(0)
    noise = FromFunction(lambda r: (torch.rand(r.tokens.shape, generator=gen) < 0.1).float(), name="noise")
    drawn = torch.randperm(len(rows.vocab), generator=gen)[:50].tolist()
    anything = TokenSet([rows.vocab[i] for i in drawn if rows.vocab[i].isalpha()])
    chance = score_explanation(model, sae, 0, noise, test, output=anything)
    assert abs(chance.correlation) < 0.1 and chance.f1 < 0.25 and abs(chance.logit_auroc - 0.5) < 0.2
    # the offline explainer finds the planted token on the training split alone
    found = explain_feature(model, sae, 0, train, test)
    assert isinstance(found.predicate, TokenSet) and found.predicate.tokens == ("=",)
    assert found.score.correlation > 0.99 and found.score.f1 == 1.0


def test_candidates_win_where_they_explain_better(model_and_saes, splits) -> None:
    model, _ = model_and_saes
    train, test = splits
    if "hook_embed" not in model.hook_dict:
        pytest.skip("this model kind has no hook_embed")
    vocab = token_rows(model, test[:1]).vocab
    sae = planted(model, [vocab.index("<"), vocab.index("</")])
    both = TokenSet(["<", "</"], name="tag openers")  # e.g. an LLM's explanation
    r = explanation_scores(model, sae, train, test, features=[0], k=1, candidates=[Regex("zzz"), both])
    assert r.explanations[0] is both and r.activation.correlation[0] > 0.99
    alone = explanation_scores(model, sae, train, test, features=[0], k=1)
    assert alone.activation.correlation[0] < 0.9  # one token cannot explain both
    record = json.loads(json.dumps(r.to_dict()))["features"][0]
    assert record["explanation"] == "tag openers" and record["f1"] == pytest.approx(1.0)


def test_trained_dictionaries_are_explained_better_than_random_ones(model_and_saes, splits) -> None:
    model, saes = model_and_saes
    train, test = splits
    sae = saes[1]
    random = sc.random_like(sae, model, train, seed=0)
    trained_r = explanation_scores(model, sae, train, test, features=60, seed=0)
    random_r = explanation_scores(model, random, train, test, features=60, seed=0)
    assert len(trained_r.features) == len(random_r.features) == 60
    for name in ("correlation", "precision"):
        t = getattr(trained_r.activation, name).median()
        r = getattr(random_r.activation, name).median()
        assert t > r + 0.05, (name, float(t), float(r))  # F1 does not separate them at every layer
    summary = trained_r.summary()
    assert 0 < summary["correlation"]["median"] < 1 and 0 <= summary["f1"]["fraction_above_half"] <= 1
    # an even count: the median is the mean of the two middle values (torch's median is the lower)
    values = trained_r.activation.correlation
    values = values[~torch.isnan(values)].numpy()
    assert len(values) % 2 == 0 and summary["correlation"]["median"] == pytest.approx(
        float(np.median(values))
    )


def test_bad_arguments_name_the_value(model_and_saes, splits) -> None:
    model, saes = model_and_saes
    train, test = splits
    with pytest.raises(ValueError, match="feature=5000"):
        score_explanation(model, saes[1], 5000, TokenSet(["<"]), test)
    with pytest.raises(ValueError, match="select_by='auc'"):
        explanation_scores(model, saes[1], train, test, features=[1], select_by="auc")  # type: ignore
    with pytest.raises(ValueError, match="9999"):
        explanation_scores(model, saes[1], train, test, features=[1, 9999])
    with pytest.raises(ValueError, match="id 99999 is not in the model's vocabulary"):
        explanation_scores(model, saes[1], train, torch.full_like(test, 99999), features=[1])
    with pytest.raises(ValueError, match="rows of 1 token"):
        score_explanation(model, saes[1], 1, TokenSet(["<"]), test[:, :1])
    with pytest.raises(ValueError, match="k=0"):
        explanation_scores(model, saes[1], train, test, features=[1], k=0)


def test_a_dictionary_off_the_residual_stream_gets_input_scores_and_nan_output_ones(
    model_and_saes, splits
) -> None:
    """An MLP's hidden layer writes no residual direction: its output side is NaN, with a warning,
    and its input side is scored as for any dictionary."""
    from tests.conftest import random_sae

    model, _ = model_and_saes
    train, test = splits
    sae = random_sae(hook_name="blocks.0.mlp.hook_post", d_in=model.cfg.d_mlp, d_sae=64, seed=1)
    with pytest.warns(UserWarning, match="no output-side scores .* does not write to the residual stream"):
        result = explanation_scores(model, sae, train, test, features=4, min_fired=1)
    assert torch.isnan(result.logit.auroc).all() and not torch.isnan(result.activation.correlation).all()
