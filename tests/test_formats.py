"""Dictionaries published by others (sae_circuits.formats): each format written here in its own
layout from small synthetic weights, loaded, and compared with a reference forward pass written
from the format's definition; then every kind of bad input gives one clear error naming the file."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import sae_circuits as sc
from sae_circuits import formats
from sae_circuits.formats import pretrained
from sae_circuits.io import SAEFormatError

D_IN, D_SAE, D_OUT = 8, 24, 6
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _x(d: int = D_IN) -> torch.Tensor:
    return _randn(3, 5, d, seed=99)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- circuit-tracer


def _ct_layer(seed: int, *, jump: bool, skip: bool, d_out: int = D_OUT) -> dict[str, torch.Tensor]:
    """One layer in circuit-tracer's layout: W_enc [d_sae, d_in] (transposed), W_dec [d_sae, d_out]."""
    t = {
        "W_enc": _randn(D_SAE, D_IN, seed=seed),
        "W_dec": _randn(D_SAE, d_out, seed=seed + 1),
        "b_enc": _randn(D_SAE, seed=seed + 2) * 0.3,
        "b_dec": _randn(d_out, seed=seed + 3),
    }
    if jump:
        t["activation_function.threshold"] = _randn(D_SAE, seed=seed + 4).abs()
    if skip:
        t["W_skip"] = _randn(d_out, D_IN, seed=seed + 5)
    return t


def _ct_reference(t: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """circuit-tracer's definition: F.linear(x, W_enc, b_enc), ReLU or h*[h>t], f W_dec + b_dec + x W_skip^T."""
    h = x @ t["W_enc"].T + t["b_enc"]
    thr = t.get("activation_function.threshold")
    f = h.relu() if thr is None else h * (h > thr)
    y = f @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        y = y + x @ t["W_skip"].T
    return f, y


CT_CONFIG = """# a circuit-tracer transcoder set
model_name: "toy-model"
model_kind: transcoder_set
feature_input_hook: "ln2.hook_normalized"
feature_output_hook: hook_mlp_out
"""


@pytest.mark.parametrize(("jump", "skip"), [(False, False), (True, False), (False, True), (True, True)])
def test_circuit_tracer_set_matches_its_definition(tmp_path, jump, skip):
    layers = [_ct_layer(10 * i, jump=jump, skip=skip) for i in range(3)]
    for i, t in enumerate(layers):
        save_file(t, str(tmp_path / f"layer_{i}.safetensors"))
    (tmp_path / "config.yaml").write_text(CT_CONFIG)
    assert formats.detect(tmp_path) == "circuit_tracer"
    saes = formats.load(tmp_path)
    assert len(saes) == 3
    x = _x()
    for i, (sae, t) in enumerate(zip(saes, layers)):
        arch = ("jumprelu_" if jump else "") + ("skip_transcoder" if skip else "transcoder")
        assert sae.cfg.architecture == arch
        assert sae.cfg.hook_name == f"blocks.{i}.ln2.hook_normalized"
        assert sae.cfg.hook_name_out == f"blocks.{i}.hook_mlp_out"
        assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.d_out, sae.cfg.dtype) == (D_IN, D_SAE, D_OUT, "float32")
        assert sae.cfg.metadata["model_name"] == "toy-model" and sae.cfg.metadata["layer"] == i
        f, y = _ct_reference(t, x)
        _close(sae.encode(x), f)
        _close(sae(x), y)


