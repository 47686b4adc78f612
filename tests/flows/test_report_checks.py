"""The report's checks beyond the chain: re-hashed models, per-silo regression callouts,
declines per round, and links to the silos' Great Expectations data docs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from support.lineage_sample import RUN_A, SILOS, Sample, build_sample

from aggregation.service import ledger
from aggregation.service.db import make_sessionmaker, transaction
from flows.report import write_report
from flows.report_checks import docs_link, parse_locations
from schemas.lineage import make_statement, sign_statement


@pytest.fixture
def sample(tmp_path: Path) -> Sample:
    return build_sample(tmp_path)


def _service(sample: Sample, kind: str, payload: dict[str, Any]) -> None:
    with transaction(make_sessionmaker(sample.engine)) as session:
        ledger.append(
            session,
            kind=kind,
            payload=payload,
            run_id=RUN_A,
            author="service",
            service_key=sample.private["service"],
        )


def _silo(sample: Sample, silo: str, kind: str, payload: dict[str, Any]) -> None:
    author = f"silo:{silo}"
    statement = make_statement(run_id=RUN_A, kind=kind, payload=payload, author=author)
    with transaction(make_sessionmaker(sample.engine)) as session:
        ledger.append(
            session,
            kind=kind,
            payload=statement.payload,
            run_id=RUN_A,
            author=author,
            service_key=sample.private["service"],
            author_signature=sign_statement(sample.private[author], statement),
            author_key=sample.private[author].public_key(),
        )


def _evaluation(round_: int, hungary_auc: float) -> dict[str, Any]:
    per_silo = {s: {"n_test": 40, "accuracy": 0.8, "auc": 0.85, "loss": 0.4} for s in SILOS}
    per_silo["hungary"] = {"n_test": 40, "accuracy": 0.8, "auc": hungary_auc, "loss": 0.4}
    weighted = {"accuracy": 0.8, "auc": 0.8, "loss": 0.4}
    return {"round": round_, "model_version": 3, "per_silo": per_silo, "weighted": weighted}


def _report(sample: Sample, out: Path, **options: Any) -> str:
    path = write_report(sample.entries(), sample.keys, RUN_A, out, sample.store, **options)
    return path.read_text(encoding="utf-8")


def test_a_silo_whose_auc_fell_gets_a_callout(sample: Sample, tmp_path: Path) -> None:
    _service(sample, "metrics", _evaluation(5, 0.91))
    _service(sample, "metrics", _evaluation(6, 0.57))
    document = _report(sample, tmp_path)
    callouts = re.findall(r'<div class="callout">(.*?)</div>', document)
    assert callouts == [
        "<b>Regression at silo hungary:</b> AUC fell from 0.910 (round 5) to 0.570 "
        "(round 6), a drop of 0.340."
    ]
    # a threshold above the drop: no callout, and the report says which threshold it used
    quiet = _report(sample, tmp_path / "quiet", regression_threshold=0.4)
    assert 'class="callout"' not in quiet
    assert "fell from its best by more than 0.4." in quiet


def test_a_dip_within_the_threshold_is_no_regression(sample: Sample, tmp_path: Path) -> None:
    _service(sample, "metrics", _evaluation(5, 0.91))
    _service(sample, "metrics", _evaluation(6, 0.83))
    assert 'class="callout"' not in _report(sample, tmp_path)


def test_declines_are_listed_per_round(sample: Sample, tmp_path: Path) -> None:
    reason = "epsilon would reach 3.2 > budget 3.0 <policy>"
    for silo, round_, scope, cause in [
        ("switzerland", 3, "run", "privacy_budget"),
        ("hungary", 2, "round", "data"),
    ]:
        payload = {"silo": silo, "run_id": RUN_A, "round": round_, "scope": scope}
        _silo(sample, silo, "decline", {**payload, "cause": cause, "reason": reason})
    document = _report(sample, tmp_path)
    section = document.split('<h3 id="declines">')[1].split("<h3>")[0]
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\w+)</td><td>(\w+)</td><td>(\w+)</td>", section)
    assert rows == [
        ("2", "hungary", "round", "data"),
        ("3", "switzerland", "run", "privacy_budget"),
    ]
    assert "budget 3.0 &lt;policy&gt;" in section
    assert "No silo declined a round." not in document
    participants = document.split('<h2 id="participants">')[1].split("</table>")[0]
    assert re.search(r"<td>hungary</td>(<td>[^<]*</td>){4}<td>1</td>", participants)


def test_an_altered_or_missing_model_fails_the_banner(sample: Sample, tmp_path: Path) -> None:
    (sample.store / "models" / RUN_A / "v2.safetensors").write_bytes(b"replaced")
    (sample.store / "models" / RUN_A / "v1.safetensors").unlink()
    document = _report(sample, tmp_path)
    assert (
        'class="banner fail">Ledger chain intact, but 2 of 4 model files do not match the '
        "ledger (v1 missing, v2 mismatch)." in document
    )
    assert '<span class="fail">MISMATCH</span>' in document
    assert '<span class="fail">missing</span>' in document


def test_data_docs_are_linked_per_silo(sample: Sample, tmp_path: Path) -> None:
    workspace = tmp_path / "hungary-ws"
    (workspace / "data_docs").mkdir(parents=True)
    (workspace / "data_docs" / "index.html").write_text("<html></html>")
    locations = {"hungary": str(workspace), "cleveland": "https://dq.cleveland.example/docs/"}
    document = _report(sample, tmp_path / "out", data_docs_locations=locations)
    docs = document.split('<h3 id="data-docs">')[1].split("<h3>")[0]
    page = (workspace / "data_docs" / "index.html").resolve().as_uri()
    assert f'<a href="{page}">hungary data docs</a>' in docs
    assert '<a href="https://dq.cleveland.example/docs/">cleveland data docs</a>' in docs
    assert re.search(
        r"<td>switzerland</td><td>3</td><td>2</td><td>round 3: <span class=\"pass\">PASS"
        r"</span></td><td>expect_column_values_to_be_between on chol</td><td>not provided",
        docs,
    )


def test_bad_data_docs_locations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only http"):
        docs_link("javascript:alert(1)")
    with pytest.raises(ValueError, match="no index.html there"):
        docs_link(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="give SILO=LOCATION"):
        parse_locations(["hungary"])
    (tmp_path / "index.html").write_text("<html></html>")
    assert parse_locations([f"hungary={tmp_path}"]) == {"hungary": str(tmp_path)}
