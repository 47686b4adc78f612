"""Read one training run out of the lineage ledger: who took part, on which data, with what result.

The CLI (`flows.lineage_cmds`), the HTML report (`flows.report`) and the OpenLineage export
(`flows.openlineage_export`) all look at a run through `run_view`, so they agree on what the
ledger says. Nothing here checks hashes or signatures (that is `verify_chain`'s job): a view of
a tampered ledger is still built, and the caller shows the verification result beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.exceptions import FlowError
from schemas.lineage import CanonicalJsonError, LineageEntry, parse_json

SILO_PREFIX = "silo:"


class LineageReviewError(FlowError):
    """A review command cannot proceed: unknown run, unreadable export, silo copy or key.

    The message names the run, file, line or key at fault and what to do about it. (Defined
    here until `flows.exceptions`, which another change owns, takes it.)
    """


def payload_of(entry: LineageEntry) -> dict[str, Any]:
    """The entry's payload as a dict; ``{}`` when it is not a JSON object.

    A tampered payload may not parse; the review still renders, and `verify_chain` (run
    beside it) names the entry.
    """
    try:
        value = parse_json(entry.payload)
    except CanonicalJsonError:
        return {}
    return value if isinstance(value, dict) else {}


def as_list(mapping: dict[str, Any], key: str) -> list[Any]:
    """``mapping[key]`` when it is a list, else ``[]`` (payloads may be malformed)."""
    value = mapping.get(key)
    return value if isinstance(value, list) else []


def as_dict(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    """``mapping[key]`` when it is an object, else ``{}``."""
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def silo_name(author_or_name: str) -> str:
    """``silo:hungary`` or ``hungary`` -> ``hungary``."""
    return author_or_name.removeprefix(SILO_PREFIX)


@dataclass(frozen=True)
class Validation:
    """One silo's validation of its data against the contract at the start of a round."""

    seq: int
    silo: str
    round: int
    contract: str
    contract_version: str
    contract_sha256: str
    data_sha256: str
    n_rows: int | None
    success: bool
    failed: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class ModelRecord:
    """A global model the service stored (``model_saved``)."""

    seq: int
    round: int
    version: int
    sha256: str
    path: str


@dataclass(frozen=True)
class RoundMetrics:
    """Evaluation of one model version on the silos' holdouts (``metrics``)."""

    seq: int
    round: int
    model_version: int | None
    per_silo: dict[str, dict[str, Any]]
    weighted: dict[str, Any]


@dataclass(frozen=True)
class PrivacyPoint:
    """Privacy spent by a silo as of a round, as its accountant reported it."""

    seq: int
    silo: str
    round: int
    epsilon: float
    delta: float | None
    noise_multiplier: float | None
    clip_norm: float | None
    # this run's own epsilon; `epsilon` is the silo's total over all its runs so far. None in
    # ledgers written before silos recorded it ("this run's share not recorded")
    run_epsilon: float | None = None


