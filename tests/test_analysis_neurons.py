"""Features vs neurons (sae_circuits.analysis.neurons): detection scores against hand counts and a
brute-force threshold search, a planted neuron-copy feature, planted properties, the token
properties against the automaton's own labels, and bad input."""

from __future__ import annotations

import pytest
import torch

from sae_circuits.analysis._stats import labelled_rows
from sae_circuits.analysis.neurons import (
    _base64_tokens,
    detect,
    features_vs_neurons,
    neuron_hook_of,
    token_properties,
)
from tests.conftest import NO_HOOKED, random_sae
from tests.shape_check import unchecked


def test_detect_at_a_fixed_threshold_by_hand():
    values = torch.tensor([[0.0, 1.0], [0.5, 0.0], [2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    mask = torch.tensor([False, True, True, True, False])
    d = detect(values, mask, threshold=0.0)
    # column 0 fires on rows 1, 2, 4: tp 2 of 3 fired, 2 of 3 positives; column 1 on rows 0, 3: tp 1
    assert d.precision.tolist() == pytest.approx([2 / 3, 1 / 2])
    assert d.recall.tolist() == pytest.approx([2 / 3, 1 / 3])
    assert d.f1.tolist() == pytest.approx([2 * 2 / (3 + 3), 2 * 1 / (2 + 3)])


def test_best_threshold_agrees_with_a_brute_force_search():
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 6, (80, 9), generator=gen).float()  # many ties
    mask = torch.rand(80, generator=gen) < 0.3
    d = detect(values, mask)
    for j in range(values.shape[1]):
        best = 0.0
        for t in values[:, j].unique().tolist() + [-1.0]:
            fired = values[:, j] > t
            tp = int((fired & mask).sum())
            best = max(best, 2 * tp / (int(fired.sum()) + int(mask.sum())))
        assert float(d.f1[j]) == pytest.approx(best)
        again = detect(values[:, j : j + 1], mask, threshold=float(d.threshold[j]))
        assert float(again.f1[0]) == pytest.approx(best)  # the threshold reproduces the F1


def test_the_threshold_reproduces_the_f1_between_adjacent_floats_and_at_the_float_limit():
    mask = torch.tensor([True, False])
    for pair in ([1.0, float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))], [3e38, 2e38]):
        values = torch.tensor(pair)[:, None]
        d = detect(values, mask)
        assert float(d.f1[0]) == 1.0 and bool(torch.isfinite(d.threshold).all())
        assert float(detect(values, mask, threshold=float(d.threshold[0])).f1[0]) == 1.0


def test_base64_tokens_by_hand():
    pieces = ["data", " =", ' "', "SGVs", "bG8g", "d29y", "bGQ", "hIQ", "==", '"', "\n", "x1"]
    assert _base64_tokens(pieces).tolist() == [False] * 3 + [True] * 6 + [False] * 3
    assert not _base64_tokens(["abcdefghijklmnopqrstuvwxyz"]).any()  # no digits, no capitals
    assert not _base64_tokens(["require", "_SMTP", "UTF8", "_mode"]).any()  # a name in code, not base64


def test_neuron_hook_of():
    assert neuron_hook_of("blocks.3.ln2.hook_normalized") == "blocks.3.mlp.hook_post"
    with pytest.raises(ValueError, match="'hook_embed' is not in a block"):
        neuron_hook_of("hook_embed")


@pytest.fixture
def copy_sae():
    """A ReLU dictionary over the layer-0 neurons whose first 8 features copy neurons 5, 10, ..."""
    sae = random_sae("standard", hook_name="blocks.0.mlp.hook_post", d_in=256, d_sae=32, seed=2)
    with torch.no_grad():
        sae.b_dec.zero_()
        for j in range(8):
            sae.W_enc[:, j] = 0.0
            sae.W_enc[5 * (j + 1), j] = 2.0
            sae.b_enc[j] = 0.0
    return sae


@pytest.mark.skipif(bool(NO_HOOKED), reason=str(NO_HOOKED))
def test_a_neuron_copy_finds_its_neuron_and_planted_properties_are_found(hooked, tokens, copy_sae):
    _, cache = hooked.run_with_cache(tokens, names_filter="blocks.0.mlp.hook_post")
    neurons = cache["blocks.0.mlp.hook_post"][:, 1:].reshape(-1, 256)
    acts = copy_sae.encode(neurons)
    by_feature = acts[:, 3] > 0  # exactly where feature 3 fires
    by_neuron = neurons[:, 40] > neurons[:, 40].median()  # neuron 40 above its median
    props = {"feature 3": by_feature, "neuron 40": by_neuron}
    fvn = features_vs_neurons(
        hooked, copy_sae, tokens, neuron_hook="blocks.0.mlp.hook_post", properties=props
    )
    live = fvn.live[:8]
    assert live.all() and fvn.neuron[:8].tolist() == [5 * (j + 1) for j in range(8)]
    assert torch.all(fvn.correlation[:8] > 0.7)  # ReLU(2 x) of a GELU output: clipped below 0
    assert torch.equal(fvn.live, acts.std(0) > 0) and torch.all(fvn.neuron[~fvn.live] == -1)
    f3 = fvn.properties["feature 3"]
    assert f3.positives == int(by_feature.sum()) and f3.feature.f1 == pytest.approx(1.0)
    assert f3.feature.unit in {j for j in range(32) if torch.equal(acts[:, j] > 0, by_feature)}
    assert f3.feature_neuron.unit == 20 and f3.feature_neuron.f1 == pytest.approx(1.0)  # ReLU(2 x) > 0
    n40 = fvn.properties["neuron 40"]
    assert n40.best_neuron.unit == 40 and n40.best_neuron.f1 == pytest.approx(1.0)
    assert n40.best_neuron.precision == pytest.approx(1.0) and n40.best_neuron.recall == pytest.approx(1.0)
    assert n40.best_neuron.f1 >= n40.feature_neuron.f1


