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


def test_a_transcoder_without_its_output_hook_is_refused_at_load(tmp_path):
    """Its site would otherwise silently be its input hook (for monitors, dashboards, --site)."""
    with pytest.raises(ValueError, match="a transcoder needs hook_name_out, the hook it writes"):
        random_sae("transcoder", hook_name="blocks.0.ln2.hook_normalized", hook_name_out=None)
    tc = random_sae("transcoder", hook_name="blocks.0.ln2.hook_normalized", d_out=64, d_in=64)
    tc.cfg.hook_name_out = None  # a config changed after construction
    with pytest.raises(ValueError, match="has no hook_name_out .* set sae.cfg.hook_name_out before saving"):
        tc.save(tmp_path)  # refused at save too: no file that cannot be loaded back
    assert not tmp_path.joinpath("cfg.json").exists()
    tc.cfg.hook_name_out = "blocks.0.hook_mlp_out"
    tc.save(tmp_path)
    assert sc.SAE.load(tmp_path).cfg.site == "blocks.0.hook_mlp_out"
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["metadata"]["hook_name_out"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(sc.SAEFormatError, match="needs metadata.hook_name_out, the hook it writes"):
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


def test_a_save_that_would_not_load_back_is_refused_and_the_config_is_strict_json(tmp_path, sae):
    """A sparsity with -inf (log10 of a zero frequency) was saved, and the loader then refused the
    whole SAE; a NaN in the metadata was written as the bare NaN strict JSON readers refuse."""
    frequency = torch.rand(sae.cfg.d_sae)
    frequency[3] = 0.0
    with pytest.raises(ValueError, match="sparsity has 1 NaN or infinite values"):
        sae.save(tmp_path / "a", sparsity=frequency.log10())
    assert not (tmp_path / "a").exists()
    sae.cfg.metadata["l0"] = float("nan")
    sae.save(tmp_path / "b", sparsity=(frequency + 1e-10).log10())
    text = (tmp_path / "b" / "cfg.json").read_text()
    assert (
        json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))["metadata"]["l0"]
        is None
    )
    assert sc.SAE.load(tmp_path / "b").sparsity is not None


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


def test_rewriting_keeps_a_files_permissions_and_never_clears_the_umask(tmp_path, sae, monkeypatch):
    """A file made private stays private when saved again; and the umask is read, never set to 0
    (for that moment, files other threads create would get every permission)."""
    import os

    from sae_circuits.io import atomic_write_text

    target = atomic_write_text(tmp_path / "graph.json", "{}")
    os.chmod(target, 0o600)
    atomic_write_text(target, "{}\n")
    sae.save(tmp_path / "sae")
    os.chmod(tmp_path / "sae" / "cfg.json", 0o600)
    sae.save(tmp_path / "sae")
    assert target.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "sae" / "cfg.json").stat().st_mode & 0o777 == 0o600
    set_to = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: set_to.append(mask) or real(mask))
    atomic_write_text(tmp_path / "new.json", "{}")
    sae.save(tmp_path / "other")
    assert 0 not in set_to


# --------------------------------------------------------------------------- device (issue 12, item 1)


