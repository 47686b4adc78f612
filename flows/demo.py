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
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from flows import demo_async, demo_distill, demo_ensemble, demo_kinds, demo_personal, demo_trees
from flows.demo_config import DEMO_READY_TIMEOUT_S, DEMO_SPLIT_SEED, DEMO_TEST_FRACTION
from flows.demo_datasets import DATASETS, DemoDataset
from flows.demo_processes import keep_after_failure, keep_running, stop_on_sigterm
from flows.demo_refusals import DemoOptionError, spec_refusal
from flows.demo_report import (
    compare,
    print_data_table,
    print_privacy,
    print_validation,
    print_where,
)
from flows.exceptions import DemoError
from flows.processes import Proc, start_agent, start_prefect_server, start_service
from flows.service_client import CoordinatorClient
from schemas.contracts.loader import load_contract
from schemas.objectives import objective_for
from schemas.specs import (
    PrivacySpec,
    RunSpec,
    SecureAggregationSpec,
    StrategySpec,
    model_spec_for_contract,
)
from schemas.tree_params import TreeSpec
from silos.features import FeaturePipeline
from silos.files import owner_only_umask, private_dir, write_private

MARKER = ".fedsilo-demo"


@dataclass
class DemoOptions:
    workspace: Path
    dataset: str = "heart"
    model: str = ""
    mode: str = ""
    fine_cells: int = 0  # secure-hist's fine grid; 0: the service's choice
    grad_bits: int = 0  # secure-hist's quantized gradients; 0: lossless
    strategy: str = ""
    rounds: int = 0
    keep_running: bool = False
    dp: bool = False
    plain: bool = False
    asynchronous: bool = False  # FedBuff buffers (flows/demo_async.py)
    personalize: str = ""  # finetune | fedper | ditto (flows/demo_personal.py)
    distill: bool = False  # FedDistill across model kinds (flows/demo_distill.py)
    ensemble: bool = False  # FedBoost ensemble of per-silo models (flows/demo_ensemble.py)
    prefect_port: int = 4200
    service_port: int = 8700
    round_deadline_s: float = 0.0  # 0: the dataset's default (flows/demo_config.py)
    ready_timeout_s: float = DEMO_READY_TIMEOUT_S


TREE_KINDS = ("xgboost", "lightgbm")
TREE_MODES = ("bagging", "cyclic", "collective", "secure-hist")


# RunSpec fields demo_spec sets, and the options that set them (for refusals)
SPEC_OPTIONS = {
    "model": "--model",
    "strategy": "--strategy",
    "rounds": "--rounds",
    "round_deadline_s": "--round-deadline-s",
    "secure_aggregation": "--plain",
    "privacy": "--dp",
    "asynchronous": "--async",
}


def demo_spec(opts: DemoOptions, n_features: int, n_silos: int = 4) -> RunSpec:
    """The dataset's run with the options' changes; a DemoOptionError names the options that
    do not fit (the run's spec refuses them)."""
    if opts.distill or opts.ensemble:
        demo_kinds.check_kinds_options(opts)
    spec = DATASETS[opts.dataset].spec(n_features)
    if opts.model in TREE_KINDS:
        return demo_personal.personalized(_tree_spec(opts, spec, n_features, n_silos), opts)
    if opts.mode:
        raise DemoOptionError(
            ("--mode", "--model"),
            f"--mode is for tree models: give --model {' or '.join(TREE_KINDS)}",
        )
    update: dict[str, object] = {}
    if opts.model:
        hidden = (32,) if opts.model == "mlp" else ()
        # outputs and target range follow the dataset's contract (binary, multiclass, regression)
        contract = load_contract(DATASETS[opts.dataset].contract)
        update["model"] = model_spec_for_contract(opts.model, n_features, contract, hidden)  # type: ignore[arg-type]
    if opts.strategy:
        server_lr = 0.05 if opts.strategy in ("fedadam", "fedyogi", "fedadagrad") else 1.0
        mu = 0.01 if opts.strategy == "fedprox" else 0.0
        update["strategy"] = StrategySpec(name=opts.strategy, server_lr=server_lr, mu=mu)  # type: ignore[arg-type]
    elif spec.strategy.name == "scaffold" and (
        opts.dp or opts.asynchronous or opts.personalize == "fedper"
    ):  # the dataset's default does not apply there (RunSpec._scaffold_fits): FedAvg's does
        update["strategy"] = StrategySpec(name="fedavg")
    if opts.rounds:
        update["rounds"] = opts.rounds
    if opts.round_deadline_s:
        update["round_deadline_s"] = opts.round_deadline_s
    if opts.plain:
        update["secure_aggregation"] = SecureAggregationSpec(enabled=False)
    if opts.dp:
        # each silo clips its delta to 0.5 and adds N(0, (1.0 * 0.5)^2 / n)
        update["privacy"] = PrivacySpec(noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)
    if opts.asynchronous:
        secure = spec.secure_aggregation.enabled and not opts.plain
        rounds = opts.rounds or spec.rounds
        update |= demo_async.async_update(spec, n_silos, rounds, opts.dp, secure)
    try:  # model_copy skips validation: refuse combinations the spec forbids (scaffold + --dp)
        built = RunSpec.model_validate(spec.model_copy(update=update).model_dump())
    except ValidationError as exc:
        raise spec_refusal(exc, _at_fault(exc, opts)) from exc
    return demo_personal.personalized(built, opts)