@dataclass
class RunView:
    """Everything the ledger records about one run, grouped by what a reviewer asks."""

    run_id: str
    entries: list[LineageEntry]
    started: dict[str, Any] = field(default_factory=dict)
    joined: dict[str, LineageEntry] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)
    validations: list[Validation] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    aggregates: list[dict[str, Any]] = field(default_factory=list)
    models: list[ModelRecord] = field(default_factory=list)
    metrics: list[RoundMetrics] = field(default_factory=list)
    privacy: list[PrivacyPoint] = field(default_factory=list)
    dropouts: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    # ``silo_revoked`` entries of the run (silo, federation, public_key, reason, round), then
    # federation-level ones (run_id null) whose ``runs`` name this run
    revocations: list[dict[str, Any]] = field(default_factory=list)
    finish: dict[str, Any] | None = None
    finish_kind: str | None = None

    @property
    def spec(self) -> dict[str, Any]:
        return as_dict(self.started, "spec")

    @property
    def participants(self) -> list[str]:
        """Silos named at the start, then any other silo that appears in the run's entries."""
        names = [silo_name(str(s)) for s in self.started.get("participants") or []]
        for entry in self.entries:
            if entry.author.startswith(SILO_PREFIX) and silo_name(entry.author) not in names:
                names.append(silo_name(entry.author))
        return names

    @property
    def status(self) -> str:
        if self.finish_kind == "run_failed":
            return "failed"
        if self.finish_kind == "run_cancelled":
            return "cancelled"
        if self.finish_kind == "run_finished":
            return str((self.finish or {}).get("status") or "finished")
        return "in progress"

    @property
    def final_model(self) -> ModelRecord | None:
        """The model the run ended with (``run_finished``), else the last one saved: the
        output so far, which lineage events list. Only a finished run's is final (see
        `finished_model`); a failed, cancelled or running run's is intermediate."""
        if self.finish and self.finish.get("final_model_version") is not None:
            found = self.model(self.finish["final_model_version"])
            if found is not None:
                return found
        return self.models[-1] if self.models else None

    @property
    def finished_model(self) -> ModelRecord | None:
        """The final model of a finished run; None for a run that failed, was cancelled or is
        still running: it has no final model, only intermediate ones (`model`)."""
        return self.final_model if self.finish_kind == "run_finished" else None

    def revoked(self, silo: str) -> dict[str, Any] | None:
        """The first revocation of `silo` that concerns this run (payload), else None."""
        name = silo_name(silo)
        return next(
            (r for r in self.revocations if silo_name(str(r.get("silo") or "")) == name), None
        )

    def model(self, version: int) -> ModelRecord | None:
        """Model `version` as the run saved it (the latest record if saved twice)."""
        return next((m for m in reversed(self.models) if m.version == version), None)

    def aggregated_rounds(self, silo: str) -> set[int]:
        """Rounds whose ``aggregate`` entry lists `silo` (``name`` or ``silo:name``) among its
        contributors: the rounds in which the silo's update reached the model."""
        name = silo_name(silo)
        return {
            a["round"]
            for a in self.aggregates
            if isinstance(a.get("round"), int)
            and any(
                isinstance(c, dict) and silo_name(str(c.get("silo"))) == name
                for c in as_list(a, "contributors")
            )
        }

    def prefect_flow_runs(self) -> list[tuple[str, str]]:
        """(who, Prefect flow run id) for the coordinator and any entry that names one."""
        found: list[tuple[str, str]] = []
        for entry in self.entries:
            run = payload_of(entry).get("prefect_flow_run_id")
            who = "coordinator" if entry.kind == "run_started" else entry.author
            if isinstance(run, str) and run and (who, run) not in found:
                found.append((who, run))
        return found


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def as_float(value: Any) -> float | None:
    """A JSON number as float; None for anything else (booleans included)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _validation(entry: LineageEntry, p: dict[str, Any]) -> Validation:
    failed = as_list(p, "failed")
    return Validation(
        seq=entry.seq,
        silo=silo_name(str(p.get("silo") or entry.author)),
        round=_int(p.get("round")),
        contract=str(p.get("contract") or ""),
        contract_version=str(p.get("contract_version") or ""),
        contract_sha256=str(p.get("contract_sha256") or ""),
        data_sha256=str(p.get("data_sha256") or ""),
        n_rows=p.get("n_rows") if isinstance(p.get("n_rows"), int) else None,
        success=p.get("success") is True,
        failed=tuple(f for f in failed if isinstance(f, dict)),
    )


def _add(view: RunView, entry: LineageEntry) -> None:
    """File one entry of the run under the heading a reviewer looks for it."""
    p, kind = payload_of(entry), entry.kind
    if kind == "run_started":
        view.started = p
    elif kind == "silo_refused":
        view.refused.append(p)
    elif kind == "validation_result":
        view.validations.append(_validation(entry, p))
    elif kind == "update_accepted":
        view.accepted.append({**p, "silo": silo_name(str(p.get("silo") or entry.author))})
    elif kind == "update_rejected":
        view.rejected.append(p)
    elif kind == "aggregate":
        view.aggregates.append(p)
    elif kind == "model_saved":
        view.models.append(
            ModelRecord(
                entry.seq,
                _int(p.get("round")),
                _int(p.get("version")),
                str(p.get("sha256") or ""),
                str(p.get("path") or ""),
            )
        )
    elif kind == "metrics":
        version = p.get("model_version") if isinstance(p.get("model_version"), int) else None
        view.metrics.append(
            RoundMetrics(
                entry.seq,
                _int(p.get("round")),
                version,
                as_dict(p, "per_silo"),
                as_dict(p, "weighted"),
            )
        )
    elif kind == "privacy_spent":
        _add_privacy(view, entry, p)
    elif kind == "dropout":
        view.dropouts.append(p)
    elif kind == "recovery":
        view.recoveries.append(p)
    elif kind == "silo_revoked":
        view.revocations.append({**p, "seq": entry.seq, "created_at": entry.created_at})
    elif kind in ("run_finished", "run_failed", "run_cancelled"):
        view.finish, view.finish_kind = p, kind
    elif kind == "vertical_started":  # a vertical run: its parties are its participants
        view.started = {**p, "participants": p.get("parties") or []}
    elif kind in ("vertical_finished", "vertical_failed"):
        view.finish, view.finish_kind = p, kind.replace("vertical", "run")


def _add_privacy(view: RunView, entry: LineageEntry, p: dict[str, Any]) -> None:
    epsilon = as_float(p.get("epsilon"))
    if epsilon is None:
        return
    view.privacy.append(
        PrivacyPoint(
            seq=entry.seq,
            silo=silo_name(str(p.get("silo") or entry.author)),
            round=_int(p.get("round")),
            epsilon=epsilon,
            delta=as_float(p.get("delta")),
            noise_multiplier=as_float(p.get("noise_multiplier")),
            clip_norm=as_float(p.get("clip_norm")),
            run_epsilon=as_float(p.get("run_epsilon")),
        )
    )


def run_ids(entries: Sequence[LineageEntry]) -> list[str]:
    """Run ids in the order their runs appear in the ledger."""
    seen: dict[str, None] = {}
    for entry in entries:
        if entry.run_id is not None:
            seen.setdefault(entry.run_id, None)
    return list(seen)


def _build(
    run_id: str,
    own: list[LineageEntry],
    joins: dict[str, LineageEntry],
    revoked: Sequence[LineageEntry] = (),
) -> RunView:
    view = RunView(run_id=run_id, entries=own)
    for entry in own:
        _add(view, entry)
    for entry in revoked:  # federation-level revocations that name this run
        p = payload_of(entry)
        if run_id in [str(r) for r in as_list(p, "runs")]:
            view.revocations.append({**p, "seq": entry.seq, "created_at": entry.created_at})
    view.joined = {name: joins[name] for name in view.participants if name in joins}
    return view


def federation_revocations(entries: Sequence[LineageEntry]) -> list[LineageEntry]:
    """``silo_revoked`` entries not scoped to a run (run_id null; payload ``runs`` lists the
    runs the silo was taking part in)."""
    return [e for e in entries if e.kind == "silo_revoked" and e.run_id is None]


def _joins(entries: Sequence[LineageEntry]) -> dict[str, LineageEntry]:
    """The latest ``silo_joined`` entry per silo name."""
    joins: dict[str, LineageEntry] = {}
    for entry in entries:
        if entry.kind == "silo_joined":
            joins[silo_name(str(payload_of(entry).get("silo") or ""))] = entry
    return joins


def run_view(entries: Sequence[LineageEntry], run_id: str) -> RunView:
    """Group the ledger entries of `run_id` (plus the participants' ``silo_joined``).

    Raises
    ------
    LineageReviewError
        If no entry belongs to `run_id`; the message lists the runs the ledger does hold.
    """
    own = [e for e in entries if e.run_id == run_id]
    if not own:
        known = run_ids(entries)
        listed = ", ".join(known[-10:]) if known else "none"
        raise LineageReviewError(
            f"run {run_id!r} has no entries in this ledger (runs recorded: {listed}); check "
            "the run id, or export the ledger again if the run is newer than the export"
        )
    return _build(run_id, own, _joins(entries), federation_revocations(entries))


def run_views(entries: Sequence[LineageEntry]) -> dict[str, RunView]:
    """Every run of the ledger, in order of first appearance, grouped in one pass."""
    grouped: dict[str, list[LineageEntry]] = {}
    for entry in entries:
        if entry.run_id is not None:
            grouped.setdefault(entry.run_id, []).append(entry)
    joins, revoked = _joins(entries), federation_revocations(entries)
    return {run_id: _build(run_id, own, joins, revoked) for run_id, own in grouped.items()}
