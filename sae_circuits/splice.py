"""Splice SAEs into an existing HookedTransformer or TransformerBridge, in place, as hook points.

How it works: the hook point ``H`` where an SAE sits keeps its identity (and the user's hooks on
it). Splicing gives it an instance-level ``forward`` that runs the SAE, and hangs the SAE's own
hook points under it, so they are addressable as ``H.hook_sae_input`` ... ``H.hook_sae_output``.
A hook on ``H`` itself sees the site's output (what flows downstream). Unsplicing deletes the
instance ``forward`` and the sub-hooks: the model is then bitwise what it was.

The site encodes once per forward pass. With the error term on and nothing edited, the output
*is* the input activation (bitwise); an edit adds exactly ``(f_edited - f) @ W_dec``, decoded over
the edited features only. Reconstruction and error are materialised only when something hooks
``hook_sae_recons``/``hook_sae_error``/``hook_sae_output`` or the error term is off.

Gradients with the error term on: upstream of the site they are the model's own. The features get
``dL/df = dL/dout @ W_dec.T`` (SAELens's) when a backward hook listens on ``hook_sae_acts_pre`` or
``hook_sae_acts_post``, or a forward hook there called ``retain_grad()``, through a term that is
zero in value (:meth:`_Site._feature_gradients`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from sae_circuits._model import (
    check_model,
    expected_width,
    get_hook_point,
    register_hook_points,
)
from sae_circuits.sae import HOOK_NAMES, SAE

_STATE_ATTR = "_sae_circuits_state"


class _HookState:
    """What sae_circuits has put on one hook point: a spliced SAE and/or transcoder input taps.

    A transcoder replaces a module that reads this hook point's output *after* the user's hooks
    on it (a patch of the MLP input changes what the MLP reads), so its tap is a forward hook that
    is moved behind every other hook of the hook point on each call."""

    def __init__(self, hook_point: HookPoint) -> None:
        self.hook_point = hook_point
        self.site: _Site | None = None
        self.taps: list[_Site] = []  # transcoders that read their input here
        self._tap_handle: Any = None

    def __call__(self, x: Tensor) -> Tensor:  # becomes hook_point.forward
        if self.site is not None:
            x = self.site(x)
        if self._tap_handle is not None:  # run last: hooks added since splicing come before it
            hooks = self.hook_point._forward_hooks
            hooks[self._tap_handle.id] = hooks.pop(self._tap_handle.id)  # re-inserted at the end
        return x

    def _capture(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        for site in self.taps:
            site.captured_input = output

    def add_tap(self, site: _Site) -> None:
        """Let the transcoder of ``site`` read this hook point's final output."""
        self.taps.append(site)
        if self._tap_handle is None:
            self._tap_handle = self.hook_point.register_forward_hook(self._capture)

    def remove_tap(self, site: _Site) -> None:
        """Stop feeding ``site``; the forward hook goes with the last tap."""
        self.taps = [s for s in self.taps if s is not site]
        if not self.taps and self._tap_handle is not None:
            self._tap_handle.remove()
            self._tap_handle = None

    @property
    def empty(self) -> bool:
        """Nothing is spliced or tapped here any more (the hook point can be restored)."""
        return self.site is None and not self.taps


def _state(hook_point: HookPoint, create: bool) -> _HookState | None:
    state = hook_point.__dict__.get(_STATE_ATTR)
    if state is None and create:
        state = _HookState(hook_point)
        hook_point.__dict__[_STATE_ATTR] = state
        hook_point.forward = state  # type: ignore[method-assign]
    return state


def _drop_state_if_empty(hook_point: HookPoint) -> None:
    state = hook_point.__dict__.get(_STATE_ATTR)
    if state is not None and state.empty:
        del hook_point.__dict__[_STATE_ATTR]
        hook_point.__dict__.pop("forward", None)


def _has_fwd_hooks(hook_point: HookPoint) -> bool:
    return bool(hook_point._forward_hooks)


def _has_bwd_hooks(sae: SAE) -> bool:
    """Whether a backward hook listens on the SAE's pre-activations or activations."""
    return bool(sae.hook_sae_acts_pre._backward_hooks or sae.hook_sae_acts_post._backward_hooks)


class _Hooked(NamedTuple):
    value: Tensor
    changed: bool
    """A hook returned another tensor or edited this one."""
    in_place: bool
    """A hook edited the input tensor itself (its pre-hook value is lost)."""


