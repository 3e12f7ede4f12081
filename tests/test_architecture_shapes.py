"""Other models' shapes: random HookedTransformers built from a config (no download) with RMSNorm,
rotary positions (full, partial, adjacent pairs), gated MLPs, grouped- and multi-query attention,
and parallel attention + MLP. Attribution edges equal interventions in the independent frozen
reference of ``test_attribution``; cached and uncached steered generation agree; automata extract
and check on a model without a tokenizer. Hugging Face Llama and GPT-NeoX folders load as a
TransformerBridge (``load_hf_model``) and pass the same checks."""

from __future__ import annotations

import pytest
import torch

import sae_circuits as sc
from sae_circuits.graph.influence import NodeKind
from tests.conftest import NO_HOOKED, random_sae
from tests.test_attribution import _check_top_edges, _reference

needs_hooked = pytest.mark.skipif(bool(NO_HOOKED), reason=str(NO_HOOKED))

D = 64
SHAPES = {
    "llama": dict(normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True, act_fn="silu",
                  n_key_value_heads=2, final_rms=True),
    "neox": dict(normalization_type="LN", positional_embedding_type="rotary", parallel_attn_mlp=True,
                 act_fn="gelu", rotary_dim=8),
    "gptj": dict(normalization_type="LN", positional_embedding_type="rotary", parallel_attn_mlp=True,
                 act_fn="gelu_new", rotary_dim=8, rotary_adjacent_pairs=True),
    "multi-query": dict(normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True,
                        act_fn="gelu_pytorch_tanh", n_key_value_heads=1),
}  # fmt: skip


def _model(shape: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=D, d_head=16, n_heads=4, d_mlp=128, d_vocab=300, n_ctx=64, seed=0, **SHAPES[shape]
    )
    return HookedTransformer(cfg)


def _transcoders():
    """Random transcoders over both MLPs of a 2-layer model (every MLP covered: exact edges)."""
    out = []
    for layer in (0, 1):
        tc = random_sae("transcoder", hook_name=f"blocks.{layer}.ln2.hook_normalized", d_in=D, d_out=D,
                        d_sae=96, seed=layer)  # fmt: skip
        tc.cfg.hook_name_out = f"blocks.{layer}.hook_mlp_out"
        out.append(tc)
    return out


def _tokens(rows: int, length: int, seed: int = 0):
    return torch.randint(1, 300, (rows, length), generator=torch.Generator().manual_seed(seed))


@needs_hooked
@pytest.mark.parametrize("shape", list(SHAPES))
def test_edges_equal_interventions_on_other_architectures(shape):
    """Transcoders at both MLPs and a hook_z SAE: every checked edge (features, errors, tokens,
    into features and logits) equals the change of its target when its source is removed."""
    saes = _transcoders()
    saes.append(random_sae(hook_name="blocks.0.attn.hook_z", d_in=D, reshape_activations="hook_z", seed=5))
    model = _model(shape)
    with sc.spliced(model, saes):
        g = sc.attribute(model, _tokens(1, 12), prepend_bos=False, progress=False, batch_size=16)
    assert not g.first_order_edges().any()
    assert g.token_strings[0] == str(int(g.tokens[0]))  # no tokenizer: the id is the label
    ref = _reference(_model(shape), saes, g)
    features = g.nodes_of(NodeKind.FEATURE)
    late = features[g.stage[features] >= g.stage[features].max() - 1][:2].tolist()
    assert _check_top_edges(g, ref, g.nodes_of(NodeKind.TARGET)[:2].tolist() + late) >= 12


@needs_hooked
@torch.no_grad()
@pytest.mark.parametrize("shape", list(SHAPES))
def test_cached_and_uncached_steered_generation_agree_on_other_architectures(shape):
    model = _model(shape)
    sae = random_sae(hook_name="blocks.0.hook_resid_post", d_in=D, seed=3)

    def generate(cache: bool):
        out = model.generate(
            _tokens(1, 6, seed=1), max_new_tokens=8, do_sample=False, use_past_kv_cache=cache, verbose=False,
            stop_at_eos=False, return_type="tokens", output_logits=True,
        )  # fmt: skip
        return out.sequences, torch.stack(out.logits, dim=1)

    with sc.spliced(model, [sae]):
        plain = generate(True)
        with sc.intervene(model, [sc.clamp("blocks.0.hook_resid_post", 11, 8.0, positions="generated")]):
            cached, uncached = generate(True), generate(False)
    assert torch.equal(cached[0], uncached[0])
    assert torch.allclose(cached[1], uncached[1], atol=1e-4)
    assert not torch.allclose(cached[1], plain[1], atol=1e-2)  # the clamp did something


