"""The feature dashboard on the tiny GPT-2 (real BPE tokenizer) with a random SAE that fires:
page contents checked against :mod:`sae_circuits.features`, steering against plain generation,
escaping of hostile tokens, input errors and atomic writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import torch

import sae_circuits as sc
from sae_circuits.dashboard import (
    _RIGHT,
    feature_dashboard,
    logit_effect_values,
    write_dashboard,
)
from sae_circuits.features import direct_logit_effects, feature_activations, logit_effects
from tests.conftest import random_sae

SITE = "blocks.0.hook_resid_post"
EVIL = "</script><script>alert(1)</script>"
TEXTS = [
    "def parse(self, text):\n    return text.split()",
    "import os\nfor name in os.listdir(path):\n    print(name)",
    f'html = "{EVIL}" & "it\'s"',
    "The quick brown fox jumps over the lazy dog.",
]
K, CONTEXT = 5, 6


def _data(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', html, re.DOTALL)
    assert match is not None
    return json.loads(match.group(1))


def _reference(model, sae) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Token rows and each row's activations of every feature, computed by features.py (unspliced)."""
    rows = [model.to_tokens(t, prepend_bos=False, truncate=False)[0] for t in TEXTS]
    return rows, [feature_activations(model, sae, row[None])[0] for row in rows]


def _feature(acts: list[torch.Tensor]) -> int:
    """A feature that fires on at least K tokens but not on most (a non-trivial density)."""
    fires = sum((a > 0).sum(0) for a in acts)
    n_tokens = sum(a.shape[0] for a in acts)
    candidates = [i for i, n in enumerate(fires.tolist()) if K <= n < n_tokens // 2]
    assert candidates, "the random SAE should have a moderately dense feature"
    return max(candidates, key=lambda i: int(fires[i]))


def test_page_contents_match_features(model):
    sae = random_sae()
    rows, acts = _reference(model, sae)
    f = _feature(acts)
    with sc.spliced(model, [sae]):
        html = feature_dashboard(model, SITE, f, TEXTS, k=K, context=CONTEXT, bins=12, steer_tokens=4)
    data = _data(html)
    assert SITE in html and "Feature dashboard" in html and '<svg id="hist">' in html
    assert data["site"] == SITE and data["feature"] == f and data["d_sae"] == 256
    assert data["architecture"] == "standard"

    values = torch.cat([a[:, f] for a in acts])  # [n_tokens]
    assert data["n_tokens"] == values.numel() and data["n_fired"] == int((values > 0).sum())
    assert data["density"] == pytest.approx(float((values > 0).float().mean()))
    assert data["max"] == pytest.approx(float(values.max()), abs=1e-5)
    hist = data["histogram"]
    assert len(hist["counts"]) == 12 and sum(hist["counts"]) == data["n_fired"]
    assert hist["lo"] == pytest.approx(float(values[values > 0].min()), abs=1e-5)

    contexts = data["contexts"]
    assert len(contexts) == K
    assert [c["activation"] for c in contexts] == pytest.approx(values.topk(K).values.tolist(), abs=1e-5)
    assert len({(c["text"], c["pos"]) for c in contexts}) == K  # distinct positions
    for c in contexts:
        text, pos = c["text"], c["pos"]
        lo, hi = max(0, pos - CONTEXT), min(len(rows[text]), pos + 1 + _RIGHT)
        assert len(c["tokens"]) == len(c["acts"]) == hi - lo and c["max_index"] == pos - lo
        assert c["acts"][c["max_index"]] == pytest.approx(c["activation"])
        assert c["acts"] == pytest.approx(acts[text][lo:hi, f].tolist(), abs=1e-5)
        shown = [
            t.replace("\n", "\u21b5").replace(" ", "\u00b7") for t in model.to_str_tokens(rows[text][lo:hi])
        ]
        assert c["tokens"] == shown

    promoted, suppressed = logit_effects(model, sae, f, k=10)
    assert data["promoted"]["tokens"] == promoted and data["suppressed"]["tokens"] == suppressed
    up, down = data["promoted"]["values"], data["suppressed"]["values"]
    assert up == sorted(up, reverse=True) and down == sorted(down) and up[-1] > down[-1]


def test_logit_effect_values_follow_logit_effects(model):
    sae = random_sae(seed=3)
    for f in (0, 17, 255):
        promoted, suppressed = logit_effect_values(model, sae, f, k=7)
        assert (promoted.tokens, suppressed.tokens) == logit_effects(model, sae, f, k=7)
        weights = direct_logit_effects(model, sae.W_dec[f][None].detach())[0]
        assert promoted.values[0] == pytest.approx(float(weights.max() - weights.median()), abs=1e-5)


def test_direct_logit_effects_are_the_models_own_through_the_final_layernorm(model):
    """Adding a direction to the final residual (the LayerNorm's scale held fixed) changes the
    logits by exactly the effect times 1/scale; ``W_dec @ W_U`` alone, which leaves out the
    unfolded LayerNorm's gain and centring, ranks other tokens first."""
    assert model.cfg.normalization_type == "LN"  # the embedded model keeps its final LayerNorm
    sae = random_sae(seed=3)
    tokens = model.to_tokens("The quick brown fox", prepend_bos=True)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=[last, "ln_final.hook_scale"])
        resid, scale = cache[last][0, -1].double(), cache["ln_final.hook_scale"][0, -1].double()
        w, b = model.ln_final.w.double(), model.ln_final.b.double()
        w_u = model.W_U.double()
        differ = 0
        for f in (0, 17, 255):
            d = sae.W_dec[f].detach().double()
            shifted = resid + d
            frozen = ((shifted - shifted.mean()) / scale * w + b) @ w_u  # the scale held fixed
            plain = ((resid - resid.mean()) / scale * w + b) @ w_u
            effect = direct_logit_effects(model, sae.W_dec[f][None].detach())[0].double()
            assert torch.allclose(frozen - plain, effect / scale, atol=1e-4)
            naive = d @ w_u
            differ += set(naive.topk(10).indices.tolist()) != set(effect.topk(10).indices.tolist())
        assert torch.allclose(plain + model.b_U.double(), logits[0, -1].double(), atol=1e-3)
    assert differ > 0


