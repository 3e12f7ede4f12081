"""Shared fixtures: a tiny GPT-2 with a real (BPE) tokenizer, saved in the Hugging Face layout,
loadable as a HookedTransformer or a TransformerBridge; and random SAEs that actually fire."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

# The switch: jaxtyping shape annotations are checked at run time in the whole suite (a wrong shape
# fails the test) unless SAE_CIRCUITS_SHAPE_CHECKS=0. The hook must be in place before sae_circuits
# is first imported; tests/shape_check.py says what is checked.
SHAPE_CHECKS = os.environ.get("SAE_CIRCUITS_SHAPE_CHECKS", "1") != "0"
if SHAPE_CHECKS:
    if "sae_circuits" in sys.modules:
        raise RuntimeError(
            "sae_circuits was imported before tests/conftest.py could install the shape checks"
        )
    from jaxtyping import install_import_hook

    import tests.shape_check  # noqa: F401  (the hook looks the checker up as an attribute of the tests package)

    install_import_hook("sae_circuits", "tests.shape_check.check_shapes")

import sae_circuits as sc
from sae_circuits.recipes.random_model import random_gpt2
from sae_circuits.splice import saes_of
from sae_circuits.zoo.loader import has_hooked_transformer, load_tokenizer, transformer_lens_version

warnings.filterwarnings("ignore", category=DeprecationWarning)
D_MODEL = 64
N_LAYERS = 2


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    random_gpt2(folder, d_model=D_MODEL, n_layers=N_LAYERS, n_heads=4, n_ctx=128)
    return folder


# TransformerLens 4 removed HookedTransformer: tests that need one (or compare it with the bridge) skip.
NO_HOOKED = (
    None
    if has_hooked_transformer()
    else f"HookedTransformer was removed in TransformerLens 4.0 (installed: {transformer_lens_version()})"
)


@pytest.fixture
def hooked(tiny_model_dir: Path):
    from sae_circuits.zoo.loader import load_hf_gpt2

    if NO_HOOKED:
        pytest.skip(NO_HOOKED)
    model = load_hf_gpt2(tiny_model_dir, "hooked")
    yield model
    _assert_clean(model)


@pytest.fixture
def bridge(tiny_model_dir: Path):
    from sae_circuits.zoo.loader import load_hf_gpt2

    model = load_hf_gpt2(tiny_model_dir, "bridge")
    yield model
    _assert_clean(model)


@pytest.fixture
def model(tiny_model_dir: Path):
    """The default kind, for tests of what every model kind does: a HookedTransformer on
    TransformerLens 3.x, a TransformerBridge on 4.x (``sae_circuits.zoo.loader.default_kind``)."""
    from sae_circuits.zoo.loader import load_hf_gpt2

    model = load_hf_gpt2(tiny_model_dir)
    yield model
    _assert_clean(model)


def _assert_clean(model) -> None:
    """Every test must leave its model as it found it (no SAE, no patched methods)."""
    leftovers = [name for name in ("forward", "generate") if name in model.__dict__]
    assert not saes_of(model) and not leftovers, f"test left the model dirty: {saes_of(model)} {leftovers}"


@pytest.fixture
def tokens(tiny_model_dir: Path) -> torch.Tensor:
    """Two rows of 12 tokens (no BOS), from the tokenizer alone so that no model kind is needed."""
    text = ["def parse(self, text):\n    return text.split()", "import os\nfor name in os.listdir(path):"]
    tokenizer = load_tokenizer(tiny_model_dir)
    return torch.tensor([tokenizer(t)["input_ids"][:12] for t in text])


@pytest.fixture
def train_tokens(model):
    """200 rows of 32 tokens of real Python (three standard-library modules): SAE training data."""
    text = "".join(open(__import__(m).__file__).read() for m in ("os", "json", "textwrap"))
    ids = model.tokenizer(text)["input_ids"]
    n = len(ids) // 32 * 32
    return torch.tensor(ids[:n]).view(-1, 32)[:200]


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
    if is_transcoder and "hook_name_out" not in kwargs:  # the MLP's output, for an MLP-input hook
        kwargs["hook_name_out"] = hook_name.replace("ln2.hook_normalized", "hook_mlp_out")
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


@pytest.fixture
def full_disk(monkeypatch):
    """Call it to make ``Path.write_text`` write part of its text and then fail, as a full disk does."""
    original = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        original(self, text[:10], *args, **kwargs)
        raise OSError("No space left on device (disk full)")

    return lambda: monkeypatch.setattr(Path, "write_text", half_then_fail)
