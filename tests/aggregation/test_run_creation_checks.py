"""A run is refused at creation (409, naming the option and the run's participants) when what
it asks can never hold among its silos, rather than accepted and quietly run otherwise:
per-silo model kinds keyed by a name no participant has (that silo would train the default),
asynchronous buffers of K above the silos (each would idle to its deadline), a secure-sum
threshold above the silos (it used to be lowered to fit). A threshold that silos leaving the
run make unmeetable fails the round when it opens, as a short asynchronous buffer does."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, publish_shipped_contract

from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.distill import DistillSpec
from schemas.ensemble import EnsembleSpec
from schemas.specs import AsyncSpec, ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RoundOpen, RunCreate
from silos.client import SiloClient
from silos.client_errors import Conflict

MODEL = ModelSpec(kind="logreg", n_features=3)


def _federation(url: str, *names: str) -> tuple[CoordinatorClient, str, dict[str, SiloClient]]:
    """A federation of its own (the module's tests share one service) with approved `names`."""
    coord = coordinator(url)
    federation = f"f-{uuid.uuid4().hex[:12]}"
    coord.create_federation(federation)
    return coord, federation, {n: enrolled_silo(url, coord, federation, n) for n in names}


def _spec(federation: str, **update: object) -> RunSpec:
    base = RunSpec(federation=federation, dataset="toy", model=MODEL, rounds=2, min_silos=2)
    return RunSpec.model_validate({**base.model_dump(), **update})


def _stats_spec(coord: CoordinatorClient, federation: str, **update: object) -> RunSpec:
    """A run with a federation statistics round: its contract is published at the service."""
    publish_shipped_contract(coord, federation, "heart_disease")
    model = ModelSpec(kind="logreg", n_features=35)
    return _spec(
        federation, dataset="heart_disease", model=model, federation_statistics=True, **update
    )


def _refused(coord: CoordinatorClient, spec: RunSpec) -> str:
    with pytest.raises(Conflict) as err:
        coord.create_run(RunCreate(spec=spec))
    assert err.value.status == 409
    assert coord.list_runs(spec.federation) == []  # nothing half-made
    return err.value.detail


@pytest.mark.parametrize("flag", ["ensemble", "distill"])
def test_member_kinds_keyed_by_no_participant_are_refused(api_service_url: str, flag: str) -> None:
    """`--ensemble default=logreg,Cleveland=xgboost` used to run with silo `cleveland`
    training logreg: the display name matched no silo and the key was silently ignored."""
    coord, federation, _ = _federation(api_service_url, "cleveland", "hungary")
    make = EnsembleSpec if flag == "ensemble" else DistillSpec

    def spec(kinds: dict[str, str]) -> RunSpec:
        members = {flag: make(kinds=kinds)}  # type: ignore[arg-type]
        if flag == "distill":  # its reference rows come from the federation statistics
            return _stats_spec(coord, federation, **members)
        return _spec(federation, **members)

    detail = _refused(
        coord, spec({"default": "logreg", "Cleveland": "xgboost", "hungary": "mlp", "bern": "mlp"})
    )
    assert f"{flag}.kinds names 'Cleveland', 'bern'" in detail
    assert "participants are cleveland, hungary" in detail
    assert f"federation {federation!r}" in detail
    run = coord.create_run(RunCreate(spec=spec({"default": "logreg", "cleveland": "xgboost"})))
    assert run.participants == ["cleveland", "hungary"]


def test_kinds_are_checked_against_the_named_participants(api_service_url: str) -> None:
    """An approved silo left out of `silos` is no participant: its kind is refused too."""
    coord, federation, _ = _federation(api_service_url, "a", "b", "c")
    spec = _spec(
        federation,
        silos=["a", "b"],
        ensemble=EnsembleSpec(kinds={"default": "mlp", "c": "xgboost"}),
    )  # type: ignore[arg-type]
    detail = _refused(coord, spec)
    assert "ensemble.kinds names 'c'" in detail and "participants are a, b" in detail


def test_a_buffer_size_above_the_participants_is_refused(api_service_url: str) -> None:
    coord, federation, _ = _federation(api_service_url, "a", "b")
    for secure in (True, False):
        sa = SecureAggregationSpec(enabled=secure)
        detail = _refused(
            coord, _spec(federation, secure_aggregation=sa, asynchronous=AsyncSpec(buffer_size=3))
        )
        assert "asynchronous.buffer_size (K) 3" in detail
        assert "2 participating silos (a, b)" in detail and "at most 2" in detail
    spec = _spec(federation, asynchronous=AsyncSpec(buffer_size=2))
    assert coord.create_run(RunCreate(spec=spec)).run_id


def test_a_threshold_above_the_participants_is_refused(api_service_url: str) -> None:
    """A synchronous secure run of threshold 3 among 2 silos used to aggregate with the
    threshold lowered to 2; an asynchronous one treated it as a minimum cohort."""
    coord, federation, _ = _federation(api_service_url, "a", "b")
    three = SecureAggregationSpec(threshold=3)
    clear = SecureAggregationSpec(enabled=False, threshold=3)
    for spec in (
        _spec(federation, secure_aggregation=three),
        _spec(federation, secure_aggregation=three, asynchronous=AsyncSpec(buffer_size=3)),
        # federation statistics are summed with the same threshold, updates or not
        _stats_spec(coord, federation, secure_aggregation=clear),
    ):
        detail = _refused(coord, spec)
        assert "secure_aggregation.threshold 3" in detail
        assert "its 2 participating silos (a, b)" in detail and "never lowered" in detail
    trees = {"kind": "xgboost", "mode": "secure-hist", "n_features": 35}
    hist = _spec(
        federation,
        dataset="heart_disease",  # published above
        model=None,
        trees={**trees, "secure_hist": {"threshold": 3}},
        secure_aggregation=SecureAggregationSpec(enabled=False),  # trees seal theirs
    )
    assert "trees.secure_hist.threshold 3" in _refused(coord, hist)
    # updates in the clear: the threshold is not used
    assert coord.create_run(RunCreate(spec=_spec(federation, secure_aggregation=clear))).run_id
    ok = SecureAggregationSpec(threshold=2)
    assert coord.create_run(RunCreate(spec=_spec(federation, secure_aggregation=ok))).run_id


def test_a_threshold_above_a_secagg_plus_neighbourhood_is_refused(api_service_url: str) -> None:
    """Under SecAgg+ the threshold applies within each neighbourhood of degree + 1 silos."""
    coord, federation, _ = _federation(api_service_url, "a", "b", "c", "d")
    sparse = SecureAggregationSpec(threshold=4, degree=2)
    detail = _refused(coord, _spec(federation, secure_aggregation=sparse))
    assert "the 3 silos of a SecAgg+ neighbourhood (degree 2)" in detail
    assert "raise the degree" in detail
    fits = SecureAggregationSpec(threshold=3, degree=2)
    assert coord.create_run(RunCreate(spec=_spec(federation, secure_aggregation=fits))).run_id


def test_a_round_whose_silos_left_below_the_threshold_fails_at_open(api_service_url: str) -> None:
    """c refuses the run before round 1: 2 silos remain for threshold 3. The round used to run
    with the threshold lowered to 2; it fails, naming the threshold and who is left."""
    coord, federation, silos = _federation(api_service_url, "a", "b", "c")
    spec = _spec(federation, secure_aggregation=SecureAggregationSpec(threshold=3))
    run = coord.create_run(RunCreate(spec=spec))
    zeros = {n: np.zeros(s, dtype=np.float32) for n, s in param_shapes(MODEL)}
    coord.put_initial_model(run.run_id, tensors.encode(zeros))
    coord.start_run(run.run_id)
    silos["c"].refuse(run.run_id, "policy: not this run")
    rnd = coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=60))
    assert rnd.status == "failed", rnd
    assert rnd.reason is not None
    assert f"round 1 of run {run.run_id}: secure_aggregation.threshold 3" in rnd.reason
    assert "2 active silos (a, b)" in rnd.reason and "never lowered" in rnd.reason
    assert silos["a"].next_task(wait_s=0, run_id=run.run_id) is None
