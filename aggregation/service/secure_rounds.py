"""Secure aggregation inside a training round: the service relays, checks, sums and unmasks.

Stages (aggregation/secagg/README.md): advertise -> share -> masked -> (consistency: survivors
sign the survivor list, as `start` fixes for the round) -> unmask. Every accepted message is
stored in the `secagg_messages` mailbox in the transaction that advances the round, and the
server state is rebuilt from the mailbox on every request (each process continuing from its last
replay of the round, `rebuild`): a killed service loses nothing and two service processes can
share a database. A stage advances once every silo it waits for has
answered; the coordinator forces it at the deadline (`force_advance`): that handles dropouts.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Connection,
    case,
    delete,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.orm import Session, defer

from aggregation.secagg import server
from aggregation.service.contracts import round_contract
from aggregation.service.exceptions import AlreadyAnswered, Conflict, InvalidPayload
from aggregation.service.rounds import active_silos
from aggregation.service.settings import ServiceSettings
from aggregation.service.tables import (
    Contribution,
    Round,
    Run,
    RunSilo,
    SecAggMessage,
    SecAggShare,
    Silo,
    utcnow,
)
from schemas.contracts.stats import moments_length
from schemas.ensemble import MAX_MEMBERS
from schemas.secagg.config import RoundConfig
from schemas.secagg.exceptions import (
    DuplicateMessageError,
    InsufficientSharesError,
    LateMessageError,
    SecAggError,
)
from schemas.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    ShareKeys,
    Signed,
    UnmaskResponse,
)
from schemas.secagg.prg import dtype_for
from schemas.secagg.quantize import Quantizer
from schemas.specs import RunSpec, update_shapes

STAGES = ("advertise", "share", "masked", "consistency", "unmask")
_MESSAGE: dict[str, type[Signed]] = {
    "advertise": AdvertiseKeys,
    "share": ShareKeys,
    "masked": MaskedInput,
    "consistency": ConsistencySignature,
    "unmask": UnmaskResponse,
}


_RECEIVE = {
    "advertise": "receive_advertise",
    "share": "receive_shares",
    "masked": "receive_masked",
    "consistency": "receive_consistency",
    "unmask": "receive_unmask",
}


def consistency_default(spec: RunSpec, settings: ServiceSettings) -> bool:
    """Whether a round of this run runs the consistency check: always in production mode
    (Conflict if the run asks for it off), else the run's choice, off when it has none."""
    asked = spec.secure_aggregation.consistency_check
    if settings.mode == "production":
        if asked is False:
            raise Conflict(
                "this service runs in production mode, where secure aggregation always runs "
                "the consistency check; create the run without secure_aggregation."
                "consistency_check=false (allowed in development mode only)"
            )
        return True
    return bool(asked)


def start(s: Session, rnd: Round, run_id: str, *, consistency_check: bool) -> None:
    """Fix the round's roster (the active silos now) and whether it runs the consistency
    check, and open the advertise stage. Both are stored with the round, so every service
    process, and a restarted one in another mode, runs the round as it was opened."""
    rnd.roster_json = json.dumps(
        {
            "silos": sorted(active_silos(s, run_id)),
            "consistency_check": consistency_check,
            "dp_noise_range": True,  # `quantizer`: rounds opened before it clamp at clip_norm
        }
    )
    rnd.secagg_stage = "advertise"


