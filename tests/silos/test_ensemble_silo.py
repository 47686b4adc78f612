"""A silo's ensemble steps on its own arrays: the validation slice is fixed and disjoint, the
gradient is the mixture's on that slice, a tampered member is refused, and the evaluation
compares the ensemble with the silo's own member on the held-out rows."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from schemas.ensemble import (
    EnsembleArtifact,
    EnsembleSpec,
    Member,
    check_member_bytes,
    mixture_gradient,
    mixture_proba,
    personal_weights,
)
from schemas.specs import ModelSpec, RunSpec
from schemas.task_metrics import score
from silos.decline import declined_for
from silos.ensemble import (
    evaluate,
    load_ensemble,
    member_message,
    personal_ensemble,
    save_personal,
    split_validation,
    weight_gradient,
)
from silos.exceptions import DataError, ModelError
from silos.local_data import LocalData
from silos.local_models import LocalParams, train_local
from silos.personalize_gate import MIN_GROUP_ROWS

SPEC = RunSpec(
    federation="f",
    dataset="d",
    model=ModelSpec(kind="mlp", n_features=4, hidden=(4,)),
    rounds=2,
    ensemble=EnsembleSpec(kinds={"default": "logreg", "b": "lightgbm"}),
)


def _data(seed: int, n: int = 80) -> LocalData:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + 30, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=n + 30) > 0).astype(np.float32)
    return LocalData(X[:n], y[:n], X[n:], y[n:], 4, {}, "")


def _artifact(data: dict[str, LocalData], weights: list[float]) -> bytes:
    members = []
    for silo, d in sorted(data.items()):
        message, model = member_message(SPEC, SPEC.ensemble.kind_for(silo), d)  # type: ignore[union-attr]
        members.append(Member(silo=silo, sha256=model.sha256, **json.loads(message)))
    artifact = EnsembleArtifact(run_id="r", members=members, weights=weights, weight_round=0)
    return artifact.model_dump_json().encode()


def test_validation_slice_is_fixed_and_disjoint() -> None:
    d = _data(0)
    (X_fit, _), (X_val, y_val) = split_validation(d, 0.25, seed=3)
    (X_fit2, _), (X_val2, _) = split_validation(d, 0.25, seed=3)
    assert len(X_val) == 20 and len(X_fit) == 60
    np.testing.assert_array_equal(X_val, X_val2)
    np.testing.assert_array_equal(X_fit, X_fit2)
    rows = {r.tobytes() for r in X_fit}
    assert not any(r.tobytes() in rows for r in X_val)
    with pytest.raises(ModelError, match="at least 2 training rows"):
        split_validation(_data(0, n=1), 0.25, seed=0)


def test_gradient_and_evaluation_use_the_right_rows() -> None:
    data = {"a": _data(1), "b": _data(2)}
    ensemble = load_ensemble(_artifact(data, [0.3, 0.7]))
    assert [m.kind for m in ensemble.models] == ["logreg", "lightgbm"]
    grad, metrics = weight_gradient(SPEC, ensemble, data["a"])
    _, (X_val, y_val) = split_validation(data["a"], 0.3, SPEC.training.seed)
    probs = np.column_stack([m.predict_proba(X_val) for m in ensemble.models])
    np.testing.assert_allclose(grad, mixture_gradient(np.array([0.3, 0.7]), probs, y_val))
    assert metrics.n_test == len(y_val)
    ens_metrics, statement = evaluate("b", 4, ensemble, "ab" * 32, data["b"])
    own = ensemble.own("b")
    assert own is not None and statement.member_sha256 == own.sha256
    d = data["b"]
    assert statement.member_auc == score("binary", d.y_test, own.predict_proba(d.X_test))["auc"]
    assert statement.ensemble_auc == ens_metrics.auc and ens_metrics.n_test == len(d.y_test)


def test_a_tampered_member_is_refused() -> None:
    data = {"a": _data(1), "b": _data(2)}
    doc = json.loads(_artifact(data, [0.5, 0.5]))
    raw = base64.b64decode(doc["members"][1]["model_b64"])
    doc["members"][1]["model_b64"] = base64.b64encode(raw.replace(b"tree", b"TREE", 1)).decode()
    with pytest.raises(ModelError, match="member of silo 'b' does not match its sha256"):
        load_ensemble(json.dumps(doc).encode())


@pytest.mark.parametrize("kind", ["logreg", "mlp", "xgboost", "lightgbm"])
def test_member_bytes_are_checked_without_loading_them(kind: str) -> None:
    d = _data(3)
    model = train_local(kind, d.X_train, d.y_train, params=LocalParams(hidden=(3,), epochs=1))
    data = model.to_bytes()
    check_member_bytes(data, kind, 4)
    with pytest.raises(ValueError, match=f"the run asks for a {kind} of 5"):
        check_member_bytes(data, kind, 5)
    with pytest.raises(ValueError, match="format|header"):
        check_member_bytes(b"x" + data, kind, 4)
    head, _, payload = data.partition(b"\n")
    with pytest.raises(ValueError, match="parameter bytes|XGBoost|LightGBM"):
        check_member_bytes(head + b"\n" + payload[: len(payload) // 2], kind, 4)


def _non_finite(kind: str, payload: bytes) -> bytes:
    """`payload` with one leaf value or parameter made NaN."""
    if kind in ("logreg", "mlp"):
        params = np.frombuffer(payload, "<f4").copy()
        params[0] = np.nan
        return params.tobytes()
    if kind == "xgboost":
        doc = json.loads(payload)
        doc["learner"]["gradient_booster"]["model"]["trees"][0]["split_conditions"][-1] = np.nan
        return json.dumps(doc).encode()
    lines = payload.split(b"\n")
    i = next(i for i, line in enumerate(lines) if line.startswith(b"leaf_value="))
    lines[i] = b"leaf_value=nan " + lines[i].split(b" ", 1)[1]
    return b"\n".join(lines)


@pytest.mark.parametrize("kind", ["logreg", "mlp", "xgboost", "lightgbm"])
def test_non_finite_member_values_are_refused(kind: str) -> None:
    d = _data(3)
    model = train_local(kind, d.X_train, d.y_train, params=LocalParams(hidden=(3,), epochs=1))
    head, _, payload = model.to_bytes().partition(b"\n")
    with pytest.raises(ValueError, match="finite"):
        check_member_bytes(head + b"\n" + _non_finite(kind, payload), kind, 4)


def test_a_member_with_non_finite_outputs_fails_naming_its_silo() -> None:
    """Past the service's check (an older service, a library's own NaN), the mixture is not
    computed over a member whose probabilities are not finite: a ModelError names its silo."""
    data = {"a": _data(1), "b": _data(2)}
    doc = json.loads(_artifact(data, [0.5, 0.5]))
    raw = base64.b64decode(doc["members"][0]["model_b64"])
    head, _, payload = raw.partition(b"\n")
    bad = head + b"\n" + _non_finite("logreg", payload)
    doc["members"][0]["model_b64"] = base64.b64encode(bad).decode()
    doc["members"][0]["sha256"] = hashlib.sha256(bad).hexdigest()
    ensemble = load_ensemble(json.dumps(doc).encode())
    with pytest.raises(ModelError, match="member of silo 'a' gives non-finite"):
        weight_gradient(SPEC, ensemble, data["b"])
    with pytest.raises(ModelError, match="member of silo 'a' gives non-finite"):
        personal_ensemble(SPEC, ensemble, data["b"])


def test_a_silo_refines_the_weights_on_its_own_rows_and_keeps_them(tmp_path: Path) -> None:
    """The personal weights lower the mixture's loss on the silo's validation rows, move toward
    the member that fits them (a member trained on flipped labels loses weight), are the
    federation's with no steps, and are kept owner-only in the workspace under their sha256."""
    data = {"a": _data(1), "b": replace(_data(2), y_train=1 - _data(2).y_train)}
    ensemble = load_ensemble(_artifact(data, [0.5, 0.5]))
    personal = personal_ensemble(SPEC, ensemble, data["a"])
    _, (X_val, y_val) = split_validation(data["a"], 0.3, SPEC.training.seed)
    probs = ensemble.member_proba(X_val)

    def loss(w: list[float]) -> float:
        return float(score("binary", y_val, mixture_proba(np.array(w), probs))["loss"] or 0)

    w = personal.artifact.weights
    assert sum(w) == pytest.approx(1.0) and w[0] > 0.9  # the flipped member is dropped
    assert loss(w) < loss([0.5, 0.5])
    expected = personal_weights(np.array([0.5, 0.5]), probs, y_val, SPEC.ensemble.lr, 20)  # type: ignore[union-attr]
    np.testing.assert_allclose(w, expected)
    none = SPEC.model_copy(
        update={"ensemble": SPEC.ensemble.model_copy(update={"personal_steps": 0})}  # type: ignore[union-attr]
    )
    assert personal_ensemble(none, ensemble, data["a"]).artifact.weights == [0.5, 0.5]

    path, sha = save_personal(tmp_path, "r1", personal)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert EnsembleArtifact.model_validate_json(path.read_bytes()).weights == w
    _, statement = evaluate("a", 4, ensemble, "ab" * 32, data["a"], (personal, sha))
    d = data["a"]
    # only the sha256 and metrics leave: with the public members, the weights would be the model
    assert statement.personal_sha256 == sha
    assert "weights" not in statement.model_dump_json()
    assert (
        statement.personal_auc == score("binary", d.y_test, personal.predict_proba(d.X_test))["auc"]
    )
    assert statement.ensemble_auc is not None and statement.personal_auc is not None
    assert statement.personal_auc >= statement.ensemble_auc  # the flipped member hurt 'a'


