"""SAE training: determinism, the recipe's invariants, exact folding of the normalisation, output format."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sae_circuits as sc
from sae_circuits.train import (
    ActivationStore,
    DictionarySpec,
    SAETrainer,
    TrainConfig,
    train_dictionaries,
    train_sae,
    train_transcoder,
)
from sae_circuits.train.activations import stop_layer
from sae_circuits.train.trainer import geometric_median
from tests.shape_check import unchecked

SITE = "blocks.0.hook_resid_post"


def small(**overrides) -> TrainConfig:
    base = dict(expansion_factor=4, k=8, batch_size=256, total_tokens=256 * 30, buffer_tokens=2048,
                model_batch_size=8, progress=False, warmup_steps=5, lr=3e-3, geometric_median_samples=512,
                dead_after_tokens=2000)  # fmt: skip
    base.update(overrides)
    return TrainConfig(**base)


def test_training_is_deterministic_under_a_seed(model, train_tokens):
    a = train_sae(model, SITE, train_tokens, small(seed=3))
    b = train_sae(model, SITE, train_tokens, small(seed=3))
    c = train_sae(model, SITE, train_tokens, small(seed=4))
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.W_dec, c.W_dec)


def test_training_leaves_the_callers_random_numbers_alone(model, train_tokens, tmp_path):
    """The trainer seeds torch's global RNG for its initialisation; the caller's stream goes on as
    if nothing had run (it used to restart from ``config.seed`` after every training)."""
    from sae_circuits.train import DictionarySpec, cache_activations, train_from_cache

    torch.manual_seed(999)
    expected = torch.rand(3)
    torch.manual_seed(999)
    train_sae(model, SITE, train_tokens, small(total_tokens=256 * 2))
    assert torch.equal(torch.rand(3), expected)
    cache_activations(model, train_tokens[:40], [SITE], tmp_path / "acts", progress=False)
    torch.manual_seed(999)
    train_from_cache(tmp_path / "acts", [DictionarySpec(SITE)], small(total_tokens=256 * 2))
    assert torch.equal(torch.rand(3), expected)


class _NumberedRows(ActivationStore):
    """A store whose every computed row holds its own serial number, to follow rows through."""

    computed = 0

    def _activations(self, index):
        rows = len(index) * (self.tokens.shape[1] - self.first)
        serial = torch.arange(self.computed, self.computed + rows, dtype=torch.float32)
        self.computed += rows
        return {name: serial[:, None].repeat(1, 2) for name in self.hook_names}


@pytest.mark.parametrize("model_batch_size, batch_size, buffer_tokens", [(3, 8, 40), (16, 8, 40), (2, 7, 30)])
def test_the_store_serves_every_computed_row_once(model_batch_size, batch_size, buffer_tokens):
    """No row the model computed is dropped or served twice: a fill's rows beyond what it needs
    (the rest of its last model batch, the tail of a sequence it cut) wait for the next fill, and the
    rows of a served half that make no whole batch stay in the buffer. Before, the zoo's dictionaries
    (512-token rows, the default config) were trained on 80% of the rows the model computed."""
    tokens = torch.zeros(37, 11, dtype=torch.long)  # 10 rows per sequence after the first position
    store = _NumberedRows(nn.Identity(), tokens, SITE, batch_size=batch_size, buffer_tokens=buffer_tokens,
                          model_batch_size=model_batch_size)  # fmt: skip
    served = torch.cat([batch[SITE][:, 0] for batch, _ in zip(store, range(60))])
    assert len(served) == 60 * batch_size
    assert len(served.unique()) == len(served)  # none twice
    # every computed row is served or waiting: in the buffer, or computed past the last fill's need
    assert store.computed - len(served) <= buffer_tokens + model_batch_size * 10


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "relu"])
def test_training_reduces_loss_and_keeps_decoder_rows_unit_norm(model, train_tokens, architecture):
    cfg = small(architecture=architecture, l0_coeff=1e-2, l1_coeff=1.0)
    store = ActivationStore(
        model, train_tokens, SITE, batch_size=cfg.batch_size, buffer_tokens=cfg.buffer_tokens, seed=0
    )
    sae_cfg = sc.SAEConfig("topk" if architecture == "topk" else "jumprelu" if "jump" in architecture or "batch" in architecture else "standard",
                           d_in=64, d_sae=256, hook_name=SITE, k=8 if architecture == "topk" else None)  # fmt: skip
    trainer = SAETrainer(store, cfg, sae_cfg)
    losses = []
    for batch, _ in zip(store, range(cfg.n_steps)):
        losses.append(trainer.step(batch).mse)
        norms = trainer.dictionary.W_dec.norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


@pytest.mark.parametrize("architecture", ["batchtopk", "matryoshka_batchtopk"])
def test_export_folds_normalisation_exactly(model, train_tokens, architecture):
    cfg = small(architecture=architecture)
    store = ActivationStore(
        model, train_tokens, SITE, batch_size=cfg.batch_size, buffer_tokens=cfg.buffer_tokens
    )
    trainer = SAETrainer(store, cfg, sc.SAEConfig("jumprelu", d_in=64, d_sae=256, hook_name=SITE))
    for batch, _ in zip(store, range(10)):
        trainer.step(batch)
    assert trainer.scale_in != 1.0
    sae = trainer.export()
    d = trainer.dictionary.eval()
    x = store.sample(300)[SITE]
    with torch.no_grad():
        h = d.pre_acts(x * trainer.scale_in)
        f_train = h * (h > d.batch_threshold)
        y_train = d.decode(f_train) / trainer.scale_out
        assert torch.allclose(sae.encode(x), f_train, atol=1e-4)
        assert torch.allclose(sae(x), y_train, atol=1e-4)


def test_saved_format_with_sparsity_loads_back(model, train_tokens, tmp_path):
    sae = train_sae(model, SITE, train_tokens, small(architecture="topk"))
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 8 and sae.cfg.d_sae == 256
    assert sae.cfg.metadata["sae_circuits_training"]["architecture"] == "topk"
    sae.save(tmp_path)
    assert (tmp_path / "sparsity.safetensors").is_file()
    back = sc.SAE.load(tmp_path)
    assert back.sparsity is not None and back.sparsity.shape == (256,) and (back.sparsity <= 0).all()
    with sc.spliced(model, [back]):
        model(train_tokens[:2])


def test_transcoder_training(model, train_tokens):
    tc = train_transcoder(
        model, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", train_tokens, small()
    )
    assert tc.cfg.architecture == "jumprelu_transcoder" and tc.cfg.hook_name_out == "blocks.0.hook_mlp_out"
    with pytest.raises(ValueError, match="no TopK transcoder"):
        train_transcoder(
            model,
            "blocks.0.ln2.hook_normalized",
            "blocks.0.hook_mlp_out",
            train_tokens,
            small(architecture="topk"),
        )


def test_bad_training_input(model, train_tokens):
    with pytest.raises(ValueError, match="unknown hook name"):
        train_sae(model, "blocks.0.hook_nope", train_tokens, small())
    with pytest.raises(ValueError, match="integer tensor"), unchecked():  # the library's own message
        train_sae(model, SITE, train_tokens.float(), small())
    with pytest.raises(ValueError, match="buffer_tokens=100 must be at least"):
        small(buffer_tokens=100)
    with pytest.raises(ValueError, match="architecture='gelu'"):
        small(architecture="gelu")


@pytest.mark.parametrize(
    ("field", "value"),
    [("geometric_median_samples", 0), ("lr", float("nan")), ("lr", float("inf")), ("grad_clip", float("nan")),
     ("aux_k", 0), ("aux_k", -1), ("log_every", 0), ("jumprelu_bandwidth", 0.0), ("jumprelu_init_threshold", -0.1),
     ("d_sae", 3.5), ("d_sae", True), ("k", True), ("seed", 0.5), ("l1_coeff", -1.0), ("l0_coeff", -1.0),
     ("aux_coeff", float("nan")), ("dead_after_tokens", 0), ("warmup_steps", -1), ("progress", "no"),
     ("decay_fraction", 1.5)],
)  # fmt: skip
def test_configs_that_would_train_nan_or_fail_late_are_refused_by_name(field, value):
    """Each of these had been accepted: NaN weights (no geometric-median samples, a NaN or infinite
    rate), a failure mid-run (aux_k < 0, log_every 0, bandwidth 0), or a silent change (aux_k 0 read
    as the default, dead_after_tokens 0 marking every feature dead)."""
    with pytest.raises(ValueError, match=f"^{field}="):
        small(**{field: value})
    with pytest.raises(ValueError, match="k=32 must be at most d_sae=16"):
        small(architecture="batchtopk", k=32, d_sae=16)


def test_constructing_a_trainer_leaves_the_global_rng_alone(model, train_tokens):
    cfg = small(architecture="topk")
    store = ActivationStore(
        model, train_tokens, SITE, batch_size=cfg.batch_size, buffer_tokens=cfg.buffer_tokens
    )
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = SAETrainer(store, cfg, sc.SAEConfig("topk", d_in=64, d_sae=256, hook_name=SITE, k=8))
    assert torch.equal(torch.rand(3), expected)
    again = SAETrainer(store, cfg, sc.SAEConfig("topk", d_in=64, d_sae=256, hook_name=SITE, k=8))
    assert torch.equal(first.dictionary.W_dec, again.dictionary.W_dec)  # seeded by cfg.seed


def test_jumprelu_learns_its_threshold_directly_and_keeps_it_non_negative(model, train_tokens):
    """A learned log(threshold) moved by Adam's ~lr steps changes a small threshold by a factor of
    exp(lr * steps) at most; the threshold itself moves by ~lr per step. The parameter is projected
    to >= 0 before each step, and the exported threshold is the learned one."""
    cfg = small(architecture="jumprelu", lr=3e-3, warmup_steps=1)
    store = ActivationStore(
        model, train_tokens, SITE, batch_size=cfg.batch_size, buffer_tokens=cfg.buffer_tokens
    )
    trainer = SAETrainer(store, cfg, sc.SAEConfig("jumprelu", d_in=64, d_sae=256, hook_name=SITE))
    threshold = trainer.dictionary.get_parameter("threshold")
    assert torch.equal(threshold.detach(), torch.full((256,), cfg.jumprelu_init_threshold))
    batches = iter(store)
    for _ in range(10):
        trainer.step(next(batches))
    moved = (threshold.detach() - cfg.jumprelu_init_threshold).abs().max()
    assert moved > 5 * cfg.lr  # a log parameter would move it by at most 0.01 * (exp(0.03) - 1) = 3e-4
    with torch.no_grad():
        threshold[:8] = -1.0
    trainer.step(next(batches))
    assert float(threshold.detach()[:8].min()) > -2 * cfg.lr  # projected to 0, then one Adam step
    sae = trainer.export()
    assert float(sae.threshold.detach().min()) >= 0


def test_training_several_dictionaries_from_one_stream_equals_training_each(model, train_tokens):
    specs = [DictionarySpec(SITE), DictionarySpec("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")]
    together = train_dictionaries(model, specs, train_tokens, small())
    alone = train_sae(model, SITE, train_tokens, small())
    for name, tensor in alone.state_dict().items():
        assert torch.equal(together[0].state_dict()[name], tensor), name
    assert together[1].cfg.is_transcoder and together[1].cfg.site == "blocks.1.hook_mlp_out"


def test_geometric_median_resists_outliers():
    points = torch.cat(
        [torch.randn(200, 3) * 0.01 + torch.tensor([1.0, 2.0, 3.0]), torch.full((20, 3), 100.0)]
    )
    assert torch.allclose(geometric_median(points), torch.tensor([1.0, 2.0, 3.0]), atol=0.05)
    assert not torch.allclose(points.mean(0), torch.tensor([1.0, 2.0, 3.0]), atol=1.0)


def test_stop_layer_runs_no_more_than_needed():
    assert stop_layer("blocks.0.hook_resid_post") == 1
    assert stop_layer("blocks.1.ln2.hook_normalized", "blocks.3.hook_mlp_out") == 4
    assert stop_layer("hook_embed") is None


def test_aux_k_revives_dead_features(model, train_tokens):
    """With every feature marked dead, AuxK is the only sparsity term and it must be non-zero."""
    cfg = small(architecture="topk")
    store = ActivationStore(
        model, train_tokens, SITE, batch_size=cfg.batch_size, buffer_tokens=cfg.buffer_tokens
    )
    trainer = SAETrainer(store, cfg, sc.SAEConfig("topk", d_in=64, d_sae=256, hook_name=SITE, k=8))
    trainer.tokens_since_fired.fill_(10**9)
    batch = next(iter(store))
    x = batch[SITE] * trainer.scale_in
    h = trainer.dictionary.pre_acts(x)
    residual = x - trainer.dictionary.decode(trainer.dictionary.activate(h))
    assert trainer._sparsity_loss(h, None, residual).item() > 0
    trainer.tokens_since_fired.zero_()
    assert trainer._sparsity_loss(h, None, residual).item() == 0


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_sparse_decode_matches_dense_values_and_gradients(architecture):
    from sae_circuits.train.trainer import SparseCode, TrainableDictionary

    torch.manual_seed(0)
    cfg = small(architecture=architecture, k=5)
    d = TrainableDictionary(16, 16, 64, cfg, torch.zeros(16), transcoder=False)
    x = torch.randn(32, 16)
    h = d.pre_acts(x)
    code = d.activate(h)
    assert isinstance(code, SparseCode)
    dense = code.dense()
    assert (dense > 0).sum() > 0 and (dense != 0).sum() <= 5 * 32
    sparse_out, dense_out = d.decode(code), dense @ d.W_dec + d.b_dec
    assert torch.allclose(sparse_out, dense_out, atol=1e-5)
    g_sparse = torch.autograd.grad(sparse_out.pow(2).sum(), [d.W_dec, d.W_enc], retain_graph=True)
    g_dense = torch.autograd.grad(dense_out.pow(2).sum(), [d.W_dec, d.W_enc])
    for a, b in zip(g_sparse, g_dense):
        assert torch.allclose(a, b, atol=1e-4)


def test_aux_k_on_dead_columns_matches_the_dense_definition(model, train_tokens):
    cfg = small(architecture="topk", aux_k=6)
    store = ActivationStore(
        model, train_tokens, SITE, batch_size=cfg.batch_size, buffer_tokens=cfg.buffer_tokens
    )
    trainer = SAETrainer(store, cfg, sc.SAEConfig("topk", d_in=64, d_sae=256, hook_name=SITE, k=8))
    dead = torch.zeros(256, dtype=torch.bool)
    dead[::3] = True
    trainer.tokens_since_fired[dead] = 10**9
    x = next(iter(store))[SITE] * trainer.scale_in
    h = trainer.dictionary.pre_acts(x)
    residual = torch.randn_like(x)
    # dense reference: top aux_k of h over the dead features only, decoded through W_dec
    masked = h.masked_fill(~dead, float("-inf"))
    values, indices = masked.topk(6, dim=-1)
    f_aux = torch.zeros_like(h).scatter(-1, indices, values.relu())
    reference = (f_aux @ trainer.dictionary.W_dec - residual).pow(2).sum(-1).mean()
    reference = reference / residual.pow(2).sum(-1).mean() * residual.shape[-1]
    assert torch.allclose(trainer._aux_k_loss(h, residual), reference, rtol=1e-5)


def test_a_device_that_does_not_exist_is_named_before_training():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA devices")
    with pytest.raises(ValueError, match=r"device 'cuda:1' does not exist"):
        sc.TrainConfig(device="cuda:1")
    with pytest.raises(ValueError, match=r"device 'tpu' is not a device name"):
        sc.TrainConfig(device="tpu")


def test_learning_rate_schedule(model, train_tokens):
    """Warm-up from lr / warmup_steps, constant, then linear decay whose last step is
    lr / decay_steps (0 would be reached one step past the end), never increasing after warm-up."""
    cfg = small(total_tokens=256 * 100, warmup_steps=10, decay_fraction=0.2, lr=1e-3)
    store = ActivationStore(
        model, train_tokens, SITE, batch_size=cfg.batch_size, buffer_tokens=cfg.buffer_tokens
    )
    trainer = SAETrainer(store, cfg, sc.SAEConfig("topk", d_in=64, d_sae=256, hook_name=SITE, k=8))
    rates = [trainer.lr_at(step) for step in range(cfg.n_steps)]
    assert cfg.n_steps == 100
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[10:81] == [pytest.approx(1e-3)] * 71
    assert rates[99] == pytest.approx(1e-3 / 20)
    assert all(b < a for a, b in zip(rates[80:], rates[81:]))


@pytest.mark.parametrize("block, batch_size, buffer_tokens", [(5, 4, 18), (50, 6, 24), (7, 8, 16)])
def test_ranks_share_each_shuffled_batch_and_serve_every_row_once(block, batch_size, buffer_tokens):
    """The shuffle buffer that the store and the disk cache share: blocks of any size (model
    batches, shards) become batches in which every row comes once, and the ranks' parts of one
    global batch (``part``) partition it."""
    from sae_circuits.train.activations import Rows, shuffle_buffer

    def blocks():
        for first in range(0, 10**6, block):
            yield {SITE: torch.arange(first, first + block, dtype=torch.float32)[:, None]}

    def stream(part=slice(None)):
        rows = Rows(blocks(), [SITE])
        return shuffle_buffer(rows, buffer_tokens, batch_size, torch.Generator().manual_seed(0), part)

    whole = torch.cat([b[SITE][:, 0] for b, _ in zip(stream(), range(50))])
    assert len(whole.unique()) == len(whole) == 50 * batch_size
    assert int(whole.max()) < len(whole) + buffer_tokens + block  # nothing skipped
    half = batch_size // 2
    ranks = [stream(slice(0, half)), stream(slice(half, batch_size))]
    for batch, first, second in zip(stream(), *ranks):
        assert torch.equal(torch.cat([first[SITE], second[SITE]]), batch[SITE])
        if int(batch[SITE][0, 0]) > 2000:
            break
