"""Bring the silo's copy of its lineage, and its privacy budget, in line with the service's ledger.

The silo's copy (`silos.lineage_copy`) misses entries it authored when an answer was lost (a
kill -9 after the service stored an update, a resend answered "duplicate" without a receipt)
or when its workspace was restored from an older backup. The service hands a silo back its
own entries with their receipts (``GET /v1/silo/ledger/records``); each is checked here (the
silo's own signature, the receipt against the pinned service key) before it is kept.

At agent start, `reconcile` also compares the privacy budget with the ``privacy_spent``
statements the silo signed into the ledger: a budget that counts fewer rounds of a run than
the ledger shows was rolled back (an old backup), and the agent refuses to train on it. A
round whose update the service accepted and whose release the budget counted, but whose
``privacy_spent`` statement never went (the agent died first), gets it then, once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from schemas.ledger_silo_copy import SiloRecord
from schemas.lineage import LineageError, verify_receipt, verify_signature
from schemas.specs import PrivacySpec
from silos import privacy, privacy_budget
from silos.checkpoints import pinned_service_key
from silos.client import SiloClient
from silos.client_errors import ClientError, NotFound
from silos.config import SiloConfig
from silos.exceptions import PrivacyBudgetError
from silos.lineage_copy import append_record, keep_receipt, load_records, records_path

log = logging.getLogger("fedsilo.silo.ledger_sync")

# Runs whose missing privacy_spent statement could not be sent at start (a budget from before
# it kept the run's delta and clip norm, and no statement of the run told them): the run's
# next accepted update, which brings its spec, sends it (`catch_up_privacy`).
unstated_runs: set[str] = set()


@dataclass(frozen=True)
class Synced:
    """What the service's ledger holds of this silo's (checked) and what the copy gained."""

    records: list[SiloRecord]
    added: list[SiloRecord]


def fetch_own(
    client: SiloClient, *, run_id: str | None = None, kind: str | None = None
) -> tuple[str, list[SiloRecord]]:
    """Every ledger entry this silo authored (of `run_id`, of `kind`), page after page, and
    the service key (hex) the service presents. `NotFound` from a service older than the route."""
    records: list[SiloRecord] = []
    after = 0
    while True:
        page = client.own_records(after=after, run_id=run_id, kind=kind)
        records += page.records
        if page.next_after is None or page.next_after <= after:
            return page.service_key, records
        after = page.next_after


def _problem(
    record: SiloRecord, author: str, own_key: Ed25519PublicKey, service_key: Ed25519PublicKey
) -> str | None:
    """Why `record` cannot go into this silo's copy, or None."""
    seq = record.receipt.seq
    if record.statement.author != author:
        return f"entry {seq} is by {record.statement.author}, not {author}"
    if not verify_signature(own_key, record.author_signature, record.statement.message()):
        return f"entry {seq} ({record.statement.kind}) is not signed with this silo's key"
    try:
        verify_receipt(record.receipt, record.statement, record.author_signature, service_key)
    except LineageError as exc:
        return str(exc)
    return None


def sync_copy(client: SiloClient, workspace: Path, *, run_id: str | None = None) -> Synced:
    """Fetch this silo's entries (of `run_id`) and append to its copy, checked, those it lacks.

    Raises `NotFound` (a service older than the route), `ClientError`, and
    `schemas.lineage.LineageSignatureError` when the service presents another key than the
    one this silo pinned (nothing is kept then).
    """
    key_hex, fetched = fetch_own(client, run_id=run_id)
    service_key = pinned_service_key(workspace, key_hex)
    author = f"silo:{client.silo}"
    own_key = client.key.public_key()
    have = {r.receipt.seq for r in load_records(workspace)}
    records: list[SiloRecord] = []
    added: list[SiloRecord] = []
    for record in fetched:
        problem = _problem(record, author, own_key, service_key)
        if problem is not None:  # `lineage verify --silo-copy` names it; nothing is kept
            log.error(
                "silo %s: the service's ledger holds an entry this silo cannot vouch for: %s",
                client.silo,
                problem,
            )
            continue
        records.append(record)
        if record.receipt.seq not in have:
            append_record(workspace, record)
            added.append(record)
    return Synced(records, added)


def keep_answer(client: SiloClient, workspace: Path, run_id: str, answer: dict[str, Any]) -> None:
    """`keep_receipt`; for an answer that says "duplicate" without a receipt (its first answer
    was lost), the receipt is fetched from the service's ledger instead."""
    if keep_receipt(workspace, answer) is not None or not answer.get("duplicate"):
        return
    recover_run(client, workspace, run_id)


