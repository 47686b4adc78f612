"""A silo's part of a secure-histogram run (tree mode ``secure-hist``), step by step.

Steps, as the service hands them out (`schemas.wire.HistTask`, its `hist.stage`; each a Prefect
task of `silos.handlers.secure_hist`; the binary requests and adverts of a step come from the
run's inbox, `SiloClient.hist_inbox`):

* ``advertise``: check the run's `HistRunConfig` against this silo's policy and contract
  (the fine grid's feature ranges must be the ones this silo's pipeline derives), build the
  silo's `HistSilo` from its training rows, start the secure-aggregation session and send its
  signed keys;
* ``masked``: the vector of the open aggregation, masked: the setup vector (fine-grid
  counts, rows, label sum) or the histograms of one tree level (the silo first applies the
  previous tree's leaves and fetches the federation's cut points when it needs them), each
  entry sent at the bit width its federation sum needs (`schemas.secure_hist.packing`);
* ``consistency`` / ``unmask``: sign the survivor list; reveal what unmasking needs.

Everything that leaves the silo is masked, so the service only ever sees federation-wide sums.

A silo whose table is on Dask (`LocalData.dask`) joins with `advertise_dask`: its state is a
`silos.dask_hist.DaskHist`, one shard of rows per partition on the workers, whose vectors are
summed before they are fitted and masked, byte for byte the vectors of the pandas path.

The session's secrets and the silo's progress live in this agent process's memory only
(`_RUNS`), never on disk: an agent restarted in the middle of a run has lost them and cannot
answer any further aggregation, so it leaves the run (a refusal saying so). The service
recovers an aggregation it had joined from the other silos' answers, as for any dropout, and
the run goes on without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from schemas.contracts.loader import Contract
from schemas.contracts.stats import FederationStats
from schemas.secagg.exceptions import MessageFormatError
from schemas.secagg.session_messages import (
    AggregationRequest,
    SessionAdvert,
    SessionUnmaskRequest,
)
from schemas.secure_hist import packing
from schemas.secure_hist.errors import SecureHistError, Where
from schemas.secure_hist.protocol import (
    HistRunConfig,
    LevelRequest,
    TreeDone,
    cuts_from_json,
    to_modular,
)
from schemas.tasks import HistTask
from silos import hist_trainer
from silos.client import SiloClient
from silos.client_errors import Conflict
from silos.dask_hist import DaskHist
from silos.dask_table import DaskTable
from silos.features import FeaturePipeline
from silos.hist_binning import feature_ranges
from silos.hist_trainer import HistSilo
from silos.secagg import session
from silos.secagg.session import SessionClient, SessionConfig

log = logging.getLogger("fedsilo.silo")


Hist = HistSilo | DaskHist
"""A silo's rows in a run: in this process, or spread over its Dask workers."""


@dataclass
class SiloHistRun:
    """This silo's memory of one secure-hist run (session secrets, rows, margins)."""

    hist: Hist
    client: SessionClient
    trained: bool = False  # cut points received, rows binned
    finished: int = -1  # last tree whose leaves were applied to the margins
    sent: dict[str, int] = field(default_factory=dict)  # bytes per stage


_RUNS: dict[tuple[str, str], SiloHistRun] = {}


class LeaveRun(Exception):
    """This silo cannot (or by its policy must not) go on in the run: it refuses, saying why."""


def forget(silo: str, run_id: str) -> None:
    """Drop the run's secrets once the run ended."""
    _RUNS.pop((silo, run_id), None)


def _post(client: SiloClient, work: HistTask, stage: str, body: bytes, **query: object) -> None:
    try:
        client.hist_post(work.run_id, stage, body, **query)
    except Conflict as exc:  # and AlreadyAnswered: a retry whose first attempt arrived
        # out of turn: the service moved on (a deadline, a retry); the next task says what now
        log.info("silo %s: %s %s not taken: %s", client.silo, stage, work.run_id, exc.detail)


