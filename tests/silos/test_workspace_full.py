"""A full workspace (ENOSPC) while a step writes its state declines the round naming the step
and the file, and leaves no partial temporary file behind.

The disk is faked at the process edge: `os.fdopen`'s file refuses every write.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.specs import ModelSpec, RunSpec
from schemas.tasks import SecAggAdvertiseTask, SecAggInfo
from schemas.wire import SecAggStage
from silos import decline, secure_round
from silos.config import load_silo_config
from silos.decline import Declined
from silos.files import write_private
from silos.handlers import REGISTRY, SiloContext
from silos.keys import load_or_create_key
from silos.local_data import LocalData

MODEL = ModelSpec(kind="logreg", n_features=3)
SPEC = RunSpec(federation="f", dataset="heart_disease", model=MODEL)


class FullDisk:
    """A file whose writes fail as on a full disk."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fill_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(real(fd, mode)))


def test_a_failed_write_names_its_file_and_leaves_no_partial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill_disk(monkeypatch)
    path = tmp_path / "x.state"
    with pytest.raises(OSError) as caught:
        write_private(path, b"secret")
    assert caught.value.errno == errno.ENOSPC and str(path) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_full_workspace_in_the_advertise_step_declines_naming_it_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "silo.toml"
    cfg.write_text(
        '[silo]\nname = "a"\nfederation = "f"\n[data]\npath = "d.csv"\n'
        'contract = "heart_disease"\n[service]\nurls = ["http://127.0.0.1:1"]\n'
    )
    config = load_silo_config(cfg)
    key = load_or_create_key(config.key_path)
    own = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    info = SecAggInfo(
        stage=SecAggStage.advertise,
        roster=["a", "b"],
        roster_keys={"a": own, "b": own},
        threshold=2,
        dim=4,
        bits=32,
        clip=1.0,
    )
    task = SecAggAdvertiseTask(run_id="run1", round=1, spec=SPEC, secagg=info)
    rows = np.zeros((4, 3), np.float32)
    data = LocalData(rows, np.zeros(4, np.float32), rows, np.zeros(4, np.float32), 3, {}, "")
    client = SimpleNamespace(silo="a", key=key)
    ctx = SiloContext(client, config, data)  # type: ignore[arg-type]
    _fill_disk(monkeypatch)

    with pytest.raises(Declined) as caught:
        REGISTRY.dispatch(ctx, task)

    declined = caught.value
    state = secure_round.round_file(config.workspace, task, ".state")
    assert (declined.scope, declined.cause) == ("round", "internal")  # not "training"
    assert declined.reason.startswith("secagg_advertise step: ")
    assert str(state) in declined.reason and "No space left on device" in declined.reason
    assert decline.declined_for(declined) is declined  # what the agent sends and logs
    assert list(state.parent.glob("*.tmp")) == []
