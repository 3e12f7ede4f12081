"""The scale path of attribution: one-copy forward with batched backward passes, prefix passes,
fused frozen normalisations, skipped leaf MLPs, dtypes, memory settings and placement.

Correctness of the edges themselves is checked against interventions in ``test_attribution.py``;
here each shortcut is checked against the plain computation it replaces."""

from __future__ import annotations

import contextlib
import statistics

import pytest
import torch

import sae_circuits as sc
from sae_circuits.graph import replacement
from sae_circuits.graph.attribution import DEFAULT_MAX_FEATURE_NODES, _capture, _input_gradients_only
from sae_circuits.graph.influence import NodeKind
from sae_circuits.graph.passes import FrozenPasses, row_gradients
from sae_circuits.graph.rows import Row
from sae_circuits.placement import check_device, place
from tests.conftest import NO_HOOKED

PROMPT = "def foo(x):\n    return [x + 1 for y in range(3)]\n"


@pytest.fixture(scope="module")
def embedded():
    model = sc.zoo.load_model("tiny")
    sc.splice(model, sc.zoo.load_saes("tiny", kind="transcoder"))
    yield model
    sc.unsplice(model)


def _random_model(normalization: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=32,
        act_fn="gelu_new", normalization_type=normalization, seed=3,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    saes = []
    for layer in range(2):
        cfg_sae = sc.SAEConfig(
            "transcoder", d_in=32, d_sae=64, hook_name=f"blocks.{layer}.ln2.hook_normalized",
            apply_b_dec_to_input=False, hook_name_out=f"blocks.{layer}.hook_mlp_out",
        )  # fmt: skip
        torch.manual_seed(layer)
        sae = sc.SAE(cfg_sae)
        sae.reset_parameters()
        saes.append(sae)
    saes.append(_resid_sae(layer=0))
    sc.splice(model, saes)
    return model


def _resid_sae(layer: int) -> sc.SAE:
    torch.manual_seed(10 + layer)
    sae = sc.SAE(sc.SAEConfig("standard", d_in=32, d_sae=64, hook_name=f"blocks.{layer}.hook_resid_mid"))
    sae.reset_parameters()
    return sae


def _dense(graph) -> torch.Tensor:
    return torch.zeros(graph.n_nodes, graph.n_nodes).index_put_(
        (graph.edges.target, graph.edges.source), graph.edges.weight, accumulate=True
    )


@pytest.mark.parametrize("normalization", ["LN", "LNPre", "RMS", "RMSPre"])
def test_the_shortcuts_give_the_plain_autograd_graph(normalization, monkeypatch):
    """Fused frozen normalisations, skipped leaf MLPs and skipped attention scores change no
    edge: the graph equals the one built with every shortcut switched off."""
    if NO_HOOKED:
        pytest.skip(NO_HOOKED)
    model = _random_model(normalization)
    tokens = torch.arange(1, 13) % 50
    fast = sc.attribute(model, tokens, max_feature_nodes=None, batch_size=7, progress=False)
    patched = []
    for name in ("_frozen_norms", "_leaf_mlps", "_frozen_attention"):
        patched.append(getattr(replacement, name))
        monkeypatch.setattr(replacement, name, lambda *args: contextlib.nullcontext())
    plain = sc.attribute(model, tokens, max_feature_nodes=None, batch_size=7, progress=False)
    monkeypatch.undo()
    assert fast.n_nodes == plain.n_nodes and torch.equal(fast.kind, plain.kind)
    assert torch.allclose(_dense(fast), _dense(plain), atol=1e-6, rtol=1e-5)
    assert (fast.kind == NodeKind.FEATURE).sum() > 20  # a graph worth comparing


def test_an_sae_reading_the_mlp_output_keeps_its_mlp_and_its_edges(monkeypatch):
    """A plain SAE at ``hook_mlp_out`` reads the MLP's output: the MLP must run in the frozen
    pass (skipping it would silently cut every edge into that SAE's features)."""
    if NO_HOOKED:
        pytest.skip(NO_HOOKED)
    model = _random_model("LN")
    sc.unsplice(model, "blocks.0.hook_mlp_out")  # the layer-0 transcoder makes way for a plain SAE
    torch.manual_seed(5)
    mlp_sae = sc.SAE(sc.SAEConfig("standard", d_in=32, d_sae=64, hook_name="blocks.0.hook_mlp_out"))
    mlp_sae.reset_parameters()
    sc.splice(model, mlp_sae)
    tokens = torch.arange(1, 13) % 50
    fast = sc.attribute(model, tokens, max_feature_nodes=None, batch_size=7, progress=False)
    for name in ("_frozen_norms", "_leaf_mlps", "_frozen_attention"):
        monkeypatch.setattr(replacement, name, lambda *args: contextlib.nullcontext())
    plain = sc.attribute(model, tokens, max_feature_nodes=None, batch_size=7, progress=False)
    monkeypatch.undo()
    assert torch.allclose(_dense(fast), _dense(plain), atol=1e-6, rtol=1e-5)
    site = fast.sites.index("blocks.0.hook_mlp_out")
    into_mlp_features = (fast.kind[fast.edges.target] == NodeKind.FEATURE) & (
        fast.site[fast.edges.target] == site
    )
    assert int(into_mlp_features.sum()) > 0


def test_a_prefix_pass_gives_the_full_pass_gradients(embedded):
    """Rows at early positions get the same gradients from a pass over the prompt's prefix."""
    tokens = embedded.to_tokens(PROMPT)[0]
    with _input_gradients_only(embedded):
        run = _capture(embedded, tokens, None, 8, None, 0.0)
        site = run.values.sites[2]
        early = (site.positions < 6).nonzero().squeeze(-1)[:5]
        rows = [Row(1.0, site=2, position=int(site.positions[i]), index=int(site.indices[i])) for i in early]
        passes = FrozenPasses(embedded, run.values, buckets=tokens.numel())  # one bucket per position
        short = passes.for_rows(rows)
        full = replacement.frozen_pass(embedded, run.values)
        assert short.horizon == 1 + max(r.position for r in rows) < full.horizon
        for a, b in zip(
            row_gradients(embedded, short, run.values, run.targets, rows),
            row_gradients(embedded, full, run.values, run.targets, rows),
        ):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.allclose(a, b[:, : a.shape[1]], atol=1e-6)
                assert b[:, a.shape[1] :].abs().max() == 0  # nothing reaches a later position


def test_batched_rows_equal_one_row_at_a_time(embedded):
    tokens = embedded.to_tokens(PROMPT)[0, :5]
    one = sc.attribute(embedded, tokens, max_feature_nodes=None, batch_size=1, progress=False)
    many = sc.attribute(embedded, tokens, max_feature_nodes=None, batch_size=64, progress=False)
    assert one.n_nodes == many.n_nodes
    assert torch.allclose(_dense(one), _dense(many), atol=1e-5, rtol=1e-4)


def test_the_default_node_budget_is_circuit_tracers():
    import inspect

    default = inspect.signature(sc.attribute).parameters["max_feature_nodes"].default
    assert default == DEFAULT_MAX_FEATURE_NODES == 7500


def test_a_per_row_edge_budget_folds_and_drops_nothing(embedded):
    full = sc.attribute(embedded, PROMPT, max_feature_nodes=30, progress=False)
    capped = sc.attribute(embedded, PROMPT, max_feature_nodes=30, max_edges_per_row=5, progress=False)
    assert torch.equal(full.kind, capped.kind)
    dense_full, dense_capped = _dense(full), _dense(capped)
    # every row keeps its total input (folded edges sit in "other" nodes)
    assert torch.allclose(dense_full.sum(1), dense_capped.sum(1), atol=1e-4)
    is_feature = capped.kind == NodeKind.FEATURE
    per_row = (dense_capped[:, is_feature] != 0).sum(1)
    assert int(per_row.max()) <= 5 < int((dense_full[:, is_feature] != 0).sum(1).max())
    assert capped.metadata["max_edges_per_row"] == 5


def test_auto_batch_size_gives_the_same_full_graph(embedded):
    auto = sc.attribute(embedded, PROMPT, max_feature_nodes=None, batch_size="auto", progress=False)
    fixed = sc.attribute(embedded, PROMPT, max_feature_nodes=None, batch_size=16, progress=False)
    assert torch.allclose(_dense(auto), _dense(fixed), atol=1e-5, rtol=1e-4)
    assert auto.metadata["batch_size"] >= 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": 0}, r"batch_size=0 must be a positive integer or 'auto'"),
        ({"batch_size": "big"}, r"batch_size='big'"),
        ({"max_feature_nodes": -1}, r"max_feature_nodes=-1 must be None \(no budget\), 0"),
        ({"max_feature_nodes": 2.5}, r"max_feature_nodes=2.5"),
        ({"max_edges_per_row": 0}, r"max_edges_per_row=0 must be None or an integer >= 1"),
    ],
)
def test_bad_settings_are_named(embedded, settings, message):
    with pytest.raises(ValueError, match=message):
        sc.attribute(embedded, PROMPT, progress=False, **settings)


