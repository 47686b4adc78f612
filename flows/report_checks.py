"""What the report checks beyond the chain: the ledger against its countersigned checkpoints,
model files re-hashed, per-silo metric regressions, and each silo's validation summary with a
link to its Great Expectations data docs.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from rich.console import Console, RenderableType

from flows.lineage_cmds import anchor_problems, fetched_artifact_checker, verify_silo_copies
from flows.lineage_view import ModelRecord, RoundMetrics, Validation, as_float
from schemas.ledger_checkpoint import AnchoredCheckpoint
from schemas.ledger_verify import ArtifactChecker, directory_artifact_checker
from schemas.lineage import LineageEntry
from silos.client_errors import NotFound

# Unitless metrics where higher is better, checked for regressions: (payload key, label).
# RMSE and MAE are in the target's units, so one absolute threshold cannot fit them.
REGRESSION_METRICS = (("auc", "AUC"), ("accuracy", "accuracy"), ("f1_macro", "macro-F1"),
                      ("r2", "R²"))  # fmt: skip
DEFAULT_REGRESSION_THRESHOLD = 0.1


@dataclass(frozen=True)
class AnchorCheck:
    """The ledger against its checkpoints, as `fedsilo lineage verify` checks it: ok, what
    the banner says, and every problem."""

    ok: bool
    said: str
    problems: tuple[str, ...] = ()


def anchor_check(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    checkpoints: Sequence[AnchoredCheckpoint] | None,
    silo_checkpoints: Sequence[AnchoredCheckpoint] = (),
) -> AnchorCheck:
    """Check `entries` against `checkpoints` (from the export or the service; None when the
    caller has none) and those the silos kept in their own copies (`silo_checkpoints`), so
    that a cut or rewritten tail fails the report as it fails verify.

    The export's own checkpoints cannot show a cut made by whoever holds the ledger (they
    drop the checkpoints with the entries); only the silos' copies can (`SiloCopyCheck`)."""
    unchecked = "truncation of the newest entries NOT checked"
    if checkpoints is None and not silo_checkpoints:
        return AnchorCheck(True, f"{unchecked} (no checkpoints given)")
    report, problems = anchor_problems(
        entries, keys, silo_checkpoints=silo_checkpoints, export_checkpoints=checkpoints or ()
    )
    if problems:
        return AnchorCheck(
            False, f"{len(problems)} checkpoint problem(s), listed below", tuple(problems)
        )
    if report.highest is None:
        return AnchorCheck(True, f"{unchecked} (no checkpoint countersigned by a silo)")
    cp, span = report.highest.checkpoint, report.uncovered()
    said = (
        f"the ledger matches {report.anchors} silo-countersigned checkpoints (highest: height "
        f"{cp.height}, {cp.describe()}, countersigned by {', '.join(report.highest_by)})"
    )
    return AnchorCheck(True, said + (f"; {span} after it covered by none" if span else ""))


@dataclass(frozen=True)
class SiloCopyCheck:
    """The silos' own copies (``--silo-copy``) against the ledger, as `fedsilo lineage verify
    --silo-copy` checks them: ok, the copies given, and each copy's result as plain lines.
    Without any copy (`paths` empty) a cut by the ledger's holder cannot be detected."""

    ok: bool
    paths: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()

    @property
    def given(self) -> bool:
        return bool(self.paths)


def plain_lines(renderable: RenderableType) -> list[str]:
    """A rich renderable's lines as plain text (the report shows them as escaped text)."""
    console = Console(file=io.StringIO(), width=400, record=True, markup=False)
    console.print(renderable)
    return [line.rstrip() for line in console.export_text().splitlines() if line.strip()]


def silo_copy_check(
    paths: Sequence[Path], entries: Sequence[LineageEntry], keys: Mapping[str, str]
) -> tuple[SiloCopyCheck, list[AnchoredCheckpoint]]:
    """Cross-check each silo copy (a silo's workspace or its ``lineage/records.jsonl``) with
    the same code as `fedsilo lineage verify --silo-copy` (`verify_silo_copies`); returns the
    result and the checkpoints the silos countersigned, for `anchor_check`."""
    if not paths:
        return SiloCopyCheck(True), []
    ok, shown, checkpoints = verify_silo_copies(list(paths), entries, keys)
    lines = tuple(line for renderable in shown for line in plain_lines(renderable))
    return SiloCopyCheck(ok, tuple(str(p) for p in paths), lines), checkpoints


@dataclass(frozen=True)
class ModelCheck:
    """One stored model of the run, its sha256 as the ledger records it and as recomputed."""

    version: int
    round: int
    path: str
    ledger_sha256: str
    actual_sha256: str | None

    @property
    def status(self) -> str:
        if self.actual_sha256 is None:
            return "missing"
        return "match" if self.actual_sha256 == self.ledger_sha256 else "MISMATCH"


def rehash_models(models: Sequence[ModelRecord], checker: ArtifactChecker) -> list[ModelCheck]:
    """Recompute every model file's sha256 through `checker` (a folder or the service)."""
    return [
        ModelCheck(m.version, m.round, m.path, m.sha256, checker(m.path))
        for m in sorted(models, key=lambda m: m.version)
    ]


