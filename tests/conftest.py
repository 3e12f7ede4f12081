"""Shared fixtures: a tiny GPT-2 with a real (BPE) tokenizer, saved in the Hugging Face layout,
loadable as a HookedTransformer or a TransformerBridge; and random SAEs that actually fire."""

from __future__ import annotations

import sysconfig
import warnings
from pathlib import Path

import pytest
import torch

import sae_circuits as sc
from sae_circuits.splice import saes_of

warnings.filterwarnings("ignore", category=DeprecationWarning)
D_MODEL = 64
N_LAYERS = 2


def _train_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(f) for f in files], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    fast.save_pretrained(str(folder))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    _train_tokenizer(folder)
    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab, n_positions=128, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture
def hooked(tiny_model_dir: Path):
    from sae_circuits.zoo.loader import load_hf_gpt2

    model = load_hf_gpt2(tiny_model_dir, "hooked")
    yield model
    _assert_clean(model)


@pytest.fixture
def bridge(tiny_model_dir: Path):
    from sae_circuits.zoo.loader import load_hf_gpt2

    model = load_hf_gpt2(tiny_model_dir, "bridge")
    yield model
    _assert_clean(model)


def _assert_clean(model) -> None:
    """Every test must leave its model as it found it (no SAE, no patched methods)."""
    leftovers = [name for name in ("forward", "generate") if name in model.__dict__]
    assert not saes_of(model) and not leftovers, f"test left the model dirty: {saes_of(model)} {leftovers}"


@pytest.fixture
def tokens(hooked) -> torch.Tensor:
    text = ["def parse(self, text):\n    return text.split()", "import os\nfor name in os.listdir(path):"]
    toks = hooked.to_tokens(text, prepend_bos=False, padding_side="right")
    return toks[:, :12]


def random_sae(
    architecture: str = "standard",
    hook_name: str = "blocks.0.hook_resid_post",
    d_in: int = D_MODEL,
    d_sae: int = 256,
    seed: int = 0,
    **kwargs,
) -> sc.SAE:
    """An SAE with random weights scaled so that a few percent of features fire."""
    is_transcoder = "transcoder" in architecture
    cfg = sc.SAEConfig(
        architecture,  # type: ignore[arg-type]
        d_in=d_in,
        d_sae=d_sae,
        hook_name=hook_name,
        apply_b_dec_to_input=not is_transcoder,
        **kwargs,
    )
    sae = sc.SAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * (0.3 if name.startswith("W") else 0.1))
        if hasattr(sae, "b_enc"):
            sae.b_enc.sub_(0.5)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(d_sae, generator=gen) * 0.3)
        if hasattr(sae, "b_gate"):
            sae.b_gate.sub_(0.5)
    return sae


@pytest.fixture
def sae() -> sc.SAE:
    return random_sae()
