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
from sae_circuits.graph.influence import NodeKind
from tests.conftest import D_MODEL, NO_HOOKED, random_sae

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
            _, cache = model.run_with_cache(
                tokens,
                names_filter=lambda n: n in names or bool(frozen.match(n)) or n == "blocks.0.hook_resid_pre",
            )
        self.frozen = {k: v.double() for k, v in cache.items() if frozen.match(k)}
        self.outputs = {k: cache[k].double() for k in self.saes}
        self.inputs = {s.cfg.site: cache[s.cfg.hook_name].double() for s in saes}
        self.embedding = cache["blocks.0.hook_resid_pre"].double()
        self.acts = {k: s.encode(self.inputs[k]) for k, s in self.saes.items()}

    def decoded(self, site, position, index):
        sae = self.saes[site]
        return self.acts[site][0, position, index] * sae.W_dec[index]

    def error(self, site, position):
        sae = self.saes[site]
        recons = self.acts[site][0, position] @ sae.W_dec + sae.b_dec
        if sae.cfg.has_skip:  # the skip path is the model's own linear part, not error
            recons = recons + self.inputs[site][0, position].flatten() @ sae.W_skip.T
        return self.outputs[site][0, position].flatten() - recons

    def run(self, edits=(), embedding_edit=None, zero_embedding=False):
        """Pre-activations of every site and the final logits, with ``(site, position, vector)``
        subtracted from site outputs (and ``embedding_edit`` from the embedding)."""
        hooks = [(k, _constant(v)) for k, v in self.frozen.items()]
        emb = torch.zeros_like(self.embedding) if zero_embedding else self.embedding.clone()
        if embedding_edit is not None:
            emb[0, embedding_edit[0]] -= embedding_edit[1]
        hooks.append(("blocks.0.hook_resid_pre", lambda x, hook: emb))
        pre, inputs = {}, {}
        for site, sae in self.saes.items():  # read the inputs before pinning (same hook for SAEs)
            hooks.append(
                (sae.cfg.hook_name, partial(_read_pre_acts, sae=sae, site=site, into=pre, inputs=inputs))
            )
        for site, sae in self.saes.items():
            out = self.outputs[site].clone()
            for s, p, vec in edits:
                if s == site:
                    out[0, p] -= vec.reshape(out[0, p].shape)
            if sae.cfg.has_skip:  # the skip path follows the (edited) input: W_skip is linear
                hooks.append((site, partial(_skip_output, out=out, site=site, ref=self, inputs=inputs)))
            else:
                hooks.append((site, _constant(out)))
        with torch.no_grad(), self.model.hooks(fwd_hooks=hooks):
            logits = self.model(self.tokens)
        return pre, logits[0, -1]


def _constant(value):
    return lambda x, hook: value


def _read_pre_acts(x, hook, sae, site, into, inputs):
    into[site] = sae._pre_acts(sae._flatten(x))[0]
    inputs[site] = x.clone()
    return x


def _skip_output(x, hook, out, site, ref, inputs):
    return out + (inputs[site] - ref.inputs[site]) @ ref.saes[site].W_skip.T


def _double_copies(saes):
    copies = []
    for sae in saes:
        copy = sc.SAE(sae.cfg)
        copy.load_state_dict(sae.state_dict())
        copies.append(copy.double())
    return copies


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


def _effect_of(ref, g, source, target, eps=1.0):
    """Change of ``target`` when ``source`` is removed (``eps`` of it, divided by ``eps``)
    in the reference frozen model."""
    kind = NodeKind(int(g.kind[source]))
    position = int(g.position[source])
    if kind == NodeKind.TOKEN:
        pre, logits = ref.run(embedding_edit=(position, eps * ref.embedding[0, position]))
    else:
        site = g.sites[int(g.site[source])]
        vec = (
            ref.error(site, position)
            if kind == NodeKind.ERROR
            else ref.decoded(site, position, int(g.index[source]))
        )
        pre, logits = ref.run(edits=[(site, position, eps * vec)])
    clean_pre, clean_logits = ref.clean
    if g.kind[target] == NodeKind.TARGET and g.site[target] < 0:
        tok = int(g.index[target])
        value = lambda lg: lg[tok] - lg.mean()
        return float(value(clean_logits) - value(logits)) / eps
    site = g.sites[int(g.site[target])]
    p, i = int(g.position[target]), int(g.index[target])
    return float(clean_pre[site][0, p, i] - pre[site][0, p, i]) / eps


