"""Attribution graphs checked against interventions in an independently built frozen model.

The reference below never touches ``sae_circuits.graph``: it runs the *unspliced* embedded model
in float64 with TransformerLens hooks that freeze attention patterns and LayerNorm scales at their
prompt values and pin every dictionary site's output; a source is removed by subtracting its
vector at its site, and the target's pre-activation (or demeaned logit) is read off.
"""

from __future__ import annotations

import re
from functools import partial

import pytest
import torch

import sae_circuits as sc
from sae_circuits.graph.graph import NodeKind

PROMPT = "def foo(x):\n    return x + 1\n"


@pytest.fixture(scope="module")
def embedded():
    return sc.zoo.load_model("tiny")


@pytest.fixture(scope="module")
def transcoders():
    return sc.zoo.load_saes("tiny", kind="transcoder")


@pytest.fixture(scope="module")
def resid_saes():
    return sc.zoo.load_saes("tiny", kind="resid")


@pytest.fixture(scope="module")
def transcoder_graph(embedded, transcoders):
    with sc.spliced(embedded, transcoders):
        return sc.attribute(embedded, PROMPT, prepend_bos=False, progress=False)


class FrozenReference:
    """The frozen replacement model of one prompt, in float64, built from plain hooks."""

    def __init__(self, model, saes, tokens):
        self.model = model
        self.saes = {s.cfg.site: s for s in saes}
        self.tokens = tokens
        names = set(self.saes) | {s.cfg.hook_name for s in saes}
        frozen = re.compile(r".*(hook_pattern|hook_scale)$")
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names or bool(frozen.match(n)) or n == "blocks.0.hook_resid_pre")
        self.frozen = {k: v.double() for k, v in cache.items() if frozen.match(k)}
        self.outputs = {k: cache[k].double() for k in self.saes}
        self.inputs = {s.cfg.site: cache[s.cfg.hook_name].double() for s in saes}
        self.embedding = cache["blocks.0.hook_resid_pre"].double()
        self.acts = {k: s.encode(self.inputs[k].float()).double() for k, s in self.saes.items()}

    def decoded(self, site, position, index):
        sae = self.saes[site]
        return self.acts[site][0, position, index] * sae.W_dec[index].double()

    def error(self, site, position):
        sae = self.saes[site]
        recons = self.acts[site][0, position] @ sae.W_dec.double() + sae.b_dec.double()
        return self.outputs[site][0, position] - recons

    def run(self, edits=(), embedding_edit=None, zero_embedding=False):
        """Pre-activations of every site and the final logits, with ``(site, position, vector)``
        subtracted from site outputs (and ``embedding_edit`` from the embedding)."""
        hooks = [(k, _constant(v)) for k, v in self.frozen.items()]
        emb = torch.zeros_like(self.embedding) if zero_embedding else self.embedding.clone()
        if embedding_edit is not None:
            emb[0, embedding_edit[0]] -= embedding_edit[1]
        hooks.append(("blocks.0.hook_resid_pre", lambda x, hook: emb))
        pre = {}
        for site in self.saes:
            out = self.outputs[site].clone()
            for s, p, vec in edits:
                if s == site:
                    out[0, p] -= vec
            hooks.append((site, _constant(out)))
            hooks.append((self.saes[site].cfg.hook_name, partial(_read_pre_acts, sae=self.saes[site], site=site, into=pre)))
        with torch.no_grad(), self.model.hooks(fwd_hooks=hooks):
            logits = self.model(self.tokens)
        return pre, logits[0, -1]


def _constant(value):
    return lambda x, hook: value


def _read_pre_acts(x, hook, sae, site, into):
    into[site] = sae._pre_acts(x)[0]
    return x


def _double_copies(saes):
    model64 = sc.zoo.load_model("tiny").double()
    copies = []
    for sae in saes:
        copy = sc.SAE(sae.cfg)
        copy.load_state_dict(sae.state_dict())
        copies.append(copy.double())
    return model64, copies


def _node(g, kind, site=None, position=None, index=None):
    mask = g.kind == kind
    if site is not None:
        mask &= g.site == g.sites.index(site)
    if position is not None:
        mask &= g.position == position
    if index is not None:
        mask &= g.index == index
    hits = mask.nonzero().squeeze(-1)
    assert hits.numel() == 1, (kind, site, position, index, hits)
    return int(hits[0])


def _incoming(g, target):
    mask = g.edges.target == target
    return g.edges.source[mask], g.edges.weight[mask].double()


