"""Structured request logs: one JSON line per request with its id, route, status, duration and
caller; 401/403/409 at WARNING with the refusal's detail; `fedsilo aggregator serve
--log-format json` writes JSON lines only."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.live_service import coordinator, enrolled_silo, free_port, service_in_thread

from aggregation.service.observability import configure_logging
from schemas.wire import WIRE_HEADER, WIRE_VERSION

WIRE = {WIRE_HEADER: str(WIRE_VERSION)}


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The 'fedsilo' logger as JSON lines into a buffer, as `aggregator serve` sets it up."""
    logger = logging.getLogger("fedsilo")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    buffer = io.StringIO()
    handler = configure_logging("json", "INFO", stream=buffer, loggers=("fedsilo",))
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])


def records(buffer: io.StringIO) -> list[dict]:  # type: ignore[type-arg]
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is one JSON object


def request_lines(buffer: io.StringIO, path: str) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in records(buffer) if r.get("path") == path]


def test_every_request_logs_one_json_line_with_its_request_id(
    json_log: io.StringIO, sqlite_url: str, tmp_path: Path
) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silo = enrolled_silo(url, coord, "f", "hospital-a")
        assert silo.next_task(wait_s=0) is None

        mine = httpx.get(url + "/v1/federations", headers={**WIRE, "X-Request-Id": "req-42"})
        assert mine.status_code == 401 and mine.headers["X-Request-Id"] == "req-42"
        odd = httpx.get(url + "/healthz", headers={"X-Request-Id": "not ok\t" + "x" * 300})
        generated = odd.headers["X-Request-Id"]
        assert len(generated) == 32 and generated.isalnum()  # a sane id replaces a bad one
        again = httpx.post(
            url + "/v1/federations",
            json={"name": "f"},
            headers={**WIRE, "Authorization": "Bearer test-admin-token"},
        )
        assert again.status_code == 409
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not request_lines(json_log, "/v1/federations"):
            time.sleep(0.01)  # the line is written as the answer completes

    refused = next(r for r in records(json_log) if r.get("request_id") == "req-42")
    assert refused["level"] == "WARNING" and refused["status"] == 401
    assert refused["route"] == "/v1/federations" and "admin token" in refused["detail"]
    assert refused["name"] == "fedsilo.service.http" and refused["time"]

    # an empty long-poll (204) logs at DEBUG: a stuck federation's log stays quiet
    assert request_lines(json_log, "/v1/silo/tasks") == []
    enrol = request_lines(json_log, "/v1/enrol")
    assert len(enrol) == 1 and enrol[0]["level"] == "INFO" and enrol[0]["status"] == 201
    assert enrol[0]["silo"] == "hospital-a" and enrol[0]["route"] == "/v1/enrol"
    assert enrol[0]["duration_ms"] >= 0 and len(enrol[0]["request_id"]) == 32

    conflict = next(r for r in records(json_log) if r.get("status") == 409)
    assert conflict["level"] == "WARNING" and conflict["caller"] == "admin"
    assert "federation 'f' already exists" in conflict["detail"]

    approve = [r for r in records(json_log) if r.get("route", "").endswith("/approve")]
    assert approve and approve[0]["level"] == "INFO" and approve[0]["caller"] == "admin"
    assert not [r for r in records(json_log) if r.get("route") == "/healthz"]  # DEBUG


def test_serve_with_log_format_json_writes_json_lines_only(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "service.log"
    args = [sys.executable, "-m", "flows.cli", "aggregator", "serve", "--log-format", "json"]
    args += ["--workspace", str(tmp_path / "svc"), "--port", str(port)]
    env = {**os.environ, "NO_COLOR": "1"}
    with log_path.open("w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert proc.poll() is None, log_path.read_text()
        refused = httpx.get(url + "/v1/runs/r1", headers={**WIRE, "X-Request-Id": "cli-1"})
        assert refused.status_code == 401
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "cli-1" not in log_path.read_text():
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(20)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any("DEVELOPMENT MODE" in r["message"] for r in lines)  # start-up, as JSON too
    hit = next(r for r in lines if r.get("request_id") == "cli-1")
    assert hit["level"] == "WARNING" and hit["route"] == "/v1/runs/{run_id}"


def test_log_format_defaults_to_json_in_production_and_text_in_development(
    tmp_path: Path,
) -> None:
    from pydantic import ValidationError

    from aggregation.service.settings import ServiceSettings

    assert ServiceSettings(workspace=tmp_path).resolved_log_format() == "text"
    assert ServiceSettings(workspace=tmp_path, log_format="json").resolved_log_format() == "json"
    production = ServiceSettings.model_construct(mode="production", log_format=None)
    assert production.resolved_log_format() == "json"
    with pytest.raises(ValidationError, match="metrics_port 8700 is the API port"):
        ServiceSettings(workspace=tmp_path, metrics_port=8700)
    with pytest.raises(ValidationError, match="'json' or 'text'"):
        ServiceSettings(workspace=tmp_path, log_format="xml")  # type: ignore[arg-type]
