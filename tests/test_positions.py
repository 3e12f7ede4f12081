"""Position specs: validation and the chunk mask, checked against a brute-force definition."""

from __future__ import annotations

import inspect
import typing

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sae_circuits as sc
from sae_circuits.positions import Chunk, Positions, PositionSpec, normalize_positions

specs = st.one_of(
    st.none(),
    st.sampled_from(["prompt", "generated"]),
    st.integers(0, 40),
    st.lists(st.integers(0, 40), max_size=5),
    st.builds(
        slice, st.none() | st.integers(0, 40), st.none() | st.integers(0, 40), st.none() | st.integers(1, 4)
    ),
)


def brute_force(spec, position: int, prompt_length: int) -> bool:
    if spec is None:
        return True
    if spec == "prompt":
        return position < prompt_length
    if spec == "generated":
        return position >= prompt_length
    if isinstance(spec, slice):
        return position in range(40)[spec]
    return position in spec


@given(spec=specs, start=st.integers(0, 20), length=st.integers(1, 20), prompt=st.integers(1, 20))
def test_chunk_mask_matches_brute_force(spec, start, length, prompt):
    spec = normalize_positions(spec)
    chunk = Chunk(start, length, prompt, generating=True, open_ended=True)
    mask = chunk.mask(spec, torch.device("cpu"))
    got = [True] * length if mask is None else mask.tolist()
    assert got == [brute_force(spec, start + i, prompt) for i in range(length)]


@given(
    bad=st.one_of(
        st.integers(max_value=-1),
        st.lists(st.integers(max_value=-1), min_size=1),
        st.text(min_size=1).filter(lambda s: s not in ("prompt", "generated")),
        st.floats(),
        st.builds(slice, st.integers(max_value=-1), st.none()),
    )
)
def test_invalid_specs_raise_value_or_type_errors(bad):
    with pytest.raises((ValueError, TypeError)):
        normalize_positions(bad)


def test_plain_forward_rejects_positions_past_the_end():
    chunk = Chunk(0, 4, 4, generating=False, open_ended=False)
    with pytest.raises(IndexError, match="position 4 is beyond the sequence"):
        chunk.mask((1, 4), torch.device("cpu"))
    assert chunk.mask("generated", torch.device("cpu")).tolist() == [False] * 4


def test_numpy_and_tensor_positions_are_accepted():
    assert normalize_positions(np.int64(3)) == (3,)
    assert normalize_positions(np.array(3)) == (3,)
    assert normalize_positions(np.array([5, 1, 5], dtype=np.int32)) == (1, 5)
    assert normalize_positions([np.uint8(2), torch.tensor(0), 7]) == (0, 2, 7)
    assert normalize_positions(torch.tensor([4, 2])) == (2, 4)
    spec = normalize_positions(slice(np.int64(1), torch.tensor(9), np.int16(2)))
    assert spec == slice(1, 9, 2) and all(type(v) is int for v in (spec.start, spec.stop, spec.step))
    assert all(type(p) is int for p in normalize_positions(np.array([1, 2])))
    assert normalize_positions("prompt") == "prompt"
    with pytest.raises(ValueError, match="-2 is negative"):
        normalize_positions(np.array([1, -2]))


@pytest.mark.parametrize(
    "bad",
    [
        np.float64(2.0),
        np.array([1.0, 2.0]),
        np.array(2.0),
        np.bool_(True),
        np.array([True, False]),
        torch.tensor(True),
        torch.tensor([1.0]),
        np.array([[1, 2]]),
        slice(np.float64(1.0), None),
    ],
    ids=repr,
)
def test_whole_floats_and_bools_are_not_positions(bad):
    with pytest.raises((TypeError, ValueError)):
        normalize_positions(bad)


# --------------------------------------------------------------------------- the Positions type


def test_every_public_positions_argument_is_typed_positions():
    for fn in (sc.ablate, sc.clamp, sc.scale, sc.add, sc.noise, sc.steer):
        assert typing.get_type_hints(fn)["positions"] == Positions, fn.__name__
        assert inspect.signature(fn).parameters["positions"].default is None
    assert typing.get_type_hints(sc.Intervention)["positions"] == PositionSpec
    assert typing.get_type_hints(Chunk.mask)["spec"] == PositionSpec
    assert typing.get_type_hints(normalize_positions)["return"] == PositionSpec


def _runtime_type(member):
    """The class an instance of one member of a union alias has (``Literal["a"]``: ``str``)."""
    origin = typing.get_origin(member)
    return str if origin is typing.Literal else origin or member


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, None),
        (3, (3,)),
        ([7, 2, 7], (2, 7)),
        ((4,), (4,)),
        (np.array([1, 0]), (0, 1)),
        (torch.tensor([6]), (6,)),
        (slice(2, None), slice(2, None)),
        ("prompt", "prompt"),
        ("generated", "generated"),
    ],
    ids=repr,
)
def test_each_form_of_positions_normalises_to_a_position_spec(spec, expected):
    got = normalize_positions(spec)
    assert got == expected and type(got) is type(expected)
    assert isinstance(got, tuple(_runtime_type(t) for t in typing.get_args(PositionSpec)))


@given(spec=specs)
def test_normalising_a_position_spec_again_changes_nothing(spec):
    """Interventions normalise on construction, so a spec already normalised must come back as it is."""
    once = normalize_positions(spec)
    assert normalize_positions(once) == once
