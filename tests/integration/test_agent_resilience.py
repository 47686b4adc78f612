"""Silo agents that never stall a round, ride out a service outage and drop a cancelled run,
as real processes on 127.0.0.1 (service, agents, the coordinator's flow, a Prefect server).

One federation of three hospitals serves the module's tests in order; the first adds a fourth
silo whose table holds one class only (it cannot be split or trained on), which declines every
round from then on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun
from support.fault_helpers import (
    START_S,
    Federation,
    current_round,
    start_federation,
    train,
    train_in_thread,
)
from support.live_service import write_heart_silos

from flows.processes import start_agent, start_service

# a loaded 2-core machine runs a round in 15-20 s: the module's runs take minutes, not hours
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

HEALTHY = ("cleveland", "hungary", "va_long_beach")
DECLINER = "switzerland"
DEADLINE_S = 600.0  # long on purpose: no round may wait for it
ROUNDS = 10
BASELINE_ROUNDS = 5


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("resilience"), prefect_api_url, silos=HEALTHY
    )
    try:
        yield federation
    finally:
        federation.stop()


def _log(fed: Federation, silo: str) -> str:
    return fed.agents[silo].log_path.read_text(errors="replace")


def _timed_run(fed: Federation, out: Path, rounds: int) -> tuple[dict, float]:  # type: ignore[type-arg]
    started = time.monotonic()
    result = train(
        fed.urls, fed.token, out, rounds, secure=False, deadline_s=DEADLINE_S, min_silos=3
    )
    return result, time.monotonic() - started


def _add_single_class_silo(fed: Federation, prefect_api_url: str) -> None:
    """Switzerland's export with its negative rows lost: only one class is left."""
    cfg = write_heart_silos(fed.root / "late-silos", fed.urls, prefect_api_url)[DECLINER]
    csv = cfg.parent / "data.csv"
    frame = pd.read_csv(csv)
    frame[frame["num"] > 0].to_csv(csv, index=False)
    fed.configs[DECLINER] = cfg
    fed.agents[DECLINER] = start_agent(cfg, cfg.parent / "agent.log", prefect_api_url)
    fed.wait(lambda: any(s.name == DECLINER for s in fed.coord.silos("heart")), "the silo to enrol")
    fed.coord.approve("heart", DECLINER)


def test_a_single_class_silo_declines_every_round_without_stalling_it(
    fed: Federation, prefect_api_url: str, tmp_path: Path
) -> None:
    baseline, baseline_s = _timed_run(fed, tmp_path / "baseline", BASELINE_ROUNDS)
    assert baseline["rounds"][0]["contributors"]  # the federation trains without it

    _add_single_class_silo(fed, prefect_api_url)
    ready = fed.wait(
        lambda: next((s for s in fed.coord.silos("heart") if s.name == DECLINER and s.ready), None),
        "the single-class silo's ready report",
    )
    assert ready.ready.validated is False  # it warmed up, and said its data cannot take part
    assert "target_classes_present" in ready.ready.detail
    log_lines_before = len(_log(fed, DECLINER).splitlines())

    result, with_decliner_s = _timed_run(fed, tmp_path / "with-decliner", ROUNDS)

    # every round moved on as soon as the three others answered and it declined: a round that
    # waited for it would take its whole 600 s deadline. (A bound on the run's total against
    # the baseline's would also measure how busy the other test worker is.)
    walls = [r["wall_seconds"] for r in result["rounds"]]
    assert max(walls) < DEADLINE_S / 4, walls
    assert all(DECLINER not in r["contributors"] for r in result["rounds"])
    assert all(len(r["contributors"]) == 3 for r in result["rounds"])
    assert all(
        "target_classes_present" in r["declined"][DECLINER] for r in result["rounds"]
    )  # runs show
    declines = [e for e in fed.coord.ledger(result["run_id"]) if e.kind == "decline"]
    payloads = [json.loads(e.payload) for e in declines]
    assert {p["round"] for p in payloads} >= set(range(1, ROUNDS + 1)), payloads
    assert all(p["silo"] == DECLINER and p["cause"] == "data" for p in payloads)
    assert all(p["scope"] == "round" and "target_classes_present" in p["reason"] for p in payloads)
    # one decline line per round, not a traceback per poll
    new_lines = _log(fed, DECLINER).splitlines()[log_lines_before:]
    rounds_seen = len(result["rounds"])
    assert len(new_lines) <= 12 * rounds_seen, "\n".join(new_lines[-60:])
    assert sum("Traceback" in line for line in new_lines) == 0, "\n".join(new_lines[-60:])
    print(
        f"per round: {baseline_s / BASELINE_ROUNDS:.1f}s with 3 silos ({BASELINE_ROUNDS} rounds), "
        f"{with_decliner_s / ROUNDS:.1f}s with a fourth that declines ({ROUNDS} rounds)"
    )


