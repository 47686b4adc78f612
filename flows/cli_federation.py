"""`fedsilo federation ...` and the silo operator's enrolment commands (mutual TLS bootstrap).

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
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import ServiceUrls, TokenFileOpt, TokenOpt, console, token_from

federation_app = typer.Typer(
    help="Set up a federation's certificate authority and sign silo certificates (coordinator).",
    no_args_is_help=True,
)

FedDir = Annotated[
    Path, typer.Option("--dir", help="The federation's folder (from `federation init`).")
]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


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
        raise _fail(str(exc)) from exc
    console.print(
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
        raise _fail(str(exc)) from exc
    console.print(
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
    """Register the federation on the aggregation service (idempotent)."""
    from flows.service_client import CoordinatorClient

    client = CoordinatorClient(service_url, token=token_from(token, token_file), retry_for_s=30)
    client.create_federation(name, description)
    console.print(f"federation {name} exists on {', '.join(service_url)}")


def silo_enrol(
    config: Annotated[
        Path | None, typer.Option("--config", help="The silo's silo.toml (with a [tls] section).")
    ] = None,
    federation: Annotated[str | None, typer.Option(help="Without --config: federation.")] = None,
    silo: Annotated[str | None, typer.Option(help="Without --config: silo name.")] = None,
    folder: Annotated[
        Path | None, typer.Option("--dir", help="Without --config: folder for keys and CSR.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="FEDSILO_ENROLMENT_TOKEN", help="The federation's enrolment token."),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="File holding the enrolment token.")
    ] = None,
) -> None:
    """Create this silo's identity key, TLS key and certificate request (silo operator).
    Send the CSR to the coordinator; put the certificate they return where [tls] cert says."""
    from aggregation.pki import PkiError
    from flows.federation_files import SiloFiles, make_silo_request
    from silos.keys import load_or_create_key

    secret = token or (token_file.read_text().strip() if token_file else "")
    if not secret:
        raise _fail("give the enrolment token: --token-file, --token or FEDSILO_ENROLMENT_TOKEN")
    if config is not None:
        from silos.config import load_silo_config
        from silos.exceptions import SiloConfigError

        try:
            cfg = load_silo_config(config)
        except SiloConfigError as exc:
            raise _fail(str(exc)) from exc
        if cfg.tls is None:
            raise _fail(f"{config} has no [tls] section; add one, e.g.\n{TLS_SNIPPET}")
        files = SiloFiles(
            identity_key=cfg.key_path,
            tls_key=cfg.tls.key,
            csr=cfg.tls.cert.with_suffix(".csr"),
            cert=cfg.tls.cert,
            ca=cfg.tls.ca,
        )
        federation, silo = cfg.silo.federation, cfg.silo.name
    elif federation and silo and folder:
        files = SiloFiles.in_dir(folder)
    else:
        raise _fail("give --config silo.toml, or all of --federation, --silo and --dir")
    try:
        identity = load_or_create_key(files.identity_key)
        ed25519 = make_silo_request(files, federation, silo, secret, identity)
    except (PkiError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    console.print(
        f"silo {silo}: certificate request {files.csr}\n  Ed25519 identity key: {ed25519}\n"
        f"  send {files.csr} to the coordinator of {federation}; put the silo.pem and ca.pem "
        f"they return at {files.cert} and {files.ca}, then `fedsilo silo start`"
    )


TLS_SNIPPET = '[tls]\nca = "certs/ca.pem"\ncert = "certs/silo.pem"\nkey = "certs/silo.key"'


def silo_revoke(
    name: Annotated[str, typer.Argument(help="Silo name.")],
    federation: Annotated[str, typer.Option(help="Federation name.")],
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Revoke a silo (coordinator): every later request it makes is refused, at once."""
    from flows.service_client import CoordinatorClient

    client = CoordinatorClient(service_url, token=token_from(token, token_file), retry_for_s=10)
    out = client.request("POST", f"/v1/federations/{federation}/silos/{name}/revoke").json()
    console.print(f"silo {out['name']} in {out['federation']}: {out['status']}")


def silo_demo_data(
    name: Annotated[str, typer.Argument(help="cleveland, hungary, va or switzerland.")],
    out: Annotated[Path, typer.Option(help="CSV file to write.")],
) -> None:
    """Write one UCI heart-disease hospital's rows as a silo's data (to try the topology)."""
    from silos.demo_data import heart_disease_silos

    tables = heart_disease_silos()
    if name not in tables:
        raise _fail(f"no demo hospital {name!r}; choose from {sorted(tables)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tables[name].to_csv(out, index=False)
    console.print(f"{name}: {len(tables[name])} rows in {out}")