def _run_hook(hook_point: HookPoint, value: Tensor, protect: bool = False) -> _Hooked:
    """Pass ``value`` through a hook point and report what its hooks did to it. ``protect``: the
    hooks get a copy, so an in-place edit can neither lose the clean value nor reach a tensor that
    ``value`` shares memory with (the model's own activation)."""
    if not _has_fwd_hooks(hook_point):
        return _Hooked(hook_point(value), False, False)
    if value.is_inference():  # no version counter under inference_mode: hooks get a copy
        out = hook_point(value.clone())
        return _Hooked(out, not torch.equal(out, value), False)
    if protect:
        copy = value.clone()
        version = copy._version
        out = hook_point(copy)
        return _Hooked(out, copy._version != version or not _same_tensor(out, copy), False)
    version = value._version
    out = hook_point(value)
    in_place = value._version != version
    return _Hooked(out, in_place or not _same_tensor(out, value), in_place)


def _same_tensor(out: Tensor, value: Tensor) -> bool:
    """Whether a hook returned ``value`` itself, or another tensor object over the same memory in
    the same layout: a backward hook on the hook point makes PyTorch hand every forward hook such
    an alias, which is no edit."""
    return out is value or (
        out.data_ptr() == value.data_ptr()
        and out.shape == value.shape
        and out.stride() == value.stride()
        and out.dtype == value.dtype
    )


