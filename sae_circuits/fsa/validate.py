"""Causal check of automaton transitions: pin the source state, see whether the destination follows.

For a pair ``A -> B`` (a transition of the automaton or any pair of its states):

1. **Prompts.** ``n_prompts`` windows of the corpus (``fsa.tokens``) that end at a position where
   A is off (with at least ``context - 1`` earlier tokens in its text), drawn at random (fixed by
   ``seed``). By default (``window="crop"``) a window is the last ``context`` tokens, placed at
   the model's first positions, so all windows batch with no padding (BOS in front when the
   automaton was extracted with one). The features read there are not exactly those of the
   corpus: on ten languages of docs/automata.md, 8-27% of the states firing at a window's last
   position in its full text were off in the 32-token crop, and more fired that did not (a
   layer-0 feature that is shell's PIPE state fired at every `` |`` after a command in the texts
   and at none in the crops, while the model's probability of `` |`` moved by 0.01).
   ``window="prefix"`` makes a window its text from the start (BOS, when the extraction had one,
   then the text's tokens up to the position), so every state fires at its last position as it
   fired in the extraction (up to floating point; a test checks it on the uncached path); a
   window then also needs room for the ``steps`` generated tokens in the model's context. Random
   positions rarely share a length, so the prompts run in nearly one batch each, and longer: on
   the eleven languages of docs/automata.md (seed 1) it cost 3.5-6x, and it confirmed 196 of
   their 262 checked true transitions against the crop's 198 (-2 to +2 per language) and 4
   non-transitions against 5 (docs/automata.md, Method, item 6), so the crop stays the default.
2. **Rollouts.** From every prompt, ``steps`` tokens are generated greedily (one row per prompt)
   and at temperature 1 (``samples`` rows per prompt, drawn with a seeded generator), all rows (of
   one prompt length) in one batch, once with nothing pinned and once with *every* member of A
   (each at its site, all layers) clamped at its pin value (``State.pin_values``, else
   ``max_activation``; times ``pin_scale``) at the last prompt position and at every generated
   position but the last, and
   (``exclusive``, the default) every member of the *other* states set to 0 there: the model's
   automaton state is replaced by A, not A added on top of the state it was in. Measured on the
   embedded model with 20 prompts and B read as any member (benchmarks/bench_automata.py),
   replacing confirmed 14/18 true markup transitions and 3/18 non-transitions (adding: 11/18 and
   3/18), and 9/10 and 0/10 on kvlog (adding: 8/10 and 2/10). Both rollouts start from
   the same seed, so pinned and unpinned rows draw the same random numbers.
3. **Reading B.** B fires at a position as the extraction defines it: when at least half of its
   members are active there (any member, for an automaton extracted with ``grouping=False`` or
   built by hand, whose states' firing is their members' union). It is read at every
   position right after a pinned one, from a forward pass in which that position itself is *not*
   pinned (A is pinned there only afterwards, before the next token is generated): what is
   measured is what A at t does to t+1, through the token it makes the model emit and through
   attention, not what a clamp at t+1 does to the later layers of t+1. The unpinned rollout reads
   the same positions of an ordinary generation.
4. **Effect.** Per prompt, B's firing rate over the ``steps`` read positions (and the ``samples``
   draws), pinned minus unpinned; the effect is its mean over the prompts, with a t-based
   ``confidence`` interval (the prompts are the independent units), for greedy and sampled decoding
   separately. The pair is **confirmed** when, for the primary decoding (``decoding``, sampled by
   default: it follows the model's whole next-token distribution rather than its single top
   token), the interval's lower bound is above 0 *and* the effect is at least ``min_effect`` (so a
   significant but negligible shift does not count) and B is observed after A (6.) -- or when the
   necessity arm (5.) confirms.
5. **Necessity** (``necessity=True``, the default): ``n_prompts`` other windows, ending where A
   *fires*, are rolled out as they are and with every member of A set to 0 (the other states left
   alone) at the same positions; the removal effect is B's natural firing rate there minus its rate
   with A removed, tested the same way. Pinning asks "is A enough to bring B?", removal "does B,
   where it follows A, need A's features?". A branch that the context chooses (after a tag's
   ``>`` comes text or a newline, depending on what is open) can fail the first: pinned into an
   arbitrary window A brings its main successor only. It can still pass the second. A non-transition
   can hardly pass the second, because B hardly ever follows A to begin with (the windows use each
   position where A fires once, so a rare A cannot confirm from one window repeated). On the
   embedded model with 40 prompts, the necessity arm confirmed one more true markup transition
   (CLOSE -> TEXT) and one more kvlog one (COLON -> KEY), and no non-transition
   (benchmarks/bench_automata.py, each arm read from ``PairCheck.pin_confirmed`` and
   ``removal_confirmed``).
6. **Observed.** The pin alone confirms only when B also follows A in those natural rollouts at
   least once (``PairCheck.observed``). A pinned into an arbitrary window is a state the model may
   never visit, and B can follow it there while the model never goes from A to B on its own: on
   the five held-out languages of the bench, 5 of the 10 non-transitions that the pin had confirmed
   (sexpr NEWLINE -> FN3 and ARG3 -> END, shell REDIR -> ARG, query CCOL -> OCOL, ini HDR_NL ->
   BLANK) had a natural rate of exactly 0, while every true transition the pin confirmed, on all
   seven languages, had one above 0. A rare source (few windows where it fires) or greedy decoding
   (one rollout per window) gives few draws, so a real but rare branch can go unobserved. Without
   the necessity arm (``necessity=False``, or fewer than two windows where A fires) nothing is
   observed and the pin confirms alone.

Why ``steps=1`` by default: a read at t+2 comes after A was pinned at t+1 *on top of* the state
the model really reached there (a successor S of A), so two-step paths A -> S -> B count as
``A -> B`` and the non-transitions' confirm rate rises; on the embedded model the mean effect on
true transitions was also no larger with 2 or 3 steps (benchmarks/bench_automata.py). Several
steps remain available (``steps=3``: A pinned on 3 positions, B read on 3).

Cost: pairs that share a source share their prompts and the four rollouts (unpinned and pinned;
natural and removed, from the necessity arm's own windows); every state's firing is read at once.
With a HookedTransformer the rollouts use its KV cache (each arm's prompt, less its last token,
runs once per source and prompt length for both of its rollouts; then one token per row per
pass); other models (a TransformerBridge) recompute the whole sequence at each pass, with the same
result.

>>> with sc.spliced(model, saes):
...     fsa = sc.automaton(model, texts[:4], max_states=8, attention_contexts=0,
...                        effect_contexts=2, effect_positions=4)
...     checks = check_pairs(fsa, model, [(0, 1), (0, 2)], n_prompts=4, context=8, samples=2)
>>> [(c.src, c.dst, c.decoding, c.prompts.shape) for c in checks]
[(0, 1, 'sampled', torch.Size([4, 8])), (0, 2, 'sampled', torch.Size([4, 8]))]
>>> checks[0].prompts.equal(checks[1].prompts)   # one source: one set of prompts and rollouts
True
>>> all(c.sampled.ci[0] <= c.sampled.effect <= c.sampled.ci[1] for c in checks)
True
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from jaxtyping import Bool, Float, Float64, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_circuits._caller import user_stacklevel
from sae_circuits._model import check_model, check_token_ids
from sae_circuits.interventions import ablate, clamp, intervene
from sae_circuits.positions import check_seed, is_int
from sae_circuits.splice import saes_of

if TYPE_CHECKING:  # the automaton's types; at run time they are checked by shape, since
    # ``FeatureAutomaton.validate`` imports this module (no import cycle either way)
    from sae_circuits.fsa.automaton import FeatureAutomaton, State, Transition

logger = logging.getLogger(__name__)

Decoding = Literal["sampled", "greedy"]
Window = Literal["prefix", "crop"]


@dataclass(frozen=True)
class Effect:
    """What pinning the source does to the destination's firing, under one decoding."""

    pinned: float
    """Destination's firing rate at the positions read, source pinned (mean over prompts)."""
    unpinned: float
    """The same without the pin (an ordinary generation from the same prompts and seed)."""
    effect: float
    """``pinned - unpinned``: the mean over prompts of each prompt's difference."""
    ci: tuple[float, float]
    """Two-sided t-interval of ``effect`` at the check's ``confidence`` (prompts as units)."""
    p_value: float
    """One-sided p-value of "effect > 0" (paired t-test, prompts as units; NaN with one prompt)."""


