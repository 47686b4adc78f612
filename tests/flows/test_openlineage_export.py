"""`fedsilo lineage export RUN --format openlineage`: RunEvents built with openlineage-python."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from openlineage.client.event_v2 import RunEvent
from openlineage.client.serde import Serde
from support.lineage_sample import PREFECT_RUN_A, RUN_A, RUN_B, Sample, Writer, build_sample

from flows.lineage_cmds import LineageReviewError
from flows.lineage_view import payload_of
from flows.openlineage_export import build_run_events, export_openlineage, write_openlineage

EVENT_TYPES = {"START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    return build_sample(tmp_path_factory.mktemp("ledger"))


def _uri(value: Any) -> bool:
    return isinstance(value, str) and bool(urlsplit(value).scheme)


def _facets_ok(facets: dict[str, Any] | None) -> None:
    """Every facet carries the BaseFacet fields the OpenLineage spec requires."""
    for name, facet in (facets or {}).items():
        assert _uri(facet.get("_producer")), name
        assert _uri(facet.get("_schemaURL")), name


def _spec_ok(event: dict[str, Any]) -> None:
    """The RunEvent requirements of the OpenLineage 2-0-2 spec, checked on the serialised form."""
    assert {"run", "job", "eventTime", "producer"} <= event.keys()
    assert event["eventType"] in EVENT_TYPES
    assert _uri(event["producer"]) and _uri(event["schemaURL"])
    assert "T" in event["eventTime"]
    uuid.UUID(event["run"]["runId"])
    assert event["job"]["namespace"] and event["job"]["name"]
    _facets_ok(event["run"].get("facets"))
    _facets_ok(event["job"].get("facets"))
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        assert dataset["namespace"] and dataset["name"]
        _facets_ok(dataset.get("facets"))
        _facets_ok(dataset.get("inputFacets"))
        _facets_ok(dataset.get("outputFacets"))


def test_a_finished_run_starts_and_completes(sample: Sample) -> None:
    entries = sample.entries()
    events = export_openlineage(entries, RUN_A)
    for event in events:
        _spec_ok(event)
    start, done = events
    assert (start["eventType"], done["eventType"]) == ("START", "COMPLETE")
    started = next(e for e in entries if e.kind == "run_started" and e.run_id == RUN_A)
    finished = next(e for e in entries if e.kind == "run_finished")
    assert (start["eventTime"], done["eventTime"]) == (started.created_at, finished.created_at)
    assert start["run"]["runId"] == done["run"]["runId"]
    assert start["job"] == done["job"]
    assert start["job"]["name"] == "heart.federated_training"
    assert start["inputs"] == [] and start["outputs"] == []
    facets = done["run"]["facets"]
    assert facets["parent"]["run"]["runId"] == PREFECT_RUN_A
    parent_job = facets["parent"]["job"]
    assert (parent_job["namespace"], parent_job["name"]) == ("prefect", "federated_training")
    run = facets["fedsilo_run"]
    assert run["ledgerRunId"] == RUN_A and run["status"] == "finished"
    assert run["configSha256"] == payload_of(started)["config_sha256"]
    assert (run["ledgerSeq"], run["ledgerEntryHash"]) == (finished.seq, finished.entry_hash)
    assert "errorMessage" not in facets


def test_silo_datasets_are_inputs_with_fingerprints_and_no_data(sample: Sample) -> None:
    entries = sample.entries()
    done = export_openlineage(entries, RUN_A)[1]
    inputs = {d["name"]: d for d in done["inputs"]}
    assert sorted(inputs) == [
        "silo:cleveland/heart_disease",
        "silo:hungary/heart_disease",
        "silo:switzerland/heart_disease",
    ]
    swiss = inputs["silo:switzerland/heart_disease"]
    latest = [
        payload_of(e)
        for e in entries
        if e.kind == "validation_result" and e.author == "silo:switzerland"
    ][-1]
    fingerprint = swiss["inputFacets"]["fedsilo_fingerprint"]
    assert fingerprint["dataSha256"] == latest["data_sha256"]
    assert swiss["facets"]["version"]["datasetVersion"] == latest["data_sha256"]
    assert fingerprint["contractSha256"] == latest["contract_sha256"]
    assert (fingerprint["validationSuccess"], fingerprint["round"]) == (True, 3)
    assert [(h["round"], h["success"]) for h in fingerprint["history"]] == [
        (1, False),
        (2, True),
        (3, True),
    ]
    assert fingerprint["contributedRounds"] == [2]
    hungary = inputs["silo:hungary/heart_disease"]["inputFacets"]["fedsilo_fingerprint"]
    assert hungary["contributedRounds"] == [1, 3]
    assertions = swiss["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert assertions[0]["assertion"] == "contract heart_disease v1" and assertions[0]["success"]
    # Facets describe the data; none carries rows or a schema.
    assert all("schema" not in d["facets"] for d in done["inputs"])


def test_the_final_model_is_the_output_with_its_sha256(sample: Sample) -> None:
    done = export_openlineage(sample.entries(), RUN_A)[1]
    (output,) = done["outputs"]
    assert output["name"] == "models/run-a/v3.safetensors"
    model = output["facets"]["fedsilo_model"]
    assert model["sha256"] == sample.models[(RUN_A, 3)]
    assert (model["version"], model["round"], model["modelKind"]) == (3, 3, "mlp")
    assert output["facets"]["version"]["datasetVersion"] == sample.models[(RUN_A, 3)]


def test_a_failed_run_fails_with_its_reason(sample: Sample) -> None:
    start, failed = export_openlineage(sample.entries(), RUN_B, namespace="hospitals")
    _spec_ok(failed)
    assert failed["eventType"] == "FAIL" and failed["job"]["namespace"] == "hospitals"
    assert failed["run"]["facets"]["errorMessage"]["message"] == (
        "round 2: 1 of 2 silos answered by the deadline — min_silos is 2"
    )
    assert "parent" not in failed["run"]["facets"]  # no Prefect flow run recorded
    assert failed["outputs"][0]["facets"]["fedsilo_model"]["sha256"] == sample.models[(RUN_B, 1)]
    fingerprints = {
        d["name"]: d["inputFacets"]["fedsilo_fingerprint"]["contributedRounds"]
        for d in failed["inputs"]
    }
    assert fingerprints == {"silo:cleveland/heart_disease": [1]}  # inputs: contributors only
    (idle,) = failed["run"]["facets"]["fedsilo_run"]["nonContributing"]
    assert (idle["silo"], idle["reason"]) == ("hungary", "contributed to no round of the run")


def test_a_run_in_progress_is_running(sample: Sample) -> None:
    entries = sample.entries()
    cut = next(
        e.seq for e in entries if e.kind == "model_saved" and e.run_id == RUN_A and e.seq > 20
    )
    events = export_openlineage([e for e in entries if e.seq <= cut], RUN_A)
    assert [e["eventType"] for e in events] == ["START", "RUNNING"]
    assert events[1]["outputs"][0]["name"] == "models/run-a/v2.safetensors"
    assert events[1]["run"]["facets"]["fedsilo_run"]["status"] == "in progress"


def test_a_cancelled_run_aborts(sample: Sample, tmp_path: Path) -> None:
    cancelled = build_sample(tmp_path)
    Writer(cancelled).service("run_cancelled", {"reason": "wrong dataset", "round": 2}, RUN_A)
    view_entries = [e for e in cancelled.entries() if e.kind != "run_finished"]
    events = export_openlineage(view_entries, RUN_A)
    assert [e["eventType"] for e in events] == ["START", "ABORT"]
    assert events[1]["run"]["facets"]["fedsilo_run"]["status"] == "cancelled"


def test_round_trip_through_the_clients_serializer(sample: Sample, tmp_path: Path) -> None:
    entries = sample.entries()
    events = build_run_events(entries, RUN_A)
    assert all(isinstance(e, RunEvent) for e in events)
    as_dicts = export_openlineage(entries, RUN_A)
    assert [json.loads(Serde.to_json(e)) for e in events] == as_dicts
    # Deterministic: the same ledger gives the same OpenLineage run id and events.
    assert export_openlineage(entries, RUN_A) == as_dicts
    path = write_openlineage(entries, RUN_A, tmp_path / "ol" / "run-a.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == as_dicts
    with pytest.raises(LineageReviewError, match="run 'nope' has no entries"):
        export_openlineage(entries, "nope")
