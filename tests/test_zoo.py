"""The embedded default: it loads offline in every form, its dictionaries are the quality the card
claims, and splicing them is exact."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import sae_circuits as sc
from sae_circuits import zoo
from sae_circuits.zoo.loader import has_hooked_transformer, load_hf_gpt2

pytestmark = pytest.mark.skipif("tiny" not in zoo.names(), reason="embedded model not built yet")


@pytest.fixture(scope="module")
def tiny():
    model, saes = zoo.load("tiny")
    return model, saes


@pytest.fixture(scope="module")
def text_tokens(tiny):
    model, _ = tiny
    from sae_circuits.languages import probe_texts

    _, code = probe_texts(seed=3)
    ids = model.tokenizer("\n".join(code))["input_ids"]
    return torch.tensor(ids[: 8 * 128]).view(8, 128)


def test_names_and_bad_names():
    assert "tiny" in zoo.names()
    with pytest.raises(ValueError, match="unknown embedded model 'huge'"):
        zoo.load_model("huge")
    with pytest.raises(ValueError, match="kind='mlp'"):
        zoo.load_saes("tiny", kind="mlp")  # type: ignore[arg-type]


def test_default_kind_follows_the_transformer_lens_version(tiny):
    from sae_circuits.zoo.loader import default_kind, has_hooked_transformer, transformer_lens_version

    model, _ = tiny
    if has_hooked_transformer():  # TransformerLens 3.x
        assert default_kind() == "hooked" and type(model).__name__ == "HookedTransformer"
        return
    assert default_kind() == "bridge" and type(model).__name__ == "TransformerBridge"
    version = re.escape(transformer_lens_version())
    with pytest.raises(ValueError, match=rf"TransformerLens {version} .*kind='bridge'.*'transformer-lens<4'"):
        zoo.load_model("tiny", kind="hooked")


def test_committed_weights_are_small():
    total = sum(p.stat().st_size for p in zoo.model_path("tiny").rglob("*") if p.is_file())
    assert total <= 40 * 2**20, f"embedded weights are {total / 2**20:.1f} MiB"


@torch.no_grad()
def test_hooked_bridge_and_transformers_agree(tiny, text_tokens):
    from transformers import AutoModelForCausalLM

    model, _ = tiny
    bridge = zoo.load_model("tiny", kind="bridge")
    hf = AutoModelForCausalLM.from_pretrained(str(zoo.model_path("tiny")), local_files_only=True).eval()
    tokens = text_tokens[:2]
    reference = hf(tokens).logits
    assert torch.allclose(model(tokens), reference, atol=1e-4)
    assert torch.allclose(bridge(tokens), reference, atol=1e-4)


def test_dictionaries_cover_every_layer(tiny):
    model, saes = tiny
    transcoders = zoo.load_saes("tiny", kind="transcoder")
    n = model.cfg.n_layers
    assert [s.cfg.site for s in saes] == [f"blocks.{i}.hook_resid_post" for i in range(n)]
    assert [t.cfg.site for t in transcoders] == [f"blocks.{i}.hook_mlp_out" for i in range(n)]
    assert all(t.cfg.hook_name == f"blocks.{i}.ln2.hook_normalized" for i, t in enumerate(transcoders))
    assert all(s.sparsity is not None for s in saes + transcoders)


@torch.no_grad()
def test_spliced_dictionaries_are_exact_with_error_term_and_good_without(tiny, text_tokens):
    model, saes = tiny
    transcoders = zoo.load_saes("tiny", kind="transcoder")
    clean = model(text_tokens)
    with sc.spliced(model, saes + transcoders):
        assert torch.equal(model(text_tokens), clean)
    card = json.loads((zoo.model_path("tiny") / "card.json").read_text())
    claimed = {e["folder"]: e["eval"] for e in card["dictionaries"]["dictionaries"]}
    for sae in saes:
        result = sc.evaluate(model, sae, text_tokens, baseline=False)
        entry = claimed[f"saes/{sae.cfg.site}"]
        # the card's held-out figures, re-measured on other text: same quality class
        assert result.explained_variance > entry["explained_variance"] - 0.1
        assert result.ce_loss_score > entry["ce_loss_score"] - 0.1


def test_automaton_symbols_are_single_tokens():
    from sae_circuits.languages import automata
    from sae_circuits.zoo.loader import load_tokenizer

    tokenizer = load_tokenizer(zoo.model_path("tiny"))
    for name in automata.AUTOMATA:
        for symbols, states in automata.generate(name, 20, seed=5):
            ids = tokenizer("".join(symbols))["input_ids"]
            assert len(ids) == len(symbols) == len(states), name


def test_card_reports_validation_loss_per_subcorpus():
    card = json.loads((zoo.model_path("tiny") / "card.json").read_text())
    text = json.dumps(card)
    for name in ("code", "english", "base64", "markup", "kvlog"):
        assert name in text
    losses = [v for v in _numbers(card) if 0 < v < 20]
    assert losses and np.isfinite(losses).all()


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield float(obj)


@pytest.mark.skipif(not has_hooked_transformer(), reason="the hooked model needs TransformerLens 3.x")
@pytest.mark.parametrize("flag", [{"scale_attn_by_inverse_layer_idx": True}, {"scale_attn_weights": False}])
def test_gpt2_flags_that_change_the_attention_are_followed(tmp_path, flag):
    """A user's GPT-2 folder with another attention scale: the hooked model was off by 2.4 and 6.4
    in the logits, as the config did not carry the flags over."""
    import shutil

    from transformers import GPT2LMHeadModel

    folder = tmp_path / "model"
    shutil.copytree(zoo.model_path("tiny"), folder, ignore=shutil.ignore_patterns("saes", "transcoders"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **flag}))
    tokens = torch.tensor([[5, 17, 300, 42, 7, 99]])
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    hooked = load_hf_gpt2(folder, "hooked")
    assert torch.equal(torch.rand(2), expected)  # loading draws nothing from the caller's stream
    reference = GPT2LMHeadModel.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        assert torch.allclose(hooked(tokens), reference(tokens).logits, atol=1e-4)
