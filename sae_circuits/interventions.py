"""Feature interventions: ablate, clamp, scale, add, noise, and decoder-direction steering.

Each kind is a small frozen dataclass (:class:`Ablate`, :class:`Clamp`, :class:`Scale`,
:class:`Add`, :class:`Noise`, :class:`Steer`), a subclass of :class:`Intervention`, and all obey
one contract::

    edit(x, where) -> x'   # x [batch, pos, ...] at the kind's hook point; never edited in place

``acts_on`` names that hook point: ``"features"`` is the site's ``hook_sae_acts_post``
(``x = f [batch, pos, d_sae]``); ``"activation"`` is the site's own hook point (the
activation that flows downstream, ``[batch, pos, d_in...]``), which is how :class:`Steer` adds
``coeff * W_dec[feature]`` even for an SAE that is not spliced. :class:`Where` says which tokens
of the current forward pass are selected (``mask``), where they sit in the full sequence
(``start``) and which SAE the features belong to. Feature kinds only write
``new_values(f, where)`` for the edited columns; :class:`FeatureEdit` does the rest.

:func:`intervene` applies every kind the same way: one TransformerLens forward hook per hook point
runs its edits in the order given, so the edits compose with ``run_with_hooks``, ``run_with_cache``
and ``generate``. Positions are absolute indices in the full sequence (:mod:`sae_circuits.positions`
maps them onto each forward chunk), so cached and uncached generation edit the same tokens.
Because the site keeps the clean features for its error term, a feature edit changes the site's
output by exactly ``(f_edited - f) @ W_dec``.

A new kind is one class here (its number checked in ``__post_init__``, its ``new_values`` or
``edit``) and one factory function; :class:`Noise` is the example.

>>> pin = sc.clamp("blocks.1.hook_resid_post", 7, value=12.0, positions="generated")
>>> greedy = dict(max_new_tokens=4, do_sample=False, verbose=False, stop_at_eos=False)
>>> with sc.spliced(model, [sae]), sc.intervene(model, [pin]):
...     out = model.generate(tokens[:1, :8], **greedy)
>>> out.shape  # the 8 prompt tokens, then 4 generated with feature 7 pinned at 12
torch.Size([1, 12])
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, cast

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from sae_circuits._hooks import permanent_hook
from sae_circuits._model import check_model, get_hook_point
from sae_circuits.positions import (
    Chunk,
    Positions,
    PositionSpec,
    PositionTracker,
    is_int,
    normalize_positions,
    tracking,
)
from sae_circuits.sae import SAE
from sae_circuits.splice import site_of

__all__ = [
    "Ablate",
    "Add",
    "Clamp",
    "FeatureEdit",
    "Features",
    "Intervention",
    "Noise",
    "Positions",
    "Scale",
    "Site",
    "Steer",
    "Where",
    "ablate",
    "add",
    "clamp",
    "intervene",
    "noise",
    "scale",
    "steer",
]

Site = str | SAE
"""A spliced SAE's hook name (a transcoder's input or output hook), or the SAE itself."""
Features = int | Sequence[int]
"""One feature index, or several (numpy integers and integer arrays too)."""


class Where(NamedTuple):
    """Where an edit lands in the current forward pass (what :meth:`Intervention.edit` is told)."""

    sae: SAE
    """The dictionary whose features the intervention names."""
    mask: Bool[Tensor, " pos"] | None
    """The tokens of this pass that the intervention's positions select; ``None``: all of them."""
    start: int
    """Absolute position of this pass's first token: ``x[:, i]`` is token ``start + i``."""


# --------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class Intervention(ABC):
    """One edit at one site: the base of every kind. Build one with :func:`ablate`, :func:`clamp`,
    :func:`scale`, :func:`add`, :func:`noise` or :func:`steer` (or the classes themselves); apply
    it with :func:`intervene`. The arguments are checked, and normalised, on construction."""

    site: Site
    """Hook name of a spliced SAE (a transcoder's input or output hook), or the SAE itself."""
    features: tuple[int, ...]
    """Feature indices edited: distinct ints, in the order given (for :class:`Steer`: one)."""
    positions: PositionSpec = field(default=None, kw_only=True)
    """Tokens edited (see :mod:`sae_circuits.positions`); ``None``: every token."""

    op: ClassVar[str]
    """The kind's name (``"clamp"``, ...), used in messages."""
    acts_on: ClassVar[Literal["features", "activation"]] = "features"
    """The tensor :meth:`edit` receives: the site's features or the site's activation."""

    if TYPE_CHECKING:  # each kind defines it, as its own field (Clamp) or a property

        @property
        def value(self) -> float:
            """The kind's number: the clamp value, scale factor, added amount, noise std or steering
            coefficient (0 for ablate)."""
            ...

    def __post_init__(self) -> None:
        if not isinstance(self.site, (str, SAE)):
            raise TypeError(f"site must be a hook name or an SAE, got {type(self.site).__name__}")
        object.__setattr__(self, "features", _feature_indices(self.features))
        object.__setattr__(self, "positions", normalize_positions(self.positions))

    @abstractmethod
    def edit(self, x: Float[Tensor, "batch pos *width"], where: Where) -> Float[Tensor, "batch pos *width"]:
        """Return ``x`` edited at ``where.mask`` (a new tensor, or ``x`` itself when nothing
        changes). Called only when some token of the pass is selected."""


