"""The whole federation as real processes on 127.0.0.1: the aggregation service, four silo
agents (one per UCI hospital) and the coordinator's Prefect flow, over real HTTP.

One federation (`shared`) serves the tests that leave it intact, one run after another: the
agents' start and data validation are paid once. Switzerland's policy there allows only logistic
regression, so an MLP run shows a policy refusal while logistic-regression runs train all four.
Tests that break data, slow a silo down or need PostgreSQL start their own, each in a file of
its own (test_e2e_*.py) so that pytest-xdist runs them beside this one. Waits end when the
federation stops making progress (support.progress), not at a fixed deadline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import prefect_api
from support.e2e_kill import kill_service_mid_round
from support.fault_helpers import HOSPITALS, MODEL, Federation, start_federation, train

from schemas import tensors
from schemas.specs import ModelSpec, param_shapes

# generous: a module's shared federation (processes, cold start) counts toward its first test,
# and on a loaded machine that alone can pass pytest's default 600 s; the waits inside fail
# sooner when the federation stops making progress
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
N_FEATURES = MODEL.n_features
SWISS_POLICY = {"switzerland": 'allowed_models = ["logreg"]\nmax_rounds_per_run = 100'}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> Iterator[Federation]:
    fed = start_federation(tmp_path_factory.mktemp("e2e"), prefect_api_url, policy=SWISS_POLICY)
    try:
        yield fed
    finally:
        fed.stop()


def test_four_hospitals_train_a_model_end_to_end(
    shared: Federation, tmp_path: Path, prefect_api_url: str
) -> None:
    result = train(shared.urls, shared.token, tmp_path / "models", rounds=4)
    entries = shared.coord.ledger()
    keys = shared.coord.ledger_keys()
    _assert_lineage_verifies(entries, keys, shared.root, result["run_id"])
    _assert_every_checkpoint_countersigned(shared, result["run_id"])
    rounds = result["rounds"]
    assert [r["kind"] for r in rounds] == ["train"] * 4 + ["evaluate"]
    assert all(sorted(r["contributors"]) == list(HOSPITALS) for r in rounds)
    losses = [r["loss"] for r in rounds]
    assert losses[-1] < losses[0], losses  # the federation learned something
    assert rounds[-1]["accuracy"] > 0.7
    saved = Path(result["model_path"]).read_bytes()
    assert hashlib.sha256(saved).hexdigest() == result["model_sha256"]
    tensors.decode_expected(saved, param_shapes(MODEL))
    # every silo recorded its part as one Prefect flow run, named after the silo and the run
    names = [f"{silo}-{result['run_id']}" for silo in HOSPITALS]
    ended = prefect_api.ended_flow_runs(prefect_api_url, names)
    assert ended == dict.fromkeys(names, "COMPLETED"), ended


def test_policy_refusal_is_shown_and_the_run_goes_on(shared: Federation, tmp_path: Path) -> None:
    mlp = ModelSpec(kind="mlp", n_features=N_FEATURES, hidden=(8,))
    # one round: the refusal comes with the run's first round, and the run goes on to evaluate
    result = train(shared.urls, shared.token, tmp_path / "models", rounds=1, model=mlp)
    assert [r["kind"] for r in result["rounds"]] == ["train", "evaluate"]
    first = result["rounds"][0]
    assert sorted(first["contributors"]) == ["cleveland", "hungary", "va_long_beach"]
    assert "allows models ['logreg']" in first["refused"]["switzerland"]


@pytest.mark.parametrize("secure", [False, True])
def test_service_killed_mid_round_loses_and_duplicates_nothing(
    shared: Federation, tmp_path: Path, secure: bool
) -> None:
    """On the shared federation (SQLite); test_e2e_service_kill_postgres.py has PostgreSQL."""
    kill_service_mid_round(shared, tmp_path / "models", secure)


def _assert_lineage_verifies(entries, keys, root: Path, run_id: str) -> None:  # type: ignore[no-untyped-def]
    """The service's ledger verifies, and every silo's own copy matches it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from schemas.ledger_verify import cross_check, directory_artifact_checker, verify_chain
    from silos.lineage_copy import load_records

    public = {k: Ed25519PublicKey.from_public_bytes(bytes.fromhex(v)) for k, v in keys.items()}
    report = verify_chain(entries, public, directory_artifact_checker(root / "service"))
    assert report.ok, report
    kinds = [e.kind for e in entries if e.run_id == run_id]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    for name in HOSPITALS:
        records = load_records(root / "silos" / name / "workspace")
        kinds_here = sorted(r.statement.kind for r in records if r.statement.run_id == run_id)
        # per round: a signed validation result; per training round: an acknowledged update
        assert kinds_here == ["update_accepted"] * 4 + ["validation_result"] * 5
        assert cross_check(records, entries, service_public_key=public["service"]).ok


def _assert_every_checkpoint_countersigned(fed: Federation, run_id: str) -> None:
    """Each round close and the run's end: every agent kept its countersigned checkpoint, and
    the service has every countersignature (they came back on the agents' task polls, the run
    end's at the flow's end)."""
    from schemas.ledger_export import load_ledger_export
    from silos.checkpoints import load_checkpoints

    book = load_ledger_export(fed.coord.ledger_export())
    ours = [a for a in book.checkpoints if a.checkpoint.run_id == run_id]
    assert [a.checkpoint.event for a in ours][-1] == "run_finished"
    assert len(ours) >= 5, ours  # four training rounds and the evaluation closed, then the end
    everyone = [f"silo:{name}" for name in HOSPITALS]
    assert all(sorted(c.silo for c in a.countersignatures) == everyone for a in ours), ours
    for name in HOSPITALS:
        kept = load_checkpoints(fed.root / "silos" / name / "workspace")
        assert [k.checkpoint for k in kept if k.checkpoint.run_id == run_id] == [
            a.checkpoint for a in ours
        ]
