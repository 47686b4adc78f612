"""How a silo signs an HTTP request, shared by the client and the service.

The signed message binds method, path (with query), body digest, timestamp and nonce, so a
captured request cannot be replayed (nonce), delayed (timestamp window) or altered (digest).
"""

from __future__ import annotations

import hashlib

HEADER_SILO = "X-Fedsilo-Silo"
HEADER_FEDERATION = "X-Fedsilo-Federation"
HEADER_TIMESTAMP = "X-Fedsilo-Timestamp"
HEADER_NONCE = "X-Fedsilo-Nonce"
HEADER_SIGNATURE = "X-Fedsilo-Signature"
MAX_CLOCK_SKEW_S = 300


def request_message(
    method: str, path: str, body: bytes, timestamp: str, nonce: str, federation: str, silo: str
) -> bytes:
    """The exact bytes a silo signs with its Ed25519 key for one request."""
    body_digest = hashlib.sha256(body).hexdigest()
    return "\n".join(
        [
            "fedsilo-request-v1",
            method.upper(),
            path,
            body_digest,
            timestamp,
            nonce,
            federation,
            silo,
        ]
    ).encode()
