"""Wake long-polls when the database changes, instead of re-reading it every few milliseconds.

A session that wrote marks what it touched; after its commit every long-poll of this process
that could care is woken at once (an asyncio event per waiting request). On PostgreSQL the
commit also carries a NOTIFY, and one LISTEN connection per process fans other replicas'
writes out the same way, so a write on replica A wakes a long-poll on replica B. Long-polls
still re-check every `poll_interval_s` (5 s by default) as a safety net: for a missed
notification, a dropped listener connection, a write this module cannot classify.

Writes are classified by table so that a silo's answer does not wake every other silo:
- quiet (nonces, presence, rejection counters, the ledger): wake nobody;
- answers (secure-aggregation mailbox and share rows, and a round's contribution rows,
  which `answers_only` marks): wake the coordinator's round waits only, since another silo's
  task changes only when its stage closes, which updates the round row; so does a round's
  close that leaves the run going with no round open (`silos_unaffected`): a silo's next task
  comes with the next opening;
- anything else (runs, rounds, contributions, ...): wake every waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction, sessionmaker

log = logging.getLogger("fedsilo.service.wakeup")

CHANNEL = "fedsilo_wake"
ALL, ANSWERS = "all", "answers"
QUIET_TABLES = frozenset(
    {
        "nonces",
        "silos",  # presence (last_seen_at); approval is not long-polled
        "rejection_counts",
        "ledger_entries",
        "ledger_head",
        "ledger_checkpoints",
        "ledger_countersignatures",
    }
)
# a share message also writes its per-recipient `secagg_shares` rows in the same transaction
ANSWER_TABLES = frozenset({"secagg_messages", "secagg_shares"})
_TOPIC_KEY = "fedsilo_wake_topic"
_ANSWERS_KEY = "fedsilo_wake_answers"  # tables this transaction wrote only answers to
_EVERY_TABLE = "*"  # in _ANSWERS_KEY: every write of this transaction is an answer
_wakeups: weakref.WeakKeyDictionary[sessionmaker[Session], Wakeup] = weakref.WeakKeyDictionary()


def topic_of(tables: set[str], answers: frozenset[str] = ANSWER_TABLES) -> str | None:
    """What a transaction that wrote `tables` wakes: ALL, ANSWERS, or None (nobody)."""
    loud = tables - QUIET_TABLES
    if not loud:
        return None
    return ANSWERS if loud <= answers else ALL


def answers_only(session: Session, table: str) -> None:
    """This transaction's writes to `table` are answers no other silo's task depends on (a
    secure round's contribution rows): they wake the round's waits, not every silo."""
    session.info.setdefault(_ANSWERS_KEY, set()).add(table)


def silos_unaffected(session: Session) -> None:
    """This transaction changes no silo's next task (a round closed, the run goes on and no
    other round opened: every silo waits for the next opening, which wakes them): it wakes
    the coordinator's round waits only."""
    session.info.setdefault(_ANSWERS_KEY, set()).add(_EVERY_TABLE)


def silos_affected(session: Session) -> None:
    """Undo `silos_unaffected`: this transaction went on to change silos' tasks (the close
    that marked it also opened the next round)."""
    session.info.get(_ANSWERS_KEY, set()).discard(_EVERY_TABLE)


def session_topic(session: Session, tables: set[str]) -> str | None:
    """What `session`'s transaction wakes, having written `tables` (its marks counted)."""
    extra = session.info.get(_ANSWERS_KEY, set())
    if _EVERY_TABLE in extra:
        return ANSWERS if tables - QUIET_TABLES else None
    return topic_of(tables, ANSWER_TABLES | extra)


def _written(session: Session) -> set[str]:
    """Tables of the objects this flush writes (a loaded object touched without a net change
    is in `dirty` too: it writes nothing)."""
    objs: Any = (*session.new, *session.deleted)
    changed = [o for o in session.dirty if session.is_modified(o)]
    return {getattr(o, "__tablename__", "?") for o in (*objs, *changed)}


