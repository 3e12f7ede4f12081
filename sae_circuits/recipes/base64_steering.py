"""The dictionary-learning paper's classic on the embedded model: find the base64 feature and pin
it at its maximum observed activation while generating from English/code prompts; count the
continuations that contain a base64-looking run.

A base64-looking run: at least 16 characters of the base64 alphabet with no space, mixing upper
case, lower case and digits.

:func:`measure_state` does the same through an automaton's *state* (:func:`find_base64_state`:
the state of ``sc.automaton(model, corpus_texts("base64", 200, 128)[0], grouping=True)`` that best
separates base64 from English/code): every member, at every layer, is pinned, greedy and sampled
decoding are both measured, and the distinct-character ratio of the continuations tells a real
base64-like run from a degenerate repetition.
"""

from __future__ import annotations

import base64
import random
import re
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_circuits.features import feature_activations, max_activation, selective_features
from sae_circuits.interventions import ablate, clamp, intervene
from sae_circuits.languages.texts import PROMPTS, probe_texts
from sae_circuits.sae import SAE
from sae_circuits.splice import spliced

_RUN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")  # "=" only as the padding at the end


def looks_like_base64(text: str) -> bool:
    """Whether ``text`` holds a run of 16+ base64 characters mixing upper, lower case and digits."""
    return any(
        re.search("[A-Z]", run) and re.search("[a-z]", run) and re.search("[0-9]", run)
        for run in _RUN.findall(text)
    )


def _token_rows(model: nn.Module, texts: list[str], length: int) -> Tensor:
    """``[text, length]`` tokens (no BOS) of the texts that have at least ``length`` tokens."""
    rows = [cast(Any, model).to_tokens(t, prepend_bos=False)[0, :length] for t in texts]
    rows = [r for r in rows if r.numel() == length]
    return torch.stack(rows)


@dataclass
class Base64Steering:
    """Result of the base64 steering measurement."""

    site: str
    feature: int
    value: float
    rate_in: float
    """Firing rate of the feature on base64 tokens."""
    rate_out: float
    """Firing rate on English/code tokens."""
    fraction_without: float
    """Continuations that contain a base64-looking run, without the clamp."""
    fraction_with: float
    """The same with the feature pinned at ``value`` from the last prompt token on."""
    n_prompts: int
    samples: list[tuple[str, str, str]]
    """(prompt, continuation without, continuation with) for the first prompts."""


@torch.no_grad()
def find_base64_feature(
    model: nn.Module, saes: list[SAE], length: int = 64
) -> tuple[SAE, int, float, float, float]:
    """The (SAE, feature) most selective for base64 text over English/code, with its firing
    rates and its maximum observed activation (on the base64 probe text). The steering prompts
    are left out of the English/code side: the feature is chosen on other text than it is tested on."""
    blobs, other = _selection_texts()
    blob_tokens, other_tokens = _token_rows(model, blobs, length), _token_rows(model, other, min(length, 16))
    best = None
    for sae in saes:
        acts_in = feature_activations(model, sae, blob_tokens)[:, 8:]  # skip the blob's first tokens
        acts_out = feature_activations(model, sae, other_tokens)
        index, rate_in, rate_out = selective_features(acts_in, acts_out, k=1)[0]
        if best is None or rate_in - rate_out > best[2] - best[3]:
            best = (sae, index, rate_in, rate_out, max_activation(acts_in, [index])[0])
    assert best is not None
    return best


@torch.no_grad()
def measure(
    model: nn.Module,
    saes: list[SAE],
    max_new_tokens: int = 40,
    prompts: list[str] | None = None,
    progress: bool = False,
) -> Base64Steering:
    """Find the base64 feature, then generate greedily from each prompt with and without it pinned
    (``progress``: a bar over the prompts on stderr)."""
    prompts = prompts or PROMPTS
    sae, feature, rate_in, rate_out, value = find_base64_feature(model, saes)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, verbose=False, stop_at_eos=False)
    hits = {False: 0, True: 0}
    samples = []
    tl = cast(Any, model)  # HookedTransformer or TransformerBridge: its TL API is not on nn.Module
    with spliced(model, [sae]):
        bar = tqdm(prompts, desc="base64 steering", unit="prompt", disable=not progress, leave=False)
        for i, prompt in enumerate(bar):
            tokens = tl.to_tokens(prompt, prepend_bos=False)
            n = tokens.shape[1]
            plain = tl.to_string(tl.generate(tokens, **kwargs)[0, n:])
            with intervene(model, [clamp(sae, feature, value, positions=slice(n - 1, None))]):
                pinned = tl.to_string(tl.generate(tokens, **kwargs)[0, n:])
            hits[False] += looks_like_base64(plain)
            hits[True] += looks_like_base64(pinned)
            if i < 3 or i == 10:
                samples.append((prompt, plain, pinned))
    return Base64Steering(
        sae.cfg.site, feature, value, rate_in, rate_out,
        hits[False] / len(prompts), hits[True] / len(prompts), len(prompts), samples,
    )  # fmt: skip