class _Site:
    """An SAE spliced at one hook point (the output hook, for transcoders)."""

    def __init__(self, sae: SAE, name: str, error_term: bool) -> None:
        self.sae = sae
        self.name = name
        self.error_term = error_term
        self.captured_input: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        sae = self.sae
        if sae.cfg.is_transcoder:
            x_in, self.captured_input = self.captured_input, None
            if x_in is None:
                raise RuntimeError(
                    f"transcoder at {self.name!r}: its input hook {sae.cfg.hook_name!r} did not run "
                    "before its output hook in this forward pass"
                )
        else:
            x_in = x
        flat = sae.prepare_input(x_in)
        if flat.shape[-1] != sae.cfg.d_in:
            raise ValueError(
                f"SAE at {self.name!r} has d_in={sae.cfg.d_in} but the activation at "
                f"{sae.cfg.hook_name!r} has shape {list(x_in.shape)} (width {flat.shape[-1]})"
            )
        inp = _run_hook(sae.hook_sae_input, flat, protect=True)  # `flat` may be the model's `x`
        h0, norm, gate = sae.encode_parts(inp.value)
        h = _run_hook(sae.hook_sae_acts_pre, h0)
        f0 = sae.activation_fn(h.value, gate)
        post = _run_hook(sae.hook_sae_acts_post, f0)
        f = post.value
        norm_clean = norm
        # Features get gradients only when something listens for them (a backward hook on the
        # activations, or a forward hook that called retain_grad on them); then the clean
        # activations are a twin computed outside the hooks, so that what cancels a feature's way
        # upstream reaches no listener (_feature_gradients).
        listened = torch.is_grad_enabled() and (_has_bwd_hooks(sae) or f.retains_grad or h.value.retains_grad)
        if inp.changed or h.changed:  # rare: a hook edited the input or pre-activations
            h_clean, norm_clean, gate_clean = sae.encode_parts(flat)  # the clean input's normaliser
            f_clean = sae.activation_fn(h_clean, gate_clean)
        elif listened:
            f_clean = sae.activation_fn(h0, gate)
        elif not post.changed:
            f_clean = f
        elif post.in_place:  # the clean activations were overwritten: recompute (cheap)
            f_clean = sae.activation_fn(h.value, gate)
        else:
            f_clean = f0

        if not self.error_term:  # the SAE's output on its (possibly edited) input
            recons = sae.hook_sae_recons(sae.decode_normalized(f))
            out = sae.hook_sae_output(self._to_site(sae.finish_output(recons, norm, inp.value), x))
            return out
        # An edited input changes the normaliser and skip term too: materialise both outputs.
        if not inp.changed and not any(
            _has_fwd_hooks(getattr(sae, n)) for n in ("hook_sae_recons", "hook_sae_error", "hook_sae_output")
        ):
            if f is f_clean:
                return x  # bitwise the model's own activation
            out = x + self._to_site(self._decoded_edit(f - f_clean, norm), x)
            if not listened:
                return out
            f_free = f_clean if not h.changed else sae.activation_fn(h0, gate)  # here inp is unchanged
            return self._feature_gradients(out, f, f_clean, f_free, norm)
        # Someone is looking at the reconstruction or the error: materialise both. The output is
        # recons + error (as SAELens: error = x - the clean reconstruction, so a hook that changes
        # the reconstruction changes the output), written as x plus what the edits and hooks changed:
        # with nothing changed it is x, bitwise.
        decoded = sae.decode_normalized(f)
        recons = _run_hook(sae.hook_sae_recons, decoded, protect=True)  # `decoded` stays unhooked
        recons_clean = decoded if f is f_clean else sae.decode_normalized(f_clean)
        out_clean = self._to_site(sae.finish_output(recons_clean, norm_clean, flat), x)
        error_clean = x - out_clean
        error = _run_hook(sae.hook_sae_error, error_clean, protect=True)
        out = x
        if recons.changed or inp.changed or f is not f_clean:
            out = out + (self._to_site(sae.finish_output(recons.value, norm, inp.value), x) - out_clean)
        if error.changed:
            out = out + (error.value - error_clean)
        # A listened site has f is not f_clean: the output depends on f through the (hooked)
        # reconstruction, which gives the features SAELens's gradient (the error holds f_clean).
        return sae.hook_sae_output(out)

    def _feature_gradients(
        self, out: Tensor, f: Tensor, f_clean: Tensor, f_free: Tensor, norm: Any
    ) -> Tensor:
        """``out`` plus a term that is exactly zero in value and gives the features the gradient
        SAELens gives them, ``dL/df = W_dec dL/dout``, while the gradient upstream of the site
        stays that of ``out`` (the model's own with no edit).

        Over the features no edit changed, the term is ``B - B.detach()`` with ``B = (f - f_free)
        @ W_dec``: ``f`` (through the activation hooks) gets ``W_dec g``; ``f_free``, the same
        activations recomputed from the pre-activations before their hook, gets ``-W_dec g``, which
        cancels what ``f`` sends upstream. Edited features get theirs from the edit term, ``(f -
        f_clean) @ W_dec``, whose ``f_clean`` is likewise computed outside the hooks."""
        unchanged = (
            f.detach().reshape(-1, f.shape[-1]).eq(f_clean.detach().reshape(-1, f.shape[-1])).all(dim=0)
        )
        columns = unchanged.nonzero().squeeze(-1)
        bridge = self.sae.decode_delta(f - f_free, columns)
        if norm.scale is not None:
            bridge = bridge * norm.scale
        bridge = self._to_site(bridge, out)
        return out + (bridge - bridge.detach())

    def _decoded_edit(self, df: Tensor, norm: Any) -> Tensor:
        """``df @ W_dec`` (in the activation's scale), using only the features that changed."""
        columns = df.reshape(-1, df.shape[-1]).ne(0).any(dim=0).nonzero().squeeze(-1)
        delta = self.sae.decode_delta(df, columns)
        if norm.scale is not None:
            delta = delta * norm.scale
        return delta

    def _to_site(self, y: Tensor, like: Tensor) -> Tensor:
        """Reshape to the site's activation shape; cast to the model's dtype and device."""
        return y.reshape(like.shape).to(device=like.device, dtype=like.dtype)


# --------------------------------------------------------------------------- public API


def saes_of(model: nn.Module) -> dict[str, SAE]:
    """The SAEs spliced into ``model``, keyed by the hook name they replace (their site)."""
    return {name: site.sae for name, site in _sites(model).items()}


def _sites(model: nn.Module, create: bool = False) -> dict[str, _Site]:
    """The model's spliced sites; reading never adds anything to the model."""
    if create:
        return model.__dict__.setdefault("_sae_circuits_sites", {})
    return model.__dict__.get("_sae_circuits_sites", {})


