"""Personalization at the silo: validation split, early stopping, Ditto, FedPer heads, trees."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flows.baselines import prepare_silo_arrays
from flows.demo_config import DEMO_SPLIT_SEED, DEMO_TEST_FRACTION, heart_demo_spec
from schemas.contracts import load_contract
from schemas.specs import ModelSpec, PersonalizationSpec, RunSpec
from schemas.tree_params import TreeSpec
from silos.demo_data import heart_disease_silos
from silos.exceptions import ModelError
from silos.features import FeaturePipeline
from silos.handlers import personalize as handler
from silos.local_data import LocalData
from silos.personalize import Split, early_stopped, personalize, split_rows
from silos.personalize_gate import MIN_GROUP_ROWS
from silos.personalize_state import (
    HEAD_FILE,
    keep_head_local,
    load_head,
    personal_dir,
    start_params,
)
from silos.personalize_trees import personalize_trees
from silos.torch_model import build_model, get_params
from silos.trainer import evaluate, train_local
from silos.tree_trainer import feature_names_of, name_features, train_trees


@pytest.fixture(scope="module")
def heart() -> dict:  # type: ignore[type-arg]
    contract = load_contract("heart_disease")
    return prepare_silo_arrays(heart_disease_silos(), contract, DEMO_TEST_FRACTION, DEMO_SPLIT_SEED)


def _nf() -> int:
    return FeaturePipeline.from_contract(load_contract("heart_disease")).n_features


def _rows(heart: dict, silo: str, seed: int = 0) -> Split:  # type: ignore[type-arg]
    s = heart[silo]
    return split_rows("binary", s.X_train, s.y_train, s.X_test, s.y_test, 0.25, seed)


def _spec(method: str, hidden: tuple[int, ...] = ()) -> RunSpec:
    base = heart_demo_spec(_nf())
    model = ModelSpec(kind="mlp" if hidden else "logreg", n_features=_nf(), hidden=hidden)
    return base.model_copy(
        update={"model": model, "rounds": 5, "personalize": PersonalizationSpec(method=method)}  # type: ignore[arg-type]
    )


def test_split_keeps_every_row_once_and_both_classes_on_both_sides(heart: dict) -> None:  # type: ignore[type-arg]
    s = heart["switzerland"]  # few negatives: the hardest silo to stratify
    rows = _rows(heart, "switzerland")
    assert len(rows.y_fit) + len(rows.y_val) == len(s.y_train)
    assert set(np.unique(rows.y_val)) == {0.0, 1.0} == set(np.unique(rows.y_fit))
    both = np.concatenate([rows.X_fit, rows.X_val])
    assert sorted(map(bytes, both)) == sorted(map(bytes, s.X_train))
    assert np.array_equal(_rows(heart, "switzerland").y_val, rows.y_val)  # seeded
    with pytest.raises(ModelError, match="at least 2 training rows"):
        split_rows("binary", s.X_train[:1], s.y_train[:1], s.X_test, s.y_test, 0.25, 0)


def test_early_stopping_keeps_the_start_when_no_epoch_beats_it(heart: dict) -> None:  # type: ignore[type-arg]
    spec = _spec("finetune")
    rows = _rows(heart, "cleveland")
    start = get_params(build_model(spec.torch_model, seed=0))
    # a learning rate this small moves nothing measurable: epoch 0 must win the tie
    tiny = spec.training.model_copy(update={"lr": 1e-12})
    params, epoch, _, _ = early_stopped(spec.torch_model, start, rows, tiny, 3)
    assert epoch == 0
    assert all(np.array_equal(a, b) for a, b in zip(params, start, strict=True))
    trained, epoch, _, _ = early_stopped(spec.torch_model, start, rows, spec.training, 10)
    assert epoch > 0  # from random weights, training helps on the validation rows
    auc = evaluate(spec.torch_model, trained, rows.X_test, rows.y_test).auc
    assert auc is not None and auc > 0.8


def test_the_gate_keeps_the_start_on_too_little_evidence_and_not_on_enough(heart: dict) -> None:  # type: ignore[type-arg]
    spec = _spec("finetune")
    start = get_params(build_model(spec.torch_model, seed=0))  # random: training helps
    tiny = _rows(heart, "switzerland")  # 2 negatives among its validation rows
    assert (tiny.y_val == 0).sum() < MIN_GROUP_ROWS
    free = early_stopped(spec.torch_model, start, tiny, spec.training, 10)
    gated = early_stopped(spec.torch_model, start, tiny, spec.training, 10, min_confidence=0.95)
    assert free.epoch == gated.best_epoch > 0 and free.confidence is None
    assert gated.epoch == 0 and gated.confidence == 0.0
    assert all(np.array_equal(a, b) for a, b in zip(gated.params, start, strict=True))
    big = _rows(heart, "cleveland")  # 57 validation rows, both classes well represented
    gated = early_stopped(spec.torch_model, start, big, spec.training, 10, min_confidence=0.95)
    assert gated.epoch == gated.best_epoch > 0 and gated.confidence is not None
    assert gated.confidence >= 0.95


def test_ditto_stays_closer_to_the_global_model_than_plain_finetuning(heart: dict) -> None:  # type: ignore[type-arg]
    spec = _spec("ditto")
    rows = _rows(heart, "hungary")
    glob = train_local(
        spec.torch_model,
        get_params(build_model(spec.torch_model)),
        rows.X_fit,
        rows.y_fit,
        spec.training,
    ).params
    free = early_stopped(spec.torch_model, glob, rows, spec.training, 20, ditto_lambda=0.0).params
    pulled = early_stopped(spec.torch_model, glob, rows, spec.training, 20, ditto_lambda=5.0).params

    def dist(ps: list[np.ndarray]) -> float:
        return float(sum(((p - g) ** 2).sum() for p, g in zip(ps, glob, strict=True)))

    assert dist(pulled) <= dist(free)


@pytest.mark.parametrize("method", ["finetune", "ditto", "fedper"])
def test_personalize_scores_three_models_on_the_silos_holdout(heart: dict, method: str) -> None:  # type: ignore[type-arg]
    spec = _spec(method, hidden=(8,) if method == "fedper" else ())
    rows = _rows(heart, "va_long_beach")
    glob = get_params(build_model(spec.torch_model, seed=3))
    head = [np.ones_like(glob[-2]), np.zeros_like(glob[-1])] if method == "fedper" else None
    out = personalize(spec, glob, rows, head)
    assert out.global_metrics == evaluate(spec.torch_model, glob, rows.X_test, rows.y_test)
    assert out.personalized == evaluate(spec.torch_model, out.params, rows.X_test, rows.y_test)
    assert out.n_fit + out.n_val == len(heart["va_long_beach"].y_train)
    assert out.local_only.n_test == len(rows.y_test)
    if method == "fedper" and out.steps == 0:  # the silo's own head, not the global one
        np.testing.assert_array_equal(out.params[-2], head[0])  # type: ignore[index]


def test_fedper_hooks_keep_the_head_at_the_silo(tmp_path: Path) -> None:
    spec = _spec("fedper", hidden=(4,))
    glob = get_params(build_model(spec.torch_model))
    assert start_params(tmp_path, spec, "run1", glob) is glob  # no head before round 1
    trained = [p + 1.0 for p in glob]
    delta = [t - g for t, g in zip(trained, glob, strict=True)]
    sent = keep_head_local(tmp_path, spec, "run1", trained, delta)
    assert all(not d.any() for d in sent[-2:]) and all(d.all() for d in sent[:-2])
    assert (personal_dir(tmp_path, "run1") / HEAD_FILE).exists()
    nxt = start_params(tmp_path, spec, "run1", glob)
    np.testing.assert_array_equal(nxt[-2], trained[-2])
    np.testing.assert_array_equal(nxt[0], glob[0])
    plain = _spec("finetune", hidden=(4,))
    assert keep_head_local(tmp_path, plain, "run2", trained, delta) is delta


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_trees_continue_boosting_from_the_global_model(heart: dict, kind: str) -> None:  # type: ignore[type-arg]
    spec = TreeSpec(kind=kind, n_features=_nf(), trees_per_round=5, params={"max_depth": 3})  # type: ignore[arg-type]
    pooled = [heart[s] for s in ("cleveland", "hungary")]
    X = np.concatenate([s.X_train for s in pooled])
    y = np.concatenate([s.y_train for s in pooled])
    glob = train_trees(spec, None, X, y).model
    rows = _rows(heart, "va_long_beach")
    out = personalize_trees(spec, glob, rows, max_trees=8)
    assert 0 <= out.steps == out.best_steps <= 8 and out.confidence is None
    if out.steps == 0:
        assert out.personalized == out.global_metrics
    else:
        assert out.personalized != out.global_metrics
    assert out.local_only.n_test == out.global_metrics.n_test == len(rows.y_test)
    # the gate: VA Long Beach's 38 validation rows show the extra trees' gain, Switzerland's
    # (2 negatives) cannot, so it keeps the global model though its best is 8 more trees
    gated = personalize_trees(spec, glob, rows, max_trees=8, min_confidence=0.95)
    assert gated.steps == gated.best_steps == 8 and (gated.confidence or 0) >= 0.95
    swiss = personalize_trees(spec, glob, _rows(heart, "switzerland"), 8, min_confidence=0.95)
    assert swiss.steps == 0 < swiss.best_steps and swiss.confidence == 0.0
    assert swiss.personalized == swiss.global_metrics


def test_spec_rejects_personalization_that_does_not_fit_the_model() -> None:
    base = heart_demo_spec(_nf())
    with pytest.raises(ValueError, match="logreg model has no hidden layer"):
        RunSpec.model_validate({**base.model_dump(), "personalize": {"method": "fedper"}})
    tree = {
        **base.model_dump(exclude={"model"}),
        "trees": {"kind": "xgboost", "n_features": _nf(), "params": {}},
        "secure_aggregation": {"enabled": False},
        "personalize": {"method": "ditto"},
    }
    with pytest.raises(ValueError, match="tree runs personalize by continued boosting"):
        RunSpec.model_validate(tree)
    RunSpec.model_validate({**tree, "personalize": {"method": "finetune"}})


def test_a_large_ditto_lambda_keeps_the_model_finite_and_near_the_global_one(
    heart: dict,  # type: ignore[type-arg]
) -> None:
    """lr x lambda far above 2 made the plain gradient step on Ditto's pull overshoot the
    global model and diverge (NaN, then roc_auc raised); the proximal step holds the model at
    the global one however large lambda is."""
    spec = _spec("ditto")
    rows = _rows(heart, "hungary")
    glob = get_params(build_model(spec.torch_model, seed=0))
    for lam, lr in ((100.0, None), (1000.0, None), (1000.0, 1e38)):  # lr x lambda overflows
        p = PersonalizationSpec(
            method="ditto", ditto_lambda=lam, lr=lr, max_epochs=5, min_confidence=0
        )
        out = personalize(spec.model_copy(update={"personalize": p}), glob, rows)
        assert all(np.isfinite(a).all() for a in out.params)
        drift = sum(float(((a - g) ** 2).sum()) for a, g in zip(out.params, glob, strict=True))
        assert drift < 1e-3


def test_an_epoch_that_diverges_ends_training_and_the_best_finite_one_is_kept(
    heart: dict,  # type: ignore[type-arg]
) -> None:
    spec = _spec("finetune")
    rows = _rows(heart, "cleveland")
    start = get_params(build_model(spec.torch_model, seed=0))
    wild = spec.training.model_copy(update={"lr": 1e38})  # logits ~1e38: an infinite loss
    out = early_stopped(spec.torch_model, start, rows, wild, 5)
    assert out.epoch == 0
    assert all(np.array_equal(a, b) for a, b in zip(out.params, start, strict=True))


def test_a_failed_personalization_is_logged_naming_the_silo_and_the_evaluation_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Any error of the personalization step (here a library's ValueError, not a ModelError)
    is logged with the silo and its cause; the silo's evaluation of the global model is still
    reported, and no personalized statement is signed."""
    import silos.handlers.plain as plain
    import silos.personalize
    from schemas.tasks import EvaluateTask

    spec = _spec("ditto")
    glob = get_params(build_model(spec.torch_model, seed=0))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, _nf())).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.float32)

    def fails(*args: object, **kwargs: object) -> None:
        raise ValueError("scores contain NaN or infinity")

    warnings: list[str] = []
    logger = SimpleNamespace(
        warning=lambda msg, *a: warnings.append(msg % a), debug=lambda *a, **k: None
    )
    reported: list[object] = []
    monkeypatch.setattr(silos.personalize, "personalize", fails)
    monkeypatch.setattr(handler, "get_run_logger", lambda: logger)
    monkeypatch.setattr(plain, "fetch_global_model", lambda *a: glob)
    monkeypatch.setattr(plain, "report_evaluation", lambda ctx, work, m: reported.append(m) or m)
    ctx = SimpleNamespace(
        data=LocalData(X[:60], y[:60], X[60:], y[60:], _nf(), {}, ""),
        workspace=tmp_path,
        silo="hospital-a",
        client=None,  # a signed statement would need one
    )
    work = EvaluateTask.model_validate(
        {"run_id": "r1", "round": 4, "model_version": 3, "spec": spec.model_dump(mode="json")}
    )
    metrics = plain.evaluate_round(ctx, work)  # type: ignore[arg-type]
    assert reported == [metrics] and metrics.n_test == 20
    assert len(warnings) == 1
    assert "silo hospital-a" in warnings[0]
    assert "ValueError: scores contain NaN or infinity" in warnings[0]


