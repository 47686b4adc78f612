"""The silo side of bench/scale.py: worker processes, each serving a few silos in threads.

    python bench/_scale_silos.py SPEC.json   # started by bench/scale.py, one per worker

Each silo is one thread with its own Ed25519 key and signed `SiloClient`, running the agent's
secure-aggregation path (silos/agent.py's silo_training for a secure run, minus the validation
gate, local training and Prefect): poll for the first task, then silos/secure_round.py's
advertise, share, (global model download) masked_update + submit_masked, unmask, each answer
bringing the next task as the agent's do (`SiloClient.follow_wait_s`). Its update is
a fixed pseudo-random delta per silo and round (`silo_delta`), which bench/scale.py recomputes
to check the result.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.tasks import SecAggMaskedTask, Task  # noqa: E402
from schemas.wire import ValidationSummary  # noqa: E402
from silos.client import SiloClient  # noqa: E402
from silos.client_errors import AlreadyAnswered, Conflict, Forbidden  # noqa: E402
from silos.round_gate import statement_payload  # noqa: E402

FEDERATION = "scale"
DELTA_STD = 0.008  # per coordinate: the L2 norm of 10^6 of them (~8) stays under clip 10
POLL_WAIT_S = 25.0


def silo_name(i: int) -> str:
    return f"silo-{i:03d}"


def n_examples_of(i: int) -> int:
    return 100 + 7 * i  # distinct example counts: the weighted mean is not a plain mean


def silo_delta(seed: int, index: int, round_num: int, dim: int) -> np.ndarray:
    """Silo `index`'s update in round `round_num` (float32, as the agent's deltas are)."""
    rng = np.random.default_rng([seed, index, round_num])
    return rng.normal(0.0, DELTA_STD, dim).astype(np.float32)


def serve_silo(
    client: SiloClient,
    workspace: Path,
    index: int,
    seed: int,
    cpu: dict[int, float],
    steps: list[tuple[int, str, float, float]],
) -> None:
    """The agent's loop for one secure run: wait for approval, then every task until the run
    ends. `cpu` collects thread CPU seconds per round spent in the protocol steps, `steps`
    (round, task, start, end) in wall-clock seconds since the epoch."""
    from silos import secure_round

    while not _approved(client):
        time.sleep(0.5)
    run_id: str | None = None
    while True:
        work = client.next_task(wait_s=POLL_WAIT_S, run_id=run_id)
        if work is None:
            continue
        if work.type == "run_ended":
            return
        run_id = work.run_id
        started, wall = time.thread_time(), time.time()
        _step(client, work, workspace, index, seed, secure_round)
        cpu[work.round] = cpu.get(work.round, 0.0) + time.thread_time() - started
        steps.append((work.round, work.type, wall, time.time()))


def _approved(client: SiloClient) -> bool:
    try:
        return client.whoami().status == "approved"
    except Forbidden:  # enrolled, approval pending
        return False


def _step(client: SiloClient, work: Task, workspace: Path, index: int, seed: int, sr) -> None:  # type: ignore[no-untyped-def]
    n = n_examples_of(index)
    if work.type == "secagg_advertise":
        _validate(client, work.run_id, work.round, n)  # as the agent's gate, before answering
        sr.advertise(client, client.key, work, workspace, n_examples=n)
    elif work.type == "secagg_consistency":
        sr.consistency(client, client.key, work, workspace)
    elif work.type == "secagg_share":
        sr.share(client, client.key, work, workspace)
    elif work.type == "secagg_unmask":
        try:
            sr.unmask(client, client.key, work, workspace)
        except Conflict:  # as the agent: enough survivors answered first, the round is over
            pass
    elif isinstance(work, SecAggMaskedTask):
        # the agent's training handler: fetch the global model (its bytes are all the service
        # sees of it), then submit masked without DP: clip, weight, quantize + mask, submit
        client.download_model(work.run_id, work.model_version)
        delta = silo_delta(seed, index, work.round, work.secagg.dim).astype(np.float64)
        clipped = sr.clip_l2(delta, work.secagg.clip)
        weight = work.secagg.weight if work.secagg.weight is not None else 1.0
        message = sr.masked_update(client, client.key, work, workspace, weight * clipped)
        try:
            client.submit_masked(work.run_id, work.round, message, n, 0.0, None)
        except AlreadyAnswered:  # as the agent: a retry after a lost answer is refused
            pass
    else:
        raise RuntimeError(f"silo {client.silo}: unexpected task {work.type!r}")


def _validate(client: SiloClient, run_id: str, round_: int, n_rows: int) -> None:
    """The silo's signed validation statement (the service bounds n_examples by its rows);
    these synthetic silos have no table, so its fingerprints are placeholders."""
    summary = ValidationSummary(
        contract="synthetic",
        contract_version="1",
        contract_sha256="0" * 64,
        data_sha256="1" * 64,
        n_rows=n_rows,
        n_expectations=0,
        success=True,
    )
    client.submit_statement(
        run_id, "validation_result", statement_payload(client.silo, round_, summary)
    )


def worker_main(spec_path: Path) -> None:
    """One worker process: enrol its silos, serve them in threads, write what they measured."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    spec = json.loads(spec_path.read_text())
    clients: dict[int, SiloClient] = {}
    cpu: dict[int, dict[int, float]] = {}
    errors: dict[int, str] = {}
    steps: dict[int, list[tuple[int, str, float, float]]] = {}
    for i in spec["indices"]:
        clients[i] = SiloClient(
            spec["url"],
            federation=FEDERATION,
            silo=silo_name(i),
            key=Ed25519PrivateKey.generate(),
            retry_for_s=600,
        )
        clients[i].follow_wait_s = POLL_WAIT_S  # as the agent: an answer brings the next task
        clients[i].enrol()
        cpu[i], steps[i] = {}, []

    def run(i: int) -> None:
        try:
            ws = Path(spec["workspace"]) / silo_name(i)
            serve_silo(clients[i], ws, i, spec["seed"], cpu[i], steps[i])
        except Exception as exc:  # reported to the orchestrator, which fails the check
            errors[i] = f"{type(exc).__name__}: {exc}"
            raise

    threads = [threading.Thread(target=run, args=(i,)) for i in spec["indices"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = {"cpu": {silo_name(i): c for i, c in cpu.items()}, "steps": steps, "errors": errors}
    Path(spec["out"]).write_text(json.dumps(out))


if __name__ == "__main__":
    worker_main(Path(sys.argv[1]))
