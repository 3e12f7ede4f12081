"""Feature monitors: absolute positions, identical records with and without the KV cache, stop,
steer-on-fire equal to an explicit clamp/ablate, errors, clean exits and the trace export."""

from __future__ import annotations

import json
import math

import pytest
import torch

import sae_circuits as sc
from sae_circuits.monitor import Firing, MonitorStopped, load_trace, monitor
from tests.conftest import random_sae

SITES = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
GREEDY = dict(do_sample=False, verbose=False, stop_at_eos=False)
THRESHOLD = 0.05


def _saes() -> list[sc.SAE]:
    return [random_sae(hook_name=site, seed=i) for i, site in enumerate(SITES)]


def _everything(saes) -> dict[str, tuple]:
    return {f"l{i}": (sae, list(range(sae.cfg.d_sae))) for i, sae in enumerate(saes)}


def _key(firing: Firing) -> tuple:
    return firing.row, firing.position, firing.site, firing.feature, firing.token, firing.watch


def _generate(model, prompt, *, cache: bool, n: int = 8):
    out = model.generate(
        prompt, max_new_tokens=n, use_past_kv_cache=cache, output_logits=True, **GENERATE_TOKENS
    )
    return out.sequences, torch.stack(out.logits, dim=1)


GENERATE_TOKENS = dict(GREEDY, return_type="tokens")


@torch.no_grad()
@pytest.mark.parametrize("kind", ["hooked", "bridge"])
def test_records_are_identical_with_and_without_the_kv_cache(kind, request, tokens):
    model = request.getfixturevalue(kind)
    saes = _saes()
    prompt = tokens[:, :6]  # two rows
    with sc.spliced(model, saes), monitor(model, _everything(saes), THRESHOLD) as mon:
        cached, _ = _generate(model, prompt, cache=True)
        uncached, _ = _generate(model, prompt, cache=False)
    assert torch.equal(cached, uncached)
    first = [f for f in mon.firings if f.sequence == 0]
    second = [f for f in mon.firings if f.sequence == 1]
    assert len(first) > 50  # the random SAEs do fire
    assert [_key(f) for f in first] == [_key(f) for f in second]
    assert torch.allclose(
        torch.tensor([f.activation for f in first]), torch.tensor([f.activation for f in second]), atol=1e-4
    )
    # every fed position (prompt + generated but the last) once per row, in both runs
    trace = [(t.sequence, t.row, t.position) for t in mon.trace()]
    assert len(set(trace)) == len(trace) == 2 * 2 * (cached.shape[1] - 1)


KINDS = [("hooked", True), ("hooked", False), ("bridge", True)]


@torch.no_grad()
@pytest.mark.parametrize(("kind", "cache"), KINDS)
def test_firings_are_the_full_forward_pass_above_threshold(kind, cache, request, tokens):
    """Absolute positions: the firings of a generation are exactly ``acts > threshold`` of one
    forward pass over the final sequence (its last token is never fed, so it is left out)."""
    model = request.getfixturevalue(kind)
    saes = _saes()
    prompt = tokens[:, :5]
    with sc.spliced(model, saes):
        with monitor(model, _everything(saes), THRESHOLD) as mon:
            sequence, _ = _generate(model, prompt, cache=cache)
        names = [f"{site}.hook_sae_acts_post" for site in SITES]
        _, acts = model.run_with_cache(sequence[:, :-1].clone(), names_filter=names)
    expected = {}
    for site, name in zip(SITES, names):
        for row, position, feature in (acts[name] > THRESHOLD).nonzero().tolist():
            expected[row, position, site, feature] = float(acts[name][row, position, feature])
    got = {(f.row, f.position, f.site, f.feature): f for f in mon.firings}
    assert set(got) == set(expected)
    for key, firing in got.items():
        assert math.isclose(firing.activation, expected[key], abs_tol=1e-4)
        assert firing.token == int(sequence[firing.row, firing.position])
    trace = mon.trace()
    assert [(t.row, t.position) for t in trace] == [
        (r, p) for r in range(2) for p in range(sequence.shape[1] - 1)
    ]
    assert all(t.token == int(sequence[t.row, t.position]) for t in trace)


def _first_generated_firing(model, sae, prompt, n=10):
    """A feature that does not fire on the prompt but does during generation, and where it first
    fires; and the unmonitored generation."""
    with monitor(model, [(sae, list(range(sae.cfg.d_sae)))], THRESHOLD) as mon:
        plain = _generate(model, prompt, cache=True, n=n)
    first: dict[int, int] = {}
    for f in mon.firings:
        first.setdefault(f.feature, f.position)
    late = sorted((p, feature) for feature, p in first.items() if p >= prompt.shape[1] + 2)
    assert late, "no feature fires first during generation"
    position, feature = late[0]
    return feature, position, plain