@dataclass(frozen=True)
class FeatureEdit(Intervention):
    """A kind that sets the selected features to ``new_values`` at the selected tokens."""

    def edit(self, x: Float[Tensor, "batch pos d_sae"], where: Where) -> Float[Tensor, "batch pos d_sae"]:
        """Replace the edited columns of ``x`` with :meth:`new_values` at the selected tokens."""
        index = torch.tensor(self.features, device=x.device)
        selected = x.index_select(-1, index)  # [batch, pos, n_features]
        edited = self.new_values(selected, where).to(selected.dtype)
        if where.mask is not None:
            edited = torch.where(where.mask[:, None], edited, selected)
        return x.index_copy(-1, index, edited)

    @abstractmethod
    def new_values(self, f: Float[Tensor, "batch pos n"], where: Where) -> Float[Tensor, "batch pos n"]:
        """New values for ``f``, the edited features' columns of ``x`` (``n = len(features)``), at
        every token of the pass; :meth:`edit` keeps the unselected tokens as they were."""

    def apply_(self, acts: Float[Tensor, "batch pos d_sae"], chunk: Chunk) -> None:
        """Deprecated (use :meth:`edit`, which returns the edited tensor): edit ``acts`` in place."""
        warnings.warn(
            "Intervention.apply_ is deprecated; use edit(x, where)", DeprecationWarning, stacklevel=2
        )
        mask = chunk.mask(self.positions, acts.device)
        if mask is None or bool(mask.any()):  # feature kinds never read where.sae
            acts.copy_(self.edit(acts, Where(cast(SAE, None), mask, chunk.start)))


# --------------------------------------------------------------------------- the kinds


@dataclass(frozen=True)
class Ablate(FeatureEdit):
    """Set the features to 0."""

    op = "ablate"

    @property
    def value(self) -> float:
        """0, the value the features are set to."""
        return 0.0

    def new_values(self, f: Float[Tensor, "batch pos n"], where: Where) -> Float[Tensor, "batch pos n"]:
        """Zeros."""
        return torch.zeros_like(f)


@dataclass(frozen=True)
class Clamp(FeatureEdit):
    """Pin the features at ``value``, whatever they would have been."""

    value: float
    """The pinned activation (>= 0)."""
    op = "clamp"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "value", _finite_float32(self.value, "value", minimum_why=_ACTIVATIONS))

    def new_values(self, f: Float[Tensor, "batch pos n"], where: Where) -> Float[Tensor, "batch pos n"]:
        """``value`` everywhere."""
        return torch.full_like(f, self.value)


@dataclass(frozen=True)
class Scale(FeatureEdit):
    """Multiply the features by ``factor`` (> 1 boosts, < 1 damps)."""

    factor: float
    """The multiplier (>= 0)."""
    op = "scale"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "factor", _finite_float32(self.factor, "factor", minimum_why=_ACTIVATIONS))

    @property
    def value(self) -> float:
        """``factor``, under the name every kind shares."""
        return self.factor

    def new_values(self, f: Float[Tensor, "batch pos n"], where: Where) -> Float[Tensor, "batch pos n"]:
        """``f * factor``."""
        return f * self.factor


@dataclass(frozen=True)
class Add(FeatureEdit):
    """Add ``amount`` to the features (negative amounts allowed)."""

    amount: float
    """The amount added."""
    op = "add"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "amount", _finite_float32(self.amount, "amount"))

    @property
    def value(self) -> float:
        """``amount``, under the name every kind shares."""
        return self.amount

    def new_values(self, f: Float[Tensor, "batch pos n"], where: Where) -> Float[Tensor, "batch pos n"]:
        """``f + amount``."""
        return f + self.amount