def _check_top_edges(g, ref, targets, per_kind=2, eps=1.0, rel=1e-4):
    """Compare the largest incoming edges of each kind of ``targets`` with the reference."""
    checked = 0
    for target in targets:
        sources, weights = _incoming(g, target)
        for kind in (NodeKind.FEATURE, NodeKind.ERROR, NodeKind.TOKEN):
            of_kind = g.kind[sources] == kind
            if not of_kind.any():
                continue
            for j in weights[of_kind].abs().topk(min(per_kind, int(of_kind.sum()))).indices.tolist():
                source, weight = int(sources[of_kind][j]), float(weights[of_kind][j])
                effect = _effect_of(ref, g, source, target, eps)
                assert effect == pytest.approx(weight, rel=rel, abs=1e-6), (
                    g.labels[source],
                    g.labels[target],
                )
                checked += 1
    return checked


@pytest.fixture(scope="module")
def reference(embedded, transcoders, transcoder_graph):
    return _reference(sc.zoo.load_model("tiny"), transcoders, transcoder_graph)


def _reference(model, saes, graph):
    model.cfg.dtype = torch.float64  # TransformerLens casts LayerNorm outputs to cfg.dtype
    ref = FrozenReference(model.double(), _double_copies(saes), torch.tensor([graph.tokens]))
    ref.clean = ref.run()
    return ref


