"""XGBoost's federated collective for one round of a ``collective`` tree run.

The service process that opens the round starts the gRPC server (`trees.collective`, mutual TLS
required) and records where it listens and each silo's rank in the round row, so the tasks
every service process hands out agree. The server lives in that process: if it dies, the
round's workers fail and the coordinator's deadline closes the round without a model.
"""

from __future__ import annotations

import json
import threading

from aggregation.service.exceptions import Conflict
from aggregation.service.settings import ServiceSettings
from aggregation.trees.collective import CollectiveServer, ServerTLS, require_mutual_tls
from schemas.tree_errors import CollectiveError

_servers: dict[tuple[str, int], CollectiveServer] = {}
_lock = threading.Lock()


def server_tls(settings: ServiceSettings) -> ServerTLS | None:
    if not (settings.collective_cert and settings.collective_key and settings.collective_ca):
        return None
    return ServerTLS(settings.collective_cert, settings.collective_key, settings.collective_ca)


def check_ready(settings: ServiceSettings) -> None:
    """Refuse (409) a collective run when this service could not start the server securely."""
    try:
        require_mutual_tls(server_tls(settings))
    except CollectiveError as exc:
        raise Conflict(
            f"{exc.detail} (service settings collective_cert, collective_key, collective_ca)"
        ) from exc


def start(
    settings: ServiceSettings, run_id: str, number: int, ranks: list[str], deadline_s: float
) -> str:
    """Start the round's server; returns the JSON to store in the round row.

    Raises
    ------
    Conflict
        The service has no collective certificate, key or CA (it never runs the server
        insecurely), or the server did not start.
    """
    check_ready(settings)
    try:
        server = CollectiveServer(
            n_workers=len(ranks), tls=server_tls(settings), timeout_s=max(60, int(deadline_s) + 60)
        )
        port = server.start()
    except CollectiveError as exc:
        raise Conflict(f"round {number} of run {run_id}: {exc.detail}") from exc
    with _lock:
        _servers[(run_id, number)] = server
    return json.dumps(
        {
            "collective": {
                "host": settings.collective_host,
                "port": port,
                "server_name": settings.collective_server_name,
                "ranks": ranks,
            }
        }
    )


def stop(run_id: str, number: int) -> None:
    """Stop the round's server if this process runs it (idempotent)."""
    with _lock:
        server = _servers.pop((run_id, number), None)
    if server is not None:
        server.stop()


def stop_all() -> None:
    with _lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        try:
            server.stop()
        except CollectiveError:
            pass