def _edit_cfg(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("saved_on", ["cuda", "cuda:3", "mps", "not a device"])
def test_an_sae_saved_on_a_gpu_loads_on_the_cpu(tmp_path, sae, saved_on):
    sae.save(tmp_path)
    _edit_cfg(tmp_path, device=saved_on)
    back = sc.SAE.load(tmp_path)  # cfg.json's device is where it was saved, not where to load
    assert back.device == torch.device("cpu") and back.cfg.device == "cpu"
    assert torch.equal(back.W_enc, sae.W_enc)
    assert sc.SAE.load(tmp_path, device="cpu").cfg.device == "cpu"
    assert sc.SAE.load(tmp_path, device=torch.device("cpu")).cfg.device == "cpu"


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", "", "cpu:-1"])
def test_a_malformed_device_argument_is_named(tmp_path, sae, device):
    sae.save(tmp_path)
    with pytest.raises(ValueError, match=f"device={device!r}") as info:
        sc.SAE.load(tmp_path, device=device)
    assert not isinstance(info.value, sc.SAEFormatError)  # the argument is wrong, not the file


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_argument_is_a_clear_error(tmp_path, sae):
    sae.save(tmp_path)
    with pytest.raises(ValueError, match="device='cuda' is not usable on this machine"):
        sc.SAE.load(tmp_path, device="cuda")


# --------------------------------------------------------------------------- hostile files (items 6, 7)


def _replace_text(old: str, new: str):
    def edit(folder: Path) -> None:
        text = (folder / "cfg.json").read_text()
        assert old in text
        (folder / "cfg.json").write_text(text.replace(old, new, 1))

    return edit


def _cfg_bytes(data: bytes):
    return lambda folder: (folder / "cfg.json").write_bytes(data)


def _cfg_change(**changes):
    return lambda folder: _edit_cfg(folder, **changes)


def _weights(name: str, tensor_of):
    def edit(folder: Path) -> None:
        path = folder / "sae_weights.safetensors"
        tensors = sc.io._read_safetensors(path)
        tensors[name] = tensor_of(tensors[name])
        save_file(tensors, str(path))

    return edit


def _sparsity(values):
    return lambda folder: save_file({"sparsity": values}, str(folder / "sparsity.safetensors"))


def _deep(folder: Path) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    text = json.dumps(cfg)[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}"
    (folder / "cfg.json").write_text(text)


def _pre6(**changes):
    flat = {
        "d_in": 64, "d_sae": 256, "hook_point": "blocks.0.hook_resid_post", "activation_fn_str": "relu",
        "dtype": "float32", "device": "cpu",
    }  # fmt: skip
    flat.update(changes)
    return _cfg_bytes(json.dumps(flat).encode())


HOSTILE = {
    "d_in Infinity": (_replace_text('"d_in": 64', '"d_in": Infinity'), r"d_in=inf must be an integer"),
    "d_in 1e400": (_replace_text('"d_in": 64', '"d_in": 1e400'), r"d_in=inf must be an integer"),
    "d_in NaN": (_replace_text('"d_in": 64', '"d_in": NaN'), r"d_in=nan must be an integer"),
    "d_sae 2**70": (_cfg_change(d_sae=2**70), r"d_sae=\d+ must be an integer"),
    "5000-digit int": (_replace_text('"d_in": 64', '"d_in": ' + "9" * 5000), r"malformed JSON"),
    "deeply nested": (_deep, r"malformed JSON \(nested too deeply\)"),
    "not UTF-8": (_cfg_bytes(b'{"d_in": 64, "x": "\xff\xfe"}'), r"not UTF-8 text"),
    "JSON array": (_cfg_bytes(b"[1, 2]"), r"expected a JSON object, got list"),
    "architecture list": (_cfg_change(architecture=["topk"]), r"architecture=\['topk'\] must be a string"),
    "dtype number": (_cfg_change(dtype=32), r"dtype=32 must be a string"),
    "hook_name number": (_cfg_change(metadata={"hook_name": 7}), r"hook_name=7 must be a string"),
    "float8 weights": (
        _weights("W_enc", lambda t: t.to(torch.float8_e4m3fn)),
        r"'W_enc' has dtype float8_e4m3fn; expected one of",
    ),
    "int weights": (_weights("b_dec", lambda t: t.to(torch.int32)), r"'b_dec' has dtype int32"),
    "bool weights": (_weights("b_enc", lambda t: t > 0), r"'b_enc' has dtype bool"),
    "complex weights": (
        _weights("W_dec", lambda t: torch.complex(t, torch.ones_like(t))),
        r"'W_dec' has dtype complex64",
    ),
    "float64 overflowing float32": (
        _weights("b_dec", lambda t: t.double().fill_(1e300)),
        r"'b_dec' overflows float32",
    ),
    "non-bool apply_b_dec_to_input": (
        _cfg_change(apply_b_dec_to_input="no"),
        r"apply_b_dec_to_input='no' must be true or false",
    ),
    "numeric apply_b_dec_to_input": (
        _cfg_change(apply_b_dec_to_input=0),
        r"apply_b_dec_to_input=0 must be true or false",
    ),
    "hook_z reshape on the residual stream": (
        _cfg_change(reshape_activations="hook_z"),
        r"reshape_activations='hook_z' needs a hook_z site, not hook_name='blocks.0.hook_resid_post'",
    ),
    "NaN sparsity": (_sparsity(torch.full((256,), float("nan"))), r"'sparsity' contains NaN or Inf"),
    "inf sparsity": (_sparsity(torch.full((256,), float("inf"))), r"'sparsity' contains NaN or Inf"),
    "complex sparsity": (_sparsity(torch.zeros(256, dtype=torch.complex64)), r"'sparsity' has dtype complex"),
    "pre-6 tanh-relu": (
        _pre6(activation_fn_str="tanh-relu"),
        r"activation_fn_str='tanh-relu' is not supported",
    ),
    "pre-6 kwargs list": (_pre6(activation_fn_kwargs=[1]), r"activation_fn_kwargs=\[1\] must be an object"),
    "pre-6 topk on gated": (
        _pre6(activation_fn_str="topk", architecture="gated"),
        r"activation_fn_str='topk' contradicts architecture='gated'",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_raise_format_errors_naming_the_path_once(tmp_path, sae, case):
    edit, message = HOSTILE[case]
    folder = tmp_path / "sae"
    sae.save(folder)
    edit(folder)
    with pytest.raises(sc.SAEFormatError, match=message) as info:
        sc.SAE.load(folder)
    assert str(info.value).count(str(folder)) == 1, str(info.value)[:300]


def test_pre_6_standard_architecture_with_topk_activation_is_topk(tmp_path, sae):
    sae.save(tmp_path)
    _pre6(activation_fn_str="topk", architecture="standard", activation_fn_kwargs={"k": 7})(tmp_path)
    back = sc.SAE.load(tmp_path)  # SAELens 4.x/5.x wrote TopK SAEs like this; not a ReLU SAE
    assert back.cfg.architecture == "topk" and back.cfg.k == 7


def test_hook_z_reshape_still_loads_on_a_hook_z_site(tmp_path):
    sae = random_sae(hook_name="blocks.0.attn.hook_z")
    sae.save(tmp_path)
    _edit_cfg(tmp_path, reshape_activations=None)  # absent: inferred from the hook name
    assert sc.SAE.load(tmp_path).cfg.reshape_activations == "hook_z"


# --------------------------------------------------------------------------- atomic saves (item 11)


def _kill_on_call(monkeypatch, name: str, nth: int) -> None:
    """Make ``os.<name>`` as the io module sees it die (as a killed process would) on call ``nth``."""
    import os

    real = getattr(os, name)
    calls = []

    def dying(*args, **kwargs):
        calls.append(args)
        if len(calls) == nth:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(f"sae_circuits.io.os.{name}", dying)


def _same(a: sc.SAE, b: sc.SAE) -> bool:
    return a.cfg.hook_name == b.cfg.hook_name and all(
        torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict()
    )


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
@pytest.mark.parametrize("nth", [1, 2, 3])
def test_an_interrupted_save_never_mixes_old_and_new_files(tmp_path, monkeypatch, exchange, nth):
    folder = tmp_path / "sae"
    old = random_sae(seed=1)
    old.save(folder)
    new = random_sae(seed=2, hook_name="blocks.1.hook_resid_post")
    if not exchange:
        monkeypatch.setattr("sae_circuits.io._exchange", lambda a, b: False)
    for name in ("rename", "replace"):
        _kill_on_call(monkeypatch, name, nth)
    try:
        new.save(folder)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    back = sc.SAE.load(folder)
    assert _same(back, old) or _same(back, new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # the failed save cleaned up after itself


def test_a_save_into_a_shared_folder_never_leaves_a_loadable_mixture(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    old = random_sae(seed=1)
    old.save(tmp_path)
    new = random_sae(seed=2, hook_name="blocks.1.hook_resid_post")
    _kill_on_call(monkeypatch, "replace", 2)  # after the weights, before cfg.json
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path)
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="has no cfg.json"):
        sc.SAE.load(tmp_path)  # rather than new weights under the old config
    new.save(tmp_path)
    assert _same(sc.SAE.load(tmp_path), new) and (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "notes.txt", "sae_weights.safetensors"]


@pytest.mark.parametrize("shared", [False, True])
def test_a_save_without_sparsity_removes_the_old_sparsity(tmp_path, sae, shared):
    if shared:
        (tmp_path / "notes.txt").write_text("mine")
    sae.save(tmp_path, sparsity=torch.full((256,), -2.0))
    assert sc.SAE.load(tmp_path).sparsity is not None
    sae.sparsity = None
    sae.save(tmp_path)
    assert sc.SAE.load(tmp_path).sparsity is None  # an old sparsity would describe other weights


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_killed_saves_are_removed(tmp_path, sae):
    import os

    folder = tmp_path / "sae"
    sae.save(folder)
    dead, hour_ago = _dead_pid(), __import__("time").time() - 3600
    stale = [
        tmp_path / f".sae.{dead}.abcd1234.saetmp",  # a staging directory of a killed save
        folder / f".sae_weights.safetensors.{dead}.k9x_2abc.tmp",  # a per-file temporary
        folder / ".cfg.json.q1w2e3r4.tmp",  # the untagged kind earlier versions left
        tmp_path / f".notes.txt.{dead}.zzzz1111.tmp",  # atomic_write_text's
    ]
    kept = [
        tmp_path / f".sae.{os.getpid()}.live0000.saetmp",  # this process: a save still running
        tmp_path / f".sae.{dead}.young000.saetmp",  # too recent to judge (shared folders)
        tmp_path / ".sae.backup",  # not one of ours
    ]
    for path in stale + kept:
        if path.suffix == ".saetmp":
            path.mkdir()
            (path / "sae_weights.safetensors").write_bytes(b"x" * 1000)
        else:
            path.write_bytes(b"x")
        if "young" not in path.name:
            os.utime(path, (hour_ago, hour_ago))
    sae.save(folder)
    sc.io.atomic_write_text(tmp_path / "notes.txt", "hello")
    assert [p for p in stale if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
    assert _same(sc.SAE.load(folder), sae)


def test_a_save_killed_between_the_two_renames_is_put_back(tmp_path, sae):
    import os

    folder = tmp_path / "sae"
    sae.save(folder)
    retired = tmp_path / f".sae.{_dead_pid()}.0badf00d.saeold"
    os.rename(folder, retired)  # where a kill after the first rename leaves the old SAE
    os.utime(retired, (0, 0))
    other = random_sae(seed=3)
    assert sc.io.remove_stale_temporaries(folder) == []
    assert _same(sc.SAE.load(folder), sae) and not retired.exists()
    other.save(folder)
    assert _same(sc.SAE.load(folder), other)


def test_a_full_disk_leaves_the_old_sae_and_no_temporaries(tmp_path, sae, full_disk):
    folder = tmp_path / "sae"
    sae.save(folder, sparsity=torch.zeros(256))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    full_disk()
    with pytest.raises(OSError, match="disk full"):
        random_sae(seed=4).save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_saving_through_a_symlink_keeps_the_link(tmp_path, sae):
    real = tmp_path / "real"
    sae.save(real)
    (tmp_path / "link").symlink_to(real)
    other = random_sae(seed=6)
    other.save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and _same(sc.SAE.load(real), other)


def test_saving_into_the_working_directory_updates_it_in_place(tmp_path, sae, monkeypatch):
    folder = tmp_path / "sae"
    sae.save(folder)
    monkeypatch.chdir(folder)
    other = random_sae(seed=7)
    other.save(".")
    assert Path.cwd().samefile(folder) and _same(sc.SAE.load("."), other)  # the directory was not swapped
