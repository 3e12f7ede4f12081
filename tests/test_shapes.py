"""The suite checks jaxtyping shape annotations at run time (``conftest.py``'s switch): a wrong
shape, dtype or inconsistent named dimension fails loudly instead of computing garbage."""

from __future__ import annotations

import pytest
import torch
from jaxtyping import TypeCheckError

from sae_circuits.graph.influence import scores
from tests.conftest import SHAPE_CHECKS, random_sae

pytestmark = pytest.mark.skipif(
    not SHAPE_CHECKS, reason="shape checks switched off (SAE_CIRCUITS_SHAPE_CHECKS=0)"
)


def test_wrong_rank_and_dtype_fail():
    sae = random_sae()
    assert sae.encode(torch.randn(3, 64)).shape == (3, 256)  # a right shape passes
    with pytest.raises(TypeCheckError, match="parameter 'x'"):
        sae.encode(torch.randn(64, dtype=torch.float64).long())  # integer activations


def test_inconsistent_named_dimensions_fail():
    from sae_circuits.graph.influence import Edges

    edges = Edges(torch.tensor([1]), torch.tensor([0]), torch.tensor([1.0]))
    kinds, weights = torch.tensor([0, 3]), torch.tensor([0.0, 1.0])
    scores(edges, kinds, weights)  # n_nodes agrees
    with pytest.raises(TypeCheckError, match="target_weights"):
        scores(edges, kinds, torch.tensor([0.0, 1.0, 0.5]))  # n_nodes 2 vs 3