@dataclass(frozen=True)
class Removal:
    """What removing the source where it fires does to the destination (the necessity arm)."""

    natural: float
    """Destination's firing rate at the read positions of rollouts from windows that end where the
    source fires, nothing edited (with ``steps=1``: right after the source)."""
    removed: float
    """The same with every member of the source set to 0 where the pin arm would pin (the last
    prompt position and the first ``steps - 1`` generated ones)."""
    effect: float
    """``natural - removed``: the mean over prompts of each prompt's difference."""
    ci: tuple[float, float]
    """Two-sided t-interval of ``effect`` at the check's ``confidence`` (prompts as units)."""
    p_value: float
    """One-sided p-value of "effect > 0" (paired t-test, prompts as units; NaN with one prompt)."""
    n_prompts: int
    """Windows used: each corpus position where the source fires at most once, so fewer than the
    check's ``n_prompts`` when the source fires rarely."""


@dataclass(frozen=True)
class PairCheck:
    """The causal check of one ``src -> dst`` pair (:func:`check_pairs`)."""

    src: int
    """Source state id (the state pinned)."""
    dst: int
    """Destination state id (the state read)."""
    greedy: Effect
    """Greedy continuations (one per prompt)."""
    sampled: Effect | None
    """Continuations sampled at temperature 1 (``samples`` per prompt); None when ``samples=0``."""
    decoding: Decoding
    """Which decoding decides ``confirmed`` (and is ``effect``)."""
    confirmed: bool
    """``(pin_confirmed and observed is not False) or removal_confirmed``: the features bring B
    (either arm), and, when the necessity arm ran, the model is seen to go from A to B on its own."""
    prompts: Int[Tensor, "n_prompts pos"]
    """The prompt windows (shared by every pair with this source), left-padded with -1 to the
    longest where they differ in length (``window="prefix"``)."""
    pin_confirmed: bool = False
    """Sufficiency: the primary pin effect's interval is above 0 and the effect is at least
    ``min_effect``."""
    removal_greedy: Removal | None = None
    """The necessity arm on greedy continuations (None when ``necessity=False`` or the source
    never fires with enough context before it)."""
    removal_sampled: Removal | None = None
    """The necessity arm on sampled continuations (None as above, or when ``samples=0``)."""
    removal_confirmed: bool = False
    """Necessity: the primary decoding's removal effect has its interval above 0 and is at least
    ``min_effect``."""
    observed: bool | None = None
    """Whether B ever follows A (within ``steps`` tokens) in the model's own rollouts: the
    necessity arm's natural rate (primary decoding) is above 0. None when that arm did not run;
    the pin arm then confirms alone. A pin can create a state the model never visits (A pinned
    into any window) and find B after it; ``observed=False`` keeps such a pair from confirming by
    the pin."""

    @property
    def primary(self) -> Effect:
        """The effect of the primary decoding (``decoding``)."""
        if self.decoding == "sampled":
            assert self.sampled is not None  # check_pairs refuses decoding="sampled" with samples=0
            return self.sampled
        return self.greedy

    @property
    def effect(self) -> float:
        """The primary effect (what ``Transition.effect`` stores)."""
        return self.primary.effect

    @property
    def removal(self) -> Removal | None:
        """The necessity arm under the primary decoding (None when it did not run)."""
        return self.removal_sampled if self.decoding == "sampled" else self.removal_greedy


