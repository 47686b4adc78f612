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

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from schemas.ledger_silo_copy import SiloRecord
from schemas.specs import MAX_ROUND_DEADLINE_S, RunSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"

# 3: tasks carry ledger checkpoints and task polls the silo's countersignatures (an agent of
# version 2 could not read such a task: it is refused by the version check instead)
WIRE_VERSION = 3
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
    # 409: an asynchronous run between two buffers (one closed, the next not open yet): send
    # the same update again once the next buffer opens; it joins it with its staleness
    between_buffers = "between_buffers"
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


class ReadyIn(Message):
    """A silo's agent validated its data and warmed up: it can answer a round at once."""

    contract: str = Field(max_length=256, pattern=TEXT_PATTERN)
    contract_version: str = Field(max_length=64, pattern=TEXT_PATTERN)
    data_sha256: str | None = Field(default=None, max_length=64, pattern=TEXT_PATTERN)
    validated: bool
    detail: str = Field(default="", max_length=MAX_TEXT, pattern=TEXT_PATTERN)


ONLINE_WITHIN_S = 90.0  # a silo seen this recently counts as online (`SiloOut.online`)


class SiloOut(Message):
    name: str
    federation: str
    status: Literal["pending", "approved", "revoked"]
    public_key: str
    enrolled_at: UtcDatetime
    last_seen_at: UtcDatetime | None = None
    ready_at: UtcDatetime | None = None
    ready: ReadyIn | None = None
    online: bool = Field(default=False, description=f"seen within the last {ONLINE_WITHIN_S:.0f} s")


class Metrics(Message):
    """A silo's evaluation of one global model version on its local holdout."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_test: int = Field(ge=0, le=INT32_MAX)
    loss: float
    # Which of these are set follows the contract's task (schemas.task_metrics.METRICS_BY_TASK);
    # None where a metric does not apply or is undefined on the holdout.
    accuracy: float | None = None
    auc: float | None = None
    f1_macro: float | None = None
    rmse: float | None = None
    mae: float | None = None
    r2: float | None = None


class Refusal(Message):
    reason: str = Field(min_length=1, max_length=MAX_TEXT, pattern=TEXT_PATTERN)


PrefectId = Annotated[str, Field(max_length=64, pattern=TEXT_PATTERN)]

DeclineScope = Literal["round", "run"]
DeclineCause = Literal["data", "contract", "policy", "privacy_budget", "training", "internal"]


class DeclinePayload(Message):
    """The payload of a silo's signed ``decline`` statement (kind ``decline``): it cannot
    answer round `round` (scope ``round``: it sits that round out) or the rest of the run
    (scope ``run``), and why. The service applies it and moves the round on without it."""

    silo: str = Field(pattern=NAME_PATTERN)
    run_id: str = Field(max_length=64, pattern=TEXT_PATTERN)
    round: int = Field(ge=1, le=INT32_MAX)
    scope: DeclineScope
    cause: DeclineCause
    reason: str = Field(min_length=1, max_length=MAX_TEXT, pattern=TEXT_PATTERN)


class MetricsReport(Message):
    metrics: Metrics
    prefect_flow_run_id: PrefectId | None = None


MAX_DEADLINE_S = MAX_ROUND_DEADLINE_S


class RoundOpen(Message):
    round: int = Field(ge=1, le=INT32_MAX)
    kind: Literal["train", "evaluate", "statistics"] = "train"
    deadline_s: float = Field(gt=0, le=MAX_DEADLINE_S, allow_inf_nan=False)


class RoundClose(Message):
    """``POST .../rounds/{n}/close`` (optional body): `then_open` opens round n + 1 in the
    close's own transaction when the close ends round n and the run goes on, so the silos get
    their next task at the commit, without the coordinator's round trip in between."""

    then_open: RoundOpen | None = None


class SiloRoundState(Message):
    silo: str
    state: Literal["waiting", "submitted", "refused", "evaluated", "sat_out", "declined"]
    reason: str | None = None
    cause: str | None = Field(default=None, description="a declined silo's DeclineCause")
    n_examples: int | None = None
    metrics: Metrics | None = None
    train_seconds: float | None = None


class RoundOut(Message):
    run_id: str
    round: int
    kind: Literal["train", "evaluate", "statistics"]
    status: Literal["open", "aggregated", "closed", "failed", "cancelled"]
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
    awaited: list[str] = Field(
        default_factory=list, description="silos the round's current stage still waits for"
    )
    stage: str | None = Field(
        default=None, description="the current stage (secure aggregation or secure-hist)"
    )
    opened_next: int | None = Field(
        default=None, description="the round this close opened (`RoundClose.then_open`)"
    )


