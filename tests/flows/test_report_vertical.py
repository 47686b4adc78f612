"""Vertical runs in `fedsilo runs list`, `fedsilo vertical show` and `fedsilo report RUN`: a
ledger written by a real service (uvicorn on 127.0.0.1, SQLite) from the parties' signed event
reports, as their agents send them, then read back through the CLI the coordinator uses."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from support.live_service import coordinator, enrolled_silo, service_in_thread
from typer.testing import CliRunner

from flows.cli import app, output
from flows.report import render_report
from flows.vertical import create_vertical_run, progress_line
from schemas.ledger_export import load_export
from schemas.vertical import (
    EpochDone,
    LineageNode,
    PsiDone,
    RunDone,
    RunFailed,
    TreeDone,
    VerticalEvent,
    VerticalParams,
    VerticalRunOut,
)
from silos.client import SiloClient
from silos.client_errors import ServiceRejected

runner = CliRunner()
PARTIES = ["bank", "bureau"]
PSI_DIGEST = hashlib.sha256(b"the common ids").hexdigest()
MODEL_DIGEST = hashlib.sha256(b"the whole model").hexdigest()
# tree 0: the bank splits the root, the bureau both children; tree 1: the bureau alone
TREES = [
    [(0, "bank", 0), (1, "bureau", 1), (2, "bureau", 1)],
    [(0, "bureau", 0)],
]


@dataclass(frozen=True)
class Ledger:
    url: str
    auth: list[str]
    trained: str
    logreg: str
    predicted: str
    refused: str
    counted: str
    bank: SiloClient


def report(client: SiloClient, run: str, event: object) -> None:
    body = VerticalEvent.model_validate({"event": event}).model_dump_json().encode()
    client.request(
        "POST", f"/v1/silo/vertical/{run}/events", body=body, content_type="application/json"
    )


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    """Five vertical runs of one federation: a SecureBoost training run, a logistic
    regression one, a prediction with the first's model, a run the bureau's policy refused, a
    size-only intersection."""
    root = tmp_path_factory.mktemp("vertical-report")
    with service_in_thread(root / "svc", f"sqlite:///{root}/service.db") as url:
        coord = coordinator(url)
        fed = f"v-{uuid.uuid4().hex[:12]}"
        coord.create_federation(fed)
        silos = {name: enrolled_silo(url, coord, fed, name) for name in PARTIES}
        bank, bureau = silos["bank"], silos["bureau"]

        trained = create_vertical_run(coord, fed, "bank", PARTIES, VerticalParams(trees=2)).run_id
        for party in silos.values():
            report(party, trained, PsiDone(size=40, digest=PSI_DIGEST))
        for t, nodes in enumerate(TREES):
            lineage = [LineageNode(node=n, party=p, depth=d) for n, p, d in nodes]
            report(bank, trained, TreeDone(tree=t, nodes=lineage, leaves=len(nodes) + 1))
        report(bank, trained, RunDone(trees=2, model_digest=MODEL_DIGEST))

        params = VerticalParams(model="logreg", epochs=3, batch_rows=32)
        logreg = create_vertical_run(coord, fed, "bank", PARTIES, params).run_id
        for party in silos.values():
            report(party, logreg, PsiDone(size=40, digest=PSI_DIGEST))
        for epoch in range(3):
            report(bank, logreg, EpochDone(epoch=epoch, steps=3, rows=40))
        report(bank, logreg, RunDone(trees=0, epochs=3, model_digest=MODEL_DIGEST))

        predicted = create_vertical_run(coord, fed, "bank", PARTIES, model_run=trained).run_id
        for party in silos.values():
            report(party, predicted, PsiDone(size=12, digest=PSI_DIGEST))
        report(bank, predicted, RunDone(trees=0, model_digest=MODEL_DIGEST))

        refused = create_vertical_run(coord, fed, "bank", PARTIES, VerticalParams(trees=9)).run_id
        reason = "silo 'bureau' allows at most 2 trees ([vertical] max_trees); run asks for 9"
        report(bureau, refused, RunFailed(reason=reason))

        counted = create_vertical_run(coord, fed, "bank", PARTIES, size_only=True).run_id
        for party in silos.values():
            report(party, counted, PsiDone(size=33))

        auth = ["--service-url", url, "--token", "test-admin-token"]
        yield Ledger(url, auth, trained, logreg, predicted, refused, counted, bank)


def _report(ledger: Ledger, run: str, out: Path) -> str:
    result = runner.invoke(app, ["report", run[:10], "--out", str(out), *ledger.auth])
    assert result.exit_code == 0, result.output
    (path,) = out.glob("fedsilo-report-*.html")
    assert run in path.name
    return path.read_text(encoding="utf-8")


def _text(document: str) -> str:
    """The report's visible text, one space between words."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", document)))