def restart_open_rounds(conn: Connection) -> list[tuple[str, int, str]]:
    """Start every open secure round's protocol again at the advertise stage, as a fresh
    instance: (run, round, stage it was at) for each. Run by `aggregation.backup.restore`.

    A backup holds a round's mailbox as it stood at the backup's instant, while its silos went
    on with the round afterwards: they may have sent later stages' messages the restored
    mailbox lacks, unmasked, and erased the round's keys and seeds (`silos.secure_round`).
    Carrying on at the saved stage would ask them for messages built from state they no longer
    have, or mix their old messages with new ones. So the round's protocol messages, shares and
    masked updates (their contributions) go; the roster, the silos' refusals and declines and a
    buffer's ready rows stay. Every silo of the roster then advertises afresh: one that holds
    state of the round past its advert makes new keys and masks (`silos.secure_round.advertise`),
    so nothing of the old instance is reused. The ledger keeps what it recorded (an accepted
    masked update's statement): the new instance's update gets its own statement.

    Core statements on the columns it needs only: the restored database may be at the
    backup's older schema revision until the service migrates it at start.
    """
    restarted = []
    rows = conn.execute(
        select(
            Round.run_id, Round.number, Round.secagg_stage, Round.roster_json,
            Round.opened_at, Round.deadline_at,
        ).where(Round.status == "open", Round.secagg_stage.is_not(None))
    ).all()  # fmt: skip
    has_shares = inspect(conn).has_table(SecAggShare.__tablename__)
    now = utcnow()
    for run_id, number, stage, roster_json, opened_at, deadline_at in rows:
        of_round = (SecAggMessage.run_id == run_id, SecAggMessage.round == number)
        conn.execute(delete(SecAggMessage).where(*of_round, SecAggMessage.stage.in_(STAGES)))
        if has_shares:
            conn.execute(
                delete(SecAggShare).where(SecAggShare.run_id == run_id, SecAggShare.round == number)
            )
        conn.execute(
            delete(Contribution).where(
                Contribution.run_id == run_id,
                Contribution.round == number,
                Contribution.kind == "update",  # masked updates; declines and sit-outs stay
            )
        )
        doc = json.loads(roster_json or "[]")
        doc = {"silos": doc, "consistency_check": False} if isinstance(doc, list) else doc
        doc["instance"] = int(doc.get("instance", 0)) + 1  # which start of the protocol this is
        # the restarted protocol gets the round's whole deadline again, from now
        deadline = max(deadline_at, now + (deadline_at - opened_at))
        conn.execute(
            update(Round)
            .where(Round.run_id == run_id, Round.number == number)
            .values(secagg_stage="advertise", roster_json=json.dumps(doc), deadline_at=deadline)
        )
        restarted.append((run_id, number, str(stage)))
    return restarted


def round_doc(rnd: Round) -> dict[str, Any]:
    doc = json.loads(rnd.roster_json or "[]")
    # rounds opened before the consistency check was wired stored the bare roster
    return {"silos": doc, "consistency_check": False} if isinstance(doc, list) else doc


def roster(rnd: Round) -> tuple[str, ...]:
    return tuple(round_doc(rnd)["silos"])


def checks_consistency(rnd: Round) -> bool:
    """Whether this round runs the consistency stage between masked and unmask."""
    return bool(round_doc(rnd).get("consistency_check", False))


# A statistics round sums per-feature counts, sums and sums of squares of range-scaled values:
# every entry lies in [0, rows of the silo], so the clip is a bound on any silo's row count, and
# 64-bit integers keep the sums exact to ~1e-9 (see schemas.contracts.stats).
STATS_CLIP = 1e8
STATS_BITS = 64


def dim(rnd: Round, spec: RunSpec) -> int:
    if rnd.kind == "statistics":
        return moments_length(round_contract(rnd, spec))  # the run's published version
    if spec.ensemble is not None:  # d log-loss / d mixture logit, one per member, 0-padded
        return MAX_MEMBERS
    if spec.distill is not None:  # P(y=1) on every reference row
        return spec.distill.reference_rows
    return sum(int(np.prod(shape)) for _, shape in update_shapes(spec))  # + SCAFFOLD controls