def test_steering_changes_generation_and_plain_is_greedy(model):
    sae = random_sae()
    _, acts = _reference(model, sae)
    f = _feature(acts)
    prompts = [TEXTS[0], TEXTS[3]]
    kwargs = {"max_new_tokens": 10, "do_sample": False, "verbose": False, "stop_at_eos": False}
    greedy = []
    for prompt in prompts:  # the unspliced model
        tokens = model.to_tokens(prompt, prepend_bos=False)
        greedy.append(model.to_string(model.generate(tokens, **kwargs)[0, tokens.shape[1] :]))
    with sc.spliced(model, [sae]):
        data = _data(feature_dashboard(model, SITE, f, TEXTS, steer_prompts=prompts, steer_tokens=10,
                                       steer_value=50.0))  # fmt: skip
        default = _data(feature_dashboard(model, SITE, f, TEXTS[:2], steer_tokens=3))
    assert [s["prompt"] for s in data["steering"]] == prompts and data["steer_value"] == 50.0
    assert [s["plain"] for s in data["steering"]] == greedy
    assert all(s["steered"] != s["plain"] for s in data["steering"])
    # Default prompts: the first three texts' first 8 tokens, clamped at the max activation.
    first8 = [model.to_string(model.to_tokens(t, prepend_bos=False)[0, :8]) for t in TEXTS[:2]]
    assert [s["prompt"] for s in default["steering"]] == first8 and default["steer_value"] == default["max"]


