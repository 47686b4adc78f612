"""schemathesis against a live service (uvicorn on 127.0.0.1, PostgreSQL): every operation of
its own OpenAPI schema, fuzzed three ways: with no credentials, with the admin bearer token,
and signed as an approved silo taking part in the run. Zero 5xx, every status code documented,
every answer conforms to its schema and content type.

The number of examples is bounded (`EXAMPLES` per operation, auth mode and generation mode)
so the whole test runs in about a minute or two on two cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
import schemathesis
from hostile_federation import ADMIN_TOKEN, WIRE, SiloSignature, Target, live_target
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

EXAMPLES = 6
# Fuzzed `wait` values made each silo long poll sit out the service's 30 s cap (silo mode took
# ~4x admin mode for as many requests); a 1 s cap gives the same answers, sooner.
LONG_POLL_MAX_S = 1.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _session(target: Target, mode: str) -> requests.Session:
    session = requests.Session()
    session.headers.update(WIRE)
    if mode == "admin":
        session.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    elif mode == "silo":
        session.auth = SiloSignature(target.silos["a"])
    return session


def _fuzz(target: Target, mode: str, statuses: list[int]) -> list[str]:
    """Every operation, positive and negative examples; the failures, one line each."""
    schema = schemathesis.openapi.from_url(target.url + "/openapi.json")
    session = _session(target, mode)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        names = {p.name for p in operation.path_parameters}
        # authenticated callers aim at the real run half of the time (deeper code paths)
        pinned = {k: v for k, v in {"run_id": target.run_id}.items() if k in names}
        for generation in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies = [operation.as_strategy(generation_mode=generation)]
            if pinned and mode != "anonymous":
                strategies.append(
                    operation.as_strategy(generation_mode=generation, path_parameters=pinned)
                )
            for strategy in strategies:
                failures += _run(strategy, session, operation.label, statuses)
    return failures


def _run(strategy, session: requests.Session, label: str, statuses: list[int]) -> list[str]:  # type: ignore[no-untyped-def]
    failures: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(session=session, timeout=75)  # >> the long-poll cap
        statuses.append(response.status_code)
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as exc:  # a group of check failures
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:600]}")

    try:
        check()
    except Unsatisfiable:  # no way to make this operation's input invalid (negative mode)
        pass
    return failures


@pytest.mark.parametrize("mode", ["anonymous", "admin", "silo"])
def test_schemathesis_finds_nothing(
    mode: str, tmp_path: Path, fresh_pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with live_target(tmp_path / "svc", fresh_pg_url, long_poll_max_s=LONG_POLL_MAX_S) as target:
        started = time.monotonic()
        statuses: list[int] = []
        failures = _fuzz(target, mode, statuses)
        took = time.monotonic() - started
    with capsys.disabled():
        print(f"\nschemathesis ({mode}): {len(statuses)} requests, {took:.0f}s")
    assert not failures, "\n".join(failures)
    assert not [s for s in statuses if s >= 500]
    if mode != "anonymous":  # the credentials work: some requests get past authentication
        assert [s for s in statuses if s not in (400, 401)], sorted(set(statuses))
