"""`fedsilo demo --distill`'s spec, and the per-silo rows `runs show` and the demo print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from flows.demo import DemoOptions, demo_spec
from flows.demo_distill import distilled, print_distill
from flows.distill_view import distill_rows, distill_table, distilled_statements, parse_kinds
from flows.exceptions import DemoError
from schemas.distill_statement import STATEMENT_KIND, DistilledPayload
from schemas.wire import Metrics

SILOS = ["cleveland", "hungary", "va_long_beach", "switzerland"]


def test_the_demo_gives_the_first_silos_other_kinds(tmp_path: Path) -> None:
    spec = distilled(demo_spec(DemoOptions(tmp_path), 35, 4), SILOS)
    assert spec.distill is not None and spec.federation_statistics
    assert [spec.distill.kind_for(s) for s in SILOS] == ["xgboost", "mlp", "logreg", "logreg"]
    assert spec.model is not None and spec.model.hidden  # the mlp member's hidden layers


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"dp": True}, "differential privacy"),
        ({"plain": True}, "secure_aggregation"),
        ({"personalize": "finetune"}, "personalize"),
        ({"model": "xgboost"}, "drop --model"),
    ],
)
def test_the_demo_refuses_what_distillation_cannot_do(
    tmp_path: Path, opts: dict, message: str
) -> None:
    with pytest.raises(DemoError, match=message):
        distilled(demo_spec(DemoOptions(tmp_path, **opts), 35, 4), SILOS)


class _Entry:
    def __init__(self, payload: DistilledPayload) -> None:
        self.kind = STATEMENT_KIND
        self.payload = payload.model_dump_json()


def _statement(silo: str, rnd: int, mine: float, alone: float) -> DistilledPayload:
    return DistilledPayload(
        silo=silo,
        round=rnd,
        kind="xgboost",
        model_sha256="ab" * 32,
        soft_labels_version=rnd - 1,
        reference_rows=64,
        n_train=100,
        distilled=Metrics(n_test=20, loss=0.5, auc=mine),
        alone=Metrics(n_test=20, loss=0.6, auc=alone),
        weight=0.25 if rnd > 1 else None,
        validation=[(0.0, 0.41), (0.25, 0.4)] if rnd > 1 else [],
    )


def test_rows_keep_each_silos_latest_statement_and_flag_a_worse_one() -> None:
    entries = [
        _Entry(_statement("b", 2, 0.70, 0.80)),
        _Entry(_statement("a", 3, 0.90, 0.80)),
        _Entry(_statement("b", 3, 0.75, 0.80)),
    ]
    rows = distill_rows(distilled_statements(entries))  # type: ignore[arg-type]
    assert [(r["silo"], r["round"], r["distilled"]) for r in rows] == [
        ("a", 3, 0.9),
        ("b", 3, 0.75),
    ]
    assert [r["worse_than_alone"] for r in rows] == [False, True]
    assert [r["weight"] for r in rows] == [0.25, 0.25]  # the weight each silo chose
    assert distill_table([]) is None
    console = Console(record=True, width=200)
    assert print_distill(console, {"distilled": rows}) == rows
    text = console.export_text()
    assert "distilling did worse than training alone at b" in text and "0.750" in text
    assert "0.25" in text
    json.dumps(rows)  # `runs show --json` prints them


def test_the_cli_reads_silo_kind_pairs() -> None:
    spec = parse_kinds("default=logreg, cleveland=xgboost,hungary=mlp", reference_rows=64)
    assert spec.kind_for("cleveland") == "xgboost" and spec.kind_for("x") == "logreg"
    assert spec.reference_rows == 64
    with pytest.raises(ValueError, match="not SILO=KIND"):
        parse_kinds("default=logreg,cleveland")
    with pytest.raises(ValueError, match='"default" kind'):
        parse_kinds("cleveland=xgboost")
    with pytest.raises(ValueError, match="logreg"):  # pydantic names the allowed kinds
        parse_kinds("default=svm")
