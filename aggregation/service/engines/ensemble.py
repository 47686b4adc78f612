"""The three round modes of a FedBoost ensemble run (`schemas.ensemble`).

- ``ensemble-members`` (round 1): each silo answers its `ExtensionTask` with its member (JSON:
  kind, training rows, the model's bytes in base64); the service checks it and, at close,
  stores every member, sorted by silo, with uniform weights as model version 1. The
  ``aggregate`` entry lists each member's silo, kind and sha256.
- ``ensemble-weights`` (rounds 2..R): the secure-aggregation protocol of `engines.secure` with
  `EnsembleWeightsTask` as the masked stage; the unmasked sum is the federation's mean
  gradient of the mixture log-loss, and one exponentiated-gradient step gives the next weights
  (a new model version: same members, new weights).
- ``ensemble-evaluate`` (the closing evaluation round): each silo sends its metrics of the final
  ensemble (it signs them, with its member's alone, in an ``ensembled`` statement).
"""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
from pydantic import ValidationError

from aggregation.service import secure_rounds
from aggregation.service.engines.base import AfterCommit, Answer, RoundContext
from aggregation.service.engines.common import (
    answered,
    awaited_default,
    close_with_answers,
    contributors,
    fail_round,
    refuse_step,
    round_fields,
)
from aggregation.service.engines.secure import SecureEngine
from aggregation.service.exceptions import AlreadyAnswered, InvalidPayload
from aggregation.service.model_store import save_round_model
from aggregation.service.rounds import contributions
from aggregation.service.tables import Contribution, ModelVersion, utcnow
from schemas.ensemble import (
    EVALUATE_MODE,
    INT32_MAX,
    MAX_MEMBERS,
    MEMBERS_MODE,
    EnsembleArtifact,
    Member,
    MemberKind,
    check_member_bytes,
    weight_step,
)
from schemas.tasks import EnsembleWeightsTask, ExtensionTask, Task
from schemas.wire import Metrics


def artifact_bytes(artifact: EnsembleArtifact) -> bytes:
    """The stored form of an ensemble (canonical JSON, so its sha256 is reproducible)."""
    return json.dumps(artifact.model_dump(mode="json"), sort_keys=True).encode()


class _ExtensionRound:
    """Rounds answered in the clear through the extension route, one answer per silo."""

    mode = ""
    kind = "update"

    def start(self, ctx: RoundContext, deadline_s: float) -> AfterCommit | None:
        return None

    def advance(self, ctx: RoundContext, *, force: bool) -> None:
        return None

    def awaited(self, ctx: RoundContext) -> set[str]:
        return awaited_default(ctx)

    def task_for(self, ctx: RoundContext, silo: str) -> Task | None:
        if answered(ctx, silo):
            return None
        assert ctx.spec.ensemble is not None
        body: dict[str, object] = {
            "kind": ctx.spec.ensemble.kind_for(silo),
            "val_fraction": ctx.spec.ensemble.val_fraction,
        }
        return ExtensionTask(**round_fields(ctx), mode=self.mode, body=body)

    def store(
        self, ctx: RoundContext, answer: Answer, digest: str, **fields: object
    ) -> dict[str, object]:
        rnd = ctx.rnd
        existing = ctx.s.get(Contribution, (rnd.run_id, rnd.number, answer.silo))
        if existing is not None:
            if existing.digest == digest:
                return {"duplicate": True, "digest": digest}
            raise AlreadyAnswered(f"silo {answer.silo!r} already answered round {rnd.number}")
        row = Contribution(
            run_id=rnd.run_id, round=rnd.number, silo=answer.silo, kind=self.kind, digest=digest
        )
        for name, value in fields.items():
            setattr(row, name, value)
        ctx.s.add(row)
        return {"duplicate": False, "digest": digest}


class MembersEngine(_ExtensionRound):
    """Round 1: collect one member per silo; at close, the ensemble with uniform weights."""

    mode = MEMBERS_MODE

    def receive(self, ctx: RoundContext, answer: Answer) -> dict[str, object]:
        if answer.step != "extension":
            raise refuse_step(ctx, answer, MEMBERS_MODE, "send the member to the extension route")
        member = _member(ctx, answer)
        payload = member.model_dump_json().encode()
        return self.store(ctx, answer, member.sha256, n_examples=member.n_train, payload=payload)

    def close(self, ctx: RoundContext) -> None:
        rnd = ctx.rnd
        sent = [c for c in contributions(ctx.s, rnd.run_id, rnd.number) if c.kind == "update"]
        if len(sent) > MAX_MEMBERS:  # the weight gradient is summed as a fixed-length vector
            reason = f"{len(sent)} silos sent members; an ensemble holds at most {MAX_MEMBERS}"
            fail_round(ctx, f"round {rnd.number}: {reason}")
            return
        close_with_answers(ctx, _save_members)


