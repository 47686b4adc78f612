"""The silo half of XGBoost's federated collective: join the run's server as one worker.

Importable by silo agents (it imports nothing from the service). XGBoost's communicator is
process-global, so an agent runs `train_collective` in a child process of its own.

A worker whose certificate the server rejects is never admitted, but XGBoost's gRPC client
then retries silently for minutes. `check_admitted` therefore first makes one mutual-TLS
connection of its own: the server either answers with its HTTP/2 settings frame (admitted) or
closes the connection (certificate rejected), and the silo gets a clear error at once.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import queue
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.tree_errors import CollectiveRunError, CollectiveTLSError
from schemas.tree_params import TreeSpec

_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS_FRAME_TYPE = 0x04


@dataclass(frozen=True)
class WorkerTLS:
    """PEM files: the federation CA (verifies the server), this silo's certificate and key."""

    ca_cert: Path
    client_cert: Path
    client_key: Path


def _require_files(tls: WorkerTLS | None) -> WorkerTLS:
    if tls is None:
        raise CollectiveTLSError(
            "a collective worker needs the federation CA, its client certificate and key; "
            "the server admits no worker without them"
        )
    for label, path in (
        ("federation CA certificate", tls.ca_cert),
        ("client certificate", tls.client_cert),
        ("client key", tls.client_key),
    ):
        if not Path(path).is_file():
            raise CollectiveTLSError(f"{label} {path} does not exist")
    return tls


def check_admitted(host: str, port: int, tls: WorkerTLS, timeout_s: float = 10.0) -> None:
    """Make one mutual-TLS connection and check the server accepts this silo's certificate.

    Raises
    ------
    CollectiveTLSError
        The server's certificate does not chain to the federation CA or does not name `host`,
        or the server closed the connection: it rejected this silo's certificate.
    CollectiveRunError
        Nothing listens at host:port.
    """
    tls = _require_files(tls)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_cert))
    context.set_alpn_protocols(["h2"])  # gRPC speaks HTTP/2 only
    context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=host) as conn:
                conn.sendall(_HTTP2_PREFACE + _EMPTY_SETTINGS)
                reply = conn.recv(64)
    except ssl.SSLCertVerificationError as exc:
        raise CollectiveTLSError(
            f"the collective server at {host}:{port} presented a certificate that the "
            f"federation CA does not vouch for ({exc.verify_message}); do not join"
        ) from exc
    except ssl.SSLError as exc:
        raise CollectiveTLSError(
            f"the collective server at {host}:{port} refused this silo's certificate "
            f"({exc.reason}); ask the coordinator for a certificate from the federation CA"
        ) from exc
    except OSError as exc:
        raise CollectiveRunError(
            f"cannot reach the collective server {host}:{port}: {exc}"
        ) from exc
    if len(reply) < 4 or reply[3] != _SETTINGS_FRAME_TYPE:
        raise CollectiveTLSError(
            f"the collective server at {host}:{port} closed the connection after the TLS "
            "handshake: it rejected this silo's client certificate. Ask the coordinator for a "
            "certificate issued by the federation CA"
        )


def train_collective(
    spec: TreeSpec,
    X: np.ndarray,
    y: np.ndarray,
    *,
    host: str,
    port: int,
    world_size: int,
    rank: int,
    tls: WorkerTLS,
    num_boost_round: int,
    seed: int = 0,
    n_threads: int = 1,
    base_model: bytes | None = None,
) -> bytes:
    """Train one XGBoost model jointly with the other silos; returns its JSON bytes.

    With `base_model` (the current global model, the same at every worker) boosting continues
    from it and only the new trees are returned, as in the other tree modes. Every worker ends
    with the same trees; each submits them and the service checks that they agree.

    Raises
    ------
    CollectiveTLSError
        Missing TLS files, or the server rejected this silo's certificate (before any data is
        touched by the collective).
    CollectiveRunError
        The spec is not collective XGBoost, or the collective failed (a peer dropped out).
    """
    if spec.kind != "xgboost" or spec.mode != "collective":
        raise CollectiveRunError(f"spec is {spec.kind}/{spec.mode}, not xgboost/collective")
    check_admitted(host, port, tls)
    import xgboost as xgb

    args: dict[str, Any] = {
        "dmlc_communicator": "federated",
        "federated_server_address": f"{host}:{port}",
        "federated_world_size": world_size,
        "federated_rank": rank,
        "federated_server_cert_path": str(tls.ca_cert),
        "federated_client_key_path": str(tls.client_key),
        "federated_client_cert_path": str(tls.client_cert),
    }
    try:
        with xgb.collective.CommunicatorContext(**args):
            dtrain = xgb.DMatrix(np.asarray(X, dtype=np.float32), label=y, nthread=n_threads)
            params = spec.native_params(seed=seed, n_threads=n_threads)
            base = xgb.Booster(model_file=bytearray(base_model)) if base_model else None
            n_base = base.num_boosted_rounds() if base is not None else 0
            booster = xgb.train(params, dtrain, num_boost_round=num_boost_round, xgb_model=base)
    except xgb.core.XGBoostError as exc:
        raise CollectiveRunError(f"the collective failed at rank {rank}: {exc}") from exc
    return bytes(booster[n_base:].save_raw("json"))


def _child(kwargs: dict, results: multiprocessing.queues.Queue) -> None:
    try:
        results.put(("ok", train_collective(**kwargs)))
    except (CollectiveTLSError, CollectiveRunError) as exc:
        results.put((type(exc).__name__, exc.detail))


def start_worker_process(**kwargs: object) -> tuple[multiprocessing.process.BaseProcess, object]:
    """Run `train_collective(**kwargs)` in a fresh process (XGBoost's communicator is global
    to a process). Returns the process and a queue; pass both to `collect_worker`."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    process = ctx.Process(target=_child, args=(kwargs, results), daemon=True)
    process.start()
    return process, results


def collect_worker(process, results, timeout_s: float) -> bytes:
    """Wait for a worker started by `start_worker_process`; returns its model bytes.

    Raises
    ------
    CollectiveTLSError, CollectiveRunError
        As raised in the worker, or `CollectiveRunError` when it did not finish in time or
        died without a result (the process is then terminated).
    """
    try:
        status, value = results.get(timeout=timeout_s)
    except queue.Empty as exc:
        process.terminate()
        raise CollectiveRunError(f"collective worker gave no result within {timeout_s} s") from exc
    finally:
        process.join(10)
    if status == "ok":
        return value
    error = CollectiveTLSError if status == "CollectiveTLSError" else CollectiveRunError
    raise error(value)