@dataclass(frozen=True)
class Noise(FeatureEdit):
    """Add Gaussian noise of standard deviation ``std`` to the features (they may go negative).

    Token ``p`` of batch row ``b`` always gets the same draw: it comes from a random stream of its
    own, seeded by ``[seed, p]`` (numpy ``SeedSequence``), so a forward pass, a KV-cached
    ``generate`` and an uncached one all add the same noise. ``std=0`` leaves ``x`` untouched."""

    std: float
    """Standard deviation (>= 0)."""
    seed: int | None = None
    """Non-negative int; ``None`` draws one from torch's global generator on construction."""
    op = "noise"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "std", _finite_float32(self.std, "std", minimum_why="a standard deviation"))
        seed = self.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        if not is_int(seed):
            raise TypeError(f"seed={seed!r} must be an int or None")
        if int(seed) < 0:
            raise ValueError(f"seed={int(seed)} must be >= 0")
        object.__setattr__(self, "seed", int(seed))

    @property
    def value(self) -> float:
        """``std``, under the name every kind shares."""
        return self.std

    def edit(self, x: Float[Tensor, "batch pos d_sae"], where: Where) -> Float[Tensor, "batch pos d_sae"]:
        """``x`` itself when ``std == 0`` (exactly a no-op); otherwise as :class:`FeatureEdit`."""
        return x if self.std == 0 else super().edit(x, where)

    def new_values(self, f: Float[Tensor, "batch pos n"], where: Where) -> Float[Tensor, "batch pos n"]:
        """``f + std * N(0, 1)``, drawn per absolute position (at the selected tokens)."""
        rows, length, n = f.shape
        chosen = range(length) if where.mask is None else where.mask.nonzero().flatten().tolist()
        assert self.seed is not None  # set in __post_init__
        draws = [  # one stream per token: [rows, n] each
            np.random.default_rng([self.seed, where.start + i]).standard_normal((rows, n), dtype=np.float32)
            for i in chosen
        ]
        noise = torch.zeros(rows, length, n)
        noise[:, list(chosen)] = torch.from_numpy(np.stack(draws, axis=1))
        return f + (self.std * noise).to(device=f.device, dtype=f.dtype)


@dataclass(frozen=True)
class Steer(Intervention):
    """Add ``coeff * W_dec[feature]`` to the activation at the SAE's hook point (the SAELens
    steering tutorial's recipe). ``site`` may be an SAE that is not spliced; unlike the tutorial's
    hook, this one also steers KV-cached generation steps."""

    coeff: float
    """The steering coefficient (negative steers away)."""
    op = "steer"
    acts_on = "activation"

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.features) != 1:
            raise ValueError(f"features={self.features}: steer takes a single feature index")
        object.__setattr__(self, "coeff", _finite_float32(self.coeff, "coeff"))

    @property
    def value(self) -> float:
        """``coeff``, under the name every kind shares."""
        return self.coeff

    @property
    def feature(self) -> int:
        """The feature whose decoder direction is added."""
        return self.features[0]

    def edit(self, x: Float[Tensor, "batch pos *width"], where: Where) -> Float[Tensor, "batch pos *width"]:
        """``x + coeff * W_dec[feature]`` at the selected tokens."""
        direction = (self.coeff * where.sae.W_dec[self.feature]).to(x.dtype).to(x.device)
        direction = direction.reshape(x.shape[2:])
        if where.mask is None:
            return x + direction
        return x + where.mask.to(x.dtype).view(1, -1, *[1] * (x.ndim - 2)) * direction


# --------------------------------------------------------------------------- factories

# Each returns an instance of its kind's class, typed as Intervention so that a list of mixed
# kinds type-checks.


def ablate(site: Site, features: Features, positions: Positions = None) -> Intervention:
    """Set ``features`` to 0 at ``positions`` (all by default)."""
    return Ablate(site, _feature_indices(features), positions=normalize_positions(positions))


def clamp(site: Site, features: Features, value: float, positions: Positions = None) -> Intervention:
    """Pin ``features`` at ``value`` (>= 0) at ``positions``, whatever they would have been."""
    return Clamp(site, _feature_indices(features), value, positions=normalize_positions(positions))


def scale(site: Site, features: Features, factor: float, positions: Positions = None) -> Intervention:
    """Multiply ``features`` by ``factor`` (>= 0; > 1 boosts) at ``positions``."""
    return Scale(site, _feature_indices(features), factor, positions=normalize_positions(positions))


def add(site: Site, features: Features, amount: float, positions: Positions = None) -> Intervention:
    """Add ``amount`` to ``features`` at ``positions`` (negative amounts allowed)."""
    return Add(site, _feature_indices(features), amount, positions=normalize_positions(positions))


