"""`fedsilo runs ...`: look at runs (horizontal and vertical) and their rounds, cancel one
(coordinator).

Run ids may be given by a unique prefix (`resolve_run_id`); tables print them whole.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from flows.cli.common import ServiceUrls, TokenFileOpt, TokenOpt, coordinator
from flows.cli.output import JsonOpt, emit_json, out, resolve_run_id, say, table, when
from schemas.vertical import VerticalRunOut

if TYPE_CHECKING:
    from flows.service_client import CoordinatorClient
    from schemas.wire import RunOut

runs_app = typer.Typer(help="Look at training runs and their rounds.", no_args_is_help=True)

RunIdArg = Annotated[
    str, typer.Argument(help="Run id, or a unique prefix of one (from `fedsilo runs list`).")
]


@runs_app.command("list")
def runs_list(
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    federation: Annotated[str | None, typer.Option(help="Only this federation.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List recent runs with their status: horizontal training runs and vertical runs
    (SecureBoost or logistic regression training, joint prediction, size-only intersection);
    "rounds / trees" counts a vertical logistic regression's epochs."""
    from flows.cli.names import checked_name

    if federation is not None:
        checked_name(federation, "--federation")
    listed = _listed(coordinator(service_url, token, token_file), federation, limit)
    if as_json:
        emit_json([{"kind": kind, **r.model_dump(mode="json")} for kind, r in listed])
        return
    rows = table(
        "run", "kind", "mode", "federation", "status", "model", "rounds / trees", "silos",
        "created", "reason",
    )  # fmt: skip
    for kind, r in listed:
        if isinstance(r, VerticalRunOut):
            model: str = "-" if r.mode == "psi_size" else r.params.model
            # logistic regression trains epochs, not trees; a prediction run reports neither
            steps = r.epochs if r.mode == "train" and r.params.model == "logreg" else r.trees
            mode = r.mode
            silos = [
                f"{p} (active)" if p == r.active and r.mode != "psi_size" else p for p in r.parties
            ]
        else:
            mode, model, steps = "train", r.spec.model_label, r.latest_model_version or 0
            silos = r.participants
        rows.add_row(
            r.run_id, kind, mode, r.federation, r.status, model, str(steps), ", ".join(silos),
            when(r.created_at), r.reason or "",
        )  # fmt: skip
    out.print(rows)


def _listed(
    client: CoordinatorClient, federation: str | None, limit: int
) -> list[tuple[str, RunOut | VerticalRunOut]]:
    """(kind, run) of horizontal and vertical runs, newest first, at most `limit` in all;
    UnknownName listing the known federations when `federation` is not one."""
    from flows.exceptions import UnknownName
    from flows.vertical import list_vertical_runs
    from silos.client_errors import NotFound

    try:  # only an unknown federation is not found here
        horizontal = client.list_runs(federation, limit)
    except NotFound as exc:
        known = ", ".join(f.name for f in client.federations()) or "none"
        raise UnknownName(f"{exc.detail}; known federations: {known}") from exc
    listed: list[tuple[str, RunOut | VerticalRunOut]] = [("horizontal", r) for r in horizontal]
    listed += [("vertical", r) for r in list_vertical_runs(client, federation, limit)]
    listed.sort(key=lambda kr: kr[1].created_at or datetime.min, reverse=True)
    return listed[:limit]


@runs_app.command("show")
def runs_show(
    run_id: RunIdArg,
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one run: its spec, participants and a row per round (its stage, the silos it still
    awaits, who declined and why, metrics)."""
    from flows.distill_view import distill_table, run_distill
    from flows.drift_view import drift_rows, drift_table
    from flows.ensemble_view import ensemble_table, run_ensemble
    from flows.exceptions import UnknownName
    from flows.personalization_view import personalization_table, run_personalization
    from flows.render import round_table, silo_metrics_table

    client = coordinator(service_url, token, token_file)
    try:
        run = client.get_run(resolve_run_id(client, run_id))
    except UnknownName:
        vertical = _vertical_id(client, run_id)
        if vertical is not None:  # a vertical run: its own view
            from flows.cli.vertical import vertical_show

            vertical_show(vertical, service_url, token, token_file, as_json)
            return
        raise
    rounds = client.rounds(run.run_id)
    personal = run_personalization(client, run.run_id, run.spec)  # from the silos' statements
    distilled = run_distill(client, run.run_id, run.spec)  # likewise, a distillation run's
    ensembled = run_ensemble(client, run.run_id, run.spec)  # and an ensemble run's
    drift = drift_rows(client.ledger(run.run_id))  # silos that trained despite drift warnings
    if as_json:
        emit_json(
            {
                "run": run.model_dump(mode="json"),
                "rounds": [r.model_dump(mode="json") for r in rounds],
                "personalized": personal,
                "distilled": distilled,
                "ensemble": ensembled,
                "drift_warnings": drift,
            }
        )
        return
    say(
        f"run {run.run_id} in {run.federation}: {run.status} {run.reason or ''}\n"
        f"spec: {run.spec.model_dump_json()}\nprefect flow run: {run.prefect_flow_run_id}"
    )
    out.print(round_table(rounds))
    per_silo = silo_metrics_table(rounds)
    if per_silo is not None:
        out.print(per_silo)
    if (drifted := drift_table(drift)) is not None:
        out.print(drifted)
    personal_table = personalization_table(personal)
    if personal_table is not None:
        out.print(personal_table)
    if (distill := distill_table(distilled)) is not None:
        out.print(distill)
    if (ensemble := ensemble_table(ensembled)) is not None:
        out.print(ensemble)


def _vertical_id(client: CoordinatorClient, prefix: str) -> str | None:
    """The vertical run that `prefix` names (whole, or a unique prefix), else None."""
    from flows.vertical import list_vertical_runs, vertical_run
    from silos.client_errors import InvalidPayload, NotFound

    try:
        return vertical_run(client, prefix).run_id
    except (NotFound, InvalidPayload):  # a prefix, or not a vertical run
        pass
    matches = [r.run_id for r in list_vertical_runs(client, limit=1000)]
    matches = [m for m in matches if m.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


@runs_app.command("cancel")
def runs_cancel(
    run_id: RunIdArg,
    reason: Annotated[str, typer.Option(help="Why (recorded with the run and in the ledger).")],
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Cancel a run (coordinator): its open round closes and the silos are told it ended."""
    client = coordinator(service_url, token, token_file)
    run = client.cancel_run(resolve_run_id(client, run_id), reason)
    say(f"run {run.run_id} in {run.federation}: {run.status} ({run.reason or reason})")