class EvaluateEngine(_ExtensionRound):
    """The closing evaluation round: each silo's metrics of the final ensemble."""

    mode = EVALUATE_MODE
    kind = "evaluation"

    def receive(self, ctx: RoundContext, answer: Answer) -> dict[str, object]:
        if answer.step != "extension":
            raise refuse_step(ctx, answer, EVALUATE_MODE, "send metrics to the extension route")
        try:
            metrics = Metrics.model_validate_json(answer.body)
        except ValidationError as exc:
            raise InvalidPayload(
                f"ensemble metrics from silo {answer.silo!r}, round {ctx.rnd.number}: {exc}"
            ) from exc
        digest = hashlib.sha256(answer.body).hexdigest()
        return self.store(
            ctx, answer, digest, n_examples=metrics.n_test, metrics_json=metrics.model_dump_json()
        )

    def close(self, ctx: RoundContext) -> None:
        close_with_answers(ctx, lambda ctx, updates: None)


class WeightsEngine(SecureEngine):
    """Rounds 2..R: securely summed gradients step the mixture weights."""

    masked_task = EnsembleWeightsTask
    # only summed gradients leave a silo: its validation-slice metrics are not kept (an older
    # silo still sends them), and a weight round has no per-silo ``metrics`` entry
    keeps_metrics = False

    def on_sum(self, ctx: RoundContext, flat: np.ndarray, updates: list[Contribution]) -> None:
        """The survivors' mean gradient (first m entries) steps the weights; saved as the next
        version with the same members."""
        s, run, rnd, spec = ctx.s, ctx.run, ctx.rnd, ctx.spec
        assert spec.ensemble is not None
        current = load_artifact(ctx, rnd.input_model_version)
        m = len(current.members)
        gradient = flat[:m] / secure_rounds.survivor_weight(s, rnd, spec)
        weights = weight_step(np.asarray(current.weights), gradient, spec.ensemble.lr)
        new = current.model_copy(
            update={
                "weights": [float(w) for w in weights],
                "weight_round": current.weight_round + 1,
            }
        )
        payload = artifact_bytes(new)
        entry = {
            "round": rnd.number,
            "contributors": contributors(updates),
            "model_version": rnd.number,
            "ensemble": new.summary(),
            "mean_gradient": [float(g) for g in gradient],
            "secure_aggregation": True,
            "individual_updates_seen_by_service": False,
        }
        digest = hashlib.sha256(payload).hexdigest()
        save_round_model(s, run, rnd, payload, digest, entry, ctx.hub.recorder)
        rnd.status = "aggregated"
        rnd.closed_at = utcnow()


def load_artifact(ctx: RoundContext, version: int) -> EnsembleArtifact:
    """The ensemble stored as model `version` of the round's run."""
    row = ctx.s.get(ModelVersion, (ctx.run.id, version))
    if row is None:
        raise InvalidPayload(f"run {ctx.run.id} has no ensemble at model version {version}")
    return EnsembleArtifact.model_validate_json(row.payload)


def _member(ctx: RoundContext, answer: Answer) -> Member:
    """The silo's member, checked: JSON of kind, n_train and model_b64, of the kind the run
    asked this silo for, its bytes of the run's feature count (`check_member_bytes`), so one
    silo cannot hand every other a member that fails to load."""
    assert ctx.spec.ensemble is not None
    where = f"member from silo {answer.silo!r}, round {ctx.rnd.number}"
    try:
        doc = json.loads(answer.body)
        data = base64.b64decode(doc["model_b64"], validate=True)
        kind: MemberKind = doc["kind"]
        # informational: the weight rounds weigh silos by their advertised, validated counts
        n_train = doc["n_train"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InvalidPayload(f"{where}: not a member message ({exc})") from exc
    # a row count the int column holds: not Infinity, a float, a string or a bool
    if type(n_train) is not int or not 1 <= n_train <= INT32_MAX:
        raise InvalidPayload(f"{where}: n_train {n_train!r:.40} is not a count in 1..{INT32_MAX}")
    expected = ctx.spec.ensemble.kind_for(answer.silo)
    if kind != expected:
        raise InvalidPayload(f"{where}: the run asks this silo for a {expected} member")
    try:
        check_member_bytes(data, expected, ctx.spec.torch_model.n_features)
    except ValueError as exc:
        raise InvalidPayload(f"{where}: {exc}") from exc
    try:
        return Member(
            silo=answer.silo,
            kind=kind,
            sha256=hashlib.sha256(data).hexdigest(),
            n_train=n_train,
            model_b64=doc["model_b64"],
        )
    except ValidationError as exc:
        raise InvalidPayload(f"{where}: {exc}") from exc


def _save_members(ctx: RoundContext, updates: list[Contribution]) -> None:
    members = sorted(
        (Member.model_validate_json(c.payload or b"") for c in updates), key=lambda m: m.silo
    )
    artifact = EnsembleArtifact(
        run_id=ctx.run.id,
        members=members,
        weights=[1.0 / len(members)] * len(members),
        weight_round=0,
    )
    payload = artifact_bytes(artifact)
    entry = {
        "round": ctx.rnd.number,
        "contributors": contributors(updates),  # digest: each member's sha256
        "model_version": ctx.rnd.number,
        "ensemble": artifact.summary(),
    }
    sha = hashlib.sha256(payload).hexdigest()
    save_round_model(ctx.s, ctx.run, ctx.rnd, payload, sha, entry, ctx.hub.recorder)