def test_hostile_tokens_are_escaped(model):
    sae = random_sae()
    _, acts = _reference(model, sae)
    densest = int(sum((a > 0).sum(0) for a in acts).argmax())  # its top contexts cover every text
    with sc.spliced(model, [sae]):
        html = feature_dashboard(model, SITE, densest, TEXTS, k=40, steer_prompts=[EVIL], steer_tokens=2)
    assert "<script>alert(1)" not in html and "alert(1)</script>" not in html
    assert html.count("<script") == 2 and html.count("</script>") == 2  # only the page's own
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in html
    assert "http://" not in html and "https://" not in html
    assert "default-src 'none'" in html and "innerHTML" not in html
    data = _data(html)
    assert data["steering"][0]["prompt"] == EVIL  # the JSON still carries the text exactly
    tokens = [t for c in data["contexts"] for t in c["tokens"]]
    assert "\n" not in "".join(tokens) and any("\u21b5" in t for t in tokens)


def test_token_rows_and_bos(model):
    sae = random_sae()
    rows = [model.to_tokens(t, prepend_bos=False)[0] for t in TEXTS]
    with sc.spliced(model, [sae]):
        a = _data(feature_dashboard(model, SITE, 5, TEXTS, steer_prompts=[]))
        b = _data(feature_dashboard(model, SITE, 5, [r.tolist() for r in rows], steer_prompts=[]))
        bos = _data(feature_dashboard(model, SITE, 5, TEXTS, steer_prompts=[], prepend_bos=True))
    assert a == b and a["steering"] == []
    assert bos["n_tokens"] == a["n_tokens"] + len(TEXTS)


def test_silent_feature(model):
    """A feature that never fires on the texts still gets a page: no contexts, an empty histogram."""
    sae = random_sae()
    _, acts = _reference(model, sae)
    silent = int(sum((a > 0).sum(0) for a in acts).argmin())
    with sc.spliced(model, [sae]):
        data = _data(feature_dashboard(model, SITE, silent, TEXTS, bins=4, steer_tokens=2))
    assert data["n_fired"] == 0 and data["density"] == 0 and data["max"] == 0 and data["contexts"] == []
    assert data["histogram"]["counts"] == [0] * 4 and len(data["steering"]) == 3


def test_bad_inputs(model):
    sae = random_sae()
    with pytest.raises(
        ValueError, match=r"no SAE is spliced at 'blocks.0.hook_resid_post'; spliced sites: none"
    ):
        feature_dashboard(model, SITE, 0, TEXTS)
    with sc.spliced(model, [sae]):
        with pytest.raises(
            ValueError, match=r"'blocks.1.hook_resid_post'; spliced sites: \['blocks.0.hook_resid_post'\]"
        ):
            feature_dashboard(model, "blocks.1.hook_resid_post", 0, TEXTS)
        with pytest.raises(ValueError, match=r"feature=256 is out of range .*\(d_sae=256\)"):
            feature_dashboard(model, SITE, 256, TEXTS)
        with pytest.raises(ValueError, match=r"feature=-1 is out of range"):
            feature_dashboard(model, SITE, -1, TEXTS)
        with pytest.raises(ValueError, match="texts is empty"):
            feature_dashboard(model, SITE, 0, [])
        with pytest.raises(TypeError, match="list of strings"):
            feature_dashboard(model, SITE, 0, "one string")
        with pytest.raises(ValueError, match=r"texts\[1\] is \d+ tokens long .* n_ctx=128"):
            feature_dashboard(model, SITE, 0, ["fine", "word " * 200])
        with pytest.raises(ValueError, match=r"texts\[0\] has no tokens"):
            feature_dashboard(model, SITE, 0, [""])
        with pytest.raises(ValueError, match=r"steer_value=-1.0 must be a finite number >= 0"):
            feature_dashboard(model, SITE, 0, TEXTS, steer_value=-1.0)
        with pytest.raises(ValueError, match=r"k=0 must be an int >= 1"):
            feature_dashboard(model, SITE, 0, TEXTS, k=0)
        with pytest.raises(ValueError, match=r"steer_prompts\[0\] .* exceeds n_ctx=128"):
            feature_dashboard(model, SITE, 0, TEXTS, steer_prompts=["word " * 10], steer_tokens=120)