def _at_fault(exc: ValidationError, opts: DemoOptions) -> list[str]:
    """The options a refusal of demo_spec's run is about: those setting the fields at fault, or
    for a refused combination (an error of the whole spec) every option given that joins one."""
    fields = [str(e["loc"][0]) for e in exc.errors() if e["loc"]]
    named = [SPEC_OPTIONS[f] for f in fields if f in SPEC_OPTIONS]
    if named:
        return named
    given = {
        "--model": opts.model,
        "--strategy": opts.strategy,
        "--plain": opts.plain,
        "--dp": opts.dp,
        "--async": opts.asynchronous,
    }
    return [option for option, value in given.items() if value] or ["--dataset"]


def _tree_spec(opts: DemoOptions, spec: RunSpec, n_features: int, n_silos: int) -> RunSpec:
    """The dataset's run with XGBoost / LightGBM instead of its PyTorch model."""
    mode = opts.mode or "bagging"
    if mode not in TREE_MODES:
        raise DemoOptionError(
            ("--mode",), f"unknown mode {mode!r}; choose one of {', '.join(TREE_MODES)}"
        )
    torch_only = {"--strategy": opts.strategy, "--dp": opts.dp, "--plain": opts.plain}
    given = [option for option, value in torch_only.items() if value]
    if given:
        raise DemoOptionError(
            [*given, "--model"],
            f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to PyTorch models, "
            f"not trees (--model {opts.model})",
        )
    if opts.fine_cells and mode != "secure-hist":
        raise DemoOptionError(
            ("--fine-cells", "--mode"),
            "--fine-cells is the fine binning grid of --mode secure-hist",
        )
    if opts.grad_bits and mode != "secure-hist":
        raise DemoOptionError(
            ("--grad-bits", "--mode"), "--grad-bits quantizes the gradients of --mode secure-hist"
        )
    trees = demo_trees.tree_spec(
        opts.model,  # type: ignore[arg-type]
        mode,  # type: ignore[arg-type]
        n_features,
        fine_cells=opts.fine_cells,
        grad_bits=opts.grad_bits,
    )
    contract = load_contract(DATASETS[opts.dataset].contract)
    if contract.task != "binary":  # the objective follows the contract's task
        trees = TreeSpec.model_validate(
            trees.model_dump()
            | {"objective": objective_for(contract.task), "num_class": len(contract.classes)}
        )
    data = spec.model_dump()
    data.update(
        model=None,
        trees=trees.model_dump(),
        strategy=StrategySpec().model_dump(),
        secure_aggregation=SecureAggregationSpec(enabled=False).model_dump(),
        privacy=None,
        rounds=opts.rounds or demo_trees.rounds_for(trees.mode, n_silos),
        patience=0,
        # a collective round waits for every worker; on a busy machine the first round (Prefect
        # flow runs starting, data validated) can take a minute
        round_deadline_s=opts.round_deadline_s or max(spec.round_deadline_s, 180.0),
    )
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_refusal(exc, ("--model", "--mode")) from exc


def prepare_workspace(ws: Path) -> None:
    if ws.exists():
        if not (ws / MARKER).exists():
            raise DemoError(
                f"{ws} exists and is not a demo workspace; choose --workspace elsewhere"
            )
        shutil.rmtree(ws)
    private_dir(ws)
    write_private(ws / MARKER, b"created by fedsilo demo; deleted by the next demo run\n")


