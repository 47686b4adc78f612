"""Per-round overhead of a four-silo federation: round wall time minus the slowest silo's
local training time, median over rounds (target: under 250 ms).

Runs the real thing on 127.0.0.1: a Prefect server (or the one at PREFECT_API_URL), the
aggregation service, four silo agents (the UCI hospitals) as processes, and the coordinator
flow. Usage: python bench/round_overhead.py [--rounds 20] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.processes import TELEMETRY_OFF  # noqa: E402

os.environ.update(TELEMETRY_OFF)

TARGET_S = 0.250


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument(
        "--plain",
        action="store_true",
        help="secure aggregation off (one exchange per round instead of four)",
    )
    args = parser.parse_args()
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="fedsilo-bench-"))
    from flows.processes import start_prefect_server

    procs = []
    try:
        if not os.environ.get("PREFECT_API_URL"):
            from socket import socket

            with socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            procs.append(start_prefect_server(ws / "prefect", port))
            os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        records = run(ws, args.rounds, procs, secure=not args.plain)
    finally:
        for p in reversed(procs):
            p.stop()
        if args.workspace is None:
            shutil.rmtree(ws, ignore_errors=True)
    print(f"secure aggregation: {'off' if args.plain else 'on'}")
    report(records)


def run(ws: Path, rounds: int, procs: list, secure: bool = True) -> list[dict]:  # type: ignore[type-arg]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.live_service import free_port, write_heart_silos

    from flows.coordinator import federated_training
    from flows.demo_config import heart_demo_spec
    from flows.processes import start_agent, start_service
    from flows.service_client import CoordinatorClient
    from schemas.contracts.loader import load_contract
    from silos.features import FeaturePipeline

    port = free_port()
    procs.append(start_service(ws / "service", port))
    url = f"http://127.0.0.1:{port}"
    token = (ws / "service" / "admin.token").read_text().strip()
    coord = CoordinatorClient(url, token=token)
    coord.create_federation("heart")
    configs = write_heart_silos(ws / "silos", [url], os.environ["PREFECT_API_URL"])
    procs.extend(
        start_agent(c, c.parent / "agent.log", os.environ["PREFECT_API_URL"])
        for c in configs.values()
    )
    while len([s for s in coord.silos("heart") if s.status == "pending"]) < len(configs):
        time.sleep(0.2)
    for name in configs:
        coord.approve("heart", name)
    spec = heart_demo_spec(FeaturePipeline.from_contract(load_contract("heart_disease")).n_features)
    result = federated_training(
        service_urls=[url],
        admin_token=token,
        federation="heart",
        dataset="heart_disease",
        model=spec.model,
        strategy=spec.strategy,
        training=spec.training,
        rounds=rounds,
        min_silos=4,
        round_deadline_s=120,
        output_dir=str(ws / "models"),
        secure_aggregation=spec.secure_aggregation.model_copy(update={"enabled": secure}),
    )
    return [r for r in result["rounds"] if r["kind"] == "train"]  # type: ignore[union-attr]


def report(records: list[dict]) -> None:  # type: ignore[type-arg]
    print(f"{'round':>5} {'wall ms':>9} {'slowest train ms':>17} {'overhead ms':>12}")
    overheads = []
    for r in records:
        overhead = r["wall_seconds"] - r["slowest_train_seconds"]
        overheads.append(overhead)
        print(
            f"{r['round']:>5} {1000 * r['wall_seconds']:>9.1f} "
            f"{1000 * r['slowest_train_seconds']:>17.1f} {1000 * overhead:>12.1f}"
        )
    median = statistics.median(overheads)
    print(
        f"\nfour silos, {len(records)} rounds: median per-round overhead {1000 * median:.1f} ms "
        f"(target < {1000 * TARGET_S:.0f} ms): {'MET' if median < TARGET_S else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
