"""Errors of the aggregation package's client side.

ClientError
├── ServiceRejected     the service answered 4xx: the request is wrong; retrying won't help
└── ServiceUnavailable  no service address answered within the retry budget
"""


class ClientError(Exception):
    """Base class for errors talking to the aggregation service."""


class ServiceRejected(ClientError):
    def __init__(self, status: int, detail: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {detail}")
        self.status = status
        self.detail = detail


class ServiceUnavailable(ClientError):
    pass