def recover_run(client: SiloClient, workspace: Path, run_id: str) -> None:
    """Fill this silo's copy with the run's entries it lacks; a failure is logged (the next
    agent start tries again), never stops the round."""
    try:
        synced = sync_copy(client, workspace, run_id=run_id)
    except (ClientError, LineageError, ValidationError) as exc:
        log.warning(
            "silo %s: run %s: receipts of answers that were lost not fetched now (the agent's "
            "next start tries again): %s",
            client.silo,
            run_id,
            exc,
        )
        return
    if synced.added:
        log.info(
            "silo %s: run %s: kept %d receipts whose answers were lost (ledger seqs %s)",
            client.silo,
            run_id,
            len(synced.added),
            _seqs(synced.added),
        )


def reconcile(client: SiloClient, config: SiloConfig) -> None:
    """At agent start: the copy gains the entries it lacks, the budget is checked against the
    ledger's privacy_spent statements, and the ones that never went are sent.

    Raises
    ------
    PrivacyBudgetError
        The budget counts fewer rounds of a run than this silo's privacy_spent statements in
        the ledger show (an old backup of it was restored).
    """
    workspace = config.workspace
    try:
        synced = sync_copy(client, workspace)
    except NotFound:
        log.warning(
            "silo %s: the service has no /v1/silo/ledger/records (an older service): "
            "reconciliation of %s and of the privacy budget with its ledger skipped",
            client.silo,
            records_path(workspace),
        )
        return
    except (LineageError, ClientError, ValidationError) as exc:  # never stops the agent's start
        log.error("silo %s: reconciliation with the service's ledger skipped: %s", client.silo, exc)
        return
    if synced.added:
        log.warning(
            "silo %s: its copy of its lineage (%s) lacked %d entries it authored (ledger seqs "
            "%s); added them from the service's ledger after checking their signatures. The "
            "workspace looks restored from an older state, or an answer was lost",
            client.silo,
            records_path(workspace),
            len(synced.added),
            _seqs(synced.added),
        )
    check_budget(config, synced.records)
    send_missing_privacy(client, config, synced.records)


