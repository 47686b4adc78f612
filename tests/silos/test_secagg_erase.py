"""Secure-aggregation secrets (round private keys, self-mask seed, held shares) leave the
silo's workspace when the run fails or is cancelled, when the silo's part fails, and when a
round of it ends.

The agent's flow (`silo_training`, a real Prefect flow) runs with a real `SiloClient` whose
service is `httpx.MockTransport` (a fake at the process edge) handing out scripted tasks;
`_ready_data` is replaced by a stub table, so no validation gate runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from support.scripted_silo import scripted_agent, silo_config

from schemas.specs import ModelSpec, RunSpec
from schemas.tasks import RunEndedTask, SecAggAdvertiseTask, SecAggInfo, SecAggShareTask, Task
from silos import agent, secure_round
from silos.keys import load_or_create_key

SPEC = RunSpec(
    federation="f", dataset="heart_disease", model=ModelSpec(kind="logreg", n_features=35)
)
RUN = "run1"


def _hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _info(stage: str, own: Ed25519PrivateKey) -> SecAggInfo:
    keys = {"a": _hex(own), "b": _hex(Ed25519PrivateKey.generate())}
    keys["c"] = _hex(Ed25519PrivateKey.generate())
    return SecAggInfo(
        stage=stage,  # type: ignore[arg-type]
        roster=["a", "b", "c"],
        roster_keys=keys,
        threshold=2,
        dim=4,
        bits=32,
        clip=1.0,
    )


def _state_files(workspace: Path) -> list[str]:
    folder = workspace / "secagg"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _run_flow(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: Callable[[Ed25519PrivateKey, Path], list[Task]],
) -> tuple[Path, list[list[str]]]:
    """Run `silo_training` against the scripted tasks; returns the workspace and the secagg
    files there at each task request."""
    cfg = silo_config(tmp_path)
    workspace = tmp_path / "workspace"
    key = load_or_create_key(workspace / "keys" / "silo_ed25519.pem")
    tasks = script(key, workspace)
    seen: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/silo/tasks":
            seen.append(_state_files(workspace))
            return httpx.Response(200, content=tasks.pop(0).model_dump_json())
        if request.url.path.endswith("/secagg/adverts"):
            return httpx.Response(200, content=b"\x00\x00\x00\x01\x00\x00\x00\x03bad")
        return httpx.Response(200, json={})

    scripted_agent(monkeypatch, key, handler)
    agent.silo_training(config_path=str(cfg), run_id=RUN)
    return workspace, seen


def _advertise_then_end(status: str) -> Callable[[Ed25519PrivateKey, Path], list[Task]]:
    def script(key: Ed25519PrivateKey, workspace: Path) -> list[Task]:
        return [
            SecAggAdvertiseTask(run_id=RUN, round=1, spec=SPEC, secagg=_info("advertise", key)),
            RunEndedTask(run_id=RUN, round=1, run_status=status),
        ]

    return script


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_a_run_that_ends_mid_round_leaves_no_secagg_state(
    status: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, seen = _run_flow(tmp_path, monkeypatch, _advertise_then_end(status))
    assert "run1-r1.state" in seen[1]  # the round's private keys were on disk mid-round
    assert _state_files(workspace) == []


def test_a_failing_secagg_handler_erases_the_runs_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def script(key: Ed25519PrivateKey, workspace: Path) -> list[Task]:
        return [
            SecAggAdvertiseTask(run_id=RUN, round=1, spec=SPEC, secagg=_info("advertise", key)),
            SecAggShareTask(run_id=RUN, round=1, spec=SPEC, secagg=_info("share", key)),
        ]

    with pytest.raises(Exception):  # noqa: B017 - the malformed adverts' error, whatever it is
        _run_flow(tmp_path, monkeypatch, script)
    assert _state_files(tmp_path / "workspace") == []


def test_a_new_round_erases_the_rounds_before_it(tmp_path: Path) -> None:
    folder = tmp_path / "secagg"
    folder.mkdir()
    for name in ("run1-r1.state", "run1-r1.share.msg", "run1-r2.state", "run10-r1.state"):
        (folder / name).write_bytes(b"secret")
    assert secure_round.erase_run_state(tmp_path, "run1", before_round=2) == 2
    assert _state_files(tmp_path) == ["run1-r2.state", "run10-r1.state"]
    assert secure_round.erase_round_state(tmp_path, "run1", 2) == 1
    assert _state_files(tmp_path) == ["run10-r1.state"]
