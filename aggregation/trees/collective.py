"""The service half of XGBoost's federated collective: one gRPC server per training run.

`xgboost.federated` runs a gRPC server that relays the workers' allreduce/allgather calls;
with ``tree_method=hist`` those carry every silo's per-node gradient/hessian histograms (and
quantile sketches), in the clear to the server. The server therefore learns each silo's
histograms; the README says so and the run's lineage must record it.

The server binds 0.0.0.0 (every interface; XGBoost offers no bind address), and
`xgboost.federated.run_federated_server` silently falls back to an INSECURE server when any of
its three TLS paths is missing. `CollectiveServer` refuses to start unless all three are given:
a server certificate, its key, and the federation CA that client certificates must chain to.
Without that CA check any host that reaches the port could join as a worker, read the
histograms of every silo and steer the model.

The server runs in a child process (the XGBoost tracker has no stop call), started and stopped
by the service for the run.
"""

from __future__ import annotations

import multiprocessing
import queue
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from schemas.tree_errors import CollectiveRunError, CollectiveTLSError

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServerTLS:
    """PEM files: the server's certificate and key, and the CA that signs silo certificates."""

    server_cert: Path
    server_key: Path
    client_ca: Path


def require_mutual_tls(tls: ServerTLS | None) -> ServerTLS:
    """Return `tls` if all three files exist and are readable; refuse otherwise.

    Raises
    ------
    CollectiveTLSError
        Naming what is missing and why the server must not start without it.
    """
    why = (
        "the XGBoost federated server listens on every interface (0.0.0.0) and without "
        "mutual TLS any host that reaches the port can join as a worker, read every silo's "
        "gradient histograms and poison the model"
    )
    if tls is None:
        raise CollectiveTLSError(
            f"refusing to start the collective server without TLS: {why}. Give the server "
            "certificate, its key and the federation CA that signs the silos' certificates"
        )
    for label, path in (
        ("server certificate", tls.server_cert),
        ("server key", tls.server_key),
        ("client CA certificate", tls.client_ca),
    ):
        if not Path(path).is_file():
            raise CollectiveTLSError(
                f"refusing to start the collective server: {label} {path} does not exist; {why}"
            )
    return tls


def _serve(n_workers: int, port: int, tls: ServerTLS, timeout_s: int, ports: queue.Queue) -> None:
    """Child-process body: run the tracker until the workers finish or it is terminated."""
    from xgboost.federated import FederatedTracker

    tracker = FederatedTracker(
        n_workers=n_workers,
        port=port,
        secure=True,
        server_key_path=str(tls.server_key),
        server_cert_path=str(tls.server_cert),
        client_cert_path=str(tls.client_ca),
        timeout=timeout_s,
    )
    tracker.start()
    ports.put(int(tracker.worker_args()["dmlc_tracker_port"]))
    tracker.wait_for(timeout_s)


class CollectiveServer:
    """XGBoost's federated server for one run, in a child process.

    Use as a context manager::

        with CollectiveServer(n_workers=3, tls=tls) as server:
            ...  # tell the silos to join 'host:server.port'
    """

    def __init__(
        self, n_workers: int, tls: ServerTLS | None, port: int = 0, timeout_s: int = 600
    ) -> None:
        if n_workers < 1:
            raise CollectiveRunError(f"a collective needs at least one worker, got {n_workers}")
        self.tls = require_mutual_tls(tls)
        self.n_workers = n_workers
        self.timeout_s = timeout_s
        self._requested_port = port
        self._ctx = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self.port: int | None = None

    def start(self) -> int:
        """Start the server; returns the port it listens on (all interfaces)."""
        ports = self._ctx.Queue()
        args = (self.n_workers, self._requested_port, self.tls, self.timeout_s, ports)
        self._process = self._ctx.Process(target=_serve, args=args, daemon=True)
        self._process.start()
        try:
            self.port = int(ports.get(timeout=START_TIMEOUT_S))
        except queue.Empty as exc:
            self.stop()
            raise CollectiveRunError(
                f"the collective server did not start within {START_TIMEOUT_S:.0f} s; check "
                "that the certificate and key files are PEM and match each other"
            ) from exc
        return self.port

    def stop(self) -> None:
        """Stop the server process (idempotent)."""
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
        self._process = None

    def __enter__(self) -> CollectiveServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