def validate(
    fsa: FeatureAutomaton,
    model: nn.Module,
    transitions: Sequence[Transition] | None = None,
    *,
    top: int = 50,
    n_prompts: int = 40,
    context: int = 32,
    steps: int = 1,
    samples: int = 8,
    min_effect: float = 0.02,
    confidence: float = 0.95,
    decoding: Decoding = "sampled",
    pin_scale: float = 1.0,
    exclusive: bool = True,
    necessity: bool = True,
    window: Window = "crop",
    seed: int = 0,
    kv_cache: bool | None = None,
    progress: bool = True,
) -> FeatureAutomaton:
    """Check transitions causally (module docstring) and store the verdicts on them.

    Checks ``transitions`` (by default the ``top`` heaviest) with :func:`check_pairs` and sets, on
    each: ``effect`` and ``effect_ci`` (the primary decoding's, ``decoding``), ``effect_greedy``,
    ``effect_sampled``, ``effect_removed``, ``effect_removed_ci`` and ``observed`` (the necessity
    arm's, None when it did not run) and ``confirmed``. Transitions of one pair (both mechanisms)
    get one check. The settings go to ``fsa.metadata["validation"]``. Returns ``fsa``.

    Args: as :func:`check_pairs`; ``top``: how many of the heaviest transitions to check when
    ``transitions`` is None.

    >>> with sc.spliced(model, saes):
    ...     fsa = sc.automaton(model, texts[:4], max_states=8, attention_contexts=0,
    ...                        effect_contexts=2, effect_positions=4)
    ...     fsa = fsa.validate(model, top=2, n_prompts=4, context=8, samples=2)
    >>> checked = [t for t in fsa.transitions if t.effect is not None]
    >>> len(checked), fsa.metadata["validation"]["checked"]
    (2, 2)
    >>> all(isinstance(t.confirmed, bool) and len(t.effect_ci) == 2 for t in checked)
    True
    """
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise ValueError(f"top={top!r} must be an integer >= 0")
    chosen = (
        list(transitions)
        if transitions is not None
        else sorted(fsa.transitions, key=lambda t: -t.weight)[:top]
    )
    for k, t in enumerate(chosen):
        if not all(hasattr(t, field) for field in ("src", "dst", "weight")):
            raise TypeError(f"transitions[{k}] is a {type(t).__name__}; expected a Transition")
    column = {s.id: i for i, s in enumerate(fsa.states)}
    for k, t in enumerate(chosen):  # named by the caller's index, before duplicates are folded
        _pair((t.src, t.dst), k, column, what="transitions")
    pairs = list(dict.fromkeys((t.src, t.dst) for t in chosen))
    checks = check_pairs(
        fsa, model, pairs, n_prompts=n_prompts, context=context, steps=steps, samples=samples,
        min_effect=min_effect, confidence=confidence, decoding=decoding, pin_scale=pin_scale,
        exclusive=exclusive, necessity=necessity, window=window, seed=seed, kv_cache=kv_cache,
        progress=progress,
    )  # fmt: skip
    by_pair = {(c.src, c.dst): c for c in checks}
    for t in chosen:
        c = by_pair[t.src, t.dst]
        t.effect, t.effect_ci, t.confirmed = c.effect, c.primary.ci, c.confirmed
        t.effect_greedy = c.greedy.effect
        t.effect_sampled = None if c.sampled is None else c.sampled.effect
        t.effect_removed = None if c.removal is None else c.removal.effect
        t.effect_removed_ci = None if c.removal is None else c.removal.ci
        t.observed = c.observed
    fsa.metadata["validation"] = {
        "n_prompts": n_prompts, "context": context, "steps": steps, "samples": samples,
        "min_effect": min_effect, "confidence": confidence, "decoding": decoding, "pin_scale": pin_scale,
        "exclusive": exclusive, "necessity": necessity, "window": window, "seed": seed,
        "checked": len(chosen),
    }  # fmt: skip
    return fsa


