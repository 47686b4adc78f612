"""The compliance report of a FedBoost ensemble run and of a FedDistill run.

The ledger is written the way `support.lineage_sample` writes it: the service's real
`ledger.append` into SQLite, silos' statements signed with their Ed25519 keys, and the
ensemble artifacts stored as the service stores them, so the report re-hashes them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from pathlib import Path

import pytest
from PIL import Image
from support.lineage_sample import SILOS, Sample, Writer, open_ledger, run_spec, start_run

from aggregation.service.engines.ensemble import artifact_bytes
from flows.report import write_report
from schemas.distill import DistillSpec
from schemas.distill_statement import DistilledPayload
from schemas.ensemble import EnsembleArtifact, EnsembledPayload, EnsembleSpec, Member
from schemas.wire import Metrics

ENSEMBLE_RUN, DISTILL_RUN = "run-ensemble", "run-distill"
MALFORMED_RUN = "run-distill-malformed"
SWAPPED_RUN = "run-ensemble-swapped"  # switzerland signs a statement about another member
KINDS = {"cleveland": "xgboost", "hungary": "mlp", "switzerland": "logreg"}
N_TRAIN = {"cleveland": 170, "hungary": 164, "switzerland": 69}
# weights after the members round (uniform) and two weight rounds
WEIGHTS = [[1 / 3, 1 / 3, 1 / 3], [0.45, 0.35, 0.20], [0.55, 0.33, 0.12]]
# (ensemble AUC, member alone AUC): the ensemble does worse than hungary's own member
ENSEMBLED = {"cleveland": (0.86, 0.84), "hungary": (0.79, 0.83), "switzerland": (0.74, 0.61)}


def _member(silo: str) -> Member:
    data = f"fedsilo-local-model/1 member of {silo}".encode()
    return Member(
        silo=silo,
        kind=KINDS[silo],  # type: ignore[arg-type]
        sha256=hashlib.sha256(data).hexdigest(),
        n_train=N_TRAIN[silo],
        model_b64=base64.b64encode(data).decode(),
    )


def _ensemble_run(w: Writer, run_id: str = ENSEMBLE_RUN) -> None:
    spec = run_spec(
        4,
        ensemble=EnsembleSpec(
            kinds={"default": "logreg", "cleveland": "xgboost", "hungary": "mlp"}
        ),
    )
    start_run(w, run_id, list(SILOS), spec, None)
    members = [_member(s) for s in SILOS]
    for round_, weights in enumerate(WEIGHTS, start=1):
        artifact = EnsembleArtifact(
            run_id=run_id, members=members, weights=weights, weight_round=round_ - 1
        )
        contributors = [
            {
                "silo": m.silo,
                "digest": m.sha256
                if round_ == 1
                else hashlib.sha256(f"{round_}{m.silo}".encode()).hexdigest(),
                "n_examples": m.n_train,
            }
            for m in members
        ]
        aggregate = {
            "round": round_,
            "contributors": contributors,
            "model_version": round_,
            "ensemble": artifact.summary(),
        }
        if round_ > 1:
            aggregate |= {"mean_gradient": [0.01, -0.02, 0.01], "secure_aggregation": True}
        w.service("aggregate", aggregate, run_id)
        final = w.saved(run_id, round_, round_, artifact_bytes(artifact), "json")
    for m in members:
        ens, alone = ENSEMBLED[m.silo]
        statement = EnsembledPayload(
            silo=m.silo,
            round=4,
            ensemble_sha256=final,
            # the swapped run: switzerland names cleveland's member, not its own
            member_sha256=members[0].sha256
            if run_id == SWAPPED_RUN and m.silo == "switzerland"
            else m.sha256,
            n_test=40,
            ensemble_auc=ens,
            member_auc=alone,
            ensemble_loss=0.45,
            member_loss=0.5,
        )
        w.silo(m.silo, "ensembled", statement.model_dump(mode="json"), run_id)
    done = {
        "status": "finished",
        "reason": "4 rounds completed",
        "final_model_version": 3,
        "final_model_sha256": final,
    }
    w.service("run_finished", done, run_id)


def _distilled(silo: str, round_: int, mine: float, alone: float) -> DistilledPayload:
    return DistilledPayload(
        silo=silo,
        round=round_,
        kind=KINDS[silo],  # type: ignore[arg-type]
        model_sha256=hashlib.sha256(f"distilled {silo} {round_}".encode()).hexdigest(),
        soft_labels_version=round_ - 1,
        reference_rows=64,
        n_train=N_TRAIN[silo],
        distilled=Metrics(n_test=40, loss=0.5, auc=mine),
        alone=Metrics(n_test=40, loss=0.52, auc=alone),
    )


# silo -> (distilled AUC, alone AUC) per round; the latest round counts: cleveland recovered,
# switzerland ends worse than alone
DISTILLED = {
    "cleveland": [(0.70, 0.80), (0.85, 0.80)],
    "hungary": [(0.78, 0.75), (0.81, 0.75)],
    "switzerland": [(0.66, 0.64), (0.60, 0.64)],
}


def _distill_run(w: Writer) -> None:
    spec = run_spec(
        2,
        federation_statistics=True,
        distill=DistillSpec(
            kinds={"default": "logreg", "cleveland": "xgboost", "hungary": "mlp"}, reference_rows=64
        ),
    )
    start_run(w, DISTILL_RUN, list(SILOS), spec, None)
    for round_ in (1, 2):
        for silo in SILOS:
            mine, alone = DISTILLED[silo][round_ - 1]
            payload = _distilled(silo, round_, mine, alone).model_dump(mode="json")
            w.silo(silo, "distilled", payload, DISTILL_RUN)
        contributors = [{"silo": s, "digest": "ab" * 32, "n_examples": N_TRAIN[s]} for s in SILOS]
        aggregate = {
            "round": round_,
            "contributors": contributors,
            "aggregate_digest": hashlib.sha256(f"soft {round_}".encode()).hexdigest(),
            "model_version": round_,
            "distill": True,
            "reference_rows": 64,
            "secure_aggregation": True,
            "individual_updates_seen_by_service": False,
        }
        w.service("aggregate", aggregate, DISTILL_RUN)
        w.saved(DISTILL_RUN, round_, round_, f"soft labels {round_}".encode(), "json")
    w.service("run_finished", {"status": "finished", "reason": "2 rounds completed"}, DISTILL_RUN)


def _malformed_distill_run(w: Writer) -> None:
    """A silo signs a ``distilled`` statement that is not one (no metrics of the alone model)."""
    spec = run_spec(1, federation_statistics=True, distill=DistillSpec(kinds={"default": "logreg"}))
    start_run(w, MALFORMED_RUN, list(SILOS), spec, None)
    payload = _distilled("cleveland", 1, 0.8, 0.7).model_dump(mode="json")
    del payload["alone"]
    w.silo("cleveland", "distilled", payload, MALFORMED_RUN)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    w = open_ledger(tmp_path_factory.mktemp("ledger"))
    _ensemble_run(w)
    _ensemble_run(w, SWAPPED_RUN)
    _malformed_distill_run(w)
    _distill_run(w)
    return w.sample


def _report(sample: Sample, run_id: str, out: Path) -> str:
    path = write_report(sample.entries(), sample.keys, run_id, out, sample.store)
    return path.read_text(encoding="utf-8")


def _section(document: str, heading_id: str) -> str:
    return document.split(f'<h2 id="{heading_id}">')[1].split("<h2 ")[0]


def test_an_ensemble_run_lists_members_weights_and_the_worse_silo(
    sample: Sample, tmp_path: Path
) -> None:
    document = _report(sample, ENSEMBLE_RUN, tmp_path)
    assert 'class="banner pass">Ledger verified' in document
    assert "all 3 model files re-hashed and matching the ledger" in document
    assert 'id="distillation"' not in document
    section = _section(document, "ensemble")
    assert "is shared with every silo and the service" in section
    for silo, weight in zip(SILOS, WEIGHTS[-1], strict=True):
        member = _member(silo)
        row = re.search(rf"<tr><td>{silo}</td>.*?</tr>", section)
        assert row is not None, silo
        cells = re.findall(r"<td>(.*?)</td>", row.group(0))
        assert cells[:5] == [
            silo,
            KINDS[silo],
            f"<code>{member.sha256}</code>",
            str(N_TRAIN[silo]),
            f"{weight:.4f}",
        ]
        ens, alone = ENSEMBLED[silo]
        assert cells[5:7] == [f"{ens:.4f}", f"{alone:.4f}"]
        assert ("ensemble worse than own member" in cells[-1]) == (silo == "hungary")
    assert "did worse than the silo's own member at hungary</b>" in section
    assert "final weights after 2 weight rounds" in section
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', section)
    assert [alt for alt, _ in images] == ["ensemble weights per round"]
    with Image.open(io.BytesIO(base64.b64decode(images[0][1]))) as image:
        assert image.format == "PNG" and image.width >= 600
        assert len(image.convert("RGB").getcolors(1 << 20) or []) > 100  # lines, text, legend


def test_a_distillation_run_lists_each_silos_model_and_flags_worse_than_alone(
    sample: Sample, tmp_path: Path
) -> None:
    document = _report(sample, DISTILL_RUN, tmp_path)
    assert 'class="banner pass">Ledger verified' in document
    assert 'id="ensemble"' not in document
    section = _section(document, "distillation")
    assert "model stayed at the silo" in section
    assert "soft labels, P(y=1) on 64 synthetic reference rows" in section
    for silo in SILOS:
        latest = _distilled(silo, 2, *DISTILLED[silo][1])
        row = re.search(rf"<tr><td>{silo}</td>.*?</tr>", section)
        assert row is not None, silo
        cells = re.findall(r"<td>(.*?)</td>", row.group(0))
        mine, alone = DISTILLED[silo][1]
        assert cells[:6] == [
            silo,
            KINDS[silo],
            f"<code>{latest.model_sha256}</code>",
            "2",
            f"{mine:.4f}",
            f"{alone:.4f}",
        ]
        # the latest statement counts: cleveland was worse in round 1, not any more
        assert ("distilled worse than alone" in cells[-1]) == (silo == "switzerland")
    assert "Distilling did worse than training alone at switzerland</b>" in section


def test_a_statement_about_another_member_is_flagged(sample: Sample, tmp_path: Path) -> None:
    section = _section(_report(sample, SWAPPED_RUN, tmp_path), "ensemble")
    flagged = re.findall(r"<tr><td>(\w+)</td>[^\n]*statement names another member sha256", section)
    assert flagged == ["switzerland"]


def test_a_malformed_statement_is_named_not_rendered_as_rows(
    sample: Sample, tmp_path: Path
) -> None:
    section = _section(_report(sample, MALFORMED_RUN, tmp_path), "distillation")
    assert "<b>Unreadable:</b> an aggregate entry or distilled statement of this run" in section
    assert "Left out: unreadable (see above)." in section
    assert "<td>cleveland</td>" not in section
