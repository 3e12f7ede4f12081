"""Benchmark: load time of each external dictionary format (``sae_circuits.formats``).

Synthetic weights of two sizes (64 x 256 and GPT-2-small's 768 x 12,288) written in each format's
own layout, then loaded with :func:`sae_circuits.formats.load` / ``load_pretrained``; median of 5
loads after one warm-up (files in the page cache), float32, ``torch.set_num_threads(1)``.

    python benchmarks/bench_formats.py
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from sae_circuits import formats
from sae_circuits.formats import pretrained

COMMIT = "0" * 40
HOOK = "blocks.0.hook_resid_post"


def median_seconds(load: Callable[[], Any], repeats: int = 5) -> float:
    load()  # warm: page cache and imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        load()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_formats(d_in: int, d_sae: int, root: Path) -> dict[str, Callable[[], Any]]:
    """Write one dictionary per format under ``root``; return how to load each."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    circuit_tracer = root / "circuit_tracer"
    circuit_tracer.mkdir()
    save_file(
        {"W_enc": randn(d_sae, d_in), "W_dec": randn(d_sae, d_in), "b_enc": randn(d_sae),
         "b_dec": randn(d_in), "activation_function.threshold": randn(d_sae).abs()},
        str(circuit_tracer / "layer_0.safetensors"),
    )  # fmt: skip
    (circuit_tracer / "config.yaml").write_text(
        "model_kind: transcoder_set\nfeature_input_hook: hook_resid_mid\nfeature_output_hook: hook_mlp_out\n"
    )
    gemma_scope = root / "gemma_scope"
    gemma_scope.mkdir()
    np.savez(
        gemma_scope / "params.npz",
        W_enc=randn(d_in, d_sae).numpy(), W_dec=randn(d_sae, d_in).numpy(), b_enc=randn(d_sae).numpy(),
        b_dec=randn(d_in).numpy(), threshold=randn(d_sae).abs().numpy(),
    )  # fmt: skip
    dictionary_learning = root / "dictionary_learning"
    dictionary_learning.mkdir()
    save_file(
        {"encoder.weight": randn(d_sae, d_in), "encoder.bias": randn(d_sae),
         "decoder.weight": randn(d_in, d_sae), "bias": randn(d_in)},
        str(dictionary_learning / "ae.safetensors"),
    )  # fmt: skip
    repo = root / "hub" / "models--org--release"
    snapshot = repo / "snapshots" / COMMIT / "sae"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    save_file(
        {
            "W_enc": randn(d_in, d_sae),
            "W_dec": randn(d_sae, d_in),
            "b_enc": randn(d_sae),
            "b_dec": randn(d_in),
        },
        str(snapshot / "sae_weights.safetensors"),
    )
    cfg = {"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "metadata": {"hook_name": HOOK}}
    (snapshot / "cfg.json").write_text(json.dumps(cfg))
    directory = root / "pretrained_saes.yaml"
    directory.write_text(
        "release:\n  conversion_func: null\n  model: m\n  repo_id: org/release\n  saes:\n  - id: sae\n    path: sae\n"
    )
    return {
        "circuit-tracer transcoder set (1 layer)": lambda: formats.load(circuit_tracer),
        "Gemma Scope params.npz": lambda: formats.load(gemma_scope, hook_name=HOOK),
        "dictionary_learning ae.safetensors": lambda: formats.load(dictionary_learning, hook_name=HOOK),
        "SAELens release (local HF cache)": lambda: formats.load_pretrained(
            "release", "sae", cache_dir=root / "hub", directory=directory
        ),
    }


def main() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        print("| format | 64 x 256 | 768 x 12,288 |\n|---|---|---|")
        rows: dict[str, list[str]] = {}
        for d_in, d_sae in ((64, 256), (768, 12288)):
            with tempfile.TemporaryDirectory() as tmp:
                for name, load in write_formats(d_in, d_sae, Path(tmp)).items():
                    rows.setdefault(name, []).append(f"{median_seconds(load) * 1000:.1f} ms")
        for name, cells in rows.items():
            print(f"| {name} | {' | '.join(cells)} |")
        file = pretrained.sae_lens_directory_file()
        if file:
            pretrained.read_directory.cache_clear()
            start = time.perf_counter()
            pretrained.read_directory(file)
            print(f"\nsae_lens's pretrained_saes.yaml, first parse: {time.perf_counter() - start:.2f} s")
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
