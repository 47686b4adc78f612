"""Every bad tree update the service must refuse, each with a typed error naming silo and round."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aggregation.trees.models import merge_bagging
from aggregation.trees.validate import validate_tree_update
from schemas.tree_errors import (
    FeatureCountError,
    StaleModelError,
    TreeCountError,
    TreeModelFormatError,
    UnsupportedTreeError,
    WrongRoundError,
)
from schemas.tree_params import TreeSpec
from schemas.tree_payload import (
    TreePayloadError,
    TreeUpdateHeader,
    decode_tree_update,
    encode_tree_update,
    sha256_hex,
)
from silos.tree_trainer import build_update, train_trees

N = 5
RUN = "run-7"


def _spec(kind: str, k: int = 2, n_features: int = N) -> TreeSpec:
    params = {"max_depth": 3} if kind == "xgboost" else {"num_leaves": 7, "min_data_in_leaf": 5}
    return TreeSpec(kind=kind, n_features=n_features, trees_per_round=k, params=params)


def _data(n_features: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, n_features)).astype(np.float32)
    return X, (X[:, 0] + rng.normal(size=200) > 0).astype(np.float32)


def _update(kind: str, global_model: bytes | None, round_num: int = 2, silo: str = "alpha"):
    spec = _spec(kind)
    result = train_trees(spec, global_model, *_data())
    payload = build_update(
        result, spec, run_id=RUN, round_num=round_num, silo=silo, global_model=global_model
    )
    return spec, payload, result


def _global(kind: str) -> bytes:
    result = train_trees(_spec(kind), None, *_data(seed=3))
    return merge_bagging(kind, None, {"beta": (result.model, result.n_examples)})


def _validate(payload: bytes, spec: TreeSpec, global_model: bytes | None, **over):
    args = {"silo": "alpha", "run_id": RUN, "round_num": 2, "spec": spec}
    args.update(over)
    return validate_tree_update(payload, global_model=global_model, **args)


def _rewrap(payload: bytes, model: bytes | None = None, **header_changes) -> bytes:
    header, old_model = decode_tree_update(payload)
    model = old_model if model is None else model
    fields = {**header.model_dump(), "model_sha256": sha256_hex(model), **header_changes}
    return encode_tree_update(TreeUpdateHeader(**fields), model)


@pytest.fixture(params=["xgboost", "lightgbm"])
def kind(request) -> str:
    return request.param


def test_good_update_is_accepted(kind: str) -> None:
    base = _global(kind)
    spec, payload, result = _update(kind, base)
    accepted = _validate(payload, spec, base)
    assert accepted.model == result.model
    assert accepted.n_examples == 200
    assert len(accepted.parsed.trees) == 2


def test_model_that_does_not_parse(kind: str) -> None:
    base = _global(kind)
    spec, payload, _ = _update(kind, base)
    for garbage in (b"{not json", b"\xff\xfe binary", b"tree\nversion=v4\n"):
        with pytest.raises(TreeModelFormatError, match=r"\[silo alpha, round 2\]"):
            _validate(_rewrap(payload, garbage), spec, base)


def test_envelope_that_does_not_decode(kind: str) -> None:
    spec, payload, _ = _update(kind, None)
    with pytest.raises(TreeModelFormatError, match="does not decode"):
        _validate(payload[:-10] + b"0123456789", spec, None)  # model no longer matches sha
    with pytest.raises(TreeModelFormatError, match="magic"):
        _validate(b"XXXX" + payload[4:], spec, None)


def test_trees_with_a_different_feature_count(kind: str) -> None:
    base = None
    spec6 = _spec(kind, n_features=N + 1)
    result = train_trees(spec6, base, *_data(n_features=N + 1))
    payload = build_update(result, spec6, run_id=RUN, round_num=2, silo="alpha", global_model=None)
    with pytest.raises(FeatureCountError, match="declares 6 features"):
        _validate(payload, _spec(kind), None)
    # a header that lies about the count is caught by the model itself
    lying = _rewrap(payload, n_features=N)
    with pytest.raises(FeatureCountError, match="trained on 6 features"):
        _validate(lying, _spec(kind), None)


def test_split_on_a_feature_beyond_the_model(kind: str) -> None:
    spec, payload, result = _update(kind, None)
    if kind == "xgboost":
        doc = json.loads(result.model)
        tree = doc["learner"]["gradient_booster"]["model"]["trees"][0]
        tree["split_indices"][0] = N + 3
        bad = json.dumps(doc).encode()
    else:
        text = result.model.decode()
        line = next(x for x in text.split("\n") if x.startswith("split_feature="))
        bad = text.replace(line, "split_feature=" + " ".join(["9"] * len(line.split())), 1).encode()
    with pytest.raises(TreeModelFormatError, match="splits on feature"):
        _validate(_rewrap(payload, bad), spec, None)


def test_wrong_round_run_or_silo(kind: str) -> None:
    base = _global(kind)
    spec, payload, _ = _update(kind, base, round_num=1)
    with pytest.raises(WrongRoundError, match="round 1"):
        _validate(payload, spec, base)
    spec, payload, _ = _update(kind, base)
    with pytest.raises(WrongRoundError, match="run 'run-7'"):
        _validate(payload, spec, base, run_id="run-8")
    with pytest.raises(WrongRoundError, match=r"\[silo beta, round 2\]"):
        _validate(payload, spec, base, silo="beta")


def test_trees_grown_from_another_model_version(kind: str) -> None:
    old = _global(kind)
    spec, payload, _ = _update(kind, old)
    newer = merge_bagging(kind, old, {"beta": (train_trees(spec, old, *_data(seed=4)).model, 50)})
    with pytest.raises(StaleModelError, match="Fetch the current global model"):
        _validate(payload, spec, newer)
    # claiming the right base while the trees came from scratch: caught on XGBoost by the
    # base score; on both by the sha binding when the claim is absent
    _, scratch, _ = _update(kind, None)
    with pytest.raises(StaleModelError):
        _validate(scratch, spec, newer)
    if kind == "xgboost":
        forged = _rewrap(scratch, base_model_sha256=sha256_hex(newer))
        with pytest.raises(StaleModelError, match="base score"):
            _validate(forged, spec, newer)


def test_wrong_kind_or_mode(kind: str) -> None:
    spec, payload, _ = _update(kind, None)
    other = "lightgbm" if kind == "xgboost" else "xgboost"
    with pytest.raises(TreeModelFormatError, match="the run trains"):
        _validate(payload, _spec(other), None)
    cyclic = spec.model_copy(update={"mode": "cyclic"})
    with pytest.raises(TreeModelFormatError, match="mode cyclic"):
        _validate(payload, cyclic, None)


def test_too_many_trees_or_a_lying_count(kind: str) -> None:
    spec, payload, _ = _update(kind, None)
    with pytest.raises(TreeCountError, match=r"1\.\.1 new trees"):
        _validate(payload, spec.model_copy(update={"trees_per_round": 1}), None)
    with pytest.raises(TreeCountError, match="header says 1"):
        _validate(_rewrap(payload, n_new_trees=1), spec, None)


def test_hostile_tree_structure_is_refused_before_evaluation(kind: str) -> None:
    spec, payload, result = _update(kind, None)
    if kind == "xgboost":
        doc = json.loads(result.model)
        tree = doc["learner"]["gradient_booster"]["model"]["trees"][0]
        tree["left_children"][0] = 0  # a cycle: the root is its own child
        bad = json.dumps(doc).encode()
    else:
        bad = result.model.decode().replace("left_child=1", "left_child=0", 1).encode()
    with pytest.raises(TreeModelFormatError, match="child index"):
        _validate(_rewrap(payload, bad), spec, None)


def test_categorical_splits_are_unsupported() -> None:
    spec, payload, result = _update("xgboost", None)
    doc = json.loads(result.model)
    doc["learner"]["gradient_booster"]["model"]["trees"][0]["split_type"][0] = 1
    with pytest.raises(UnsupportedTreeError, match=r"\[silo alpha, round 2\].*categorical"):
        _validate(_rewrap(payload, json.dumps(doc).encode()), spec, None)


def test_envelope_codec_checks() -> None:
    _, payload, _ = _update("xgboost", None)
    header, model = decode_tree_update(payload)
    with pytest.raises(TreePayloadError, match="does not match"):
        encode_tree_update(header, model + b" ")
    with pytest.raises(TreePayloadError, match="out of bounds"):
        decode_tree_update(payload[:12])
    wrong_wire = _rewrap(payload, wire="0")
    with pytest.raises(TreePayloadError, match="wire version"):
        decode_tree_update(wrong_wire)