def _effect_of(ref, g, source, target):
    """Change of ``target`` when ``source`` is removed in the reference frozen model."""
    kind = NodeKind(int(g.kind[source]))
    position = int(g.position[source])
    if kind == NodeKind.TOKEN:
        pre, logits = ref.run(embedding_edit=(position, ref.embedding[0, position]))
    else:
        site = g.sites[int(g.site[source])]
        vec = ref.error(site, position) if kind == NodeKind.ERROR else ref.decoded(site, position, int(g.index[source]))
        pre, logits = ref.run(edits=[(site, position, vec)])
    clean_pre, clean_logits = ref.clean
    if g.kind[target] == NodeKind.TARGET and g.site[target] < 0:
        tok = int(g.index[target])
        value = lambda lg: lg[tok] - lg.mean()
        return float(value(clean_logits) - value(logits))
    site = g.sites[int(g.site[target])]
    p, i = int(g.position[target]), int(g.index[target])
    return float(clean_pre[site][0, p, i] - pre[site][0, p, i])


@pytest.fixture(scope="module")
def reference(embedded, transcoders, transcoder_graph):
    model64, saes64 = _double_copies(transcoders)
    tokens = torch.tensor([transcoder_graph.tokens])
    ref = FrozenReference(model64, saes64, tokens)
    ref.clean = ref.run()
    return ref


def test_edges_equal_interventions_in_the_frozen_model(transcoder_graph, reference):
    """With transcoders every edge is exact: it equals the change of the target when the source
    is removed (features, errors, tokens; into features and logits), to 1e-4 relative."""
    g, checked = transcoder_graph, 0
    assert not g.first_order_edges().any()
    logit_rows = g.nodes_of(NodeKind.TARGET)[:2].tolist()
    features = g.nodes_of(NodeKind.FEATURE)
    deep = features[g.layer[features] >= 2][:: max(1, len(features) // 6)][:3].tolist()
    for target in logit_rows + deep:
        sources, weights = _incoming(g, target)
        for kind in (NodeKind.FEATURE, NodeKind.ERROR, NodeKind.TOKEN):
            of_kind = g.kind[sources] == kind
            if not of_kind.any():
                continue
            top = weights[of_kind].abs().topk(min(2, int(of_kind.sum()))).indices
            for j in top.tolist():
                source, weight = int(sources[of_kind][j]), float(weights[of_kind][j])
                effect = _effect_of(reference, g, source, target)
                assert effect == pytest.approx(weight, rel=1e-4, abs=1e-6), (g.labels[source], g.labels[target])
                checked += 1
    assert checked >= 15


def test_every_row_adds_up_to_its_target_even_with_a_budget(embedded, transcoders, reference):
    """Nothing silently dropped: with few expanded features and a tolerance, each row's edges
    (incl. the "other" nodes) still sum to the target minus what the biases alone give."""
    with sc.spliced(embedded, transcoders):
        g = sc.attribute(embedded, PROMPT, prepend_bos=False, progress=False, max_feature_nodes=40, edge_tolerance=0.01)
    assert int((g.kind == NodeKind.FEATURE).sum()) == 40
    assert (g.kind == NodeKind.OTHER).sum() >= 1
    ref = reference
    everything = []
    for site in ref.saes:
        for p in range(ref.tokens.shape[1]):
            everything.append((site, p, ref.outputs[site][0, p] - ref.saes[site].b_dec.double()))
    bias_pre, bias_logits = ref.run(edits=everything, zero_embedding=True)  # the biases alone
    clean_pre, clean_logits = ref.clean
    for target in g.nodes_of(NodeKind.TARGET).tolist() + g.nodes_of(NodeKind.FEATURE)[:10].tolist():
        _, weights = _incoming(g, target)
        if g.site[target] < 0:
            tok = int(g.index[target])
            expected = (clean_logits[tok] - clean_logits.mean()) - (bias_logits[tok] - bias_logits.mean())
        else:
            site = g.sites[int(g.site[target])]
            p, i = int(g.position[target]), int(g.index[target])
            expected = clean_pre[site][0, p, i] - bias_pre[site][0, p, i]
        assert float(weights.sum()) == pytest.approx(float(expected), rel=1e-4, abs=1e-4 * float(weights.abs().sum()))


def test_batch_size_does_not_change_the_graph(embedded, transcoders, transcoder_graph):
    with sc.spliced(embedded, transcoders):
        g1 = sc.attribute(embedded, PROMPT, prepend_bos=False, progress=False, batch_size=7)
    assert g1.n_nodes == transcoder_graph.n_nodes
    a = torch.sparse_coo_tensor(torch.stack([g1.edges.target, g1.edges.source]), g1.edges.weight, (g1.n_nodes,) * 2).to_dense()
    b = torch.sparse_coo_tensor(torch.stack([transcoder_graph.edges.target, transcoder_graph.edges.source]),
                                transcoder_graph.edges.weight, (g1.n_nodes,) * 2).to_dense()
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
