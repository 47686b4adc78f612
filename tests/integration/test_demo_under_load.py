"""`fedsilo demo` completes on a loaded machine (issue 15's done-when).

The demo runs as a user runs it, a `fedsilo demo` subprocess on its own workspace that starts
its own Prefect server, service and four silo agents, with two busy processes beside it (the
load of a shared hospital server). Only the round count is cut: deadlines and readiness are the
demo's defaults, which must hold under this load. Every stage still runs: Prefect server,
service, enrolment, validation, secure-aggregation rounds, the evaluation round, the comparison
with each hospital alone and pooled, the summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.cpu_hog import CpuHog, wait_busy
from support.live_service import free_port
from support.progress import file_sizes, wait_progressing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
HOSPITALS = ["cleveland", "hungary", "switzerland", "va_long_beach"]
ROUNDS = 2
FEDSILO = str(Path(sys.executable).with_name("fedsilo"))


def test_demo_completes_beside_two_busy_processes(tmp_path: Path, cpu_hog: CpuHog) -> None:
    wait_busy(cpu_hog)  # the load is on before the demo starts
    hog_before = cpu_hog.cpu_seconds()
    ws = tmp_path / "demo-workspace"
    out = tmp_path / "demo.out"
    env = dict(os.environ, COLUMNS="120", NO_COLOR="1")
    env.pop("PREFECT_API_URL", None)  # the demo starts its own Prefect server, as `make demo`
    args = [FEDSILO, "demo", "--workspace", str(ws), "--rounds", str(ROUNDS)]
    args += ["--prefect-port", str(free_port()), "--service-port", str(free_port())]
    with out.open("wb") as log:
        demo = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        # the demo prints and its processes log as it goes: a stall, not slowness, fails it
        wait_progressing(
            lambda: demo.poll() is not None,
            lambda: (out.stat().st_size, file_sizes([ws])),
            "fedsilo demo to finish",
            lambda: out.read_text(errors="replace")[-6000:],
            poll_s=0.5,
        )
    finally:
        if demo.poll() is None:
            demo.terminate()  # SIGTERM: the demo stops the processes it started
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
    printed = out.read_text(errors="replace")
    assert demo.returncode == 0, printed[-6000:]
    # the load stayed on the whole time: both hogs alive, burning CPU while the demo ran
    assert cpu_hog.alive() == 2
    assert cpu_hog.cpu_seconds() - hog_before > 5.0, cpu_hog.cpu_seconds()
    summary = json.loads((ws / "demo-summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["kind"] for r in rounds] == ["train"] * ROUNDS + ["evaluate"], rounds
    # every hospital took part in every round: none missed a deadline under the load
    for record in rounds:
        assert sorted(record["contributors"]) == HOSPITALS, record
    model = Path(summary["model_path"]).read_bytes()
    assert hashlib.sha256(model).hexdigest() == summary["model_sha256"]
    assert 0.5 < summary["federated_accuracy"] <= 1.0, summary["federated_accuracy"]
    models = {row["model"] for row in summary["rows"]}
    assert {"federated", "pooled (centralized)"} <= models, models
    assert summary["run_id"] in printed  # the "where to look" section names the run
