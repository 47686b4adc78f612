"""`fedsilo demo`: the embedded federation of four hospitals, end to end on one machine.

Same code paths as production: separate processes for the Prefect server, the aggregation
service and each hospital's silo agent, all on 127.0.0.1 with SQLite; only the addresses and
databases differ from a real deployment.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from aggregation.client import CoordinatorClient
from flows import baselines
from flows.demo_config import DEMO_SPLIT_SEED, DEMO_TEST_FRACTION
from flows.demo_datasets import DATASETS, DemoDataset
from flows.exceptions import DemoError
from flows.processes import Proc, start_agent, start_prefect_server, start_service
from schemas import tensors
from schemas.contracts.loader import load_contract
from schemas.specs import ModelSpec, PrivacySpec, RunSpec, SecureAggregationSpec, StrategySpec
from silos.features import FeaturePipeline

MARKER = ".fedsilo-demo"


@dataclass
class DemoOptions:
    workspace: Path
    dataset: str = "heart"
    model: str = ""
    strategy: str = ""
    rounds: int = 0
    keep_running: bool = False
    dp: bool = False
    plain: bool = False
    prefect_port: int = 4200
    service_port: int = 8700


def demo_spec(opts: DemoOptions, n_features: int) -> RunSpec:
    spec = DATASETS[opts.dataset].spec(n_features)
    update: dict[str, object] = {}
    if opts.model:
        hidden = (32,) if opts.model == "mlp" else ()
        update["model"] = ModelSpec(kind=opts.model, n_features=n_features, hidden=hidden)  # type: ignore[arg-type]
    if opts.strategy:
        server_lr = 0.05 if opts.strategy in ("fedadam", "fedyogi", "fedadagrad") else 1.0
        mu = 0.01 if opts.strategy == "fedprox" else 0.0
        update["strategy"] = StrategySpec(name=opts.strategy, server_lr=server_lr, mu=mu)  # type: ignore[arg-type]
    if opts.rounds:
        update["rounds"] = opts.rounds
    if opts.plain:
        update["secure_aggregation"] = SecureAggregationSpec(enabled=False)
    if opts.dp:
        # each silo clips its delta to 0.5 and adds N(0, (1.0 * 0.5)^2 / n)
        update["privacy"] = PrivacySpec(noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)
    return spec.model_copy(update=update)


def prepare_workspace(ws: Path) -> None:
    if ws.exists():
        if not (ws / MARKER).exists():
            raise DemoError(
                f"{ws} exists and is not a demo workspace; choose --workspace elsewhere"
            )
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    (ws / MARKER).write_text("created by fedsilo demo; deleted by the next demo run\n")


def write_silo(
    ws: Path,
    data: DemoDataset,
    name: str,
    frame,
    service_url: str,  # type: ignore[no-untyped-def]
    prefect_url: str,
) -> Path:
    folder = ws / "silos" / name
    folder.mkdir(parents=True)
    frame.to_csv(folder / "data.csv", index=False)
    (folder / "silo.toml").write_text(
        f'[silo]\nname = "{name}"\nfederation = "{data.federation}"\nworkspace = "workspace"\n\n'
        f'[data]\npath = "data.csv"\ncontract = "{data.contract}"\n'
        f"test_fraction = {DEMO_TEST_FRACTION}\nsplit_seed = {DEMO_SPLIT_SEED}\n\n"
        f'[service]\nurls = ["{service_url}"]\n\n[prefect]\napi_url = "{prefect_url}"\n\n'
        '[policy]\nallowed_models = ["logreg", "mlp"]\nmax_rounds_per_run = 200\n'
    )
    return folder / "silo.toml"


def approve_all(
    client: CoordinatorClient,
    federation: str,
    names: list[str],
    agents: list[Proc],
    timeout_s: float = 120,
) -> None:
    client.create_federation(federation, f"fedsilo demo federation {federation}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in agents:
            if not proc.alive():
                raise DemoError(
                    f"{proc.name} exited; its log {proc.log_path} ends with:\n{proc.log_tail()}"
                )
        enrolled = {s.name: s.status for s in client.silos(federation)}
        for name in names:
            if enrolled.get(name) == "pending":
                client.approve(federation, name)
        if all(enrolled.get(n) == "approved" for n in names):
            return
        time.sleep(0.3)
    raise DemoError(
        f"silos did not enrol within {timeout_s:.0f}s: {sorted(set(names) - set(enrolled))}"
    )


def run_demo(opts: DemoOptions, console: Console) -> dict[str, object]:
    ws = opts.workspace.resolve()
    prepare_workspace(ws)
    if opts.dataset not in DATASETS:
        raise DemoError(f"unknown demo dataset {opts.dataset!r}; choose one of {sorted(DATASETS)}")
    data = DATASETS[opts.dataset]
    contract = load_contract(data.contract)
    pipeline = FeaturePipeline.from_contract(contract)
    frames = data.frames()
    spec = demo_spec(opts, pipeline.n_features).model_copy(
        update={"federation_statistics": contract.pipeline.needs_federation_stats}
    )
    procs: list[Proc] = []
    console.rule(f"[bold]fedsilo demo: {data.title}")
    console.print(
        "[yellow]development mode[/yellow]: plain HTTP on 127.0.0.1, SQLite, "
        "auto-approved silos. Production uses mutual TLS and PostgreSQL."
    )
    try:
        prefect_url = _start_prefect(opts, ws, procs, console)
        service_url = f"http://127.0.0.1:{opts.service_port}"
        with console.status("starting the aggregation service"):
            procs.append(start_service(ws / "service", opts.service_port))
        token = (ws / "service" / "admin.token").read_text().strip()
        client = CoordinatorClient(service_url, token=token, retry_for_s=30)
        agents = [
            start_agent(
                write_silo(ws, data, n, f, service_url, prefect_url),
                ws / "silos" / n / "agent.log",
                prefect_url,
            )
            for n, f in frames.items()
        ]
        procs.extend(agents)
        with console.status("silo agents enrolling; coordinator approving"):
            approve_all(client, data.federation, list(frames), agents)
        _print_data_table(console, frames, pipeline, data.member)
        result = _train(console, spec, client, service_url, token, ws)
        _print_validation(console, client, str(result["run_id"]), data.member)
        _print_privacy(console, client, str(result["run_id"]), spec)
        summary = _compare(console, spec, frames, contract, result)
        _print_where(console, ws, result, prefect_url, service_url)
        (ws / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if opts.keep_running:
            console.print("[bold]processes keep running; Ctrl+C stops them[/bold]")
            while True:
                time.sleep(1)
        return summary
    except KeyboardInterrupt:
        return {}
    finally:
        for proc in reversed(procs):
            proc.stop()


def _start_prefect(opts: DemoOptions, ws: Path, procs: list[Proc], console: Console) -> str:
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        console.print(f"using the Prefect server at {existing}")
        return existing
    with console.status(
        "starting a local Prefect server (first start on a fresh database can take ~30 s)"
    ):
        procs.append(start_prefect_server(ws / "prefect", opts.prefect_port))
    url = f"http://127.0.0.1:{opts.prefect_port}/api"
    os.environ["PREFECT_API_URL"] = url
    return url


def _print_data_table(console: Console, frames, pipeline: FeaturePipeline, member: str) -> None:  # type: ignore[no-untyped-def]
    table = Table(
        member, "rows", "positive rate", "imputed values (contract rules)", title="silo data"
    )
    for name, frame in frames.items():
        _, y = pipeline.transform(frame)
        imputed = {k: v for k, v in pipeline.imputation_report(frame).items() if v}
        table.add_row(
            name,
            str(len(frame)),
            f"{y.mean():.2f}",
            ", ".join(f"{k}: {v}" for k, v in imputed.items()) or "none",
        )
    console.print(table)


def _train(
    console: Console,
    spec: RunSpec,
    client: CoordinatorClient,
    service_url: str,
    token: str,
    ws: Path,
) -> dict[str, object]:
    from flows.coordinator import federated_training

    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = federated_training(
                service_urls=[service_url],
                admin_token=token,
                federation=spec.federation,
                dataset=spec.dataset,
                model=spec.model,
                strategy=spec.strategy,
                training=spec.training,
                rounds=spec.rounds,
                min_silos=spec.min_silos,
                round_deadline_s=spec.round_deadline_s,
                patience=spec.patience,
                secure_aggregation=spec.secure_aggregation,
                privacy=spec.privacy,
                federation_statistics=spec.federation_statistics,
                output_dir=str(ws / "models"),
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="coordinator-flow", daemon=True)
    thread.start()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(
            f"federated training ({spec.strategy.name}, {spec.model.kind})", total=spec.rounds + 1
        )
        while thread.is_alive():
            thread.join(0.5)
            runs = client.list_runs(spec.federation, limit=1)
            if runs:
                done = sum(1 for r in client.rounds(runs[0].run_id) if r.status != "open")
                progress.update(bar, completed=done)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    result = outcome["result"]
    assert isinstance(result, dict)
    from flows.render import round_table

    console.print(round_table(client.rounds(str(result["run_id"]))))
    return result


def _print_privacy(console: Console, client: CoordinatorClient, run_id: str, spec: RunSpec) -> None:
    """What the service saw (from its own ledger), and epsilon per round under DP."""
    entries = client.ledger(run_id)
    aggregates = [json.loads(e.payload) for e in entries if e.kind == "aggregate"]
    secure = [a for a in aggregates if a.get("secure_aggregation")]
    if secure:
        console.print(
            f"[bold]secure aggregation[/bold]: in all {len(secure)} rounds the service stored "
            f"only masked vectors (uniformly random mod 2^{spec.secure_aggregation.bits} to it) "
            "and unmasked only their sum; no individual update was ever readable by it "
            "(ledger: individual_updates_seen_by_service = false)."
        )
    else:
        console.print("[yellow]secure aggregation off[/yellow]: the service saw each update.")
    spent = [json.loads(e.payload) for e in entries if e.kind == "privacy_spent"]
    if not spent or spec.privacy is None:
        return
    silos = sorted({p["silo"] for p in spent})
    table = Table(
        "round",
        *silos,
        title=f"epsilon spent per silo (delta {spec.privacy.delta:g}, noise multiplier "
        f"{spec.privacy.noise_multiplier}, clip {spec.privacy.clip_norm})",
    )
    for r in sorted({p["round"] for p in spent}):
        row = {p["silo"]: p["epsilon"] for p in spent if p["round"] == r}
        table.add_row(str(r), *[f"{row[s]:.2f}" if s in row else "-" for s in silos])
    console.print(table)


def _print_validation(
    console: Console, client: CoordinatorClient, run_id: str, member: str
) -> None:
    """Each silo's gate outcome in the first round, as the silos signed it into the ledger."""
    table = Table(
        member,
        "rows",
        "contract",
        "data sha256",
        "result",
        "failed expectations",
        title="data validation at each silo (Great Expectations, round 1)",
    )
    first: dict[str, dict] = {}  # type: ignore[type-arg]
    for entry in client.ledger(run_id):
        if entry.kind == "validation_result":
            payload = json.loads(entry.payload)
            first.setdefault(payload["silo"], payload)
    for silo, p in sorted(first.items()):
        failed = "; ".join(f"{f['expectation']}({f['column'] or 'table'})" for f in p["failed"])
        table.add_row(
            silo,
            str(p["n_rows"]),
            f"{p['contract']} v{p['contract_version']}",
            p["data_sha256"][:12] + "…",
            "[green]pass[/green]" if p["success"] else "[red]fail: sits out[/red]",
            failed or "-",
        )
    console.print(table)


