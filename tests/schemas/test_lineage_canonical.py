"""Canonical JSON of ledger payloads: one text per value, exact round trips, strict refusals."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.lineage import CanonicalJsonError, canonical_json, is_canonical, parse_json

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)), max_size=6), children)
    ),
    max_leaves=20,
)


@given(json_values)
def test_round_trip_is_exact_and_stable(value: object) -> None:
    text = canonical_json(value)
    back = parse_json(text)
    assert canonical_json(back) == text
    assert is_canonical(text)
    # Floats come back as the identical double (repr is shortest round-trip), ints stay ints.
    assert json.dumps(back, sort_keys=True) == json.dumps(value, sort_keys=True)


@given(st.dictionaries(st.text(max_size=5), _scalars, min_size=1, max_size=8), st.randoms())
def test_key_order_does_not_matter(mapping: dict, rnd) -> None:  # type: ignore[no-untyped-def]
    items = list(mapping.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(mapping)


def test_documented_form() -> None:
    value = {"b": [1, 1.0, 0.1, 1e-07, 1e16], "a": "héllo\n", "c": None, "d": True}
    assert canonical_json(value) == (
        '{"a":"héllo\\n","b":[1,1.0,0.1,1e-07,1e+16],"c":null,"d":true}'
    )
    assert canonical_json((1, 2)) == "[1,2]"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_refused_with_the_path(bad: float) -> None:
    with pytest.raises(CanonicalJsonError, match=r"payload\.metrics\[1\] is"):
        canonical_json({"metrics": [0.5, bad]})


def test_non_string_keys_would_collide_and_are_refused() -> None:
    with pytest.raises(CanonicalJsonError, match="key 1 of type int"):
        canonical_json({1: "a"})


def test_unknown_types_and_lone_surrogates_are_refused() -> None:
    with pytest.raises(CanonicalJsonError, match="is a bytes"):
        canonical_json({"digest": b"\x00"})
    with pytest.raises(CanonicalJsonError, match="lone surrogate"):
        canonical_json({"name": "\ud800"})


def test_parse_refuses_duplicates_nan_and_noncanonical_text() -> None:
    with pytest.raises(CanonicalJsonError, match="duplicate JSON keys"):
        parse_json('{"a":1,"a":2}')
    with pytest.raises(CanonicalJsonError, match="NaN is not JSON"):
        parse_json('{"a":NaN}')
    with pytest.raises(CanonicalJsonError, match="not valid JSON"):
        parse_json('{"a":')
    assert not is_canonical('{"b":1, "a":2}')
    assert not is_canonical('{"b":1,"a":2}')
    assert is_canonical('{"a":2,"b":1}')
