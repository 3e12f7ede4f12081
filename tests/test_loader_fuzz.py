"""Loader fuzzing (issue 12): hostile ``cfg.json`` values and bytes and hostile safetensors bytes make
``SAE.load`` raise the library's own :class:`SAEFormatError` or load an SAE that works; nothing else,
and never a hang. Each test also checks that its cases were not all of one kind."""

from __future__ import annotations

import json
import signal
import struct
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sae_circuits as sc
from tests.conftest import random_sae

D_IN, D_SAE = 8, 16
PER_CASE_LIMIT_S = 10
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


def _reference(architecture: str, **kwargs) -> tuple[dict, bytes]:
    sae = random_sae(architecture, d_in=D_IN, d_sae=D_SAE, **kwargs)
    with tempfile.TemporaryDirectory() as folder:
        sae.save(folder)
        return json.loads((Path(folder) / "cfg.json").read_text()), (
            Path(folder) / "sae_weights.safetensors"
        ).read_bytes()


REFERENCES = {
    "standard": _reference("standard"),
    "topk": _reference("topk", k=4),
    "jumprelu": _reference("jumprelu"),
    "transcoder": _reference("transcoder", hook_name_out="blocks.0.hook_mlp_out"),
}


@contextmanager
def _no_hang(limit_s: int = PER_CASE_LIMIT_S):
    def alarm(signum, frame):
        raise TimeoutError(f"SAE.load ran past {limit_s} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(limit_s)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _load(cfg_bytes: bytes, weights: bytes, counts: Counter, sparsity: bytes | None = None) -> None:
    """Write the files, load them, and check the outcome is a clean error or a working SAE."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "cfg.json").write_bytes(cfg_bytes)
        (folder / "sae_weights.safetensors").write_bytes(weights)
        if sparsity is not None:
            (folder / "sparsity.safetensors").write_bytes(sparsity)
        started = time.perf_counter()
        try:
            with _no_hang():
                sae = sc.SAE.load(folder)
        except sc.SAEFormatError as err:
            assert str(err).count(str(folder)) == 1, err  # names the file it is about, once
            counts["rejected"] += 1
            return
        finally:
            counts["seconds"] += time.perf_counter() - started
        # Loaded: it must be a valid SAE that runs (no error deferred to the first forward pass).
        assert sae.device == torch.device("cpu")
        assert all(torch.isfinite(p).all() for p in sae.parameters())
        out = sae(torch.randn(3, sae.cfg.d_in, dtype=sae.dtype))
        assert out.shape == (3, sae.cfg.output_width)
        counts["loaded"] += 1


def _report(counts: Counter, name: str) -> None:
    total = counts["loaded"] + counts["rejected"]
    print(
        f"\n{name}: {total} cases, {counts['loaded']} loaded, {counts['rejected']} rejected "
        f"with SAEFormatError, {counts['seconds']:.1f} s in SAE.load"
    )
    assert counts["loaded"] > 0 and counts["rejected"] > 0, counts


# --------------------------------------------------------------------------- cfg.json values

KEYS = sorted({k for cfg, _ in REFERENCES.values() for k in cfg} | {"k", "d_out", "hook_point"})
STRINGS = st.sampled_from(
    list(sc.sae.ARCHITECTURES)
    + list(sc.sae.NORMALIZATIONS)
    + ["hook_z", "none", "float32", "float16", "bfloat16", "float64", "int8", "float8_e4m3fn"]
    + ["cpu", "cuda", "cuda:1", "meta", "mps", "gpu", "", "blocks.0.hook_resid_post", "blocks.0.attn.hook_z"]
    + ["no", "true", "8", "16", "1e400", "\udcff", "\u202e", "relu", "topk", "tanh-relu"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.sampled_from([0, 1, 4, 8, 16, 17, -1, 2**31, 2**63, 10**30, 8.0, 8.5, 16.0])
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | STRINGS
    | st.text(max_size=10)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=5,
)
META_KEYS = ["hook_name", "hook_name_out", "sae_lens_version", "model_name", "hook_head_index"]


@given(
    reference=st.sampled_from(sorted(REFERENCES)),
    drop=st.sets(st.sampled_from(KEYS), max_size=2),
    changes=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3),
    meta=st.dictionaries(st.sampled_from(META_KEYS), VALUES, max_size=2),
    flat=st.booleans(),
)
def _cfg_values_case(reference, drop, changes, meta, flat, counts):
    cfg, weights = REFERENCES[reference]
    cfg = json.loads(json.dumps(cfg))
    if flat:  # the pre-6.0 layout: metadata at top level, hook_point
        metadata = cfg.pop("metadata")
        cfg["hook_point"] = metadata.pop("hook_name")
        cfg.update(metadata)
    for key in drop:
        cfg.pop(key, None)
    cfg.update(changes)
    if isinstance(cfg.get("metadata"), dict):
        cfg["metadata"].update(meta)
    else:
        cfg.update(meta)
    _load(json.dumps(cfg).encode("utf-8", "surrogatepass"), weights, counts)


def test_cfg_values_fuzz():
    counts: Counter = Counter()
    settings(FUZZ, max_examples=500)(_cfg_values_case)(counts=counts)
    _report(counts, "cfg.json values")


# --------------------------------------------------------------------------- cfg.json bytes


@st.composite
def mutated_bytes(draw, original: bytes) -> bytes:
    """Byte flips, insertions, deletions and truncations of ``original``, or bytes of its own."""
    kind = draw(st.sampled_from(["flip", "splice", "truncate", "random", "deep"]))
    data = bytearray(original)
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.integers(1, 300_000))
        return draw(st.sampled_from([b"[", b'{"a":'])) * depth + draw(st.binary(max_size=4))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] = draw(st.integers(0, 255))
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=6)) if draw(st.booleans()) else b""
            del data[pos : pos + draw(st.integers(0, 3))]
    return bytes(data)


@given(data=st.data(), reference=st.sampled_from(sorted(REFERENCES)))
def _cfg_bytes_case(data, reference, counts):
    cfg, weights = REFERENCES[reference]
    text = json.dumps(cfg).encode()
    _load(data.draw(mutated_bytes(text)), weights, counts)


# --------------------------------------------------------------------------- safetensors bytes

DTYPES = [
    "F64",
    "F32",
    "F16",
    "BF16",
    "I64",
    "I32",
    "I16",
    "I8",
    "U8",
    "BOOL",
    "F8_E4M3",
    "F8_E5M2",
    "C64",
    "??",
]


def _split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _join(header: dict, body: bytes, pad: bool = True) -> bytes:
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


@st.composite
def hostile_safetensors(draw, original: bytes) -> bytes:
    kind = draw(st.sampled_from(["header", "header", "bytes", "length"]))
    if kind == "bytes":
        return draw(mutated_bytes(original))
    header, body = _split(original)
    if kind == "length":
        (n,) = struct.unpack("<Q", original[:8])
        n = draw(st.sampled_from([0, 1, n - 1, n + 1, n + 8, 2**32, 2**63, 2**64 - 1]))
        return struct.pack("<Q", max(0, n)) + original[8:]
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        entry = header[name]
        what = draw(st.sampled_from(["dtype", "shape", "offsets", "rename", "drop", "metadata", "values"]))
        if what == "dtype":
            entry["dtype"] = draw(st.sampled_from(DTYPES))
        elif what == "shape":
            entry["shape"] = draw(
                st.lists(st.integers(-2, 2**40) | st.sampled_from([D_IN, D_SAE]), max_size=3)
            )
        elif what == "offsets":
            start, end = entry["data_offsets"]
            entry["data_offsets"] = [
                draw(st.sampled_from([start, end, 0, -1, 2**64, start + 2])),
                draw(st.sampled_from([end, start, end + 4, 2**40])),
            ]
        elif what == "rename":
            header[draw(st.sampled_from(["W_skip", "scaling_factor", "threshold", "b_gate", "x"]))] = (
                header.pop(name)
            )
            names.remove(name)
        elif what == "drop" and len(names) > 1:
            del header[name]
            names.remove(name)
        elif what == "metadata":
            header["__metadata__"] = draw(st.sampled_from([{"a": "b"}, {"a": 1}, [], "x", None]))
        else:  # overwrite some stored values with special floats (NaN, inf, huge) of the stored dtype
            start, end = entry["data_offsets"]
            if entry["dtype"] == "F32" and end - start >= 4:
                body = bytearray(body)
                pos = start + 4 * draw(st.integers(0, (end - start) // 4 - 1))
                value = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 3e38, 0.0]))
                body[pos : pos + 4] = struct.pack("<f", value)
                body = bytes(body)
        if not names:
            break
    return _join(header, body, pad=draw(st.booleans()))


@given(
    data=st.data(),
    reference=st.sampled_from(sorted(REFERENCES)),
    target=st.sampled_from(["weights", "weights", "sparsity"]),
)
def _safetensors_case(data, reference, target, counts):
    cfg, weights = REFERENCES[reference]
    text = json.dumps(cfg).encode()
    if target == "weights":
        _load(text, data.draw(hostile_safetensors(weights)), counts)
    else:
        from safetensors.torch import save as to_bytes

        sparsity = to_bytes({"sparsity": torch.full((D_SAE,), -2.0)})
        _load(text, weights, counts, sparsity=data.draw(hostile_safetensors(sparsity)))


def test_cfg_bytes_and_safetensors_bytes_fuzz():
    counts: Counter = Counter()
    settings(FUZZ, max_examples=200)(_cfg_bytes_case)(counts=counts)
    _report(counts, "cfg.json bytes")
    counts = Counter()
    settings(FUZZ, max_examples=400)(_safetensors_case)(counts=counts)
    _report(counts, "safetensors bytes")


@pytest.mark.parametrize("reference", sorted(REFERENCES))
def test_the_unmutated_references_load(reference):
    counts: Counter = Counter()
    cfg, weights = REFERENCES[reference]
    _load(json.dumps(cfg).encode(), weights, counts)
    assert counts["loaded"] == 1
