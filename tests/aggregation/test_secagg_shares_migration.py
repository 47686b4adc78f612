"""Migration 0012 on SQLite and PostgreSQL: a secure round open at the upgrade keeps working.
Its stored ``share`` messages are split into `secagg_shares` rows (one per sender and
recipient) so the recipients' fetches find them; a closed round's messages are left alone."""

from __future__ import annotations

from datetime import datetime

from alembic import command
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text

from aggregation.service.migrate import alembic_config
from schemas.secagg.messages import ShareKeys

SILOS = ("a", "b", "c")


def _share(run_id: str, round_: int, sender: str) -> bytes:
    blobs = {r: f"{sender}->{r} r{round_}".encode() for r in SILOS if r != sender}
    msg = ShareKeys.create(
        Ed25519PrivateKey.generate(),
        run_id=run_id,
        round_num=round_,
        silo=sender,
        b_commitment=b"\x01" * 32,
        ciphertexts=blobs,
    )
    return msg.to_bytes()


def test_open_rounds_shares_are_split_per_recipient(db_url: str) -> None:
    cfg = alembic_config(db_url)
    engine = create_engine(db_url)
    now = datetime(2026, 12, 4, 12, 0)
    run = "r" * 32
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0011")
            conn.execute(text("INSERT INTO federations VALUES ('f', '', :t)"), {"t": now})
            conn.execute(
                text(
                    "INSERT INTO runs (id, federation, status, spec_json, created_at, "
                    "current_round) VALUES (:r, 'f', 'running', '{}', :t, 2)"
                ),
                {"r": run, "t": now},
            )
            for number, status in ((1, "aggregated"), (2, "open")):
                conn.execute(
                    text(
                        "INSERT INTO rounds (run_id, number, kind, status, opened_at, "
                        "deadline_at, input_model_version) "
                        "VALUES (:r, :n, 'train', :s, :t, :t, 0)"
                    ),
                    {"r": run, "n": number, "s": status, "t": now},
                )
                for sender in SILOS:
                    conn.execute(
                        text(
                            "INSERT INTO secagg_messages (run_id, round, stage, silo, payload, "
                            "received_at) VALUES (:r, :n, 'share', :s, :p, :t)"
                        ),
                        {
                            "r": run,
                            "n": number,
                            "s": sender,
                            "p": _share(run, number, sender),
                            "t": now,
                        },
                    )
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0012")
            rows = conn.execute(
                text("SELECT round, sender, recipient, ciphertext FROM secagg_shares")
            ).all()
    finally:
        engine.dispose()
    assert sorted((r, s, to, bytes(c)) for r, s, to, c in rows) == sorted(
        (2, s, to, f"{s}->{to} r2".encode()) for s in SILOS for to in SILOS if to != s
    )