def test_edges_equal_interventions_in_the_frozen_model(transcoder_graph, reference):
    """With transcoders every edge is exact: it equals the change of the target when the source
    is removed (features, errors, tokens; into features and logits), to 1e-4 relative."""
    g = transcoder_graph
    assert not g.first_order_edges().any()
    logit_rows = g.nodes_of(NodeKind.TARGET)[:2].tolist()
    features = g.nodes_of(NodeKind.FEATURE)
    deep = features[g.layer[features] >= 2][:: max(1, len(features) // 6)][:3].tolist()
    assert _check_top_edges(g, reference, logit_rows + deep) >= 15


def test_every_row_adds_up_to_its_target_even_with_a_budget(embedded, transcoders, reference):
    """Nothing silently dropped: with few expanded features and a tolerance, each row's edges
    (incl. the "other" nodes) still sum to the target minus what the biases alone give."""
    with sc.spliced(embedded, transcoders):
        g = sc.attribute(
            embedded, PROMPT, prepend_bos=False, progress=False, max_feature_nodes=40, edge_tolerance=0.01
        )
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
        assert float(weights.sum()) == pytest.approx(
            float(expected), rel=1e-4, abs=1e-4 * float(weights.abs().sum())
        )


def test_batch_size_does_not_change_the_graph(embedded, transcoders, transcoder_graph):
    with sc.spliced(embedded, transcoders):
        g1 = sc.attribute(embedded, PROMPT, prepend_bos=False, progress=False, batch_size=7)
    assert g1.n_nodes == transcoder_graph.n_nodes
    assert torch.allclose(_dense(g1), _dense(transcoder_graph), atol=1e-5, rtol=1e-4)


def _dense(g):
    return torch.zeros(g.n_nodes, g.n_nodes).index_put_(
        (g.edges.target, g.edges.source), g.edges.weight, accumulate=True
    )


def _mixed_dictionaries():
    """Every kind of site on the 2-layer random model, with both MLPs covered by transcoders."""
    saes = [
        random_sae(
            "transcoder", hook_name=f"blocks.{layer}.ln2.hook_normalized", d_out=D_MODEL, d_sae=96, seed=layer
        )
        for layer in (0, 1)
    ]
    for layer, tc in enumerate(saes):
        tc.cfg.hook_name_out = f"blocks.{layer}.hook_mlp_out"
    saes.append(
        random_sae(hook_name="blocks.0.attn.hook_z", d_in=D_MODEL, reshape_activations="hook_z", seed=5)
    )
    saes.append(random_sae(hook_name="blocks.1.hook_attn_out", seed=6))
    saes.append(random_sae(hook_name="blocks.0.hook_resid_post", seed=7))
    return saes


@pytest.mark.parametrize("resid_site", [None, "blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"])
def test_skip_transcoders_are_exact_alone_and_beside_a_residual_sae(tiny_model_dir, resid_site):
    """A skip transcoder's skip path is part of the frozen linear model (its error node leaves it
    out): edges equal interventions with it, also when a residual SAE sits between the layers."""
    from sae_circuits.zoo.loader import load_hf_gpt2

    if NO_HOOKED:
        pytest.skip(NO_HOOKED)
    saes = [
        random_sae("skip_transcoder", hook_name=f"blocks.{layer}.ln2.hook_normalized", d_out=D_MODEL, d_sae=96,
                   seed=layer)
        for layer in (0, 1)
    ]  # fmt: skip
    for layer, tc in enumerate(saes):
        tc.cfg.hook_name_out = f"blocks.{layer}.hook_mlp_out"
        with torch.no_grad():
            tc.W_skip.mul_(0.3)
    if resid_site is not None:
        saes.append(random_sae(hook_name=resid_site, seed=7))
    model = load_hf_gpt2(tiny_model_dir, "hooked")
    with sc.spliced(model, saes):
        g = sc.attribute(model, "def parse(self, text):\n    return", prepend_bos=False, progress=False)
    ref = _reference(load_hf_gpt2(tiny_model_dir, "hooked"), saes, g)
    features = g.nodes_of(NodeKind.FEATURE)
    late = features[g.stage[features] >= g.stage[features].max() - 1][:2].tolist()
    assert _check_top_edges(g, ref, g.nodes_of(NodeKind.TARGET)[:2].tolist() + late) >= 12


@pytest.mark.parametrize("kind", ["hooked", "bridge"])
def test_any_mix_of_sites_is_exact_when_every_mlp_is_covered(kind, tiny_model_dir):
    """Residual, attention-out, hook_z SAEs and transcoders together: all edges exact, on both
    model kinds (the bridge's hook_z reshapes on its hook point)."""
    from sae_circuits.zoo.loader import load_hf_gpt2

    if kind == "hooked" and NO_HOOKED:
        pytest.skip(NO_HOOKED)
    model = load_hf_gpt2(tiny_model_dir, kind)
    saes = _mixed_dictionaries()
    prompt = "def parse(self, text):\n    return"
    with sc.spliced(model, saes):
        g = sc.attribute(model, prompt, prepend_bos=False, progress=False, batch_size=16)
    assert len(g.sites) == 5 and not g.first_order_edges().any()
    assert set(g.site[g.kind == NodeKind.FEATURE].tolist()) == set(range(5)), "every site has feature nodes"
    ref = _reference(load_hf_gpt2(tiny_model_dir, kind), saes, g)  # a fresh model of the same kind
    features = g.nodes_of(NodeKind.FEATURE)
    late = features[g.stage[features] >= g.stage[features].max() - 1][:2].tolist()
    assert _check_top_edges(g, ref, g.nodes_of(NodeKind.TARGET)[:2].tolist() + late) >= 12


def test_edges_through_a_bare_mlp_are_first_order(embedded, resid_saes):
    """Residual SAEs leave the MLPs uncovered: those edges are flagged, and equal the derivative
    of the target along the source (a finite difference in float64)."""
    with sc.spliced(embedded, resid_saes):
        g = sc.attribute(embedded, PROMPT, prepend_bos=False, progress=False, max_feature_nodes=30)
    flags = g.first_order_edges()
    assert flags.any() and not flags.all()
    from_layer0 = (g.site[g.edges.source] == 0) & (g.kind[g.edges.source] == NodeKind.FEATURE)
    assert flags[from_layer0 & (g.site[g.edges.target] == 1)].all(), "layer 0 -> 1 crosses MLP 1"
    ref = _reference(sc.zoo.load_model("tiny"), resid_saes, g)
    features = g.nodes_of(NodeKind.FEATURE)
    targets = features[g.site[features] >= 1][:: max(1, len(features) // 4)][:4].tolist()
    assert _check_top_edges(g, ref, targets, eps=1e-6, rel=1e-4) >= 6


def test_a_logit_difference_is_the_difference_of_the_token_rows(embedded, transcoders, transcoder_graph):
    g = transcoder_graph
    a, b = [int(g.index[t]) for t in g.nodes_of(NodeKind.TARGET)[:2]]
    direction = torch.zeros(embedded.cfg.d_vocab)
    direction[a], direction[b] = 1.0, -1.0
    with sc.spliced(embedded, transcoders):
        gd = sc.attribute(
            embedded,
            PROMPT,
            targets=[a, b, sc.LogitDirection(direction, "a - b")],
            prepend_bos=False,
            progress=False,
            max_feature_nodes=0,
        )
    ta, tb, td = gd.nodes_of(NodeKind.TARGET).tolist()
    assert gd.labels[td] == "a - b" and gd.target_weight[td] == 1.0
    with torch.no_grad():
        probs = torch.softmax(embedded(PROMPT, prepend_bos=False)[0, -1].double(), -1)
    assert gd.target_weight[ta] == pytest.approx(float(probs[a]))

    def row(target):
        dense = torch.zeros(gd.n_nodes)
        sources, weights = _incoming(gd, target)
        return dense.index_add_(0, sources, weights.float())

    assert torch.allclose(row(td), row(ta) - row(tb), atol=1e-5)


def test_a_feature_target_has_the_same_row_as_in_the_logit_graph(embedded, transcoders, transcoder_graph):
    g = transcoder_graph
    node = int(g.nodes_of(NodeKind.FEATURE)[-1])
    site, position, index = g.sites[int(g.site[node])], int(g.position[node]), int(g.index[node])
    with sc.spliced(embedded, transcoders):
        gf = sc.attribute(
            embedded, PROMPT, targets=sc.Feature(site, position, index), prepend_bos=False, progress=False
        )
    (target,) = gf.nodes_of(NodeKind.TARGET).tolist()
    assert gf.activation[target] == g.activation[node] and gf.target_weight[target] == 1.0

    def row(graph, t):
        sources, weights = _incoming(graph, t)
        keys = [
            (int(graph.kind[s]), int(graph.site[s]), int(graph.position[s]), int(graph.index[s]))
            for s in sources
        ]
        return dict(zip(keys, weights.tolist()))

    expected, got = row(g, node), row(gf, target)
    assert expected.keys() == got.keys()
    assert all(got[k] == pytest.approx(v, rel=1e-5, abs=1e-7) for k, v in expected.items())


def test_default_targets_cover_95_percent_or_ten_tokens(transcoder_graph, embedded):
    g = transcoder_graph
    probs = g.target_weight[g.kind == NodeKind.TARGET]
    assert probs.sum() >= 0.95 or probs.numel() == 10
    assert probs.numel() == 1 or probs[:-1].sum() < 0.95
    assert torch.all(probs[:-1] >= probs[1:])
    assert int(g.layer[g.kind == NodeKind.TARGET][0]) == embedded.cfg.n_layers


def test_prune_and_scores(transcoder_graph):
    g = transcoder_graph
    full = g.scores()
    assert 0.5 < full["replacement"] <= 1 and 0.5 < full["completeness"] <= 1
    pruned = g.prune(node_threshold=0.8, edge_threshold=0.98)
    assert pruned.n_nodes < g.n_nodes and pruned.n_edges < g.n_edges
    assert (pruned.kind == NodeKind.TOKEN).sum() == (g.kind == NodeKind.TOKEN).sum()
    assert torch.equal(
        pruned.target_weight[pruned.kind == NodeKind.TARGET], g.target_weight[g.kind == NodeKind.TARGET]
    )
    for bad in (0, 1.5, -0.1, True, "0.8"):
        with pytest.raises(ValueError, match="node_threshold"):
            g.prune(node_threshold=bad)
        with pytest.raises(ValueError, match="edge_threshold"):
            g.prune(edge_threshold=bad)


def test_bad_input_gets_a_clear_error(model, bridge):
    with pytest.raises(ValueError, match="no SAE or transcoder is spliced"):
        sc.attribute(model, "def f():")
    with sc.spliced(model, [random_sae()]):
        with pytest.raises(ValueError, match="the prompt is empty"):
            sc.attribute(model, "")
        with pytest.raises(ValueError, match="more than the model's context of 128"):
            sc.attribute(model, list(range(129)))
        with pytest.raises(ValueError, match="integer ids, got shape \\(2,\\) and dtype torch.float32"):
            sc.attribute(model, torch.tensor([1.0, 2.0]))
        with pytest.raises(ValueError, match="token id 99999 is not in the vocabulary"):
            sc.attribute(model, "def f():", targets=[99999])
        with pytest.raises(ValueError, match="'def f' is not one token"):
            sc.attribute(model, "def f():", targets=["def f"])
        token = int(model.to_tokens("x", prepend_bos=False)[0, 0])
        with pytest.raises(
            ValueError, match=rf"targets\[1\] = {token} is the same token as targets\[0\] = 'x'"
        ):
            sc.attribute(model, "def f():", targets=["x", token])  # could not be saved: one node id
        with pytest.raises(ValueError, match="is the same feature as targets"):
            sc.attribute(
                model, "def f():",
                targets=[sc.Feature("blocks.0.hook_resid_post", -1, 3), sc.Feature("blocks.0.hook_resid_post", 3, 3)],
            )  # fmt: skip
        with pytest.raises(ValueError, match="batch_size=0"):
            sc.attribute(model, "def f():", batch_size=0)
        with pytest.raises(ValueError, match="edge_tolerance=1"):
            sc.attribute(model, "def f():", edge_tolerance=1)
        with pytest.raises(ValueError, match="'blocks.1.hook_mlp_out' has no spliced dictionary"):
            sc.attribute(model, "def f():", targets=sc.Feature("blocks.1.hook_mlp_out", 0, 3))
        with pytest.raises(ValueError, match="at position 0, where zero_bos=True removes every feature"):
            sc.attribute(
                model, "def f():", targets=sc.Feature("blocks.0.hook_resid_post", 0, 3), zero_bos=True
            )
        with pytest.raises(ValueError, match="position 40 is outside"):
            sc.attribute(model, "def f():", targets=sc.Feature("blocks.0.hook_resid_post", 40, 3))
        with pytest.raises(ValueError, match="shape"):
            sc.attribute(model, "def f():", targets=sc.LogitDirection(torch.zeros(3)))
    with sc.spliced(bridge, [random_sae()]):  # the bridge is supported (tests/test_bridge_capabilities.py)
        assert sc.attribute(bridge, "def f():", progress=False).n_nodes > 0


def test_long_text_prompt_is_rejected_not_cut_to_the_context(model):
    text = "x = 1\n" * 400
    n = len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert n > model.cfg.n_ctx == 128
    with sc.spliced(model, [random_sae()]):
        with pytest.raises(
            ValueError, match=rf"the prompt has {n} tokens, more than the model's context of 128"
        ):
            sc.attribute(model, text, prepend_bos=False, progress=False)
        short = "x = 1\n" * 20  # a prompt that fits is attributed whole
        g = sc.attribute(model, short, prepend_bos=False, progress=False, max_feature_nodes=5)
        assert (g.kind == NodeKind.TOKEN).sum() == len(
            model.tokenizer(short, add_special_tokens=False)["input_ids"]
        )
