"""`fedsilo federation ...`: the coordinator's half of the mutual TLS bootstrap.

The steps across machines (infra/README.md has the full runbook):

1. coordinator: ``fedsilo federation init --federation F --dir FED --host service.example.org``
   and hands the enrolment token (FED/ca/enrolment.token) to each silo operator over a trusted
   channel;
2. silo operator: ``fedsilo silo enrol --config silo.toml --token-file enrolment.token`` and
   sends the CSR it writes (public data) to the coordinator;
3. coordinator: ``fedsilo federation sign-csr silo.csr --dir FED`` and sends back silo.pem and
   ca.pem; the silo operator starts the agent (``fedsilo silo start``), which enrols;
4. coordinator: ``fedsilo silo approve NAME --federation F`` after comparing the key it printed
   at step 3 with the one the agent enrolled.

The silo operator's steps (`fedsilo silo enrol`, `start`) are in `flows.cli.silo`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import ServiceUrls, TokenFileOpt, TokenOpt, coordinator, fail
from flows.cli.output import JsonOpt, emit_json, out, say, table, when

federation_app = typer.Typer(
    help="Set up a federation's certificate authority and sign silo certificates (coordinator).",
    no_args_is_help=True,
)

FedDir = Annotated[
    Path, typer.Option("--dir", help="The federation's folder (from `federation init`).")
]


@federation_app.command("init")
def federation_init(
    federation: Annotated[str, typer.Option(help="Federation name.")],
    folder: Annotated[Path, typer.Option("--dir", help="Folder to create.")] = Path("federation"),
    host: Annotated[
        list[str],
        typer.Option(
            help="Name or IP silos dial to reach the service; repeat. 127.0.0.1 and "
            "localhost are always included."
        ),
    ] = [],
    days: Annotated[int, typer.Option(help="Validity of the CA and certificates, days.")] = 365,
) -> None:
    """Create the federation's CA, the service's and coordinator's certificates, the silos'
    enrolment token and the coordinator's admin token (keys and tokens mode 0600)."""
    from aggregation.pki import PkiError
    from flows.federation_files import DEFAULT_HOSTS, init_federation

    hosts = list(dict.fromkeys([*host, *DEFAULT_HOSTS]))
    try:
        init_federation(folder, federation, hosts, days)
    except PkiError as exc:
        raise fail(str(exc)) from exc
    say(
        f"federation {federation}: CA in {folder / 'ca'} (keep it with the coordinator)\n"
        f"  service ({', '.join(hosts)}): copy {folder / 'service'} to the service's machine and "
        f"run `fedsilo aggregator serve --production --tls-cert service.pem --tls-key service.key "
        f"--client-ca ca.pem --admin-token-file admin.token`\n"
        f"  coordinator: export FEDSILO_TLS_CA={folder / 'coordinator/ca.pem'} "
        f"FEDSILO_TLS_CERT={folder / 'coordinator/coordinator.pem'} "
        f"FEDSILO_TLS_KEY={folder / 'coordinator/coordinator.key'}\n"
        f"  silos: give each operator {folder / 'ca/enrolment.token'} over a trusted channel"
    )


@federation_app.command("sign-csr")
def federation_sign_csr(
    csr: Annotated[Path, typer.Argument(help="The silo's CSR (from `fedsilo silo enrol`).")],
    folder: FedDir = Path("federation"),
    out: Annotated[
        Path | None, typer.Option(help="Certificate to write; default: the CSR's name, .pem.")
    ] = None,
    days: Annotated[int, typer.Option(help="Validity of the certificate, days.")] = 365,
    replace: Annotated[
        bool, typer.Option(help="Issue even though the silo has a certificate for another key.")
    ] = False,
) -> None:
    """Check a silo's CSR (signature, names, enrolment MAC) and sign its client certificate."""
    from aggregation.pki import PkiError
    from flows.federation_files import sign_csr

    target = out or csr.with_suffix(".pem")
    try:
        silo, ed25519 = sign_csr(folder, csr, target, days, replace)
    except PkiError as exc:
        raise fail(str(exc)) from exc
    say(
        f"silo {silo}: certificate {target} (and {target.parent / 'ca.pem'}); send both to the "
        f"silo operator.\n  its Ed25519 key: {ed25519}\n  once its agent has enrolled, check "
        f"`fedsilo silo approve {silo}` prints the same key prefix"
    )


@federation_app.command("create")
def federation_create(
    name: Annotated[str, typer.Argument(help="Federation name (as in `federation init`).")],
    description: Annotated[str, typer.Option(help="What the federation is for.")] = "",
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Register the federation on the aggregation service. For a federation that exists it
    changes nothing and succeeds, so set-up scripts may run it again; a --description other
    than the registered one is refused (exit 6) rather than silently ignored."""
    from flows.cli.errors import REFUSED

    client = coordinator(service_url, token, token_file, retry_for_s=30)
    where = ", ".join(service_url)
    existing = next((f for f in client.federations() if f.name == name), None)
    if existing is None:
        client.create_federation(name, description)
        say(f"federation {name} exists on {where} (created now)")
        return
    if description and description != existing.description:
        raise fail(
            f"federation {name!r} already exists on {where} with description "
            f"{existing.description!r}; `federation create` does not change an existing "
            "federation",
            REFUSED,
        )
    say(
        f"federation {name} already exists on {where} (created {when(existing.created_at)} "
        "UTC); nothing changed"
    )


@federation_app.command("list")
def federation_list(
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the federations registered on the aggregation service."""
    feds = coordinator(service_url, token, token_file).federations()
    if as_json:
        emit_json([f.model_dump(mode="json") for f in feds])
        return
    rows = table("federation", "created (UTC)", "description")
    for f in feds:
        rows.add_row(f.name, when(f.created_at), f.description)
    out.print(rows)


@federation_app.command("renew-cert")
def federation_renew_cert(
    folder: FedDir = Path("federation"),
    cert: Annotated[
        Path | None,
        typer.Option(help="The certificate the service serves; default DIR/service/service.pem."),
    ] = None,
    key: Annotated[
        Path | None, typer.Option(help="Its private key; default: the certificate's name, .key.")
    ] = None,
    days: Annotated[int, typer.Option(help="Validity of the new certificate, days.")] = 365,
    within_days: Annotated[
        int | None,
        typer.Option(help="Renew only if the current one expires within this many days."),
    ] = None,
) -> None:
    """Issue the service a new certificate (same names, new key) and replace its files; the
    running service serves it to new connections within seconds (or at once on SIGHUP)."""
    from aggregation.pki import PkiError
    from flows.cert_renewal import renew_service_cert

    try:
        done = renew_service_cert(
            folder, days=days, cert_path=cert, key_path=key, within_days=within_days
        )
    except PkiError as exc:
        raise fail(str(exc)) from exc
    verb = "renewed" if done.renewed else "not due for renewal"
    say(
        f"service certificate {done.cert_path} {verb}: serial {done.serial:x}, valid until "
        f"{done.not_after:%Y-%m-%d}"
    )
