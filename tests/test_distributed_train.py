"""Activation cache and data-parallel training: 2 gloo ranks (torchrun) train the SAE that one
process trains; stale, partial and mismatched caches are refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sae_circuits as sc
from sae_circuits.train import (
    CachedActivations,
    DictionarySpec,
    Fingerprint,
    TrainConfig,
    cache_activations,
    read_manifest,
    train_distributed,
    train_from_cache,
)

SITE = "blocks.0.hook_resid_post"
TRANSCODER = ("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
HOOKS = [SITE, "blocks.1.hook_resid_post", *TRANSCODER]
TRAIN = dict(architecture="topk", d_sae=256, k=8, batch_size=64, total_tokens=64 * 24, buffer_tokens=512,
             warmup_steps=5, lr=3e-3, geometric_median_samples=256, dead_after_tokens=640, seed=1)  # fmt: skip


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """The tiny model, its tokens and a finished cache of two hooks (small shards, so several)."""
    from sae_circuits.zoo.loader import load_hf_gpt2

    model = load_hf_gpt2(tiny_model_dir)
    text = "".join(open(__import__(m).__file__).read() for m in ("os", "json"))
    ids = model.tokenizer(text)["input_ids"]
    tokens = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)[:80]
    directory = tmp_path_factory.mktemp("cache") / "acts"
    cache_activations(model, tokens, HOOKS, directory, shard_tokens=500, model_batch_size=8, progress=False)
    return model, tokens, directory


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_two_gloo_ranks_train_the_single_process_sae(setup, tmp_path, architecture):
    """TopK: an SAE; BatchTopK: a transcoder (its top k * batch is chosen over both ranks' rows)."""
    _, _, directory = setup
    train = {**TRAIN, "architecture": architecture}
    spec = DictionarySpec(SITE) if architecture == "topk" else DictionarySpec(*TRANSCODER)
    [alone] = train_distributed(directory, [spec], TrainConfig(**train, progress=False))
    options = [f"--{k.replace('_', '-')}={v}" for k, v in train.items()]
    options += ["--sae", SITE] if architecture == "topk" else ["--transcoder", *TRANSCODER]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "sae_circuits.train.distributed", "--cache", str(directory), "--out", str(tmp_path),
               "--no-progress", *options]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    together = sc.SAE.load(tmp_path / alone.cfg.site)
    # Float tolerance: the ranks sum the batch in another order. Over a few dozen steps the
    # rounding stays at this level; long TopK runs amplify it as any rounding change does
    # (docs/scale.md measures both). The level depends on the CPU's kernels: the largest difference
    # was below 1e-5 on an AMD EPYC and 4.5e-5 (BatchTopK's W_enc) on an Intel Xeon; a wrong
    # reduction (a sum for a mean, a rank's rows dropped) moves the weights by 1e-2 or more.
    for name, tensor in alone.state_dict().items():
        other = together.state_dict()[name]
        scale = float(tensor.abs().max().clamp_min(1.0))
        assert torch.allclose(other, tensor, atol=1e-4 * scale, rtol=0), (name, (other - tensor).abs().max())
    # Firing frequencies (saved as log10): the rounding above flips a few tokens at BatchTopK's
    # batch-wide threshold (at most 5 of 1,536 tokens for one feature, Intel Xeon); counts from one
    # rank only would halve every frequency (0.03 on average here).
    assert together.sparsity is not None
    frequency, alone_frequency = 10 ** together.sparsity.double(), 10 ** alone.sparsity.double()
    assert float((frequency - alone_frequency).abs().max()) <= 0.005
    assert float(frequency.sum()) == pytest.approx(float(alone_frequency.sum()), rel=0.01)
    assert together.cfg.metadata["activation_cache"] == read_manifest(directory).fingerprint.digest


def test_ranks_serve_disjoint_shares_of_the_single_process_batches(setup):
    _, _, directory = setup
    one = CachedActivations(directory, SITE, batch_size=64, buffer_tokens=256, seed=3)
    halves = [CachedActivations(directory, SITE, batch_size=64, buffer_tokens=256, seed=3, rank=r, world_size=2)
              for r in range(2)]  # fmt: skip
    assert halves[0].batch_size == 32
    streams = [iter(one), *map(iter, halves)]
    for _ in range(50):  # many buffer refills, more than one epoch of shards
        whole, a, b = (next(s)[SITE] for s in streams)
        assert torch.equal(torch.cat([a, b]), whole)
    assert one.epochs >= 1
    assert torch.equal(halves[1].sample(100)[SITE], one.sample(100)[SITE])


def test_cache_reuse_and_the_layout(setup):
    model, tokens, directory = setup
    manifest = read_manifest(directory)
    assert manifest.widths == {h: 64 for h in HOOKS} and manifest.dtype == "float32"
    assert manifest.n_tokens == tokens.shape[0] * 31 and len(manifest.shards) == 5
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    again = cache_activations(model, tokens, HOOKS, directory, shard_tokens=500, progress=False)
    assert again == manifest and {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before
    # the cached rows are the model's activations (sequences in the manifest's fixed order)
    rows = CachedActivations(directory, SITE, batch_size=8, buffer_tokens=16)._read(0)[SITE]
    order = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens[order[:2]], names_filter=SITE)
    assert torch.allclose(rows[:62], cache[SITE][:, 1:].reshape(-1, 64), atol=1e-6)


