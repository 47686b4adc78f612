"""What the service asks a silo to do: one typed task per task type (the `Task` union).

`GET /v1/silo/tasks` answers one of these (or 204); silos parse it with `TASK_ADAPTER` and
dispatch on its ``type``. The information a task carries for secure aggregation, tree rounds and
secure-hist steps is here too; the other wire messages are in `schemas.wire`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from schemas.ledger_checkpoint import CheckpointList
from schemas.specs import RunSpec
from schemas.vertical import VerticalRunOut
from schemas.wire import NAME_PATTERN, HistStage, Message, PrefectId, SecAggStage


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
    masked vector of aggregation `counter`: the silo's row count when `count_rows`, the setup
    vector when `level` is None, else the level's histograms), ``consistency`` (sign the
    survivor list), ``unmask``. The binary protocol messages of a step (the aggregation or
    unmask request, and at the session's first aggregation every silo's advert) are fetched
    as one octet-stream body of frames (`schemas.frames`) from
    ``GET /v1/silo/runs/{run}/hist/inbox?counter=C``: request first, then the adverts.
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
    count_rows: bool = Field(
        default=False,
        description="masked: the run's first aggregation, the silo's training rows (one entry)",
    )
    rows: int | None = Field(
        default=None,
        ge=1,
        description="masked, setup: the federation's training rows (the first aggregation's "
        "sum); the fine-grid counts travel at its bit width",
    )
    previous: str | None = Field(
        default=None, description="TreeDone JSON of the tree before `level`'s (root levels)"
    )
    survivors: list[str] = Field(default_factory=list, description="consistency stage")


# A poll may ask for the task's model inline (`GET /v1/silo/tasks?inline_model=true`): a task of
# these types, whose model version is at most INLINE_MODEL_MAX_BYTES, then carries it (base64
# safetensors), and the silo skips `GET .../models/{version}`: one request fewer per silo and
# round. Other tasks (a secure round's other stages, trees) and bigger models: fetched as before.
INLINE_MODEL_TASKS = frozenset({"train", "evaluate", "secagg_masked", "secagg_buffered"})
INLINE_MODEL_MAX_BYTES = 1 << 20
INLINE_MODEL_PARAM = "inline_model"
# Likewise a secure-aggregation stage's task may carry what the silo would fetch first
# (`GET .../secagg/{what}`: every advert, its own shares, its unmask request) as base64
# frames (`schemas.frames`) when the poll asks (`inline_inbox=true`) and they fit in
# INLINE_INBOX_MAX_BYTES: one request fewer per silo and stage.
INLINE_INBOX = {
    "secagg_share": "adverts",
    "secagg_masked": "shares",
    "secagg_buffered": "shares",
    "statistics": "shares",
    "distill": "shares",
    "ensemble_weights": "shares",
    "secagg_unmask": "unmask-request",
}
INLINE_INBOX_MAX_BYTES = 1 << 20
INLINE_INBOX_PARAM = "inline_inbox"
# An answer (POST .../secagg/{stage}, .../secagg/masked/update, .../update) with
# ``next_wait=S`` long-polls, once the answer is stored, for the silo's next task in that run,
# as ``GET /v1/silo/tasks?run_id=...&wait=S`` would (with the inline_* flags and the
# countersignatures the POST gives), and brings it in the answer's NEXT_TASK_FIELD (absent
# when none came within S): an agent takes one request per step instead of two.
NEXT_WAIT_PARAM = "next_wait"
NEXT_TASK_FIELD = "next_task"


class _TaskBase(Message):
    # silos build file names from it (workspace/secagg/<run>-r<round>): never a path
    run_id: str = Field(pattern=NAME_PATTERN)
    round: int = Field(default=0, ge=0)
    model_version: int = Field(default=0, ge=0)
    model_b64: str | None = Field(
        default=None,
        description="model version `model_version` (safetensors, base64) when the poll asked "
        "for it inline and the task needs it (INLINE_MODEL_TASKS); None: GET it",
    )
    inbox_b64: str | None = Field(
        default=None,
        description="what the stage's silo fetches first (INLINE_INBOX: frames, base64) when "
        "the poll asked for it inline; None: GET it",
    )
    checkpoints: CheckpointList | None = Field(
        default=None,
        description="ledger checkpoints this silo has still to countersign (the oldest first, "
        "with the service key to pin): the countersignatures go back on its next poll",
    )


class _RoundTask(_TaskBase):
    spec: RunSpec
    coordinator_flow_run_id: PrefectId | None = Field(
        default=None,
        description="the coordinator's Prefect flow run: silo flow runs link to it by a tag",
    )
    stats: list[float] | None = Field(
        default=None,
        description="the federation's summed feature moments, once its statistics round is done",
    )


class RunEndedTask(_TaskBase):
    type: Literal["run_ended"] = "run_ended"
    # finished, failed, cancelled; or the run's status when this silo left it (refused)
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


class SecAggBufferedTask(SecAggMaskedTask):
    """The masked stage of an asynchronous secure buffer: submit, masked, the update this silo
    already trained for round `base_round` (no training now), weighted by `secagg.weight`
    (its n_k / N times its staleness weight)."""

    type: Literal["secagg_buffered"] = "secagg_buffered"  # type: ignore[assignment]
    base_round: int = Field(ge=1, description="the round whose model the update was trained on")
    staleness: int = Field(ge=0, description="this buffer's input version - the base version")


class StatisticsTask(_RoundTask):
    """Submit the masked feature moments (the masked stage of a statistics round)."""

    type: Literal["statistics"] = "statistics"
    secagg: SecAggInfo


class DistillTask(_RoundTask):
    """Train this silo's own model kind and submit its masked, weighted P(y=1) on the run's
    reference set (the masked stage of a distillation round, `schemas.distill`); the soft
    labels to learn from are model version `model_version` (none at version 0)."""

    type: Literal["distill"] = "distill"
    secagg: SecAggInfo


class EnsembleWeightsTask(_RoundTask):
    """Score every member of the ensemble (model version `model_version`) on this silo's
    validation rows and submit the masked, weighted gradient of the mixture's log-loss with
    respect to its logits (the masked stage of an ensemble weight round, `schemas.ensemble`)."""

    type: Literal["ensemble_weights"] = "ensemble_weights"
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


class VerticalTask(_TaskBase):
    """A vertical run (schemas/vertical.py) names this silo as a party and it has not joined
    yet: its agent runs its party role (PSI, SecureBoost or joint prediction) over the relay."""

    type: Literal["vertical"] = "vertical"
    vertical: VerticalRunOut


Task = Annotated[
    RunEndedTask
    | TrainTask
    | EvaluateTask
    | SecAggAdvertiseTask
    | SecAggShareTask
    | SecAggMaskedTask
    | SecAggBufferedTask
    | StatisticsTask
    | DistillTask
    | EnsembleWeightsTask
    | SecAggConsistencyTask
    | SecAggUnmaskTask
    | TreeTrainTask
    | TreeEvaluateTask
    | HistTask
    | ExtensionTask
    | VerticalTask,
    Field(discriminator="type"),
]
"""What the service asks a silo to do next: one model per task type."""

TASK_ADAPTER: TypeAdapter[Task] = TypeAdapter(Task)
