"""Feature interventions: ablate, clamp, scale, add (and decoder-direction steering).

An intervention is an ordinary TransformerLens forward hook on ``{site}.hook_sae_acts_post``, so it
composes with ``run_with_hooks``, ``run_with_cache`` and ``generate``. Positions are absolute
indices in the full sequence; :mod:`sae_circuits.positions` maps them onto each forward chunk, so
cached and uncached generation edit the same tokens. Because the site keeps the clean features
for its error term, an edit changes the site's output by exactly ``(f_edited - f) @ W_dec``.

>>> with sc.intervene(model, [sc.clamp("blocks.1.hook_resid_post", 7, value=12.0,
...                                      positions="generated")]):     # doctest: +SKIP
...     out = model.generate(prompt_tokens, max_new_tokens=40)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from sae_circuits._model import check_model, get_hook_point
from sae_circuits.positions import Chunk, Positions, PositionTracker, is_int, normalize_positions, tracking
from sae_circuits.sae import SAE
from sae_circuits.splice import site_of

Site = str | SAE
Features = int | Sequence[int]
Operation = Literal["ablate", "clamp", "scale", "add", "steer"]


@dataclass(frozen=True)
class Intervention:
    """One edit at one site. Build it with :func:`ablate`, :func:`clamp`, :func:`scale`,
    :func:`add` or :func:`steer`; apply it with :func:`intervene`."""

    site: Site
    """Hook name of a spliced SAE (a transcoder's input or output hook), or the SAE itself."""
    features: tuple[int, ...]
    """Feature indices edited (for ``steer``: one feature)."""
    op: Operation
    """What is done to the selected activations."""
    value: float
    """The clamp value, scale factor, added amount or steering coefficient (unused for ablate)."""
    positions: Any
    """Normalised position spec (see :mod:`sae_circuits.positions`)."""

    def apply_(self, acts: Tensor, chunk: Chunk) -> None:
        """Edit ``acts [batch, pos, d_sae]`` in place at the selected positions."""
        mask = chunk.mask(self.positions, acts.device)
        if mask is not None and not bool(mask.any()):
            return
        index = torch.tensor(self.features, device=acts.device)
        selected = acts.index_select(-1, index)  # [batch, pos, n_features]
        if self.op == "ablate":
            edited = torch.zeros_like(selected)
        elif self.op == "clamp":
            edited = torch.full_like(selected, self.value)
        elif self.op == "scale":
            edited = selected * self.value
        else:
            edited = selected + self.value
        if mask is not None:
            edited = torch.where(mask[:, None], edited, selected)
        acts.index_copy_(-1, index, edited)


def _features(features: Features) -> tuple[int, ...]:
    # Any: the entries may be ints, numpy integers or 0-d integer tensors (is_int); checked below.
    items: Any = [features] if is_int(features) else features
    try:
        items = list(items)
    except TypeError:
        raise TypeError(f"features={features!r}: expected an int or a list of ints") from None
    if not items:
        raise ValueError("features=[]: give at least one feature index")
    out: list[int] = []
    for item in items:
        if not is_int(item):
            raise TypeError(f"features={features!r}: {item!r} is not an int")
        if int(item) < 0:
            raise ValueError(f"features={features!r}: feature index {int(item)} is negative")
        if int(item) not in out:
            out.append(int(item))
    return tuple(out)


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _is_number(value: Any) -> bool:
    """A real number: a Python int or float, a numpy integer or float, or a one-element tensor or
    numpy array of an integer or floating dtype. Bools (of any kind) and complex numbers are not."""
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, int | float | np.integer | np.floating):
        return True
    if isinstance(value, Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    if isinstance(value, np.ndarray):
        return value.size == 1 and (
            np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
        )
    return False


def _number(value: Any, name: str, *, non_negative: bool) -> float:
    if not _is_number(value):
        raise TypeError(f"{name}={value!r} must be a number")
    try:
        number = float(value.item() if isinstance(value, Tensor | np.ndarray) else value)
    except OverflowError:  # an int too large for a float
        raise ValueError(f"{name}={value!r} is beyond the float32 range (|x| <= {_FLOAT32_MAX:g})") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}={number} must be finite")
    if abs(number) > _FLOAT32_MAX:  # would become inf in the model's activations
        raise ValueError(f"{name}={number!r} is beyond the float32 range (|x| <= {_FLOAT32_MAX:g})")
    if non_negative and number < 0:
        raise ValueError(f"{name}={number} must be >= 0 (feature activations are non-negative)")
    return number


def _make(site: Site, features: Features, op: Operation, value: float, positions: Positions) -> Intervention:
    if not isinstance(site, (str, SAE)):
        raise TypeError(f"site must be a hook name or an SAE, got {type(site).__name__}")
    return Intervention(site, _features(features), op, value, normalize_positions(positions))


def ablate(site: Site, features: Features, positions: Positions = None) -> Intervention:
    """Set ``features`` to 0 at ``positions`` (all by default)."""
    return _make(site, features, "ablate", 0.0, positions)


def clamp(site: Site, features: Features, value: float, positions: Positions = None) -> Intervention:
    """Pin ``features`` at ``value`` (>= 0) at ``positions``, whatever they would have been."""
    return _make(site, features, "clamp", _number(value, "value", non_negative=True), positions)


