"""Production mode: HTTPS with required client certificates, bound to the caller's identity.

uvicorn (0.54) verifies client certificates (``ssl.CERT_REQUIRED``) but does not hand the
verified certificate to the application: the ASGI TLS extension is not implemented there
(encode/uvicorn#1119, Kludex/uvicorn#3043). So `TlsHttpProtocol` wraps uvicorn's own HTTP
protocol and, once per connection (after the handshake), puts the peer's certificate into
``scope["extensions"]["tls"]`` in the extension's format. `IdentityBinding` then checks every
request against it:

- a request signed as silo S of federation F (``X-Fedsilo-Silo``/``-Federation`` headers) must
  come over a connection whose certificate is a *silo* certificate with CN = S and O = F;
- an enrolment (``POST /v1/enrol``) must name the certificate's silo and federation, and the
  Ed25519 key it enrols must be the one the coordinator certified;
- a coordinator call (``Authorization`` header) must come with the *coordinator* certificate.

A plain-HTTP request to the TLS port never reaches the application: the TLS handshake fails
and the connection is closed. Clients name that cause in their error (silos.client).
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from cryptography import x509
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from aggregation.pki import ROLE_COORDINATOR, ROLE_SILO, PeerIdentity, identity_of
from aggregation.service.settings import ServiceSettings
from aggregation.service.tls_reload import CertificateReloader
from aggregation.service.wire import error_body
from schemas import signing
from schemas.wire import WIRE_HEADER, WIRE_VERSION, ErrorCode

log = logging.getLogger("fedsilo.service.tls")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ENROL_PATH = "/v1/enrol"
RELOAD_POLL_S = 2.0  # how soon a renewed certificate file is served


def server_ssl_context(settings: ServiceSettings) -> ssl.SSLContext:
    """TLS 1.2+ server context that requires a client certificate signed by the client CA."""
    assert settings.tls_cert and settings.tls_key and settings.client_ca
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    ctx.load_verify_locations(cafile=str(settings.client_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _tls_extension(transport: Any) -> dict[str, Any] | None:
    """The ASGI TLS extension's entry for one connection, or None when it is not TLS."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain = []
    if der:
        chain.append(ssl.DER_cert_to_PEM_cert(der))
    cert = x509.load_der_x509_certificate(der) if der else None
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": cert.subject.rfc4514_string() if cert else None,
        "client_cert_error": None,
        "tls_version": ssl_object.version(),
        "cipher_suite": (ssl_object.cipher() or (None,))[0],
        # not in the spec: the parsed identity, so requests do not re-parse the certificate
        "fedsilo_peer": identity_of(cert) if cert else None,
    }


