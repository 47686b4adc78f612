"""Errors the service raises; the exception handlers (`aggregation.service.wire`) turn each
into one HTTP status and an `ErrorOut` body whose `code` clients branch on.

ServiceError
├── NotFound            404 not_found         unknown federation, silo, run, round or model
├── Unauthorized        401 unauthorized      unknown silo, bad signature, replayed or stale request
├── Forbidden           403 forbidden         silo not approved, or not a participant of the run
├── Conflict            409 conflict          wrong state: round closed, stage not ready, run over
│   └── AlreadyAnswered 409 already_answered  this silo already answered this step differently
├── InvalidPayload      422 invalid_payload   a body that does not match what the round expects
└── PayloadTooLarge     413 too_large         a body over the configured size limit

A database that cannot serve now (down, restarting, out of connections) is no ServiceError:
`wire.database_unavailable` turns SQLAlchemy's error into 503 (code ``internal``) with
``Retry-After``, which every fedsilo client retries.
"""

from __future__ import annotations

from schemas.wire import ErrorCode


class ServiceError(Exception):
    status_code = 500
    code = ErrorCode.internal

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ServiceError):
    status_code = 404
    code = ErrorCode.not_found


class Unauthorized(ServiceError):
    status_code = 401
    code = ErrorCode.unauthorized


class Forbidden(ServiceError):
    status_code = 403
    code = ErrorCode.forbidden


class Conflict(ServiceError):
    status_code = 409
    code = ErrorCode.conflict


class AlreadyAnswered(Conflict):
    """The silo already answered this step (update, evaluation, protocol message) with
    something else: the first answer stands. A byte-identical retry is accepted instead."""

    code = ErrorCode.already_answered


class BetweenBuffers(Conflict):
    """An asynchronous run's buffer just closed and the coordinator has not opened the next:
    the update is not refused for what it is, only for when it came (the silo resends it)."""

    code = ErrorCode.between_buffers


class InvalidPayload(ServiceError):
    status_code = 422
    code = ErrorCode.invalid_payload


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = ErrorCode.too_large
