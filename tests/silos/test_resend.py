"""A resent protocol message after a lost answer: `already_answered` means the first arrived.

The service is `httpx.MockTransport` (a fake at the process edge): it answers every POST with
the refusal under test.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.specs import ModelSpec, RunSpec
from schemas.tasks import SecAggInfo, SecAggShareTask
from schemas.wire import ErrorCode, ErrorOut
from silos import secure_round
from silos.client import SiloClient
from silos.client_errors import Conflict

SPEC = RunSpec(
    federation="f", dataset="heart_disease", model=ModelSpec(kind="logreg", n_features=3)
)
INFO = SecAggInfo(
    stage="share", roster=["a", "b"], roster_keys={}, threshold=2, dim=4, bits=32, clip=1.0
)
TASK = SecAggShareTask(run_id="r1", round=1, spec=SPEC, secagg=INFO)


def _client(code: ErrorCode, posted: list[bytes]) -> SiloClient:
    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(request.content)
        return httpx.Response(409, content=ErrorOut(code=code, detail="x").model_dump_json())

    return SiloClient(
        "http://service.test",
        federation="f",
        silo="a",
        key=Ed25519PrivateKey.generate(),
        transport=httpx.MockTransport(handler),
    )


def test_an_already_answered_resend_is_taken_as_delivered(tmp_path: Path) -> None:
    posted: list[bytes] = []
    base = tmp_path / "r1-r1"
    client = _client(ErrorCode.already_answered, posted)
    secure_round._send_once(client, TASK, base, "share", lambda: b"first")
    secure_round._send_once(client, TASK, base, "share", lambda: b"rebuilt")
    assert posted == [b"first", b"first"]  # the resend repeats the kept bytes


def test_another_conflict_is_raised(tmp_path: Path) -> None:
    client = _client(ErrorCode.conflict, [])
    with pytest.raises(Conflict):
        secure_round._send_once(client, TASK, tmp_path / "r1-r1", "share", lambda: b"m")