def check_pairs(
    fsa: FeatureAutomaton,
    model: nn.Module,
    pairs: Sequence[tuple[int, int]],
    *,
    n_prompts: int = 40,
    context: int = 32,
    steps: int = 1,
    samples: int = 8,
    min_effect: float = 0.02,
    confidence: float = 0.95,
    decoding: Decoding = "sampled",
    pin_scale: float = 1.0,
    exclusive: bool = True,
    necessity: bool = True,
    window: Window = "crop",
    seed: int = 0,
    kv_cache: bool | None = None,
    progress: bool = True,
) -> list[PairCheck]:
    """Pin each pair's source state and measure its destination's firing (module docstring).

    The pairs need not be transitions of ``fsa``: any ``(src, dst)`` state ids, e.g. the pairs of
    a true automaton's table and its non-transitions, to measure the confirm rate on both.

    Args:
        fsa: an automaton extracted by :func:`sae_circuits.automaton` (it keeps its corpus tokens).
        model: the model it was extracted from, with the same dictionaries spliced.
        pairs: ``(src, dst)`` state ids.
        n_prompts: prompt windows per source and arm (>= 2: the interval needs two; 40 by default;
            on markup 120 confirmed the same 13/18 true transitions by pinning as 40).
        context: tokens per prompt window (BOS not counted); with ``window="prefix"``, the fewest:
            a window ends at a position with at least ``context - 1`` earlier tokens in its text.
        steps: tokens generated per rollout; the source is pinned at the last prompt position and
            the first ``steps - 1`` generated ones, the destination read at the ``steps`` positions
            after them (see the module docstring for the default of 1).
        samples: sampled continuations per prompt (temperature 1); 0: greedy only.
        min_effect: smallest primary effect (in firing rate) that confirms; the interval above 0
            is what guards against chance. 0.02 (0.05 until 7 December 2026): over ten languages'
            bench checks, on two prompt-window seeds and a second corpus, it confirmed 1-7 more true
            transitions than 0.05 on markup, kvlog, sexpr, ini, asm and chemeq (each on at least
            one of the three) and confirmed no more non-transitions anywhere; 0.01 confirmed one
            more non-transition, on chemeq (docs/automata.md, Method, item 6).
        confidence: level of the two-sided intervals.
        decoding: which decoding confirms, ``"sampled"`` or ``"greedy"``.
        pin_scale: multiplies every pin value (``> 1`` overdrives the state).
        exclusive: also set every member of the *other* states to 0 at the pinned positions
            (the default: the automaton's state is then A alone, not A on top of the real state).
        necessity: also run the necessity arm (module docstring, step 5); a pair is then confirmed
            by either arm, the pin arm only where B is observed after A (step 6).
        window: ``"crop"`` (a prompt is the ``context`` tokens ending at the position) or
            ``"prefix"`` (its text from the start: the positions and context the extraction read
            the states in; it must leave room for the ``steps`` generated tokens in the model's
            context; 3.5-6x the cost; module docstring, step 1).
        seed: fixes the prompt windows and the sampled tokens.
        kv_cache: use the model's KV cache (None: when it is a HookedTransformer).
        progress: a progress bar over the sources.

    Returns one :class:`PairCheck` per pair, in order.

    >>> with sc.spliced(model, saes):
    ...     fsa = sc.automaton(model, texts[:4], max_states=8, attention_contexts=0,
    ...                        effect_contexts=2, effect_positions=4)
    ...     checks = check_pairs(fsa, model, [(0, 1), (0, 2)], n_prompts=4, context=8, samples=2)
    >>> [(c.src, c.dst, c.effect == c.sampled.effect, type(c.confirmed)) for c in checks]
    [(0, 1, True, <class 'bool'>), (0, 2, True, <class 'bool'>)]
    """
    _check_arguments(fsa, model, n_prompts, context, steps, samples, min_effect, confidence, decoding, seed)
    if isinstance(pin_scale, bool) or not isinstance(pin_scale, (int, float)) or not 0 < pin_scale < 1e6:
        raise ValueError(
            f"pin_scale={pin_scale!r} must be a number in (0, 1e6) (1: the pin values as they are)"
        )
    for name, flag in (("necessity", necessity), ("exclusive", exclusive)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}={flag!r} must be True or False")
    if kv_cache is not None and not isinstance(kv_cache, bool):
        raise TypeError(f"kv_cache={kv_cache!r} must be None (automatic), True or False")
    if window not in ("prefix", "crop"):
        raise ValueError(f"window={window!r}; expected 'prefix' (the text from its start) or 'crop'")
    column = {s.id: i for i, s in enumerate(fsa.states)}
    pairs = [_pair(p, k, column) for k, p in enumerate(pairs)]
    use_cache = _supports_cache(model) if kv_cache is None else bool(kv_cache)
    if use_cache and not _supports_cache(model):
        raise ValueError(
            f"kv_cache=True needs a HookedTransformer (its past_kv_cache); got {type(model).__name__}"
        )
    n_ctx = int(cast(Any, model).cfg.n_ctx)
    if context + int(_bos(fsa, model) is not None) + steps > n_ctx:
        raise ValueError(
            f"context={context} (+ BOS) + steps={steps} tokens exceed the model's context of {n_ctx}"
        )
    longest = n_ctx - steps if window == "prefix" else None  # prompt tokens, BOS included
    probe = _Probe(fsa, model, use_cache)
    started = time.perf_counter()
    results: dict[tuple[int, int], PairCheck] = {}
    sources = list(dict.fromkeys(src for src, _ in pairs))
    for src in tqdm(sources, desc="causal checks", unit="source", disable=not progress, leave=False):
        state = fsa.states[column[src]]
        prompts = _windows(fsa, model, column[src], n_prompts, context, seed, longest=longest)
        if prompts.shape[0] < n_prompts:
            warnings.warn(
                f"state {src} is off at only {prompts.shape[0]} positions with {context - 1} earlier tokens "
                + ("(and room for the generated tokens) " if window == "prefix" else "")
                + f"in their text: its checks use {prompts.shape[0]} prompts, not n_prompts={n_prompts} "
                f"(each window once: a repeated one would narrow the interval without new evidence)",
                stacklevel=user_stacklevel(),
            )
        pins = _pins(state, pin_scale)
        draw = seed * 100_003 + column[src]
        plain, pinned = probe.compare(prompts, pins, steps, samples, draw, bool(exclusive))
        removal = None
        if necessity:
            removal = _removal(
                fsa, model, probe, column[src], state, n_prompts, context, steps, samples, seed, longest
            )
        for dst in [d for s, d in pairs if s == src]:
            greedy, sampled = _effects(pinned, plain, column[dst], confidence)
            removal_greedy, removal_sampled = _removals(removal, column[dst], confidence)
            primary = sampled if decoding == "sampled" else greedy
            removal_primary = removal_sampled if decoding == "sampled" else removal_greedy
            assert primary is not None
            by_pin = _significant(primary, min_effect)
            by_removal = removal_primary is not None and _significant(removal_primary, min_effect)
            observed = None if removal_primary is None else removal_primary.natural > 0
            results[src, dst] = PairCheck(
                src, dst, greedy, sampled, decoding, (by_pin and observed is not False) or by_removal,
                prompts.cpu(), by_pin, removal_greedy, removal_sampled, by_removal, observed,
            )  # fmt: skip
    logger.info(
        "causal checks: %d pairs, %d sources, %.1f s",
        len(results),
        len(sources),
        time.perf_counter() - started,
    )
    return [results[p] for p in pairs]