def write_silo(
    ws: Path,
    data: DemoDataset,
    name: str,
    frame,
    service_url: str,  # type: ignore[no-untyped-def]
    prefect_url: str,
    collective: tuple[Path, Path, Path] | None = None,
    secure_hist: bool = False,
) -> Path:
    folder = private_dir(ws / "silos" / name)  # patient rows: the silo's operator's only
    write_private(folder / "data.csv", frame.to_csv(index=False).encode())
    extra = ""
    if collective is not None:  # this demo silo consents to showing its histograms
        ca, cert, key = collective
        extra = (
            '\n[policy.trees]\nallowed_modes = ["bagging", "cyclic", "collective"]\n\n'
            f'[collective]\nca = "{ca}"\ncert = "{cert}"\nkey = "{key}"\n'
        )
    if secure_hist:  # this demo silo accepts secure-hist, reporting no node below its minimum
        extra = (
            '\n[policy.trees]\nallowed_modes = ["bagging", "cyclic", "secure-hist"]\n'
            f"min_rows_per_node = {demo_trees.MIN_ROWS_PER_NODE}\n"
        )
    toml = (
        f'[silo]\nname = "{name}"\nfederation = "{data.federation}"\nworkspace = "workspace"\n\n'
        f'[data]\npath = "data.csv"\ncontract = "{data.contract}"\n'
        f'contract_version = "{load_contract(data.contract).version}"  # accepted in advance\n'
        f"test_fraction = {DEMO_TEST_FRACTION}\nsplit_seed = {DEMO_SPLIT_SEED}\n\n"
        f'[service]\nurls = ["{service_url}"]\n\n[prefect]\napi_url = "{prefect_url}"\n\n'
        '[policy]\nallowed_models = ["logreg", "mlp"]\nmax_rounds_per_run = 200\n' + extra
    )
    write_private(folder / "silo.toml", toml.encode())
    return folder / "silo.toml"


def approve_all(
    client: CoordinatorClient,
    federation: str,
    names: list[str],
    agents: list[Proc],
    timeout_s: float,
) -> None:
    # bounded by the readiness timeout: loaded, agents take minutes to enrol (a dead one ends it)
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


def publish_example_contract(
    client: CoordinatorClient, federation: str, name: str, key_dir: Path
) -> None:
    """Publish the shipped example contract the demo's federation trains under, signed with
    the coordinator's contract key (kept beside the admin token), as `fedsilo contract
    publish` does; republishing the same text is a no-op."""
    from flows.contract_publish import KEY_FILE_NAME, publish_file
    from schemas.contracts.loader import CONTRACTS_DIR

    publish_file(client, federation, CONTRACTS_DIR / f"{name}.toml", key_dir / KEY_FILE_NAME)


