"""SAELens-format I/O: round trips, pre-6.0 configs, and clear errors for every kind of bad file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import sae_circuits as sc
from sae_circuits.io import config_from_dict, config_to_dict
from tests.conftest import random_sae


@pytest.mark.parametrize(
    "architecture", ["standard", "topk", "jumprelu", "gated", "transcoder", "skip_transcoder"]
)
def test_round_trip_is_exact(tmp_path, architecture):
    kwargs = {"k": 8} if architecture == "topk" else {}
    sae = random_sae(architecture, **kwargs)
    if sae.cfg.is_transcoder:
        sae.cfg.hook_name_out = "blocks.0.hook_mlp_out"
    sae.save(tmp_path)
    back = sc.SAE.load(tmp_path)
    assert back.cfg == replace(sae.cfg, metadata={"sae_lens_version": "6.0.0"})  # the layout marker
    for name, tensor in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]


def test_load_with_dtype_and_device(tmp_path, sae):
    sae.save(tmp_path)
    back = sc.SAE.load(tmp_path, device="cpu", dtype="float64")
    assert back.W_enc.dtype == torch.float64 and back.cfg.dtype == "float64"


def test_pre_6_flat_config_loads(tmp_path, sae):
    sae.save(tmp_path)
    flat = {
        "d_in": 64, "d_sae": 256, "hook_point": "blocks.0.hook_resid_post", "hook_point_layer": 0,
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}, "normalize_activations": False,
        "model_name": "tiny", "dtype": "float32", "device": "cpu", "context_size": 128,
    }  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(flat))
    back = sc.SAE.load(tmp_path)
    assert back.cfg.architecture == "topk" and back.cfg.k == 5
    assert back.cfg.hook_name == "blocks.0.hook_resid_post"
    assert back.cfg.apply_b_dec_to_input is True and back.cfg.normalize_activations == "none"
    assert back.cfg.metadata["model_name"] == "tiny" and back.cfg.metadata["context_size"] == 128


def _corrupt(folder: Path, cfg=None, tensors=None) -> None:
    if cfg is not None:
        (folder / "cfg.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    if tensors is not None:
        save_file(tensors, str(folder / "sae_weights.safetensors"))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda cfg, w: _corrupt_text(cfg), r"malformed JSON"),
        (lambda cfg, w: cfg.pop("d_sae"), r"missing required key 'd_sae'"),
        (lambda cfg, w: cfg["metadata"].pop("hook_name") and None, r"missing required key 'hook_name'"),
        (lambda cfg, w: cfg.update(d_in="64"), r"d_in='64' must be an integer"),
        (lambda cfg, w: cfg.update(architecture="mystery"), r"architecture='mystery' is not supported"),
        (lambda cfg, w: cfg.update(normalize_activations="sometimes"), r"normalize_activations='sometimes'"),
        (lambda cfg, w: w.pop("b_enc"), r"missing tensors \['b_enc'\]"),
        (
            lambda cfg, w: w.update(W_enc=torch.zeros(64, 128)),
            r"'W_enc' has shape \[64, 128\], expected \[64, 256\]",
        ),
        (lambda cfg, w: w["b_dec"].__setitem__(3, float("nan")), r"'b_dec' contains NaN or Inf"),
        (lambda cfg, w: w.update(extra=torch.zeros(2)), r"unexpected tensors \['extra'\]"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, sae, mutate, message):
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    weights = {k: v.clone() for k, v in sae.state_dict().items()}
    result = mutate(cfg, weights)
    _corrupt(tmp_path, cfg=result if isinstance(result, str) else cfg, tensors=weights)
    with pytest.raises(sc.SAEFormatError, match=message):
        sc.SAE.load(tmp_path)


def _corrupt_text(cfg: dict) -> str:
    return json.dumps(cfg)[:-20]  # truncated mid-object


def test_truncated_weights_and_missing_files(tmp_path, sae):
    sae.save(tmp_path)
    weights = tmp_path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(sc.SAEFormatError, match="not a readable safetensors file"):
        sc.SAE.load(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="has no sae_weights.safetensors"):
        sc.SAE.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sc.SAE.load(tmp_path / "nope")


def test_failed_save_leaves_previous_files_intact(tmp_path, sae, monkeypatch):
    sae.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = random_sae(seed=5)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("sae_circuits.io.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        other.save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files, no half-write


def test_saving_nan_weights_is_refused(tmp_path, sae):
    with torch.no_grad():
        sae.W_dec[0, 0] = float("inf")
    with pytest.raises(sc.SAEFormatError, match="'W_dec' contains NaN or Inf"):
        sae.save(tmp_path)
    assert not any(tmp_path.iterdir())


VALID = config_to_dict(random_sae("topk", k=8).cfg)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    drop=st.sets(st.sampled_from(sorted(VALID)), max_size=3),
    changes=st.dictionaries(st.sampled_from(sorted(VALID) + ["metadata"]), json_values, max_size=3),
    meta_changes=st.dictionaries(
        st.sampled_from(["hook_name", "hook_name_out", "sae_lens_version"]), json_values, max_size=2
    ),
)
def test_config_loader_only_raises_format_errors(drop, changes, meta_changes):
    raw = json.loads(json.dumps(VALID))
    for key in drop:
        raw.pop(key, None)
    raw.update(changes)
    if isinstance(raw.get("metadata"), dict):
        raw["metadata"].update(meta_changes)
    try:
        cfg = config_from_dict(raw)
    except sc.SAEFormatError as err:
        assert str(err).startswith("cfg.json: ")
    else:
        assert isinstance(cfg, sc.SAEConfig) and cfg.d_in > 0 and cfg.d_sae > 0
        back = config_from_dict(config_to_dict(cfg))
        unmarked = {k: v for k, v in back.metadata.items() if k != "sae_lens_version"}
        assert replace(back, metadata=unmarked) == replace(
            cfg, metadata={k: v for k, v in cfg.metadata.items() if k != "sae_lens_version"}
        )  # a round trip changes nothing but (at most) adding the 6.x layout marker


def test_saved_files_get_the_usual_permissions(tmp_path, sae):
    import os

    mask = os.umask(0o022)
    try:
        sae.save(tmp_path / "sae")
    finally:
        os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "sae").iterdir()}
    assert set(modes.values()) == {0o644}, modes