def test_a_weight_round_sends_no_metrics_and_the_count_it_advertised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only the summed gradient leaves a silo in a weight round (its validation-slice metrics
    stay here), with the validation row count the silo advertised (the service refuses
    another): the gradient is the mean over those rows."""
    from types import SimpleNamespace

    import silos.handlers.ensemble as handler
    from silos.handlers.secagg import advertised_count

    data = {"a": _data(1), "b": _data(2)}
    artifact = _artifact(data, [0.4, 0.6])
    sent: dict[str, object] = {}

    class Client:
        def download_model(self, run_id: str, version: int) -> bytes:
            return artifact

        def submit_masked(self, *args: object) -> dict[str, object]:
            sent["n"], sent["metrics"] = args[3], args[5]
            return {"digest": "d"}

    monkeypatch.setattr(handler.secure_round, "masked_update", lambda *a, **k: b"masked")
    monkeypatch.setattr(handler, "keep_receipt", lambda *a, **k: None)
    monkeypatch.setattr(handler, "get_run_logger", lambda: SimpleNamespace(info=print))
    ctx = SimpleNamespace(client=Client(), key=None, workspace=tmp_path, data=data["a"])
    work = SimpleNamespace(
        spec=SPEC, run_id="r", round=2, model_version=1, secagg=SimpleNamespace(weight=0.5, clip=9)
    )
    handler.weights_round(ctx, work)  # type: ignore[arg-type]
    _, (_, y_val) = split_validation(data["a"], SPEC.ensemble.val_fraction, SPEC.training.seed)  # type: ignore[union-attr]
    assert sent == {"n": len(y_val), "metrics": None}
    assert advertised_count(ctx, work) == len(y_val) < len(data["a"].y_train)  # type: ignore[arg-type]
    statistics = SimpleNamespace(spec=SPEC, model_version=0)  # an ensemble run's version-0 round
    assert advertised_count(ctx, statistics) == len(data["a"].y_train)  # type: ignore[arg-type]


def _labelled(n: int, negatives: np.ndarray, seed: int = 4) -> LocalData:
    """`_data` rows with exactly the rows `negatives` negative (and told apart by feature 0)."""
    d = _data(seed, n)
    y = np.ones(n, dtype=np.float32)
    y[negatives] = 0
    X = d.X_train.copy()
    X[negatives, 0] -= 1.5
    return replace(d, X_train=X, y_train=y)


def test_a_small_silos_validation_rows_hold_both_classes() -> None:
    """14 rows, 3 negatives where a plain seeded permutation put its fit rows: the validation
    rows were all positive. Drawn per class, each class is on both sides."""
    seed = SPEC.training.seed
    d = _labelled(14, np.random.default_rng(seed).permutation(14)[-3:])
    (_, y_fit), (_, y_val) = split_validation(d, 0.3, seed)
    assert set(y_val) == set(y_fit) == {0.0, 1.0}
    assert len(y_fit) + len(y_val) == 14


def test_a_personal_ensemble_keeps_the_federations_weights_without_evidence_of_a_class() -> None:
    """Two negatives among the validation rows (MIN_GROUP_ROWS is 5): 20 steps at lr 4 on them
    moved the weights far from the federation's; they now stay as they are."""
    data = {"a": _data(1), "b": replace(_data(2), y_train=1 - _data(2).y_train)}
    ensemble = load_ensemble(_artifact(data, [0.5, 0.5]))
    small = _labelled(30, np.arange(6))
    _, (_, y_val) = split_validation(small, SPEC.ensemble.val_fraction, SPEC.training.seed)  # type: ignore[union-attr]
    assert (y_val == 0).sum() == 2 < MIN_GROUP_ROWS
    assert personal_ensemble(SPEC, ensemble, small).artifact.weights == [0.5, 0.5]