def run_demo(opts: DemoOptions, console: Console) -> dict[str, object]:
    # Patient rows, keys, tokens and databases: every file the demo and the processes it
    # starts (Prefect server, service, agents inherit the umask) create is 0600, folders 0700.
    owner_only_umask()
    ws = opts.workspace.resolve()
    if opts.dataset not in DATASETS:
        raise DemoOptionError(
            ("--dataset",),
            f"unknown demo dataset {opts.dataset!r}; choose one of {sorted(DATASETS)}",
        )
    data = DATASETS[opts.dataset]
    contract = load_contract(data.contract)
    pipeline = FeaturePipeline.from_contract(contract)
    frames = data.frames()
    # the run is checked before the workspace is touched: refused options leave nothing behind
    spec = demo_spec(opts, pipeline.n_features, len(frames)).model_copy(
        update={"federation_statistics": contract.pipeline.needs_federation_stats}
    )
    if opts.distill:  # each silo its own kind of model; soft labels only
        spec = demo_distill.distilled(spec, list(frames))
    if opts.ensemble:  # each silo its own member; weights learned from secure sums
        spec = demo_ensemble.ensembled(spec, list(frames), opts.rounds)
    prepare_workspace(ws)
    pki = None
    if spec.trees is not None and spec.trees.mode == "collective":
        pki = demo_trees.collective_pki(ws / "pki", list(frames))
    procs: list[Proc] = []
    prefect_url = service_url = ""
    stop_on_sigterm()
    console.rule(f"[bold]fedsilo demo: {data.title}")
    console.print(
        "[yellow]development mode[/yellow]: plain HTTP on 127.0.0.1, SQLite, "
        "auto-approved silos. Production uses mutual TLS and PostgreSQL."
    )
    try:
        prefect_url = _start_prefect(opts, ws, procs, console)
        service_url = f"http://127.0.0.1:{opts.service_port}"
        with console.status("starting the aggregation service"):
            procs.append(
                start_service(
                    ws / "service", opts.service_port, env=pki.service_env if pki else None
                )
            )
        token_file = ws / "service" / "admin.token"  # the service writes it 0600
        client = CoordinatorClient(
            service_url, token=token_file.read_text().strip(), retry_for_s=30
        )
        agents = [
            start_agent(
                write_silo(
                    ws,
                    data,
                    n,
                    f,
                    service_url,
                    prefect_url,
                    pki.silo_files[n] if pki else None,
                    secure_hist=spec.trees is not None and spec.trees.mode == "secure-hist",
                ),
                ws / "silos" / n / "agent.log",
                prefect_url,
            )
            for n, f in frames.items()
        ]
        procs.extend(agents)
        # published before the silos are approved: each agent accepts the version its silo.toml
        # pins as soon as it starts serving, and warms up under it
        client.create_federation(data.federation, f"fedsilo demo federation {data.federation}")
        publish_example_contract(client, data.federation, data.contract, token_file.parent)
        console.print(
            f"contract {contract.name} v{contract.version} published; each demo silo.toml pins "
            "it (\\[data] contract_version): its operator accepts that version in advance",
            highlight=False,
        )
        with console.status("silo agents enrolling; coordinator approving"):
            approve_all(
                client, data.federation, list(frames), agents, opts.ready_timeout_s or 900.0
            )
        print_data_table(console, frames, pipeline, data.member)
        result = _train(console, spec, client, service_url, token_file, ws, opts.ready_timeout_s)
        print_validation(console, client, str(result["run_id"]), data.member)
        print_privacy(console, client, str(result["run_id"]), spec)
        if spec.distill is not None:  # no global model to compare: each silo's own
            rows = demo_distill.print_distill(console, result)
            summary = {"run_id": result["run_id"], "distilled": rows}
        elif spec.ensemble is not None:  # the ensemble against each silo's own member
            rows = demo_ensemble.print_ensemble(console, result)
            summary = {"run_id": result["run_id"], "ensemble": rows}
        else:
            summary = compare(console, spec, frames, contract, result)
        print_where(console, ws, result, prefect_url, service_url)
        write_private(ws / "demo-summary.json", json.dumps(summary, indent=2, default=str).encode())
        if opts.keep_running:
            keep_running(console, ws, procs, prefect_url, service_url)
        return summary
    except KeyboardInterrupt:
        return {}
    except Exception as exc:
        keep_after_failure(opts.keep_running, console, ws, procs, prefect_url, service_url, exc)
        raise
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


def flow_parameters(
    spec: RunSpec, service_url: str, token_file: Path, ws: Path, ready_timeout_s: float
) -> dict[str, Any]:
    """The coordinator flow's parameters for the demo's run (the token by its file's path)."""
    return dict(
        service_urls=[service_url],
        admin_token_file=str(token_file),
        federation=spec.federation,
        dataset=spec.dataset,
        model=spec.model,
        trees=spec.trees,
        strategy=spec.strategy,
        training=spec.training,
        rounds=spec.rounds,
        min_silos=spec.min_silos,
        round_deadline_s=spec.round_deadline_s,
        patience=spec.patience,
        secure_aggregation=spec.secure_aggregation,
        privacy=spec.privacy,
        asynchronous=spec.asynchronous,
        personalize=spec.personalize,
        distill=spec.distill,
        ensemble=spec.ensemble,
        federation_statistics=spec.federation_statistics,
        output_dir=str(ws / "models"),
        ready_timeout_s=ready_timeout_s,
        show_progress=True,
    )


def _train(
    console: Console,
    spec: RunSpec,
    client: CoordinatorClient,
    service_url: str,
    token_file: Path,
    ws: Path,
    ready_timeout_s: float,
) -> dict[str, object]:
    """Run the coordinator flow in a thread (Ctrl+C stays with the main thread); it prints who
    is ready, then a progress line per round (live on a terminal, plain lines otherwise). The
    flow gets the token file's path: Prefect stores a flow run's parameters."""
    from flows.coordinator import federated_training

    outcome: dict[str, object] = {}
    params = flow_parameters(spec, service_url, token_file, ws, ready_timeout_s)

    def target() -> None:
        try:
            outcome["result"] = federated_training(**params)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
            outcome["error"] = exc

    console.print(
        f"federated training ({spec.model_label}): {spec.rounds} rounds, round deadline "
        f"{spec.round_deadline_s:.0f} s; waiting up to {ready_timeout_s:.0f} s for the silos "
        "to be ready"
    )
    thread = threading.Thread(target=target, name="coordinator-flow", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    result = outcome["result"]
    if not isinstance(result, dict):
        raise DemoError(f"the coordinator flow ended without a model: {result}")
    from flows.render import round_table

    console.print(round_table(client.rounds(str(result["run_id"]))))
    return result
