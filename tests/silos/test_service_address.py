"""The clients' service addresses and headers: a malformed address is refused up front (an
outage would retry it forever: the agent retries without end), a trailing slash is dropped,
and a header HTTP cannot carry is refused without quoting it (it is an admin token).

The service is replaced by `httpx.MockTransport` (a fake at the process edge, said so).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from silos.client_errors import ServiceUnavailable
from silos.config import load_silo_config
from silos.exceptions import SiloConfigError
from silos.http_base import HttpBase, service_url

SECRET = "P3KTYQ6gzH4uvvc0eXRtYXhxYwXVeE1tpeEIOj1zRv4"


class _Bearer(HttpBase):
    """A client that sends `token` as the coordinator's does."""

    def __init__(self, token: str, transport: httpx.BaseTransport) -> None:
        super().__init__("http://service.test", retry_for_s=0, transport=transport)
        self.token = token

    def _headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8700/", "http://127.0.0.1:8700"),
        ("HTTPS://fl.example.org:8443", "https://fl.example.org:8443"),
        ("https://[::1]:8443/", "https://[::1]:8443"),
    ],
)
def test_a_root_address_is_kept_without_its_trailing_slash(url: str, expected: str) -> None:
    assert service_url(url) == expected
    assert HttpBase(url).urls == [expected]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8700/api", "has a path, query or fragment"),
        ("http://127.0.0.1:8700/?x=1", "has a path, query or fragment"),
        ("http://127.0.0.1:8700#top", "has a path, query or fragment"),
        ("127.0.0.1:8700", "is not an http:// or https:// URL"),
        ("ftp://127.0.0.1:8700", "is not an http:// or https:// URL"),
        ("", "is not an http:// or https:// URL"),
        ("http://", "names no host"),
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://[::1", "is not a valid URL"),
        ("http://ho st:8700", "space or control character"),
    ],
)
def test_a_malformed_address_is_refused_before_any_request(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        HttpBase(url)


def test_credentials_in_an_address_are_refused_without_quoting_them() -> None:
    with pytest.raises(ValueError, match="user name or password") as caught:
        service_url("http://admin:hunter2@127.0.0.1:8700")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("token", [f"{SECRET}\n# rotated 2026-12-01", "héllo", f"{SECRET}\t"])
def test_a_header_http_cannot_carry_is_refused_unsent_and_unquoted(token: str) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    client = _Bearer(token, httpx.MockTransport(handler))
    with pytest.raises(ValueError, match="Authorization header") as caught:
        client.request("GET", "/v1/runs")
    assert sent == [] and token.strip() not in str(caught.value)
    assert not isinstance(caught.value, ServiceUnavailable)  # not an outage


def test_a_transport_error_that_quotes_a_header_is_not_repeated() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError(f"Illegal header value b'Bearer {SECRET}'")

    client = _Bearer(SECRET, httpx.MockTransport(handler))
    with pytest.raises(ServiceUnavailable) as caught:
        client.request("GET", "/v1/runs")
    assert SECRET not in str(caught.value) and "LocalProtocolError" in str(caught.value)


SILO_TOML = """
[silo]
name = "cleveland"
federation = "heart"

[data]
path = "data.csv"
contract = "heart_disease"

[service]
urls = [{urls}]
"""


def _config(tmp_path: Path, urls: str) -> Path:
    path = tmp_path / "silo.toml"
    path.write_text(SILO_TOML.format(urls=urls))
    return path


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8700/api", "has a path"),
        ("127.0.0.1:8700", "is not an http:// or https:// URL"),
        ("http://", "names no host"),
    ],
)
def test_silo_toml_refuses_a_malformed_address_naming_the_file(
    tmp_path: Path, url: str, problem: str
) -> None:
    with pytest.raises(SiloConfigError, match=problem) as caught:
        load_silo_config(_config(tmp_path, f'"{url}"'))
    assert "silo.toml" in str(caught.value) and "key 'service.urls'" in str(caught.value)


def test_silo_toml_drops_a_trailing_slash(tmp_path: Path) -> None:
    cfg = load_silo_config(_config(tmp_path, '"http://a:8700/", "http://b:8700"'))
    assert cfg.service.urls == ["http://a:8700", "http://b:8700"]
