"""`schemas.url_path`: a name or id is one URL path segment or query value, whatever it holds."""

from __future__ import annotations

import httpx
import pytest

from schemas.url_path import query, seg


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("hungary", "hungary"),
        ("site-1.b_2", "site-1.b_2"),
        ("typo/../hungary", "typo%2F..%2Fhungary"),
        ("a?b", "a%3Fb"),
        ("a#b", "a%23b"),
        ("50%", "50%25"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("a b", "a%20b"),
        (7, "7"),
    ],
)
def test_seg_escapes_everything_that_would_change_the_path(value: str, escaped: str) -> None:
    assert seg(value) == escaped


def test_the_http_client_keeps_an_escaped_segment_whole() -> None:
    # unescaped, httpx resolves the dot-segments: .../silos/typo/../hungary -> .../silos/hungary
    assert (
        httpx.URL("http://h/v1/f/silos/typo/../hungary/revoke").path == "/v1/f/silos/hungary/revoke"
    )
    for value in ("typo/../hungary", "..", "../federations"):
        url = httpx.URL(f"http://h/v1/runs/{seg(value)}/revoke")
        assert url.raw_path.decode() == f"/v1/runs/{seg(value)}/revoke"


def test_an_empty_segment_is_refused() -> None:
    with pytest.raises(ValueError, match="empty name or id"):
        seg("")


def test_query_escapes_values_and_leaves_out_none() -> None:
    assert query(limit=50, federation="heart&x=") == "?limit=50&federation=heart%26x%3D"
    assert query(after=0, run_id=None) == "?after=0"
    assert query(flag=True) == "?flag=true"
    assert query(run_id=None) == ""
