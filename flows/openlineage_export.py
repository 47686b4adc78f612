"""`fedsilo lineage export RUN --format openlineage`: a run as OpenLineage RunEvents.

For teams that run Marquez or another OpenLineage consumer. One run becomes:

* ``START`` at ``run_started``, with the run facets (config hash, code version, the Prefect
  flow run as parent run);
* ``COMPLETE``, ``FAIL`` or ``ABORT`` at ``run_finished`` / ``run_failed`` / ``run_cancelled``
  (``RUNNING`` at the last entry while the run is still going), carrying the inputs and the
  output (a run that did not finish: its last model, an intermediate one).

Inputs are the silos' datasets, one per silo whose update reached at least one aggregate of
the run (an input of the model), named ``silo:<name>/<contract>``. A silo that validated data
but contributed to no round (its data failed the contract, its updates were rejected, it
dropped out or was revoked) is not an input of the model: it is listed in the final event's
``fedsilo_run`` run facet under ``nonContributing`` (silo, dataset name, last validation and
why it shows there), so a consumer still sees that it took part.

No data and no schema leave the silo: the facets carry only the fingerprint
(``fedsilo_fingerprint``), the dataset version (its sha256), and the validation outcome as
data-quality assertions. The output is the final global model, named by its path in the
service workspace, with its sha256 (``fedsilo_model`` and the dataset version facet).

Events are built with openlineage-python's classes and serialised with its `Serde`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import attr
from dateutil import parser as dateparser
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    DatasetFacet,
    InputDatasetFacet,
    RunFacet,
    data_quality_assertions_dataset,
    dataset_version_dataset,
    error_message_run,
    job_type_job,
    parent_run,
    processing_engine_run,
)
from openlineage.client.serde import Serde
from openlineage.client.uuid import generate_static_uuid

from flows.lineage_view import ModelRecord, RunView, Validation, as_dict, run_view
from schemas.lineage import LineageEntry

# Custom facets have no published schema yet; a URN names their version without pretending
# there is a document to fetch.
FACET_SCHEMA = "urn:fedsilo:openlineage-facets:1-0-0#/$defs/"
PREFECT_NAMESPACE = "prefect"


def producer_uri(fedsilo_version: str | None) -> str:
    """The ``producer`` of every event and facet: fedsilo and its version."""
    return f"urn:fedsilo:{fedsilo_version or 'unknown'}"


@attr.define
class FedsiloRunFacet(RunFacet):
    """The ledger's record of how the run was started."""

    ledgerRunId: str  # noqa: N815 - OpenLineage facet fields are camelCase
    configSha256: str | None = attr.field(default=None)  # noqa: N815
    fedsiloVersion: str | None = attr.field(default=None)  # noqa: N815
    gitCommit: str | None = attr.field(default=None)  # noqa: N815
    prefectFlowRunId: str | None = attr.field(default=None)  # noqa: N815
    participants: list[str] = attr.field(factory=list)
    initialModelSha256: str | None = attr.field(default=None)  # noqa: N815
    status: str | None = attr.field(default=None)
    ledgerEntryHash: str | None = attr.field(default=None)  # noqa: N815
    ledgerSeq: int | None = attr.field(default=None)  # noqa: N815
    nonContributing: list[dict[str, Any]] = attr.field(factory=list)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA + "FedsiloRunFacet"


@attr.define
class FedsiloFingerprintInputDatasetFacet(InputDatasetFacet):
    """A silo's data fingerprint and contract validation, the latest of the run."""

    dataSha256: str  # noqa: N815
    contract: str
    contractVersion: str  # noqa: N815
    contractSha256: str  # noqa: N815
    validationSuccess: bool  # noqa: N815
    round: int
    nRows: int | None = attr.field(default=None)  # noqa: N815
    contributedRounds: list[int] = attr.field(factory=list)  # noqa: N815
    history: list[dict[str, Any]] = attr.field(factory=list)

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA + "FedsiloFingerprintInputDatasetFacet"