class TlsHttpProtocol(AutoHTTPProtocol):  # type: ignore[valid-type,misc]
    """uvicorn's HTTP protocol, plus the peer certificate in every request's scope."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        tls = _tls_extension(transport)
        if tls is None:
            return
        inner: ASGIApp = self.app  # type: ignore[has-type]  # set by uvicorn's __init__

        async def with_tls(scope: Scope, receive: Receive, send: Send) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await inner(scope, receive, send)

        self.app = with_tls


def uvicorn_config(app: ASGIApp, settings: ServiceSettings, **kwargs: Any) -> uvicorn.Config:
    """The uvicorn configuration for `settings`: plain HTTP in development, mutual TLS in
    production (the app must then come from create_app, which adds `IdentityBinding`)."""
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "warning",
        "timeout_keep_alive": 30,
        # in-flight long polls (up to 25 s) and a TLS peer that never answers close_notify would
        # otherwise hold shutdown; a cut-off poll is simply asked again
        "timeout_graceful_shutdown": 5,
        **kwargs,
    }
    if settings.mode != "production":
        return uvicorn.Config(app, **common)
    context = server_ssl_context(settings)
    assert settings.tls_cert and settings.tls_key and settings.client_ca
    # renewed certificates are picked up while serving: file changes or SIGHUP (tls_reload.py)
    reloader = CertificateReloader(context, settings.tls_cert, settings.tls_key, settings.client_ca)
    reloader.watch(RELOAD_POLL_S)
    reloader.on_sighup()
    return uvicorn.Config(
        app,
        http=TlsHttpProtocol,
        ssl_context_factory=lambda _config, _default: context,
        **common,
    )


def peer_of(scope: Scope) -> PeerIdentity | None:
    tls = scope.get("extensions", {}).get("tls")
    return tls.get("fedsilo_peer") if tls else None


class IdentityBinding:
    """ASGI middleware (production only): a certificate may act only as the party it names.

    It runs outside the wire-version check (`wire.WireVersion`): an unknown certificate is
    refused before anything else is read; its refusals carry the wire header themselves."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        peer = peer_of(scope)
        if peer is None:
            await _refuse(
                send,
                403,
                "production mode: this connection carries no client "
                "certificate; connect over HTTPS with the certificate the "
                "federation's CA issued you",
            )
            return
        headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope["headers"]}
        problem = _header_problem(peer, headers)
        if problem is None and scope["method"] == "POST" and scope["path"] == ENROL_PATH:
            body, receive = await _buffer(receive, self.max_body_bytes)
            if body is None:
                await _refuse(send, 413, f"request body exceeds {self.max_body_bytes} bytes")
                return
            problem = _enrol_problem(peer, body)
        if problem is not None:
            log.warning(
                "refused %s %s from certificate %s: %s",
                scope["method"],
                scope["path"],
                peer.fingerprint[:16],
                problem,
            )
            await _refuse(send, 403, problem)
            return
        await self.app(scope, receive, send)


def _header_problem(peer: PeerIdentity, headers: dict[str, str]) -> str | None:
    silo = headers.get(signing.HEADER_SILO.lower())
    federation = headers.get(signing.HEADER_FEDERATION.lower())
    if silo is not None or federation is not None:
        if peer.role != ROLE_SILO:
            return f"a {peer.role or 'non-silo'} certificate cannot sign as a silo"
        if (silo, federation) != (peer.name, peer.federation):
            return (
                f"the client certificate is silo {peer.name!r} of federation "
                f"{peer.federation!r}; it cannot act as silo {silo!r} of federation {federation!r}"
            )
    if "authorization" in headers and peer.role != ROLE_COORDINATOR:
        return (
            f"coordinator endpoints need the coordinator's certificate; this one is "
            f"{peer.role or 'unknown'} {peer.name!r}"
        )
    return None


def _enrol_problem(peer: PeerIdentity, body: bytes) -> str | None:
    if peer.role != ROLE_SILO:
        return f"only a silo certificate may enrol; this one is {peer.role or 'unknown'}"
    try:
        req = json.loads(body)
    except ValueError:
        return None  # malformed: the route answers 422 with the details
    if not isinstance(req, dict):
        return None
    if (req.get("silo"), req.get("federation")) != (peer.name, peer.federation):
        return (
            f"the client certificate is silo {peer.name!r} of federation {peer.federation!r}; "
            f"it cannot enrol silo {req.get('silo')!r} of federation {req.get('federation')!r}"
        )
    if peer.ed25519 is not None and req.get("public_key") != peer.ed25519:
        return (
            f"silo {peer.name!r}: the enrolled Ed25519 key is not the one in its certificate "
            f"({peer.ed25519[:16]}…); enrol with the key made by `fedsilo silo enrol`"
        )
    return None


async def _buffer(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """Read the whole body (at most `limit` bytes) and a `receive` that replays it."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None, receive
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _refuse(send: Send, status: int, detail: str) -> None:
    payload = error_body(ErrorCode.too_large if status == 413 else ErrorCode.forbidden, detail)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (WIRE_HEADER.lower().encode(), str(WIRE_VERSION).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
