"""Every example in the library's docstrings runs, on the embedded model.

Each module's doctests get a fresh namespace: ``sc``, ``torch``, the embedded ``model`` (the
default kind for the installed TransformerLens), its residual SAEs ``saes`` (``sae`` is the layer-1
one), its ``transcoders``, a few markup ``texts`` and their ``tokens``; the working directory is a
temporary folder, so examples that save files leave nothing behind."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import sae_circuits as sc


def _modules() -> list[str]:
    names = ["sae_circuits"]
    for info in pkgutil.walk_packages(sc.__path__, "sae_circuits."):
        names.append(info.name)
    return sorted(names)


def _with_examples(name: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(name)
    return any(test.examples for test in doctest.DocTestFinder().find(module, name))


MODULES = [name for name in _modules() if _with_examples(name)]


@pytest.fixture(scope="module")
def _embedded() -> dict[str, Any]:
    from sae_circuits.languages import corpus_texts

    model, saes = sc.zoo.load("tiny")
    texts = corpus_texts("markup", 8, 48, seed=0)[0]
    return {"model": model, "saes": saes, "texts": texts}


def _namespace(embedded: dict[str, Any]) -> dict[str, Any]:
    model = embedded["model"]
    saes = sc.zoo.load_saes("tiny", "resid")
    return {
        "sc": sc,
        "torch": torch,
        "model": model,
        "saes": saes,
        "sae": saes[1],
        "transcoders": sc.zoo.load_saes("tiny", "transcoder"),
        "texts": list(embedded["texts"]),
        "tokens": model.to_tokens(embedded["texts"][:2]),
    }


def test_the_docstrings_have_examples_to_run() -> None:
    assert len(MODULES) >= 10, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(
    name: str, _embedded: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    torch.manual_seed(0)
    for test in doctest.DocTestFinder().find(module, name):
        if not test.examples:
            continue
        test.globs.update(_namespace(_embedded))
        runner.run(test)
        assert not sc.saes_of(_embedded["model"]), f"{test.name} left SAEs spliced into the model"
    result = runner.summarize(verbose=False)
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
    )