def test_a_member_round_on_rows_of_one_class_declines() -> None:
    """A member fit on positives alone predicts a constant: the silo declines the members
    round (its data, for the round) instead of uploading it."""
    d = replace(_data(3, n=8), y_train=np.ones(8, dtype=np.float32))
    with pytest.raises(DataError, match="fit rows are all of class 1") as raised:
        member_message(SPEC, "xgboost", d)
    declined = declined_for(raised.value)
    assert (declined.scope, declined.cause) == ("round", "data")


def test_a_silo_whose_table_changed_since_its_member_declines_the_later_rounds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same rows exported in another order re-draw the validation and held-out rows by
    position, so they overlap the rows the silo's member was fit on in the members round: the
    weight and evaluation rounds decline while the table's fingerprint differs from the one
    recorded with the member, and go on once it is the same table again."""
    from types import SimpleNamespace

    import silos.handlers.ensemble as handler

    d = replace(_data(1), data_sha256="a" * 64)
    order = np.random.default_rng(1).permutation(len(d.y_train))
    moved = replace(d, X_train=d.X_train[order], y_train=d.y_train[order], data_sha256="b" * 64)
    sent: dict[str, object] = {}

    class Client:
        def submit_extension(self, run_id: str, round_: int, message: bytes) -> dict[str, str]:
            sent["extension"] = message
            return {}

        def download_model(self, run_id: str, version: int) -> bytes:
            return artifact

        def submit_masked(self, *args: object) -> dict[str, object]:
            sent["masked"] = True
            return {"digest": "d"}

    monkeypatch.setattr(handler.secure_round, "masked_update", lambda *a, **k: b"masked")
    monkeypatch.setattr(handler, "keep_receipt", lambda *a, **k: None)
    monkeypatch.setattr(handler, "get_run_logger", lambda: SimpleNamespace(info=print))
    ctx = SimpleNamespace(client=Client(), key=None, workspace=tmp_path, silo="a", data=d)
    members = SimpleNamespace(spec=SPEC, run_id="r", round=1)
    handler.member_round(ctx, members, handler.MemberBody(kind="logreg"))  # type: ignore[arg-type]
    doc = json.loads(sent["extension"])  # type: ignore[arg-type]
    sha = hashlib.sha256(base64.b64decode(doc["model_b64"])).hexdigest()
    other, model = member_message(SPEC, "logreg", _data(2))
    artifact = (
        EnsembleArtifact(
            run_id="r",
            members=[
                Member(silo="a", sha256=sha, **doc),
                Member(silo="b", sha256=model.sha256, **json.loads(other)),
            ],
            weights=[0.5, 0.5],
            weight_round=0,
        )
        .model_dump_json()
        .encode()
    )
    work = SimpleNamespace(
        spec=SPEC, run_id="r", round=2, model_version=1, secagg=SimpleNamespace(weight=1, clip=9)
    )
    ctx.data = moved
    with pytest.raises(DataError, match="table changed since its ensemble member was trained"):
        handler.weights_round(ctx, work)  # type: ignore[arg-type]
    closing = SimpleNamespace(spec=SPEC, run_id="r", round=3, model_version=2)
    with pytest.raises(DataError, match="table changed since its ensemble member was trained"):
        handler.evaluate_round(ctx, closing, handler.EvaluateBody())  # type: ignore[arg-type]
    assert "masked" not in sent
    ctx.data = d  # the table as it was
    handler.weights_round(ctx, work)  # type: ignore[arg-type]
    assert sent["masked"] is True
