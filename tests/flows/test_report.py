"""`fedsilo report RUN`: a self-contained HTML report, checked as text and in a real browser."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import text
from support.lineage_sample import PREFECT_RUN_A, RUN_A, RUN_B, Sample, build_sample
from typer.testing import CliRunner

from aggregation.service import ledger
from aggregation.service.db import make_sessionmaker, transaction
from flows.cli import app
from flows.lineage_cmds import LineageReviewError
from flows.report import report_filename, write_report
from schemas.ledger_checkpoint import AnchoredCheckpoint, countersign, make_checkpoint
from schemas.ledger_export import export_entries
from schemas.lineage import LineageEntry

PREFECT_UI = "http://127.0.0.1:4200"
CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = (
    "verification",
    "regressions",
    "participants",
    "data",
    "metrics",
    "privacy",
    "model-card",
    "rounds",
    "prefect",
    "timeline",
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    return build_sample(tmp_path_factory.mktemp("ledger"))


@pytest.fixture(scope="module")
def report_a(sample: Sample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return write_report(sample.entries(), sample.keys, RUN_A, out, sample.store, PREFECT_UI)


def _no_external_resources(document: str) -> None:
    """Nothing the browser would fetch: every src is a data URI, no scripts, styles or imports."""
    assert "<script" not in document.lower()
    assert "<link" not in document.lower()
    assert "@import" not in document
    assert "url(" not in document
    assert "<iframe" not in document.lower() and "<object" not in document.lower()
    for src in re.findall(r'\bsrc="([^"]*)"', document):
        assert src.startswith("data:image/png;base64,")
    # Any web address left is the target of a plain link.
    hrefs = re.findall(r'<a href="([^"]*)"', document)
    addresses = re.findall(r"https?://[^\s\"<]+", document)
    assert all(any(a in h for h in hrefs) for a in addresses)


def test_the_report_has_every_section_and_embedded_plots(report_a: Path, sample: Sample) -> None:
    assert report_a.name == report_filename(RUN_A) == "fedsilo-report-run-a.html"
    document = report_a.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<h2 id="{section}">' in document
    assert (
        'class="banner pass">Ledger verified: hash chain and all signatures intact over 55 '
        "entries; all 4 model files re-hashed and matching the ledger; truncation of the newest "
        "entries NOT checked (no checkpoints given)." in document
    )
    assert "ledger OK" not in document  # the verifier's own wording, not a sentence for people
    assert "Model files were re-hashed against the ledger" in document
    for version in range(4):  # each model: the ledger's sha256 beside the recomputed one
        sha = sample.models[(RUN_A, version)]
        assert (
            f"<td><code>{sha}</code></td><td><code>{sha}</code></td>"
            '<td><span class="pass">match</span></td>' in document
        )
    assert "<th></th>" not in document  # no column without a heading
    assert "No silo declined a round." in document
    assert "No silo's AUC or accuracy fell from its best by more than 0.1." in document
    assert 'class="callout"' not in document
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', document)
    assert [alt for alt, _ in images] == ["metrics per round", "privacy spent per silo"]
    for _, data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG" and image.width >= 600
            # A plot, not a blank canvas: many colours from lines, text and anti-aliasing.
            assert len(image.convert("RGB").getcolors(1 << 20) or []) > 100
    assert sample.models[(RUN_A, 3)] in document  # the final model's sha256, in full
    assert "<th>parameters</th><td>241</td>" in document  # 13*16 + 16 + 16 + 1
    assert "expect_column_values_to_be_between on chol: 123 rows (100.0%)" in document
    assert "round 2: dropped hungary" in document
    assert "masks recovered from cleveland, switzerland" in document
    assert "switzerland update rejected, HTTP 409" in document
    assert "<th>rounds / min silos</th><td>3 / 2</td>" in document
    link = f'<a href="{PREFECT_UI}/runs/flow-run/{PREFECT_RUN_A}">{PREFECT_RUN_A}</a>'
    assert link in document
    _no_external_resources(document)


def test_validation_and_privacy_rows_per_silo_and_round(report_a: Path) -> None:
    document = report_a.read_text(encoding="utf-8")
    data = document.split('<h2 id="data">')[1].split('<h2 id="metrics">')[0]
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\w+)</td>.*?<span class=\"(pass|fail)\">", data)
    assert len(rows) == 9
    assert ("1", "switzerland", "fail") in rows and ("2", "switzerland", "pass") in rows
    privacy = document.split('<h2 id="privacy">')[1].split('<h2 id="model-card">')[0]
    assert "<td>hungary</td><td>3</td><td>0.7928</td><td>1e-05</td>" in privacy


def test_a_failed_run_without_prefect_id(sample: Sample, tmp_path: Path) -> None:
    path = write_report(sample.entries(), sample.keys, RUN_B, tmp_path, None, PREFECT_UI)
    document = path.read_text(encoding="utf-8")
    assert "status failed" in document
    assert "failed: round 2: 1 of 2 silos answered by the deadline — min_silos is 2" in document
    assert "No Prefect flow run recorded." in document
    # its last model is intermediate: the card says so, and names it with its sha256
    assert "<th>final model</th><td>none: the run failed</td>" in document
    assert "<th>last model (intermediate)</th><td>v1 at " in document
    assert sample.models[(RUN_B, 1)] in document
    assert "Model files were NOT re-hashed" in document
    assert "--no-rehash" in document
    _no_external_resources(document)
    with pytest.raises(LineageReviewError, match="run 'run-q' has no entries"):
        write_report(sample.entries(), sample.keys, "run-q", tmp_path)


def test_a_tampered_ledger_is_reported_as_not_verified(tmp_path: Path) -> None:
    sample = build_sample(tmp_path)
    seq = next(e.seq for e in sample.entries() if e.kind == "aggregate")
    with sample.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER ledger_entries_no_update"))
        conn.execute(
            text(
                "UPDATE ledger_entries SET payload = replace(payload, 'true', 'false') "
                "WHERE seq = :s"
            ),
            {"s": seq},
        )
    path = write_report(sample.entries(), sample.keys, RUN_A, tmp_path / "out", sample.store)
    document = path.read_text(encoding="utf-8")
    assert (
        f'class="banner fail">Ledger NOT verified: first bad entry {seq}: entry {seq}: '
        "entry_hash mismatch (content altered)"
    ) in document
    assert f'<tr class="bad"><td>{seq} <span class="fail">BAD</span></td>' in document


def _countersigned(sample: Sample, entry: LineageEntry, round_: int) -> AnchoredCheckpoint:
    cp = make_checkpoint(
        sample.private["service"],
        height=entry.seq,
        head_hash=entry.entry_hash,
        run_id=RUN_A,
        round=round_,
        event="round_closed",
    )
    silos = ("silo:cleveland", "silo:hungary")
    signed = tuple(countersign(cp, silo, sample.private[silo]) for silo in silos)
    return AnchoredCheckpoint(checkpoint=cp, countersignatures=signed)


def test_the_report_checks_the_ledger_against_its_checkpoints(
    sample: Sample, tmp_path: Path
) -> None:
    """As `fedsilo lineage verify` does: an export cut below a countersigned checkpoint (its
    trailer rewritten, so the chain alone is intact) fails the banner."""
    entries = sample.entries()
    anchors = [_countersigned(sample, entries[9], 1), _countersigned(sample, entries[-1], 3)]
    export = tmp_path / "cut.jsonl"
    export.write_text(export_entries(entries[:-3], anchors), encoding="utf-8")
    export.with_suffix(".keys.json").write_text(json.dumps(sample.keys), encoding="utf-8")
    out = tmp_path / "cut"
    command = ["report", RUN_A, "--export", str(export), "--out", str(out), "--no-rehash"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output  # written, then a failed verdict: exit 1
    document = (out / report_filename(RUN_A)).read_text(encoding="utf-8")
    assert (
        'class="banner fail">Ledger NOT verified: 1 checkpoint problem(s), listed below.</div>'
        in document
    )
    assert (
        f"<li>ledger ends at seq {entries[-4].seq} but checkpoint of round 3 of run {RUN_A} "
        "(round_closed) countersigned by silo:cleveland, silo:hungary says height "
        f"{entries[-1].seq} with head {entries[-1].entry_hash}: entries {entries[-3].seq}.."
        f"{entries[-1].seq} (at least) were removed</li>" in document
    )
    whole = write_report(entries, sample.keys, RUN_A, tmp_path / "whole", checkpoints=anchors)
    assert (
        "; the ledger matches 2 silo-countersigned checkpoints (highest: height "
        f"{entries[-1].seq}, checkpoint of round 3 of run {RUN_A} (round_closed), countersigned "
        "by silo:cleveland, silo:hungary).</div>" in whole.read_text(encoding="utf-8")
    )


def test_ledger_text_and_settings_are_escaped(tmp_path: Path) -> None:
    sample = build_sample(tmp_path)
    hostile = '<script>alert("x")</script><img src="https://evil.example/p.png">'
    with transaction(make_sessionmaker(sample.engine)) as session:
        ledger.append(
            session,
            kind="update_rejected",
            payload={"silo": "switzerland", "round": 3, "status": 400, "reason": hostile},
            run_id=RUN_A,
            author="service",
            service_key=sample.private["service"],
        )
    path = write_report(sample.entries(), sample.keys, RUN_A, tmp_path, None, "javascript:alert(1)")
    document = path.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in document
    assert "javascript:" not in document
    assert "Pass the Prefect UI address to get links." in document
    assert "evil.example" in document  # shown as text ...
    assert 'src="https://evil.example' not in document  # ... never loaded
    assert "<script" not in document


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.mark.integration
@pytest.mark.skipif(
    not CHROMIUM.exists() and not _ci(),
    reason="needs Debian's chromium (apt-get install -y chromium); CI always runs this",
)
def test_chromium_renders_the_plots(report_a: Path, tmp_path: Path) -> None:
    assert CHROMIUM.exists(), "CI=true: install Debian's chromium (apt-get install -y chromium)"
    shot = tmp_path / "report.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2400",
        report_a.as_uri(),
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        rgb = image.convert("RGB")
    colours = rgb.getcolors(1 << 22) or []
    assert len(colours) > 1000  # text, tables and anti-aliased plot lines, not a blank page
    # matplotlib's first three line colours (tab:blue, tab:orange, tab:green) appear only in
    # the plots: the page's own CSS uses none of them.
    counts = dict((c, n) for n, c in colours)
    for line in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):
        assert counts.get(line, 0) > 200, f"plot colour {line} missing from the screenshot"