def config(rnd: Round, spec: RunSpec) -> RoundConfig:
    """The round's protocol settings. A SecAgg+ degree of at least n - 1 neighbours for a
    roster of n silos is the complete graph (a run's roster can be smaller than its degree from
    the start, or shrink below it as silos leave), so it runs as one, not as an error. A
    threshold the run asked for is never lowered to fit a smaller roster (SecAggConfigError
    then; `threshold_unmet` fails such a round when it opens)."""
    silos = roster(rnd)
    degree, size = _graph(spec, len(silos))
    threshold = spec.secure_aggregation.threshold or max(2, size // 2 + 1)
    return _round_config(
        rnd.run_id,
        rnd.number,
        silos,
        threshold,
        dim(rnd, spec),
        STATS_BITS if rnd.kind == "statistics" else spec.secure_aggregation.bits,
        degree,
        checks_consistency(rnd),
    )


def _graph(spec: RunSpec, n: int) -> tuple[int | None, int]:
    """(SecAgg+ degree, or None for the complete graph; the neighbourhood size the threshold
    applies within) for a roster of `n` silos."""
    sa = spec.secure_aggregation
    degree = sa.degree if sa.degree is not None and sa.degree < n - 1 else None
    return degree, (n if degree is None else degree + 1)


def threshold_unmet(rnd: Round, spec: RunSpec) -> str | None:
    """Why the run's threshold cannot hold among the round's roster (silos left the run since
    it was created with enough), or None. Lowering it to fit would weaken what the run asked
    for, so the round fails instead, as an asynchronous buffer short of it does."""
    asked = spec.secure_aggregation.threshold
    silos = roster(rnd)
    degree, size = _graph(spec, len(silos))
    if asked is None or asked <= size:
        return None
    among = f"a SecAgg+ neighbourhood of {size}" if degree is not None else f"{size} active silos"
    return (
        f"round {rnd.number} of run {rnd.run_id}: secure_aggregation.threshold {asked} cannot "
        f"hold among {among} ({', '.join(silos) or 'none'}): that many must survive to unmask, "
        "and the threshold is never lowered"
    )


@lru_cache(maxsize=64)
def _round_config(
    run_id: str, number: int, silos: tuple[str, ...], threshold: int, dim: int, bits: int,
    degree: int | None, consistency_check: bool,
) -> RoundConfig:  # fmt: skip
    """One RoundConfig per round and process: it is immutable, and its neighbour graph (O(N)
    sets, a SecAgg+ graph from an HKDF seed) is built once instead of on every request."""
    return RoundConfig(
        run_id=run_id,
        round_num=number,
        silos=silos,
        threshold=threshold,
        dim=dim,
        bits=bits,
        degree=degree,
        consistency_check=consistency_check,
    )


def quantizer(rnd: Round, spec: RunSpec) -> Quantizer:
    if rnd.kind == "statistics":
        return Quantizer(clip=STATS_CLIP, n_summands=len(roster(rnd)), bits=STATS_BITS)
    clip = spec.secure_aggregation.clip
    if spec.privacy is not None:  # the range must hold the silos' noise, not only their deltas
        wide = bool(round_doc(rnd).get("dp_noise_range"))  # a round opened before: as it began
        clip = (
            spec.privacy.quantizer_clip(config(rnd, spec).threshold)
            if wide
            else spec.privacy.clip_norm
        )
    return Quantizer(clip=clip, n_summands=len(roster(rnd)), bits=spec.secure_aggregation.bits)


def roster_keys(
    s: Session, run: Run, rnd: Round, names: Iterable[str] | None = None
) -> dict[str, bytes]:
    """The roster's Ed25519 public keys (only `names`' when given)."""
    wanted = roster(rnd) if names is None else sorted(set(roster(rnd)) & set(names))
    rows = s.scalars(select(Silo).where(Silo.federation == run.federation, Silo.name.in_(wanted)))
    return {row.name: bytes.fromhex(row.public_key) for row in rows}


class _KeysOnDemand(Mapping[str, bytes]):
    """The roster's identity keys, each read when first asked for. A replayed state checks
    no signature; only a newly received message's sender is looked up, so a request does not
    load N silo rows to check one."""

    def __init__(self, s: Session, run: Run, rnd: Round) -> None:
        self._s, self._federation, self._names = s, run.federation, roster(rnd)
        self._known: dict[str, bytes] = {}

    def __getitem__(self, name: str) -> bytes:
        if name not in self._known:
            if name not in self._names:
                raise KeyError(name)
            of_silo = (Silo.federation == self._federation, Silo.name == name)
            key = self._s.scalar(select(Silo.public_key).where(*of_silo))
            if key is None:
                raise KeyError(name)
            self._known[name] = bytes.fromhex(key)
        return self._known[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def messages(s: Session, rnd: Round, stage: str | None = None) -> list[SecAggMessage]:
    """The round's mailbox rows, payloads deferred (loaded on access): callers mostly need
    who sent what, and a masked payload is the whole model's size."""
    stmt = (
        select(SecAggMessage)
        .options(defer(SecAggMessage.payload))
        .where(SecAggMessage.run_id == rnd.run_id, SecAggMessage.round == rnd.number)
    )
    if stage:
        stmt = stmt.where(SecAggMessage.stage == stage)
    return list(s.scalars(stmt.order_by(SecAggMessage.id)))


def advertised_count(s: Session, rnd: Round, silo: str) -> int | None:
    """The example count `silo` advertised in round `rnd` (its weight's n_k), or None."""
    stmt = select(SecAggMessage.n_examples).where(
        SecAggMessage.run_id == rnd.run_id,
        SecAggMessage.round == rnd.number,
        SecAggMessage.stage == "advertise",
        SecAggMessage.silo == silo,
    )
    return s.scalar(stmt)


def _senders(s: Session, rnd: Round) -> dict[str, set[str]]:
    """Who sent a message at each stage, in one query without payloads (polled often)."""
    out: dict[str, set[str]] = {st: set() for st in STAGES}
    rows = s.execute(
        select(SecAggMessage.stage, SecAggMessage.silo).where(
            SecAggMessage.run_id == rnd.run_id, SecAggMessage.round == rnd.number
        )
    )
    for stage, silo in rows:
        out.setdefault(stage, set()).add(silo)  # an asynchronous buffer's "ready" rows too
    return out


# Mailbox messages parsed once per process, by (run, row id). Every request replays the
# round's mailbox; reading it whole each time (N share messages of N ciphertexts each) made a
# stage O(N^3) bytes from the database at N silos (bench/scale.py). A committed row never
# changes and its id is never reused, so a parsed row stays valid. Only a transaction that
# wrote no mailbox row adds to the cache: it reads committed rows only, while a rolled-back
# insert's id can be reused (SQLite). The parsed messages are frozen and only read.
_PARSED: OrderedDict[tuple[str, int], Signed] = OrderedDict()
_PARSED_MAX = 1024  # two rounds' mailboxes at 128 silos (adverts, shares, unmask responses)
_parsed_lock = threading.Lock()
_WROTE_MAILBOX = "fedsilo_wrote_mailbox"  # session.info flag, set by `receive`


def _keep(cache: OrderedDict[Any, Any], items: Iterable[tuple[Any, Any]], limit: int) -> None:
    """Put `items` in an LRU `cache` (the caller holds its lock), dropping the oldest past
    `limit`."""
    for key, value in items:
        cache[key] = value
        cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


def _cache_scope(rnd: Round) -> str:
    """The per-process caches' key for the round's mailbox rows: the run, and which start of
    the round's protocol (`restart_open_rounds`) they belong to, since a restart deletes the
    round's rows and SQLite may give a new row a deleted one's id."""
    instance = round_doc(rnd).get("instance", 0)
    return f"{rnd.run_id}/{instance}" if instance else rnd.run_id


def _parsed(s: Session, run_id: str, rows: Iterable[tuple[int, str]]) -> dict[int, Signed]:
    """The mailbox messages of `rows` (id, stage), parsed; payloads fetched only for the rows
    this process has not parsed before. Masked vectors never come here."""
    wanted = dict(rows)
    out: dict[int, Signed] = {}
    with _parsed_lock:
        for row_id in wanted:
            msg = _PARSED.get((run_id, row_id))
            if msg is not None:
                _PARSED.move_to_end((run_id, row_id))
                out[row_id] = msg
    missing = [row_id for row_id in wanted if row_id not in out]
    if not missing:
        return out
    fetched = s.execute(
        select(SecAggMessage.id, SecAggMessage.payload).where(SecAggMessage.id.in_(missing))
    )
    parsed = {row_id: _MESSAGE[wanted[row_id]].from_bytes(raw) for row_id, raw in fetched}
    out.update(parsed)
    if not s.info.get(_WROTE_MAILBOX):
        with _parsed_lock:
            _keep(_PARSED, (((run_id, row_id), msg) for row_id, msg in parsed.items()), _PARSED_MAX)
    return out


# Replayed protocol states, per process, by (run, round, `at`): the next request of the same
# round replays only the mailbox rows it has not seen, from a copy. Sound for the same reasons
# as `_PARSED` (committed rows never change; a stage closes only after every row of it was
# committed, under the round's lock), and for one more: within a stage the state does not
# depend on the order its messages are applied in (per-silo dicts; the survivors are sorted).
# A row of a stage the copy already closed, or a copy taken from a transaction that wrote to
# the mailbox, is never used: that request replays the round from the start.
@dataclass(frozen=True)
class _Replayed:
    closed: int  # stages closed (their closers applied)
    ids: frozenset[int]  # mailbox rows applied
    state: server.ServerState  # no session-bound keys, no running total (see `_restore`)
    has_total: bool


_REPLAYED: OrderedDict[tuple[str, int, str | None], _Replayed] = OrderedDict()
_REPLAYED_MAX = 16
_replayed_lock = threading.Lock()


def _snapshot(state: server.ServerState) -> server.ServerState:
    """A copy that shares no mutable container with `state` (messages are frozen); the
    running total, meaningless without vectors, is dropped rather than copied."""
    return dataclasses.replace(
        state,
        roster_keys={},
        adverts=dict(state.adverts),
        shares=dict(state.shares),
        total=None,
        submitted=list(state.submitted),
        consistency=dict(state.consistency),
        responses=dict(state.responses),
    )


def _restore(entry: _Replayed, keys: Mapping[str, bytes]) -> server.ServerState:
    state = _snapshot(entry.state)
    state.roster_keys = keys
    if entry.has_total:
        state.total = np.zeros(state.config.dim, dtype=dtype_for(state.config.bits))
    return state


def rebuild(
    s: Session,
    run: Run,
    rnd: Round,
    spec: RunSpec,
    at: str | None = None,
    *,
    vectors: bool = False,
) -> server.ServerState:
    """Replay the mailbox into the protocol's server state at the round's current stage (or
    at the earlier stage `at`, with that stage's messages received but the stage not closed).

    Masked vectors are summed only with `vectors` (to finalize): every other request needs
    just who sent one, and loading N stored vectors per request made a round O(N^2 d).
    Without `vectors` the replay starts from this process's last replay of the round
    (`_REPLAYED`) and applies only the rows added since: each request replayed all N of a
    stage's messages before, O(N^2) a stage."""
    # mailbox rows were signature-checked when they arrived: replaying them skips the checks
    keys = _KeysOnDemand(s, run, rnd)
    cfg = config(rnd, spec)
    current = STAGES.index(rnd.secagg_stage or "advertise")
    if at is not None:
        current = min(current, STAGES.index(at))
    rows = s.execute(
        select(SecAggMessage.id, SecAggMessage.stage, SecAggMessage.silo)
        .where(
            SecAggMessage.run_id == rnd.run_id,
            SecAggMessage.round == rnd.number,
            # the stages replayed (an adverts fetch loads no share), not a buffer's "ready" rows
            SecAggMessage.stage.in_(STAGES[: current + 1]),
        )
        .order_by(SecAggMessage.id)
    ).all()
    scope = _cache_scope(rnd)
    slot = (scope, rnd.number, at)
    entry = None
    if not vectors:
        with _replayed_lock:
            entry = _REPLAYED.get(slot)
            if entry is not None:
                _REPLAYED.move_to_end(slot)
    ids = {row.id for row in rows}
    if (
        entry is None
        or entry.closed > current
        or entry.state.config != cfg
        or not entry.ids <= ids
        or any(STAGES.index(r.stage) < entry.closed for r in rows if r.id not in entry.ids)
    ):
        entry = _Replayed(0, frozenset(), server.ServerState(cfg, {}), False)
    state = _restore(entry, keys)
    state.check_signatures = False
    by_stage: dict[str, list[Any]] = {st: [] for st in STAGES}
    for row in rows:
        if row.id not in entry.ids:
            by_stage[row.stage].append(row)
    replayed = (r for st, rs in by_stage.items() if st != "masked" for r in rs)
    parsed = _parsed(s, scope, ((r.id, r.stage) for r in replayed))
    for step in range(entry.closed, current + 1):
        stage = STAGES[step]
        for row in by_stage[stage]:
            if stage == "masked":
                vector = None
                if vectors:  # one stored vector in memory at a time
                    raw = s.scalars(select(SecAggMessage.payload).where(SecAggMessage.id == row.id))
                    vector = MaskedInput.from_bytes(raw.one()).vector
                server.replay_masked(state, row.silo, vector)
            else:
                getattr(server, _RECEIVE[stage])(state, parsed[row.id])
        if step < current:
            _CLOSE[stage](state)
    state.check_signatures = True
    if not vectors and not s.info.get(_WROTE_MAILBOX):
        done = _Replayed(current, frozenset(ids), _snapshot(state), state.total is not None)
        with _replayed_lock:
            _keep(_REPLAYED, [(slot, done)], _REPLAYED_MAX)
    return state


_CLOSE = {
    "advertise": server.close_advertise,
    "share": server.close_shares,
    "masked": server.close_masked,
    "consistency": server.unmask_requests,  # opens the unmask stage (with or without signatures)
}


def receive(
    s: Session,
    run: Run,
    rnd: Round,
    spec: RunSpec,
    stage: str,
    silo: str,
    raw: bytes,
    n_examples: int | None = None,
) -> server.ServerState:
    """Check one protocol message against the rebuilt state and store it in the mailbox."""
    if rnd.status != "open" or rnd.secagg_stage is None:
        raise Conflict(
            f"round {rnd.number} of run {rnd.run_id} is {rnd.status}; no secure "
            "aggregation messages are accepted"
        )
    if stage != rnd.secagg_stage:
        if round_doc(rnd).get("instance") and STAGES.index(stage) > STAGES.index(rnd.secagg_stage):
            # only a message built for the round's protocol before it was restarted (a hub
            # restored from a backup, `restart_open_rounds`) is ahead of the stage: it is
            # dropped, and the silo told it needs no resend (not a Conflict, which it would
            # decline the round for): it takes the round's next task, advertise, and so part
            raise AlreadyAnswered(
                f"round {rnd.number} of run {rnd.run_id}: its secure aggregation started again "
                f"at advertise (the hub was restored from a backup); silo {silo!r}'s {stage!r} "
                "message belongs to the earlier start and is dropped: take the round's next task"
            )
        raise Conflict(
            f"round {rnd.number} is at secure-aggregation stage {rnd.secagg_stage!r}; "
            f"a {stage!r} message from silo {silo!r} is out of turn"
        )
    state = rebuild(s, run, rnd, spec)
    try:
        msg = _MESSAGE[stage].from_bytes(raw)
        if msg.silo != silo or msg.run_id != run.id or msg.round_num != rnd.number:
            raise InvalidPayload(
                f"{stage} message from silo {silo!r} is bound to silo "
                f"{msg.silo!r}, run {msg.run_id}, round {msg.round_num}"
            )
        getattr(server, _RECEIVE[stage])(state, msg)
        if isinstance(msg, AdvertiseKeys) and msg.n_examples not in (None, n_examples):
            raise InvalidPayload(  # silos weight by the signed count: the two must agree
                f"advertise message from silo {silo!r} in round {rnd.number} signs "
                f"n_examples {msg.n_examples}, but the request says {n_examples}"
            )
    except DuplicateMessageError as exc:
        raise AlreadyAnswered(f"silo {silo!r}, round {rnd.number}, stage {stage}: {exc}") from exc
    except LateMessageError as exc:
        raise Conflict(f"silo {silo!r}, round {rnd.number}, stage {stage}: {exc}") from exc
    except SecAggError as exc:
        raise InvalidPayload(f"silo {silo!r}, round {rnd.number}, stage {stage}: {exc}") from exc
    s.info[_WROTE_MAILBOX] = True  # this transaction's replays may read its own insert
    s.add(
        SecAggMessage(
            run_id=run.id,
            round=rnd.number,
            stage=stage,
            silo=silo,
            payload=raw,
            n_examples=n_examples,
        )
    )
    s.flush()
    if isinstance(msg, ShareKeys) and msg.ciphertexts:
        # each recipient fetches its own rows (`shares_for`); one executemany, not an INSERT
        # per recipient (N - 1 of them per message)
        here = {"run_id": run.id, "round": rnd.number, "sender": silo}
        rows = [dict(here, recipient=to, ciphertext=blob) for to, blob in msg.ciphertexts.items()]
        s.execute(insert(SecAggShare), rows)
    return state


def shares_for(s: Session, rnd: Round, recipient: str) -> list[bytes]:
    """The encrypted shares addressed to `recipient` (in sender order) as protocol messages,
    read through the recipient index: none of the other silos' shares are loaded. Nothing for
    a silo that shared no keys itself (it is not in U2, as `server.close_shares` has it)."""
    shared = s.scalar(
        select(SecAggMessage.id).where(
            SecAggMessage.run_id == rnd.run_id,
            SecAggMessage.round == rnd.number,
            SecAggMessage.stage == "share",
            SecAggMessage.silo == recipient,
        )
    )
    if shared is None:
        return []
    rows = s.execute(
        select(SecAggShare.sender, SecAggShare.ciphertext).where(
            SecAggShare.run_id == rnd.run_id,
            SecAggShare.round == rnd.number,
            SecAggShare.recipient == recipient,
        )
    )
    return [
        EncryptedShare(rnd.run_id, rnd.number, sender, recipient, blob).to_bytes()
        for sender, blob in sorted(rows.tuples())  # Python's order, whatever the collation
    ]


def waiting_for(s: Session, rnd: Round, stage: str) -> set[str]:
    """The silos the current stage still waits for (not refused ones, not ones sitting out)."""
    # columns, not ORM rows; the stage-close check after every message is `stage_complete`
    answered = set(
        s.scalars(
            select(Contribution.silo).where(
                Contribution.run_id == rnd.run_id, Contribution.round == rnd.number
            )
        )
    )
    active = set(
        s.scalars(
            select(RunSilo.silo).where(RunSilo.run_id == rnd.run_id, RunSilo.status == "active")
        )
    )
    senders = _senders(s, rnd)
    sent = senders[stage]
    if stage == "advertise":
        expected = set(roster(rnd))
    # a survivor that left the run (revoked, declined it) is no longer waited for: its masked
    # input stays in the sum and the others' shares unmask it, as at a deadline
    elif stage == "unmask" and checks_consistency(rnd):
        return (senders["consistency"] - sent) & active  # one that did not sign cannot unmask
    elif stage in ("consistency", "unmask"):
        return (senders["masked"] - sent) & active
    else:
        expected = senders[STAGES[STAGES.index(stage) - 1]]
    if stage == "masked":
        return (expected & active) - answered
    return (expected & active) - sent - answered


def stage_complete(s: Session, rnd: Round, stage: str) -> bool:
    """`not waiting_for(s, rnd, stage)` in one query that returns at most one row: the
    stage-close check runs after every message, and `waiting_for` reads the round's senders,
    contributions and active silos (three queries of O(N) rows each, O(N^2) rows a stage)."""
    here = (SecAggMessage.run_id == rnd.run_id, SecAggMessage.round == rnd.number)
    if stage == "advertise":
        candidate = select(RunSilo.silo.label("silo")).where(
            RunSilo.run_id == rnd.run_id, RunSilo.silo.in_(roster(rnd))
        )
    else:
        previous = STAGES[STAGES.index(stage) - 1]
        if stage == "unmask" and not checks_consistency(rnd):
            previous = "masked"  # the round skips the consistency stage
        candidate = select(SecAggMessage.silo.label("silo")).where(
            *here, SecAggMessage.stage == previous
        )
    sq = candidate.subquery()
    # an active participant (waiting_for's `& active`), at every stage
    conditions: list[ColumnElement[bool]] = [
        select(RunSilo.silo)
        .where(RunSilo.run_id == rnd.run_id, RunSilo.silo == sq.c.silo)
        .where(RunSilo.status == "active")
        .exists()
    ]
    if stage in ("advertise", "share", "masked"):  # ... with no contribution yet
        conditions.append(
            ~select(Contribution.silo)
            .where(
                Contribution.run_id == rnd.run_id,
                Contribution.round == rnd.number,
                Contribution.silo == sq.c.silo,
            )
            .exists()
        )
    if stage != "masked":  # a masked answer is its contribution row, checked above
        conditions.append(
            ~select(SecAggMessage.id)
            .where(*here, SecAggMessage.stage == stage, SecAggMessage.silo == sq.c.silo)
            .exists()
        )
    awaited = s.execute(select(sq.c.silo).where(*conditions).limit(1)).first()
    return awaited is None


def awaits(s: Session, rnd: Round, stage: str, silo: str) -> bool:
    """Whether the current stage waits for `silo`: `silo in waiting_for(...)`, answered from
    this silo's own rows (primary-key lookups) instead of the whole round's. Every silo's task
    poll asks it: with the full sets, each poll read O(N) rows and a stage's polls O(N^2)."""
    sent = set(
        s.scalars(
            select(SecAggMessage.stage).where(
                SecAggMessage.run_id == rnd.run_id,
                SecAggMessage.round == rnd.number,
                SecAggMessage.silo == silo,
            )
        )
    )
    if stage in ("consistency", "unmask"):
        before = "consistency" if stage == "unmask" and checks_consistency(rnd) else "masked"
        if before not in sent or stage in sent:
            return False
        participant = s.get(RunSilo, (rnd.run_id, silo))
        return participant is not None and participant.status == "active"
    if stage == "advertise":
        expected = silo in roster(rnd)
    else:
        expected = STAGES[STAGES.index(stage) - 1] in sent
    if not expected or (stage != "masked" and stage in sent):
        return False  # a masked answer is its contribution row, checked below
    participant = s.get(RunSilo, (rnd.run_id, silo))
    if participant is None or participant.status != "active":
        return False
    return s.get(Contribution, (rnd.run_id, rnd.number, silo)) is None


def advance(s: Session, run: Run, rnd: Round, spec: RunSpec, *, force: bool) -> np.ndarray | None:
    """Move to the next stage when nobody is awaited (or `force`); returns the unmasked
    weighted sum (flat, float64) once the unmask stage completes, else None.

    Raises
    ------
    SecAggError
        When too few silos answered to unmask (InsufficientSharesError), or a stored message
        cannot be unmasked with (ReconstructionError, MessageFormatError); the caller fails
        the round with the message.
    """
    stage = rnd.secagg_stage
    while stage is not None and (force or stage_complete(s, rnd, stage)):
        if stage == "unmask":
            return _finalize(s, run, rnd, spec)
        if stage in ("masked", "consistency"):
            survivors = {m.silo for m in messages(s, rnd, stage)}
            need = config(rnd, spec).threshold
            if len(survivors) < need:
                what = "sent masked updates" if stage == "masked" else "signed the survivor list"
                raise InsufficientSharesError(
                    f"round {rnd.number}: {len(survivors)} silos {what}; secure "
                    f"aggregation needs at least {need} (the threshold) to unmask",
                    needed=need,
                    got=len(survivors),
                    run_id=run.id,
                    round_num=rnd.number,
                    stage=stage,
                )
        elif stage in ("advertise", "share"):
            sent = len(messages(s, rnd, stage))
            if sent < max(2, spec.min_silos) and force:
                raise InsufficientSharesError(
                    f"round {rnd.number}: only {sent} silos completed the {stage} stage by the "
                    f"deadline; min_silos is {spec.min_silos}",
                    needed=max(2, spec.min_silos),
                    got=sent,
                    run_id=run.id,
                    round_num=rnd.number,
                    stage=stage,
                )
        rnd.secagg_stage = _next_stage(rnd, stage)
        rebuild(s, run, rnd, spec)  # checks the transition (e.g. enough shares) before commit
        stage = rnd.secagg_stage
        force = False  # a forced close moves one stage; later stages wait for their silos
    return None


def _next_stage(rnd: Round, stage: str) -> str:
    following = STAGES[STAGES.index(stage) + 1]
    if following == "consistency" and not checks_consistency(rnd):
        return "unmask"
    return following


def _finalize(s: Session, run: Run, rnd: Round, spec: RunSpec) -> np.ndarray:
    """The survivors' weighted sum (float64); InsufficientSharesError/ReconstructionError when
    too few shares came back or a share was bad."""
    total = server.finalize(rebuild(s, run, rnd, spec, vectors=True))
    return quantizer(rnd, spec).dequantize_sum(total)


def survivor_weight(s: Session, rnd: Round, spec: RunSpec) -> float:
    """Sum of w_k over the silos whose masked input arrived (divides the sum into the mean)."""
    weights = weights_of(s, rnd, spec)
    return sum(weights[m.silo] for m in messages(s, rnd, "masked"))


def weight_of(s: Session, rnd: Round, spec: RunSpec, silo: str) -> float | None:
    """`weights_of(...).get(silo)` from one aggregate query, not N rows: a task poll asks
    for one silo's weight."""
    advertised = (
        SecAggMessage.run_id == rnd.run_id,
        SecAggMessage.round == rnd.number,
        SecAggMessage.stage == "advertise",
    )
    own = func.sum(case((SecAggMessage.silo == silo, func.coalesce(SecAggMessage.n_examples, 0))))
    mine = func.count(case((SecAggMessage.silo == silo, 1)))
    total = func.coalesce(func.sum(SecAggMessage.n_examples), 0)
    advertisers, sent, rows, federation_rows = s.execute(
        select(func.count(), mine, own, total).where(*advertised)
    ).one()
    if not sent:
        return None
    if rnd.kind == "statistics":
        return 1.0
    if spec.privacy:
        return 1.0 / advertisers
    return (rows or 0) / (federation_rows or 1)  # federation_rows > 0: this silo advertised


def weights_of(s: Session, rnd: Round, spec: RunSpec) -> dict[str, float]:
    """w_k each silo applied before masking: n_k / N over the advertisers (1/m under DP)."""
    adverts = messages(s, rnd, "advertise")
    if rnd.kind == "statistics":
        return {m.silo: 1.0 for m in adverts}
    if spec.privacy:
        return {m.silo: 1.0 / len(adverts) for m in adverts}
    total = sum(m.n_examples or 0 for m in adverts)
    return {m.silo: (m.n_examples or 0) / total for m in adverts}


def stage_messages(s: Session, rnd: Round, stage: str) -> Iterable[bytes]:
    stmt = select(SecAggMessage.payload).where(
        SecAggMessage.run_id == rnd.run_id,
        SecAggMessage.round == rnd.number,
        SecAggMessage.stage == stage,
    )
    return list(s.scalars(stmt.order_by(SecAggMessage.id)))
