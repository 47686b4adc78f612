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
"""

from __future__ import annotations

from sqlalchemy import Connection, text

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
