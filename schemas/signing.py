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
# The silo's Ed25519 signature over its ledger statement for an update (schemas.lineage).
STATEMENT_HEADER = "X-Fedsilo-Statement-Signature"


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


def update_statement_payload(
    silo: str, round_: int, digest: str, n_examples: int, base_round: int | None = None
) -> dict[str, object]:
    """The ledger payload of an accepted update, which the silo signs as its statement.

    `base_round`: an asynchronous secure buffer's masked update was trained for an earlier
    round (its staleness is counted from it), so the silo signs that round too and the
    service accepts the statement only if its cohort records the same one."""
    payload: dict[str, object] = {
        "silo": silo,
        "round": round_,
        "digest": digest,
        "n_examples": n_examples,
    }
    if base_round is not None:
        payload["base_round"] = base_round
    return payload
