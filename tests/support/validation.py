"""A silo's signed validation statement, as its agent's gate makes it before a round's first
answer (`silos.agent.validate_round`, which lets it ride on that answer), sent alone, for
tests that drive silos by hand.

The service bounds every claimed ``n_examples`` by the rows of the silo's latest passing
statement in the run (`aggregation.service.contributions.check_n_examples`).
"""

from __future__ import annotations

from schemas.wire import ValidationSummary
from silos.client import SiloClient
from silos.round_gate import statement_payload

DEFAULT_ROWS = 1_000_000


def summary(n_rows: int = DEFAULT_ROWS, *, success: bool = True) -> ValidationSummary:
    """A gate result over a table of `n_rows` rows (fingerprints are placeholders)."""
    return ValidationSummary(
        contract="toy",
        contract_version="1",
        contract_sha256="0" * 64,
        data_sha256="1" * 64,
        n_rows=n_rows,
        n_expectations=1,
        success=success,
    )


def validate(
    client: SiloClient, run_id: str, round_: int = 1, n_rows: int = DEFAULT_ROWS
) -> dict[str, object]:
    """Send `client`'s passing validation statement for `round_` of `run_id`; its receipt."""
    payload = statement_payload(client.silo, round_, summary(n_rows))
    return client.submit_statement(run_id, "validation_result", payload)


def validate_all(
    clients: dict[str, SiloClient], run_id: str, round_: int = 1, n_rows: int = DEFAULT_ROWS
) -> None:
    """Every silo in `clients` validates `n_rows` rows for `round_`."""
    for client in clients.values():
        validate(client, run_id, round_, n_rows)
