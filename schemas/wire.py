"""JSON messages between silo agents, the coordinator and the aggregation service.

Binary payloads never travel here: tensors, protocol messages and native models go as
``application/octet-stream`` bodies (`schemas.tensors`, `schemas.frames` for lists).

Every request and response carries the wire version in the ``X-Fedsilo-Wire`` header
(`WIRE_HEADER`, `WIRE_VERSION`); a peer speaking another version is refused with both
versions named (error code ``wire_version``). Errors come back as `ErrorOut`, whose `code`
(an `ErrorCode`) is what clients branch on, never the human text in `detail`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from schemas.specs import RunSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"

WIRE_VERSION = 2
WIRE_HEADER = "X-Fedsilo-Wire"
OCTET_STREAM = "application/octet-stream"

# Every integer that reaches the service is bounded at the edge: the database stores them in
# 32-bit columns (PostgreSQL INTEGER), so anything larger is refused (422) before it gets there.
INT32_MAX = 2**31 - 1
# free text (descriptions, reasons): bounded, and without NUL (PostgreSQL text cannot hold it)
TEXT_PATTERN = r"^[^\x00]*$"
MAX_TEXT = 2000


def _as_utc(value: datetime) -> datetime:
    """Naive datetimes are UTC (the service stores them so): say so on the wire."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""A datetime that always carries its UTC offset (``+00:00``) when serialized."""


class ErrorCode(StrEnum):
    """Machine-readable reason of a refused request (`ErrorOut.code`)."""

    invalid_payload = "invalid_payload"  # 422: the body or a parameter is malformed
    not_found = "not_found"  # 404
    unauthorized = "unauthorized"  # 401: unknown silo, bad signature or token, replay
    forbidden = "forbidden"  # 403: not approved, not a participant
    conflict = "conflict"  # 409: wrong state (round closed, run not running, stage not ready)
    already_answered = "already_answered"  # 409: this silo already answered this step
    too_large = "too_large"  # 413
    wire_version = "wire_version"  # 400: the peer speaks another wire version
    internal = "internal"  # 500


class SecAggStage(StrEnum):
    """Stages of a secure-aggregation round (aggregation/secagg/README.md)."""

    advertise = "advertise"
    share = "share"
    masked = "masked"
    consistency = "consistency"  # only when the round runs the consistency check
    unmask = "unmask"


class HistStage(StrEnum):
    """Stages of one step of a secure-histogram run, as a silo sees them."""

    advertise = "advertise"
    masked = "masked"
    consistency = "consistency"
    unmask = "unmask"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FederationCreate(Message):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=MAX_TEXT, pattern=TEXT_PATTERN)


class FederationOut(Message):
    name: str
    description: str
    created_at: UtcDatetime


class EnrolRequest(Message):
    """A silo asks to join; `proof` is its Ed25519 signature over `enrol_proof_message(...)`."""

    federation: str = Field(pattern=NAME_PATTERN)
    silo: str = Field(pattern=NAME_PATTERN)
    public_key: str = Field(description="raw Ed25519 public key, hex", pattern="^[0-9a-fA-F]{64}$")
    proof: str = Field(description="signature, hex", max_length=256, pattern=TEXT_PATTERN)


def enrol_proof_message(federation: str, silo: str, public_key_hex: str) -> bytes:
    return f"fedsilo-enrol-v1\n{federation}\n{silo}\n{public_key_hex}".encode()


class SiloOut(Message):
    name: str
    federation: str
    status: Literal["pending", "approved", "revoked"]
    public_key: str
    enrolled_at: UtcDatetime


class Metrics(Message):
    """A silo's evaluation of one global model version on its local holdout."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_test: int = Field(ge=0, le=INT32_MAX)
    loss: float
    accuracy: float
    auc: float | None = None


class SecAggInfo(Message):
    """The public parameters of a secure-aggregation round, sent with each of its tasks."""

    stage: SecAggStage
    roster: list[str]
    roster_keys: dict[str, str] = Field(description="silo -> raw Ed25519 public key, hex")
    threshold: int
    dim: int
    bits: int
    degree: int | None = None
    consistency_check: bool = Field(
        default=False,
        description="survivors sign the survivor list before unmasking (Bonawitz's check)",
    )
    clip: float
    weight: float | None = Field(
        default=None,
        description="w_k this silo applies (from the share stage on): n_k / N, or 1/m under DP",
    )


class CollectiveInfo(Message):
    """Where and as whom a silo joins XGBoost's federated collective for one round."""

    host: str
    port: int = Field(gt=0, lt=65536)
    rank: int = Field(ge=0)
    world_size: int = Field(ge=1)
    server_name: str = Field(description="the name the server certificate must carry")