def _inbox(client: SiloClient, work: HistTask) -> list[bytes]:
    """The step's protocol messages: its request first (then, at setup, the adverts)."""
    frames = client.hist_inbox(work.run_id, work.hist.counter)
    if not frames:
        raise MessageFormatError(
            f"the service's inbox for aggregation {work.hist.counter} is empty; a "
            f"{work.hist.stage} step needs its request",
            run_id=work.run_id,
            stage=str(work.hist.stage),
            silo=client.silo,
        )
    return frames


def _check_config(config: HistRunConfig, work: HistTask, contract: Contract) -> None:
    stats = FederationStats.from_summed_moments(work.stats, contract) if work.stats else None
    ours = feature_ranges(FeaturePipeline.from_contract(contract, stats))
    theirs = np.asarray(config.ranges, dtype=np.float64)
    if theirs.shape != np.asarray(ours).shape or not np.allclose(theirs, ours, rtol=0, atol=1e-9):
        raise LeaveRun(
            f"the run's feature ranges {config.ranges} are not the ones contract "
            f"{contract.name!r} gives this silo ({ours}); refusing a grid it cannot verify"
        )


def advertise(
    client: SiloClient,
    work: HistTask,
    X: np.ndarray,
    y: np.ndarray,
    contract: Contract,
    min_rows_policy: int,
) -> None:
    """Join the run's session: check its config against the silo's contract and policy, build
    the silo's state from its training rows (X, y), send the session keys."""

    def rows(config: HistRunConfig) -> Hist:
        return HistSilo.create(client.silo, X, y, config, min_rows_policy)

    _join(client, work, contract, rows)


def advertise_dask(
    client: SiloClient, work: HistTask, table: DaskTable, contract: Contract, min_rows_policy: int
) -> None:
    """`advertise` for a table on the silo's Dask cluster: every partition is encoded on its
    worker and kept there as a shard of the run's state."""

    def shards(config: HistRunConfig) -> Hist:
        # the run's checks (features, labels, policy) here, where their errors are raised
        empty = np.empty((0, config.n_features), dtype=np.float32)
        HistSilo.create(client.silo, empty, np.empty(0), config, min_rows_policy)
        return DaskHist.create(
            table.client(),
            client.silo,
            table.partitions(),
            table.pipeline,
            config,
            min_rows_policy,
            table.path,
        )

    _join(client, work, contract, shards)


def _join(
    client: SiloClient,
    work: HistTask,
    contract: Contract,
    build: Callable[[HistRunConfig], Hist],
) -> None:
    info = work.hist
    if info.config is None:
        raise LeaveRun(f"the advertise step of run {work.run_id} carries no run configuration")
    hist_config = HistRunConfig.from_dict(dict(info.config))
    _check_config(hist_config, work, contract)
    try:
        state = build(hist_config)
    except SecureHistError as exc:
        raise LeaveRun(str(exc)) from exc
    keys = {k: bytes.fromhex(v) for k, v in info.roster_keys.items()}
    session_config = SessionConfig(
        work.run_id, tuple(info.roster), info.threshold, 64, info.consistency_check
    )
    session_client, advert = session.start_session(session_config, client.silo, client.key, keys)
    _RUNS[(client.silo, work.run_id)] = SiloHistRun(state, session_client)
    _post(client, work, "advertise", advert.to_bytes())


def _setup_vector(hist: Hist) -> np.ndarray:
    return hist.setup_vector() if isinstance(hist, DaskHist) else hist_trainer.setup_vector(hist)


def _rows(hist: Hist) -> int:
    return hist.rows() if isinstance(hist, DaskHist) else len(hist.y)


def _start_training(hist: Hist, cuts: list[np.ndarray], base: float | list[float]) -> None:
    if isinstance(hist, DaskHist):
        hist.start_training(cuts, base)
    else:
        hist_trainer.start_training(hist, cuts, base)


def _finish_tree(hist: Hist, done: TreeDone) -> None:
    if isinstance(hist, DaskHist):
        hist.finish_tree(done)
    else:
        hist_trainer.finish_tree(hist, done)