@dataclass(frozen=True)
class Regression:
    """A silo's metric fell from its best so far by more than the threshold."""

    silo: str
    metric: str
    best: float
    best_round: int
    value: float
    round: int

    @property
    def drop(self) -> float:
        return self.best - self.value


def regression_checked(names: Sequence[tuple[str, str]]) -> str:
    """The checked metrics the run recorded, for a sentence: "AUC or accuracy"."""
    keys = {k for k, _ in names}
    labels = [label for key, label in REGRESSION_METRICS if key in keys]
    return " or ".join(labels) or "AUC or accuracy"


def regressions(
    metrics: Sequence[RoundMetrics],
    silos: Sequence[str],
    threshold: float = DEFAULT_REGRESSION_THRESHOLD,
) -> list[Regression]:
    """The largest fall from a previous best, per silo and metric, when it exceeds `threshold`.

    A silo whose AUC went 0.91 (round 2) -> 0.57 (round 5) is one `Regression`; a metric that
    only rises, or dips by at most `threshold`, is none.
    """
    found = []
    ordered = sorted(metrics, key=lambda m: (m.round, m.seq))
    for silo in silos:
        for key, label in REGRESSION_METRICS:
            best: tuple[float, int] | None = None
            worst: Regression | None = None
            for m in ordered:
                value = as_float((m.per_silo.get(silo) or {}).get(key))
                if value is None:
                    continue
                if best is not None and best[0] - value > (worst.drop if worst else threshold):
                    worst = Regression(silo, label, best[0], best[1], value, m.round)
                if best is None or value > best[0]:
                    best = (value, m.round)
            if worst is not None:
                found.append(worst)
    return found


@dataclass(frozen=True)
class DataDocs:
    """One silo's validations in this run, and where its operator keeps GX's data docs."""

    silo: str
    rounds: int
    passed: int
    last_round: int | None
    last_success: bool | None
    failed: tuple[str, ...]
    link: str | None


def docs_link(location: str) -> str:
    """A link target for a silo's data docs: an http(s) address as given, or a local folder
    (a silo workspace, its ``data_docs`` folder) or page as a ``file:`` URI to its index.

    Raises
    ------
    ValueError
        If `location` is another kind of URL (``javascript:``...), or a path that does not exist.
    """
    scheme = urlsplit(location).scheme
    if scheme in ("http", "https"):
        return location
    if scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ValueError(f"data docs location {location!r}: only http(s) addresses or paths")
    path = Path(location).expanduser()
    for page in (path / "data_docs" / "index.html", path / "index.html", path):
        if page.is_file():
            return page.resolve().as_uri()
    raise ValueError(
        f"data docs location {location!r}: no index.html there (give the silo's workspace, "
        "its data_docs folder or a page)"
    )


def data_docs(
    validations: Sequence[Validation], silos: Sequence[str], locations: Mapping[str, str]
) -> list[DataDocs]:
    """Per silo: rounds validated and passed, the last result, failed expectations, a link.

    The ledger holds only the summary a silo signed (the data docs describe the institution's
    data and stay inside it), so links come from `locations` (silo -> folder or address).
    """
    rows = []
    for silo in silos:
        own = sorted((v for v in validations if v.silo == silo), key=lambda v: (v.round, v.seq))
        failed = dict.fromkeys(
            f"{f.get('expectation')} on {f.get('column') or 'table'}" for v in own for f in v.failed
        )
        last = own[-1] if own else None
        link = docs_link(locations[silo]) if silo in locations else None
        rows.append(
            DataDocs(
                silo,
                len(own),
                sum(v.success for v in own),
                last.round if last else None,
                last.success if last else None,
                tuple(failed),
                link,
            )
        )
    return rows


def parse_locations(items: Sequence[str]) -> dict[str, str]:
    """``["hungary=/srv/silo", ...]`` -> ``{"hungary": "/srv/silo"}``, each checked by
    `docs_link` (so a wrong path fails before anything is written)."""
    found = {}
    for item in items:
        silo, sep, location = item.partition("=")
        if not sep or not silo or not location:
            raise ValueError(f"{item!r}: give SILO=LOCATION, e.g. hungary=/srv/fedsilo/silo")
        docs_link(location)
        found[silo] = location
    return found


class _Downloads(Protocol):
    def download_model(self, run_id: str, version: int) -> bytes: ...


def model_source(
    entries: Sequence[LineageEntry], folder: Path | None, client: _Downloads | None
) -> tuple[ArtifactChecker, str]:
    """How to re-hash models: files under `folder`, else downloads through `client` (the
    service's admin API); with a description for the report."""
    if folder is not None:
        return directory_artifact_checker(folder), f"the files under {folder}"
    if client is None:
        raise ValueError("re-hashing needs a folder of model files or a service client")

    def fetch(run_id: str, version: int) -> bytes | None:
        try:
            return client.download_model(run_id, version)
        except NotFound:  # the ledger names a model the service no longer holds: "missing"
            return None

    return fetched_artifact_checker(entries, fetch), DOWNLOADED_SOURCE


# What re-hashing through the service reads: the copy of each model version the service
# stores and serves, not the file at the path the ledger names in its workspace.
DOWNLOADED_SOURCE = "the service (downloaded by the admin API)"
