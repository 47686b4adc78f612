"""The retrying HTTP base of both service clients: the silo's `silos.client.SiloClient` and
the coordinator's `flows.service_client.CoordinatorClient`.

Transport failures and 5xx answers are retried with capped exponential backoff (at most
`BACKOFF_CAP_S` between tries) for `retry_for_s` (None: forever, as the silo agent does),
rotating over every configured service address, so a restarted or failed-over service is
invisible to the caller; an outage is logged once when it starts (address and error) and once
when it ends (how long it lasted). A 4xx answer is final: its `ErrorOut` body is raised as the
`ServiceRejected` subclass its `code` names (`silos.client_errors`). Every request carries the
wire version (`X-Fedsilo-Wire`). With several addresses (service processes sharing one
database), `spread=True` (or FEDSILO_SERVICE_SPREAD=1) sends each request to an address
chosen at random.

With mutual TLS the client follows its certificate files: renewed on disk, they are loaded
before the next try (no restart), and a certificate that expires within 14 days (or has
expired) is logged at start and once a day. A silo request the service refuses for its
timestamp (`ClockSkew`: this host's clock is off) is retried, as an outage, by a client that
retries forever (the agent): NTP may step the clock back.
"""

from __future__ import annotations

import logging
import os
import random
import re
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from schemas.wire import OCTET_STREAM, WIRE_HEADER, WIRE_VERSION, ErrorCode, ErrorOut
from silos import metrics
from silos.client_errors import (
    BY_CODE,
    BY_STATUS,
    CLOCK_SKEW_WORDS,
    ClockSkew,
    ServiceRejected,
    ServiceUnavailable,
    Unauthorized,
    WireVersionMismatch,
)
from silos.tls_client import TlsConfigError, TlsFiles, expiry_note, tls_hint

log = logging.getLogger("fedsilo.client")

BACKOFF_CAP_S = 30.0
"""The longest wait between two tries while no service address answers."""
EXPIRY_CHECK_S = 24 * 3600.0
"""How often a long-running client logs its certificate's coming expiry."""
# certificate file -> when its expiry was last looked at: once a day per process, however
# many clients (one per flow run, say) present it
_expiry_looked: dict[Path, float] = {}

# What h11 sends as a header value, narrowed to printable ASCII: no line breaks, no edge spaces
_HEADER_VALUE = re.compile(r"(?:[!-~](?:[ -~]*[!-~])?)?")


def service_url(url: str) -> str:
    """`url` as the clients join paths to it: `http(s)://host[:port]`, a trailing slash dropped.

    The service answers at the root of its address (`/v1/...`, `/healthz`) and no deployment
    puts it under a path prefix, so a path, query or fragment is refused rather than joined
    into a "Not Found"; and a malformed address is refused now rather than retried as an
    outage, which no retry ends.

    Raises
    ------
    ValueError
        Saying what is wrong with `url` (a password in it is not quoted).
    """
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise ValueError(f"{url!r} holds a space or control character")
    try:
        parts = urlsplit(url)
        _ = parts.port  # parsed on access: raises on "99999" or "abc"
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL: {exc}") from None
    if "@" in parts.netloc:  # not quoted: it may hold a password
        raise ValueError(
            f"the address of host {parts.hostname} holds a user name or password; the service "
            "takes the admin token or the silo's signature, never URL credentials"
        )
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:8700)")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host (e.g. http://127.0.0.1:8700)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"{url!r} has a path, query or fragment; give the service's root address, "
            f"{urlunsplit((parts.scheme, parts.netloc, '', '', ''))} (it serves /v1/... there)"
        )
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def check_headers(headers: dict[str, str]) -> None:
    """Refuse a header value HTTP cannot carry before sending it: httpx's own error quotes the
    value (an admin token, in full), and a malformed request is no outage to retry.

    Raises
    ------
    ValueError
        Naming the header, never its value.
    """
    for name, value in headers.items():
        if not _HEADER_VALUE.fullmatch(value):
            raise ValueError(
                f"the {name} header would hold a line break, surrounding space or a character "
                "other than printable ASCII; check the admin token (or key) it is made from"
            )