def noise(
    site: Site, features: Features, std: float, positions: Positions = None, seed: int | None = None
) -> Intervention:
    """Add Gaussian noise (standard deviation ``std`` >= 0) to ``features`` at ``positions``; the
    same ``seed`` gives the same noise, with or without the KV cache (see :class:`Noise`).

    >>> site = "blocks.1.hook_resid_post"
    >>> with sc.spliced(model, [sae]):
    ...     clean = model(tokens)
    ...     with sc.intervene(model, [sc.noise(site, [3, 7], std=0.5, seed=0)]):
    ...         first = model(tokens)
    ...     with sc.intervene(model, [sc.noise(site, [3, 7], std=0.5, seed=0)]):
    ...         again = model(tokens)
    >>> torch.equal(first, again), torch.equal(first, clean)
    (True, False)
    """
    return Noise(site, _feature_indices(features), std, seed, positions=normalize_positions(positions))


def steer(site: Site, feature: int, coeff: float, positions: Positions = None) -> Intervention:
    """Add ``coeff * W_dec[feature]`` to the activation at the SAE's hook (see :class:`Steer`)."""
    if not is_int(feature):
        raise TypeError(f"feature={feature!r}: steer takes a single int feature index")
    return Steer(site, _feature_indices(feature), coeff, positions=normalize_positions(positions))


# --------------------------------------------------------------------------- applying


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
    by_hook: dict[int, tuple[HookPoint, list[tuple[Intervention, SAE]]]] = {}
    for iv in items:
        if not isinstance(iv, Intervention):
            raise TypeError(f"expected an Intervention (sc.clamp, sc.ablate, ...), got {type(iv).__name__}")
        hook_point, sae = _hook_point_of(model, iv)
        by_hook.setdefault(id(hook_point), (hook_point, []))[1].append((iv, sae))

    with ExitStack() as stack:
        tracker = stack.enter_context(tracking(model))
        for hook_point, edits in by_hook.values():
            stack.enter_context(_hooked(hook_point, edits, tracker))
        yield model


def _hook_point_of(model: nn.Module, iv: Intervention) -> tuple[HookPoint, SAE]:
    """The hook point ``iv`` edits, and the SAE whose features it names (checked against them)."""
    if iv.acts_on == "activation" and isinstance(iv.site, SAE):
        sae = iv.site  # steering needs only the decoder: the SAE may be spliced elsewhere, or not at all
    else:
        sae = site_of(model, iv.site).sae
    bad = [i for i in iv.features if i >= sae.cfg.d_sae]
    if bad:
        raise IndexError(
            f"{iv.op} at {sae.cfg.site!r}: feature index {bad[0]} is out of range for an SAE with "
            f"d_sae={sae.cfg.d_sae} (valid: 0..{sae.cfg.d_sae - 1})"
        )
    if iv.acts_on == "activation":
        return get_hook_point(model, sae.cfg.site), sae
    return sae.hook_sae_acts_post, sae


@contextmanager
def _hooked(
    hook_point: HookPoint, edits: list[tuple[Intervention, SAE]], tracker: PositionTracker
) -> Iterator[None]:
    """Run ``edits``, in order, on every forward call of ``hook_point`` until the block ends (a
    permanent TransformerLens hook, so ``reset_hooks()`` inside the block keeps it)."""

    def apply_edits(tensor: Tensor, *, hook: HookPoint) -> Tensor:
        chunk = tracker.chunk(tensor.shape[1])
        for iv, sae in edits:
            mask = chunk.mask(iv.positions, tensor.device)
            if mask is None or bool(mask.any()):
                tensor = iv.edit(tensor, Where(sae, mask, chunk.start))
        return tensor

    with permanent_hook(hook_point, apply_edits):
        yield


# --------------------------------------------------------------------------- argument checks


def _feature_indices(features: Features | tuple[int, ...]) -> tuple[int, ...]:
    """``features`` as a tuple of distinct non-negative Python ints, in the order given."""
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
_ACTIVATIONS = "feature activations are non-negative"


def _finite_float32(value: Any, name: str, *, minimum_why: str | None = None) -> float:
    """``value`` as a Python float, checked: a real number (:func:`is_real_number`), finite, within
    the float32 range, and, when ``minimum_why`` gives the reason, >= 0. The errors name ``name``."""
    if not _is_real_number(value):
        raise TypeError(f"{name}={value!r} must be a number")
    try:
        number = float(value.item() if isinstance(value, Tensor | np.ndarray) else value)
    except OverflowError:  # an int too large for a float
        raise ValueError(f"{name}={value!r} is beyond the float32 range (|x| <= {_FLOAT32_MAX:g})") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}={number} must be finite")
    if abs(number) > _FLOAT32_MAX:  # would become inf in the model's activations
        raise ValueError(f"{name}={number!r} is beyond the float32 range (|x| <= {_FLOAT32_MAX:g})")
    if minimum_why is not None and number < 0:
        raise ValueError(f"{name}={number} must be >= 0 ({minimum_why})")
    return number


def _is_real_number(value: Any) -> bool:
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
