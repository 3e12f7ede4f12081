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
            (
                dict(features={"a": (SITES[1], [1, 2]), "a[1]": (SITES[1], 5)}),
                ValueError,
                r"trace column names collide .*'a\[1\]' \(watches \['a', 'a\[1\]'\]\)",
            ),
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


PROMPTS = ["def parse(self):", "import os\nfor name in os.listdir(path):"]  # row 0 is left-padded


@torch.no_grad()
@pytest.mark.parametrize("kind", ["hooked", "bridge"])
def test_left_padding_is_not_monitored(kind, request):
    """A batch of prompts of different lengths, left-padded by ``generate``: the padded row's
    firings, with the cache on and off, are those of the row run alone at positions shifted by its
    pads; pads never fire, have no trace row, cannot stop the run nor start an edit."""
    model = request.getfixturevalue(kind)
    saes = _saes()
    watches = _everything(saes)
    with sc.spliced(model, saes):
        with monitor(model, watches, THRESHOLD) as mon:
            batch = {cache: _generate(model, PROMPTS, cache=cache, n=3)[0] for cache in (True, False)}
            alone = _generate(model, PROMPTS[0], cache=True, n=3)[0]
        with monitor(model, watches, THRESHOLD, on_fire="stop") as stop:
            stop.generate(PROMPTS, max_new_tokens=3, **GREEDY)
        with monitor(model, watches, THRESHOLD, on_fire="clamp", value=1.0):
            steered = [_generate(model, prompts, cache=True, n=3) for prompts in (PROMPTS, PROMPTS[0])]
    pads = batch[True].shape[1] - alone.shape[1]
    assert pads > 0 and torch.equal(batch[True][0, pads:], alone[0])
    assert torch.equal(batch[False], batch[True])
    firings, trace = mon.firings, mon.trace()
    want = [f for f in firings if f.sequence == 2]
    assert len(want) > 50
    for s in (0, 1):
        got = [f for f in firings if f.sequence == s and f.row == 0]
        assert [(f.position - pads, *_key(f)[2:]) for f in got] == [_key(f)[1:] for f in want]
        assert [f.activation for f in got] == pytest.approx([f.activation for f in want], abs=1e-4)
        positions = [t.position for t in trace if t.sequence == s and t.row == 0]
        assert positions == list(range(pads, batch[True].shape[1] - 1))
    assert stop.stopped is not None and stop.stopped.position >= pads * (stop.stopped.row == 0)
    # row 0 steered in the batch is row 0 steered alone: no clamp started at a pad
    assert torch.equal(steered[0][0][0, pads:], steered[1][0][0])
    assert torch.allclose(steered[0][1][0], steered[1][1][0], atol=1e-4)


@torch.no_grad()
def test_generate_given_embeddings_records_generated_tokens_after_the_prompt(hooked, tokens):
    """The prompt's positions have token -1, the generated tokens their absolute positions, with
    the cache on and off; the activations are those of a generation from the prompt's tokens."""
    sae = _saes()[1]
    prompt = tokens[:1, :5]
    with sc.spliced(hooked, [sae]), monitor(hooked, [(sae, list(range(256)))], THRESHOLD) as mon:
        from_tokens = _generate(hooked, prompt, cache=False, n=3)[0]
        # (TransformerLens's cached generation from embeddings drifts from the tokens' one)
        generated = [_generate(hooked, hooked.embed(prompt), cache=cache, n=3)[0] for cache in (False, True)]
    assert torch.equal(generated[0][0], from_tokens[0, 5:])
    trace = [[t for t in mon.trace() if t.sequence == s] for s in (0, 1, 2)]
    for s, output in ((1, generated[0]), (2, generated[1])):
        expected = [-1] * 5 + output[0, :-1].tolist()
        assert [(t.position, t.token) for t in trace[s]] == list(enumerate(expected))
        firings = [f for f in mon.firings if f.sequence == s]
        assert max(f.position for f in firings) >= 5  # some fire at generated tokens
        assert [f.token for f in firings] == [expected[f.position] for f in firings]
    assert [list(t.activations.values()) for t in trace[1]] == [
        pytest.approx(list(t.activations.values()), abs=1e-4) for t in trace[0]
    ]


@torch.no_grad()
def test_the_threshold_is_compared_the_same_way_everywhere(model, tokens):
    """A threshold that is not a float32 value is rounded once: firings, stop and the trace agree
    even for an activation equal to the rounded threshold."""
    sae = _saes()[1]
    with sc.spliced(model, [sae]):
        with monitor(model, [(sae, list(range(256)))], THRESHOLD) as mon:
            model(tokens[:1])
        top = max(mon.firings, key=lambda f: f.activation)
        threshold = top.activation - 1e-9  # float32(threshold) == top.activation
        assert float(torch.tensor(threshold)) == top.activation
        with monitor(model, [(sae, top.feature)], threshold) as mon:
            model(tokens[:1])
        with monitor(model, [(sae, top.feature)], threshold, on_fire="stop"):
            model(tokens[:1])  # does not stop
    assert mon.watches[0].threshold == top.activation
    assert [f.position for f in mon.firings] == [t.position for t in mon.trace() if t.fired]
    assert top.position not in [f.position for f in mon.firings]


@torch.no_grad()
@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_a_nan_activation_is_saved_as_null(model, tokens, tmp_path, suffix):
    sae = _saes()[1]
    sae.W_enc.data[:, 7] = float("nan")
    with sc.spliced(model, [sae]), monitor(model, {"f": (sae, [7, 50])}) as mon:
        model(tokens[:1, :4])
    assert all(math.isnan(t.activations["f[7]"]) for t in mon.trace())
    loaded = load_trace(mon.save(tmp_path / f"trace.{suffix}"))
    assert [t.activations["f[7]"] for t in loaded] == [None] * 4
    assert [t._replace(activations={}) for t in loaded] == [t._replace(activations={}) for t in mon.trace()]
    assert [t.activations["f[50]"] for t in loaded] == [t.activations["f[50]"] for t in mon.trace()]


@torch.no_grad()
def test_a_callable_sees_a_pass_of_every_site_in_the_order_of_firings(model, tokens):
    """Two sites: the callable gets the firings of a whole pass, both sites together, sorted as
    :attr:`Monitor.firings`; a stop comes after the pass (no site's positions are missing)."""
    saes = _saes()
    seen: list[Firing] = []
    stop_at = tokens.shape[1] // 2 + 1  # a step of generation

    def on_fire(firing: Firing):
        seen.append(firing)
        return "stop" if firing.position >= stop_at else None

    with sc.spliced(model, saes), monitor(model, _everything(saes), THRESHOLD, on_fire=on_fire) as mon:
        out = mon.generate(tokens[:1, : stop_at - 1], max_new_tokens=4, **GREEDY)
    assert seen == mon.firings and {f.site for f in seen} == set(SITES)
    assert mon.stopped == next(f for f in seen if f.position >= stop_at)
    assert out.shape[1] == stop_at + 1
    assert all(None not in t.activations.values() for t in mon.trace())