class Wakeup:
    """The waiting long-polls of one service process, and the wakes that reach them."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex  # our own NOTIFYs come back to the listener: skip them
        self._lock = threading.Lock()
        self._waiters: dict[object, tuple[asyncio.AbstractEventLoop, asyncio.Event, bool]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set while the PostgreSQL listener is connected
        self.wakes = 0  # wake calls that reached at least one waiter
        self.waiting = 0  # long-polls past their first check, waiting for a wake (/metrics)
        self.closing = False  # the process is shutting down: long-polls answer now

    def close_polls(self) -> None:
        """Shutdown begins: every long-poll answers with what its check finds now (mostly no
        work yet: 204), instead of holding the graceful shutdown until its wait ends and then
        being cut off (a 500 and a traceback in the log for each). Its caller asks again,
        another replica or this one restarted."""
        self.closing = True
        self.wake(ALL)

    @contextlib.contextmanager
    def subscribe(self, answers: bool = False) -> Iterator[asyncio.Event]:
        """An event set on every wake of the topics the caller waits for (ALL always; also
        ANSWERS when `answers`); the caller clears it before each re-check."""
        key, ev = object(), asyncio.Event()
        with self._lock:
            self._waiters[key] = (asyncio.get_running_loop(), ev, answers)
        try:
            yield ev
        finally:
            with self._lock:
                del self._waiters[key]

    def wake(self, topic: str) -> None:
        with self._lock:
            targets = [(lp, ev) for lp, ev, ans in self._waiters.values() if topic == ALL or ans]
        hit = False
        for loop, ev in targets:
            if ev.is_set():  # racy read, harmless: at worst one more call_soon
                continue
            with contextlib.suppress(RuntimeError):  # that request's loop already closed
                loop.call_soon_threadsafe(ev.set)
                hit = True
        self.wakes += hit

    def listen(self, dsn: str) -> None:
        """Start the LISTEN thread (PostgreSQL): other replicas' commits wake our waiters."""
        self._thread = threading.Thread(
            target=self._listen, args=(dsn,), name="fedsilo-wakeup", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _listen(self, dsn: str) -> None:
        import psycopg

        backoff_s, failing = 1.0, False
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if failing:
                        log.warning("wake-up listener reconnected")
                    backoff_s, failing = 1.0, False
                    self.wake(ALL)  # (re)connected: whatever happened meanwhile, re-check
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            token, _, topic = note.payload.partition(" ")
                            if token != self.token:
                                self.wake(topic)
            except Exception as exc:  # noqa: BLE001 - keep listening; the re-check covers gaps
                self.listening.clear()
                if not failing:  # once per outage, not once per retry
                    log.warning("wake-up listener lost its connection (%s); reconnecting", exc)
                failing = True
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 30.0)
        self.listening.clear()


def wakeup_of(factory: sessionmaker[Session]) -> Wakeup | None:
    """The wake-up hub `install` attached to this session factory, if any."""
    return _wakeups.get(factory)


def install(factory: sessionmaker[Session], engine: Engine) -> Wakeup:
    """Track what each session of `factory` writes; after a commit, wake this process's
    waiters, and on PostgreSQL NOTIFY the other replicas (inside the transaction, so the
    notification is sent only if, and once, the commit succeeds)."""
    wakeup = Wakeup()
    _wakeups[factory] = wakeup
    postgres = engine.dialect.name == "postgresql"

    def mark(session: Session, tables: set[str]) -> None:
        session.info.setdefault(_TOPIC_KEY, set()).update(tables)

    @event.listens_for(factory, "do_orm_execute")
    def _on_execute(state: ORMExecuteState) -> None:
        if state.is_insert or state.is_update or state.is_delete:
            table = getattr(getattr(state.statement, "table", None), "name", None)
            mark(state.session, {table if isinstance(table, str) else "?"})

    @event.listens_for(factory, "after_flush")
    def _on_flush(session: Session, _ctx: UOWTransaction) -> None:
        mark(session, _written(session))

    @event.listens_for(factory, "before_commit")
    def _notify_replicas(session: Session) -> None:
        if not postgres:
            return
        topic = session_topic(session, session.info.get(_TOPIC_KEY, set()) | _written(session))
        if topic is not None:
            payload = f"{wakeup.token} {topic}"
            session.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})

    # SQLAlchemy calls after_commit and after_rollback for a savepoint too (`begin_nested`):
    # its release is no commit (a poll woken then would find nothing new and wait again), and
    # its rollback must not forget what the transaction wrote before it
    @event.listens_for(factory, "after_commit")
    def _wake_here(session: Session) -> None:
        if session.in_nested_transaction():
            return
        topic = session_topic(session, session.info.pop(_TOPIC_KEY, set()))
        session.info.pop(_ANSWERS_KEY, None)
        if topic is not None:
            wakeup.wake(topic)

    @event.listens_for(factory, "after_rollback")
    def _forget(session: Session) -> None:
        if session.in_nested_transaction():
            return
        session.info.pop(_TOPIC_KEY, None)
        session.info.pop(_ANSWERS_KEY, None)

    # a service dropped without its lifespan's shutdown (an app built in a test) must not leave
    # its listener reconnecting to a database that may be gone
    weakref.finalize(factory, wakeup._stop.set)
    if postgres:
        wakeup.listen(engine.url.set(drivername="postgresql").render_as_string(hide_password=False))
    return wakeup