def test_write_dashboard_is_atomic(model, tmp_path, full_disk):
    sae = random_sae()
    path = tmp_path / "feature.html"
    with sc.spliced(model, [sae]):
        assert write_dashboard(model, SITE, 5, TEXTS, path, steer_prompts=[]) == path
        page = path.read_text(encoding="utf-8")
        assert _data(page)["feature"] == 5
        full_disk()
        with pytest.raises(OSError, match="No space left"):
            write_dashboard(model, SITE, 6, TEXTS, path, steer_prompts=[])
    assert path.read_text(encoding="utf-8") == page and sorted(tmp_path.iterdir()) == [path]


def test_page_renders_in_a_browser(model, tmp_path):
    """Headless Chromium runs the page's JS: one span per context token, each max outlined, a title
    on every token, no console error or CSP refusal, and nothing from the data executed."""
    if shutil.which("chromium") is None:
        if os.environ.get("SAE_CIRCUITS_BROWSER_TESTS") == "1":  # `make test`: missing = failure
            raise RuntimeError("this test needs Debian's chromium (make test installs it)")
        pytest.skip("no chromium here")
    sae = random_sae()
    path = tmp_path / "page.html"
    f = _feature(_reference(model, sae)[1])
    with sc.spliced(model, [sae]):
        write_dashboard(model, SITE, f, TEXTS, path, k=K, steer_prompts=[EVIL], steer_tokens=2)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    done = subprocess.run(
        ["chromium", *flags, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    dom, data = done.stdout, _data(path.read_text(encoding="utf-8"))
    assert ":CONSOLE" not in done.stderr, done.stderr  # an uncaught error or a CSP refusal
    n_tokens = sum(len(c["tokens"]) for c in data["contexts"])
    assert f'data-rendered-tokens="{n_tokens}"' in dom and 'data-rendered-contexts="5"' in dom
    assert dom.count('class="tok') == dom.count('title="activation ') == n_tokens
    assert dom.count('class="tok max"') == len(data["contexts"]) == K and dom.count("<rect") == 30
    assert "<script>alert(1)" not in dom and "&lt;/script&gt;&lt;script&gt;alert(1)" in dom


def test_long_work_shows_progress_unless_told_not_to(model, capsys):
    texts = ["def parse(self, text):\n    return text.split()", "import os\nfor x in y:"]
    with sc.spliced(model, [random_sae(hook_name=SITE)]):
        sc.feature_dashboard(model, SITE, 3, texts, steer_tokens=2, batch_size=1)
        shown = capsys.readouterr().err
        sc.feature_dashboard(model, SITE, 3, texts, steer_tokens=2, batch_size=1, progress=False)
        quiet = capsys.readouterr().err
    assert "dashboard: activations" in shown and "dashboard: steering" in shown
    assert "dashboard:" not in quiet


def test_an_attention_z_feature_acts_through_its_heads_output_matrix(model):
    """A hook_z SAE's decoder rows are per-head z vectors: what they add to the residual stream is
    row @ W_O; sending them straight into W_U ranked nonsense (an MLP hidden site crashed)."""
    from sae_circuits.features import residual_directions

    sae = random_sae(hook_name="blocks.0.attn.hook_z", reshape_activations="hook_z", seed=2)
    w_o = model.blocks[0].attn.W_O.detach()
    for f in (0, 9):
        expected = torch.einsum("hd,hdm->m", sae.W_dec[f].detach().reshape(w_o.shape[:2]), w_o)
        assert torch.allclose(residual_directions(model, sae, [f])[0], expected, atol=1e-5)
        weights = direct_logit_effects(model, expected[None])[0]
        promoted, _ = logit_effect_values(model, sae, f, k=5)
        assert promoted.values[0] == pytest.approx(float(weights.max() - weights.median()), abs=1e-4)
    hidden = random_sae(hook_name="blocks.0.mlp.hook_post", d_in=model.cfg.d_mlp, seed=2)
    with pytest.raises(
        ValueError, match=r"'blocks.0.mlp.hook_post' \(width \d+\) does not write to the residual"
    ):
        logit_effect_values(model, hidden, 0)