def test_a_crashed_cache_has_no_manifest_is_refused_and_resumes(setup, tmp_path, monkeypatch):
    model, tokens, _ = setup
    import sae_circuits.train.activation_cache as module

    written = []

    def save_twice_then_crash(tensors, path, metadata):
        if len(written) == 2:
            raise OSError("No space left on device")
        written.append(path)
        original(tensors, path, metadata=metadata)

    original = module.save_file
    monkeypatch.setattr(module, "save_file", save_twice_then_crash)
    with pytest.raises(OSError, match="No space"):
        cache_activations(model, tokens, SITE, tmp_path, shard_tokens=500, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shard_00000.safetensors",
        "shard_00001.safetensors",
    ]
    with pytest.raises(FileNotFoundError, match="unfinished: it has no manifest.json"):
        CachedActivations(tmp_path, SITE, batch_size=8, buffer_tokens=16)
    monkeypatch.setattr(module, "save_file", original)
    first = (tmp_path / "shard_00000.safetensors").stat().st_mtime_ns
    manifest = cache_activations(model, tokens, SITE, tmp_path, shard_tokens=500, progress=False)
    assert len(manifest.shards) == 5 and (tmp_path / "shard_00000.safetensors").stat().st_mtime_ns == first
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")


def test_a_resumed_cache_rewrites_shards_of_another_cut_or_dtype(setup, tmp_path):
    """An interrupted cache resumed with another shard_tokens (its shards hold other sequences) or
    another dtype (overwrite=True) must not keep the old shards: the result equals a fresh cache."""
    model, tokens, _ = setup

    def rows(directory):
        manifest = read_manifest(directory)
        return torch.cat([load_file(str(directory / name))[SITE] for name, _ in manifest.shards])

    fresh = tmp_path / "fresh"
    cache_activations(model, tokens, SITE, fresh, shard_tokens=400, progress=False)
    resumed = tmp_path / "resumed"
    cache_activations(model, tokens, SITE, resumed, shard_tokens=600, progress=False)
    (resumed / "manifest.json").unlink()  # interrupted before the manifest
    cache_activations(model, tokens, SITE, resumed, shard_tokens=400, progress=False)
    assert torch.equal(rows(resumed), rows(fresh))
    cache_activations(model, tokens, SITE, resumed, shard_tokens=400, dtype=torch.bfloat16, overwrite=True,
                      progress=False)  # fmt: skip
    assert read_manifest(resumed).dtype == "bfloat16" and rows(resumed).dtype == torch.bfloat16
    cache_activations(model, tokens, SITE, resumed, shard_tokens=400, overwrite=True, progress=False)
    assert torch.equal(rows(resumed), rows(fresh))  # float32 again, not bf16-rounded values


def test_a_cache_of_another_model_hook_or_tokens_is_refused(setup, tmp_path):
    model, tokens, directory = setup
    specs = [DictionarySpec(SITE)]
    config = TrainConfig(**TRAIN, progress=False)
    with pytest.raises(
        ValueError, match=r"hooks \['blocks.1.hook_mlp_out'\] are not in the activation cache"
    ):
        train_from_cache(directory, [DictionarySpec("blocks.1.hook_mlp_out")], config)
    with pytest.raises(
        ValueError, match=r"was made from model .*; this run asks for .*: tokens: \w+ in the cache"
    ):
        train_from_cache(
            directory, specs, config, expect_fingerprint=Fingerprint.of(model, tokens[:40], SITE)
        )
    original = model.blocks[0].attn.W_Q.detach().clone()
    with torch.no_grad():
        model.blocks[0].attn.W_Q.add_(1e-3)  # another checkpoint of the same architecture
    try:
        changed = Fingerprint.of(model, tokens, SITE)
        with pytest.raises(ValueError, match=r"this run asks for .*: weights: \w+ in the cache, \w+ asked"):
            train_from_cache(directory, specs, config, expect_fingerprint=changed)
        with pytest.raises(ValueError, match="already holds an activation cache of model"):
            cache_activations(model, tokens, HOOKS, directory, progress=False)
    finally:
        with torch.no_grad():
            model.blocks[0].attn.W_Q.copy_(original)
    assert read_manifest(directory).fingerprint.differences(Fingerprint.of(model, tokens, [SITE])) == []
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    cache_activations(model, tokens[:40], SITE, copy, shard_tokens=500, overwrite=True, progress=False)
    assert read_manifest(copy).n_tokens == 40 * 31 and len(list(copy.glob("shard_*"))) == 3


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(setup, monkeypatch):
    _, _, directory = setup
    with pytest.raises(ValueError, match="batch_size=64 must be a positive multiple of world_size=3"):
        CachedActivations(directory, SITE, batch_size=64, buffer_tokens=256, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank=2 is not one of world_size=2"):
        CachedActivations(directory, SITE, batch_size=64, buffer_tokens=256, rank=2, world_size=2)
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    with pytest.raises(ValueError, match="does not split evenly over world_size=3 ranks"):
        train_distributed(directory, [DictionarySpec(SITE)], TrainConfig(**TRAIN, progress=False))


def test_the_command_line_needs_something_to_train(setup, capsys):
    from sae_circuits.train.distributed import main

    _, _, directory = setup
    assert main(["--cache", str(directory), "--out", "x"]) == 2
    assert "nothing to train" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no activation cache"):
        main(["--cache", str(Path(directory).parent / "none"), "--out", "x", "--sae", SITE])