def test_a_corrupt_fedper_head_restarts_from_the_global_head_and_is_written_durably(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A head file cut short (a power cut before the data reached the disk) does not decode:
    load_head names the file, and training starts again from the global model's head (logged)
    instead of the silo declining every round left; the head is written with fsync."""
    import silos.files

    spec = _spec("fedper", hidden=(4,))
    glob = get_params(build_model(spec.torch_model))
    synced: list[int] = []
    real_fsync = silos.files.os.fsync
    monkeypatch.setattr(silos.files.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    trained = [p + 1.0 for p in glob]
    delta = [t - g for t, g in zip(trained, glob, strict=True)]
    keep_head_local(tmp_path, spec, "run1", trained, delta)
    head = personal_dir(tmp_path, "run1") / HEAD_FILE
    for broken in (b"", head.read_bytes()[:40]):
        head.write_bytes(broken)
        with pytest.raises(ModelError, match=f"FedPer head {head} does not decode"):
            load_head(tmp_path, "run1")
        with caplog.at_level("WARNING", logger="fedsilo.silo"):
            assert start_params(tmp_path, spec, "run1", glob) is glob
        assert "starts from the global model's head instead" in caplog.text
        caplog.clear()
    keep_head_local(tmp_path, spec, "run1", trained, delta)  # the next round's writes a new one
    np.testing.assert_array_equal(start_params(tmp_path, spec, "run1", glob)[-2], trained[-2])
    assert len(synced) == 4  # each write: the file before its rename, the folder after


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_a_personalized_tree_model_keeps_the_global_models_feature_names(
    heart: dict,  # type: ignore[type-arg]
    kind: str,
) -> None:
    spec = TreeSpec(kind=kind, n_features=_nf(), trees_per_round=3, params={"max_depth": 3})  # type: ignore[arg-type]
    s = heart["cleveland"]
    names = FeaturePipeline.from_contract(load_contract("heart_disease")).feature_names
    glob = name_features(spec, train_trees(spec, None, s.X_train, s.y_train).model, names)
    out = personalize_trees(spec, glob, _rows(heart, "va_long_beach"), max_trees=4)
    assert out.steps > 0  # new trees were grown, and still carry the names
    assert feature_names_of(spec, out.model) == feature_names_of(spec, glob)
    lgb_names = [n.replace(" ", "_") for n in names]  # LightGBM's rule for a space
    assert feature_names_of(spec, out.model) == (list(names) if kind == "xgboost" else lgb_names)