# --------------------------------------------------------------------------- arguments


def _check_arguments(
    fsa: Any, model: Any, n_prompts: Any, context: Any, steps: Any, samples: Any,
    min_effect: Any, confidence: Any, decoding: Any, seed: Any,
) -> None:  # fmt: skip
    if not all(hasattr(fsa, field) for field in ("states", "transitions", "state")):
        raise TypeError(f"expected a FeatureAutomaton (sc.automaton), got {type(fsa).__name__}")
    if model is None:
        raise TypeError(
            "a causal check needs the model the automaton was extracted from (with its dictionaries "
            "spliced): validate(fsa, model) or fsa.validate(model); got model=None"
        )
    check_model(model)
    if fsa.tokens is None:
        raise ValueError(
            "this automaton keeps no corpus tokens (fsa.tokens is None) to draw prompts from; "
            "extract it with sc.automaton, which keeps them"
        )
    if not fsa.states:
        raise ValueError("this automaton has no states to check")
    check_token_ids(fsa.tokens, model, "fsa.tokens (the corpus the prompts come from)", context=False)
    spliced = saes_of(model)
    missing = sorted({site for s in fsa.states for site, _ in s.members} - set(spliced))
    if missing:
        raise ValueError(
            f"the automaton's sites {missing} have no dictionary spliced in this model "
            f"(spliced: {sorted(spliced)}); splice the SAEs it was extracted with"
        )
    for s in fsa.states:
        for site, index in s.members:
            if not 0 <= index < spliced[site].cfg.d_sae:
                raise ValueError(
                    f"state {s.id}: feature {index} at {site!r} is out of range for the spliced SAE "
                    f"(d_sae={spliced[site].cfg.d_sae})"
                )
    for name, value, low in (
        ("n_prompts", n_prompts, 2), ("context", context, 1), ("steps", steps, 1), ("samples", samples, 0),
    ):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    check_seed(seed)
    if isinstance(min_effect, bool) or not isinstance(min_effect, (int, float)) or not 0 <= min_effect <= 1:
        raise ValueError(f"min_effect={min_effect!r} must be a firing-rate difference in [0, 1]")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1), e.g. 0.95")
    if decoding not in ("sampled", "greedy"):
        raise ValueError(f"decoding={decoding!r}; expected 'sampled' or 'greedy'")
    if decoding == "sampled" and samples == 0:
        raise ValueError("decoding='sampled' needs samples >= 1 (or decoding='greedy')")


def _pair(pair: Any, k: int, column: dict[int, int], what: str = "pairs") -> tuple[int, int]:
    """``pair`` as two state ids, or an error naming ``what[k]`` and the bad id."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"{what}[{k}] is {pair!r}; expected a (src, dst) pair of state ids")
    for state_id in pair:
        if not is_int(state_id) or int(state_id) not in column:
            raise ValueError(
                f"{what}[{k}] = {tuple(pair)!r}: {state_id!r} is not a state id of this automaton "
                f"(ids {min(column)}..{max(column)})"
            )
    return int(pair[0]), int(pair[1])


def _removal(
    fsa: FeatureAutomaton, model: Any, probe: _Probe, column: int, state: State, n: int, context: int,
    steps: int, samples: int, seed: int, longest: int | None,
) -> tuple[_Rates, _Rates] | None:  # fmt: skip
    """The necessity arm: rollouts from windows that end where the source fires, as they are and
    with every member of the source set to 0 (the others left alone). Each corpus position is used
    once (a repeated window would shrink the interval without new evidence); None when fewer than
    two windows end where the source fires."""
    try:
        prompts = _windows(fsa, model, column, n, context, seed, firing=True, longest=longest)
    except ValueError:
        prompts = None
    if prompts is None or prompts.shape[0] < 2:
        logger.info("state %s fires at fewer than 2 positions with %d earlier tokens: no necessity arm",
                    state.id, context - 1)  # fmt: skip
        return None
    zeros: list[tuple[str, int, float]] = [(site, index, 0.0) for site, index in state.members]
    return probe.compare(prompts, zeros, steps, samples, seed * 100_003 + column + 50_000, exclusive=False)


def _effects(edited: _Rates, plain: _Rates, column: int, confidence: float) -> tuple[Effect, Effect | None]:
    """The greedy and sampled effects of one destination (column): edited minus plain."""
    greedy = _effect(edited.greedy[:, column], plain.greedy[:, column], confidence)
    if edited.sampled is None or plain.sampled is None:
        return greedy, None
    return greedy, _effect(edited.sampled[:, column], plain.sampled[:, column], confidence)


def _removals(
    removal: tuple[_Rates, _Rates] | None, column: int, confidence: float
) -> tuple[Removal | None, Removal | None]:
    """The necessity arm's greedy and sampled effects on one destination: natural minus removed."""
    if removal is None:
        return None, None
    natural, removed = removal
    n = int(natural.greedy.shape[0])
    greedy, sampled = _effects(natural, removed, column, confidence)  # natural plays "edited" here

    def removal_of(e: Effect) -> Removal:
        return Removal(e.pinned, e.unpinned, e.effect, e.ci, e.p_value, n)

    return removal_of(greedy), None if sampled is None else removal_of(sampled)