class TreeTaskInfo(Message):
    """What a silo needs for a tree-model round besides the run's spec."""

    seal_key: str = Field(
        description="the service's raw X25519 public key, hex: seal updates to it"
    )
    base_model_sha256: str | None = Field(
        default=None, description="sha256 of the model to continue from (None: from scratch)"
    )
    order: list[str] = Field(
        default_factory=list, description="cyclic mode: this round's order of silos"
    )
    collective: CollectiveInfo | None = None


class HistTaskInfo(Message):
    """One step of a secure-histogram run (tree mode ``secure-hist``) for one silo.

    Stages: ``advertise`` (join the run's secure-aggregation session), ``masked`` (send the
    masked vector of aggregation `counter`: the setup vector when `level` is None, else the
    level's histograms), ``consistency`` (sign the survivor list), ``unmask``. The binary
    protocol messages of a step (the aggregation or unmask request, and at the setup
    aggregation every silo's advert) are fetched as one octet-stream body of frames
    (`schemas.frames`) from ``GET /v1/silo/runs/{run}/hist/inbox?counter=C``: request first,
    then the adverts.
    """

    stage: HistStage
    counter: int = Field(ge=0, description="the session's aggregation counter")
    config: dict[str, object] | None = Field(
        default=None, description="advertise: HistRunConfig.to_dict()"
    )
    roster: list[str] = Field(default_factory=list, description="advertise: session roster")
    roster_keys: dict[str, str] = Field(
        default_factory=dict, description="advertise: silo -> raw Ed25519 public key, hex"
    )
    threshold: int = Field(default=0, description="advertise: Shamir threshold t")
    consistency_check: bool = True
    level: str | None = Field(default=None, description="LevelRequest JSON; None: setup")
    previous: str | None = Field(
        default=None, description="TreeDone JSON of the tree before `level`'s (root levels)"
    )
    survivors: list[str] = Field(default_factory=list, description="consistency stage")


class _TaskBase(Message):
    # silos build file names from it (workspace/secagg/<run>-r<round>): never a path
    run_id: str = Field(pattern=NAME_PATTERN)
    round: int = Field(default=0, ge=0)
    model_version: int = Field(default=0, ge=0)


class _RoundTask(_TaskBase):
    spec: RunSpec
    stats: list[float] | None = Field(
        default=None,
        description="the federation's summed feature moments, once its statistics round is done",
    )


class RunEndedTask(_TaskBase):
    type: Literal["run_ended"] = "run_ended"
    run_status: str


class TrainTask(_RoundTask):
    type: Literal["train"] = "train"


class EvaluateTask(_RoundTask):
    type: Literal["evaluate"] = "evaluate"


class SecAggAdvertiseTask(_RoundTask):
    type: Literal["secagg_advertise"] = "secagg_advertise"
    secagg: SecAggInfo


class SecAggShareTask(_RoundTask):
    type: Literal["secagg_share"] = "secagg_share"
    secagg: SecAggInfo


class SecAggMaskedTask(_RoundTask):
    """Train, then submit the update masked (secure aggregation's masked stage)."""

    type: Literal["secagg_masked"] = "secagg_masked"
    secagg: SecAggInfo


class StatisticsTask(_RoundTask):
    """Submit the masked feature moments (the masked stage of a statistics round)."""

    type: Literal["statistics"] = "statistics"
    secagg: SecAggInfo


class SecAggConsistencyTask(_RoundTask):
    """Sign the survivor list (the consistency check between the masked and unmask stages)."""

    type: Literal["secagg_consistency"] = "secagg_consistency"
    secagg: SecAggInfo
    survivors: list[str] = Field(description="the silos whose masked input arrived (U3)")


class SecAggUnmaskTask(_RoundTask):
    type: Literal["secagg_unmask"] = "secagg_unmask"
    secagg: SecAggInfo


class TreeTrainTask(_RoundTask):
    """Grow trees (bagging, cyclic or the collective) and submit them sealed."""

    type: Literal["tree_train"] = "tree_train"
    trees: TreeTaskInfo


class TreeEvaluateTask(_RoundTask):
    type: Literal["tree_evaluate"] = "tree_evaluate"
    trees: TreeTaskInfo


class HistTask(_RoundTask):
    """One step of a secure-histogram run; `hist.stage` says which."""

    type: Literal["hist"] = "hist"
    hist: HistTaskInfo


