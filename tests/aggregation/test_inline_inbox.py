"""A secure-aggregation stage's task brings what its silo fetches first, when the poll asks
(`schemas.tasks.INLINE_INBOX`): the adverts, the silo's shares, its unmask request. A whole
round runs without one `GET .../secagg/...` and aggregates exactly; the frames are the ones
the GET answers; a poll that does not ask, or a stage whose messages are too big, fetches as
before. Over real HTTP, both backends."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.live_service import recorded
from support.secure_toy import DIM, SILOS, aggregated, secure_toy_run

from aggregation.service import tasks as service_tasks
from flows.service_client import CoordinatorClient
from schemas.frames import unpack_frames
from silos import secure_round
from silos.client import SiloClient


@dataclass
class Fed:
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str
    gets: list[str]  # the secagg GETs any silo made


@pytest.fixture
def fed(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    with secure_toy_run(db_url, tmp_path) as (coord, silos, run_id):
        gets: list[str] = []
        for client in silos.values():
            recorded(client, lambda method, path: method == "GET" and "/secagg/" in path, gets)
        yield Fed(coord, silos, run_id, gets)


def _stage(fed: Fed, ws: Path, kind: str, act: Any) -> None:
    for name, client in fed.silos.items():
        work = client.next_task(wait_s=10, run_id=fed.run_id)
        assert work is not None and work.type == kind, (name, work)
        act(client, work, ws / name)


def test_a_secure_round_fetches_no_message_and_aggregates_exactly(fed: Fed, tmp_path: Path) -> None:
    ws = tmp_path / "silo-ws"
    rng = np.random.default_rng(5)
    deltas = {n: rng.uniform(-0.5, 0.5, DIM) for n in SILOS}
    _stage(fed, ws, "secagg_advertise", lambda c, w, d: secure_round.advertise(c, c.key, w, d, 100))
    _stage(fed, ws, "secagg_share", lambda c, w, d: secure_round.share(c, c.key, w, d))

    def masked(client: SiloClient, work: Any, where: Path) -> None:
        weighted = deltas[client.silo] * work.secagg.weight
        message = secure_round.masked_update(client, client.key, work, where, weighted)
        client.submit_masked(fed.run_id, 1, message, 100, 0.01, None)

    _stage(fed, ws, "secagg_masked", masked)
    _stage(fed, ws, "secagg_unmask", lambda c, w, d: secure_round.unmask(c, c.key, w, d))
    assert fed.gets == []  # every stage's messages came with its task
    assert fed.coord.close_round(fed.run_id, 1).status == "aggregated"
    flat = aggregated(fed.coord, fed.run_id, 1)
    # FedAvg of equal weights, within the quantizer's step
    np.testing.assert_allclose(flat, np.mean(list(deltas.values()), axis=0), atol=1e-4)


def test_the_inline_frames_are_the_ones_the_get_answers(fed: Fed, tmp_path: Path) -> None:
    ws = tmp_path / "silo-ws"
    _stage(fed, ws, "secagg_advertise", lambda c, w, d: secure_round.advertise(c, c.key, w, d, 100))
    a = fed.silos["a"]
    asked = f"/v1/silo/tasks?wait=5&run_id={fed.run_id}"
    plain = a.request("GET", asked).json()
    assert plain["type"] == "secagg_share" and plain["inbox_b64"] is None
    inline = a.request("GET", asked + "&inline_inbox=true").json()
    fetched = a.secagg_get(fed.run_id, 1, "adverts")
    assert unpack_frames(base64.b64decode(inline["inbox_b64"])) == fetched
    assert fed.gets == [f"/v1/silo/runs/{fed.run_id}/rounds/1/secagg/adverts"]


def test_messages_above_the_limit_are_fetched(
    fed: Fed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_tasks, "INLINE_INBOX_MAX_BYTES", 10)
    ws = tmp_path / "silo-ws"
    _stage(fed, ws, "secagg_advertise", lambda c, w, d: secure_round.advertise(c, c.key, w, d, 100))
    _stage(fed, ws, "secagg_share", lambda c, w, d: secure_round.share(c, c.key, w, d))
    assert fed.gets == [f"/v1/silo/runs/{fed.run_id}/rounds/1/secagg/adverts"] * 3