class RunCreate(Message):
    spec: RunSpec
    prefect_flow_run_id: PrefectId | None = None


class RunOut(Message):
    run_id: str
    federation: str
    status: Literal["created", "running", "finished", "failed", "cancelled"]
    spec: RunSpec
    participants: list[str]
    created_at: UtcDatetime
    finished_at: UtcDatetime | None = None
    reason: str | None = None
    latest_model_version: int | None = None
    prefect_flow_run_id: str | None = None


class RunStatistics(Message):
    """The federation's securely summed feature moments of a run (its statistics round's
    result, `schemas.contracts.stats`), which its silos standardise and impute with."""

    run_id: str
    statistics: list[float]


class RunFinish(Message):
    status: Literal["finished", "failed"]
    reason: str = Field(default="", max_length=MAX_TEXT, pattern=TEXT_PATTERN)
    final_model_version: int | None = Field(default=None, ge=0, le=INT32_MAX)


class RunCancel(Message):
    """Cancel a run (admin): its open round closes, silos are told the run ended."""

    reason: str = Field(min_length=1, max_length=MAX_TEXT, pattern=TEXT_PATTERN)


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
    warning: bool = Field(
        default=False,
        description='failed, but the contract counts it as a warning (on_drift = "warn"): '
        "success stays True and the gate passes",
    )


class ValidationSummary(Message):
    """The result of a silo's validation gate for one round: fingerprints and counts only."""

    contract: str
    contract_version: str
    contract_sha256: str
    data_sha256: str = Field(description="sha256 of the canonical table (see silos.gate)")
    n_rows: int = Field(ge=0)
    test_data_sha256: str | None = Field(
        default=None, description="the held-out test file's sha256 (silo.toml test_path), if any"
    )
    test_n_rows: int | None = Field(default=None, ge=0)
    n_expectations: int = Field(ge=0)
    success: bool
    failed: list[ExpectationOutcome] = Field(default_factory=list)
    warnings: list[ExpectationOutcome] = Field(
        default_factory=list,
        description='checks that failed but count as warnings (on_drift = "warn"): the silo '
        "passed the gate and trains; the coordinator is shown which column drifted",
    )
    prefect_flow_run_id: str | None = None

    @property
    def fingerprints(self) -> tuple[str, str | None]:
        """The training and held-out test tables' sha256: a change of either reloads the data."""
        return (self.data_sha256, self.test_data_sha256)

    def reason(self) -> str:
        """One line naming each failed expectation, for round tables and run failures. A table
        that could not be read (``read_table``, ``test_path:read_table``) adds its detail, the
        file and the reader's reason, or the line would not say which file; other details stay
        out, since they carry the silo's column statistics and the line goes to the service."""
        parts = [
            f"{f.expectation}({f.column or 'table'})"
            + (
                f": {f.unexpected_count} unexpected ({f.unexpected_percent:.1f}%)"
                if f.unexpected_count is not None and f.unexpected_percent is not None
                else ""
            )
            + (f": {_clipped(f.detail)}" if _unreadable(f) and f.detail else "")
            for f in self.failed
        ]
        return f"contract {self.contract} v{self.contract_version} failed: " + "; ".join(parts)


READ_TABLE = "read_table"  # the gate's outcome for a table it could not read at all
REASON_DETAIL_CHARS = 300


def _unreadable(outcome: ExpectationOutcome) -> bool:
    """A table the gate could not read: the data file, or ``test_path:`` the held-out one."""
    return outcome.expectation.rpartition(":")[2] == READ_TABLE


def _clipped(text: str) -> str:
    """`text` on one line, at most REASON_DETAIL_CHARS long (a reason is one short line)."""
    line = " ".join(text.split())
    return line if len(line) <= REASON_DETAIL_CHARS else line[: REASON_DETAIL_CHARS - 1] + "…"


MAX_SILO_RECORDS = 500  # per page: each record's receipt is signed afresh by the service


class SiloRecordPage(BaseModel):
    """``GET /v1/silo/ledger/records``: ledger entries the calling silo authored, in seq order,
    as the records of its copy of its lineage (`SiloRecord`: statement, its signature, the
    service's receipt), with the service's public key (hex). ``next_after``: the seq to ask
    after for the next page, None when this was the last."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service_key: str
    records: list[SiloRecord]
    next_after: int | None = None