def _federation_stats(spec: RunSpec, frames, contract):  # type: ignore[no-untyped-def]
    """The statistics the silos computed together (same sums, computed here in the clear for the
    baselines only: the demo machine holds every table anyway)."""
    if not spec.federation_statistics:
        return None
    import numpy as np

    from schemas.contracts.stats import FederationStats
    from silos.data import split_train_test
    from silos.federated_stats import local_moments

    total = sum(
        local_moments(
            split_train_test(f, contract, DEMO_TEST_FRACTION, DEMO_SPLIT_SEED)[0], contract
        )
        for f in frames.values()
    )
    return FederationStats.from_summed_moments(np.asarray(total), contract)


def _compare(
    console: Console, spec: RunSpec, frames, contract, result: dict[str, object]
) -> dict[str, object]:  # type: ignore[no-untyped-def]
    import numpy as np

    arrays = baselines.prepare_silo_arrays(
        frames,
        contract,
        DEMO_TEST_FRACTION,
        DEMO_SPLIT_SEED,
        _federation_stats(spec, frames, contract),
    )
    payload = Path(str(result["model_path"])).read_bytes()
    federated = list(tensors.decode(payload)[0].values())
    with console.status("training the baselines: each silo alone, and pooled"):
        local = baselines.local_only(
            spec,
            {n: (a.X_train, a.y_train) for n, a in arrays.items()},
            init_seed=spec.training.seed,
        )
        X_all = np.concatenate([a.X_train for a in arrays.values()])
        y_all = np.concatenate([a.y_train for a in arrays.values()])
        pooled = baselines.train_centralized(spec, X_all, y_all, init_seed=spec.training.seed)
    models = {
        "federated": federated,
        **{f"{n} alone": p for n, p in local.items()},
        "pooled (centralized)": pooled,
    }
    rows = baselines.comparison_table(
        spec.model, models, {n: (a.X_test, a.y_test) for n, a in arrays.items()}
    )
    test_sets = [*arrays, baselines.ALL_TEST_SETS]
    table = Table(
        "model", *[f"{t}\nacc / AUC" for t in test_sets], title="test-set accuracy and ROC AUC"
    )
    for name in models:
        cells = []
        for t in test_sets:
            row = next(r for r in rows if r["model"] == name and r["test_set"] == t)
            auc = "-" if row["auc"] is None else f"{row['auc']:.3f}"
            cells.append(f"{row['accuracy']:.3f} / {auc}")
        table.add_row(name, *cells)
    console.print(table)
    acc_all = {
        str(r["model"]): float(r["accuracy"])  # type: ignore[arg-type]
        for r in rows
        if r["test_set"] == baselines.ALL_TEST_SETS
    }
    fed_acc = acc_all["federated"]
    best_local = max(acc_all[f"{n} alone"] for n in local)
    central = acc_all["pooled (centralized)"]
    verdict = fed_acc > best_local and central - fed_acc <= 0.03
    console.print(
        f"federated accuracy on all test sets {fed_acc:.3f}; best silo alone {best_local:.3f}; "
        f"pooled {central:.3f} -> "
        + (
            "[green]federated beats every silo alone and is within 0.03 of pooled[/green]"
            if verdict
            else "[red]target missed[/red]"
        )
    )
    return {
        "run_id": result["run_id"],
        "model_path": result["model_path"],
        "model_sha256": result["model_sha256"],
        "rows": rows,
        "federated_accuracy": fed_acc,
        "best_local_accuracy": best_local,
        "pooled_accuracy": central,
        "target_met": verdict,
        "rounds": result["rounds"],
    }


def _print_where(
    console: Console, ws: Path, result: dict[str, object], prefect_url: str, service_url: str
) -> None:
    ui = prefect_url.removesuffix("/api")
    console.rule("where to look")
    console.print(
        f"model:        {result['model_path']}\n              sha256 {result['model_sha256']}"
    )
    console.print(
        f"Prefect UI:   {ui}/runs  (coordinator flow 'federated_training', one 'silo-training' "
        f"flow run per silo)"
    )
    console.print(
        f"run history:  fedsilo runs show {result['run_id']} --service-url {service_url} "
        f"--token-file {ws / 'service' / 'admin.token'}"
    )
    console.print(f"logs:         {ws}/service/service.log, {ws}/silos/<silo>/agent.log")
    console.print(
        "(the service and Prefect server stop with the demo; restart them with "
        f"`fedsilo aggregator serve --workspace {ws / 'service'}` and "
        f"`PREFECT_HOME={ws / 'prefect'} prefect server start`, or use --keep-running)"
    )