# --------------------------------------------------------------------------- through states

PinRule = Literal["max", "p90", "mean"]
PIN_RULES: tuple[PinRule, ...] = ("max", "p90", "mean")


@dataclass
class Base64StateSteering:
    """Pinning a whole base64 *state* (every member feature, at every layer) during generation."""

    state: int
    """Id of the state in the automaton (:func:`find_base64_state`)."""
    members: list[tuple[str, int]]
    rate_in: float
    """Firing rate of the state (any member active) on base64 tokens."""
    rate_out: float
    """Firing rate on English/code tokens."""
    rule: str
    """How the pin values were chosen: each member's ``max``, 90th percentile (``p90``) or
    ``mean`` activation where it fires on the base64 probe text."""
    pin_values: list[float]
    """Per member, the value it is pinned at."""
    fraction_without: dict[str, float]
    """Per decoding (``greedy``, ``sampled``): continuations with a base64-looking run, unpinned."""
    fraction_with: dict[str, float]
    """The same with the state pinned from the last prompt token on."""
    distinct_without: dict[str, float]
    """Per decoding: mean distinct-character ratio of the continuations (``len(set(s)) / len(s)``;
    a degenerate repetition is near 0), unpinned."""
    distinct_with: dict[str, float]
    """The same, pinned."""
    n_prompts: int
    samples: list[tuple[str, str, str]]
    """(prompt, sampled continuation without, with) for the first prompts."""
    exclusive: bool = False
    """Whether every member of the automaton's other states was set to 0 where the state was pinned."""


def _selection_texts() -> tuple[list[str], list[str]]:
    """The probe texts that choose the feature or state: base64 blobs, and English/code without the
    steering prompts (which measure it)."""
    blobs, other = probe_texts()
    return blobs, [text for text in other if text not in PROMPTS]


def _state_firing(
    model: Any, fsa: Any, tokens: Tensor, skip: int = 0
) -> tuple[Tensor, dict[tuple[str, int], Tensor]]:
    """``(tokens, states)`` firing and each member's activations on ``tokens`` ``[batch, pos]``,
    run whole, of the positions from ``skip`` on."""
    sites = sorted({site for s in fsa.states for site, _ in s.members})
    names = {f"{site}.hook_sae_acts_post" for site in sites}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    acts = {
        (site, index): cache[f"{site}.hook_sae_acts_post"][:, skip:, index].reshape(-1)
        for s in fsa.states
        for site, index in s.members
    }
    fires = torch.stack([torch.stack([acts[m] > 0 for m in s.members]).any(0) for s in fsa.states], dim=1)
    return fires, acts


@torch.no_grad()
def find_base64_state(
    model: nn.Module, fsa: Any, length: int = 64
) -> tuple[Any, float, float, dict[str, list[float]]]:
    """The state of ``fsa`` that best separates base64 from English/code (largest firing-rate
    difference on the probe texts, as :func:`find_base64_feature` for single features), its two
    rates, and its pin values under each rule of ``PIN_RULES`` (from its members' activations
    where they fire on the base64 probe text; a member that never fires there gets the state's
    ``max_activation``)."""
    blobs, other = _selection_texts()
    blob_tokens, other_tokens = _token_rows(model, blobs, length), _token_rows(model, other, min(length, 16))
    fires_in, acts_in = _state_firing(
        model, fsa, blob_tokens, skip=8
    )  # the blob's first tokens: no context yet
    fires_out, _ = _state_firing(model, fsa, other_tokens)
    rate_in, rate_out = fires_in.float().mean(0), fires_out.float().mean(0)
    best = int((rate_in - rate_out).argmax())
    state = fsa.states[best]
    values: dict[str, list[float]] = {rule: [] for rule in PIN_RULES}
    for member in state.members:
        active = acts_in[member][acts_in[member] > 0].float()
        if active.numel() == 0:
            for rule in PIN_RULES:
                values[rule].append(float(state.max_activation))
            continue
        values["max"].append(float(active.max()))
        values["p90"].append(float(active.quantile(0.9)))
        values["mean"].append(float(active.mean()))
    return state, float(rate_in[best]), float(rate_out[best]), values


