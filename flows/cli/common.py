"""Options and helpers shared by the `fedsilo` command modules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import typer
from rich.console import Console

from schemas.specs import ModelKind
from schemas.tree_params import TreeKind, TreeMode

if TYPE_CHECKING:
    from flows.service_client import CoordinatorClient

console = Console()


def _service_urls(ctx: typer.Context, param: typer.CallbackParam, urls: list[str]) -> list[str]:
    """--service-url's values as the clients use them (a trailing slash dropped); a malformed
    address, or one with a path, is refused now (exit 2) rather than retried as an outage."""
    from silos.http_base import service_url

    if ctx.resilient_parsing:  # shell completion: nothing is run
        return urls
    source = ctx.get_parameter_source(param.name or "")
    env = getattr(source, "name", "") == "ENVIRONMENT"  # typer's own click: compare by name
    try:
        return [service_url(url) for url in urls]
    except ValueError as exc:
        hint = "FEDSILO_SERVICE_URL" if env else "--service-url"
        raise typer.BadParameter(str(exc), param_hint=hint) from None


ServiceUrls = Annotated[
    list[str],
    typer.Option(
        "--service-url",
        envvar="FEDSILO_SERVICE_URL",
        callback=_service_urls,
        help="Aggregation service's root address, http(s)://HOST:PORT; repeat for failover.",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FEDSILO_ADMIN_TOKEN",
        help="Coordinator's admin token. An explicit --token or --token-file beats "
        "FEDSILO_ADMIN_TOKEN.",
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File holding the admin token alone, on one line (the service writes "
        "WORKSPACE/admin.token on first start); beats FEDSILO_ADMIN_TOKEN.",
    ),
]
TokenBlockOpt = Annotated[
    str | None,
    typer.Option(
        "--token-block",
        help="Name of a Prefect Secret block holding the admin token (`prefect block create "
        "secret`); the flow loads it at run time.",
    ),
]
SiloConfigOpt = Annotated[Path, typer.Option("--config", help="The silo's silo.toml.")]

# The run parameters `fedsilo train` and `fedsilo schedule` share.
FederationOpt = Annotated[str, typer.Option(help="Federation to train in.")]
DatasetOpt = Annotated[str, typer.Option(help="Data contract name the silos hold.")]
HiddenOpt = Annotated[list[int], typer.Option(help="MLP hidden width; repeat per layer.")]
StrategyOpt = Annotated[
    str, typer.Option(help="fedavg, fedprox, fedadam, fedyogi, fedadagrad, scaffold.")
]
RoundsOpt = Annotated[int, typer.Option(help="Training rounds.")]
LocalEpochsOpt = Annotated[int, typer.Option(help="Local epochs per round.")]
LrOpt = Annotated[float, typer.Option(help="Local learning rate.")]
MinSilosOpt = Annotated[int, typer.Option(help="Fewest silos a round may aggregate.")]
RoundDeadlineOpt = Annotated[float, typer.Option(help="Seconds a round waits for silos.")]
ReadyTimeoutOpt = Annotated[
    float,
    typer.Option(
        min=0,
        help="Seconds to wait before round 1 for every silo to report ready (validated "
        "data, warm); at the timeout the run goes on if --min-silos are ready. 0: no wait.",
    ),
]

ServerLrOpt = Annotated[float, typer.Option(help="Server learning rate.")]
MuOpt = Annotated[float, typer.Option(help="FedProx proximal weight.")]
BatchSizeOpt = Annotated[int, typer.Option(help="Local batch size.")]
LrScheduleOpt = Annotated[
    str,
    typer.Option(
        help="constant, or cosine: round r of R trains at lr * (1 + cos(pi (r-1) / R)) / 2. "
        "Silos whose data differ drift toward their own optimum at a constant rate; the "
        "cosine schedule lets FedAvg settle nearer the pooled model (bench/README.md).",
    ),
]
PatienceOpt = Annotated[
    int, typer.Option(help="Stop after this many rounds without improvement; 0 never.")
]
PersonalizeOpt = Annotated[
    str | None,
    typer.Option(
        help="finetune, fedper or ditto (trees: finetune): every silo makes its own model "
        "at the end, kept at the silo; prints global vs personalized vs alone per silo."
    ),
]
FineCellsOpt = Annotated[
    int | None,
    typer.Option(
        help="secure-hist only: cells per feature of the public fine grid whose securely "
        "summed counts give the federation's quantile cut points. More cells resolve "
        "heavy-tailed columns (amounts) into more bins at the cost of a longer set-up "
        "vector (features x cells entries). Default: chosen by the service from the "
        "contract's ranges and federation statistics (max_bin / 2 cells per standard "
        "deviation of the widest feature, a power of two from 4096 to 65536).",
    ),
]
GradBitsOpt = Annotated[
    int | None,
    typer.Option(
        help="secure-hist only: quantize every row's gradient and hessian to this many "
        "fractional bits, rounded stochastically (unbiased), so each histogram cell needs "
        "fewer bits on the wire; the model is then close to XGBoost's, not equal to it. "
        "2 gave 4.25x fewer bytes than 64-bit cells on 1M rows at the lossless AUC "
        "(bench/secure_hist.py). Default: lossless.",
    ),
]
SecureOpt = Annotated[
    bool,
    typer.Option(
        help="Secure aggregation of PyTorch updates: the service unmasks only their sum. "
        "--no-secure: it sees every update. Tree runs seal their updates to the service."
    ),
]
DpNoiseOpt = Annotated[
    float | None,
    typer.Option(
        help="Silo-level differential privacy (PyTorch runs): the Gaussian noise multiplier. "
        "Each silo clips its update to --dp-clip-norm and adds its share of the noise, and "
        "counts the epsilon spent in its own privacy budget (its policy's max_epsilon "
        "caps it). Needs --dp-clip-norm."
    ),
]
DpClipOpt = Annotated[
    float | None,
    typer.Option(help="Differential privacy: the L2 norm each silo clips its update to."),
]
DpDeltaOpt = Annotated[
    float, typer.Option(help="Differential privacy: the delta epsilon is accounted at.")
]
AsyncBufferOpt = Annotated[
    int | None,
    typer.Option(
        help="Asynchronous FedBuff rounds (PyTorch runs): the service aggregates as soon as "
        "K updates are in, so a slow silo never holds the others up; a late update joins "
        "the next buffer, weighted by its staleness. K is at least --min-silos (and 2, or "
        "the secure-aggregation threshold, with --secure) and at most the run's silos."
    ),
]
MaxStalenessOpt = Annotated[
    int | None,
    typer.Option(
        help="With --async-buffer: drop an update trained on a model this many versions "
        "older than the buffer's, or more. Default: none dropped."
    ),
]
StalenessWeightOpt = Annotated[
    str,
    typer.Option(
        help="With --async-buffer: a stale update's weight, sqrt (1/sqrt(1 + staleness)) "
        "or constant."
    ),
]

# Every model kind the run specs accept, read from the schemas so the help stays true.
TORCH_KINDS: tuple[str, ...] = get_args(ModelKind)
TREE_KINDS: tuple[str, ...] = get_args(TreeKind)
ModelOpt = Annotated[
    str,
    typer.Option(
        help=f"{', '.join(TORCH_KINDS)} (PyTorch) or {', '.join(TREE_KINDS)} (trees).",
    ),
]
TreeModeOpt = Annotated[str, typer.Option(help=f"Tree runs: {', '.join(get_args(TreeMode))}.")]
TreesPerRoundOpt = Annotated[int, typer.Option(help="Tree runs: trees per silo and round.")]
TreeParamOpt = Annotated[
    list[str],
    typer.Option(help="Tree runs: a library parameter KEY=VALUE, e.g. max_depth=4; repeat."),
]


def check_model_kind(model: str) -> None:
    """Refuse a model kind no run spec accepts, listing the ones it does."""
    if model not in TORCH_KINDS + TREE_KINDS:
        raise typer.BadParameter(
            f"{model!r} is not a model kind; choose from {', '.join(TORCH_KINDS + TREE_KINDS)}",
            param_hint="--model",
        )


def token_from(token: str | None, token_file: Path | None) -> str:
    """The coordinator's admin token: an explicit --token or --token-file beats
    FEDSILO_ADMIN_TOKEN, so a stale export never overrides the file the command names.

    No token at all, or a file that cannot be read, is an AdminTokenError (exit 4); a token
    that is not one line of printable ASCII is a bad parameter (exit 2) naming the file,
    option or variable, never quoting the token.
    """
    from flows.exceptions import AdminTokenError
    from schemas.token_format import token_problem

    token, env = _token_value(token)
    if token and token_file and not env:
        raise typer.BadParameter("give --token or --token-file, not both", param_hint="--token")
    if token_file:
        try:
            raw = token_file.read_bytes()
        except OSError as exc:
            raise AdminTokenError(
                f"cannot read the admin token file {token_file}: {exc.strerror}; the service "
                "writes WORKSPACE/admin.token on first start (`fedsilo aggregator serve "
                "--workspace WORKSPACE`)"
            ) from exc
        problem = token_problem(raw)
        if problem:
            raise typer.BadParameter(
                f"the admin token file {token_file} {problem}", param_hint="--token-file"
            )
        return raw.decode("ascii").strip()
    if token:
        _check_token_value(token, env)
        return token.strip()
    raise AdminTokenError(  # exit 4, as the README's table says of a missing token
        "no admin token: give --token-file WORKSPACE/admin.token, --token or set "
        "FEDSILO_ADMIN_TOKEN"
    )


def _token_value(token: str | None) -> tuple[str | None, bool]:
    """The --token value, else FEDSILO_ADMIN_TOKEN's, and whether it is the variable's.

    typer folds the variable into --token without saying which gave the value, so a value
    equal to the variable's counts as the variable's (typed too, the two agree anyway).
    """
    env = os.environ.get("FEDSILO_ADMIN_TOKEN") or None  # empty: unset, as click reads it
    if token is None:
        return env, env is not None
    return token, token == env


def _check_token_value(token: str, env: bool) -> None:
    """Refuse a --token / FEDSILO_ADMIN_TOKEN value no HTTP header can carry, naming which."""
    from schemas.token_format import token_problem

    problem = token_problem(token)
    if problem:
        where = "FEDSILO_ADMIN_TOKEN" if env else "--token"
        raise typer.BadParameter(f"the admin token {problem}", param_hint=where)


@dataclass(frozen=True)
class TokenSource:
    """Where the coordinator flow reads the admin token: a file's path or a block's name."""

    file: str | None = None
    block: str | None = None


@contextmanager
def flow_token_source(
    token: str | None, token_file: Path | None, token_block: str | None
) -> Iterator[TokenSource]:
    """The coordinator flow's parameters that lead it to the admin token, never the token.

    Prefect stores flow parameters and shows them in its UI, so `--token-file` becomes the
    file's absolute path (refused unless only its owner can read it), `--token-block` the
    Secret block's name, and a `--token` value (or FEDSILO_ADMIN_TOKEN) a private temporary
    file that is removed when the `with` block ends. As in `token_from`, an explicit option
    beats FEDSILO_ADMIN_TOKEN; two explicit ones are refused.
    """
    from flows.admin_token import private_token_file, read_token_block, read_token_file
    from flows.exceptions import AdminTokenError

    token, env = _token_value(token)
    if token_file and token_block:
        raise typer.BadParameter("give --token-file or --token-block, not both")
    if token and not env and (token_file or token_block):
        raise typer.BadParameter(
            "give --token or --token-file/--token-block, not both", param_hint="--token"
        )
    try:  # refuse a missing block, or a missing or group/world-readable file, before the run
        if token_file:
            read_token_file(token_file)
        elif token_block:
            read_token_block(token_block)
    except AdminTokenError as exc:
        raise typer.BadParameter(str(exc), param_hint="--token-file/--token-block") from exc
    if token_file:
        yield TokenSource(file=str(token_file.resolve()))
    elif token_block:
        yield TokenSource(block=token_block)
    elif token:
        _check_token_value(token, env)
        with private_token_file(token.strip()) as path:
            yield TokenSource(file=str(path))
    else:
        raise AdminTokenError(  # exit 4, as a missing token is everywhere
            "no admin token: give --token-file, --token-block, --token or set FEDSILO_ADMIN_TOKEN"
        )


def coordinator(
    service_url: list[str], token: str | None, token_file: Path | None, retry_for_s: float = 10
) -> CoordinatorClient:
    """The coordinator's client for a command's --service-url/--token/--token-file options."""
    from flows.service_client import CoordinatorClient

    return CoordinatorClient(
        service_url, token=token_from(token, token_file), retry_for_s=retry_for_s
    )


def fail(message: str, code: int | None = None) -> typer.Exit:
    """Print `message` as an error, on one line; the caller raises the returned exit (`code`,
    default 2)."""
    from flows.cli.errors import USAGE, err_console, one_line

    # one line, literally: messages quote "[tls]", or a validation error's many lines
    err_console.print(f"error: {one_line(message)}")
    return typer.Exit(USAGE if code is None else code)
