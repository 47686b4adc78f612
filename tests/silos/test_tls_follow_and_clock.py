"""A long-running client follows its TLS files (a renewed certificate is used by the next
request, no restart) and says when its certificate expires; an agent's client retries a
request the service refused for this host's clock instead of dying on it."""

from __future__ import annotations

import datetime
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aggregation.pki import Issued, issue_ca, issue_leaf
from schemas.wire import ErrorCode, ErrorOut
from silos.client_errors import ClockSkew, Unauthorized
from silos.http_base import HttpBase
from silos.tls_client import TlsFiles, expiry_note


@pytest.fixture
def ca(tmp_path: Path) -> Issued:
    ca = issue_ca("test federation CA")
    ca.write(tmp_path / "ca.pem", tmp_path / "ca.key")
    return ca


@pytest.fixture
def tls_server(tmp_path: Path, ca: Issued) -> Iterator[tuple[str, list[str]]]:
    """A mutual-TLS server on 127.0.0.1 that answers 200 and records the common name of each
    client certificate it accepted (one connection per request)."""
    issue_leaf(ca, "service", server_hosts=["127.0.0.1"]).write(
        tmp_path / "svc.pem", tmp_path / "svc.key"
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(tmp_path / "svc.pem", tmp_path / "svc.key")
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            try:
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    subject = dict(x[0] for x in conn.getpeercert()["subject"])  # type: ignore[index,misc]
                    seen.append(subject["commonName"])
                    conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json"
                        b"\r\nConnection: close\r\n\r\n{}"
                    )
            except (OSError, ssl.SSLError) as exc:
                seen.append(f"refused: {exc}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        listener.close()


def test_a_renewed_certificate_is_used_by_the_next_request_without_restart(
    tmp_path: Path, ca: Issued, tls_server: tuple[str, list[str]]
) -> None:
    url, seen = tls_server
    tls = TlsFiles(tmp_path / "ca.pem", tmp_path / "silo.pem", tmp_path / "silo.key")
    issue_leaf(ca, "silo-before", server_hosts=[]).write(tls.cert, tls.key)
    client = HttpBase(url, retry_for_s=3, tls=tls)
    client.request("GET", "/healthz")
    issue_leaf(ca, "silo-renewed", server_hosts=[], days=365).write(tls.cert, tls.key)
    client.request("GET", "/healthz")
    assert seen == ["silo-before", "silo-renewed"]


def test_a_half_written_renewal_keeps_the_previous_certificate(
    tmp_path: Path, ca: Issued, tls_server: tuple[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    url, seen = tls_server
    tls = TlsFiles(tmp_path / "ca.pem", tmp_path / "silo.pem", tmp_path / "silo.key")
    issue_leaf(ca, "silo-before", server_hosts=[]).write(tls.cert, tls.key)
    client = HttpBase(url, retry_for_s=3, tls=tls)
    renewed = issue_leaf(ca, "silo-renewed", server_hosts=[])
    renewed.write(tls.cert, tmp_path / "new.key")  # the certificate first, the key not yet
    with caplog.at_level(logging.WARNING, logger="fedsilo.client"):
        client.request("GET", "/healthz")
    assert seen == ["silo-before"]
    assert "not loaded" in caplog.text and str(tls.cert) in caplog.text
    tls.key.write_bytes((tmp_path / "new.key").read_bytes())  # the key follows
    client.request("GET", "/healthz")
    assert seen == ["silo-before", "silo-renewed"]


def test_the_certificate_expiry_is_an_error_naming_the_file_or_a_warning_within_14_days(
    tmp_path: Path, ca: Issued, caplog: pytest.LogCaptureFixture
) -> None:
    tls = TlsFiles(tmp_path / "ca.pem", tmp_path / "silo.pem", tmp_path / "silo.key")
    issue_leaf(ca, "silo", server_hosts=[], days=60).write(tls.cert, tls.key)
    assert expiry_note(tls) is None
    issue_leaf(ca, "silo", server_hosts=[], days=5).write(tls.cert, tls.key)
    level, said = expiry_note(tls) or (0, "")
    assert level == logging.WARNING and str(tls.cert) in said and "in 4 days" in said
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    issue_leaf(ca, "silo", server_hosts=[], not_after=past).write(tls.cert, tls.key)
    level, said = expiry_note(tls) or (0, "")
    assert level == logging.ERROR and f"TLS certificate {tls.cert} expired on" in said
    with caplog.at_level(logging.WARNING, logger="fedsilo.client"):  # at start, as the agent
        HttpBase("https://127.0.0.1:9", tls=tls)
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert str(tls.cert) in caplog.text


def test_an_expired_certificate_is_named_instead_of_a_guess(
    tmp_path: Path, ca: Issued, tls_server: tuple[str, list[str]]
) -> None:
    url, _ = tls_server
    tls = TlsFiles(tmp_path / "ca.pem", tmp_path / "silo.pem", tmp_path / "silo.key")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    issue_leaf(ca, "silo", server_hosts=[], not_after=past).write(tls.cert, tls.key)
    client = HttpBase(url, retry_for_s=0.3, tls=tls)
    with pytest.raises(Exception, match=f"TLS certificate {tls.cert} expired on"):
        client.request("GET", "/healthz")


SKEWED = ErrorOut(
    code=ErrorCode.unauthorized,
    detail="silo 'a': request timestamp is 400s off the service clock (allowed 300s); "
    "check the silo's clock",
)


def _skewed_then_ok(refusals: int) -> tuple[httpx.MockTransport, list[int]]:
    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) <= refusals:
            return httpx.Response(401, content=SKEWED.model_dump_json().encode())
        return httpx.Response(200, json={})

    return httpx.MockTransport(answer), calls


def test_the_agent_retries_a_request_refused_for_its_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, calls = _skewed_then_ok(refusals=2)
    agent = HttpBase("http://127.0.0.1:8700", retry_for_s=None, transport=transport)
    with caplog.at_level(logging.WARNING, logger="fedsilo.client"):
        assert agent.request("GET", "/v1/silo/next").status_code == 200
    assert len(calls) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "check this host's clock (NTP" in errors[0]
    assert "accepts this host's clock again" in caplog.text


def test_a_one_shot_client_raises_the_clock_refusal_at_once() -> None:
    transport, calls = _skewed_then_ok(refusals=1)
    one_shot = HttpBase("http://127.0.0.1:8700", retry_for_s=5, transport=transport)
    with pytest.raises(ClockSkew) as refused:
        one_shot.request("GET", "/v1/silo/next")
    assert isinstance(refused.value, Unauthorized) and len(calls) == 1
