"""A silo's tree limits come from its silo.toml and refuse a run before any data is touched."""

from __future__ import annotations

from pathlib import Path

from schemas.specs import RunSpec, SecureAggregationSpec
from schemas.tree_params import TreeSpec
from silos.config import load_silo_config
from silos.policy import policy_violation


def _config(tmp_path: Path, extra: str = ""):  # type: ignore[no-untyped-def]
    path = tmp_path / "silo.toml"
    path.write_text(
        '[silo]\nname = "bank_a"\nfederation = "banks"\n\n'
        '[data]\npath = "data.csv"\ncontract = "credit_default"\n\n'
        '[service]\nurls = ["http://127.0.0.1:8700"]\n\n'
        "[policy]\nmax_rounds_per_run = 50\n\n"
        '[policy.trees]\nallowed_modes = ["bagging", "collective"]\nmax_depth = 4\n' + extra
    )
    return load_silo_config(path)


def _run(mode: str = "bagging", **params: object) -> RunSpec:
    trees = TreeSpec.model_validate(
        {"kind": "xgboost", "mode": mode, "n_features": 5, "params": params}
    )
    return RunSpec(
        federation="banks",
        dataset="credit_default",
        trees=trees,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )


def test_depth_above_the_silo_policy_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert policy_violation(config, _run(max_depth=4), 5) is None
    reason = policy_violation(config, _run(max_depth=6), 5)
    assert reason is not None and "depth at most 4" in reason and "bank_a" in reason


def test_mode_not_allowed_and_feature_count_mismatch_are_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    reason = policy_violation(config, _run("cyclic"), 5)
    assert reason is not None and "'cyclic'" in reason
    reason = policy_violation(config, _run(), 7)
    assert reason is not None and "5 features" in reason


def test_collective_needs_the_silo_certificates(tmp_path: Path) -> None:
    reason = policy_violation(_config(tmp_path), _run("collective"), 5)
    assert reason is not None and "[collective]" in reason
    with_certs = _config(tmp_path, '\n[collective]\nca = "ca.pem"\ncert = "s.pem"\nkey = "s.key"\n')
    assert with_certs.collective is not None and with_certs.collective.ca == tmp_path / "ca.pem"
    assert policy_violation(with_certs, _run("collective"), 5) is None


def test_tree_run_spec_must_not_ask_for_secure_aggregation() -> None:
    import pytest

    trees = TreeSpec.model_validate({"kind": "lightgbm", "n_features": 5, "params": {}})
    with pytest.raises(ValueError, match="cannot be securely aggregated"):
        RunSpec(federation="f", dataset="d", trees=trees)
    with pytest.raises(ValueError, match="exactly one of model"):
        RunSpec(
            federation="f", dataset="d", secure_aggregation=SecureAggregationSpec(enabled=False)
        )
