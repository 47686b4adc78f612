"""The carried-statement header codec (`schemas.carried`): any JSON object round-trips in
plain header characters, and what is not a carriable statement is refused with the reason."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import carried

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=12), JSON, max_size=6))
def test_any_object_round_trips_in_header_characters(value: dict[str, Any]) -> None:
    text = carried.encode(value)
    assert re.fullmatch(r"[A-Za-z0-9_-]*", text)
    assert carried.decode(text) == value


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", max_size=30), JSON)
def test_a_statement_round_trips(signature: str, round_: Any) -> None:
    payload = {"silo": "a", "round": round_}
    text = carried.statement_header("validation_result", payload, signature)
    assert carried.parse_statement(text) == ("validation_result", payload, signature)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("!!", "base64url"),
        (carried.encode({"kind": "validation_result"}) + "x", "base64url"),
        (carried.encode({"kind": "decline", "payload": {}, "signature": "s"}), "'decline'"),
        (carried.encode({"kind": "validation_result", "payload": [], "signature": "s"}), "object"),
        (
            carried.encode({"kind": "validation_result", "payload": {}, "signature": "s" * 257}),
            "256",
        ),
        ("A" * (carried.MAX_HEADER_CHARS + 1), "characters"),
        (base64.urlsafe_b64encode(b"[" * 2000 + b"]" * 2000).decode(), "nested too deeply"),
    ],
)
def test_what_is_not_a_carriable_statement_is_refused(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        carried.parse_statement(text)


def test_a_list_is_not_an_object() -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        carried.decode("W10")  # base64url of "[]"
