"""`fedsilo contract draft|example|publish|list|show`: the federation's data contracts.

A contract is drafted from a sample of the data, edited by the data scientist, then published
to the service signed with the coordinator's contract key (`flows.contract_publish`); silos
fetch the published versions, and every run names the version it uses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import ServiceUrls, TokenFileOpt, TokenOpt, coordinator, fail
from flows.cli.output import JsonOpt, emit_json, out, say, table, when
from schemas.contracts.loader import ContractError

contract_app = typer.Typer(
    help="Draft, publish and read the federation's data contracts.", no_args_is_help=True
)

FederationArg = Annotated[str, typer.Option("--federation", help="The federation.")]
SigningKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--signing-key",
        envvar="FEDSILO_CONTRACT_KEY",
        help="The coordinator's Ed25519 contract key (PEM, created 0600 if missing); default: "
        "contract_ed25519.pem beside --token-file.",
    ),
]


def _key_path(signing_key: Path | None, token_file: Path | None) -> Path:
    from flows.contract_publish import KEY_FILE_NAME

    if signing_key is not None:
        return signing_key
    if token_file is not None:
        return token_file.resolve().parent / KEY_FILE_NAME
    raise typer.BadParameter(
        "give --signing-key FILE (the federation's contract key) or --token-file, whose "
        f"folder holds {KEY_FILE_NAME}",
        param_hint="--signing-key",
    )


@contract_app.command("draft")
def contract_draft(
    data: Annotated[Path, typer.Argument(help="A sample of the table: CSV or Parquet.")],
    target: Annotated[
        str | None, typer.Option(help="The target column (default: the last, flagged).")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="binary, multiclass or regression (default: guessed, flagged)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Contract name (default: the file's).")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here (default: print).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the --output file if it exists.")
    ] = False,
) -> None:
    """Write a draft contract from a data sample, to edit before publishing."""
    from flows.contract_draft import draft_contract
    from schemas.contract_registry import check_contract_name
    from silos.data import load_table
    from silos.exceptions import DataError

    if task not in (None, "binary", "multiclass", "regression"):
        raise typer.BadParameter(
            f"{task!r}: choose binary, multiclass or regression", param_hint="--task"
        )
    contract_name = name or re.sub(r"[^a-z0-9_]", "_", data.stem.lower())
    try:
        check_contract_name(contract_name)
    except ContractError as exc:
        raise typer.BadParameter(str(exc), param_hint="--name") from exc
    if output is not None and output.exists():
        # the sample itself, or an edited draft: either is lost when overwritten
        if data.exists() and output.samefile(data):
            raise fail(f"{output} is the data sample itself; write the draft to another file")
        if not force:
            raise fail(f"{output} exists; pass --force to replace it, or choose another -o")
    try:
        table = load_table(data)  # its errors name the file
        text = draft_contract(table, name=contract_name, target=target, task=task)
    except DataError as exc:
        raise fail(str(exc)) from exc
    except ContractError as exc:
        raise fail(f"{data}: {exc}") from exc
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"{output}: cannot write the draft: {exc.strerror}") from exc
    say(f"wrote {output}: edit it, then `fedsilo contract publish {output} --federation F`")


@contract_app.command("example")
def contract_example(
    name: Annotated[str, typer.Argument(help="A shipped example, e.g. heart_disease.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here (default: print).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the --output file if it exists.")
    ] = False,
) -> None:
    """Print (or write) a contract shipped with fedsilo as an example, to publish or adapt."""
    from schemas.contracts.loader import CONTRACTS_DIR

    path = CONTRACTS_DIR / f"{name}.toml"
    if not re.fullmatch(r"[a-z0-9_]{1,64}", name) or not path.is_file():
        shipped = sorted(p.stem for p in CONTRACTS_DIR.glob("*.toml"))
        raise fail(f"no example contract {name!r}; the examples are {', '.join(shipped)}")
    text = path.read_text(encoding="utf-8")
    if output is None:
        typer.echo(text, nl=False)
        return
    if output.exists() and not force:  # an adapted copy would be lost
        raise fail(f"{output} exists; pass --force to replace it, or choose another -o")
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"{output}: cannot write the contract: {exc.strerror}") from exc
    say(f"wrote {output}: publish it with `fedsilo contract publish {output} --federation F`")


@contract_app.command("publish")
def contract_publish(
    file: Annotated[Path, typer.Argument(help="The contract's TOML file.")],
    federation: FederationArg,
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    signing_key: SigningKeyOpt = None,
) -> None:
    """Publish a contract version, signed with the coordinator's contract key."""
    from flows.contract_publish import publish_file

    key_path = _key_path(signing_key, token_file)
    client = coordinator(service_url, token, token_file)
    try:  # publish_file refuses a contract that does not parse before any request
        pc, new = publish_file(client, federation, file, key_path)
    except ContractError as exc:
        raise fail(str(exc)) from exc
    state = "published" if new else "already published (identical text)"
    say(f"contract {pc.name} {pc.version} {state} in {federation}: sha256 {pc.sha256}")


@contract_app.command("list")
def contract_list(
    federation: FederationArg,
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the federation's published contract versions."""
    from schemas.contract_registry import fingerprint

    rows = coordinator(service_url, token, token_file).contracts(federation)
    if as_json:
        emit_json([r.model_dump(mode="json", exclude={"toml"}) for r in rows])
        return
    grid = table("name", "version", "sha256", "signer", "published")
    for r in rows:
        grid.add_row(r.name, r.version, r.sha256[:16], fingerprint(r.signer), when(r.published_at))
    out.print(grid)


@contract_app.command("show")
def contract_show(
    name: Annotated[str, typer.Argument(help="The contract's name.")],
    federation: FederationArg,
    version: Annotated[str | None, typer.Option(help="A version (default: latest).")] = None,
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Print a published contract's TOML text exactly as published."""
    pc = coordinator(service_url, token, token_file).contract(federation, name, version)
    typer.echo(pc.toml, nl=False)
