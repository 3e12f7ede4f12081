"""The shared ground of the analyses: Pearson correlation (against numpy, constant columns at 0,
chunking invisible), and labelled token rows (sources kept apart, bad sizes refused)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sae_circuits as sc
from sae_circuits.analysis._stats import correlation, labelled_rows


def test_correlation_equals_numpy_in_any_chunking():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 7, generator=gen), torch.randn(300, 5, generator=gen)
    b[:, 1] += 2 * a[:, 3]
    want = np.corrcoef(np.c_[a.numpy(), b.numpy()].T)[:7, 7:]
    for chunk in (1, 3, 2048):
        assert correlation(a, b, chunk=chunk).numpy() == pytest.approx(want, abs=1e-6)


def test_a_constant_column_correlates_zero():
    x = torch.randn(1000, 3, generator=torch.Generator().manual_seed(1))
    x[:, 1] = 0.1  # a feature stuck at one value
    x[:, 2] = 0.0  # a dead feature
    c = correlation(x, x)
    assert c[1].abs().max() == 0 and c[2].abs().max() == 0 and float(c[0, 0]) == pytest.approx(1.0)


def test_labelled_rows_keep_sources_and_refuse_bad_sizes():
    model = sc.zoo.load_model("tiny")
    rows = labelled_rows(model, {"a": ["x = 1\n" * 40], "b": ["<p>hi</p>\n" * 40]}, 16, 3)
    assert rows.names == ["a", "b"] and rows.source.tolist() == [0, 0, 0, 1, 1, 1]
    assert rows.tokens.shape == (6, 16)
    with pytest.raises(ValueError, match="length=1"):
        labelled_rows(model, {"a": ["x"]}, 1, 3)
    with pytest.raises(ValueError, match="fewer than one row"):
        labelled_rows(model, {"a": ["x"]}, 64, 1)