def test_token_properties_follow_the_automaton_labels():
    import sae_circuits as sc
    from sae_circuits.languages import automata

    model = sc.zoo.load_model("tiny")
    docs = automata.generate("markup", 30, seed=11)
    texts = {"markup": ["".join(s) for s, _ in docs], "other": ['x = "SGVsbG8gd29ybGQhIQ1234abcd" + 1'] * 20}
    rows = labelled_rows(model, texts, 32, 6)
    props = token_properties(model, rows, states=[("markup", "TAG_NAME"), ("markup", "ATTR_VALUE")])
    n = rows.tokens.shape[0] * 31
    assert all(mask.shape == (n,) for mask in props.values())
    # the true states of the stream labelled_rows made: documents joined by end-of-text
    truth: list[str] = []
    for _, states in docs:
        truth += [*states, "EOT"]
    markup_rows = int((rows.source == 0).sum())
    truth_grid = torch.tensor([s == "ATTR_VALUE" for s in truth[: markup_rows * 32]]).view(-1, 32)
    got = props["markup:ATTR_VALUE"].view(-1, 31)
    assert torch.equal(got[:markup_rows], truth_grid[:, 1:]) and not got[markup_rows:].any()
    assert props["markup:TAG_NAME"].any() and props["markup:ATTR_VALUE"].any()
    assert torch.equal(props["source=other"].view(-1, 31)[:, 0], rows.source == 1)
    assert (
        props["base64"].view(-1, 31)[markup_rows:].any()
        and not props["base64"].view(-1, 31)[:markup_rows].any()
    )
    with pytest.raises(ValueError, match=r"state 'NOPE' is not a state of 'markup'"):
        token_properties(model, rows, states=[("markup", "NOPE")])
    with pytest.raises(
        ValueError, match=r"automaton 'kvlog' has no source of that name among \['markup', 'other'\]"
    ):
        token_properties(model, rows, states=[("kvlog", "KEY")])


def test_a_base64_run_that_crosses_a_row_end_is_found_on_both_sides():
    import base64
    import random

    import sae_circuits as sc

    model = sc.zoo.load_model("tiny")
    blob = base64.b64encode(random.Random(0).randbytes(90)).decode()
    rows = labelled_rows(model, {"code": [f'key = "{blob}"\n'] * 4}, 8, 12)  # rows far shorter than the run
    props = token_properties(model, rows, skip_first_position=False, states=[])
    pieces = [model.tokenizer.decode([i]) for i in rows.tokens.flatten().tolist()]
    assert torch.equal(props["base64"], _base64_tokens(pieces))  # the stream, not row by row
    assert props["base64"].view(-1, 8)[:, 0].any()  # some row opens inside a run


def test_property_masks_of_the_wrong_length_or_kind_are_refused(sae):
    tokens = torch.zeros(3, 9, dtype=torch.long)
    with unchecked():
        with pytest.raises(
            ValueError, match=r"property 'p' has 20 entries, but tokens of shape \(3, 9\) give 3 x 8 = 24"
        ):
            features_vs_neurons(None, sae, tokens, properties={"p": torch.ones(20, dtype=torch.bool)})
        with pytest.raises(
            ValueError,
            match=r"property 'p': expected a 1-d boolean tensor, got shape \(24,\), dtype torch.float32",
        ):
            features_vs_neurons(None, sae, tokens, properties={"p": torch.ones(24)})
        with pytest.raises(ValueError, match="property 'p' holds no token among the 24"):
            features_vs_neurons(None, sae, tokens, properties={"p": torch.zeros(24, dtype=torch.bool)})


def test_the_neuron_of_a_feature_that_never_fires_is_no_neuron():
    import sae_circuits as sc

    model, saes = sc.zoo.load("tiny")
    sae = saes[1]
    with torch.no_grad():
        sae.b_enc.fill_(-1e4)  # every feature dead
    tokens = model.to_tokens(["<p>hello</p> world, and more text"] * 2)
    prop = torch.zeros(tokens.shape[0] * (tokens.shape[1] - 1), dtype=torch.bool)
    prop[::3] = True
    match = features_vs_neurons(model, sae, tokens, properties={"p": prop}).properties["p"]
    assert match.feature_neuron.unit == -1 and match.feature_neuron.f1 != match.feature_neuron.f1  # NaN
    assert match.best_neuron.unit >= 0