def _stated(records: Iterable[SiloRecord], kind: str) -> dict[str, dict[int, dict[str, Any]]]:
    """run_id -> round -> payload of each `kind` statement."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for record in records:
        st = record.statement
        if st.kind != kind or st.run_id is None:
            continue
        payload = json.loads(st.payload)
        if isinstance(payload, dict) and isinstance(payload.get("round"), int):
            out.setdefault(st.run_id, {})[payload["round"]] = payload
    return out


def _last_reset(config: SiloConfig) -> datetime | None:
    """When the budget was last reset on purpose (its earlier statements no longer count)."""
    resets = privacy_budget.load(config).get("resets") or []
    times = [_when(str(r.get("at", ""))) for r in resets if isinstance(r, dict)]
    return max((t for t in times if t is not None), default=None)


def _when(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _after(created_at: str, reset: datetime) -> bool:
    when = _when(created_at)
    return when is not None and when.replace(microsecond=0) > reset


def check_budget(config: SiloConfig, records: list[SiloRecord]) -> None:
    """Refuse a budget that counts fewer rounds of a run than the ledger's privacy_spent
    statements of this silo show (since the budget's last deliberate reset)."""
    reset = _last_reset(config)
    if reset is not None:  # kept to the second: the reset's own second counts as before it
        records = [r for r in records if _after(r.receipt.created_at, reset)]
    spent = privacy.spent_rounds(config)
    for run_id, rounds in sorted(_stated(records, "privacy_spent").items()):
        counted = int(spent.get(run_id, {}).get("rounds", 0))
        if len(rounds) > counted:
            path = privacy_budget.budget_path(config.workspace)
            raise PrivacyBudgetError(
                f"privacy budget {path} counts {counted} noised rounds of run {run_id}, but "
                f"the service's ledger holds this silo's privacy_spent statements for "
                f"{len(rounds)} of its rounds: the budget was rolled back (an older backup "
                f"restored?) and this silo trains no more until it is resolved: restore the "
                f"newer budget file, or reset it on purpose with `fedsilo silo "
                f"reset-privacy-budget --config {config.source} --reason '...'`"
            )


def _released_rounds(entry: dict[str, Any]) -> set[int]:
    rounds = set()
    for release in entry.get("released") or []:
        head = str(release).split(":", 1)[0]
        if head.isdigit():
            rounds.add(int(head))
    return rounds


def unstated(
    config: SiloConfig, records: list[SiloRecord], run_id: str | None = None
) -> list[tuple[str, int]]:
    """(run, round) whose update the service accepted and whose release the budget counted,
    but of which the ledger holds no privacy_spent statement from this silo."""
    accepted = _stated(records, "update_accepted")
    stated = _stated(records, "privacy_spent")
    missing = []
    for rid, entry in sorted(privacy.spent_rounds(config).items()):
        if run_id is not None and rid != run_id:
            continue
        for rnd in sorted(_released_rounds(entry)):
            if rnd in accepted.get(rid, {}) and rnd not in stated.get(rid, {}):
                missing.append((rid, rnd))
    return missing


def privacy_payload(
    config: SiloConfig, silo: str, run_id: str, round_: int, dp: PrivacySpec
) -> dict[str, Any]:
    """The privacy_spent statement's payload: the epsilon spent so far (the silo's total and
    this run's alone) and the run's DP parameters."""
    return {
        "silo": silo,
        "round": round_,
        "epsilon": privacy.epsilon_if(config, run_id, dp, 0),  # over all its runs so far
        "run_epsilon": privacy.run_epsilon(config, run_id, dp),  # this run's alone
        "delta": dp.delta,  # run_epsilon's; epsilon's is budget_delta (the policy's if smaller)
        "budget_delta": privacy.budget_delta(config, dp),
        "noise_multiplier": dp.noise_multiplier,
        "clip_norm": dp.clip_norm,
    }


def _spec_in_budget(config: SiloConfig, run_id: str) -> PrivacySpec | None:
    """The run's DP parameters as the budget recorded them with its first noised round
    (budgets written before that was kept lack them: None)."""
    entry = privacy.spent_rounds(config).get(run_id) or {}
    try:
        return PrivacySpec(
            noise_multiplier=entry["sigma"], clip_norm=entry["clip_norm"], delta=entry["delta"]
        )
    except (KeyError, ValueError):
        return None


def _spec_of(records: list[SiloRecord], run_id: str) -> PrivacySpec | None:
    """The run's DP parameters as an earlier privacy_spent statement of this silo told them."""
    for payload in _stated(records, "privacy_spent").get(run_id, {}).values():
        try:
            return PrivacySpec(
                noise_multiplier=payload["noise_multiplier"],
                clip_norm=payload["clip_norm"],
                delta=payload["delta"],
            )
        except (KeyError, ValueError):
            continue
    return None


def send_missing_privacy(
    client: SiloClient,
    config: SiloConfig,
    records: list[SiloRecord],
    run_id: str | None = None,
    spec: PrivacySpec | None = None,
) -> int:
    """Send the privacy_spent statements `unstated` finds (`records`: the ledger's, just
    fetched, so each goes once); their receipts go into the copy. Returns how many went."""
    sent = 0
    for rid, rnd in unstated(config, records, run_id):
        dp = spec or _spec_in_budget(config, rid) or _spec_of(records, rid)
        if dp is None:  # an older budget: the run's next accepted update brings its spec
            unstated_runs.add(rid)
            log.warning(
                "silo %s: run %s, round %d: its privacy_spent statement never reached the "
                "service; it is sent with the run's next accepted update (its DP parameters "
                "are not known before)",
                client.silo,
                rid,
                rnd,
            )
            continue
        payload = privacy_payload(config, client.silo, rid, rnd, dp)
        try:
            answer = client.submit_statement(rid, "privacy_spent", payload)
        except ClientError as exc:
            log.warning(
                "silo %s: run %s, round %d: the missing privacy_spent statement was refused: %s",
                client.silo,
                rid,
                rnd,
                exc,
            )
            continue
        keep_receipt(config.workspace, answer)
        sent += 1
        log.warning(
            "silo %s: run %s, round %d: sent the privacy_spent statement that never reached "
            "the service (its update did; the agent stopped before the answer came)",
            client.silo,
            rid,
            rnd,
        )
    return sent


def catch_up_privacy(client: SiloClient, config: SiloConfig, run_id: str, dp: PrivacySpec) -> None:
    """A run the agent's start could not state a round of (`unstated_runs`): with the spec a
    task of the run brought, send what is still missing (checked against the ledger first)."""
    if run_id not in unstated_runs:
        return
    try:
        synced = sync_copy(client, config.workspace, run_id=run_id)
    except (ClientError, LineageError, ValidationError) as exc:
        log.warning("silo %s: run %s: privacy_spent catch-up later: %s", client.silo, run_id, exc)
        return
    send_missing_privacy(client, config, synced.records, run_id, dp)
    unstated_runs.discard(run_id)  # with the spec known each went, or its refusal was logged


def _seqs(records: list[SiloRecord]) -> str:
    seqs = [r.receipt.seq for r in records]
    return ", ".join(map(str, seqs[:10])) + (
        f" and {len(seqs) - 10} more" if len(seqs) > 10 else ""
    )
