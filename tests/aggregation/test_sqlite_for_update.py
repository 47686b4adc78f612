"""SELECT ... FOR UPDATE on the SQLite engine serializes like a row lock on PostgreSQL.

SQLite drops the clause; aggregation/service/db.py opens such a transaction with BEGIN
IMMEDIATE instead. Without that, the second of two concurrent read-modify-write transactions
read the row before the first committed and wrote over its change (a size-only vertical run
whose two parties reported at once never ended: each report saw only itself).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from aggregation.service.db import make_engine, make_sessionmaker, transaction

# How long the first transaction keeps its lock while waiting to hear that the second one
# read the row: with the lock the second cannot read, so the wait always runs out; without
# it the second reads at once. Only the broken case depends on this being long enough.
HOLD_S = 2.0


class _Base(DeclarativeBase):
    pass


class Counter(_Base):
    __tablename__ = "counter"
    name: Mapped[str] = mapped_column(String(8), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """Sessions on a fresh SQLite database whose counter "c" is 0."""
    engine = make_engine(f"sqlite:///{tmp_path / 'lock.db'}")
    _Base.metadata.create_all(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        s.add(Counter(name="c", value=0))
    yield factory
    engine.dispose()


def test_a_for_update_read_waits_for_the_writer_and_sees_its_change(
    factory: sessionmaker[Session],
) -> None:
    first_locked, second_read = threading.Event(), threading.Event()
    seen: list[int] = []

    def increment(first: bool) -> None:
        with transaction(factory) as s:
            row = s.scalar(select(Counter).where(Counter.name == "c").with_for_update())
            assert row is not None
            seen.append(row.value)
            if first:
                first_locked.set()
                second_read.wait(HOLD_S)  # the lock must keep the other one out meanwhile
            else:
                second_read.set()
            row.value += 1

    a = threading.Thread(target=increment, args=(True,))
    a.start()
    assert first_locked.wait(60)
    b = threading.Thread(target=increment, args=(False,))
    b.start()
    a.join(60)
    b.join(60)
    with transaction(factory) as s:
        final = s.scalar(select(Counter.value))
    assert seen == [0, 1] and final == 2


def test_plain_reads_take_no_lock(factory: sessionmaker[Session]) -> None:
    """Only FOR UPDATE selects take the write lock: a reader runs beside a writer."""
    with transaction(factory) as writer:
        row = writer.scalar(select(Counter).with_for_update())
        assert row is not None
        row.value = 5
        writer.flush()
        got: list[int | None] = []
        reader = threading.Thread(
            target=lambda: got.append(factory().scalar(select(Counter.value)))
        )
        reader.start()
        reader.join(60)
        assert got == [0]  # the committed value, read without waiting for the writer