@torch.no_grad()
@pytest.mark.parametrize(("kind", "cache"), KINDS)
def test_stop_halts_at_the_firing_step(kind, cache, request, tokens):
    model = request.getfixturevalue(kind)
    sae = _saes()[1]
    prompt = tokens[:1, :5]
    with sc.spliced(model, [sae]):
        feature, p, (plain, _) = _first_generated_firing(model, sae, prompt)
        finished = []  # forward passes that reached the end of the model
        final = model.hook_dict["ln_final.hook_normalized"]
        final.add_hook(lambda x, hook: finished.append(x.shape[1]))
        try:
            with monitor(model, [(sae, feature)], THRESHOLD, on_fire="stop") as mon:
                out = mon.generate(prompt, max_new_tokens=10, use_past_kv_cache=cache, **GREEDY)
                assert mon.stopped is not None and mon.stopped.position == p
                with pytest.raises(MonitorStopped) as stopped:  # a plain generate raises it
                    model.generate(prompt, max_new_tokens=10, use_past_kv_cache=cache, **GREEDY)
        finally:
            final.remove_hooks()
    assert torch.equal(out, plain[:, : p + 1])
    assert torch.equal(stopped.value.tokens, out) and stopped.value.firing == mon.stopped
    # the pass over position p was cut short: only the p - prompt + 1 earlier passes finished, twice
    assert len(finished) == 2 * (p - prompt.shape[1] + 1)
    assert {f.position for f in mon.firings} == {p}  # nothing was looked at after the firing


@torch.no_grad()
@pytest.mark.parametrize(("mode", "others"), [("ablate", []), ("clamp", []), ("ablate", [7, 50, 124])])
def test_steering_on_fire_equals_an_explicit_edit_from_the_firing_position(model, tokens, mode, others):
    """Each watched feature is edited in its row from its own first firing on (``others`` fire in
    the prompt too), with and without the cache, exactly as ``sc.ablate``/``sc.clamp`` would."""
    sae = _saes()[1]
    prompt = tokens[:1, :5]
    value = 3.0 if mode == "clamp" else None
    with sc.spliced(model, [sae]):
        feature, p, (_plain, plain_logits) = _first_generated_firing(model, sae, prompt)
        results, firings = {}, {}
        for cache in (True, False):
            with monitor(model, [(sae, [feature, *others])], THRESHOLD, on_fire=mode, value=value) as mon:
                results[cache] = _generate(model, prompt, cache=cache, n=10)
            firings[cache] = mon.firings
        assert [_key(f) for f in firings[True]] == [_key(f) for f in firings[False]]
        first: dict[int, int] = {}
        for f in firings[True]:
            first.setdefault(f.feature, f.position)
        if not others:
            assert first == {feature: p}
        make = sc.ablate if mode == "ablate" else lambda s, f, positions: sc.clamp(s, f, 3.0, positions)
        edits = [make(sae, f, positions=slice(q, None)) for f, q in first.items()]
        with sc.intervene(model, edits):
            explicit = _generate(model, prompt, cache=True, n=10)
    for cache, (seq, logits) in results.items():
        assert torch.equal(seq, explicit[0]), cache
        assert torch.allclose(logits, explicit[1], atol=1e-5), cache
    steps = max(min(first.values()) - prompt.shape[1] + 1, 0)  # logits before any firing: untouched
    assert torch.equal(explicit[1][:, :steps], plain_logits[:, :steps])
    assert not torch.allclose(explicit[1], plain_logits, atol=1e-4)


@torch.no_grad()
def test_a_callable_sees_every_firing_in_order_and_can_stop(model, tokens):
    sae = _saes()[1]
    prompt = tokens[:1, :5]
    seen: list[Firing] = []

    def on_fire(firing: Firing):
        seen.append(firing)
        return "stop" if firing.position >= 7 else None

    with sc.spliced(model, [sae]):
        with monitor(model, {"all": (sae, list(range(256)))}, THRESHOLD, on_fire=on_fire) as mon:
            out = mon.generate(prompt, max_new_tokens=10, **GREEDY)
        assert out.shape[1] == 8 and mon.stopped is not None and mon.stopped.position == 7
        assert seen == mon.firings and seen[-1].position == 7
        with monitor(model, [(sae, list(range(256)))], THRESHOLD, on_fire=lambda f: "halt") as mon:
            with pytest.raises(ValueError, match="on_fire returned 'halt'; expected None or 'stop'"):
                model(tokens)