def splice(model: nn.Module, saes: SAE | Sequence[SAE], *, error_term: bool = True) -> None:
    """Splice ``saes`` into ``model`` in place (no copy, no subclass).

    Each SAE sits at ``sae.cfg.site`` (its hook name; a transcoder's output hook) and exposes
    ``{site}.hook_sae_input`` ... ``{site}.hook_sae_output``. With ``error_term=True`` the model's
    outputs are unchanged until a feature is edited; with ``False`` the site outputs the SAE's
    reconstruction. All checks run before anything changes: on error the model is untouched.

    >>> sc.splice(model, [sae])
    >>> _, cache = model.run_with_cache(tokens)
    >>> cache["blocks.1.hook_resid_post.hook_sae_acts_post"].shape  # [batch, pos, d_sae]
    torch.Size([2, 48, 2048])
    >>> sc.unsplice(model)
    """
    check_model(model)
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    if not isinstance(error_term, bool):
        raise TypeError(f"error_term must be a bool, got {error_term!r}")
    plans = _plan(model, saes)
    sites = _sites(model, create=True)
    added: dict[str, HookPoint] = {}
    done: list[str] = []
    try:
        for sae, site_point, input_point in plans:
            name = sae.cfg.site
            site = _Site(sae, name, error_term)
            for hook_name in HOOK_NAMES:
                site_point.add_module(hook_name, getattr(sae, hook_name))
                added[f"{name}.{hook_name}"] = getattr(sae, hook_name)
            state = _state(site_point, create=True)
            assert state is not None
            state.site = site
            if input_point is not None:
                tap_state = _state(input_point, create=True)
                assert tap_state is not None
                tap_state.add_tap(site)
            sites[name] = site
            sae.__dict__["_sae_circuits_spliced_in"] = model
            done.append(name)
        register_hook_points(model, added, removed=[])
    except BaseException:
        unsplice(model, done)
        raise


def _plan(model: nn.Module, saes: list[SAE]) -> list[tuple[SAE, HookPoint, HookPoint | None]]:
    """Validate every SAE against the model and each other; return where each goes."""
    taken = set(_sites(model))
    for sae in saes:
        if not isinstance(sae, SAE):
            raise TypeError(
                f"expected sae_circuits.SAE, got {type(sae).__name__} "
                "(convert sae_lens objects with sc.SAE.from_sae_lens)"
            )
    parents = taken | {sae.cfg.site for sae in saes}  # sites spliced now or in this call
    # one hook point may answer to two names (the bridge: blocks.L.hook_resid_post is blocks.L.hook_out)
    points = {id(get_hook_point(model, existing)): existing for existing in taken}
    plans = []
    for sae in saes:
        name = sae.cfg.site
        _check_not_on_an_sae(model, sae, parents)
        if sae.__dict__.get("_sae_circuits_spliced_in") is not None:
            raise ValueError(f"this SAE ({name!r}) is already spliced into a model; unsplice it first")
        if name in taken:
            raise ValueError(f"an SAE is already spliced at {name!r}; unsplice it first")
        site_point = get_hook_point(model, name)
        if id(site_point) in points:
            raise ValueError(
                f"{name!r} is the hook point the SAE at {points[id(site_point)]!r} sits on (another name "
                f"for it); unsplice that one first"
            )
        points[id(site_point)] = name
        input_point = get_hook_point(model, sae.cfg.hook_name) if sae.cfg.is_transcoder else None
        if sae.cfg.is_transcoder and sae.cfg.hook_name_out is None:
            raise ValueError(f"transcoder reading {sae.cfg.hook_name!r} has no hook_name_out")
        _check_width(model, sae.cfg.hook_name, sae.cfg.d_in, "d_in")
        if sae.cfg.is_transcoder:
            _check_width(model, name, sae.cfg.output_width, "d_out")
        taken.add(name)
        plans.append((sae, site_point, input_point))
    return plans


def _check_not_on_an_sae(model: nn.Module, sae: SAE, parents: set[str]) -> None:
    """Refuse to splice onto (or, for a transcoder, read from) a hook point of a spliced SAE: it
    would be left behind, and the parent SAE altered, when the parent is unspliced."""
    hooks = [sae.cfg.site] + ([sae.cfg.hook_name] if sae.cfg.is_transcoder else [])
    for hook in hooks:
        prefix, _, sub_hook = hook.rpartition(".")
        parent = prefix if prefix in parents and sub_hook in HOOK_NAMES else None
        if parent is None:  # another spelling (a bridge alias) of a spliced SAE's hook point
            point = cast(Any, model).hook_dict.get(hook)
            parent = next(
                (
                    site.name
                    for site in _sites(model).values()
                    if any(point is getattr(site.sae, h) for h in HOOK_NAMES)
                ),
                None,
            )
        if parent is not None:
            raise ValueError(
                f"cannot splice an SAE at {hook!r}: it is a hook point of the SAE spliced at {parent!r}; "
                "SAEs can only be spliced at the model's own hook points"
            )


