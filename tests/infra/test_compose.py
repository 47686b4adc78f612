"""infra/docker-compose.yml: valid for docker-compose, and its commands work as plain processes.

There is no Docker engine here, so the containers' command lines, environments and mounted
files are taken from the compose file and run on 127.0.0.1: container paths become folders
under tmp_path, service names and ports become 127.0.0.1 and free ports, and PostgreSQL is
the test server. The certificates come from infra/bootstrap.sh and the coordinator's steps
are infra/README.md's, so a passing test means the runbook's commands complete a round over
mutual TLS.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support.live_service import free_port

from flows.processes import Proc, base_env, spawn
from flows.service_client import CoordinatorClient
from silos.config import load_silo_config
from silos.tls_client import TlsFiles

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE = INFRA / "docker-compose.yml"
# silo name -> its compose service
SILOS = {"cleveland": "silo-cleveland", "hungary": "silo-hungary", "va_long_beach": "silo-va"}
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.integration


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_docker_compose_config_accepts_the_file() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        message = "docker-compose is not installed (apt-get install docker-compose)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}: .ci/run must install it")
        pytest.skip(message)
    env = dict(os.environ, FEDSILO_PG_PASSWORD="compose-check")
    ok = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    env.pop("FEDSILO_PG_PASSWORD")
    missing = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True
    )
    assert missing.returncode != 0 and "FEDSILO_PG_PASSWORD" in missing.stderr


def test_topology_has_every_part_in_production_mode() -> None:
    services = _compose()["services"]
    silos = set(SILOS.values())
    assert set(services) == {"postgres", "prefect", "service", "coordinator"} | silos
    command = services["service"]["command"]
    for flag in ("--production", "--tls-cert", "--tls-key", "--client-ca"):
        assert flag in command
    assert "@postgres:5432/" in services["service"]["environment"]["FEDSILO_SERVICE_DATABASE_URL"]
    assert (
        "@postgres:5432/prefect"
        in (services["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"])
    )
    volumes = [services[s]["volumes"] for s in sorted(silos)]
    data = [next(v for v in vols if v.endswith(":/data")) for vols in volumes]
    certs = [next(v for v in vols if ":/certs" in v) for vols in volumes]
    assert len(set(data)) == len(set(certs)) == len(SILOS)  # each silo its own
    for name in SILOS:
        cfg = load_silo_config(INFRA / "silos" / name / "silo.toml")
        assert cfg.tls is not None and cfg.service.urls == ["https://service:8443"]


class Local:
    """Maps the compose file's container paths, host names and ports onto this machine."""

    def __init__(self, root: Path, db_urls: dict[str, str]) -> None:
        self.root = root
        self.db_urls = db_urls  # compose database name -> local SQLAlchemy URL
        # API ports, the service's ops port (9100) and the Prefect worker's health port (8080)
        self.ports = {p: str(free_port()) for p in ("8443", "4200", "9100", "8080")}
        self.metrics_ports: dict[Path, str] = {}  # silo.toml -> its agent's /metrics port
        self.addresses = {
            "https://service:8443": f"https://127.0.0.1:{self.ports['8443']}",
            "http://prefect:4200/api": f"http://127.0.0.1:{self.ports['4200']}/api",
        }

    def mounts(self, svc: dict[str, Any]) -> dict[str, Path]:
        out = {}
        for spec in svc.get("volumes", []):
            src, dst = spec.split(":")[:2]
            if src.startswith("."):
                out[dst] = self.root / "infra" / src
            else:  # a named volume
                out[dst] = self.root / "volumes" / src
                out[dst].mkdir(parents=True, exist_ok=True)
        return out

    def text(self, value: str, mounts: dict[str, Path]) -> str:
        for a, b in self.addresses.items():
            value = value.replace(a, b)
        for dst in sorted(mounts, key=len, reverse=True):
            value = re.sub(rf"(?<![\w/.]){re.escape(dst)}(?=/|\"|$|\s)", str(mounts[dst]), value)
        return value

    def args(self, svc: dict[str, Any], command: list[str]) -> list[str]:
        mounts = self.mounts(svc)
        out = [str(BIN / command[0])]
        for arg in command[1:]:
            arg = {"0.0.0.0": "127.0.0.1", **self.ports}.get(arg, arg)
            out.append(self.text(arg, mounts))
        return out

    def env(self, svc: dict[str, Any], **extra: str) -> dict[str, str]:
        mounts = self.mounts(svc)
        env = base_env(**extra)
        env.pop("PREFECT_API_URL", None)
        for key, value in (svc.get("environment") or {}).items():
            value = str(value)
            if "@postgres:5432/" in value:
                driver = value.split("://")[0]
                local = self.db_urls[value.rsplit("/", 1)[1]]
                value = driver + "://" + local.split("://", 1)[1]
            env[key] = self.ports.get(value, self.text(value, mounts))
        return env

    def health(self, svc: dict[str, Any], port: str | None = None) -> list[str]:
        """The service's health check command, run here (`port`: the agent's metrics port)."""
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "python", test
        code = test[3]
        for container, local in {**self.ports, "9464": port or "9464"}.items():
            code = code.replace(f"127.0.0.1:{container}/", f"127.0.0.1:{local}/")
        return [sys.executable, "-c", code]

    def localize_file(self, svc: dict[str, Any], container_path: str) -> Path:
        """Rewrite a mounted config file (a silo.toml) in place under tmp_path."""
        mounts = self.mounts(svc)
        path = mounts[container_path]
        text = self.text(path.read_text(), mounts)
        if "metrics_port = 9464" in text:  # one port per agent here, as in its own container
            self.metrics_ports[path] = str(free_port())
            text = text.replace("metrics_port = 9464", f"metrics_port = {self.metrics_ports[path]}")
        path.write_text(text)
        return path


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
        depends = svc.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for dep, cond in depends.items():
            assert cond == {"condition": "service_healthy"}, (name, dep, cond)
            assert "healthcheck" in services[dep], (name, dep)
    assert "/readyz" in services["service"]["healthcheck"]["test"][-1]
    assert "/api/health" in services["prefect"]["healthcheck"]["test"][-1]
    assert "--with-healthcheck" in services["coordinator"]["command"]
    for name in SILOS:
        cfg = load_silo_config(INFRA / "silos" / name / "silo.toml")
        assert cfg.agent.metrics_port == 9464, name  # what the agents' health check polls
    assert set(services["coordinator"]["depends_on"]) == {"prefect", "service"}
    assert all(set(services[s]["depends_on"]) == {"service"} for s in SILOS.values())