@torch.no_grad()
def test_nests_with_intervene_in_either_order(model, tokens):
    sae = _saes()[1]
    site = SITES[1]
    with sc.spliced(model, [sae]):
        _, cache = model.run_with_cache(tokens, names_filter=f"{site}.hook_sae_acts_post")
        clean = cache[f"{site}.hook_sae_acts_post"][..., 11]
        with monitor(model, [(site, 11)], 0.0) as outer, sc.intervene(model, [sc.clamp(site, 11, 7.0)]):
            with monitor(model, [(site, 11)], 0.0) as inner:
                model(tokens)
    assert all(f.activation == 7.0 for f in inner.firings) and len(inner.firings) == tokens.numel()
    assert [(f.row, f.position) for f in outer.firings] == (clean > 0).nonzero().tolist()


def test_bad_input_is_refused_with_the_value_and_what_was_expected(model):
    sae = _saes()[1]
    with pytest.raises(ValueError, match=r"cannot monitor 'blocks.1.hook_resid_post'.*spliced sites: none"):
        with monitor(model, [(SITES[1], 3)]):
            pass
    with sc.spliced(model, [sae]):
        cases = [
            (
                dict(features=[(SITES[1], 256)]),
                ValueError,
                r"feature index 256 .* d_sae=256 \(valid: 0..255\)",
            ),
            (dict(features=[(SITES[0], 3)]), ValueError, r"'blocks.0.hook_resid_post'.*\['blocks.1"),
            (
                dict(features=[(SITES[1], 3)], threshold=-1),
                ValueError,
                r"threshold=-1.0: expected a number >= 0",
            ),
            (
                dict(features=[(SITES[1], 3)], threshold=float("nan")),
                ValueError,
                "threshold=nan must be finite",
            ),
            (
                dict(features=[(SITES[1], 3)], threshold="high"),
                TypeError,
                "threshold='high' must be a number",
            ),
            (dict(features={"a": (SITES[1], 3, -0.5)}), ValueError, r"threshold=-0.5"),
            (dict(features=[(SITES[1], 3)], on_fire="warn"), ValueError, r"on_fire='warn': expected one of"),
            (dict(features=[(SITES[1], 3)], on_fire="clamp"), ValueError, "needs value="),
            (dict(features=[(SITES[1], 3)], value=2.0), ValueError, "value=2.0 is only used with"),
            (dict(features=[]), ValueError, "features is empty"),
            (dict(features=(SITES[1], 3)), ValueError, r"watch 'blocks.1.hook_resid_post': expected \(site"),
            (dict(features=[(SITES[1], 3), (sae, [3, 4])]), ValueError, "feature 3 .* is watched twice"),
            (dict(features=[(SITES[1], -1)]), ValueError, "feature index -1 is negative"),
        ]
        for kwargs, error, message in cases:
            with pytest.raises(error, match=message):
                with monitor(model, **kwargs):
                    pass
        assert not sae.hook_sae_acts_post.fwd_hooks


@torch.no_grad()
def test_everything_is_removed_on_exit_even_after_an_exception(model, tokens):
    sae = _saes()[1]
    with sc.spliced(model, [sae]):
        before = model(tokens)
        with pytest.raises(RuntimeError, match="boom"):
            with monitor(model, [(sae, 3)], on_fire="ablate"):
                model(tokens)
                raise RuntimeError("boom")
        with pytest.raises(MonitorStopped):
            with monitor(model, [(sae, list(range(256)))], THRESHOLD, on_fire="stop"):
                model.generate(tokens[:1, :5], max_new_tokens=3, **GREEDY)
        assert not sae.hook_sae_acts_post.fwd_hooks
        assert not model.embed._forward_pre_hooks
        assert "forward" not in model.__dict__ and "generate" not in model.__dict__
        assert torch.equal(model(tokens), before)


@torch.no_grad()
@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_the_trace_round_trips(model, tokens, tmp_path, suffix):
    sae = _saes()[1]
    with sc.spliced(model, [sae]), monitor(model, {"pair": (sae, [7, 50]), "one": (sae, 204, 0.2)}) as mon:
        model.generate(tokens[:1, :5], max_new_tokens=4, **GREEDY)
        model(tokens)
    trace = mon.trace()
    path = mon.save(tmp_path / f"trace.{suffix}")
    assert load_trace(path) == trace
    assert {t.sequence for t in trace} == {0, 1} and len(trace) == 8 + tokens.numel()
    assert list(trace[0].activations) == ["pair[7]", "pair[50]", "one"]
    assert sum(len(t.fired) for t in trace) == len(mon.firings) > 0
    assert trace[0].text == model.tokenizer.decode([int(tokens[0, 0])])
    if suffix == "json":
        document = json.loads(path.read_text())
        assert [w["name"] for w in document["watches"]] == ["pair", "one"]
        assert len(document["firings"]) == len(mon.firings)
    with pytest.raises(ValueError, match=r"path='trace.csv': expected a .jsonl or .json"):
        mon.save("trace.csv")