def _significant(effect: Effect | Removal, min_effect: float) -> bool:
    return effect.ci[0] > 0 and effect.effect >= min_effect


def _supports_cache(model: nn.Module) -> bool:
    """A HookedTransformer takes its own KV cache object (``past_kv_cache``)."""
    return hasattr(model, "get_pos_offset") and _cache_class() is not None


def _cache_class() -> Any:
    """TransformerLens's KV cache class (None where it has none: 4.x removed HookedTransformer)."""
    try:
        from transformer_lens import TransformerLensKeyValueCache
    except ImportError:
        return None
    return TransformerLensKeyValueCache


def _bos(fsa: FeatureAutomaton, model: Any) -> int | None:
    tokenizer = getattr(model, "tokenizer", None)
    if fsa.metadata.get("prepend_bos") and tokenizer is not None and tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    return None


# --------------------------------------------------------------------------- step 1: prompts


def _window_ends(
    fsa: FeatureAutomaton, model: Any, column: int, n: int, context: int, seed: int, firing: bool = False,
    longest: int | None = None,
) -> Int[Tensor, " n_prompts"]:  # fmt: skip
    """The corpus positions (rows of ``fsa.firing``) where ``n`` prompt windows end: where the
    state in ``column`` is off (``firing``: on), with at least ``context - 1`` earlier tokens in
    their text (and, ``longest`` given, a text prefix of at most ``longest`` tokens, BOS included),
    drawn without replacement when there are enough (fixed by ``seed``). With fewer positions than
    ``n``, each position once: fewer than ``n`` windows (the prompts are the t-test's independent
    units, so a window never repeats)."""
    assert fsa.tokens is not None  # _check_arguments refuses an automaton without corpus tokens
    offset = fsa.positions()
    bos = _bos(fsa, model)
    wanted = fsa.firing[:, column].cpu() == firing
    allowed = offset >= context - 1
    if longest is not None:  # the prefix, BOS included, must leave room for the generated tokens
        allowed &= offset + 1 + int(bos is not None) <= longest
    ends = (wanted & allowed).nonzero().squeeze(-1)
    if ends.numel() == 0:
        longest_text = int(fsa.lengths.max())
        how = "never fires at any" if firing else "fires at every"
        why = (
            f"no text has {context} tokens (the longest has {longest_text}); lower context"
            if longest_text < context
            else f"state {fsa.states[column].id} {how} corpus position that has {context - 1} "
            "earlier tokens in its text"
            + ("" if longest is None else " and leaves room for the generated tokens in the model's context")
        )
        where = "on" if firing else "off"
        raise ValueError(
            f"no prompt window of {context} tokens ends where the source state is {where}: {why}"
        )
    generator = torch.Generator().manual_seed(seed * 100_003 + column)
    return ends[torch.randperm(ends.numel(), generator=generator)[:n]]


def _windows(
    fsa: FeatureAutomaton, model: Any, column: int, n: int, context: int, seed: int, firing: bool = False,
    longest: int | None = None,
) -> Int[Tensor, "n_prompts pos"]:  # fmt: skip
    """The prompt windows that end at :func:`_window_ends` (same arguments). ``longest`` given
    (``window="prefix"``): each window is its text from the start, BOS included, left-padded with
    -1 to the longest drawn; None: the last ``context`` tokens (``window="crop"``)."""
    assert fsa.tokens is not None
    ends = _window_ends(fsa, model, column, n, context, seed, firing, longest).tolist()
    offset = fsa.positions()
    first = [end - int(offset[end]) if longest is not None else end - context + 1 for end in ends]
    rows = [fsa.tokens[a : end + 1] for a, end in zip(first, ends)]
    bos = _bos(fsa, model)
    if bos is not None:
        rows = [torch.cat([torch.tensor([bos], dtype=row.dtype), row]) for row in rows]
    width = max(row.numel() for row in rows)
    windows = torch.full((len(rows), width), -1, dtype=fsa.tokens.dtype)
    for k, row in enumerate(rows):
        windows[k, width - row.numel() :] = row
    return windows.to(next(model.parameters()).device)


# --------------------------------------------------------------------------- steps 2-3: rollouts


@dataclass
class _Rates:
    """Per prompt and state: the firing rate over the read positions."""

    greedy: Float64[Tensor, "n_prompts states"]
    sampled: Float64[Tensor, "n_prompts states"] | None
    """None when nothing was sampled."""


