"""`fedsilo aggregator backup` / `restore`: a backup taken mid-run brings a wiped hub back.

The restore test drives the whole federation as real processes (service, four silo agents,
the coordinator's flow in a process of its own so it can be killed with the hub), takes a
backup while rounds are running, lets the run go on for another round (the agents are then ahead
of the backup), loses the service's workspace, restores it, restarts the service and resumes the
run: every silo takes up the rounds the restored hub opens again, the run completes and
`fedsilo lineage verify` passes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from support.fault_helpers import (
    START_S,
    current_round,
    latest_run_id,
    query,
    start_federation,
    train,
    wait_until,
)
from support.live_service import coordinator, enrolled_silo, service_in_thread

from flows.processes import base_env, spawn

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 6
COORDINATOR = """
import sys
# the checkout first: tests/schemas (a folder of tests) must not shadow the schemas package
sys.path[:1] = [sys.argv[1].rsplit("/", 1)[0], sys.argv[1]]
from pathlib import Path
from support.fault_helpers import train
train([sys.argv[2]], Path(sys.argv[3]).read_text().strip(), Path(sys.argv[4]), int(sys.argv[5]),
      secure=False, deadline_s=600)
"""


def fedsilo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=base_env(),
        cwd=REPO,
        check=False,
    )


@pytest.mark.integration
@pytest.mark.timeout(1500)  # four agents start, a run, a restore, the rest of the run: 2 cores
def test_backup_mid_run_then_wipe_restore_and_the_run_completes(
    tmp_path: Path, prefect_api_url: str
) -> None:
    fed = start_federation(tmp_path, prefect_api_url)
    workspace = tmp_path / "service"
    token_file = tmp_path / "admin.token"
    shutil.copy(workspace / "admin.token", token_file)
    script = tmp_path / "coordinator.py"
    script.write_text(COORDINATOR)
    args = [sys.executable, str(script), str(REPO / "tests"), fed.urls[0], str(token_file)]
    flow = spawn(
        "coordinator",
        [*args, str(tmp_path / "models-1"), str(ROUNDS)],
        tmp_path / "coordinator.log",
        base_env(PREFECT_API_URL=prefect_api_url),
    )
    try:
        # mid-run: at least two rounds closed with models, more to come
        def round_3_open() -> bool:
            assert flow.alive(), f"the coordinator exited:\n{flow.log_tail()}"
            return (current_round(fed) or ("", 0, None, ""))[1] >= 3

        wait_until(round_3_open, 3 * START_S, "round 3 to open", fed.logs)
        run_id = latest_run_id(fed)
        assert run_id is not None
        made = fedsilo(
            "aggregator", "backup", "--out", str(tmp_path / "backup"), "--workspace", str(workspace)
        )
        assert made.returncode == 0, made.stdout + made.stderr
        manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
        models = [f for f in manifest["files"] if f["path"].startswith("workspace/models/")]
        assert len(models) >= 2 and manifest["ledger_head"]["seq"] > 0
        # the hub runs on past its backup, so the agents are ahead of what the restore brings
        # back: they answered, or hold the task of, a round the restored hub has yet to open
        after_backup = query(
            fed.db_url, "SELECT max(number) FROM rounds WHERE run_id = :r", r=run_id
        )[0][0]

        def next_round_answered() -> bool:
            answers = query(
                fed.db_url,
                "SELECT count(*) FROM contributions WHERE run_id = :r AND round > :n",
                r=run_id,
                n=after_backup,
            )
            if answers[0][0] > 0:
                return True
            # on a quick machine the run may even have finished: the restore still rewinds it
            status = query(fed.db_url, "SELECT status FROM runs WHERE id = :r", r=run_id)
            assert flow.alive() or status == [("finished",)], flow.log_tail()
            return status == [("finished",)]

        wait_until(next_round_answered, 3 * START_S, "a round after the backup", fed.logs)
        # the hub is lost: coordinator and service die, the workspace and database are gone
        flow.kill9()
        fed.services[0].stop()
        head_before = manifest["ledger_head"]
        shutil.rmtree(workspace)
        restored = fedsilo(
            "aggregator", "restore", str(tmp_path / "backup"), "--workspace", str(workspace)
        )
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "ledger OK" in restored.stdout
        last = query(fed.db_url, "SELECT seq, entry_hash FROM ledger_entries ORDER BY seq DESC")
        assert last[0] == (head_before["seq"], head_before["entry_hash"])
        fed.restart_service()
        try:
            result = train(
                fed.urls, fed.token, tmp_path / "models-2", ROUNDS, secure=False,
                resume_run_id=run_id,
            )  # fmt: skip
        except Exception as exc:
            raise AssertionError(f"the resumed run failed: {exc}\n{fed.logs()}") from exc
        assert result["run_id"] == run_id
        kinds = [r["kind"] for r in result["rounds"]]
        assert kinds.count("train") == ROUNDS and kinds[-1] == "evaluate"
        status = query(fed.db_url, "SELECT status FROM runs WHERE id = :r", r=run_id)
        assert status == [("finished",)]
        verified = fedsilo(
            "lineage",
            "verify",
            "--service-url",
            fed.urls[0],
            "--token-file",
            str(token_file),
            "--artifacts",
            str(workspace),
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        flow.kill9() if flow.alive() else None
        fed.stop()


def test_restore_refuses_a_damaged_backup_and_an_occupied_target(tmp_path: Path) -> None:
    workspace = tmp_path / "hub"
    with service_in_thread(workspace, "") as url:
        coord = coordinator(url)
        coord.create_federation("heart")
        enrolled_silo(url, coord, "heart", "cleveland")
        made = fedsilo(
            "aggregator", "backup", "--out", str(tmp_path / "b"), "--workspace", str(workspace)
        )
        assert made.returncode == 0, made.stderr
        again = fedsilo(
            "aggregator", "backup", "--out", str(tmp_path / "b"), "--workspace", str(workspace)
        )
        assert again.returncode != 0 and "not empty" in again.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["ledger_head"]["seq"] >= 1
    # an occupied target is refused unless --force; a fresh one is restored and verified
    occupied = fedsilo("aggregator", "restore", str(tmp_path / "b"), "--workspace", str(workspace))
    assert occupied.returncode != 0 and "not empty" in occupied.stderr
    forced = fedsilo(
        "aggregator", "restore", str(tmp_path / "b"), "--workspace", str(workspace), "--force"
    )
    assert forced.returncode == 0, forced.stderr
    fresh = fedsilo(
        "aggregator", "restore", str(tmp_path / "b"), "--workspace", str(tmp_path / "fresh")
    )
    assert fresh.returncode == 0, fresh.stderr
    assert f"{manifest['ledger_head']['seq']} entries" in fresh.stdout
    # one flipped byte in the signing key: the manifest no longer verifies
    key = tmp_path / "b" / "workspace" / "keys" / "service_ed25519.pem"
    data = bytearray(key.read_bytes())
    data[40] ^= 1
    key.write_bytes(bytes(data))
    damaged = fedsilo(
        "aggregator", "restore", str(tmp_path / "b"), "--workspace", str(tmp_path / "other")
    )
    assert damaged.returncode != 0
    assert "workspace/keys/service_ed25519.pem does not match its sha256" in damaged.stderr
    assert not (tmp_path / "other" / "service.db").exists()


@pytest.mark.postgres
def test_postgres_backup_restores_into_another_database(
    tmp_path: Path, pg_database_factory: Callable[[], AbstractContextManager[str]]
) -> None:
    with pg_database_factory() as source, pg_database_factory() as target:
        with service_in_thread(tmp_path / "hub", source) as url:
            coord = coordinator(url)
            coord.create_federation("heart")
            enrolled_silo(url, coord, "heart", "cleveland")
            made = fedsilo(
                "aggregator", "backup", "--out", str(tmp_path / "b"),
                "--workspace", str(tmp_path / "hub"), "--database-url", source,
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
        manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
        assert manifest["database"]["backend"] == "postgresql"
        assert (tmp_path / "b" / "database" / "postgres.dump").stat().st_size > 0
        restored = fedsilo(
            "aggregator", "restore", str(tmp_path / "b"),
            "--workspace", str(tmp_path / "new"), "--database-url", target,
        )  # fmt: skip
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert f"{manifest['ledger_head']['seq']} entries" in restored.stdout
        assert query(target, "SELECT name, status FROM silos") == [("cleveland", "approved")]
        # a database that holds state is not overwritten without --force
        again = fedsilo(
            "aggregator", "restore", str(tmp_path / "b"),
            "--workspace", str(tmp_path / "new2"), "--database-url", target,
        )  # fmt: skip
        assert again.returncode != 0 and "not empty" in again.stderr


def test_backup_takes_the_files_serve_is_given_as_options_and_refuses_a_missing_one(
    tmp_path: Path,
) -> None:
    """`aggregator backup` takes `serve`'s --admin-token-file/--tls-*/--client-ca options: the
    admin token and TLS files kept outside the workspace are in the backup and go back on
    restore. A file the service is configured with that is not there fails the backup."""
    workspace, outside = tmp_path / "hub", tmp_path / "federation"
    outside.mkdir()
    files = {}
    for option, name in [
        ("--admin-token-file", "admin.token"),
        ("--tls-cert", "service.pem"),
        ("--tls-key", "service.key"),
        ("--client-ca", "ca.pem"),
    ]:
        files[option] = outside / name
        files[option].write_text(f"{name} contents\n")
        files[option].chmod(0o600)
    with service_in_thread(workspace, ""):
        pass  # a hub with its database and keys
    options = [str(x) for pair in files.items() for x in pair]
    made = fedsilo(
        "aggregator", "backup", "--out", str(tmp_path / "b"), "--workspace", str(workspace),
        *options,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    to = {f["to"] for f in manifest["files"]}
    assert {str(p.resolve()) for p in files.values()} <= to, to
    # restored on a machine where they are gone: they come back where the service reads them
    shutil.rmtree(outside)
    restored = fedsilo(
        "aggregator", "restore", str(tmp_path / "b"), "--workspace", str(tmp_path / "new")
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert (outside / "admin.token").read_text() == "admin.token contents\n"
    assert (outside / "service.key").read_text() == "service.key contents\n"
    # a configured file that is missing is named, and no half backup is left behind
    missing = fedsilo(
        "aggregator", "backup", "--out", str(tmp_path / "b2"), "--workspace", str(workspace),
        "--tls-key", str(tmp_path / "nowhere.key"),
    )  # fmt: skip
    assert missing.returncode != 0
    assert "--tls-key" in missing.stderr and "nowhere.key" in missing.stderr
    assert not (tmp_path / "b2").exists()
    # a workspace without admin.token and no --admin-token-file: the backup says it has none
    (workspace / "admin.token").unlink(missing_ok=True)
    bare = fedsilo(
        "aggregator", "backup", "--out", str(tmp_path / "b3"), "--workspace", str(workspace)
    )
    assert bare.returncode == 0, bare.stderr
    assert "holds no admin token" in bare.stderr


def test_migrate_creates_a_new_workspace_as_serve_does(tmp_path: Path) -> None:
    workspace = tmp_path / "new" / "hub"
    migrated = fedsilo("aggregator", "migrate", "--workspace", str(workspace))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "database schema empty ->" in migrated.stdout
    assert (workspace / "service.db").is_file()
    assert workspace.stat().st_mode & 0o777 == 0o700


def test_the_service_image_has_the_postgres_client_of_the_server_it_is_deployed_with() -> None:
    """`aggregator backup|restore` on PostgreSQL run pg_dump/pg_restore in the service's
    container (infra/README): the image must have them, of the compose and k8s server's major
    version (an older pg_dump refuses a newer server; a newer one's dump trips an older one)."""
    import re

    dockerfile = (REPO / "infra" / "Dockerfile.service").read_text()
    servers = {
        m
        for path in (
            REPO / "infra" / "docker-compose.yml",
            REPO / "infra" / "k8s" / "postgres.yaml",
        )
        for m in re.findall(r"image:\s*postgres:(\d+)", path.read_text())
    }
    assert len(servers) == 1, servers
    (major,) = servers
    assert f"postgresql-client-{major}" in dockerfile
    assert f"/usr/lib/postgresql/{major}/bin" in dockerfile  # first on PATH