def test_runs_list_shows_vertical_runs_beside_horizontal_ones(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = runner.invoke(app, ["runs", "list", "--json", *ledger.auth])
    assert result.exit_code == 0, result.output
    listed = {r["run_id"]: r for r in json.loads(result.stdout)}
    assert set(listed) == {
        ledger.trained,
        ledger.logreg,
        ledger.predicted,
        ledger.refused,
        ledger.counted,
    }
    assert {r["kind"] for r in listed.values()} == {"vertical"}
    got = {(r["mode"], r["status"], tuple(r["parties"])) for r in listed.values()}
    assert got == {
        ("train", "finished", ("bank", "bureau")),
        ("predict", "finished", ("bank", "bureau")),
        ("train", "failed", ("bank", "bureau")),
        ("psi_size", "finished", ("bank", "bureau")),
    }
    assert listed[ledger.predicted]["model_run"] == ledger.trained
    assert (listed[ledger.logreg]["params"]["model"], listed[ledger.logreg]["epochs"]) == (
        "logreg",
        3,
    )
    newest_first = [r["run_id"] for r in json.loads(result.stdout)]
    assert newest_first == [
        ledger.counted,
        ledger.refused,
        ledger.predicted,
        ledger.logreg,
        ledger.trained,
    ]

    monkeypatch.setattr(output.out, "width", 200)  # a wide terminal: one line per run
    table = runner.invoke(app, ["runs", "list", "--limit", "2", *ledger.auth])
    assert table.exit_code == 0, table.output
    lines = [line for line in table.output.splitlines() if ledger.refused in line]
    assert len(lines) == 1 and "vertical" in lines[0] and "failed" in lines[0]
    assert "bank (active)" in lines[0] and "secureboost" in lines[0]
    assert ledger.trained not in table.output  # --limit counts runs of both kinds

    table = runner.invoke(app, ["runs", "list", *ledger.auth])
    assert table.exit_code == 0, table.output
    cells = {
        run: [c.strip() for c in line.split("│")]
        for line in table.output.splitlines()
        for run in (ledger.trained, ledger.logreg)
        if run in line
    }
    # model, then "rounds / trees": the trees of SecureBoost, the epochs of logistic regression
    assert cells[ledger.trained][6:8] == ["secureboost", "2"]
    assert cells[ledger.logreg][6:8] == ["logreg", "3"]

    shown = runner.invoke(app, ["runs", "show", ledger.trained[:8], *ledger.auth])
    assert shown.exit_code == 0, shown.output
    assert f"vertical run {ledger.trained} (train): finished" in shown.output


def test_report_of_a_training_run_names_parties_trees_and_predictions(
    ledger: Ledger, tmp_path: Path
) -> None:
    document = _report(ledger, ledger.trained, tmp_path)
    text = _text(document)
    assert "Ledger verified: hash chain and all signatures intact" in text
    assert "bank active: holds the labels 40" in text
    assert "bureau passive: holds features 40" in text
    assert "same 40 common customers" in text
    # per tree and party: split counts and the depths split at
    assert "0 4 2 1 split (depth 0) 2 splits (depth 1)" in text
    assert "1 2 1 0 splits 1 split (depth 0)" in text
    assert "node 1 by bureau at depth 1" in text
    assert f"model half sha256 (model-active.json) {MODEL_DIGEST}" in text
    assert f"{ledger.predicted} finished 12" in text  # the prediction that used the model
    assert ledger.refused not in text and ledger.counted not in text
    # no split value anywhere: not in the ledger, so not in the report
    assert "threshold" not in document.lower() and '"bin"' not in document

    (uri,) = re.findall(r'<img alt="splits per party per tree" src="([^"]+)"', document)
    png = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_report_names_the_party_that_refused_and_a_size_only_intersection(
    ledger: Ledger, tmp_path: Path
) -> None:
    text = _text(_report(ledger, ledger.refused, tmp_path / "refused"))
    assert "The run failed at party bureau: party 'bureau': silo 'bureau' allows at most" in text
    assert "No party reported an intersection" in text and "No tree recorded." in text

    text = _text(_report(ledger, ledger.counted, tmp_path / "counted"))
    assert "Size only: each party learned that 33 customers are common" in text
    assert "counts the intersection (no labels used) 33 -" in text
    assert "Trees: who split where" not in text

    text = _text(_report(ledger, ledger.predicted, tmp_path / "predicted"))
    assert f"model of training run {ledger.trained}" in text


def test_report_of_a_tampered_vertical_ledger_names_the_entry(ledger: Ledger) -> None:
    client = coordinator(ledger.url)
    entries = load_export(client.ledger_export())
    bad = next(e for e in entries if e.kind == "vertical_tree" and e.run_id == ledger.trained)
    forged = bad.payload.replace('"party":"bank"', '"party":"bureau"')
    assert forged != bad.payload
    entries = [e.model_copy(update={"payload": forged}) if e is bad else e for e in entries]
    text = _text(render_report(entries, client.ledger_keys(), ledger.trained))
    assert f"Ledger NOT verified: first bad entry {bad.seq}" in text
    assert "0 4 2 0 splits 3 splits (depth 0, 1)" in text  # the view shows what it was given


def test_the_service_refuses_a_tree_report_carrying_a_split_value(ledger: Ledger) -> None:
    """The ledger cannot hold a split value: a tree report's nodes carry nothing else."""
    node = {"node": 0, "party": "bureau", "depth": 0, "threshold": 0.5}
    body = json.dumps({"event": {"kind": "tree", "tree": 0, "nodes": [node], "leaves": 2}})
    with pytest.raises(ServiceRejected, match="threshold"):
        ledger.bank.request(
            "POST",
            f"/v1/silo/vertical/{ledger.refused}/events",
            body=body.encode(),
            content_type="application/json",
        )


def test_report_of_a_logreg_run_shows_its_epochs_not_trees(ledger: Ledger, tmp_path: Path) -> None:
    document = _report(ledger, ledger.logreg, tmp_path)
    text = _text(document)
    assert "Ledger verified: hash chain and all signatures intact" in text
    assert "bank active: holds the labels 40" in text
    assert "epochs recorded 3" in text and "trees recorded" not in text
    assert "epoch steps rows 0 3 40 1 3 40 2 3 40" in text
    # the model card lists logistic regression's own parameters, not SecureBoost's
    assert "parameters batch_rows 32, epochs 3, l2 0.001, learning_rate 0.5, model logreg" in text
    assert "Trees: who split where" not in text and "splits (all trees)" not in text
    assert "<img" not in document
    assert "epoch 1: 3 steps over 40 rows" in text and "finished: 3 epochs" in text  # timeline

    text = _text(_report(ledger, ledger.trained, tmp_path / "trained"))
    assert "trees recorded 2" in text and "Epochs" not in text
    assert "parameters bins 32, depth 3, model secureboost, predict False, trees 2" in text


def test_vertical_show_prints_epochs_of_a_logreg_run_and_trees_of_secureboost(
    ledger: Ledger,
) -> None:
    shown = runner.invoke(app, ["vertical", "show", ledger.logreg, *ledger.auth])
    assert shown.exit_code == 0, shown.output
    assert "intersection 40 rows; epochs 3; model sha256" in shown.output
    assert "epoch 2: 3 steps over 40 rows" in shown.output and "tree 0" not in shown.output

    as_json = runner.invoke(app, ["vertical", "show", ledger.logreg, "--json", *ledger.auth])
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.stdout)
    assert "splits_per_tree" not in result
    assert result["epochs"] == [{"epoch": e, "steps": 3, "rows": 40} for e in range(3)]

    shown = runner.invoke(app, ["vertical", "show", ledger.trained, *ledger.auth])
    assert shown.exit_code == 0, shown.output
    assert "intersection 40 rows; trees 2; model sha256" in shown.output
    assert "tree 0: splits by party {'bank': 1, 'bureau': 2}" in shown.output


def test_progress_line_counts_epochs_of_logreg_and_trees_of_secureboost() -> None:
    run = VerticalRunOut(
        run_id="0123456789abcdef",
        federation="f",
        active="bank",
        parties=PARTIES,
        status="running",
        psi_size=40,
        params=VerticalParams(model="logreg", epochs=4),
        epochs=1,
    )
    assert progress_line(run, 4) == "vertical run 01234567: PSI 40 rows, epochs 1/4, running"
    boost = run.model_copy(update={"params": VerticalParams(trees=3), "trees": 2, "epochs": 0})
    assert progress_line(boost, 3) == "vertical run 01234567: PSI 40 rows, trees 2/3, running"
