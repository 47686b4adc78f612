"""Errors the service raises; `main.py` maps each class to one HTTP status.

ServiceError
├── NotFound           404  unknown federation, silo, run, round or model version
├── Unauthorized       401  unknown silo, bad signature, replayed or stale request
├── Forbidden          403  silo not approved, or not a participant of the run
├── Conflict           409  wrong state: round closed, duplicate submission, run not running
├── InvalidPayload     422  a body that does not match what the round expects
└── PayloadTooLarge    413  a body over the configured size limit
"""


class ServiceError(Exception):
    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ServiceError):
    status_code = 404


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class Conflict(ServiceError):
    status_code = 409


class InvalidPayload(ServiceError):
    status_code = 422


class PayloadTooLarge(ServiceError):
    status_code = 413