def _distinct_char_ratio(text: str) -> float:
    return len(set(text)) / max(len(text), 1)


@torch.no_grad()
def measure_state(
    model: nn.Module,
    fsa: Any,
    rules: tuple[PinRule, ...] = PIN_RULES,
    max_new_tokens: int = 40,
    prompts: list[str] | None = None,
    seed: int = 0,
    progress: bool = False,
    exclusive: bool = False,
) -> list[Base64StateSteering]:
    """Pin the base64 state of ``fsa`` (all members, every layer) from the last prompt token on,
    under each pin-value rule, and generate ``max_new_tokens`` from each prompt, greedily and
    sampled at temperature 1 (seeded per prompt, the same seed pinned and unpinned; torch's global
    RNG is restored afterwards); count continuations with a base64-looking run.

    With ``exclusive``, every member of the automaton's *other* states is also set to 0 at those
    positions (the model's state replaced by the base64 one, as ``check_pairs`` does by default).
    On the embedded model it takes greedy decoding from 10% to 35% of the prompts (greedy's ceiling
    inside real base64 is 40%), in runs as repetitive as greedy base64 itself (``c0c0c0…``:
    distinct-character ratio 0.06, against 0.11 there); sampled decoding stays at 100%
    (benchmarks/bench_automata.py).

    ``model`` must have the automaton's dictionaries spliced.

    At a tiny size (the recipe: ``corpus_texts("base64", 200, 128)``, every layer, all prompts):

    >>> from sae_circuits.languages import corpus_texts
    >>> with sc.spliced(model, [sae]):
    ...     fsa = sc.automaton(model, corpus_texts("base64", 8, 48)[0], max_states=8, progress=False,
    ...                        attention_contexts=0, effect_contexts=4, effect_positions=4)
    ...     found = measure_state(model, fsa, rules=("max",), max_new_tokens=4, prompts=PROMPTS[:2])
    >>> [(r.rule, r.n_prompts, sorted(r.fraction_with)) for r in found]
    [('max', 2, ['greedy', 'sampled'])]
    """
    if not isinstance(exclusive, bool):
        raise TypeError(f"exclusive={exclusive!r} must be True or False")
    prompts = prompts or PROMPTS
    state, rate_in, rate_out, values = find_base64_state(model, fsa)
    own = set(state.members)
    others: dict[str, list[int]] = {}  # the other states' members, per site
    for other in fsa.states:
        for site, index in other.members:
            if other.id != state.id and (site, index) not in own:
                others.setdefault(site, []).append(index)
    tl = cast(Any, model)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, verbose=False, stop_at_eos=False)
    decodings: dict[str, dict[str, Any]] = {
        "greedy": dict(do_sample=False),
        "sampled": dict(do_sample=True, temperature=1.0),
    }

    def generate(tokens: Tensor, decoding: str, k: int) -> str:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + k)
            out = tl.generate(tokens, **kwargs, **decodings[decoding])
        return cast(str, tl.to_string(out[0, tokens.shape[1] :]))

    encoded = [tl.to_tokens(p, prepend_bos=False) for p in prompts]
    plain = {d: [generate(t, d, k) for k, t in enumerate(encoded)] for d in decodings}
    results = []
    for rule in tqdm(rules, desc="base64 state steering", unit="rule", disable=not progress, leave=False):
        pinned: dict[str, list[str]] = {d: [] for d in decodings}
        for k, tokens in enumerate(encoded):
            n = tokens.shape[1]
            pins = [
                clamp(site, index, value, positions=slice(n - 1, None))
                for (site, index), value in zip(state.members, values[rule])
            ]
            if exclusive:
                pins += [
                    ablate(site, sorted(set(ix)), positions=slice(n - 1, None)) for site, ix in others.items()
                ]
            with intervene(model, pins):
                for d in decodings:
                    pinned[d].append(generate(tokens, d, k))
        results.append(Base64StateSteering(
            state.id, list(state.members), rate_in, rate_out, rule, values[rule],
            {d: sum(map(looks_like_base64, plain[d])) / len(prompts) for d in decodings},
            {d: sum(map(looks_like_base64, pinned[d])) / len(prompts) for d in decodings},
            {d: sum(map(_distinct_char_ratio, plain[d])) / len(prompts) for d in decodings},
            {d: sum(map(_distinct_char_ratio, pinned[d])) / len(prompts) for d in decodings},
            len(prompts),
            [(prompts[k], plain["sampled"][k], pinned["sampled"][k]) for k in (0, 1, 10) if k < len(prompts)],
            exclusive,
        ))  # fmt: skip
    return results


