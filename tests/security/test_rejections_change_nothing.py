"""A rejected request changes nothing: snapshot every table of a live service's database,
send a batch of bad requests (bad signatures, wrong round, malformed payloads, oversized
integers, a duplicate update), snapshot again. Only `rejection_counts` may differ, and it stays
bounded however often the same bad request is repeated."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from hostile_federation import ADMIN_TOKEN, WIRE, Target, live_target, update
from sqlalchemy import MetaData, create_engine, select

from silos.client_errors import ServiceRejected

pytestmark = pytest.mark.integration
BIG = 2**63 + 1
IGNORED = {"nonces"}  # every signed request records its nonce, accepted or not (replay guard)


def snapshot(database_url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows, sorted (row counts and content)."""
    engine = create_engine(database_url)
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        out = {
            # a silo's last_seen_at is presence, not state: a refused signed request still
            # shows the silo is alive (updated at most once per 5 s)
            name: sorted(
                (
                    tuple(r)
                    for r in conn.execute(select(*[c for c in table.c if c.name != "last_seen_at"]))
                ),
                key=repr,
            )
            for name, table in meta.tables.items()
            if name not in IGNORED
        }
    engine.dispose()
    return out


def bad_requests(t: Target) -> None:
    a = t.silos["a"]
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}", **WIRE}
    attempts = [
        lambda: a.submit_update(t.run_id, 1, b"not a tensor payload"),
        lambda: a.submit_update(t.run_id, 1, update(t.run_id, 1, n_examples=str(BIG))),
        lambda: a.submit_update(t.run_id, 1, update(t.run_id, 2)),  # bound to another round
        lambda: a.submit_update(t.run_id, 7, update(t.run_id, 7)),  # no such round
        lambda: a.submit_update(t.run_id, BIG, update(t.run_id, 1)),
        lambda: a.submit_update(t.run_id, 1, update(t.run_id, 1, seed=5)),  # a different 2nd
    ]
    for attempt in attempts:
        with pytest.raises(ServiceRejected):
            attempt()
    forged = {**WIRE, "X-Fedsilo-Federation": "f", "X-Fedsilo-Silo": "a"}
    raw = [
        ("POST", f"/v1/silo/runs/{t.run_id}/rounds/1/update", forged),
        ("GET", f"/v1/runs?limit={BIG}", admin),
        ("GET", "/v1/runs?limit=-1", admin),
        ("GET", f"/v1/ledger?after={BIG}", admin),
        ("POST", f"/v1/runs/{t.run_id}/rounds/{BIG}/close", admin),
    ]
    for method, path, headers in raw:
        assert httpx.request(method, t.url + path, headers=headers).status_code in (401, 422)


def test_rejected_requests_change_only_the_rejection_counter(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    with live_target(tmp_path / "svc", fresh_pg_url) as t:
        t.silos["a"].submit_update(t.run_id, 1, update(t.run_id, 1))  # the one that stands
        before = snapshot(fresh_pg_url)
        bad_requests(t)
        after = snapshot(fresh_pg_url)
        changed = {name for name in before if before[name] != after[name]}
        assert changed == {"rejection_counts"}, changed
        keys = len(after["rejection_counts"])
        for _ in range(200):
            with pytest.raises(ServiceRejected):
                t.silos["a"].submit_update(t.run_id, 1, b"not a tensor payload")
        again = snapshot(fresh_pg_url)
        assert {n for n in before if before[n] != again[n]} == {"rejection_counts"}
        assert len(again["rejection_counts"]) == keys  # bounded: no new row per request
        total = sum(r[5] for r in after["rejection_counts"])  # columns: ..., count, ...
        assert sum(r[5] for r in again["rejection_counts"]) == total + 200
        # the audit trail: one summary entry when the round closes
        t.coord.close_round(t.run_id, 1)
        kinds = [e.kind for e in t.coord.ledger(t.run_id)]
        assert kinds.count("rejections") == 1 and "update_rejected" not in kinds
