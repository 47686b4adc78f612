"""Append-only enforcement for the ledger table, installed by the service's migration.

``install(connection)`` creates triggers that refuse UPDATE and DELETE (and TRUNCATE on
PostgreSQL) on ``ledger_entries`` with the message "ledger is append-only". It is idempotent,
so the migration (``op.get_bind()``) and tests can call it on an existing database.

Triggers stop the service's own code and anyone using its database account by mistake; they
do not stop a database owner, who can drop them. That is what the hash chain, the signatures
and the silos' receipts are for: tampering by an owner is detected, not prevented.

PostgreSQL alternative (or addition), when the service connects as a role that does not own
the tables: grant it only what appending needs, e.g. (``GRANT_STATEMENTS``)::

    REVOKE ALL ON ledger_entries FROM fedsilo_service;
    GRANT SELECT, INSERT ON ledger_entries TO fedsilo_service;
    GRANT SELECT, INSERT, UPDATE ON ledger_head TO fedsilo_service;

``ledger_head`` (the writers' lock row) is updated on every append and is not append-only.

At start the service calls ``require(connection)``: a trigger that is missing, disabled or
altered (or, on PostgreSQL, a trigger function that no longer raises) stops it with an error
naming it; ``fedsilo lineage reinstall-ledger-guard`` reinstalls them after an investigation.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text

MESSAGE = "ledger is append-only"

_SQLITE = [
    "DROP TRIGGER IF EXISTS ledger_entries_no_update",
    "DROP TRIGGER IF EXISTS ledger_entries_no_delete",
    f"""CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
        BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END""",
    f"""CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
        BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END""",
]

_POSTGRESQL = [
    f"""CREATE OR REPLACE FUNCTION ledger_entries_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '{MESSAGE}: % on % refused', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END
        $$""",
    "DROP TRIGGER IF EXISTS ledger_entries_no_update_delete ON ledger_entries",
    "DROP TRIGGER IF EXISTS ledger_entries_no_truncate ON ledger_entries",
    """CREATE TRIGGER ledger_entries_no_update_delete BEFORE UPDATE OR DELETE ON ledger_entries
        FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()""",
    """CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
        FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_append_only()""",
]


def grant_statements(role: str) -> list[str]:
    """GRANT/REVOKE statements limiting `role` to appending (PostgreSQL; run as the owner).

    Parameters
    ----------
    role
        The database role the aggregation service connects as (a plain identifier).
    """
    if not role.replace("_", "").isalnum():
        raise ValueError(f"role {role!r} is not a plain SQL identifier (letters, digits, '_')")
    return [
        f"REVOKE ALL ON ledger_entries FROM {role}",
        f"GRANT SELECT, INSERT ON ledger_entries TO {role}",
        f"GRANT SELECT, INSERT, UPDATE ON ledger_head TO {role}",
    ]


def install(connection: Connection) -> None:
    """Create the append-only triggers for the connection's dialect (idempotent).

    Parameters
    ----------
    connection
        A SQLAlchemy connection to a database where ``ledger_entries`` exists; the caller
        commits (Alembic does).

    Raises
    ------
    NotImplementedError
        For a database other than SQLite or PostgreSQL.
    """
    dialect = connection.dialect.name
    if dialect == "sqlite":
        statements = _SQLITE
    elif dialect == "postgresql":
        statements = _POSTGRESQL
    else:
        raise NotImplementedError(
            f"no append-only guard for {dialect}; the ledger supports SQLite and PostgreSQL"
        )
    for statement in statements:
        connection.execute(text(statement))


REINSTALL_COMMAND = "fedsilo lineage reinstall-ledger-guard --database-url URL"


class LedgerGuardMissing(RuntimeError):
    """An append-only trigger is missing, disabled or altered: the service refuses to start."""


# What each trigger must do, by dialect: name -> text its definition must contain.
_EXPECTED: dict[str, dict[str, tuple[str, ...]]] = {
    "sqlite": {
        "ledger_entries_no_update": (
            "BEFORE UPDATE ON ledger_entries",
            f"RAISE(ABORT, '{MESSAGE}')",
        ),
        "ledger_entries_no_delete": (
            "BEFORE DELETE ON ledger_entries",
            f"RAISE(ABORT, '{MESSAGE}')",
        ),
    },
    "postgresql": {
        "ledger_entries_no_update_delete": (
            "BEFORE",
            "UPDATE",
            "DELETE",
            "ledger_entries_append_only",
        ),
        "ledger_entries_no_truncate": ("BEFORE TRUNCATE", "ledger_entries_append_only"),
    },
}


def _installed(connection: Connection) -> dict[str, str]:
    """Active triggers on ledger_entries: name -> definition (disabled ones left out)."""
    if connection.dialect.name == "sqlite":
        rows = connection.execute(
            text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                "AND tbl_name = 'ledger_entries'"
            )
        )
        return {name: " ".join(sql.split()) for name, sql in rows}
    rows = connection.execute(
        text(
            "SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
            "WHERE t.tgrelid = to_regclass('ledger_entries') AND NOT t.tgisinternal "
            "AND t.tgenabled IN ('O', 'A')"
        )
    )
    return {name: definition for name, definition in rows}


def _function_intact(connection: Connection) -> bool:
    """PostgreSQL: the trigger function still raises (it could be replaced by a no-op)."""
    source = connection.execute(
        text("SELECT prosrc FROM pg_proc WHERE proname = 'ledger_entries_append_only'")
    ).scalar()
    return isinstance(source, str) and "RAISE EXCEPTION" in source and MESSAGE in source


def missing(connection: Connection) -> list[str]:
    """Names of the append-only triggers that are absent, disabled or altered (empty: intact).

    Raises
    ------
    NotImplementedError
        For a database other than SQLite or PostgreSQL.
    """
    dialect = connection.dialect.name
    if dialect not in _EXPECTED:
        raise NotImplementedError(f"no append-only guard for {dialect}")
    found = _installed(connection)
    gone = [
        name
        for name, needles in _EXPECTED[dialect].items()
        if name not in found or not all(n in found[name] for n in needles)
    ]
    if dialect == "postgresql" and not _function_intact(connection):
        gone.append("ledger_entries_append_only() (trigger function)")
    return gone


def require(connection: Connection) -> None:
    """Refuse to go on when an append-only trigger is missing (called at service start).

    Raises
    ------
    LedgerGuardMissing
        Naming each missing trigger and how to reinstall them once the cause is understood.
    """
    gone = missing(connection)
    if gone:
        raise LedgerGuardMissing(
            f"ledger append-only trigger(s) missing, disabled or altered: {', '.join(gone)}. "
            "Someone with the database owner's rights removed them: investigate (run "
            "`fedsilo lineage verify --silo-copy ...` against the silos' copies) before "
            f"reinstalling them with `{REINSTALL_COMMAND}`; the service will not start until then"
        )


def require_at_start(engine: Engine) -> None:
    """`require` on a fresh connection of `engine`, disposing of the engine when it fails."""
    try:
        with engine.connect() as connection:
            require(connection)
    except LedgerGuardMissing:
        engine.dispose()
        raise