class GreedyCeiling(NamedTuple):
    """What greedy decoding does inside genuine base64, with nothing pinned."""

    fraction: float
    """Continuations with a base64-looking run (:func:`looks_like_base64`)."""
    distinct: float
    """Mean distinct-character ratio of the continuations."""
    n_prompts: int


@torch.no_grad()
def greedy_ceiling(
    model: nn.Module, n_prompts: int = 20, max_new_tokens: int = 40, seed: int = 0
) -> GreedyCeiling:
    """The ceiling for greedy steering: continue ``n_prompts`` prompts that already hold 48
    characters of real base64 (``data = "…``, random bytes) greedily, unpinned. The next base64
    character is uniform, so its argmax is arbitrary and greedy text repeats itself; pinning a
    feature cannot make greedy text more base64-like than base64 itself makes it.

    >>> ceiling = greedy_ceiling(model, n_prompts=2, max_new_tokens=4)
    >>> ceiling.n_prompts, 0.0 <= ceiling.distinct <= 1.0
    (2, True)
    """
    rng = random.Random(seed)
    tl = cast(Any, model)
    outs = []
    for _ in range(n_prompts):
        blob = base64.b64encode(rng.randbytes(60)).decode()[:48]
        tokens = tl.to_tokens(f'data = "{blob}', prepend_bos=False)
        out = tl.generate(
            tokens, max_new_tokens=max_new_tokens, do_sample=False, verbose=False, stop_at_eos=False
        )
        outs.append(cast(str, tl.to_string(out[0, tokens.shape[1] :])))
    return GreedyCeiling(
        sum(map(looks_like_base64, outs)) / n_prompts,
        sum(map(_distinct_char_ratio, outs)) / n_prompts,
        n_prompts,
    )


MARK_BEGIN, MARK_END = "<!-- base64:begin -->", "<!-- base64:end -->"


def markdown(result: Base64Steering, seconds: float) -> str:
    """The model card's section for the measurement."""
    lines = [
        MARK_BEGIN,
        "## Steering: the base64 feature",
        "",
        "The dictionary-learning paper's classic, reproduced by "
        "`python -m sae_circuits.recipes.base64_steering`"
        f" ({seconds:.0f} s): the feature most selective for base64 text over English/code, among all"
        " residual"
        " SAEs, is pinned at its maximum observed activation from the last prompt token on, during greedy"
        " generation (KV cache on) of 40 tokens from 20 English and code prompts. A continuation counts when"
        " it holds a base64-looking run: 16+ characters of the base64 alphabet with no space, mixing upper"
        " case, lower case and digits.",
        "",
        f"- feature: `{result.site}` #{result.feature}; fires on {result.rate_in:.0%} of base64 tokens and"
        f" {result.rate_out:.1%} of English/code tokens; pinned at {result.value:.2f}",
        f"- continuations with a base64-looking run: **{result.fraction_without:.0%} without** the clamp,"
        f" **{result.fraction_with:.0%} with** it ({result.n_prompts} prompts)",
        "",
        "| prompt | without | pinned |",
        "|---|---|---|",
    ]
    for prompt, plain, pinned in result.samples:
        cells = [repr(t)[1:-1].replace("|", "\\|")[:70] for t in (prompt, plain, pinned)]
        lines.append("| `" + "` | `".join(cells) + "` |")
    lines += ["", MARK_END]
    return "\n".join(lines)


def main() -> Base64Steering:
    """Measure on the embedded model; write the result into its card.json and docs/zoo.md."""
    import json
    import time
    from dataclasses import asdict

    from sae_circuits import zoo
    from sae_circuits._files import atomic_write_text
    from sae_circuits.recipes.dictionaries import DOCS, replace_section

    torch.manual_seed(0)
    started = time.time()
    model, saes = zoo.load("tiny")
    result = measure(model, saes)
    seconds = time.time() - started
    card_path = zoo.model_path("tiny") / "card.json"
    card = json.loads(card_path.read_text())
    card["base64_steering"] = asdict(result)
    atomic_write_text(card_path, json.dumps(card, indent=2))
    replace_section(DOCS, MARK_BEGIN, MARK_END, markdown(result, seconds))
    print(f"{result.site} #{result.feature}: base64-looking continuations {result.fraction_without:.0%} "
          f"without, {result.fraction_with:.0%} pinned at {result.value:.2f}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
