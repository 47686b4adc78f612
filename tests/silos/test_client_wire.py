"""The silo client on the wire: version header, typed errors from `ErrorOut.code`, framed bodies.

The service is replaced by `httpx.MockTransport` (a fake at the process edge, said so): these
tests pin what the client sends and how it reads answers, not the service's behaviour.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.frames import pack_frames
from schemas.wire import OCTET_STREAM, WIRE_HEADER, WIRE_VERSION, ErrorCode, ErrorOut
from silos.client import SiloClient
from silos.client_errors import (
    AlreadyAnswered,
    BetweenBuffers,
    Conflict,
    Forbidden,
    InvalidPayload,
    NotFound,
    ServiceRejected,
    TooLarge,
    Unauthorized,
    WireVersionMismatch,
)

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler) -> SiloClient:
    return SiloClient(
        "http://service.test",
        federation="f",
        silo="a",
        key=Ed25519PrivateKey.generate(),
        retry_for_s=2.0,
        transport=httpx.MockTransport(handler),
    )


def _error(status: int, code: ErrorCode, detail: str = "no") -> httpx.Response:
    body = ErrorOut(code=code, detail=detail).model_dump_json()
    return httpx.Response(status, content=body, headers={WIRE_HEADER: str(WIRE_VERSION)})


def test_every_request_carries_the_wire_version() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    client = _client(handler)
    assert client.next_task(wait_s=0) is None
    client.sit_out("r1", 1, "data failed validation")
    assert [r.headers[WIRE_HEADER] for r in seen] == [str(WIRE_VERSION)] * 2


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (422, ErrorCode.invalid_payload, InvalidPayload),
        (404, ErrorCode.not_found, NotFound),
        (401, ErrorCode.unauthorized, Unauthorized),
        (403, ErrorCode.forbidden, Forbidden),
        (409, ErrorCode.conflict, Conflict),
        (409, ErrorCode.already_answered, AlreadyAnswered),
        (409, ErrorCode.between_buffers, BetweenBuffers),
        (413, ErrorCode.too_large, TooLarge),
    ],
)
def test_a_refusal_is_raised_as_the_class_its_code_names(
    status: int, code: ErrorCode, cls: type[ServiceRejected]
) -> None:
    client = _client(lambda request: _error(status, code, "round 3 is closed"))
    with pytest.raises(cls) as err:
        client.whoami()
    assert type(err.value) is cls
    assert (err.value.status, err.value.code, err.value.detail) == (
        status,
        code,
        "round 3 is closed",
    )


def test_already_answered_is_a_conflict_and_a_conflict_is_not_already_answered() -> None:
    assert issubclass(AlreadyAnswered, Conflict)
    client = _client(lambda request: _error(409, ErrorCode.conflict))
    with pytest.raises(Conflict) as err:
        client.whoami()
    assert not isinstance(err.value, AlreadyAnswered)


def test_a_body_without_a_code_is_judged_by_its_status() -> None:
    client = _client(lambda request: httpx.Response(404, json={"detail": "Not Found"}))
    with pytest.raises(NotFound, match="Not Found"):
        client.whoami()
    client = _client(lambda request: httpx.Response(418, text="teapot"))
    with pytest.raises(ServiceRejected) as err:
        client.whoami()
    assert type(err.value) is ServiceRejected and err.value.code is None


def test_a_wire_version_refusal_names_both_versions() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = ErrorOut(code=ErrorCode.wire_version, detail="speak 9", wire=9).model_dump_json()
        return httpx.Response(400, content=body, headers={WIRE_HEADER: "9"})

    with pytest.raises(WireVersionMismatch) as err:
        _client(handler).whoami()
    message = str(err.value)
    assert f"wire version {WIRE_VERSION}" in message and "speaks version 9" in message
    assert err.value.service_version == "9" and err.value.status == 400


def test_an_answer_in_another_wire_version_is_not_read() -> None:
    client = _client(lambda request: httpx.Response(204, headers={WIRE_HEADER: "1"}))
    with pytest.raises(WireVersionMismatch, match="speaks version 1"):
        client.next_task(wait_s=0)


def test_server_errors_are_retried_then_answered() -> None:
    answers = iter([_error(500, ErrorCode.internal), httpx.Response(204)])
    assert _client(lambda request: next(answers)).next_task(wait_s=0) is None


def test_secagg_and_hist_messages_arrive_as_frames() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(
            request.url.path + ("?" + request.url.query.decode() if request.url.query else "")
        )
        body = pack_frames([b"request", b"advert-a", b"advert-b"])
        return httpx.Response(200, content=body, headers={"Content-Type": OCTET_STREAM})

    client = _client(handler)
    assert client.secagg_get("r1", 2, "adverts") == [b"request", b"advert-a", b"advert-b"]
    assert client.hist_inbox("r1", 7)[0] == b"request"
    assert paths == [
        "/v1/silo/runs/r1/rounds/2/secagg/adverts",
        "/v1/silo/runs/r1/hist/inbox?counter=7",
    ]


def test_an_extension_answer_is_posted_as_octet_stream() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"digest": "abc"})

    answer = _client(handler).submit_extension("r1", 4, b"\x00\x01sketch")
    assert answer == {"digest": "abc"}
    (request,) = seen
    assert request.method == "POST" and request.url.path == "/v1/silo/runs/r1/rounds/4/extension"
    assert request.headers["Content-Type"] == OCTET_STREAM and request.content == b"\x00\x01sketch"