class HttpBase:
    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        retry_for_s: float | None = 120.0,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        spread: bool | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        given = [urls] if isinstance(urls, str) else list(urls)
        if not given:
            raise ValueError("at least one service URL is needed")
        self.urls = [service_url(url) for url in given]
        self.retry_for_s = retry_for_s
        self.spread = os.environ.get("FEDSILO_SERVICE_SPREAD") == "1" if spread is None else spread
        self._current = 0
        # mutual TLS (production): explicit files, else FEDSILO_TLS_* when set
        self._tls = tls or TlsFiles.from_env()
        self._tls_lock = threading.Lock()
        self._tls_stamp = self._tls.stamp() if self._tls else ()
        self._tls_context = self._tls.context() if self._tls else None
        self._log_expiry()
        verify: ssl.SSLContext | bool = self._tls_context or True
        self._http = httpx.Client(timeout=timeout_s, transport=transport, verify=verify)

    def close(self) -> None:
        self._http.close()

    def _log_expiry(self) -> None:
        """Log the certificate's coming (or past) expiry, at most once a day per file."""
        if self._tls is None:
            return
        now = time.monotonic()
        looked = _expiry_looked.get(self._tls.cert)
        if looked is not None and now - looked < EXPIRY_CHECK_S:
            return
        _expiry_looked[self._tls.cert] = now
        note = expiry_note(self._tls)
        if note is not None:
            log.log(note[0], "%s", note[1])

    def _expired_note(self) -> str | None:
        """What to tell the operator when our own certificate has expired, else None."""
        note = expiry_note(self._tls) if self._tls else None
        return note[1] if note is not None and note[0] == logging.ERROR else None

    def _follow_tls_files(self) -> None:
        """Load renewed TLS files into the live context (new connections present them), and
        log the certificate's coming expiry once a day; a stat of three files when unchanged."""
        if self._tls is None or self._tls_context is None:
            return
        stamp = self._tls.stamp()
        if stamp != self._tls_stamp:
            with self._tls_lock:
                if stamp != self._tls_stamp:
                    self._reload(stamp)
        self._log_expiry()

    def _reload(self, stamp: tuple[tuple[int, int, int], ...]) -> None:
        assert self._tls is not None and self._tls_context is not None
        self._tls_stamp = stamp  # a bad set is logged once, and tried again when it changes
        try:
            self._tls.reload(self._tls_context)
        except TlsConfigError as exc:  # half-written renewal: keep presenting the old one
            log.warning("TLS files changed but not loaded (%s); still using the previous", exc)
            return
        log.warning("TLS certificate %s reloaded (renewed on disk)", self._tls.cert)
        _expiry_looked.pop(self._tls.cert, None)  # the new certificate's expiry: look now

    def _headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return {}

    def _answered(self, resp: httpx.Response) -> None:
        """Every final answer (below 500, a refusal included) before it is returned or raised:
        a subclass reads what the service says on every answer."""

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        json_body: Any = None,
        content_type: str = OCTET_STREAM,
        timeout: float | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        if json_body is not None:
            body = (
                json_body.model_dump_json().encode()
                if hasattr(json_body, "model_dump_json")
                else json_body
            )
            content_type = "application/json"
        started = time.monotonic()
        delay = 0.1
        last_error = ""
        outage: float | None = None  # when every address had failed: logged, and its end too
        if self.spread:
            # at random, not in turn: an agent's requests come in a fixed cycle (poll, answer,
            # poll, answer), and taking turns over two addresses would send every poll to one
            # process and every answer to the other
            self._current = random.randrange(len(self.urls))
        untried = len(self.urls)  # fail over to every other address before backing off
        skewed: float | None = None  # when the service began refusing this host's clock
        while True:
            self._follow_tls_files()
            base = self.urls[self._current]
            untried -= 1
            headers = {
                "Content-Type": content_type,
                WIRE_HEADER: str(WIRE_VERSION),
                **(extra_headers or {}),
                **self._headers(method, path, body),
            }
            check_headers(headers)
            try:
                resp = self._http.request(
                    method,
                    base + path,
                    content=body,
                    headers=headers,
                    timeout=timeout or self._http.timeout,
                )
            except httpx.LocalProtocolError:  # its text may quote a header: the admin token
                last_error = f"{base}: LocalProtocolError (not quoted: it may hold a header)"
            except httpx.TransportError as exc:
                last_error = f"{base}: {type(exc).__name__}: {exc}"
                last_error += tls_hint(base, exc, self._tls)
            else:
                if resp.status_code < 500:
                    self._answered(resp)
                    if outage is not None:
                        metrics.outage_ended(time.monotonic() - outage, getattr(self, "silo", ""))
                        log.warning(
                            "aggregation service back at %s after %.1fs (%s %s)",
                            base,
                            time.monotonic() - outage,
                            method,
                            path.split("?", 1)[0],
                        )
                        outage = None
                    if resp.status_code >= 400:
                        refused = rejection(resp, method, path)
                        if not (isinstance(refused, ClockSkew) and self.retry_for_s is None):
                            raise refused
                        if skewed is None:
                            skewed = time.monotonic()
                            log.error(
                                "the service refused %s %s: %s; check this host's clock (NTP, "
                                "e.g. `timedatectl status`); retrying, at most %.0fs apart",
                                method,
                                path.split("?", 1)[0],
                                refused.detail,
                                BACKOFF_CAP_S,
                            )
                        time.sleep(delay)  # signed anew, with a fresh timestamp, next try
                        delay = min(delay * 2, BACKOFF_CAP_S)
                        continue
                    if skewed is not None:
                        log.warning(
                            "the service accepts this host's clock again after %.0fs",
                            time.monotonic() - skewed,
                        )
                    _check_wire(resp, method, path)
                    return resp
                last_error = f"{base}: HTTP {resp.status_code} {_detail(resp)}"
            self._current = (self._current + 1) % len(self.urls)
            waited = time.monotonic() - started
            if self.retry_for_s is not None and waited >= self.retry_for_s:
                raise ServiceUnavailable(
                    f"{method} {path}: no aggregation service answered within "
                    f"{self.retry_for_s:.0f}s (tried {self.urls}); last error: {last_error}"
                )
            if untried > 0:
                continue
            if outage is None:
                outage = time.monotonic()
                metrics.outage_started(getattr(self, "silo", ""))
                retrying = "forever" if self.retry_for_s is None else f"for {self.retry_for_s:.0f}s"
                if (expired := self._expired_note()) is not None:  # not a guess: say so
                    log.error(
                        "%s %s: %s; retrying %s, at most %.0fs apart",
                        method,
                        path.split("?", 1)[0],
                        expired,
                        retrying,
                        BACKOFF_CAP_S,
                    )
                else:
                    log.warning(
                        "aggregation service unreachable (%s %s): %s; retrying %s, at most "
                        "%.0fs apart",
                        method,
                        path.split("?", 1)[0],
                        last_error,
                        retrying,
                        BACKOFF_CAP_S,
                    )
            untried = len(self.urls)
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP_S)


