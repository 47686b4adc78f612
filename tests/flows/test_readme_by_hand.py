"""README.md's "Running a federation by hand" block runs as written.

The test extracts the section's bash block and runs it with bash (``set -euo pipefail``) in an
empty folder, with the real `fedsilo` and `prefect` executables: the service, two silo agents
and the coordinator's training run are real processes on 127.0.0.1. Three adaptations, all
textual: the service's port 8700 becomes a free port (and FEDSILO_SERVICE_URL, the commands'
default, points there), ``--rounds 20`` becomes ``--rounds 2``,
and Prefect is the test session's server (`prefect_api_url`) rather than a second one started
by the block's ``prefect server start`` line, which is dropped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.live_service import free_port

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Running a federation by hand"
BLOCK_S = 540


def by_hand_block(readme: str) -> str:
    """The first ```bash block after the section's heading."""
    section = readme[readme.index(SECTION) :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"README.md: no ```bash block under {SECTION!r}"
    return match.group(1)


def adapted(block: str, port: int, prefect_api_url: str) -> str:
    lines = [line for line in block.splitlines() if not line.startswith("prefect server start")]
    assert len(lines) == len(block.splitlines()) - 1, "the block starts Prefect once"
    script = "\n".join(lines)
    for old, new in (
        ("http://127.0.0.1:4200/api", prefect_api_url),
        ("8700", str(port)),
        ("--rounds 20", "--rounds 2"),
    ):
        assert old in script, f"README block no longer contains {old!r}"
        script = script.replace(old, new)
    return "set -euo pipefail\n" + script + "\n"


def test_the_block_names_every_step() -> None:
    block = by_hand_block(README.read_text())
    for step in (
        "prefect server start",
        "export PREFECT_API_URL=",
        "fedsilo aggregator serve",
        "fedsilo federation create heart",
        "fedsilo contract publish",
        "fedsilo silo start",
        "fedsilo silo approve",
        "fedsilo train",
        "fedsilo lineage verify",
    ):
        assert step in block, step


def test_readme_by_hand_runs_as_written(tmp_path: Path, prefect_api_url: str) -> None:
    for tool in ("curl", "jq"):
        assert shutil.which(tool), f"the README block needs {tool} on PATH"
    port = free_port()
    script = tmp_path / "by_hand.sh"
    script.write_text(adapted(by_hand_block(README.read_text()), port, prefect_api_url))
    work = tmp_path / "work"
    work.mkdir()
    env = dict(
        os.environ,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        GX_ANALYTICS_ENABLED="false",
        # the commands' default --service-url is port 8700: point them at the moved service
        FEDSILO_SERVICE_URL=f"http://127.0.0.1:{port}",
    )
    env.pop("FEDSILO_ADMIN_TOKEN", None)
    log = tmp_path / "by_hand.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its background jobs share our kill below
        )
        try:
            rc = proc.wait(timeout=BLOCK_S)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    output = log.read_text(errors="replace")
    assert rc == 0, f"README block exited {rc}:\n{output[-6000:]}"
    assert "federation heart exists" in output
    assert re.search(r"run [0-9a-f]{32}: model .* sha256 [0-9a-f]{64}", output), output[-3000:]
    assert "ledger OK" in output and "anchors OK" in output, output[-3000:]
    assert list((work / "report").glob("*.html"))
    assert (work / "events.jsonl").read_text().strip()
    assert (work / "svc" / "admin.token").stat().st_mode & 0o077 == 0