def test_agents_ride_out_a_service_outage(fed: Federation, tmp_path: Path) -> None:
    sizes = {name: len(_log(fed, name)) for name in fed.agents}

    def logged(text: str) -> bool:
        return all(text in _log(fed, name)[sizes[name] :] for name in fed.agents)

    fed.services[0].stop()
    fed.wait(lambda: logged("aggregation service unreachable"), "each agent to log the outage")
    started = time.monotonic()
    fed.services[0] = start_service(
        fed.root / "service", fed.port(0), fed.database_url, wait_s=START_S
    )  # the same port and database
    fed.wait(lambda: logged("aggregation service back"), "each agent to log the outage's end")
    back_s = time.monotonic() - started
    assert all(
        fed.urls[0] in _log(fed, name)[sizes[name] :] for name in fed.agents
    )  # the outage line names the address
    result = train(fed.urls, fed.token, tmp_path / "after", 2, secure=False, deadline_s=DEADLINE_S)
    assert all(set(HEALTHY) <= set(r["contributors"]) for r in result["rounds"])
    print(f"agents back {back_s:.1f}s after the service restarted")


def _silo_flow_runs(run_id: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["silo-training"])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"run:{run_id}"])),
        )


def test_a_cancelled_run_ends_the_silos_flow_runs_cancelled(
    fed: Federation, tmp_path: Path
) -> None:
    thread, _ = train_in_thread(
        fed.urls, fed.token, tmp_path / "models", 50, secure=False, deadline_s=DEADLINE_S
    )
    where = fed.wait(
        lambda: (r := current_round(fed)) and r[1] >= 2 and r, "the run to reach round 2"
    )
    run_id = where[0]
    out = fed.coord.cancel_run(run_id, "test: the coordinator cancels the run")
    assert out.status == "cancelled"
    fed.wait(lambda: not thread.is_alive(), "the coordinator's flow to end")

    expected = set(fed.agents)
    runs = fed.wait(
        lambda: (
            (found := _silo_flow_runs(run_id))
            and {_tag(r, "silo") for r in found} >= expected
            and all(r.state is not None and r.state.is_final() for r in found)
            and found
        ),
        "every silo's flow run of the cancelled run to end",
    )
    for flow_run in runs:
        silo = _tag(flow_run, "silo")
        assert flow_run.state is not None and flow_run.state.is_cancelled(), (silo, flow_run.state)
        assert "cancelled" in (flow_run.state.message or "")
        assert flow_run.name == f"{silo}-{run_id}"
        assert {"federation:heart", "dataset:heart_disease", "model:logreg"} <= set(flow_run.tags)
    with get_client(sync_client=True) as client:
        keys = {
            a.key
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(
                        any_=[
                            f"{s.replace('_', '-')}-{w}"
                            for s in HEALTHY
                            for w in ("metrics", "validation")
                        ]
                    )
                )
            )
        }
    assert keys == {
        f"{s.replace('_', '-')}-{w}" for s in HEALTHY for w in ("metrics", "validation")
    }


def _tag(flow_run: FlowRun, prefix: str) -> str:
    return next(t.split(":", 1)[1] for t in flow_run.tags if t.startswith(prefix + ":"))
