"""A silo's ledger statement is bounded: its payload's size (413 naming the kind, the size and
the bound; a validation_result of a wide contract fits), and the run it belongs to (409 before
the run started, and once the run ended longer ago than late statements may come)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import summary, validate

from aggregation.service import statements
from aggregation.service.routes import silo as silo_routes
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import ExpectationOutcome, RoundOpen, RunCreate
from silos.client import SiloClient
from silos.client_errors import Conflict, TooLarge
from silos.round_gate import statement_payload

SPEC = RunSpec(
    federation="f",
    dataset="toy",
    model=ModelSpec(kind="logreg", n_features=3),
    rounds=1,
    min_silos=1,
    secure_aggregation=SecureAggregationSpec(enabled=False),
)
CHECKS = (
    "expect_column_values_to_be_in_type_list",
    "expect_column_values_to_be_between",
    "expect_column_values_to_not_be_null",
    "expect_column_mean_to_be_between",
    "expect_column_stdev_to_be_between",
)


@dataclass
class Fed:
    coord: CoordinatorClient
    a: SiloClient
    run_id: str


@pytest.fixture
def fed(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    """Silo a in a created (not yet started) run."""
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        a = enrolled_silo(url, coord, "f", "a")
        run = coord.create_run(RunCreate(spec=SPEC))
        assert SPEC.model is not None
        zeros = {n: np.zeros(shape, np.float32) for n, shape in param_shapes(SPEC.model)}
        coord.put_initial_model(run.run_id, tensors.encode(zeros))
        yield Fed(coord, a, run.run_id)


def _start(fed: Fed) -> None:
    fed.coord.start_run(fed.run_id)
    fed.coord.open_round(fed.run_id, RoundOpen(round=1, deadline_s=60))


def _validated_then_cancelled(fed: Fed) -> None:
    _start(fed)
    validate(fed.a, fed.run_id, n_rows=100)
    fed.coord.cancel_run(fed.run_id, "test over")


def _privacy(silo: str, junk: str = "") -> dict[str, object]:
    payload: dict[str, object] = {"silo": silo, "round": 1, "epsilon": 0.5, "delta": 1e-5}
    return {**payload, "junk": junk} if junk else payload


def _wide_failure(silo: str, columns: int) -> dict[str, object]:
    """A failed gate of a `columns`-wide contract in which every check of every column failed
    (and two per column are drift warnings too): the biggest validation_result a silo signs."""
    failed = [
        ExpectationOutcome(
            expectation=check,
            column=f"feature_column_name_{i:04d}",
            success=False,
            unexpected_count=123456,
            unexpected_percent=12.3456789012345,
        )
        for i in range(columns)
        for check in CHECKS
    ]
    result = summary(1000, success=False).model_copy(
        update={"failed": failed, "warnings": failed[: 2 * columns]}
    )
    return statement_payload(silo, 1, result)


def test_an_oversized_statement_is_refused_naming_kind_size_and_bound(fed: Fed) -> None:
    _start(fed)
    big = _privacy("a", os.urandom(48 * 1024).hex())  # 96 KiB of text
    with pytest.raises(TooLarge) as err:
        fed.a.submit_statement(fed.run_id, "privacy_spent", big)
    detail = err.value.detail
    size = len(json.dumps(big, separators=(",", ":")))
    assert "privacy_spent statement from silo 'a'" in detail
    assert f"payload is {size} bytes" in detail
    assert f"more than the {silo_routes.MAX_STATEMENT_BYTES} bytes" in detail
    kinds = [e.kind for e in fed.coord.ledger(run_id=fed.run_id)]
    assert "privacy_spent" not in kinds  # nothing was appended
    assert fed.a.submit_statement(fed.run_id, "privacy_spent", _privacy("a"))["receipt"]


def test_a_wide_contracts_failed_validation_fits_its_bound(fed: Fed) -> None:
    _start(fed)
    wide = _wide_failure("a", 300)  # about 285 KB
    assert fed.a.submit_statement(fed.run_id, "validation_result", wide)["receipt"]
    with pytest.raises(TooLarge) as err:  # 1200 columns failing everywhere: over 1 MiB
        fed.a.submit_statement(fed.run_id, "validation_result", _wide_failure("a", 1200))
    assert "validation_result statement" in err.value.detail
    assert f"{silo_routes.MAX_STATEMENT_BYTES_BY_KIND['validation_result']} bytes" in (
        err.value.detail
    )


def test_a_statement_before_the_run_started_is_refused(fed: Fed) -> None:
    with pytest.raises(Conflict) as err:
        fed.a.submit_statement(fed.run_id, "privacy_spent", _privacy("a"))
    assert "has not started" in err.value.detail and "privacy_spent" in err.value.detail


def test_late_statements_are_taken_for_a_while_after_the_run_ended(
    fed: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    _validated_then_cancelled(fed)
    # an honest silo's last statements may come after the run's end (flush_held, privacy_spent)
    assert fed.a.submit_statement(fed.run_id, "privacy_spent", _privacy("a"))["receipt"]
    monkeypatch.setattr(statements, "LATE_STATEMENT_S", 0.0)  # the service runs in-process
    with pytest.raises(Conflict) as err:
        fed.a.submit_statement(fed.run_id, "privacy_spent", _privacy("a"))
    assert "is cancelled" in err.value.detail and "privacy_spent" in err.value.detail


def test_a_silo_states_each_kind_only_as_often_as_the_rounds_allow(fed: Fed) -> None:
    _start(fed)  # round 1: two of a kind a round, plus the slack
    bound = statements.STATEMENTS_PER_ROUND * 1 + statements.STATEMENT_SLACK
    for _ in range(bound):
        assert fed.a.submit_statement(fed.run_id, "privacy_spent", _privacy("a"))["receipt"]
    with pytest.raises(Conflict) as err:
        fed.a.submit_statement(fed.run_id, "privacy_spent", _privacy("a"))
    assert f"already stated {bound} privacy_spent statements" in err.value.detail
    assert "silo 'a'" in err.value.detail and fed.run_id in err.value.detail
    kinds = [e.kind for e in fed.coord.ledger(run_id=fed.run_id)]
    assert kinds.count("privacy_spent") == bound
    assert validate(fed.a, fed.run_id, n_rows=100)["receipt"]  # another kind has its own count


def test_a_statement_carried_to_a_run_long_ended_is_refused(
    fed: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    _validated_then_cancelled(fed)
    monkeypatch.setattr(statements, "LATE_STATEMENT_S", 0.0)
    fed.a.carries = frozenset({"validation_result"})  # as the service's answers advertise
    held = statement_payload("a", 1, summary(100))
    assert fed.a.carry_statement(fed.run_id, "validation_result", held) is None  # held back
    body = tensors.encode({n: np.zeros(s, np.float32) for n, s in param_shapes(SPEC.model)})
    with pytest.raises(Conflict) as err:  # the POST that would carry it
        fed.a.submit_update(fed.run_id, 1, body)
    assert "is cancelled" in err.value.detail and "validation_result" in err.value.detail
    kinds = [e.kind for e in fed.coord.ledger(run_id=fed.run_id)]
    assert kinds.count("validation_result") == 1  # the one sent before the end
