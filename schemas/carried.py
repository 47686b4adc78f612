"""A silo statement that rides on the silo's next request of the run instead of its own.

Every round a silo signs its validation gate's verdict (`validation_result`) before it
trains. Sent on its own, that is one more signed request per silo and round (a signature
check, a nonce, a commit) for one ledger line. A service that says so on its answers
(`CARRIES_HEADER`, listing the kinds it takes) lets the agent hold the signed statement
and send it in a header of its next POST to the same run (the update, the first
secure-aggregation message, a decline). The service records it, in a transaction of its own,
before it looks at the request itself, so the statement is in the ledger ahead of the answer
it vouches for and stays there when that answer is refused. The receipt comes back in
`RECEIPT_HEADER`, on a refusal too.

The header is not covered by the request signature; it needs no cover: the statement is
signed by the silo's own key over its run, kind and payload (`schemas.lineage`), and the
service checks that signature as it does for a statement sent alone. An older service sends
no `CARRIES_HEADER`, and its silos' agents post their statements alone, as before; an older
agent never sends `STATEMENT_HEADER`. So the wire version does not change.

Values are unpadded base64url of compact JSON, so they are plain header text.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

STATEMENT_HEADER = "X-Fedsilo-Carried-Statement"
RECEIPT_HEADER = "X-Fedsilo-Carried-Receipt"
CARRIES_HEADER = "X-Fedsilo-Carries"
CARRIABLE_KINDS = ("validation_result",)
MAX_HEADER_CHARS = 6144  # a bigger statement (a long list of failed expectations) goes alone


def encode(value: dict[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(text: str) -> dict[str, Any]:
    """The JSON object a header carries.

    Raises
    ------
    ValueError
        Too long, not base64url, not JSON, or not an object.
    """
    if len(text) > MAX_HEADER_CHARS:
        raise ValueError(f"{len(text)} characters, more than {MAX_HEADER_CHARS}")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64url JSON ({exc})") from exc
    except RecursionError as exc:  # a statement is a shallow object
        raise ValueError("JSON nested too deeply to be a statement") from exc
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def statement_header(kind: str, payload: dict[str, Any], signature: str) -> str:
    return encode({"kind": kind, "payload": payload, "signature": signature})


def parse_statement(text: str) -> tuple[str, dict[str, Any], str]:
    """(kind, payload, signature) of a carried statement.

    Raises
    ------
    ValueError
        Malformed, or a kind that does not ride along (`CARRIABLE_KINDS`).
    """
    value = decode(text)
    kind, payload, signature = value.get("kind"), value.get("payload"), value.get("signature")
    if kind not in CARRIABLE_KINDS:
        raise ValueError(f"kind {kind!r} is not one that rides along {CARRIABLE_KINDS}")
    if not isinstance(payload, dict) or not isinstance(signature, str) or len(signature) > 256:
        raise ValueError("needs an object payload and a signature of at most 256 characters")
    return kind, payload, signature