@attr.define
class FedsiloModelDatasetFacet(DatasetFacet):
    """The global model file the run produced, as the ledger recorded it."""

    sha256: str
    version: int
    round: int
    path: str
    modelKind: str | None = attr.field(default=None)  # noqa: N815
    ledgerSeq: int | None = attr.field(default=None)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA + "FedsiloModelDatasetFacet"


def _time(created_at: str) -> datetime:
    return dateparser.isoparse(created_at)


def _assertions(v: Validation, producer: str) -> InputDatasetFacet:
    checks = [
        data_quality_assertions_dataset.Assertion(
            assertion=f"contract {v.contract} v{v.contract_version}", success=v.success
        )
    ]
    for failed in v.failed:
        checks.append(
            data_quality_assertions_dataset.Assertion(
                assertion=str(failed.get("expectation")),
                success=False,
                column=str(failed["column"]) if failed.get("column") else None,
                actual=f"{failed.get('unexpected_count')} unexpected rows "
                f"({failed.get('unexpected_percent')}%)",
            )
        )
    return data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(
        assertions=checks, producer=producer
    )


def _latest_validations(view: RunView) -> dict[str, Validation]:
    latest: dict[str, Validation] = {}
    for v in view.validations:
        latest[v.silo] = v
    return latest


def _non_contributing(view: RunView) -> list[dict[str, Any]]:
    """Silos that validated data in the run but whose update reached no aggregate: not inputs
    of the model, listed in the run facet instead."""
    found = []
    for silo, v in _latest_validations(view).items():
        if view.aggregated_rounds(silo):
            continue
        revoked = view.revoked(silo)
        found.append(
            {
                "silo": silo,
                "dataset": f"silo:{silo}/{v.contract}",
                "dataSha256": v.data_sha256,
                "lastValidationRound": v.round,
                "lastValidationSuccess": v.success,
                "revoked": revoked is not None,
                "reason": "contributed to no round of the run"
                + (f" (revoked: {revoked.get('reason') or 'no reason given'})" if revoked else ""),
            }
        )
    return found


def _inputs(view: RunView, namespace: str, producer: str) -> list[InputDataset]:
    """One input per silo whose update reached at least one aggregate (`_non_contributing`
    lists the others)."""
    inputs = []
    for silo, v in _latest_validations(view).items():
        if not view.aggregated_rounds(silo):
            continue
        history = [
            {"round": h.round, "dataSha256": h.data_sha256, "success": h.success}
            for h in view.validations
            if h.silo == silo
        ]
        fingerprint = FedsiloFingerprintInputDatasetFacet(
            dataSha256=v.data_sha256,
            contract=v.contract,
            contractVersion=v.contract_version,
            contractSha256=v.contract_sha256,
            validationSuccess=v.success,
            round=v.round,
            nRows=v.n_rows,
            contributedRounds=sorted(view.aggregated_rounds(silo)),
            history=history,
            producer=producer,
        )
        version = dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=v.data_sha256, producer=producer
        )
        inputs.append(
            InputDataset(
                namespace=namespace,
                name=f"silo:{silo}/{v.contract}",
                facets={"version": version},
                inputFacets={
                    "fedsilo_fingerprint": fingerprint,
                    "dataQualityAssertions": _assertions(v, producer),
                },
            )
        )
    return inputs


def _output(view: RunView, model: ModelRecord, namespace: str, producer: str) -> OutputDataset:
    kind = as_dict(view.spec, "model").get("kind")
    facet = FedsiloModelDatasetFacet(
        sha256=model.sha256,
        version=model.version,
        round=model.round,
        path=model.path,
        modelKind=kind,
        ledgerSeq=model.seq,
        producer=producer,
    )
    version = dataset_version_dataset.DatasetVersionDatasetFacet(
        datasetVersion=model.sha256, producer=producer
    )
    return OutputDataset(
        namespace=namespace, name=model.path, facets={"version": version, "fedsilo_model": facet}
    )


def _parent(prefect_run: Any, producer: str) -> parent_run.ParentRunFacet | None:
    """The coordinator's Prefect flow run as the parent run (Prefect run ids are UUIDs)."""
    try:
        run_id = str(uuid.UUID(str(prefect_run)))
    except ValueError:
        return None
    return parent_run.ParentRunFacet(
        run=parent_run.Run(runId=run_id),
        job=parent_run.Job(namespace=PREFECT_NAMESPACE, name="federated_training"),
        producer=producer,
    )


