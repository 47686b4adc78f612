"""A silo's signed ``personalized`` statement through the real service: recorded in the ledger
under the silo's name when it carries only a hash and metrics, refused (naming the silo) when
it carries anything else or is malformed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.api_federation import started_run
from support.live_service import service_in_thread

from schemas.personalization import PersonalizedPayload
from schemas.specs import ModelSpec, PersonalizationSpec, RunSpec
from schemas.wire import Metrics
from silos.client_errors import ServiceRejected

MODEL = ModelSpec(kind="logreg", n_features=3)


def _payload(silo: str) -> dict[str, object]:
    m = Metrics(n_test=10, loss=0.5, accuracy=0.8, auc=0.9)
    return PersonalizedPayload(
        silo=silo, round=2, model_version=1, method="finetune", model_sha256="0f" * 32, steps=3,
        n_fit=30, n_val=10, global_metrics=m, personalized=m, local_only=m,
    ).model_dump(mode="json")  # fmt: skip


def test_personalized_statements_hold_a_hash_and_metrics_only(db_url: str, tmp_path: Path) -> None:
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=1,
        min_silos=2,
        personalize=PersonalizationSpec(method="finetune"),
    )
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord, silos, run_id = started_run(url, ("a", "b"), spec)
        assert coord.get_run(run_id).spec.personalize == spec.personalize  # stored as asked

        answer = silos["a"].submit_statement(run_id, "personalized", _payload("a"))
        assert answer["receipt"]
        entries = [e for e in coord.ledger(run_id) if e.kind == "personalized"]
        assert [e.author for e in entries] == ["silo:a"]
        assert json.loads(entries[0].payload)["model_sha256"] == "0f" * 32

        smuggled = {**_payload("b"), "model": "AAAA" * 64}  # a model is not part of it
        with pytest.raises(ServiceRejected, match="personalized statement from 'b'"):
            silos["b"].submit_statement(run_id, "personalized", smuggled)
        with pytest.raises(ServiceRejected, match="personalized statement from 'b'"):
            silos["b"].submit_statement(
                run_id, "personalized", {**_payload("b"), "model_sha256": "not-a-hash"}
            )
        with pytest.raises(ServiceRejected, match="names silo 'a'"):
            silos["b"].submit_statement(run_id, "personalized", _payload("a"))
        assert [e.author for e in coord.ledger(run_id) if e.kind == "personalized"] == ["silo:a"]