def _edge_weights(graph) -> dict:
    def key(i):
        return (int(graph.kind[i]), int(graph.site[i]), int(graph.position[i]), int(graph.index[i]))

    e = graph.edges
    return {(key(s), key(t)): w for s, t, w in zip(e.source.tolist(), e.target.tolist(), e.weight.tolist())}


def test_a_bfloat16_model_gives_float32_edges_close_to_the_float32_graph():
    """bfloat16 model, float32 dictionaries: the backward runs in bfloat16, the dots in float32."""
    tokens = sc.zoo.load_model("tiny").to_tokens(PROMPT)[0]
    graphs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = sc.zoo.load_model("tiny")
        sc.splice(model, sc.zoo.load_saes("tiny", kind="transcoder"))
        place(model, dtype=dtype)
        graphs[dtype] = sc.attribute(model, tokens, max_feature_nodes=60, progress=False)
    reference, low = _edge_weights(graphs[torch.float32]), _edge_weights(graphs[torch.bfloat16])
    assert graphs[torch.bfloat16].edges.weight.dtype == torch.float32
    top = sorted(reference, key=lambda k: -abs(reference[k]))[:100]
    present = [k for k in top if k in low]
    assert len(present) >= 95
    errors = [abs(reference[k] - low[k]) / abs(reference[k]) for k in present]
    assert statistics.median(errors) < 0.02