def _check_width(model: nn.Module, hook_name: str, width: int, field: str) -> None:
    expected = expected_width(model, hook_name)
    if expected is not None and expected != width:
        raise ValueError(
            f"SAE {field}={width} does not match the activation at {hook_name!r}, which has width {expected}"
        )


def unsplice(model: nn.Module, hook_names: str | Iterable[str] | None = None) -> None:
    """Remove spliced SAEs (all, or those at ``hook_names``); the model is then bitwise as before."""
    check_model(model)
    sites = _sites(model)
    names = (
        list(sites)
        if hook_names is None
        else [hook_names]
        if isinstance(hook_names, str)
        else list(hook_names)
    )
    names = list(dict.fromkeys(names))  # a site named twice is removed once
    unknown = [n for n in names if n not in sites]
    if unknown:
        raise ValueError(f"no SAE is spliced at {unknown}; spliced sites: {sorted(sites)}")
    removed: list[str] = []
    for name in names:
        site = sites.pop(name)
        site_point = get_hook_point(model, name)
        for hook_name in HOOK_NAMES:
            site_point._modules.pop(hook_name, None)
            sub = getattr(site.sae, hook_name)
            # what model.reset_hooks() would remove, it can no longer reach once detached: the
            # temporary hooks would fire again on the next splice of this SAE
            sub.remove_hooks("both", including_permanent=False)
            sub.name = hook_name
            removed.append(f"{name}.{hook_name}")
        state = _state(site_point, create=False)
        if state is not None:
            state.site = None
        _drop_state_if_empty(site_point)
        if site.sae.cfg.is_transcoder:
            input_point = get_hook_point(model, site.sae.cfg.hook_name)
            tap_state = _state(input_point, create=False)
            if tap_state is not None:
                tap_state.remove_tap(site)
            _drop_state_if_empty(input_point)
        site.sae.__dict__.pop("_sae_circuits_spliced_in", None)
    if not sites:
        model.__dict__.pop("_sae_circuits_sites", None)
    register_hook_points(model, {}, removed)


@contextmanager
def spliced(model: nn.Module, saes: SAE | Sequence[SAE], *, error_term: bool = True) -> Iterator[nn.Module]:
    """Splice for the duration of a ``with`` block; the model is restored even on error.

    >>> with sc.spliced(model, [sae], error_term=False):
    ...     print(list(sc.saes_of(model)))
    ...     loss = model(tokens, return_type="loss")
    ['blocks.1.hook_resid_post']
    >>> sc.saes_of(model), loss.shape
    ({}, torch.Size([]))
    """
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    splice(model, saes, error_term=error_term)
    try:
        yield model
    finally:  # only what is still spliced: the block may have unspliced some (and is raising)
        left = saes_of(model)
        unsplice(model, [sae.cfg.site for sae in saes if left.get(sae.cfg.site) is sae])


def site_of(model: nn.Module, site: str | SAE) -> _Site:
    """The spliced site named by a hook name (a transcoder's input hook also works) or an SAE."""
    sites = _sites(model)
    if isinstance(site, SAE):
        for candidate in sites.values():
            if candidate.sae is site:
                return candidate
        raise ValueError(f"this SAE ({site.cfg.site!r}) is not spliced into the model")
    if not isinstance(site, str):
        raise TypeError(f"site must be a hook name or an SAE, got {type(site).__name__}")
    if site in sites:
        return sites[site]
    for candidate in sites.values():
        if candidate.sae.cfg.hook_name == site:
            return candidate
    raise ValueError(f"no SAE is spliced at {site!r}; spliced sites: {sorted(sites) or 'none'}")


@contextmanager
def bypassed(model: nn.Module) -> Iterator[nn.Module]:
    """Make every spliced site a pass-through for the ``with`` block (the model's own activations
    flow; no dictionary runs). Attribution uses it to put its own leaves at the sites."""
    states = [
        state
        for hook_point in cast(dict[str, HookPoint], model.hook_dict).values()  # a TL model's hook points
        if (state := hook_point.__dict__.get(_STATE_ATTR)) is not None
    ]
    saved = [(state.site, state.taps) for state in states]
    try:
        for state in states:
            state.site, state.taps = None, []
        yield model
    finally:
        for state, (site, taps) in zip(states, saved):
            state.site, state.taps = site, taps
