"""The package layout: moved modules keep their old paths for one release (with a warning), and
the one tokenizing helper applies one BOS rule to texts and token ids."""

from __future__ import annotations

import importlib
import sys

import pytest

from sae_circuits._tokenize import token_row

MOVED = {
    "sae_circuits.zoo.automata": ("sae_circuits.languages.automata", "generate"),
    "sae_circuits.zoo.corpus": ("sae_circuits.languages.corpus", "build_corpus"),
    "sae_circuits.zoo.recipe": ("sae_circuits.recipes.build", "main"),
    "sae_circuits.zoo.train_lm": ("sae_circuits.recipes.train_lm", "train_on_texts"),
    "sae_circuits.zoo.pack": ("sae_circuits.recipes.pack", "pack_mix"),
    "sae_circuits.zoo.tokenizer": ("sae_circuits.recipes.tokenizer", "train_tokenizer"),
    "sae_circuits.zoo.dictionaries": ("sae_circuits.recipes.dictionaries", "build"),
    "sae_circuits.zoo.base64_steering": ("sae_circuits.recipes.base64_steering", "measure_state"),
    "sae_circuits.zoo.random_model": ("sae_circuits.recipes.random_model", "random_gpt2"),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_warn_and_give_the_same_objects(old):
    new, name = MOVED[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        shim = importlib.import_module(old)
    assert getattr(shim, name) is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError):
        shim.no_such_name  # noqa: B018


def test_renamed_names_keep_deprecated_aliases():
    from sae_circuits import cli, languages
    from sae_circuits.recipes import train_lm

    with pytest.warns(DeprecationWarning, match="languages.corpus_texts"):
        assert cli.corpus_texts is languages.corpus_texts
    with pytest.warns(DeprecationWarning, match="LMTrainConfig"):
        assert train_lm.TrainConfig is train_lm.LMTrainConfig


def test_one_bos_rule_for_texts_and_token_ids(model):
    text = "def f(x):\n    return x"
    plain = token_row(model, text, bos=None)  # None: the model's default, no BOS on these models
    assert model.cfg.default_prepend_bos is False
    assert plain.tolist() == model.to_tokens(text, prepend_bos=False)[0].tolist()
    with_bos = token_row(model, text, bos=True)
    assert with_bos.tolist() == [model.tokenizer.bos_token_id, *plain.tolist()]
    ids = plain.tolist()
    assert token_row(model, ids, bos=True).tolist() == ids  # ids are the model's input as given...
    assert token_row(model, ids, bos=True, ids="like_text").tolist() == with_bos.tolist()  # ...or not
    assert token_row(model, ids, bos=None, ids="like_text").tolist() == ids