class ExtensionTask(_RoundTask):
    """A task of a round mode registered by a plugin (see docs/architecture.md, "Adding a
    round mode"): `mode` names the engine and the silo handler; `body` is that mode's own
    message, validated by the model the plugin registers with its handler."""

    type: Literal["extension"] = "extension"
    mode: str = Field(pattern=NAME_PATTERN)
    body: dict[str, object] = Field(default_factory=dict)


Task = Annotated[
    RunEndedTask
    | TrainTask
    | EvaluateTask
    | SecAggAdvertiseTask
    | SecAggShareTask
    | SecAggMaskedTask
    | StatisticsTask
    | SecAggConsistencyTask
    | SecAggUnmaskTask
    | TreeTrainTask
    | TreeEvaluateTask
    | HistTask
    | ExtensionTask,
    Field(discriminator="type"),
]
"""What the service asks a silo to do next: one model per task type."""

TASK_ADAPTER: TypeAdapter[Task] = TypeAdapter(Task)


class Refusal(Message):
    reason: str = Field(min_length=1, max_length=MAX_TEXT, pattern=TEXT_PATTERN)


PrefectId = Annotated[str, Field(max_length=64, pattern=TEXT_PATTERN)]


class MetricsReport(Message):
    metrics: Metrics
    prefect_flow_run_id: PrefectId | None = None


MAX_DEADLINE_S = 30 * 24 * 3600.0


class RoundOpen(Message):
    round: int = Field(ge=1, le=INT32_MAX)
    kind: Literal["train", "evaluate", "statistics"] = "train"
    deadline_s: float = Field(gt=0, le=MAX_DEADLINE_S, allow_inf_nan=False)


class SiloRoundState(Message):
    silo: str
    state: Literal["waiting", "submitted", "refused", "evaluated", "sat_out"]
    reason: str | None = None
    n_examples: int | None = None
    metrics: Metrics | None = None
    train_seconds: float | None = None


class RoundOut(Message):
    run_id: str
    round: int
    kind: Literal["train", "evaluate", "statistics"]
    status: Literal["open", "aggregated", "closed", "failed"]
    opened_at: UtcDatetime
    deadline_at: UtcDatetime
    closed_at: UtcDatetime | None = None
    complete: bool = Field(description="every participating silo has answered")
    silos: list[SiloRoundState]
    model_version: int | None = None
    model_sha256: str | None = None
    reason: str | None = None
    secagg_stage: str | None = Field(default=None, description="secure aggregation stage")
    input_model_version: int = Field(default=0, description="the model the round started from")


class RunCreate(Message):
    spec: RunSpec
    prefect_flow_run_id: PrefectId | None = None


class RunOut(Message):
    run_id: str
    federation: str
    status: Literal["created", "running", "finished", "failed"]
    spec: RunSpec
    participants: list[str]
    created_at: UtcDatetime
    finished_at: UtcDatetime | None = None
    reason: str | None = None
    latest_model_version: int | None = None
    prefect_flow_run_id: str | None = None


class RunFinish(Message):
    status: Literal["finished", "failed"]
    reason: str = Field(default="", max_length=MAX_TEXT, pattern=TEXT_PATTERN)
    final_model_version: int | None = Field(default=None, ge=0, le=INT32_MAX)


class ErrorOut(Message):
    """Every refused request's body: `code` for programs, `detail` for people."""

    code: ErrorCode
    detail: str
    wire: int = WIRE_VERSION


class ExpectationOutcome(Message):
    """One failed (or passed) expectation of a data contract's suite, without any raw values."""

    expectation: str = Field(
        description="GX expectation type, e.g. expect_column_values_to_be_between"
    )
    column: str | None = None
    success: bool
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    detail: str = Field(default="", description="human summary; never raw values or rows")


class ValidationSummary(Message):
    """The result of a silo's validation gate for one round: fingerprints and counts only."""

    contract: str
    contract_version: str
    contract_sha256: str
    data_sha256: str = Field(description="sha256 of the canonical table (see silos.gate)")
    n_rows: int = Field(ge=0)
    n_expectations: int = Field(ge=0)
    success: bool
    failed: list[ExpectationOutcome] = Field(default_factory=list)
    prefect_flow_run_id: str | None = None

    def reason(self) -> str:
        """One line naming each failed expectation, for round tables and run failures."""
        parts = [
            f"{f.expectation}({f.column or 'table'})"
            + (
                f": {f.unexpected_count} unexpected ({f.unexpected_percent:.1f}%)"
                if f.unexpected_count is not None and f.unexpected_percent is not None
                else ""
            )
            for f in self.failed
        ]
        return f"contract {self.contract} v{self.contract_version} failed: " + "; ".join(parts)