def _detail(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("detail", resp.text))
    except (ValueError, AttributeError):
        return resp.text[:500]


def rejection(resp: httpx.Response, method: str, path: str) -> ServiceRejected:
    """The typed error of a 4xx answer, by its `ErrorOut.code` (else by its status)."""
    try:
        error: ErrorOut | None = ErrorOut.model_validate_json(resp.content)
    except ValueError:
        error = None  # not the service's own body (a proxy, a framework default)
    detail = error.detail if error is not None else _detail(resp)
    code = error.code if error is not None else BY_STATUS.get(resp.status_code)
    theirs = resp.headers.get(WIRE_HEADER)
    if code == ErrorCode.wire_version or (theirs and theirs.strip() != str(WIRE_VERSION)):
        version = theirs or (str(error.wire) if error else "unknown")
        return WireVersionMismatch(
            resp.status_code, detail, method, path, ErrorCode.wire_version, service_version=version
        )
    cls = BY_CODE.get(code, ServiceRejected) if code is not None else ServiceRejected
    if cls is Unauthorized and CLOCK_SKEW_WORDS in detail:
        cls = ClockSkew
    return cls(resp.status_code, detail, method, path, code)


def _check_wire(resp: httpx.Response, method: str, path: str) -> None:
    """Refuse an answer that says it speaks another wire version (absent: not checked)."""
    theirs = resp.headers.get(WIRE_HEADER)
    if theirs is not None and theirs.strip() != str(WIRE_VERSION):
        raise WireVersionMismatch(
            resp.status_code,
            "its answer was not read",
            method,
            path,
            ErrorCode.wire_version,
            service_version=theirs,
        )
