"""Graph math on a hand-computed 7-node graph, and influence against the dense identity."""

from __future__ import annotations

import pytest
import torch

from sae_circuits.graph.influence import (
    Edges,
    NodeKind,
    cumulative_threshold,
    influence,
    normalize,
    prune,
    scores,
)

T, F, E, L = NodeKind.TOKEN, NodeKind.FEATURE, NodeKind.ERROR, NodeKind.TARGET
# nodes: 0 token a, 1 token b, 2 F1, 3 F2, 4 error, 5 F3 (no way out), 6 logit
KINDS = torch.tensor([T, T, F, F, E, F, L])
EDGES = Edges(  # A[target, source]
    target=torch.tensor([2, 2, 3, 3, 5, 6, 6]),
    source=torch.tensor([0, 1, 2, 4, 1, 3, 0]),
    weight=torch.tensor([2.0, -1.0, 3.0, 1.0, 0.1, 4.0, 1.0]),
)
W = torch.tensor([0, 0, 0, 0, 0, 0, 1.0])


def test_influence_by_hand():
    # Â rows: F1 = (a 2/3, b 1/3); F2 = (F1 3/4, err 1/4); F3 = (b 1); L = (F2 4/5, a 1/5)
    # w Â = (F2 .8, a .2); then F2 -> (F1 .6, err .2); then F1 -> (a .4, b .2)
    got = influence(normalize(EDGES, 7), W)
    assert torch.allclose(got, torch.tensor([0.6, 0.2, 0.6, 0.8, 0.2, 0.0, 0.0], dtype=torch.float64))


def test_scores_by_hand():
    result = scores(EDGES, KINDS, W)
    assert result.replacement == pytest.approx(0.8 / (0.8 + 0.2))
    assert result.completeness == pytest.approx((3.4 - 0.25 * 0.8) / 3.4)


def test_prune_by_hand():
    result = prune(EDGES, KINDS, W, node_threshold=0.8, edge_threshold=0.98)
    # influence .8 .6 .6 .2 .2 0 0 -> 80% is reached at .6: error (.2) and F3 (0) go; tokens, logit stay
    assert result.node_mask.tolist() == [True, True, True, True, False, False, True]
    assert result.edge_mask.tolist() == [True, True, True, False, False, True, True]
    # edge scores on the kept graph: F2<-F1 .8, L<-F2 .8, F1<-a .533, F1<-b .267, L<-a .2 (of 2.6):
    # 90% is reached at .267, so L<-a goes
    tighter = prune(EDGES, KINDS, W, node_threshold=0.8, edge_threshold=0.9)
    assert tighter.edge_mask.tolist() == [True, True, True, False, False, True, False]


def test_prune_drops_features_left_without_a_way_in_or_out():
    # F2's only input is pruned at a strict edge threshold: F2 must then go, and its out-edge with it
    edges = Edges(
        torch.tensor([2, 3, 4, 4]), torch.tensor([0, 1, 2, 3]), torch.tensor([10.0, 0.01, 5.0, 0.01])
    )
    kinds = torch.tensor([T, T, F, F, L])
    w = torch.tensor([0, 0, 0, 0, 1.0])
    result = prune(edges, kinds, w, node_threshold=1.0, edge_threshold=0.99)
    assert result.node_mask.tolist() == [True, True, True, False, True]
    assert result.edge_mask.tolist() == [True, False, True, False]


def test_influence_matches_the_dense_identity_on_a_random_dag():
    torch.manual_seed(0)
    n = 60
    dense = torch.randn(n, n).tril(-1) * (torch.rand(n, n) < 0.2)  # A[t, s] != 0 only for s < t: a DAG
    t, s = dense.nonzero(as_tuple=True)
    edges = Edges(t, s, dense[t, s])
    w = torch.zeros(n, dtype=torch.float64)
    w[-3:] = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    a_hat = dense.abs().double()
    a_hat = a_hat / a_hat.sum(1, keepdim=True).clamp_min(1e-300)
    expected = w @ (
        torch.linalg.inv(torch.eye(n, dtype=torch.float64) - a_hat) - torch.eye(n, dtype=torch.float64)
    )
    assert torch.allclose(influence(normalize(edges, n), w), expected, atol=1e-10)


def test_cycles_and_bad_thresholds_are_errors():
    cycle = Edges(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="cycle"):
        influence(normalize(cycle, 2), torch.tensor([1.0, 0.0]))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"threshold=.* must be in \(0, 1\]"):
            cumulative_threshold(torch.tensor([1.0, 2.0]), bad)
    assert cumulative_threshold(torch.tensor([5.0, 3.0, 2.0]), 0.8) == 3.0
