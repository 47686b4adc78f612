"""The compliance review's findings on `fedsilo report`, `lineage show` and the OpenLineage
export: a cut ledger caught only with the silos' copies, what re-hashing read, this run's
epsilon beside the silo's total, the two contract hashes, async staleness, plot colours,
failed-expectation cells, the exit status of a failed report, non-contributing silos in
OpenLineage, and revoked silos."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import matplotlib.axes
import matplotlib.figure
import pytest
from support.lineage_sample import RUN_A, RUN_B, SILOS, Sample, Writer, build_sample, open_ledger
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.errors import FAILED, OK
from flows.cli.lineage import _hashed_note
from flows.lineage_summary import summarize
from flows.lineage_view import RoundMetrics
from flows.openlineage_export import export_openlineage
from flows.report import report_filename, write_report
from flows.report_checks import model_source
from flows.report_plots import metrics_figure
from flows.report_sections import failed_expectation
from schemas.ledger_export import export_entries
from schemas.specs import AsyncSpec, ModelSpec, RunSpec

RUN_C = "run-c"
CONTRACT_FILE_SHA = "5040a3de735630fee3032b58197841b0adf236d269721d76b4f3d60e78219031"
PARSED_CONTRACT_SHA = "ec" * 32


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    return build_sample(tmp_path_factory.mktemp("ledger"))


def _export(sample: Sample, path: Path, upto_seq: int | None = None) -> Path:
    entries = [e for e in sample.entries() if upto_seq is None or e.seq <= upto_seq]
    path.write_text(export_entries(entries), encoding="utf-8")
    path.with_suffix(".keys.json").write_text(json.dumps(sample.keys), encoding="utf-8")
    return path


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


# 3. a ledger cut short by its holder: only the silos' copies show it


def test_report_checks_silo_copies_and_catches_a_cut_export(sample: Sample, tmp_path: Path) -> None:
    end_a = max(e.seq for e in sample.entries() if e.kind == "run_finished" and e.run_id == RUN_A)
    cut = _export(sample, tmp_path / "cut.jsonl", upto_seq=end_a)  # run-b dropped
    runner = CliRunner()
    base = ["report", RUN_A, "--export", str(cut), "--no-rehash"]

    alone = runner.invoke(app, [*base, "--out", str(tmp_path / "alone")])
    assert alone.exit_code == OK, alone.output
    document = (tmp_path / "alone" / report_filename(RUN_A)).read_text(encoding="utf-8")
    assert 'class="banner pass">Ledger verified' in document
    warn = document.split('class="banner warn">')[1].split("</div>")[0]
    assert "cannot be detected without the silos' own copies" in warn
    assert f"fedsilo lineage verify --export {cut} --silo-copy SILO_WORKSPACE" in warn
    assert "--silo-copy" in alone.output and f"--export {cut}" in alone.output

    copy = str(sample.silo_dirs["cleveland"])
    caught = runner.invoke(app, [*base, "--out", str(tmp_path / "caught"), "--silo-copy", copy])
    assert caught.exit_code == FAILED, caught.output
    document = (tmp_path / "caught" / report_filename(RUN_A)).read_text(encoding="utf-8")
    assert (
        'class="banner fail">Ledger NOT verified: the silos\' own copies disagree with the '
        "ledger" in document.replace("&#39;", "'")
    )
    assert "Silos' copies: 1 cross-checked against the ledger" in document
    assert "MISMATCH" in document and 'class="banner warn"' not in document

    whole = _export(sample, tmp_path / "whole.jsonl")
    out = tmp_path / "whole"
    fine = runner.invoke(
        app, ["report", RUN_A, "--export", str(whole), "--no-rehash", "--out", str(out),
              "--silo-copy", copy],
    )  # fmt: skip
    assert fine.exit_code == OK, fine.output
    document = (out / report_filename(RUN_A)).read_text(encoding="utf-8")
    assert 'class="banner pass">Silos\' copies: 1 cross-checked' in document


# 4. what re-hashing read: the service's stored copies, or the files on disk


class _Client:
    def __init__(self, sample: Sample) -> None:
        self.sample = sample

    def download_model(self, run_id: str, version: int) -> bytes:
        return (self.sample.store / "models" / run_id / f"v{version}.safetensors").read_bytes()


def test_downloaded_models_are_called_the_services_stored_copies(
    sample: Sample, tmp_path: Path
) -> None:
    checker, source = model_source(sample.entries(), None, _Client(sample))
    path = write_report(
        sample.entries(), sample.keys, RUN_A, tmp_path, artifact_checker=checker,
        artifact_source=source,
    )  # fmt: skip
    document = path.read_text(encoding="utf-8")
    banner = _text(document.split('class="banner pass">')[1].split("</div>")[0])
    assert "the service's stored copies of 4 model files re-hashed and matching the ledger" in (
        banner.replace("&#39;", "'")
    )
    assert "the model files on disk at the paths the ledger names were NOT checked" in banner
    assert "--artifacts SERVICE_WORKSPACE" in banner
    on_disk = write_report(sample.entries(), sample.keys, RUN_A, tmp_path / "disk", sample.store)
    assert "NOT checked (give --artifacts" not in on_disk.read_text(encoding="utf-8")


def test_lineage_verify_says_what_it_hashed(sample: Sample) -> None:
    entries = sample.entries()
    n = sum(e.kind == "model_saved" for e in entries)
    downloaded = _hashed_note(entries, None, downloaded=True)
    assert f"the service's stored copies of {n} model versions" in downloaded
    assert "files on disk were NOT checked: give --artifacts" in downloaded
    assert "NOT checked" not in _hashed_note(entries, Path("/srv/svc"), downloaded=False)


# 5, 6, 7, 9 and revocations: a run with what the sample runs lack


def _failed_table_level() -> list[dict[str, Any]]:
    return [
        {
            "expectation": "expect_table_columns_to_match_set",
            "column": None,
            "unexpected_count": None,
            "unexpected_percent": None,
        },
        {
            "expectation": "expect_column_values_to_be_between",
            "column": "age",
            "unexpected_count": 39,
            "unexpected_percent": 31.70731707317073,
        },
    ]


@pytest.fixture(scope="module")
def async_run(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """Run ``run-c``: asynchronous, a pinned contract file hash, privacy with and without
    ``run_epsilon``, a failed table-level expectation, and switzerland revoked in round 2."""
    w: Writer = open_ledger(tmp_path_factory.mktemp("async"))
    model = ModelSpec(kind="logreg", n_features=13)
    spec = RunSpec(
        federation="heart", dataset="heart_disease_uci", model=model, rounds=3, min_silos=2,
        silos=SILOS, asynchronous=AsyncSpec(buffer_size=2, max_staleness=1),
    )  # fmt: skip
    as_dict = spec.model_dump(mode="json")
    w.service(
        "run_started",
        {
            "spec": as_dict,
            "config_sha256": hashlib.sha256(b"config").hexdigest(),
            "contract_sha256": CONTRACT_FILE_SHA,
            "fedsilo_version": "0.1.0",
            "git_commit": "0" * 40,
            "participants": list(SILOS),
            "initial_model_sha256": "a" * 64,
        },
        RUN_C,
    )
    w.model(RUN_C, 0, 0, model)
    for silo in SILOS:
        ok = silo != "switzerland"
        w.silo(
            silo,
            "validation_result",
            {
                "silo": silo, "round": 1, "contract": "heart_disease", "contract_version": "1",
                "contract_sha256": PARSED_CONTRACT_SHA, "data_sha256": "d" * 64, "n_rows": 123,
                "success": ok, "failed": [] if ok else _failed_table_level(),
            },
            RUN_C,
        )  # fmt: skip
    privacy = {"delta": 1e-5, "noise_multiplier": 1.1, "clip_norm": 1.0}
    w.silo("cleveland", "privacy_spent", {"silo": "cleveland", "round": 1, "epsilon": 2.5,
                                          "run_epsilon": 0.25, **privacy}, RUN_C)  # fmt: skip
    w.silo("hungary", "privacy_spent", {"silo": "hungary", "round": 1, "epsilon": 1.75,
                                        **privacy}, RUN_C)  # fmt: skip
    contributors = [
        {"silo": "cleveland", "digest": "c" * 64, "n_examples": 240, "base_round": 1,
         "base_version": 0, "staleness": 0, "weight": 1.0},
        {"silo": "hungary", "digest": "e" * 64, "n_examples": 230, "base_round": 1,
         "base_version": 0, "staleness": 2, "weight": 0.5773502691896258},
    ]  # fmt: skip
    w.service(
        "aggregate",
        {
            "round": 1, "contributors": contributors, "aggregate_digest": "f" * 64,
            "model_version": 1, "secure_aggregation": False,
            "asynchronous": {"buffer_size": 2, "max_staleness": 1, "staleness_weight": "sqrt"},
            "dropped_stale": [{"silo": "switzerland", "staleness": 3}],
        },
        RUN_C,
    )  # fmt: skip
    w.model(RUN_C, 1, 1, model)
    revoked = {"silo": "switzerland", "federation": "heart",
               "public_key": w.sample.keys["silo:switzerland"], "reason": "key leaked",
               "round": 2}  # fmt: skip
    w.service("silo_revoked", revoked, RUN_C)
    w.service("dropout", {"round": 2, "silos": ["switzerland"]}, RUN_C)
    federation_level = {"silo": "hungary", "federation": "heart",
                        "public_key": w.sample.keys["silo:hungary"], "reason": None,
                        "runs": [RUN_C]}  # fmt: skip
    w.service("silo_revoked", federation_level, None)
    final = {"status": "finished", "final_model_version": 1}
    final["final_model_sha256"] = w.sample.models[(RUN_C, 1)]
    w.service("run_finished", final, RUN_C)
    return w.sample


@pytest.fixture(scope="module")
def report_c(async_run: Sample, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("report-c")
    path = write_report(async_run.entries(), async_run.keys, RUN_C, out, async_run.store)
    return path.read_text(encoding="utf-8")


def test_privacy_table_shows_the_silos_total_and_this_runs_epsilon(report_c: str) -> None:
    privacy = report_c.split('<h2 id="privacy">')[1].split('<h2 id="model-card">')[0]
    text = privacy.replace("&#39;", "'")
    assert "silo's total epsilon (all its runs so far)" in text
    assert "<th>this run's epsilon</th>" in text
    assert "<td>cleveland</td><td>1</td><td>2.5000</td>" in text
    assert text.count("<td>0.2500</td>") == 1  # cleveland's run_epsilon
    assert "<td>hungary</td>" in text and "this run's share not recorded" in text


def test_summary_shows_both_epsilons(async_run: Sample) -> None:
    spent = [e for e in async_run.entries() if e.kind == "privacy_spent"]
    assert summarize(spent[0]) == (
        "cleveland round 1: this run's epsilon 0.25; silo's total epsilon over all its runs so "
        "far 2.5 (delta 1e-05, noise 1.1, clip 1.0)"
    )
    assert "this run's share not recorded; silo's total epsilon over all its runs so far 1.75" in (
        summarize(spent[1])
    )


def test_the_contract_file_sha256_is_pinned_and_the_silos_hash_is_labelled(report_c: str) -> None:
    card = report_c.split('<h2 id="model-card">')[1].split("</table>")[0]
    assert (
        "<th>data contract file sha256 (pinned at run start)</th>"
        f"<td><code>{CONTRACT_FILE_SHA}</code></td>" in card
    )
    data = report_c.split('<h2 id="data">')[1].split('<h2 id="metrics">')[0]
    assert "<th>parsed-contract hash [1]</th>" in data
    note = data.split('id="contract-hash-note">')[1].split("</p>")[0]
    assert "Not the contract file's sha256" in note and CONTRACT_FILE_SHA in note
    assert "<code>sha256sum</code> gives) is pinned at run start" in note


def test_async_aggregates_show_base_round_staleness_weight_and_dropped(report_c: str) -> None:
    rounds = report_c.split('<h2 id="rounds">')[1].split("<h3")[0]
    assert "<th>updates: base round, staleness, weight</th><th>dropped as too stale</th>" in rounds
    assert (
        "<td>cleveland: base round 1 (v0), staleness 0, weight 1.000; hungary: base round 1 "
        "(v0), staleness 2, weight 0.577</td><td>switzerland (staleness 3)</td>" in rounds
    )
    assert "<td>cleveland (240), hungary (230)</td>" in rounds  # contributors as before


def test_failed_expectation_cells_have_no_python_none(report_c: str) -> None:
    assert (
        failed_expectation(_failed_table_level()[0]) == "expect_table_columns_to_match_set on table"
    )
    cell = (
        "expect_table_columns_to_match_set on table; "
        "expect_column_values_to_be_between on age: 39 rows (31.7%)"
    )
    assert cell in report_c
    assert "None" not in report_c.split('<h2 id="data">')[1].split('<h2 id="metrics">')[0]


def test_a_revoked_silo_is_shown_revoked_not_dropped(
    report_c: str, async_run: Sample, tmp_path: Path
) -> None:
    participants = report_c.split('<h2 id="participants">')[1].split("</table>")[0]
    assert "<th>revoked</th>" in participants
    assert (
        "<td>switzerland</td><td>seq 3" in participants
        and '<span class="fail">revoked in round 2: key leaked</span>' in participants
    )
    assert re.search(r"revoked in the federation heart \(seq \d+\): no reason given", participants)
    events = report_c.split("<h3>Rejections, dropouts, recoveries, revocations</h3>")[1]
    events = events.split("</ul>")[0]
    assert "<li>round 2: dropped switzerland (revoked in round 2: key leaked)</li>" in events
    assert "<li>switzerland revoked in round 2: key leaked</li>" in events
    revocations = [e for e in async_run.entries() if e.kind == "silo_revoked"]
    assert summarize(revocations[0]).startswith(
        "switzerland REVOKED in round 2 of this run: key leaked; key "
    )
    assert summarize(revocations[1]).startswith(
        "hungary REVOKED from federation heart (runs in progress: run-c): no reason given"
    )
    export = _export(async_run, tmp_path / "c.jsonl")
    command = ["lineage", "show", RUN_C, "--export", str(export), "--json"]
    show = CliRunner().invoke(app, command)  # JSON: the table's width depends on the terminal
    assert show.exit_code == OK, show.output
    shown = show.output
    assert "switzerland REVOKED in round 2 of this run: key leaked" in shown
    assert "this run's share not recorded" in shown


# 8. plot colours


def test_each_silo_keeps_its_colour_across_panels_and_in_the_legend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[tuple[Any, Any]] = []
    legends: list[tuple[list[Any], list[str]]] = []
    plot, legend = matplotlib.axes.Axes.plot, matplotlib.figure.Figure.legend

    def spy_plot(self: Any, *args: Any, **kwargs: Any) -> Any:
        lines = plot(self, *args, **kwargs)
        drawn.append((kwargs.get("label"), lines[0].get_color()))
        return lines

    def spy_legend(self: Any, handles: Any = None, labels: Any = None, **kwargs: Any) -> Any:
        legends.append((list(handles), list(labels)))
        return legend(self, handles, labels, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy_plot)
    monkeypatch.setattr(matplotlib.figure.Figure, "legend", spy_legend)
    metrics = [
        RoundMetrics(
            r, r, r - 1,
            {"cleveland": {"accuracy": 0.6, "auc": 0.7},
             "switzerland": {"accuracy": 0.9, "auc": None},
             "va_long_beach": {"accuracy": 0.5, "auc": 0.6}},
            {"accuracy": 0.7, "auc": 0.7},
        )
        for r in (1, 2, 3)
    ]  # fmt: skip
    silos = ["cleveland", "switzerland", "va_long_beach"]
    assert metrics_figure(metrics, silos, [("accuracy", "accuracy"), ("auc", "AUC")])
    colours: dict[Any, set[str]] = {}
    for label, colour in drawn:
        colours.setdefault(label, set()).add(str(colour))
    assert all(len(c) == 1 for c in colours.values()), colours
    ((handles, labels),) = legends
    assert labels == [*silos, "weighted"]
    for handle, label in zip(handles, labels, strict=True):
        assert {str(handle.get_color())} == colours[label]


# 10. a failed verdict exits 1, after writing the report


def test_a_report_whose_verdict_fails_exits_1_and_says_where_it_is(
    sample: Sample, tmp_path: Path
) -> None:
    export = _export(sample, tmp_path / "bad.jsonl")
    lines = export.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if '"kind":"validation_result"' in line:
            entry = json.loads(line)
            payload = json.loads(entry["payload"])
            payload["n_rows"] = 99999
            entry["payload"] = json.dumps(payload, separators=(",", ":"), sort_keys=True)
            lines[i] = json.dumps(entry, separators=(",", ":"), sort_keys=True)
            break
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["report", RUN_A, "--export", str(export), "--no-rehash", "--out", str(out)]
    )
    assert result.exit_code == FAILED, result.output
    path = out / report_filename(RUN_A)
    assert 'class="banner fail">Ledger NOT verified' in path.read_text(encoding="utf-8")
    assert "ledger NOT verified: first bad entry" in result.output
    assert f"report written to {path}" in result.output.replace("\n", "")


# 12. OpenLineage inputs: only silos that contributed


def test_openlineage_inputs_are_only_contributing_silos(sample: Sample) -> None:
    _, failed = export_openlineage(sample.entries(), RUN_B)
    assert [d["name"] for d in failed["inputs"]] == ["silo:cleveland/heart_disease"]
    others = failed["run"]["facets"]["fedsilo_run"]["nonContributing"]
    assert [(o["silo"], o["dataset"], o["revoked"]) for o in others] == [
        ("hungary", "silo:hungary/heart_disease", False)
    ]
    assert others[0]["reason"] == "contributed to no round of the run"
    start, _ = export_openlineage(sample.entries(), RUN_A)
    assert start["run"]["facets"]["fedsilo_run"]["nonContributing"] == []
