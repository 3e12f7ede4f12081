"""Feature matching across widths and the family tree: a planted split recovered exactly, both
measures against brute-force loops, bad input refused, and the HTML view holding the tree."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

import sae_circuits as sc
from sae_circuits.analysis.families import FeatureFamilies, feature_families, property_f1
from sae_circuits.analysis.matching import match_features
from tests.conftest import random_sae
from tests.shape_check import unchecked

HOOK = "blocks.0.hook_resid_post"
D_IN = 16
SPLIT = 0.3  # how far a child's direction leans off its parent's


class TableModel(nn.Module):
    """Stands in for a TransformerLens model: its activation at ``HOOK`` for token ``t`` is row
    ``t`` of a fixed table, so every dictionary's activations are known exactly."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.hook_dict = {HOOK: None}

    def run_with_cache(self, tokens, names_filter):
        return None, {HOOK: self.table[tokens]}

    def to_str_tokens(self, ids):
        return [f"t{i}" for i in ids.tolist()]


def _relu_sae(w_enc: torch.Tensor, w_dec: torch.Tensor, b_enc: torch.Tensor | None = None) -> sc.SAE:
    d_sae = w_dec.shape[0]
    sae = sc.SAE(sc.SAEConfig("standard", d_in=D_IN, d_sae=d_sae, hook_name=HOOK, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_enc.copy_(torch.zeros(d_sae) if b_enc is None else b_enc)
        sae.b_dec.zero_()
    return sae


def planted() -> tuple[list[sc.SAE], TableModel, torch.Tensor, torch.Tensor]:
    """Three dictionaries with a known tree, a model, tokens, and each token's concept.

    Concepts ``c = 0..7`` write ``m (e_{c//2} +- SPLIT e_{8 + c//2})`` (sign + for even ``c``);
    concept 8 writes ``m e_12``; concept 9 writes nothing.

    * narrow (4): feature ``i`` reads ``e_i``: fires on concepts ``2i`` and ``2i + 1``.
    * mid (9): feature ``c < 8`` reads ``+-e_{8 + c//2}``: fires on concept ``c`` only, a split of
      narrow ``c // 2``; feature 8 reads ``e_12``, new at this width (no parent).
    * wide (10): mid's features copied, plus feature 9 that never fires (decoder ``e_15``).
    """
    eye = torch.eye(D_IN)
    narrow = _relu_sae(eye[:4].T, eye[:4])
    sign = torch.tensor([1.0, -1.0] * 4)
    reads = torch.cat([sign[:, None] * eye[8:12].repeat_interleave(2, 0), eye[12:13]])  # [9, d]
    writes = torch.cat([eye[:4].repeat_interleave(2, 0) + SPLIT * reads[:8], eye[12:13]])
    mid = _relu_sae(reads.T, writes)
    wide = _relu_sae(
        torch.cat([reads, torch.zeros(1, D_IN)]).T,
        torch.cat([writes, eye[15:16]]),
        torch.cat([torch.zeros(9), torch.tensor([-1.0])]),
    )
    magnitudes = torch.tensor([0.5, 1.0, 1.7, 2.5])
    rows, concept = [], []
    for c in range(10):
        direction = writes[c] if c < 9 else torch.zeros(D_IN)
        for m in magnitudes:
            rows.append(m * direction)
            concept.append(c)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, len(rows), (24, 17), generator=gen)
    return [mid, wide, narrow], TableModel(torch.stack(rows)), tokens, torch.tensor(concept)[tokens]


@pytest.mark.parametrize("by", ["activation", "decoder"])
def test_a_planted_split_is_recovered_exactly(by: str) -> None:
    saes, model, tokens, concept = planted()
    fam = feature_families(saes, model, tokens, by=by, token_property=(concept == 2) | (concept == 3))
    assert fam.widths == [4, 9, 10]
    assert fam.levels[1].parent.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, -1]
    assert fam.levels[2].parent.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, -1]
    assert fam.levels[0].parent.tolist() == [-1] * 4
    assert sorted(fam.children(0, 1)) == [2, 3] and fam.size(0, 1) == 5 and fam.size(1, 8) == 2
    assert fam.children(1, 8) == [8] and fam.children(2, 0) == []
    assert fam.root(2, 5) == (0, 2) and fam.root(2, 8) == (1, 8) and fam.root(2, 9) == (2, 9)
    # both similarities on every edge, whichever chose it: children lean SPLIT off the parent
    assert fam.levels[1].cosine[:8] == pytest.approx(torch.full((8,), 1 / math.sqrt(1 + SPLIT**2)))
    assert fam.levels[2].correlation[:9] == pytest.approx(torch.ones(9), abs=1e-5)
    assert math.isnan(float(fam.levels[0].cosine[0]))
    # the dead feature: no firing, correlation 0 with everything
    dead = fam.levels[2].match
    assert dead is not None and dead.fires_a is not None and dead.correlation is not None
    assert int(dead.fires_a[9]) == 0 and float(dead.correlation[9]) == 0.0
    # the token property picks the family's root; children split it, F1 2/3 each
    f1 = [level.f1 for level in fam.levels]
    assert fam.best_for_property(0) == 1 and f1[0] is not None and float(f1[0][1]) == pytest.approx(1.0)
    n2, n3 = int((concept[:, 1:] == 2).sum()), int((concept[:, 1:] == 3).sum())
    assert f1[1] is not None and f1[1][[2, 3]].tolist() == pytest.approx(
        [2 * n2 / (2 * n2 + n3), 2 * n3 / (2 * n3 + n2)]
    )
    tree = fam.family(0, 1)
    assert sorted(c["feature"] for c in tree["children"]) == [2, 3]
    child = tree["children"][0]
    assert [g["feature"] for g in child["children"]] == [child["feature"]]
    assert tree["cosine"] is None and child["correlation"] == pytest.approx(
        float(fam.levels[1].correlation[child["feature"]])
    )
    assert tree["top_tokens"][0][0].startswith("t") and tree["firing_rate"] == pytest.approx(
        float(((concept[:, 1:] == 2) | (concept[:, 1:] == 3)).float().mean())
    )
    json.dumps(fam.to_json(), allow_nan=False)  # strict JSON