def _start_tree(hist: Hist, tree: int, restart: bool) -> None:
    if isinstance(hist, DaskHist):
        hist.start_tree(tree, restart)
    else:
        hist_trainer.start_tree(hist, tree, restart=restart)


def _level(hist: Hist, level: LevelRequest) -> tuple[np.ndarray, packing.Widths]:
    """The level's vector and its wire widths."""
    if isinstance(hist, DaskHist):
        return hist.level_vector(level), hist.wire_widths(level)
    return hist_trainer.level_vector(hist, level), hist_trainer.wire_widths(hist, level)


def _run(client: SiloClient, work: HistTask) -> SiloHistRun:
    run = _RUNS.get((client.silo, work.run_id))
    if run is None:
        raise LeaveRun(
            "this agent restarted during the secure-hist run: its session keys were held in "
            "memory only, so it cannot answer further aggregations and leaves the run"
        )
    return run


def _prepare_level(
    client: SiloClient, work: HistTask, run: SiloHistRun, level: LevelRequest
) -> None:
    """Cut points on first use; the previous tree's leaves; a new (or restarted) tree."""
    info = work.hist
    if not run.trained:
        answer = client.hist_cuts(work.run_id)
        cuts = cuts_from_json(str(answer["cuts"]).encode())
        raw = answer["base_score"]  # K margins for multi:softprob, else one number
        base = [float(v) for v in raw] if isinstance(raw, list) else float(str(raw))
        _start_training(run.hist, cuts, base)
        run.trained = True
    if level.depth != 0:
        return
    if level.tree > run.finished + 1:
        if info.previous is None:
            raise LeaveRun(f"tree {level.tree} starts but tree {level.tree - 1} never finished")
        done = TreeDone.from_json(info.previous.encode())
        _finish_tree(run.hist, done)
        run.finished = done.tree
    _start_tree(run.hist, level.tree, run.hist.tree == level.tree)


def masked(client: SiloClient, work: HistTask) -> None:
    """The open aggregation's vector (setup or one level), masked, with the level it answers."""
    info = work.hist
    run = _run(client, work)
    frames = _inbox(client, work)
    request = AggregationRequest.from_bytes(frames[0])
    query: dict[str, object] = {}
    where: Where = {"silo": client.silo}
    if info.level is None:
        if run.client.private is not None:  # the session's first aggregation
            adverts = [SessionAdvert.from_bytes(a) for a in frames[1:]]
            session.accept_adverts(run.client, adverts)
        if info.count_rows:
            x, widths = to_modular(np.array([float(_rows(run.hist))])), packing.full(1)
        else:
            x = _setup_vector(run.hist)
            widths = packing.setup_widths(run.hist.config, info.rows)
    else:
        level = LevelRequest.from_json(info.level.encode())
        _prepare_level(client, work, run, level)
        x, widths = _level(run.hist, level)
        nodes = ",".join(str(c.node) for c in level.compute)
        query = {"tree": level.tree, "depth": level.depth, "nodes": nodes}
        where = {**where, "tree": level.tree, "depth": level.depth}
    # each entry only as wide as the federation's sum needs; refuse rather than wrap
    x = packing.fit(x, widths, where)
    masked_msg = session.masked_input(run.client, request, x)
    message = packing.seal_masked(masked_msg, widths, run.client.identity)
    run.sent["masked"] = run.sent.get("masked", 0) + len(message)
    _post(client, work, "masked", message, **query)


def consistency(client: SiloClient, work: HistTask) -> None:
    info = work.hist
    run = _run(client, work)
    signed = session.sign_survivors(run.client, info.counter, info.survivors)
    _post(client, work, "consistency", signed.to_bytes())


def unmask(client: SiloClient, work: HistTask) -> None:
    run = _run(client, work)
    request = SessionUnmaskRequest.from_bytes(_inbox(client, work)[0])
    _post(client, work, "unmask", session.unmask(run.client, request).to_bytes())