def scale(site: Site, features: Features, factor: float, positions: Positions = None) -> Intervention:
    """Multiply ``features`` by ``factor`` (>= 0; > 1 boosts) at ``positions``."""
    return _make(site, features, "scale", _number(factor, "factor", non_negative=True), positions)


def add(site: Site, features: Features, amount: float, positions: Positions = None) -> Intervention:
    """Add ``amount`` to ``features`` at ``positions`` (negative amounts allowed)."""
    return _make(site, features, "add", _number(amount, "amount", non_negative=False), positions)


def steer(site: Site, feature: int, coeff: float, positions: Positions = None) -> Intervention:
    """Add ``coeff * W_dec[feature]`` to the activation at the SAE's hook (the SAELens steering
    tutorial's recipe). ``site`` may be an SAE that is not spliced; unlike the tutorial's hook,
    this one also steers KV-cached generation steps."""
    if not is_int(feature):
        raise TypeError(f"feature={feature!r}: steer takes a single int feature index")
    return _make(site, feature, "steer", _number(coeff, "coeff", non_negative=False), positions)


# --------------------------------------------------------------------------- applying


def _target(model: nn.Module, iv: Intervention) -> tuple[HookPoint, SAE]:
    """The hook point an intervention hooks, and the SAE whose features it names."""
    if (
        iv.op == "steer"
        and isinstance(iv.site, SAE)
        and iv.site.__dict__.get("_sae_circuits_spliced_in") is not model
    ):
        return get_hook_point(model, iv.site.cfg.site), iv.site
    site = site_of(model, iv.site)
    if iv.op == "steer":
        return get_hook_point(model, site.name), site.sae
    return site.sae.hook_sae_acts_post, site.sae


def _check_features(iv: Intervention, sae: SAE) -> None:
    bad = [i for i in iv.features if i >= sae.cfg.d_sae]
    if bad:
        raise IndexError(
            f"{iv.op} at {sae.cfg.site!r}: feature index {bad[0]} is out of range for an SAE with "
            f"d_sae={sae.cfg.d_sae} (valid: 0..{sae.cfg.d_sae - 1})"
        )


def _feature_hook(edits: list[Intervention], tracker: PositionTracker) -> Any:
    def edit_features(acts: Tensor, *, hook: HookPoint) -> Tensor:
        out = acts.clone()
        chunk = tracker.chunk(acts.shape[1])
        for iv in edits:
            iv.apply_(out, chunk)
        return out

    return edit_features


def _steer_hook(edits: list[tuple[Intervention, SAE]], tracker: PositionTracker) -> Any:
    def steer_activation(act: Tensor, *, hook: HookPoint) -> Tensor:
        chunk = tracker.chunk(act.shape[1])
        for iv, sae in edits:
            direction = (iv.value * sae.W_dec[iv.features[0]]).to(act.dtype).to(act.device)
            direction = direction.reshape(act.shape[2:])
            mask = chunk.mask(iv.positions, act.device)
            if mask is None:
                act = act + direction
            else:
                act = act + mask.to(act.dtype).view(1, -1, *[1] * (act.ndim - 2)) * direction
        return act

    return steer_activation


@contextmanager
def intervene(model: nn.Module, interventions: Intervention | Sequence[Intervention]) -> Iterator[nn.Module]:
    """Apply ``interventions`` to every forward pass (and ``generate`` step) inside the block.

    Several interventions on one site apply in the order given. Nests with :func:`spliced` and
    with itself. All checks run first; on leaving (or on error) the hooks are gone.

    Positions count from the start of each row as the model sees it, padding included, so with
    left padding (``padding_side="left"``) one absolute position points at a different token in
    each row of a batch whose prompts differ in length.
    """
    check_model(model)
    items = [interventions] if isinstance(interventions, Intervention) else list(interventions)
    for iv in items:
        if not isinstance(iv, Intervention):
            raise TypeError(f"expected an Intervention (sc.clamp, sc.ablate, ...), got {type(iv).__name__}")
    feature_edits: dict[int, tuple[HookPoint, list[Intervention]]] = {}
    steer_edits: dict[int, tuple[HookPoint, list[tuple[Intervention, SAE]]]] = {}
    for iv in items:
        hook_point, sae = _target(model, iv)
        _check_features(iv, sae)
        if iv.op == "steer":
            steer_edits.setdefault(id(hook_point), (hook_point, []))[1].append((iv, sae))
        else:
            feature_edits.setdefault(id(hook_point), (hook_point, []))[1].append(iv)

    with ExitStack() as stack:
        tracker = stack.enter_context(tracking(model))
        for hook_point, edits in feature_edits.values():
            stack.enter_context(_hooked(hook_point, _feature_hook(edits, tracker)))
        for hook_point, steers in steer_edits.values():
            stack.enter_context(_hooked(hook_point, _steer_hook(steers, tracker)))
        yield model


@contextmanager
def _hooked(hook_point: HookPoint, fn: Any) -> Iterator[None]:
    """A permanent TransformerLens hook (``reset_hooks()`` keeps it) removed when the block ends."""
    hook_point.add_hook(fn, dir="fwd", is_permanent=True)
    handle = hook_point.fwd_hooks[-1]
    try:
        yield
    finally:
        handle.hook.remove()
        if handle in hook_point.fwd_hooks:
            hook_point.fwd_hooks.remove(handle)