class _Probe:
    """Runs the batched rollouts of one model and reads every state's firing at the newest token."""

    def __init__(self, fsa: FeatureAutomaton, model: Any, kv_cache: bool) -> None:
        self.model, self.kv_cache = model, kv_cache
        self.majority = bool(fsa.metadata.get("grouping", False))
        self.sites = sorted({site for s in fsa.states for site, _ in s.members})
        # every member feature once, site by site; membership[m, c]: member m belongs to state c
        members = sorted({member for s in fsa.states for member in s.members})
        row = {member: m for m, member in enumerate(members)}
        device = next(model.parameters()).device
        self.indices = {
            site: torch.tensor([i for s, i in members if s == site], dtype=torch.long, device=device)
            for site in self.sites
        }
        self.membership = torch.zeros(len(members), len(fsa.states), device=device)
        for column, s in enumerate(fsa.states):
            for member in s.members:
                self.membership[row[member], column] = 1.0

    def compare(
        self, prompts: Int[Tensor, "n_prompts pos"], pins: list[tuple[str, int, float]], steps: int,
        samples: int, seed: int, exclusive: bool,
    ) -> tuple[_Rates, _Rates]:  # fmt: skip
        """Unpinned and pinned rollouts from ``prompts`` (left-padded with -1 where their lengths
        differ), per prompt: the prompts of one length run together, unpadded, so every token
        keeps its position. ``exclusive``: the pinned rollout also sets every other state's
        members to 0 where it pins."""
        lengths = (prompts >= 0).sum(1)
        if bool((lengths == prompts.shape[1]).all()):
            return self._compare(prompts, pins, steps, samples, seed, exclusive)
        n, out = prompts.shape[0], []
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(-1)
            draw = seed * 1_000_003 + length  # one stream per length: a prompt's draws depend on its group
            out.append((rows, self._compare(prompts[rows, -length:], pins, steps, samples, draw, exclusive)))

        def gather(k: int, sampled: bool) -> Tensor | None:
            parts = [(rows, getattr(rates[k], "sampled" if sampled else "greedy")) for rows, rates in out]
            if parts[0][1] is None:
                return None
            merged = torch.zeros(n, parts[0][1].shape[1], dtype=parts[0][1].dtype)
            for rows, values in parts:
                merged[rows.cpu()] = values
            return merged

        plain, pinned = (_Rates(cast(Tensor, gather(k, False)), gather(k, True)) for k in (0, 1))
        return plain, pinned

    def _compare(
        self, prompts: Int[Tensor, "n_prompts pos"], pins: list[tuple[str, int, float]], steps: int,
        samples: int, seed: int, exclusive: bool,
    ) -> tuple[_Rates, _Rates]:  # fmt: skip
        """:meth:`compare` on prompts of one length; the rows are ``[greedy (n); sampled
        (n * samples, each prompt's draws together)]``."""
        n = prompts.shape[0]
        row_prompt = torch.cat([torch.arange(n), torch.arange(n).repeat_interleave(samples)])
        rows = prompts[row_prompt.to(prompts.device)]
        greedy = torch.arange(rows.shape[0]) < n
        prefix = self._prefix(prompts[:, :-1], row_prompt) if self.kv_cache else None
        out = []
        for edits in ([], pins):
            fires = self._rollout(
                rows, prefix, edits, steps, greedy, seed, exclusive
            ).double()  # (rows, steps, states)
            per_row = fires.mean(1)
            sampled = per_row[n:].reshape(n, samples, -1).mean(1).cpu() if samples else None
            out.append(_Rates(per_row[:n].cpu(), sampled))
        return out[0], out[1]

    @torch.no_grad()
    def _prefix(self, tokens: Int[Tensor, "n_prompts pos"], row_prompt: Tensor) -> Any:
        """The KV cache of the prompts less their last token (nothing pinned there), one copy per row."""
        cache = _cache_class().init_cache(self.model.cfg, tokens.device, tokens.shape[0])
        if tokens.shape[1]:
            self.model(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens))
        index = row_prompt.to(tokens.device)
        for entry in cache.entries:
            entry.past_keys = entry.past_keys[index]
            entry.past_values = entry.past_values[index]
        cache.previous_attention_mask = cache.previous_attention_mask[index]
        return cache

    @torch.no_grad()
    def _rollout(
        self, rows: Int[Tensor, "rows pos"], prefix: Any, pins: list[tuple[str, int, float]], steps: int,
        greedy: Bool[Tensor, " rows"], seed: int, exclusive: bool,
    ) -> Bool[Tensor, "rows steps states"]:  # fmt: skip
        """Generate ``steps`` tokens (see the module docstring, steps 2-3) and read every state's
        firing at each generated position, unpinned there (pinned before it when ``pins``)."""
        generator = torch.Generator().manual_seed(seed)
        last = rows.shape[1] - 1  # the last prompt position: the first one pinned
        if prefix is not None:
            cache = _copy_cache(prefix)
            sequence = rows[:, -1:]  # the chunk to run: the prompt's last token (the rest is cached)
        else:
            cache, sequence = None, rows
        logits = self._forward(sequence, cache, pins, slice(last, last + 1), exclusive)
        fires = []
        for k in range(steps):
            position = last + 1 + k
            token = _choose(logits[:, -1], greedy, generator).unsqueeze(1)
            sequence = token if cache is not None else torch.cat([sequence, token], dim=1)
            if pins:  # read with nothing pinned at `position`; then pin it there and go on
                fires.append(self._read(sequence, cache, pins, slice(last, position), exclusive))
                if k < steps - 1:
                    logits = self._forward(sequence, cache, pins, slice(last, position + 1), exclusive)
            else:
                read: dict[str, Tensor] = {}
                with self._capturing(read):
                    logits = self._forward(sequence, cache, [], None, exclusive)
                fires.append(self._states(read))
        return torch.stack(fires, dim=1)

    def _read(
        self, sequence: Tensor, cache: Any, pins: list[tuple[str, int, float]], positions: slice,
        exclusive: bool,
    ) -> Bool[Tensor, "rows states"]:  # fmt: skip
        """Every state's firing at the newest position, with the cache (if any) left as it was."""
        read: dict[str, Tensor] = {}
        if cache is not None:
            cache.freeze()
        try:
            with self._capturing(read):
                self._forward(sequence, cache, pins, positions, exclusive)
        finally:
            if cache is not None:
                cache.unfreeze()
        return self._states(read)

    def _forward(
        self, sequence: Tensor, cache: Any, pins: list[tuple[str, int, float]], positions: slice | None,
        exclusive: bool,
    ) -> Float[Tensor, "rows pos d_vocab"]:  # fmt: skip
        edits = [clamp(site, index, value, positions=positions) for site, index, value in pins]
        if pins and exclusive:
            pinned = {(site, index) for site, index, _ in pins}
            for site, ix in self.indices.items():
                rest = [i for i in ix.tolist() if (site, i) not in pinned]
                if rest:
                    edits.append(ablate(site, rest, positions=positions))
        kwargs = (
            {} if cache is None else {"past_kv_cache": cache, "attention_mask": torch.ones_like(sequence)}
        )
        with intervene(self.model, edits) if edits else nullcontext():
            return self.model(sequence, **kwargs)

    @contextmanager
    def _capturing(self, read: dict[str, Tensor]) -> Iterator[None]:
        """Hooks that keep, per site, whether each member feature is active at the newest token."""

        def keep(site: str) -> Any:
            def hook(acts: Tensor, *, hook: Any) -> None:
                read[site] = acts[:, -1].index_select(-1, self.indices[site]) > 0

            return hook

        hooks = [(f"{site}.hook_sae_acts_post", keep(site)) for site in self.sites]
        with self.model.hooks(fwd_hooks=hooks):
            yield

    def _states(self, read: dict[str, Tensor]) -> Bool[Tensor, "rows states"]:
        active = torch.cat([read[site] for site in self.sites], dim=-1).float()  # (rows, members)
        if not self.majority:
            return (active @ self.membership) > 0
        # as the extraction defines a grouped state: at least half of its members active
        return 2 * (active @ self.membership) >= self.membership.sum(0)