@needs_hooked
def test_an_automaton_and_a_dashboard_on_a_model_without_a_tokenizer():
    """Labels and transition tokens fall back to token ids (they had needed ``model.to_string``)."""
    model = _model("llama")
    saes = [
        random_sae(hook_name=f"blocks.{layer}.hook_resid_post", d_in=D, d_sae=64, seed=layer)
        for layer in (0, 1)
    ]
    with sc.spliced(model, saes):
        fsa = sc.automaton(model, _tokens(24, 32), max_states=16, progress=False, prepend_bos=False)
        checks = sc.check_pairs(fsa, model, [(fsa.states[0].id, fsa.states[1].id)], n_prompts=4, context=8,
                                samples=2, progress=False)  # fmt: skip
        page = sc.feature_dashboard(
            model, "blocks.0.hook_resid_post", 3, list(_tokens(8, 16)), progress=False
        )
    assert len(fsa.states) == 16 and len(checks) == 1
    assert "<html" in page.lower()  # its tokens and logit effects are ids (it had failed in to_string)
    assert all(label.strip("' ").isdigit() for label in fsa.states[0].label.split())
    assert any(t.tokens for t in fsa.transitions)
    assert all(token.isdigit() for t in fsa.transitions for token in t.tokens)


def _hf_folder(tmp_path, architecture: str):
    """A random 2-layer Hugging Face model of ``architecture`` saved with the embedded tokenizer."""
    import shutil

    import transformers

    sizes = dict(vocab_size=4096, hidden_size=D, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=128)  # fmt: skip
    if architecture == "llama":
        config = transformers.LlamaConfig(num_key_value_heads=2, **sizes)
        model_class = transformers.LlamaForCausalLM
    else:
        config = transformers.GPTNeoXConfig(**sizes)
        model_class = transformers.GPTNeoXForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_class(config).eval()
    folder = tmp_path / architecture
    model.save_pretrained(folder)
    for file in sc.zoo.model_path("tiny").iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(file, folder)
    return folder, model


@pytest.mark.parametrize("architecture", ["llama", "gpt_neox"])
def test_hugging_face_folders_of_other_architectures_load_as_a_bridge_and_stay_exact(tmp_path, architecture):
    from sae_circuits.zoo.loader import load_hf_gpt2, load_hf_model

    folder, hf_model = _hf_folder(tmp_path, architecture)
    model = load_hf_model(folder)
    assert type(model).__name__ == "TransformerBridge"
    ids = _tokens(1, 10)
    with torch.no_grad():
        assert torch.allclose(model(ids), hf_model(ids).logits, atol=1e-5)
    with pytest.raises(
        ValueError, match=f"holds a '{architecture}' model: kind='hooked' loads GPT-2 folders only"
    ):
        load_hf_model(folder, "hooked")
    with pytest.raises(
        ValueError, match=f"holds a '{architecture}' model, not GPT-2: load it with .*load_hf_model"
    ):
        load_hf_gpt2(folder)  # had failed deep inside the bridge with an AttributeError
    transcoders = _transcoders()
    with sc.spliced(model, transcoders):
        g = sc.attribute(model, ids[0], prepend_bos=False, progress=False, batch_size=16)
    ref = _reference(load_hf_model(folder), transcoders, g)
    features = g.nodes_of(NodeKind.FEATURE)
    late = features[g.stage[features] >= g.stage[features].max() - 1][:2].tolist()
    assert _check_top_edges(g, ref, g.nodes_of(NodeKind.TARGET)[:2].tolist() + late) >= 12

    sae = random_sae(hook_name="blocks.0.hook_resid_post", d_in=D, seed=3)
    with torch.no_grad(), sc.spliced(model, [sae]):
        kwargs = dict(max_new_tokens=8, do_sample=False, verbose=False, stop_at_eos=False, return_type="tokens",
                      output_logits=True)  # fmt: skip
        plain = torch.stack(model.generate(ids[:, :6], **kwargs).logits, dim=1)
        with sc.intervene(model, [sc.clamp("blocks.0.hook_resid_post", 11, 8.0, positions="generated")]):
            cached = model.generate(ids[:, :6], use_past_kv_cache=True, **kwargs)
            uncached = model.generate(ids[:, :6], use_past_kv_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    cached_logits = torch.stack(cached.logits, dim=1)
    assert torch.allclose(cached_logits, torch.stack(uncached.logits, dim=1), atol=1e-4)
    assert not torch.allclose(cached_logits, plain, atol=1e-2)


def test_a_folder_given_to_the_embedded_loader_points_to_load_hf_model(tmp_path):
    folder, _ = _hf_folder(tmp_path, "llama")
    with pytest.raises(
        ValueError, match=r"installed: \['tiny'\]; for a Hugging Face model folder use sc.zoo.load_hf_model"
    ):
        sc.zoo.load(str(folder))
    assert sc.zoo.load_hf_model.__module__ == "sae_circuits.zoo.loader"


def test_a_folder_of_pickled_weights_is_refused_before_loading(tmp_path):
    """Safetensors only: a ``pytorch_model.bin`` folder had loaded (through pickle) without a word."""
    from safetensors.torch import load_file

    from sae_circuits.zoo.loader import load_hf_gpt2, load_hf_model

    folder, _ = _hf_folder(tmp_path, "llama")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    for load in (load_hf_model, load_hf_gpt2):
        with pytest.raises(
            ValueError, match=r"holds no .safetensors weights: sae_circuits loads safetensors only"
        ):
            load(folder)