def test_the_threshold_cuts_edges() -> None:
    saes, model, tokens, _ = planted()
    fam = feature_families(saes, model, tokens, by="decoder", threshold=0.99)
    assert fam.levels[1].parent.tolist() == [-1] * 9  # cos 0.958 < 0.99
    assert fam.levels[1].candidate[:8].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert fam.levels[2].parent[:9].tolist() == list(range(9))  # copies: cos 1


def test_a_feature_that_never_fires_gets_no_parent_at_any_threshold() -> None:
    saes, model, tokens, _ = planted()
    fam = feature_families(saes, model, tokens, threshold=0.0)  # correlation 0 would pass 0 >= 0
    assert int(fam.levels[2].parent[9]) == -1 and 9 not in fam.children(1, 0)
    # nor a candidate: its correlations are all 0, and max would name feature 0 of the level below
    level = fam.levels[2]
    assert int(level.candidate[9]) == -1 and math.isnan(level.cosine[9]) and math.isnan(level.correlation[9])
    json.dumps(fam.to_json(), allow_nan=False)


def _brute_force(a: sc.SAE, b: sc.SAE, model: nn.Module, tokens: torch.Tensor):
    """Cosine and correlation matrices, one pair of features at a time."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == a.cfg.hook_name)
    x = cache[a.cfg.hook_name][:, 1:].reshape(-1, a.cfg.d_in)
    fa, fb = a.encode(x).detach().double(), b.encode(x).detach().double()
    cos = torch.zeros(a.cfg.d_sae, b.cfg.d_sae, dtype=torch.double)
    corr = torch.zeros_like(cos)
    for i in range(a.cfg.d_sae):
        for j in range(b.cfg.d_sae):
            u, v = a.W_dec[i].detach().double(), b.W_dec[j].detach().double()
            cos[i, j] = u @ v / (u.norm() * v.norm())
            p, q = fa[:, i] - fa[:, i].mean(), fb[:, j] - fb[:, j].mean()
            if p.norm() > 0 and q.norm() > 0:
                corr[i, j] = p @ q / (p.norm() * q.norm())
    return cos.float(), corr.float(), (fa > 0).sum(0)


def _check_best(value: torch.Tensor, index: torch.Tensor, matrix: torch.Tensor) -> None:
    best, _ = matrix.max(dim=1)
    assert value == pytest.approx(best, abs=1e-5)
    second = matrix.topk(2, dim=1).values
    clear = (second[:, 0] - second[:, 1]) > 1e-4  # indices compared where the maximum is unique
    assert clear.sum() > 0
    assert torch.equal(index[clear], matrix.argmax(dim=1)[clear])


def test_both_matches_equal_a_brute_force_loop(model: nn.Module) -> None:
    a = random_sae("standard", d_sae=24, seed=1)
    b = random_sae("standard", d_sae=40, seed=2)
    tokens = torch.randint(0, 500, (6, 24), generator=torch.Generator().manual_seed(0))
    m = match_features(a, b, model, tokens, batch_size=4)
    cos, corr, fires = _brute_force(a, b, model, tokens)
    assert m.correlation is not None and m.correlation_index is not None and m.fires_a is not None
    assert int(fires.sum()) > 0 and torch.equal(m.fires_a, fires)
    assert m.n_tokens == 6 * 23
    _check_best(m.cosine, m.cosine_index, cos)
    _check_best(m.correlation, m.correlation_index, corr)
    # the tree's parents are the same maxima, and its edges carry both measures of the pair
    fam = feature_families([b, a], model, tokens, by="activation", threshold=-1.0)
    rows = torch.arange(40)
    back, back_corr, _ = _brute_force(b, a, model, tokens)
    top2 = back_corr.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4
    assert clear.sum() > 0 and torch.equal(fam.levels[1].parent[clear], back_corr.argmax(1)[clear])
    parent = fam.levels[1].candidate
    silent = (back_corr == 0).all(dim=1)  # features that never fire: no candidate, NaN edges
    assert torch.equal(parent == -1, silent)
    assert fam.levels[1].cosine[~silent] == pytest.approx(back[rows, parent][~silent], abs=1e-5)
    assert fam.levels[1].correlation[~silent] == pytest.approx(back_corr[rows, parent][~silent], abs=1e-5)
    assert fam.levels[1].cosine[silent].isnan().all()
    cos_only = match_features(a, b)  # no tokens: the decoder measure alone
    assert cos_only.correlation is None and torch.equal(cos_only.cosine_index, m.cosine_index)


def test_property_f1_by_hand() -> None:
    acts = torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([True, True, False, False])
    # feature 0: tp 2, fired 2 -> 1; feature 1: tp 1, fired 2 -> 2/4; feature 2 never fires -> 0
    assert property_f1(acts, labels).tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_bad_input_names_the_values() -> None:
    saes, model, tokens, _ = planted()
    mid, _, narrow = saes
    other = _relu_sae(torch.eye(D_IN)[:4].T, torch.eye(D_IN)[:4])
    other.cfg.hook_name = "blocks.1.hook_resid_post"
    with pytest.raises(
        ValueError, match=r"different sites.*blocks\.0\.hook_resid_post.*blocks\.1\.hook_resid_post"
    ):
        match_features(narrow, other)
    with pytest.raises(ValueError, match=r"different sites.*blocks\.1\.hook_resid_post"):
        feature_families([narrow, mid, other], model, tokens)
    wider_input = random_sae("standard", hook_name=HOOK, d_in=D_IN * 2, d_sae=8)
    with pytest.raises(ValueError, match=r"d_in=16.*d_in=32"):
        match_features(narrow, wider_input)
    twin = _relu_sae(torch.eye(D_IN)[:4].T, torch.eye(D_IN)[:4])
    with pytest.raises(ValueError, match=r"equal width \[4\] \(widths \[4, 9, 4\]\)"):
        feature_families([narrow, mid, twin], model, tokens)
    with pytest.raises(ValueError, match="at least 2 dictionaries.*got 1"):
        feature_families([narrow], model, tokens)
    with pytest.raises(ValueError, match="by='cosine'"):
        feature_families(saes, model, tokens, by="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold=2"):
        feature_families(saes, model, tokens, threshold=2)
    with pytest.raises(ValueError, match="model given alone"):
        match_features(narrow, mid, model)
    with unchecked(), pytest.raises(ValueError, match=r"token_property.*\(24, 17\).*\(3, 17\)"):
        feature_families(saes, model, tokens, token_property=torch.zeros(3, 17, dtype=torch.bool))
    fam = feature_families(saes, model, tokens)
    with pytest.raises(ValueError, match=r"level=3.*widths \[4, 9, 10\]"):
        fam.children(3, 0)
    with pytest.raises(ValueError, match=r"feature=9.*width 9"):
        fam.family(1, 9)
    with pytest.raises(ValueError, match="no token_property"):
        fam.best_for_property()


def test_the_html_page_holds_the_tree(tmp_path) -> None:
    saes, model, tokens, _ = planted()
    fam: FeatureFamilies = feature_families(saes, model, tokens, token_property=tokens > 0)
    page = fam.write_html(tmp_path / "families.html", family=(0, 1)).read_text()
    assert "Content-Security-Policy" in page and "https://" not in page and "src=" not in page
    blob = re.search(r'<script type="application/json" id="families-data">(.*?)</script>', page, re.S)
    assert blob is not None
    data = json.loads(blob.group(1))
    assert data["start"] == [0, 1] and data["widths"] == [4, 9, 10] and data["by"] == "activation"
    assert [lv["parent"] for lv in data["levels"]] == [lv.parent.tolist() for lv in fam.levels]
    assert data["levels"][1]["cosine"][2] == pytest.approx(float(fam.levels[1].cosine[2]), abs=1e-4)
    assert data["levels"][1]["top_tokens"][2][0][0].startswith("t")
    default = fam.write_html(tmp_path / "default.html").read_text()  # the largest family first
    assert '"start": [0, 0]' in default  # every narrow feature has 2 children; the first wins ties
