"""`fedsilo model ...`: the global model's lifecycle after training (the MLflow registry)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from flows.cli.common import ServiceUrls, TokenFileOpt, TokenOpt, coordinator
from flows.cli.output import JsonOpt, emit_json, resolve_prefix, say

if TYPE_CHECKING:
    from flows.model_registry import RunModel
    from flows.service_client import CoordinatorClient

model_app = typer.Typer(
    help="The global model after training: register it in an MLflow model registry.",
    no_args_is_help=True,
)


@model_app.command("register")
def model_register(
    run_id: Annotated[str, typer.Argument(help="Run id, or a unique prefix of one.")],
    tracking_uri: Annotated[
        str,
        typer.Option(
            help="MLflow tracking server with a model registry, e.g. http://127.0.0.1:5000."
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(help="Registered model name (default fedsilo-FEDERATION-DATASET-KIND)."),
    ] = None,
    model_version: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Register this model version of the run instead of its final model: the way "
            "to register an intermediate model, e.g. of a cancelled or failed run (which has "
            "no final model). The registry entry's fedsilo.run_status tag says how it ended.",
        ),
    ] = None,
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Log the run's final global model to an MLflow registry as a new model version. Only a
    finished run has a final model; a cancelled, failed or running one is refused unless
    --model-version names the intermediate model wanted.

    XGBoost and LightGBM use MLflow's native flavours; a PyTorch model goes in as its
    safetensors file under a pyfunc wrapper, a FedBoost ensemble (--ensemble) as its artifact
    JSON under a pyfunc wrapper that mixes its members. A distillation or vertical run has no
    global model to register (each silo, or party, keeps its own) and is refused. The model
    is downloaded from the service and must hash to the ledger's sha256 and load; the ledger
    must verify. The registry entry carries the run's metrics, its data contract and lineage
    tags (fedsilo.run_id, fedsilo.ledger_head_hash, fedsilo.model_sha256, ...); record the
    printed model URI beside the run. Its signature names the inputs: the run's contract's
    encoded features (`age`, `sex=Male`, ...), so it takes a DataFrame of encoded rows by column
    name and refuses a missing column or an unnamed array; `fedsilo predict` takes raw rows.
    Needs the `registry` extra: pip install 'fedsilo[registry]'."""
    from flows import model_registry

    try:
        model_registry.require_mlflow()
    except ImportError as exc:  # mlflow is an optional extra
        raise typer.BadParameter(
            f"MLflow is not installed ({exc.name}); pip install 'fedsilo[registry]'"
        ) from exc
    from flows.lineage_tables import run_ids
    from schemas.ledger_export import load_ledger_export

    client = coordinator(service_url, token, token_file)
    entries = load_ledger_export(client.ledger_export()).entries
    run_id = resolve_prefix(run_id, run_ids(entries), "run")
    model = model_registry.run_model(entries, client.ledger_keys(), run_id, model_version)
    payload = client.download_model(run_id, model.model_version)
    names = feature_names(client, model)
    done = model_registry.register(model, payload, tracking_uri, name, names)
    if as_json:
        emit_json(
            {
                "name": done.name,
                "version": done.version,
                "model_version": model.model_version,
                "run_status": model.run_status,
                "model_uri": done.model_uri,
                "mlflow_run_id": done.mlflow_run_id,
                "tracking_uri": done.tracking_uri,
                "tags": done.tags,
            }
        )
        return
    intermediate = "" if model.run_status == "finished" else f", run {model.run_status}"
    say(
        f"registered run {run_id} model v{model.model_version} ({model.kind}{intermediate}) as "
        f"{done.name} version {done.version} at {tracking_uri}"
    )
    say(f"model URI:     {done.model_uri} (MLflow run {done.mlflow_run_id})")
    say(f"model sha256:  {model.sha256}")
    say(f"ledger head:   seq {model.ledger_head_seq} {model.ledger_head_hash}")


def feature_names(client: CoordinatorClient, model: RunModel) -> tuple[str, ...]:
    """The encoded feature names of the run's pinned contract (checked against the ledger),
    in the model's input order: the registered model's signature."""
    from flows.predict import PredictError, model_width, run_contract
    from silos.features import FeaturePipeline

    contract = run_contract(client, model)
    names = FeaturePipeline.from_contract(contract).feature_names
    width = model_width(model)
    if width is not None and width != len(names):
        raise PredictError(
            f"run {model.run_id}'s model takes {width} features, but contract "
            f"{contract.name!r} v{contract.version} encodes {len(names)}; nothing was registered"
        )
    return names