def test_circuit_tracer_config_activation_is_followed_and_topk_refused(tmp_path):
    """circuit-tracer passes the config's ``activation`` and ``k`` to every layer: a TopK set had
    loaded as ReLU transcoders (outputs 15 off), and ``activation: relu`` over files with a
    threshold as JumpReLU ones."""
    t = _ct_layer(3, jump=True, skip=False)
    save_file(t, str(tmp_path / "layer_0.safetensors"))
    for extra, message in (("activation: topk\nk: 2\n", r"activation='topk', k=2: circuit-tracer's TopK"),
                           ("k: 16\n", r"activation=None, k=16"), ("activation: gelu\n", r"activation='gelu'")):  # fmt: skip
        (tmp_path / "config.yaml").write_text(CT_CONFIG + extra)
        with pytest.raises(SAEFormatError, match=message):
            formats.load(tmp_path)
    (tmp_path / "config.yaml").write_text(CT_CONFIG + "activation: relu\n")
    [sae] = formats.load(tmp_path)
    relu = {k: v for k, v in t.items() if k != "activation_function.threshold"}
    assert sae.cfg.architecture == "transcoder"
    _close(sae(_x()), _ct_reference(relu, _x())[1])
    (tmp_path / "config.yaml").write_text(CT_CONFIG + "activation: jumprelu\n")
    assert formats.load(tmp_path)[0].cfg.architecture == "jumprelu_transcoder"
    save_file(relu, str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(SAEFormatError, match="activation='jumprelu' but the file has no threshold"):
        formats.load(tmp_path)


def test_circuit_tracer_npz_layers_refuse_negative_thresholds_too(tmp_path):
    gs = _gemma_arrays(3, d_out=D_OUT)
    gs["threshold"] = gs["threshold"] - 10.0
    np.savez(tmp_path / "params.npz", **gs)
    (tmp_path / "config.json").write_text(json.dumps({
        "model_kind": "transcoder_set", "feature_input_hook": "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out", "transcoders": ["params.npz"]}))  # fmt: skip
    with pytest.raises(SAEFormatError, match="params.npz: negative JumpReLU thresholds"):
        formats.load(tmp_path, format="circuit_tracer")


def test_circuit_tracer_listed_files_hf_uris_and_npz(tmp_path):
    """``transcoders:`` with a relative path, an hf:// URI from the cache, and a Gemma Scope .npz."""
    cache = tmp_path / "hub"
    snap = _fake_repo(cache, "org/tc-set")
    t0, t1 = _ct_layer(1, jump=True, skip=False), _ct_layer(2, jump=False, skip=False)
    (tmp_path / "set").mkdir()
    save_file(t0, str(tmp_path / "set" / "a.safetensors"))
    (snap / "l1").mkdir()
    save_file(t1, str(snap / "l1" / "b.safetensors"))
    gs = _gemma_arrays(3, d_out=D_OUT)
    np.savez(tmp_path / "set" / "params.npz", **gs)
    (tmp_path / "set" / "config.json").write_text(
        json.dumps(
            {
                "model_kind": "transcoder_set",
                "feature_input_hook": "hook_resid_mid",
                "feature_output_hook": "hook_mlp_out",
                "transcoders": ["a.safetensors", "hf://org/tc-set/l1/b.safetensors", "params.npz"],
            }
        )
    )
    saes = formats.load(tmp_path / "set", format="circuit_tracer", cache_dir=str(cache))
    x = _x()
    for sae, t in zip(saes[:2], (t0, t1)):
        _close(sae(x), _ct_reference(t, x)[1])
    assert saes[2].cfg.architecture == "jumprelu_transcoder"
    assert saes[2].cfg.hook_name_out == "blocks.2.hook_mlp_out"
    _close(saes[2](x), _gemma_reference(gs, x)[1])


def test_circuit_tracer_bf16_keeps_its_dtype_unless_asked(tmp_path):
    t = {k: v.to(torch.bfloat16) for k, v in _ct_layer(0, jump=False, skip=False).items()}
    save_file(t, str(tmp_path / "layer_0.safetensors"))
    (tmp_path / "config.yaml").write_text(CT_CONFIG)
    assert formats.load_one(tmp_path).cfg.dtype == "bfloat16"
    sae = formats.load_one(tmp_path, dtype="float32")
    assert sae.cfg.dtype == "float32" and sae.W_enc.dtype == torch.float32


# --------------------------------------------------------------------------- Gemma Scope


def _gemma_arrays(seed: int, d_out: int = D_IN) -> dict[str, np.ndarray]:
    return {
        "W_enc": _randn(D_IN, D_SAE, seed=seed).numpy(),
        "W_dec": _randn(D_SAE, d_out, seed=seed + 1).numpy(),
        "b_enc": (_randn(D_SAE, seed=seed + 2) * 0.3).numpy(),
        "b_dec": _randn(d_out, seed=seed + 3).numpy(),
        "threshold": _randn(D_SAE, seed=seed + 4).abs().numpy(),
    }


def _gemma_reference(a: dict[str, np.ndarray], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma Scope's JumpReLU: h = x W_enc + b_enc; f = ReLU(h)[h > threshold]; f W_dec + b_dec."""
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    h = x @ t["W_enc"] + t["b_enc"]
    f = h.relu() * (h > t["threshold"])
    return f, f @ t["W_dec"] + t["b_dec"]


def test_gemma_scope_npz_matches_its_definition(tmp_path):
    arrays = _gemma_arrays(5)
    np.savez(tmp_path / "params.npz", **arrays)
    sae = formats.load_one(tmp_path, hook_name="blocks.3.hook_resid_post")
    assert formats.detect(tmp_path) == "gemma_scope"
    assert sae.cfg.architecture == "jumprelu" and not sae.cfg.apply_b_dec_to_input
    assert sae.cfg.hook_name == "blocks.3.hook_resid_post" and sae.cfg.dtype == "float32"
    x = _x()
    f, y = _gemma_reference(arrays, x)
    _close(sae.encode(x), f)
    _close(sae(x), y)


def test_gemma_scope_lowercase_names_and_transcoder(tmp_path):
    arrays = _gemma_arrays(6, d_out=D_OUT)
    lower = {("w_" + k[2:] if k.startswith("W_") else k): v for k, v in arrays.items()}
    np.savez_compressed(tmp_path / "t.npz", **lower)
    sae = formats.load_one(
        tmp_path / "t.npz", hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out"
    )
    assert sae.cfg.architecture == "jumprelu_transcoder" and sae.cfg.d_out == D_OUT
    x = _x()
    _close(sae(x), _gemma_reference(arrays, x)[1])


def test_gemma_scope_object_arrays_are_never_unpickled(tmp_path):
    arrays: dict[str, np.ndarray] = dict(_gemma_arrays(7))
    arrays["threshold"] = np.array([{"evil": 1}], dtype=object)
    np.savez(tmp_path / "params.npz", **arrays)
    with pytest.raises(SAEFormatError, match=r"params\.npz.*not a readable \.npz"):
        formats.load(tmp_path, hook_name="blocks.0.hook_resid_post")


# --------------------------------------------------------------------------- dictionary_learning


def _dl_autoencoder(seed: int) -> dict[str, torch.Tensor]:
    """Their AutoEncoder: nn.Linear encoder [d_sae, d_in] + bias, decoder [d_in, d_sae], no decoder bias."""
    return {
        "encoder.weight": _randn(D_SAE, D_IN, seed=seed),
        "encoder.bias": _randn(D_SAE, seed=seed + 1) * 0.3,
        "decoder.weight": _randn(D_IN, D_SAE, seed=seed + 2),
        "bias": _randn(D_IN, seed=seed + 3),
    }


def test_dictionary_learning_autoencoder_matches_its_definition(tmp_path):
    t = _dl_autoencoder(11)
    save_file(t, str(tmp_path / "ae.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {"lm_name": "toy", "layer": 2}}))
    sae = formats.load_one(tmp_path, hook_name="blocks.2.hook_resid_post")
    assert formats.detect(tmp_path) == "dictionary_learning"
    assert sae.cfg.architecture == "standard" and sae.cfg.apply_b_dec_to_input
    assert sae.cfg.metadata["lm_name"] == "toy"
    x = _x()
    f = torch.relu((x - t["bias"]) @ t["encoder.weight"].T + t["encoder.bias"])  # relu(encoder(x - bias))
    _close(sae.encode(x), f)
    _close(sae(x), f @ t["decoder.weight"].T + t["bias"])  # decoder(f) + bias


def test_dictionary_learning_topk(tmp_path):
    t = _dl_autoencoder(12)
    t["b_dec"] = t.pop("bias")
    t["k"] = torch.tensor(4)
    t["threshold"] = torch.tensor(-1.0)
    save_file(t, str(tmp_path / "ae.safetensors"))
    sae = formats.load_one(tmp_path / "ae.safetensors", hook_name="blocks.0.hook_resid_post")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 4
    x = _x()
    post = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    values, indices = post.topk(4, dim=-1)
    f = torch.zeros_like(post).scatter(-1, indices, values)
    _close(sae.encode(x), f)
    _close(sae(x), f @ t["decoder.weight"].T + t["b_dec"])


def test_dictionary_learning_batch_topk_keeps_its_threshold_inference(tmp_path):
    """Their BatchTopKSAE saves AutoEncoderTopK's keys, but encodes relu(h) above the learned
    threshold (not a per-token top k): loaded as jumprelu, the L0 is the threshold's, not k."""
    t = _dl_autoencoder(13)
    t["b_dec"] = t.pop("bias")
    t["k"], t["threshold"] = torch.tensor(2), torch.tensor(0.4)
    save_file(t, str(tmp_path / "ae.safetensors"))
    trainer = {"trainer_class": "BatchTopKTrainer", "dict_class": "BatchTopKSAE", "k": 2}
    (tmp_path / "config.json").write_text(json.dumps({"trainer": trainer}))
    sae = formats.load_one(tmp_path, hook_name="blocks.0.hook_resid_post")
    assert sae.cfg.architecture == "jumprelu" and sae.cfg.metadata["batch_topk_k"] == 2
    x = _x()
    post = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    f = post * (post > 0.4)  # BatchTopKSAE.encode(x) with use_threshold=True, its default
    assert int((f > 0).sum(-1).max()) > 2  # more than k active: a top-k reading would be wrong
    _close(sae.encode(x), f)
    _close(sae(x), f @ t["decoder.weight"].T + t["b_dec"])
    del t["threshold"]
    save_file(t, str(tmp_path / "ae.safetensors"))
    with pytest.raises(SAEFormatError, match="BatchTopKSAE, whose inference needs its scalar 'threshold'"):
        formats.load(tmp_path, hook_name="blocks.0.hook_resid_post")


def test_dictionary_learning_pickles_are_refused(tmp_path):
    (tmp_path / "ae.pt").write_bytes(b"\x80\x04K\x01.")  # a pickle: never opened
    with pytest.raises(SAEFormatError, match=r"ae\.pt: pickled checkpoints are never loaded"):
        formats.load(tmp_path, hook_name="blocks.0.hook_resid_post")


# --------------------------------------------------------------------------- SAELens releases


def _fake_repo(cache: Path, repo_id: str, commit: str = COMMIT) -> Path:
    """huggingface_hub's cache layout: refs/main -> commit, snapshots/<commit>/..."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _saelens_folder(folder: Path, seed: int) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True)
    t = {
        "W_enc": _randn(D_IN, D_SAE, seed=seed),
        "W_dec": _randn(D_SAE, D_IN, seed=seed + 1),
        "b_enc": _randn(D_SAE, seed=seed + 2),
        "b_dec": _randn(D_IN, seed=seed + 3),
    }
    blobs = folder.parents[2] / "blobs"  # files as symlinks to blobs, as huggingface_hub stores them
    blobs.mkdir(exist_ok=True)
    save_file(t, str(blobs / f"w{seed}"))
    os.symlink(blobs / f"w{seed}", folder / "sae_weights.safetensors")
    cfg = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "metadata": {"hook_name": "blocks.1.hook_resid_pre", "model_name": "toy"},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return t


DIRECTORY = """toy-release:
  config_overrides:
    model_from_pretrained_kwargs:
      center_writing_weights: true
  conversion_func: null
  model: toy
  repo_id: org/toy-saes
  saes:
  - id: blocks.1.hook_resid_pre
    path: blocks.1.hook_resid_pre
    neuronpedia: toy/1-res
toy-gemma:
  conversion_func: gemma_2
  model: gemma-2-2b
  repo_id: google/gemma-scope-2b-pt-res
  saes:
  - id: layer_4/width_16k/average_l0_50
    path: layer_4/width_16k/average_l0_50
toy-other:
  conversion_func: dictionary_learning_1
  model: toy
  repo_id: org/other
  saes:
  - id: a
    path: a
"""


def _standard_reference(t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    f = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    return f @ t["W_dec"] + t["b_dec"]


def test_pretrained_release_from_a_fake_cache(tmp_path):
    cache = tmp_path / "hub"
    t = _saelens_folder(_fake_repo(cache, "org/toy-saes") / "blocks.1.hook_resid_pre", 20)
    (tmp_path / "dir.yaml").write_text(DIRECTORY)
    sae = formats.load_pretrained(
        "toy-release", "blocks.1.hook_resid_pre", cache_dir=cache, directory=tmp_path / "dir.yaml"
    )
    assert sae.cfg.hook_name == "blocks.1.hook_resid_pre"
    assert sae.cfg.metadata["neuronpedia_id"] == "toy/1-res" and sae.cfg.metadata["repo_id"] == "org/toy-saes"
    assert sae.cfg.metadata["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    x = _x()
    _close(sae(x), _standard_reference(t, x))
    # the same, without a release directory (no sae_lens needed), and by commit
    direct = formats.load_pretrained(
        repo_id="org/toy-saes", path="blocks.1.hook_resid_pre", revision=COMMIT, cache_dir=cache
    )
    _close(direct(x), sae(x))


OVERRIDES = """rescaled:
  config_overrides:
    normalize_activations: constant_norm_rescale
    model_from_pretrained_kwargs:
      fold_ln: false
  conversion_func: null
  model: toy
  repo_id: org/toy-saes
  saes:
  - id: blocks.1.hook_resid_pre
    path: blocks.1.hook_resid_pre
scaled:
  conversion_func: null
  model: toy
  repo_id: org/scaled
  saes:
  - id: blocks.1.hook_resid_pre
    path: blocks.1.hook_resid_pre
    norm_scaling_factor: 2.5
"""


def test_pretrained_applies_the_releases_overrides_and_norm_scaling_factor(tmp_path):
    """As SAELens's from_pretrained: a release's config_overrides set the config (not only the
    metadata), and an expected_average_only_in SAE gets the release's norm_scaling_factor folded
    in (W_enc * s, W_dec / s, b_dec / s: the SAE of s x, scaled back)."""
    cache = tmp_path / "hub"
    t = _saelens_folder(_fake_repo(cache, "org/toy-saes") / "blocks.1.hook_resid_pre", 40)
    folder = _fake_repo(cache, "org/scaled") / "blocks.1.hook_resid_pre"
    u = _saelens_folder(folder, 50)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "expected_average_only_in"}))
    (tmp_path / "dir.yaml").write_text(OVERRIDES)
    load = functools.partial(formats.load_pretrained, cache_dir=cache, directory=tmp_path / "dir.yaml")
    rescaled = load("rescaled", "blocks.1.hook_resid_pre")
    assert rescaled.cfg.normalize_activations == "constant_norm_rescale"
    assert rescaled.cfg.metadata["model_from_pretrained_kwargs"] == {"fold_ln": False}
    plain = formats.load_pretrained(repo_id="org/toy-saes", path="blocks.1.hook_resid_pre", cache_dir=cache)
    x = _x() * 7.0
    assert plain.cfg.normalize_activations == "none" and not torch.allclose(rescaled(x), plain(x), atol=1e-3)
    _close(plain(x), _standard_reference(t, x))
    scaled = load("scaled", "blocks.1.hook_resid_pre")
    assert scaled.cfg.normalize_activations == "none"
    assert scaled.cfg.metadata["norm_scaling_factor_folded"] == 2.5
    _close(scaled(x), _standard_reference(u, 2.5 * x) / 2.5)


def test_pretrained_gemma_scope_release_gets_its_hook(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    folder = _fake_repo(cache, "google/gemma-scope-2b-pt-res") / "layer_4/width_16k/average_l0_50"
    folder.mkdir(parents=True)
    arrays = _gemma_arrays(30)
    np.savez(folder / "params.npz", **arrays)
    (tmp_path / "dir.yaml").write_text(DIRECTORY)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # the default cache directory, as huggingface_hub
    sae = formats.load_pretrained(
        "toy-gemma", "layer_4/width_16k/average_l0_50", directory=tmp_path / "dir.yaml"
    )
    assert sae.cfg.hook_name == "blocks.4.hook_resid_post" and sae.cfg.architecture == "jumprelu"
    x = _x()
    _close(sae(x), _gemma_reference(arrays, x)[1])


@pytest.mark.skipif(pretrained.sae_lens_directory_file() is None, reason="sae_lens not installed")
def test_pretrained_reads_sae_lens_own_directory_without_importing_it(tmp_path):
    import sys

    before = "sae_lens" in sys.modules
    repo_id, folder, conversion, _ = pretrained.resolve("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    assert repo_id == "jbloom/GPT2-Small-SAEs-Reformatted" and conversion is None
    assert folder == "blocks.8.hook_resid_pre"
    assert ("sae_lens" in sys.modules) == before
    with pytest.raises(SAEFormatError, match="not in the local Hugging Face cache"):
        formats.load_pretrained("gpt2-small-res-jb", "blocks.8.hook_resid_pre", cache_dir=tmp_path)


def test_release_name_without_sae_lens_says_what_to_do(monkeypatch):
    monkeypatch.setattr(pretrained, "sae_lens_directory_file", lambda: None)
    with pytest.raises(ValueError, match="sae_lens is not installed; pass repo_id= and path="):
        formats.load_pretrained("gpt2-small-res-jb", "blocks.8.hook_resid_pre")


# --------------------------------------------------------------------------- bad input


def test_bad_release_names_and_conversions(tmp_path):
    (tmp_path / "dir.yaml").write_text(DIRECTORY)
    d = tmp_path / "dir.yaml"
    with pytest.raises(ValueError, match="unknown release 'nope'"):
        formats.load_pretrained("nope", "x", directory=d)
    with pytest.raises(ValueError, match="has no sae_id 'x'"):
        formats.load_pretrained("toy-release", "x", directory=d)
    with pytest.raises(SAEFormatError, match="conversion 'dictionary_learning_1' is not read"):
        formats.load_pretrained("toy-other", "a", directory=d, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not a Hugging Face repository id"):
        formats.load_pretrained(repo_id="../etc", path="x", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not a path inside a repository"):
        _fake_repo(tmp_path, "org/r")
        formats.load_pretrained(repo_id="org/r", path="a/../../x", cache_dir=tmp_path)


def test_cache_with_a_missing_file(tmp_path):
    cache = tmp_path / "hub"
    folder = _fake_repo(cache, "org/toy-saes") / "blocks.1.hook_resid_pre"
    _saelens_folder(folder, 20)
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(
        SAEFormatError, match=r"sae_weights\.safetensors.*not in the local Hugging Face cache"
    ):
        formats.load_pretrained(repo_id="org/toy-saes", path="blocks.1.hook_resid_pre", cache_dir=cache)
    # a dangling symlink (its blob deleted) is missing too
    _saelens_folder(folder.parent / "b", 21)
    for blob in (cache / "models--org--toy-saes" / "blobs").iterdir():
        blob.unlink()
    with pytest.raises(SAEFormatError, match="not in the local Hugging Face cache"):
        formats.load_pretrained(repo_id="org/toy-saes", path="b", cache_dir=cache)
    with pytest.raises(SAEFormatError, match="no cached revision 'v2'"):
        formats.load_pretrained(repo_id="org/toy-saes", path="b", cache_dir=cache, revision="v2")
    # a transcoder set listing a layer that is not there
    (tmp_path / "set").mkdir()
    save_file(_ct_layer(0, jump=False, skip=False), str(tmp_path / "set" / "layer_0.safetensors"))
    save_file(_ct_layer(1, jump=False, skip=False), str(tmp_path / "set" / "layer_2.safetensors"))
    (tmp_path / "set" / "config.yaml").write_text(CT_CONFIG)
    with pytest.raises(SAEFormatError, match=r"layer_1\.safetensors is missing"):
        formats.load(tmp_path / "set")


def test_config_naming_an_unknown_architecture(tmp_path):
    cache = tmp_path / "hub"
    folder = _fake_repo(cache, "org/toy-saes") / "s"
    _saelens_folder(folder, 20)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "crosscoder"}))
    with pytest.raises(SAEFormatError, match=r"cfg\.json: architecture='crosscoder' is not supported"):
        formats.load_pretrained(repo_id="org/toy-saes", path="s", cache_dir=cache)
    (tmp_path / "config.yaml").write_text(CT_CONFIG.replace("transcoder_set", "cross_layer_transcoder"))
    with pytest.raises(
        SAEFormatError, match=r"config\.yaml: model_kind='cross_layer_transcoder' is not supported"
    ):
        formats.load(tmp_path, format="circuit_tracer")


@pytest.mark.parametrize("kind", ["circuit_tracer", "gemma_scope", "dictionary_learning", "pretrained"])
def test_truncated_files(tmp_path, kind):
    if kind == "circuit_tracer":
        file = tmp_path / "layer_0.safetensors"
        save_file(_ct_layer(0, jump=True, skip=False), str(file))
        (tmp_path / "config.yaml").write_text(CT_CONFIG)
    elif kind == "gemma_scope":
        file = tmp_path / "params.npz"
        np.savez(file, **_gemma_arrays(1))
    elif kind == "dictionary_learning":
        file = tmp_path / "ae.safetensors"
        save_file(_dl_autoencoder(1), str(file))
    else:
        folder = _fake_repo(tmp_path / "hub", "org/r") / "s"
        _saelens_folder(folder, 1)
        file = folder / "sae_weights.safetensors"  # a symlink into blobs/, named as the snapshot names it
    data = file.read_bytes()
    file.resolve().write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SAEFormatError) as err:
        if kind == "pretrained":
            formats.load_pretrained(repo_id="org/r", path="s", cache_dir=tmp_path / "hub")
        elif kind == "circuit_tracer":
            formats.load(tmp_path)
        else:
            formats.load(tmp_path, hook_name="blocks.0.hook_resid_post")
    assert str(file) in str(err.value)


def test_wrong_layouts_name_the_expected_one(tmp_path):
    t = _ct_layer(0, jump=False, skip=False)
    del t["b_dec"]
    save_file(t, str(tmp_path / "layer_0.safetensors"))
    (tmp_path / "config.yaml").write_text(CT_CONFIG)
    with pytest.raises(
        SAEFormatError, match=r"layer_0\.safetensors: missing tensors \['b_dec'\].*circuit-tracer"
    ):
        formats.load(tmp_path)
    t = _ct_layer(0, jump=True, skip=False)
    t["activation_function.threshold"] = -t["activation_function.threshold"]
    save_file(t, str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(SAEFormatError, match="negative JumpReLU thresholds"):
        formats.load(tmp_path)
    (tmp_path / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: [\n")
    with pytest.raises(SAEFormatError, match=r"config\.yaml: malformed config"):
        formats.load(tmp_path)
    bad = _gemma_arrays(2)
    del bad["threshold"]
    np.savez(tmp_path / "g.npz", **bad)
    with pytest.raises(SAEFormatError, match=r"g\.npz: missing tensors \['threshold'\].*Gemma Scope"):
        formats.load(tmp_path / "g.npz", hook_name="blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="names no hook; pass hook_name="):
        formats.load(tmp_path / "g.npz")
    (tmp_path / "nothing.bin").write_bytes(b"x")
    with pytest.raises(SAEFormatError, match=r"nothing\.bin: not a file or folder of a known format"):
        formats.load(tmp_path / "nothing.bin")


def test_loading_writes_nothing(tmp_path):
    for i in range(2):
        save_file(_ct_layer(i, jump=True, skip=True), str(tmp_path / f"layer_{i}.safetensors"))
    (tmp_path / "config.yaml").write_text(CT_CONFIG)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    formats.load(tmp_path)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before


def test_public_names():
    assert sc.load_pretrained is formats.load_pretrained
    assert sc.formats is formats
    assert formats.names() == ["circuit_tracer", "dictionary_learning", "gemma_scope", "saelens"]


def test_circuit_tracer_gemma_scope_2_layout(tmp_path):
    """Gemma Scope 2 safetensors in a set: w_enc [d_in, d_sae], affine_skip_connection [d_in, d_out]."""
    arrays = {k: torch.from_numpy(v) for k, v in _gemma_arrays(40, d_out=D_OUT).items()}
    layer = {
        "w_enc": arrays["W_enc"],
        "w_dec": arrays["W_dec"],
        "b_enc": arrays["b_enc"],
        "b_dec": arrays["b_dec"],
        "threshold": arrays["threshold"],
        "affine_skip_connection": _randn(D_IN, D_OUT, seed=41),
    }
    save_file(layer, str(tmp_path / "layer_0.safetensors"))
    (tmp_path / "config.yaml").write_text(CT_CONFIG)
    sae = formats.load_one(tmp_path)
    assert sae.cfg.architecture == "jumprelu_skip_transcoder"
    x = _x()
    h = x @ layer["w_enc"] + layer["b_enc"]
    f = h * (h > layer["threshold"])
    _close(sae.encode(x), f)
    _close(sae(x), f @ layer["w_dec"] + layer["b_dec"] + x @ layer["affine_skip_connection"])


def test_a_narrowing_cast_that_overflows_is_refused(tmp_path):
    t = _ct_layer(0, jump=False, skip=False)
    t["W_dec"][0, 0] = 1e10
    save_file(t, str(tmp_path / "layer_0.safetensors"))
    (tmp_path / "config.yaml").write_text(CT_CONFIG)
    with pytest.raises(SAEFormatError, match=r"layer_0\.safetensors: tensor 'W_dec' overflows float16"):
        formats.load(tmp_path, dtype="float16")
    assert formats.load_one(tmp_path, dtype="bfloat16").W_dec.dtype == torch.bfloat16