def _run_facets(view: RunView, producer: str, final: bool) -> dict[str, RunFacet]:
    start = view.started
    last = view.entries[-1]
    facets: dict[str, RunFacet] = {
        "fedsilo_run": FedsiloRunFacet(
            ledgerRunId=view.run_id,
            configSha256=start.get("config_sha256"),
            fedsiloVersion=start.get("fedsilo_version"),
            gitCommit=start.get("git_commit"),
            prefectFlowRunId=start.get("prefect_flow_run_id"),
            participants=view.participants,
            initialModelSha256=start.get("initial_model_sha256"),
            status=view.status if final else "started",
            ledgerEntryHash=last.entry_hash if final else view.entries[0].entry_hash,
            ledgerSeq=last.seq if final else view.entries[0].seq,
            nonContributing=_non_contributing(view) if final else [],
            producer=producer,
        ),
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=str(start.get("fedsilo_version") or "unknown"),
            name="fedsilo",
            producer=producer,
        ),
    }
    parent = _parent(start.get("prefect_flow_run_id"), producer)
    if parent is not None:
        facets["parent"] = parent
    if final and view.finish_kind == "run_failed":
        facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=str((view.finish or {}).get("reason")),
            programmingLanguage="python",
            producer=producer,
        )
    return facets


def build_run_events(
    entries: Sequence[LineageEntry], run_id: str, namespace: str = "fedsilo"
) -> list[RunEvent]:
    """The run's OpenLineage RunEvents (module docstring), as openlineage-python objects.

    Raises
    ------
    LineageReviewError
        If the ledger has no entry for `run_id`.
    """
    view = run_view(entries, run_id)
    producer = producer_uri(view.started.get("fedsilo_version"))
    first, last = view.entries[0], view.entries[-1]
    # Deterministic: exporting the same run twice gives the same OpenLineage run id.
    ol_run_id = str(generate_static_uuid(_time(first.created_at), f"fedsilo:{run_id}".encode()))
    federation = str(view.spec.get("federation") or "federation")
    job_type = job_type_job.JobTypeJobFacet(
        processingType="BATCH",
        integration="FEDSILO",
        jobType="FEDERATED_TRAINING",
        producer=producer,
    )
    job = Job(
        namespace=namespace, name=f"{federation}.federated_training", facets={"jobType": job_type}
    )

    def event(state: RunState, when: str, final: bool, **datasets: Any) -> RunEvent:
        run = Run(runId=ol_run_id, facets=_run_facets(view, producer, final))
        return RunEvent(
            eventType=state, eventTime=when, run=run, job=job, producer=producer, **datasets
        )

    events = [event(RunState.START, first.created_at, False)]
    terminal = {
        "run_finished": RunState.COMPLETE,
        "run_failed": RunState.FAIL,
        "run_cancelled": RunState.ABORT,
    }
    state = terminal.get(view.finish_kind or "", RunState.RUNNING)
    model = view.final_model
    outputs = [_output(view, model, namespace, producer)] if model else []
    inputs = _inputs(view, namespace, producer)
    events.append(event(state, last.created_at, True, inputs=inputs, outputs=outputs))
    return events


def export_openlineage(
    entries: Sequence[LineageEntry], run_id: str, namespace: str = "fedsilo"
) -> list[dict[str, Any]]:
    """The run's RunEvents as JSON-ready dicts, serialised by openlineage-python's `Serde`."""
    return [Serde.to_dict(e) for e in build_run_events(entries, run_id, namespace)]


def write_openlineage(
    entries: Sequence[LineageEntry], run_id: str, path: Path, namespace: str = "fedsilo"
) -> Path:
    """Write the run's RunEvents as JSON Lines (one event per line, `Serde.to_json`)."""
    events = build_run_events(entries, run_id, namespace)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(Serde.to_json(e) + "\n" for e in events), encoding="utf-8")
    return path
