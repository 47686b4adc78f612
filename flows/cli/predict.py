"""`fedsilo predict`: a horizontal run's global model on new rows (`flows.predict`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import ServiceUrls, TokenFileOpt, TokenOpt, coordinator
from flows.cli.output import resolve_prefix, say


def predict(
    run_id: Annotated[str, typer.Argument(help="Run id, or a unique prefix of one.")],
    data: Annotated[
        Path,
        typer.Option(
            help="New rows, .csv or .parquet, with the contract's feature columns by name "
            "(any order; the target column may be absent)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where to write the predictions (CSV).")],
    model_version: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Predict with this model version of the run instead of its final model "
            "(a cancelled, failed or running run has only intermediate ones).",
        ),
    ] = None,
    keep: Annotated[
        list[str],
        typer.Option(help="A column of --data to copy to the output (e.g. an id); repeat."),
    ] = [],  # noqa: B006  (typer reads the default; it is never mutated)
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Predict new rows with a horizontal run's global model (PyTorch logreg / mlp, XGBoost,
    LightGBM, FedBoost ensemble).

    The model is downloaded from the service and must hash to the ledger's sha256; the rows
    are read as the silos read theirs and encoded by the run's pinned data contract, by column
    name: a missing column, a category the contract does not list or a value missing where it
    allows none is refused naming the file and the column. The output holds the --keep
    columns, then per task: binary `probability` (of the positive class) and `label` (1 or 0);
    multiclass `probability_<class>` per class and `label`; regression `prediction`."""
    from flows import model_registry
    from flows.lineage_tables import run_ids
    from flows.predict import predict_file
    from schemas.ledger_export import load_ledger_export
    from silos.exceptions import DataError, FeatureError

    client = coordinator(service_url, token, token_file)
    entries = load_ledger_export(client.ledger_export()).entries
    run_id = resolve_prefix(run_id, run_ids(entries), "run")
    model = model_registry.run_model(
        entries, client.ledger_keys(), run_id, model_version, verb="predict with"
    )
    payload = client.download_model(run_id, model.model_version)
    try:
        done = predict_file(client, model, payload, data, keep)
    except (DataError, FeatureError) as exc:  # the input file: a usage error (exit 2)
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
    done.table.to_csv(out, index=False)
    say(
        f"predicted {len(done.table)} rows of {data} with run {run_id} model "
        f"v{model.model_version} ({model.kind}, sha256 {model.sha256}) into {out}"
    )