def _pins(state: State, scale: float) -> list[tuple[str, int, float]]:
    """``(site, index, value)`` of every member of ``state``: ``scale`` times its pin value (the
    state's ``max_activation`` when it has no ``pin_values``)."""
    if state.pin_values and len(state.pin_values) != len(state.members):
        raise ValueError(
            f"state {state.id} has {len(state.pin_values)} pin_values for {len(state.members)} members"
        )
    values = state.pin_values or [state.max_activation] * len(state.members)
    return [(site, index, scale * float(v)) for (site, index), v in zip(state.members, values)]


def _choose(logits: Float[Tensor, "rows d_vocab"], greedy: Bool[Tensor, " rows"], generator: Any) -> Tensor:
    """The top token on greedy rows, a temperature-1 draw (from ``generator``) on the others."""
    choice = logits.argmax(-1)
    if not bool(greedy.all()):
        probs = logits[~greedy.to(logits.device)].double().softmax(-1).cpu()
        drawn = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        choice[~greedy.to(logits.device)] = drawn.to(choice.device)
    return choice


def _copy_cache(cache: Any) -> Any:
    """A cache that shares ``cache``'s tensors but grows on its own (appending replaces them)."""
    entries = [type(e)(past_keys=e.past_keys, past_values=e.past_values) for e in cache.entries]
    return type(cache)(entries=entries, previous_attention_mask=cache.previous_attention_mask)


# --------------------------------------------------------------------------- step 4: statistics


def _effect(pinned: Tensor, unpinned: Tensor, confidence: float) -> Effect:
    """Mean of the per-prompt differences with its t-interval (prompts as the units)."""
    differences = (pinned - unpinned).double()
    n = differences.numel()
    mean, sd = float(differences.mean()), float(differences.std()) if n > 1 else math.nan
    # one prompt (a source with one usable window): no spread, so no interval (and no verdict)
    half = _t_critical(confidence, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return Effect(
        float(pinned.double().mean()), float(unpinned.double().mean()), mean, (mean - half, mean + half),
        _one_sided_p(differences),
    )  # fmt: skip


def _t_central(x: float, df: int) -> float:
    """``P(|T| < x)`` for Student's t with ``df`` degrees of freedom (exact finite sums for an
    integer ``df``: Abramowitz & Stegun 26.7.3 and 26.7.4)."""
    theta = math.atan(x / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)
        for k in range(1, (df - 1) // 2 + 1):  # cos + (2/3) cos^3 + (2*4)/(3*5) cos^5 + ...
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + s * total) if df > 1 else 2 / math.pi * theta
    total, term = 0.0, 1.0
    for k in range(1, df // 2 + 1):  # 1 + (1/2) cos^2 + (1*3)/(2*4) cos^4 + ...
        total += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return s * total


def _t_critical(confidence: float, df: int) -> float:
    """``x`` with ``P(|T| < x) = confidence`` (bisection; no scipy)."""
    low, high = 0.0, 1.0
    while _t_central(high, df) < confidence:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_central(mid, df) < confidence else (low, mid)
    return (low + high) / 2


def _one_sided_p(differences: Tensor) -> float:
    """P-value of "the mean difference is > 0": the paired one-sided t-test with ``n - 1`` degrees of
    freedom, the distribution the interval uses (so ``p < (1 - confidence) / 2`` exactly when the
    interval lies above 0). Below about 1e-15 it reads 0 (the central mass is computed, not the tail)."""
    n = differences.numel()
    if n < 2:
        return math.nan  # one prompt: no spread, no test (the interval is NaN too)
    sd = float(differences.std())
    mean = float(differences.mean())
    if sd == 0.0:
        return 0.0 if mean > 0 else 1.0
    t = mean / (sd / math.sqrt(n))
    central = _t_central(abs(t), n - 1)
    return min(1.0, max(0.0, (1 - central) / 2 if t > 0 else (1 + central) / 2))