def _run(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    return _run_all([(args, env)], timeout)[0]


def _run_all(commands: list[tuple[list[str], dict[str, str]]], timeout: float = 120) -> list[str]:
    """Run independent commands side by side; each must succeed. Returns their outputs."""
    procs = [
        subprocess.Popen(
            args,
            env={**env, "COLUMNS": "200"},  # rich wraps at 80 columns without a terminal
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, env in commands
    ]
    outputs = []
    for (args, _), proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"{args}:\n{out}\n{err}"
        outputs.append(out)
    return outputs


def _passes(command: list[str]) -> bool:
    """Whether a health check command succeeds (a hung one counts as a failure)."""
    try:
        return subprocess.run(command, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _wait(check: Callable[[], bool], what: str, procs: list[Proc], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                pytest.fail(f"{proc.name} exited:\n{proc.log_tail(40)}")
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    logs = "\n".join(f"== {p.name}\n{p.log_tail(20)}" for p in procs)
    pytest.fail(f"{what} within {timeout:.0f}s did not happen\n{logs}")


def _has_workers(api: str, pool: str) -> bool:
    resp = httpx.post(f"{api}/work_pools/{pool}/workers/filter", json={}, timeout=5)
    return resp.status_code == 200 and len(resp.json()) > 0


def _stop_all(procs: list[Proc]) -> None:
    for proc in reversed(procs):
        proc.stop(5)


@pytest.fixture
def two_databases(
    pg_database_factory: Callable[[], AbstractContextManager[str]],
) -> Iterator[dict[str, str]]:
    with pg_database_factory() as service_db, pg_database_factory() as prefect_db:
        yield {"fedsilo": service_db, "prefect": prefect_db}


@pytest.mark.timeout(900)  # 6-10 min measured on a 2-core machine at load average 20-37
def test_compose_commands_complete_a_round_over_mutual_tls(
    tmp_path: Path, two_databases: dict[str, str]
) -> None:
    services = _compose()["services"]
    shutil.copytree(INFRA, tmp_path / "infra", ignore=shutil.ignore_patterns("secrets", ".env"))
    local = Local(tmp_path, two_databases)
    logs = tmp_path / "logs"
    with ExitStack() as stack:
        procs: list[Proc] = []
        stack.callback(_stop_all, procs)

        def start(name: str, svc: dict[str, Any], **env: str) -> Proc:
            proc = spawn(
                name, local.args(svc, svc["command"]), logs / f"{name}.log", local.env(svc, **env)
            )
            procs.append(proc)
            return proc

        # Prefect server on PostgreSQL first: its first start takes longest
        prefect = start("prefect", services["prefect"], PREFECT_HOME=str(tmp_path / "prefect-home"))
        # the runbook's certificates, then each silo's data in its own volume
        _run(
            ["bash", str(tmp_path / "infra" / "bootstrap.sh")],
            base_env(FEDSILO=str(BIN / "fedsilo")),
        )
        _run_all(
            [
                (
                    local.args(
                        svc, ["fedsilo", "silo", "demo-data", name, "--out", "/data/data.csv"]
                    ),
                    local.env(svc),
                )
                for name, svc in ((n, services[SILOS[n]]) for n in SILOS)
            ]
        )
        service = start("service", services["service"])
        coord_svc = services["coordinator"]
        coord_env = local.env(coord_svc)
        tls = TlsFiles(
            Path(coord_env["FEDSILO_TLS_CA"]),
            Path(coord_env["FEDSILO_TLS_CERT"]),
            Path(coord_env["FEDSILO_TLS_KEY"]),
        )
        url = coord_env["FEDSILO_SERVICE_URL"]
        context = tls.context()
        _wait(
            lambda: httpx.get(f"{url}/healthz", verify=context, timeout=2).status_code == 200,
            "the service answering over TLS",
            [service],
            120,
        )
        _wait(  # the container's health check, as Docker would run it
            lambda: subprocess.run(local.health(services["service"]), timeout=30).returncode == 0,
            "the service's health check (/readyz on its ops port) passing",
            [service],
            120,
        )
        with pytest.raises(httpx.TransportError):  # production: plain HTTP is refused
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)

        def coordinator_cmd(*args: str) -> tuple[list[str], dict[str, str]]:
            command = ["fedsilo", *args, "--token-file", "/certs/admin.token"]
            return local.args(coord_svc, command), coord_env

        def coordinator_cli(*args: str, timeout: float = 120) -> str:
            return _run(*coordinator_cmd(*args), timeout)

        coordinator_cli("federation", "create", "heart")
        # the federation's contract, as infra/README.md's "Publish the contract" does it
        example = "/var/lib/fedsilo/heart_disease.toml"
        _run(
            local.args(
                coord_svc, ["fedsilo", "contract", "example", "heart_disease", "-o", example]
            ),
            coord_env,
            120,
        )
        assert "published" in coordinator_cli(
            "contract", "publish", example, "--federation", "heart"
        )
        agents, agent_health = [], []
        for name in SILOS:
            svc = services[SILOS[name]]
            toml = local.localize_file(svc, "/etc/fedsilo/silo.toml")
            agents.append(start(SILOS[name], svc))
            agent_health.append(local.health(svc, local.metrics_ports[toml]))
        token = (tls.cert.parent / "admin.token").read_text().strip()
        client = CoordinatorClient(url, token=token, tls=tls, retry_for_s=10)
        _wait(
            lambda: sorted(s.name for s in client.silos("heart")) == sorted(SILOS),
            "three silos enrolling",
            [service, *agents],
            300,  # upper bounds: agents import torch, Prefect and GX, slow on a busy CPU
        )
        for index, check in enumerate(agent_health):
            _wait(partial(_passes, check), f"agent {index}'s health check", [service, *agents], 120)
        approvals = [coordinator_cmd("silo", "approve", n, "--federation", "heart") for n in SILOS]
        assert all("approved" in out for out in _run_all(approvals))
        _wait(
            lambda: subprocess.run(local.health(services["prefect"]), timeout=30).returncode == 0,
            "Prefect server healthy",
            [prefect],
            300,
        )
        # the coordinator container's own command: a Prefect process worker on its pool
        worker = start("coordinator", coord_svc)
        _wait(
            lambda: subprocess.run(local.health(coord_svc), timeout=30).returncode == 0,
            "the coordinator worker's health check passing",
            [worker],
            180,
        )
        out = coordinator_cli(
            "train",
            "--federation", "heart",
            "--dataset", "heart_disease",
            "--rounds", "1",
            "--min-silos", "3",
            "--round-deadline-s", "300",
            "--output-dir", "/var/lib/fedsilo/models",
            timeout=400,  # a silo's first round imports Great Expectations: slow on a busy CPU
        )  # fmt: skip
        run_id = re.search(r"run (\S+): model", out)
        assert run_id, out
        run = client.get_run(run_id.group(1))
        assert run.status == "finished", run
        assert sorted(run.participants) == sorted(SILOS)
        trained = [r for r in client.rounds(run.run_id) if r.kind == "train"]
        assert [r.status for r in trained] == ["aggregated"]
        models = list((tmp_path / "volumes" / "coordinator-data" / "models").rglob("*"))
        assert any(p.is_file() for p in models), "the coordinator saved no model"
        api = local.addresses["http://prefect:4200/api"]
        _wait(
            lambda: _has_workers(api, "fedsilo-coordinator"),
            "the coordinator's worker registering with its work pool",
            [worker, prefect],
            120,
        )
