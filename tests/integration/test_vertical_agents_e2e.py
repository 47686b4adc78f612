"""Vertical runs served by silo agents: `fedsilo silo start` processes on 127.0.0.1 pick the
run up from their task poll and play their party role as a Prefect flow run; the coordinator
drives them with `fedsilo vertical train|predict` (the flow `vertical-secureboost`).

Checks: the agents' joint model predicts exactly what the in-process reference predicts, on
the training rows and on new customers (after training and again in a prediction run with the
model halves each agent kept); every party's part is a Completed flow run named
``<silo>-<run>``; `fedsilo runs show` and `lineage show` show the vertical run, `runs list`
lists every vertical run with its mode, `fedsilo report` names both parties and every tree; a
run asking for more trees than a silo's `[vertical] max_trees` allows is refused by that silo,
naming it, and fails; a size-only intersection (`fedsilo vertical intersect`) gives every
party the count and the ledger no hash; a logistic-regression run (`--model logreg`) through
the same agents predicts exactly what its in-process reference predicts and records each
epoch; the relay holds no envelope once the runs are over.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from support import prefect_api
from support.fault_helpers import START_S, wait_until
from support.live_service import coordinator, service_in_thread
from support.stopping import stop_all
from support.vertical_data import PARAMS, cols, lr_reference, reference, tables
from typer.testing import CliRunner

from flows.cli import app
from flows.processes import Proc, base_env, spawn
from flows.vertical import vertical_run
from silos.vertical.logreg import LrParams

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
SILOS = {"bank": ('label = "y"\n' + cols("b", 3), 5), "bureau": (cols("u", 4), 2)}


def write_party(root: Path, name: str, paths: dict[str, Path], url: str, prefect: str) -> Path:
    """A silo folder whose silo.toml gives the agent its vertical role: its own contract
    (id column, label for the bank, columns), its table, rows to predict, a tree limit."""
    folder = root / name
    folder.mkdir()
    contract, max_trees = SILOS[name]
    (folder / "vertical.toml").write_text(
        f'name = "{name}_vertical"\nversion = "1.0.0"\nid_column = "id"\n{contract}'
    )
    config = folder / "silo.toml"
    config.write_text(
        f'[silo]\nname = "{name}"\nfederation = "vert"\n\n'
        f'[data]\npath = "{paths[name]}"\ncontract = "{name}_horizontal"\n\n'
        f'[service]\nurls = ["{url}"]\n\n[prefect]\napi_url = "{prefect}"\n\n'
        f'[vertical]\ncontract = "vertical.toml"\npredict_data = "{paths[name + "-new"]}"\n'
        f"max_trees = {max_trees}\n"
    )
    return config


def fedsilo(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def test_agents_serve_vertical_runs(tmp_path: Path, sqlite_url: str, prefect_api_url: str) -> None:
    paths = tables(tmp_path)
    token = tmp_path / "admin.token"
    token.write_text("test-admin-token")
    token.chmod(0o600)
    procs: list[Proc] = []
    with service_in_thread(tmp_path / "ws", sqlite_url, poll_interval_s=0.05) as url:
        coord = coordinator(url)
        coord.create_federation("vert")
        try:
            for name in SILOS:
                config = write_party(tmp_path, name, paths, url, prefect_api_url)
                args = [sys.executable, "-m", "flows.cli", "silo", "start", "--config", str(config)]
                env = base_env(PREFECT_API_URL=prefect_api_url)
                procs.append(spawn(f"agent {name}", args, config.parent / "agent.log", env))

            def logs() -> str:
                return "\n".join(f"--- {p.name}\n{p.log_tail(60)}" for p in procs)

            wait_until(
                lambda: {s.name for s in coord.silos("vert")} == set(SILOS),
                START_S,
                "both agents to enrol",
                logs,
            )
            for name in SILOS:
                coord.approve("vert", name)
            common = ["--federation", "vert", "--service-url", url, "--token-file", str(token)]
            out = fedsilo(
                "vertical", "train", *common, "--active", "bank", "--party", "bank",
                "--party", "bureau", "--trees", str(PARAMS.n_trees), "--depth",
                str(PARAMS.max_depth), "--bins", str(PARAMS.n_bins), "--predict", "--json",
            )  # fmt: skip
            run_id = out.split('"run_id": "')[1].split('"')[0]
            run = vertical_run(coord, run_id)
            assert (run.status, run.trees, run.mode) == ("finished", PARAMS.n_trees, "train"), (
                logs()
            )

            expected, _, expected_new = reference(paths)
            bank_dir = tmp_path / "bank" / "workspace" / "vertical" / run_id
            np.testing.assert_array_equal(np.load(bank_dir / "predictions.npy"), expected)
            got_new = pd.read_csv(bank_dir / "predict.csv", dtype={"id": str})
            assert got_new["id"].tolist() == expected_new["id"].tolist()
            np.testing.assert_allclose(got_new["proba"], expected_new["proba"], rtol=0, atol=1e-15)
            bureau_dir = tmp_path / "bureau" / "workspace" / "vertical" / run_id
            # the passive party saves its half when its inbox says the run is over, which can
            # be a moment after the CLI returned
            wait_until((bureau_dir / "model-passive.json").is_file, 300, "the passive model", logs)
            assert not (bureau_dir / "model-active.json").exists()

            shown = fedsilo(
                "runs", "show", run_id, "--service-url", url, "--token-file", str(token)
            )
            assert f"vertical run {run_id} (train): finished" in shown
            assert "tree 1: splits by party" in shown

            # a prediction run: each agent loads the half of the model it kept
            out = fedsilo("vertical", "predict", *common, "--model-run", run_id, "--json")
            pred_id = out.split('"run_id": "')[1].split('"')[0]
            pred = vertical_run(coord, pred_id)
            assert (pred.status, pred.mode, pred.model_run) == ("finished", "predict", run_id)
            assert pred.psi_size == len(expected_new) and pred.model_digest == run.model_digest
            again = pd.read_csv(bank_dir / f"predict-{pred_id}.csv", dtype={"id": str})
            assert again["id"].tolist() == expected_new["id"].tolist()
            np.testing.assert_allclose(again["proba"], expected_new["proba"], rtol=0, atol=1e-15)

            # the bureau's policy allows 2 trees: a run asking for 3 fails, naming it
            refused = CliRunner().invoke(
                app,
                ["vertical", "train", *common, "--active", "bank", "--party", "bank",
                 "--party", "bureau", "--trees", "3"],
            )  # fmt: skip
            assert refused.exit_code != 0, refused.output
            assert "'bureau'" in refused.output and "max_trees" in refused.output

            # size-only PSI: every party learns the count, the ledger has no intersection hash
            out = fedsilo(
                "vertical", "intersect", *common, "--party", "bank", "--party", "bureau", "--json"
            )
            size_id = out.split('"run_id": "')[1].split('"')[0]
            ids = [set(pd.read_csv(paths[n], dtype={"id": str})["id"]) for n in SILOS]
            assert vertical_run(coord, size_id).psi_size == len(ids[0] & ids[1]) < len(ids[0])
            psi = [json.loads(e.payload) for e in coord.ledger(size_id) if e.kind == "vertical_psi"]
            assert sorted((p["party"], p["size"], p["digest"]) for p in psi) == [
                (n, len(ids[0] & ids[1]), None) for n in sorted(SILOS)
            ]

            # logistic regression through the same agents: the run's own hyperparameters
            out = fedsilo(
                "vertical", "train", *common, "--active", "bank", "--party", "bank",
                "--party", "bureau", "--model", "logreg", "--epochs", "2", "--batch-rows", "64",
                "--predict", "--json",
            )  # fmt: skip
            lr_id = out.split('"run_id": "')[1].split('"')[0]
            lr = vertical_run(coord, lr_id)
            assert (lr.status, lr.epochs, lr.trees) == ("finished", 2, 0), logs()
            lr_dir = tmp_path / "bank" / "workspace" / "vertical" / lr_id
            start = json.loads((lr_dir / "model-active.json").read_text())["initial_weights"]
            lr_expected, lr_new = lr_reference(paths, LrParams(epochs=2, batch_rows=64), start)
            np.testing.assert_array_equal(np.load(lr_dir / "predictions.npy"), lr_expected)
            got_lr = pd.read_csv(lr_dir / "predict.csv", dtype={"id": str})
            assert got_lr["id"].tolist() == lr_new["id"].tolist()
            np.testing.assert_allclose(got_lr["proba"], lr_new["proba"], rtol=0, atol=1e-15)
            epochs = [
                json.loads(e.payload) for e in coord.ledger(lr_id) if e.kind == "vertical_epoch"
            ]
            assert [e["epoch"] for e in epochs] == [0, 1]
            out = fedsilo("vertical", "predict", *common, "--model-run", lr_id, "--json")
            lr_pred = vertical_run(coord, out.split('"run_id": "')[1].split('"')[0])
            assert (lr_pred.status, lr_pred.params.model) == ("finished", "logreg"), logs()
            again = pd.read_csv(lr_dir / f"predict-{lr_pred.run_id}.csv", dtype={"id": str})
            np.testing.assert_allclose(again["proba"], lr_new["proba"], rtol=0, atol=1e-15)

            shown = fedsilo(
                "lineage", "show", run_id, "--service-url", url, "--token-file", str(token)
            )
            assert "vertical_tree" in shown and "vertical_finished" in shown
            assert f"run {run_id}: finished, silos bank, bureau" in shown
            # `runs list` names the vertical runs; `report` names both parties and every tree
            auth = ["--service-url", url, "--token-file", str(token)]
            listed = CliRunner().invoke(app, ["runs", "list", "--json", *auth])
            assert listed.exit_code == 0, listed.output
            kinds = {
                r["run_id"]: (r["kind"], r["mode"], r["status"]) for r in json.loads(listed.stdout)
            }
            assert kinds[run_id] == ("vertical", "train", "finished")
            assert (kinds[pred_id], kinds[size_id]) == (
                ("vertical", "predict", "finished"),
                ("vertical", "psi_size", "finished"),
            )
            assert ("vertical", "train", "failed") in kinds.values()  # the refused run
            fedsilo("report", run_id, "--out", str(tmp_path / "report"), *auth)
            html = (tmp_path / "report" / f"fedsilo-report-{run_id}.html").read_text()
            assert "Ledger verified" in html and "threshold" not in html.lower()
            assert "<td>bank</td><td>active: holds the labels</td>" in html
            assert "<td>bureau</td><td>passive: holds features</td>" in html
            assert html.count("<li>tree ") == PARAMS.n_trees and pred_id in html
            # retention: every relayed envelope was deleted once read or when its run ended
            engine = sa.create_engine(sqlite_url)
            with engine.connect() as c:
                left = c.execute(sa.text("SELECT count(*) FROM vertical_envelopes")).scalar()
            engine.dispose()
            assert left == 0

            runs = (run_id, pred_id, size_id, lr_id, lr_pred.run_id)
            names = [f"{s}-{r}" for s in SILOS for r in runs]
            ended = prefect_api.ended_flow_runs(prefect_api_url, names)
            assert ended == dict.fromkeys(names, "COMPLETED"), (ended, logs())
        finally:
            stop_all(procs)
