"""The architecture registry, and ``relu_decnorm`` (added as one file) through every path: encode and
decode, splicing, save/load, training and attribution."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import sae_circuits as sc
from sae_circuits import architectures
from sae_circuits.architectures import base
from sae_circuits.architectures.relu import ReLU
from sae_circuits.graph.influence import NodeKind
from sae_circuits.train import TrainConfig
from tests.conftest import random_sae
from tests.test_attribution import PROMPT, FrozenReference, _check_top_edges, _double_copies

SITE = "blocks.0.hook_resid_post"
TEXT = "def foo(x):\n    return [x + 1 for x in range(10)]\n"


# --------------------------------------------------------------------------- registry


def test_registry_lookups():
    assert {"relu", "topk", "jumprelu", "gated", "batchtopk", "relu_decnorm"} <= set(architectures.names())
    assert architectures.get("topk").name == "topk"
    assert architectures.lookup("standard") == (architectures.get("relu"), "sae")
    assert architectures.lookup("jumprelu_skip_transcoder") == (
        architectures.get("jumprelu"),
        "skip_transcoder",
    )
    assert architectures.lookup("relu_decnorm_transcoder") == (
        architectures.get("relu_decnorm"),
        "transcoder",
    )
    assert "batchtopk" not in architectures.saved_names()  # a training recipe, saved as jumprelu
    assert set(sc.sae.ARCHITECTURES) == set(architectures.saved_names())
    cfg = sc.SAEConfig("relu_decnorm_transcoder", d_in=8, d_sae=16, hook_name="blocks.0.ln2.hook_normalized",
                       apply_b_dec_to_input=False, hook_name_out="blocks.0.hook_mlp_out")  # fmt: skip
    assert cfg.is_transcoder and not cfg.has_skip and cfg.activation == "relu_decnorm"


def test_registry_errors_name_the_value_and_the_known_names():
    with pytest.raises(ValueError, match=r"unknown architecture 'swish'; known: \[.*'relu'.*'topk'"):
        architectures.get("swish")
    with pytest.raises(
        ValueError, match=r"architecture='swish' is not supported; expected one of .*standard"
    ):
        sc.SAEConfig("swish", d_in=8, d_sae=16, hook_name=SITE)
    with pytest.raises(ValueError, match=r"architecture='gelu'; expected one of \[.*'relu_decnorm'"):
        TrainConfig(architecture="gelu")
    with pytest.raises(ValueError, match="'gated' has no transcoder form"):
        architectures.get("gated").saved_architecture(transcoder=True)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test disappear after it."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_ON_DISK", dict(base._ON_DISK))


def test_a_registered_architecture_is_usable_everywhere(scratch_registry, tmp_path):
    @architectures.register
    class Doubled(ReLU):
        name = "test_doubled"
        saelens_names = None
        activation_fn_str = None

        def activate(self, sae, h, gate):
            return 2 * h.relu()

    sae = random_sae("test_doubled_transcoder", hook_name="blocks.0.ln2.hook_normalized",
                     hook_name_out="blocks.0.hook_mlp_out")  # fmt: skip
    x = torch.randn(3, 64)
    assert torch.equal(sae.encode(x), 2 * sae.pre_activations(x).relu())
    sae.save(tmp_path)
    assert torch.equal(sc.SAE.load(tmp_path)(x), sae(x))
    with pytest.raises(ValueError, match="'relu_decnorm' already belongs to architecture 'relu_decnorm'"):

        @architectures.register
        class Clash(ReLU):
            name = "test_clash"
            saelens_names = {"relu_decnorm": "sae"}  # noqa: RUF012


# --------------------------------------------------------------------------- relu_decnorm


def _twins(sae: sc.SAE, seed: int = 0) -> tuple[sc.SAE, sc.SAE]:
    """A ReLU dictionary and a ``relu_decnorm`` one with the same weights (``sae``'s encoder and
    biases, its decoder rows scaled to norms between 0.5 and 2.5)."""
    gen = torch.Generator().manual_seed(seed)
    kind = sae.cfg.kind
    names = {"sae": ("standard", "relu_decnorm"), "transcoder": ("transcoder", "relu_decnorm_transcoder")}[
        kind
    ]
    out = []
    for name in names:
        twin = sc.SAE(replace(sae.cfg, architecture=name))
        with torch.no_grad():
            twin.W_enc.copy_(sae.W_enc)
            twin.b_enc.copy_(sae.b_enc - getattr(sae, "threshold", 0.0))  # as sparse as the original
            twin.W_dec.copy_(sae.W_dec)
            twin.b_dec.copy_(sae.b_dec)
        out.append(twin)
    scale = 0.5 + 2 * torch.rand(sae.cfg.d_sae, 1, generator=gen)
    with torch.no_grad():
        for twin in out:
            twin.W_dec.mul_(scale)
    return out[0], out[1]


def test_relu_decnorm_reconstructs_as_relu_with_features_in_output_norm_units():
    relu, decnorm = _twins(random_sae("standard"))
    x = torch.randn(4, 7, 64)
    norms = relu.W_dec.norm(dim=-1)
    assert (norms - 1).abs().max() > 0.3  # the rescaling is not the identity here
    torch.testing.assert_close(decnorm(x), relu(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decnorm.encode(x), relu.encode(x) * norms, rtol=1e-6, atol=1e-6)
    assert torch.equal(decnorm.pre_activations(x), relu.pre_activations(x))
    f = decnorm.encode(x)  # each feature's activation is the norm of what it writes
    i = int(f[0, 0].argmax())
    written = decnorm.decode_delta(f, torch.tensor([i]))[0, 0]
    torch.testing.assert_close(written.norm(), f[0, 0, i])


@pytest.mark.parametrize("architecture", ["relu_decnorm", "topk_rescaled"])
def test_a_zero_decoder_row_is_a_dead_feature_not_a_nan(architecture):
    """Released SAEs zero the decoder rows of dead features; dividing by their norm made every
    output NaN (relu_decnorm always, TopK when it rescales by the decoder norm)."""
    if architecture == "relu_decnorm":
        _, sae = _twins(random_sae("standard"))
    else:
        sae = random_sae("topk", k=8, rescale_acts_by_decoder_norm=True)
    with torch.no_grad():
        sae.W_dec[3] = 0
    x = torch.randn(4, 7, 64)
    out, f = sae(x), sae.encode(x)
    assert torch.isfinite(out).all() and torch.isfinite(f).all() and not f[..., 3].any()
    rows = sae.cfg.arch.decoder_rows(sae, torch.tensor([3, 4]))
    assert torch.isfinite(rows).all() and not rows[0].any()
    with torch.no_grad():
        sae.W_dec[3] = 1e-3  # a live row: the result is the same as computed without the clamp
    torch.testing.assert_close(sae.cfg.arch.decode_linear(sae, f), (f / sae.W_dec.norm(dim=-1)) @ sae.W_dec)


@pytest.fixture(scope="module")
def tiny():
    model, saes = sc.zoo.load("tiny")
    return model, saes


def test_relu_decnorm_splices_as_an_exact_no_op_and_edits_like_relu(tiny):
    model, saes = tiny
    relu, decnorm = _twins(saes[1])
    tokens = model.to_tokens(TEXT)
    with torch.no_grad():
        clean = model(tokens)
        with sc.spliced(model, [decnorm]):
            assert torch.equal(model(tokens), clean)  # error term: bitwise the model's own output
            _, cache = model.run_with_cache(tokens)
        f = cache[f"{decnorm.cfg.site}.hook_sae_acts_post"]
        assert (f > 0).any()
        feature = int(f[0].sum(0).argmax())

        def ablate(acts, hook):
            acts[..., feature] = 0.0
            return acts

        edited = {}
        for sae in (relu, decnorm):
            with sc.spliced(model, [sae]):
                edited[sae.cfg.architecture] = model.run_with_hooks(
                    tokens, fwd_hooks=[(f"{sae.cfg.site}.hook_sae_acts_post", ablate)]
                )
    assert not torch.equal(edited["relu_decnorm"], clean)
    torch.testing.assert_close(edited["relu_decnorm"], edited["standard"], rtol=1e-4, atol=1e-4)


def test_relu_decnorm_saves_and_loads(tmp_path):
    _, decnorm = _twins(random_sae("standard"))
    decnorm.save(tmp_path)
    assert '"architecture": "relu_decnorm"' in (tmp_path / "cfg.json").read_text()
    back = sc.SAE.load(tmp_path)
    assert replace(back.cfg, metadata={}) == decnorm.cfg  # the writer records the layout version
    for name, tensor in decnorm.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    x = torch.randn(5, 64)
    assert torch.equal(back.encode(x), decnorm.encode(x))


def test_relu_decnorm_trains_as_relu(model):
    text = "".join(open(__import__(m).__file__).read() for m in ("os", "json"))
    ids = model.tokenizer(text)["input_ids"]
    tokens = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)[:64]
    config = dict(expansion_factor=2, batch_size=128, total_tokens=128 * 8, buffer_tokens=512,
                  model_batch_size=8, progress=False, warmup_steps=2, geometric_median_samples=128)  # fmt: skip
    decnorm = sc.train_sae(model, SITE, tokens, TrainConfig(architecture="relu_decnorm", **config))
    relu = sc.train_sae(model, SITE, tokens, TrainConfig(architecture="relu", **config))
    assert decnorm.cfg.architecture == "relu_decnorm" and relu.cfg.architecture == "standard"
    # training keeps decoder rows at unit norm, where the two are the same SAE
    for name, tensor in relu.state_dict().items():
        assert torch.equal(decnorm.state_dict()[name], tensor), name
    x = torch.randn(6, 64)
    torch.testing.assert_close(decnorm(x), relu(x))


class _DecNormReference(FrozenReference):
    """The frozen reference model of tests/test_attribution.py, for dictionaries whose features
    decode through unit rows (``f_i * W_dec_i / ||W_dec_i||``)."""

    def decoded(self, site, position, index):
        sae = self.saes[site]
        return self.acts[site][0, position, index] * sae.W_dec[index] / sae.W_dec[index].norm()

    def error(self, site, position):
        sae = self.saes[site]
        return self.outputs[site][0, position].flatten() - sae.decode_normalized(self.acts[site][0, position])


def test_relu_decnorm_attribution_edges_equal_interventions():
    model = sc.zoo.load_model("tiny")
    transcoders = [_twins(tc, seed=i)[1] for i, tc in enumerate(sc.zoo.load_saes("tiny", kind="transcoder"))]
    with sc.spliced(model, transcoders):
        graph = sc.attribute(model, PROMPT, prepend_bos=False, progress=False)
    features = graph.nodes_of(NodeKind.FEATURE)
    assert len(features) > 0
    reference_model = sc.zoo.load_model("tiny")
    reference_model.cfg.dtype = torch.float64  # TransformerLens casts LayerNorm outputs to cfg.dtype
    ref = _DecNormReference(
        reference_model.double(), _double_copies(transcoders), torch.tensor([graph.tokens])
    )
    ref.clean = ref.run()
    deep = features[graph.layer[features] >= 2][:: max(1, len(features) // 4)][:2].tolist()
    assert _check_top_edges(graph, ref, graph.nodes_of(NodeKind.TARGET)[:1].tolist() + deep) >= 8


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"architecture": "standard", "hook_name_out": "blocks.3.hook_resid_post"},
            "reconstructs the hook it reads",
        ),
        ({"architecture": "transcoder", "apply_b_dec_to_input": False}, "a transcoder needs hook_name_out"),
        ({"d_out": True}, r"d_out=True must be a positive integer"),
        ({"apply_b_dec_to_input": "false"}, r"apply_b_dec_to_input='false' must be True or False"),
    ],
)
def test_configs_that_would_splice_or_encode_wrongly_are_refused(changes, message):
    """A plain SAE naming another output hook would be spliced where it does not read (and lose
    the name on a round trip); a transcoder without one would be spliced at its input."""
    base = {"architecture": "standard", "d_in": 8, "d_sae": 16, "hook_name": "blocks.0.hook_resid_post"}
    with pytest.raises(ValueError, match=message):
        sc.SAEConfig(**{**base, **changes})
