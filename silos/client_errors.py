"""Errors of the service clients (the silo's `SiloClient`, the coordinator's client).

ClientError
├── ServiceRejected          the service answered 4xx: the request is wrong; retrying won't help
│   ├── InvalidPayload       422 invalid_payload: the body or a parameter is malformed
│   ├── NotFound             404 not_found
│   ├── Unauthorized         401 unauthorized: unknown silo, bad signature or token, replay
│   │   └── ClockSkew        401 a silo request's timestamp is off the service's clock
│   ├── Forbidden            403 forbidden: not approved (yet), not a participant
│   ├── Conflict             409 conflict: wrong state (round closed, stage not ready)
│   │   ├── AlreadyAnswered  409 already_answered: this silo already answered this step
│   │   └── BetweenBuffers   409 between_buffers: an async run's next buffer is not open yet
│   ├── TooLarge             413 too_large
│   └── WireVersionMismatch  400 wire_version: client and service speak other wire versions
└── ServiceUnavailable       no service address answered within the retry budget

Callers branch on the class (the service's `ErrorOut.code`), never on the text of `detail`;
`ClockSkew` alone is told by the service's words (`CLOCK_SKEW_WORDS`, one place), as the wire
has no code of its own for it.
"""

from __future__ import annotations

from schemas.wire import WIRE_HEADER, WIRE_VERSION, ErrorCode


class ClientError(Exception):
    """Base class for errors talking to the aggregation service."""


class ServiceRejected(ClientError):
    """A final (4xx) answer: `status`, the service's `code` and its human `detail`."""

    code: ErrorCode | None = None

    def __init__(
        self,
        status: int,
        detail: str,
        method: str,
        path: str,
        code: ErrorCode | None = None,
    ) -> None:
        super().__init__(f"{method} {path} -> {status}: {detail}")
        self.status = status
        self.detail = detail
        self.method = method
        self.path = path
        if code is not None:
            self.code = code


class InvalidPayload(ServiceRejected):
    """The body or a parameter is malformed; `detail` names the field at fault."""

    code = ErrorCode.invalid_payload


class NotFound(ServiceRejected):
    """No such federation, run, round or model version at the service."""

    code = ErrorCode.not_found


class Unauthorized(ServiceRejected):
    """Unknown silo, bad signature or token, or a replayed request: check the key."""

    code = ErrorCode.unauthorized


CLOCK_SKEW_WORDS = "off the service clock"
"""What the service's 401 says of a silo request's timestamp outside its window
(aggregation/service/auth.py)."""


class ClockSkew(Unauthorized):
    """A silo request's timestamp is too far from the service's clock: this host's clock is
    off (NTP). The agent retries it: a clock stepped back into the window ends it."""


class Forbidden(ServiceRejected):
    """Not (yet) approved by the coordinator, or not a participant of the run."""

    code = ErrorCode.forbidden


class Conflict(ServiceRejected):
    """The run or round is in another state (closed, stage not ready): wait for a task."""

    code = ErrorCode.conflict


class AlreadyAnswered(Conflict):
    """This silo's earlier answer to the step arrived: the first one stands."""

    code = ErrorCode.already_answered


class BetweenBuffers(Conflict):
    """An asynchronous run between two buffers: send the same update again shortly."""

    code = ErrorCode.between_buffers


class TooLarge(ServiceRejected):
    """The body exceeds the service's limit; `detail` says the limit."""

    code = ErrorCode.too_large


class WireVersionMismatch(ServiceRejected):
    """The service speaks another wire version than this client (`WIRE_VERSION`)."""

    code = ErrorCode.wire_version

    def __init__(
        self,
        status: int,
        detail: str,
        method: str,
        path: str,
        code: ErrorCode | None = None,
        *,
        service_version: str = "unknown",
    ) -> None:
        super().__init__(
            status,
            f"this client speaks wire version {WIRE_VERSION} ({WIRE_HEADER}) but the service "
            f"speaks version {service_version}: install the same fedsilo release at the silo "
            f"and the service ({detail})",
            method,
            path,
            code,
        )
        self.service_version = service_version


class ServiceUnavailable(ClientError):
    pass


BY_CODE: dict[ErrorCode, type[ServiceRejected]] = {
    cls.code: cls
    for cls in (
        InvalidPayload,
        NotFound,
        Unauthorized,
        Forbidden,
        Conflict,
        AlreadyAnswered,
        BetweenBuffers,
        TooLarge,
        WireVersionMismatch,
    )
    if cls.code is not None
}

# an answer without an `ErrorOut` body (a proxy, a framework default): judge by the status
BY_STATUS: dict[int, ErrorCode] = {
    422: ErrorCode.invalid_payload,
    404: ErrorCode.not_found,
    401: ErrorCode.unauthorized,
    403: ErrorCode.forbidden,
    409: ErrorCode.conflict,
    413: ErrorCode.too_large,
}
