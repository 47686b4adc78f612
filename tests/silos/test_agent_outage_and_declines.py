"""The silo's client rides out a service outage (retries forever, capped backoff, one line when
it starts and one when it ends) and does not retry a refusal; failures map to declines.

The service is the real one (uvicorn in a thread on 127.0.0.1, SQLite), started only after
the client began retrying on its port.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.live_service import free_port

from aggregation.service.main import create_app
from aggregation.service.settings import ServiceSettings
from schemas.contracts.loader import ContractError
from schemas.wire import Metrics
from silos.client import SiloClient
from silos.client_errors import ServiceUnavailable, Unauthorized
from silos.decline import Declined, FailureLog, declined_for
from silos.exceptions import (
    DataError,
    FeatureError,
    PolicyRefusal,
    PrivacyBudgetError,
    UnsupportedTask,
)
from silos.flow_report import fmt_metrics
from silos.http_base import BACKOFF_CAP_S, HttpBase


def _serve(tmp_path: Path, port: int) -> uvicorn.Server:
    settings = ServiceSettings(
        workspace=tmp_path, database_url=f"sqlite:///{tmp_path / 'service.db'}", port=port
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    return server


def test_the_client_waits_out_an_outage_and_logs_its_start_and_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedsilo.client")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client = HttpBase(url, retry_for_s=None)  # the agent's: forever
    answer: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: answer.update(resp=client.request("GET", "/healthz")), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 60
    while "unreachable" not in caplog.text:  # the outage is logged once it starts
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    time.sleep(3.0)  # several tries fail meanwhile: still one line
    server = _serve(tmp_path, port)
    try:
        thread.join(120)
        assert not thread.is_alive()
        assert isinstance(answer["resp"], httpx.Response) and answer["resp"].status_code == 200
    finally:
        server.should_exit = True
    lines = [r.getMessage() for r in caplog.records if r.name == "fedsilo.client"]
    assert len(lines) == 2, lines
    assert url in lines[0] and "ConnectError" in lines[0] and "forever" in lines[0]
    assert lines[1].startswith(f"aggregation service back at {url} after ")
    assert BACKOFF_CAP_S <= 30.0


def test_a_bounded_client_gives_up_and_a_refusal_is_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    bounded = HttpBase(f"http://127.0.0.1:{port}", retry_for_s=0.5)
    with pytest.raises(ServiceUnavailable, match="within 0s|within 1s"):
        bounded.request("GET", "/healthz")
    server = _serve(tmp_path, port)
    try:
        stranger = SiloClient(
            f"http://127.0.0.1:{port}",
            federation="nowhere",
            silo="stranger",
            key=Ed25519PrivateKey.generate(),
            retry_for_s=None,
        )
        deadline = time.monotonic() + 60
        while True:  # the service is starting: wait for it, then a refusal comes at once
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fedsilo"):
            with pytest.raises(Unauthorized):
                stranger.whoami()
        # not retried: a retry would have begun an outage (its warning) and backed off; a
        # wall-clock bound here failed on a loaded machine
        assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
    finally:
        server.should_exit = True


@pytest.mark.parametrize(
    ("error", "scope", "cause"),
    [
        (DataError("cannot stratify: the table has 0 negative rows"), "round", "data"),
        (FeatureError("column cp: unknown category 9"), "round", "data"),
        (ContractError("contract heart_disease: no such file"), "run", "contract"),
        (PolicyRefusal("mlp is not allowed"), "run", "policy"),
        (PrivacyBudgetError("budget file edited"), "run", "privacy_budget"),
        (UnsupportedTask("no handler for 'sketch'"), "run", "internal"),
        (RuntimeError("CUDA out of memory"), "round", "training"),
        (OSError(28, "No space left on device", "/ws/features/x.npz"), "round", "internal"),
        (OSError("a socket error names no file"), "round", "training"),
    ],
)
def test_each_failure_before_the_update_is_a_decline_with_its_scope_and_cause(
    error: Exception, scope: str, cause: str
) -> None:
    declined = declined_for(error)
    assert (declined.scope, declined.cause) == (scope, cause)
    assert str(error) in declined.reason


def test_a_decline_passes_through_and_repeats_are_logged_once_per_round() -> None:
    own = Declined("run", "privacy_budget", "epsilon would reach 3.1")
    assert declined_for(own) is own
    failures = FailureLog.new()
    assert failures.first(1, "data: one class")
    assert not failures.first(1, "data: one class")
    assert failures.first(2, "data: one class")


def test_metrics_are_logged_to_four_significant_digits() -> None:
    line = fmt_metrics(Metrics(n_test=61, loss=0.41953846812248230, accuracy=0.8, auc=None))
    assert line == "loss=0.4195 accuracy=0.8 auc=n/a"