def test_place_moves_dictionaries_and_names_bad_devices(embedded):
    tc = sc.saes_of(embedded)["blocks.0.hook_mlp_out"]
    place(embedded, "cpu", dictionary_dtype=torch.float64)
    try:
        assert tc.W_enc.dtype == torch.float64 and tc.cfg.dtype == "float64"
    finally:
        place(embedded, dictionary_dtype=torch.float32)
    assert tc.W_enc.dtype == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda:3' does not exist: torch sees no CUDA device"):
            check_device("cuda:3")
        refusal = (
            r"n_devices=2 splits a model over GPUs; device 'cpu'|TransformerBridge is placed by Hugging Face"
        )
        with pytest.raises(ValueError, match=refusal):
            place(embedded, "cpu", n_devices=2)
    with pytest.raises(ValueError, match=r"device 'gpu0' is not a device name"):
        check_device("gpu0")
    with pytest.raises(ValueError, match=r"dtype=torch.int64 must be a floating-point torch.dtype"):
        place(embedded, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"n_devices=0 must be an integer >= 1"):
        place(embedded, n_devices=0)


def test_place_on_a_numbered_gpu_keeps_the_number_in_the_config(monkeypatch):
    """Given a torch.device, TransformerLens records only its type: on cuda:1 the config said
    "cuda", and the forward pass sent the tokens to cuda:0 (run here with the move stubbed out)."""
    import sae_circuits.placement as placement

    model = sc.zoo.load_model("tiny")
    moved: list[object] = []
    monkeypatch.setattr(placement, "check_device", lambda device: torch.device(device))
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: moved.append(args) or self)
    place(model, "cuda:1")
    assert moved and str(model.cfg.device) == "cuda:1"


@pytest.mark.parametrize("batched_pattern", [False, True])
def test_the_frozen_pattern_backward_under_vmap_equals_the_einsum(batched_pattern):
    """The batching rule of the pattern's transposed product (rows folded into the matmul, or a
    pattern batched too) gives what a plain einsum gives per row."""
    gen = torch.Generator().manual_seed(0)
    rows, b, h, q, d = 5, 1, 3, 7, 4
    pattern = torch.rand(rows if batched_pattern else 1, b, h, q, q, generator=gen)
    grad = torch.randn(rows, b, q, h, d, generator=gen)
    apply = replacement._PatternTransposed.apply
    if batched_pattern:
        out = torch.vmap(apply)(pattern, grad)
    else:
        out = torch.vmap(apply, in_dims=(None, 0))(pattern[0], grad)
    expected = torch.stack(
        [torch.einsum("bhqk,bqhd->bkhd", pattern[r if batched_pattern else 0], grad[r]) for r in range(rows)]
    )
    assert torch.allclose(out, expected, atol=1e-6)


def test_the_read_out_layout_equals_one_dot_per_node():
    """``node_dots`` (padded bmm, crowded positions apart, the error in the last slot) against a
    dot product per node, on random layouts: empty positions, a crowded BOS, every horizon."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        n_pos, d = int(torch.randint(1, 12, (1,), generator=gen)), 5
        counts = torch.randint(0, 4, (n_pos,), generator=gen) * (torch.rand(n_pos, generator=gen) < 0.5)
        if trial % 3 == 0:
            counts[0] = 15  # a BOS with many more features than the rest
        positions = torch.repeat_interleave(torch.arange(n_pos), counts)
        site = replacement.SiteValues.__new__(replacement.SiteValues)  # only what node_dots reads
        site.positions, site._padded = positions, None
        site.decoded = torch.randn(positions.numel(), d, generator=gen)
        site.error = torch.randn(n_pos, d, generator=gen)
        for horizon in range(1, n_pos + 1):
            grad = torch.randn(3, horizon, d, generator=gen)
            features, errors = site.node_dots(grad)
            before = int((positions < horizon).sum())
            expected = torch.zeros(3, before)
            for k in range(before):
                expected[:, k] = grad[:, positions[k]] @ site.decoded[k]
            assert torch.allclose(features, expected, atol=1e-5)
            assert torch.allclose(errors, (grad * site.error[:horizon]).sum(-1), atol=1e-5)
