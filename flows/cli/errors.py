"""How `fedsilo` ends when a command fails: one line naming the problem and the command that
fixes it, and a documented exit code. `--debug` (or FEDSILO_DEBUG=1) adds the traceback.

Every command runs inside `FedsiloGroup.invoke`, so the mapping is made once, here, rather than
in each command: usage errors stay typer's (exit 2), everything else goes through `describe`.
"""

from __future__ import annotations

import os
import re
import sys
import traceback

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from flows.exceptions import AdminTokenError, FlowError, RunCancelled, UnknownName
from flows.lineage_view import LineageReviewError
from silos.client_errors import (
    ClientError,
    ClockSkew,
    Conflict,
    Forbidden,
    NotFound,
    ServiceRejected,
    ServiceUnavailable,
    Unauthorized,
)

OK = 0
FAILED = 1  # the command ran and the answer is no: ledger invalid, run failed, check failed
USAGE = 2  # a bad option, argument or input file
NOT_FOUND = 3  # unknown federation, run, silo or model version; ambiguous run id prefix
AUTH = 4  # admin token missing, unreadable or refused by the service (401/403)
UNREACHABLE = 5  # no service address (nor Prefect's API, nor MLflow's server) answered in time
REFUSED = 6  # the service refused the request: wrong state (409), bad input (422), wire version
CANCELLED = 7  # the run was cancelled (`fedsilo runs cancel`): an outcome, neither failure nor bug
REVOKED = 8  # `silo start`: the coordinator revoked this silo; restarting the agent cannot help
INTERRUPTED = 130  # Ctrl+C (typer's own)
PIPE_CLOSED = 141  # stdout's reader went away (`| head`): 128 + SIGPIPE, as for other Unix tools

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (OK, "success"),
    (FAILED, "the command ran and the answer is no (ledger invalid, run failed, check failed)"),
    (
        USAGE,
        "bad option, argument or input file; a silo workspace another agent holds; "
        "`silo start`: a privacy budget that fails its check, a silo name enrolled with another "
        "key; `aggregator serve`/`migrate`: a database that refuses the service's role, "
        "password or writes",
    ),
    (NOT_FOUND, "unknown federation, run, silo or model; ambiguous run id prefix"),
    (
        AUTH,
        "admin token missing, unreadable or refused by the service; silo commands: the service "
        "refused the silo's signed request (its key, or this host's clock)",
    ),
    (
        UNREACHABLE,
        "the aggregation service (or Prefect's API, or MLflow's server) did not answer; "
        "`aggregator serve`/`migrate`: the database did not answer",
    ),
    (REFUSED, "the service refused the request (wrong state, invalid input, wire version)"),
    (
        CANCELLED,
        "the training run was cancelled (`fedsilo runs cancel`, or its Prefect flow run); it has "
        "no final model",
    ),
    (REVOKED, "`silo start`: the coordinator revoked this silo; the agent stopped"),
    (INTERRUPTED, "interrupted (Ctrl+C)"),
    (PIPE_CLOSED, "the reader of the output stopped reading (`| head`); nothing more printed"),
)

DEBUG_KEY = "fedsilo.debug"
TOKEN_HINT = (
    "give the admin token the service wrote on first start: --token-file WORKSPACE/admin.token "
    "or export FEDSILO_ADMIN_TOKEN=$(cat WORKSPACE/admin.token)"
)
CLOCK_HINT = "check this host's clock (NTP, e.g. `timedatectl status`)"
SERVE_HINT = (
    "start it with `fedsilo aggregator serve --workspace svc --port 8700`, or point "
    "--service-url / FEDSILO_SERVICE_URL at a running one"
)

# errors go to stderr, never read as Rich markup: "[tls]" or "[...]" in a message stays
err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def exit_codes_epilog() -> str:
    """The exit-code table for `fedsilo --help` (click keeps "\\b" paragraphs as written)."""
    rows = "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES)
    return f"\b\nExit codes:\n{rows}\n  --debug prints the traceback of an error."


def _not_found_hint(path: str, detail: str = "") -> str:
    if "does not exist" in detail and detail.startswith("federation "):
        return "; `fedsilo federation list` shows the federations"
    if path.startswith("/v1/runs"):
        return "; `fedsilo runs list` shows the runs"
    if "/silos/" in path:
        return "; `fedsilo silo list --federation F` shows the enrolled silos"
    return ""


def silo_refused(exc: Unauthorized) -> str:
    """What a silo operator reads when the service refused the silo's signed request (a silo
    sends no admin token)."""
    if isinstance(exc, ClockSkew):
        return f"the service refused this silo's request: {exc.detail}; {CLOCK_HINT}"
    return (
        f"the service refused this silo's signed request ({exc.detail}): check that silo.toml's "
        f"key file is the one this silo enrolled with, and {CLOCK_HINT}"
    )


def _is_a(exc: BaseException, qualified_name: str) -> bool:
    """isinstance by class name, for errors of modules a command imports when it runs (prefect,
    mlflow): the CLI's start does not pay for importing them here."""
    return any(f"{c.__module__}.{c.__qualname__}" == qualified_name for c in type(exc).__mro__)


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message with the fix) for an error a command raised."""
    if isinstance(exc, RunCancelled) or _is_a(exc, "prefect.exceptions.CancelledRun"):
        # the coordinator flow ends Cancelled with "run R was cancelled: REASON"
        said = str(exc).rstrip(".") or "the run was cancelled"
        run = re.match(r"run (\w+) ", said)
        show = f"fedsilo runs show {run[1]}" if run else "fedsilo runs list"
        return CANCELLED, f"{said}; it has no final model (`{show}` has its rounds)"
    if _is_a(exc, "flows.model_registry.TrackingUnreachable"):
        return UNREACHABLE, str(exc)
    if isinstance(exc, ClockSkew):  # only silos sign with a timestamp
        return AUTH, silo_refused(exc)
    if isinstance(exc, Unauthorized):
        return AUTH, f"the service refused the admin token ({exc.detail}); {TOKEN_HINT}"
    if isinstance(exc, Forbidden):
        return AUTH, f"the service refused the request: {exc.detail}"
    if isinstance(exc, NotFound):
        return NOT_FOUND, exc.detail + _not_found_hint(str(exc).split(" ", 2)[1], exc.detail)
    if isinstance(exc, Conflict):
        return REFUSED, f"the service refused: {exc.detail}"
    if isinstance(exc, ServiceRejected):
        return REFUSED, str(exc)
    if isinstance(exc, ServiceUnavailable):
        return UNREACHABLE, f"{exc}; {SERVE_HINT}"
    if isinstance(exc, ClientError):
        return UNREACHABLE, str(exc)
    if isinstance(exc, AdminTokenError):
        return AUTH, str(exc)
    if isinstance(exc, UnknownName):
        return NOT_FOUND, str(exc)
    if isinstance(exc, LineageReviewError):  # an unreadable export, silo copy or key
        return USAGE, str(exc)
    # the service refuses to start on a signing key it cannot use or a database whose ledger
    # triggers are gone: bad input (2), which systemd does not restart (RestartPreventExitStatus)
    if (
        _is_a(exc, "aggregation.service.keys.SigningKeyError")
        or _is_a(exc, "aggregation.service.ledger_guard.LedgerGuardMissing")
        or _is_a(exc, "aggregation.service.db.DatabaseNotWritable")
    ):
        return USAGE, str(exc)
    if _is_a(exc, "sqlalchemy.exc.DBAPIError"):
        if (described := database_problem(exc)) is not None:
            return described
    if isinstance(exc, FlowError):
        return FAILED, str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return USAGE, f"{exc.filename}: {exc.strerror}"
    return FAILED, f"{type(exc).__name__}: {exc} (unexpected; --debug shows the traceback)"


DATABASE_AT = "fedsilo_database_at"  # attribute a command sets on a database error: host:port
_SERVER_AT = re.compile(
    r'server at "([^"]*)"(?: \([^)]*\))?, port (\d+)|server on socket "([^"]*)"'
)
_DATABASE_FIXES = (
    # (what the driver says, exit code, what to tell the operator)
    (re.compile(r'password authentication failed for user "([^"]*)"'), USAGE,
     'authentication failed for user "{0}" at {at}: check the user and password in '
     "--database-url (FEDSILO_SERVICE_DATABASE_URL)"),
    (re.compile(r'database "([^"]*)" does not exist'), USAGE,
     'database "{0}" does not exist at {at}: create it (CREATE DATABASE, owned by the '
     "service's role) or fix the name in --database-url"),
    (re.compile(r'role "([^"]*)" does not exist'), USAGE,
     'database role "{0}" does not exist at {at}: fix the user in --database-url'),
    (re.compile(r"permission denied[^\n]*"), USAGE,
     "the database at {at} refused the service's role ({0}): it must own the database's "
     "schema, or be granted what infra/README.md lists"),
    (re.compile(r"(?:too many clients|remaining connection slots)[^\n]*"), UNREACHABLE,
     "the database at {at} has no free connection ({0}): raise max_connections or stop "
     "what holds them"),
    (re.compile(r"(?:connection refused|timeout expired|could not translate host name|"
                r"no route to host|network is unreachable|server closed the connection|"
                r"the database system is (?:starting up|shutting down|in recovery mode)|"
                r"no such file or directory|connection failed)[^\n]*", re.IGNORECASE),
     UNREACHABLE,
     "database unreachable at {at} ({0}): is PostgreSQL running there, and is --database-url "
     "right?"),
)  # fmt: skip


def database_problem(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, message) for a database error met at start (`aggregator serve`, `migrate`,
    `backup`): which server, and what to fix; never the URL (it may hold a password)."""
    said = str(getattr(exc, "orig", None) or exc)
    found = _SERVER_AT.search(said)
    # host:port from the URL (`serve.naming_database`): a timeout's message names neither
    at = getattr(exc, DATABASE_AT, None) or "the configured database"
    if found:
        at = f"{found[1]}:{found[2]}" if found[1] is not None else f"socket {found[3]}"
    for pattern, code, fix in _DATABASE_FIXES:
        if matched := pattern.search(said):
            return code, fix.format(matched[1] if matched.groups() else matched[0], at=at)
    return None


def one_line(message: str) -> str:
    """The message on one line: multi-line details are joined, not dropped."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


class FedsiloGroup(TyperGroup):
    """The root command group: turns a failing command's exception into `describe`'s line and
    exit code (click's own usage errors and exits pass through unchanged)."""

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # --help, usage errors (exit 2), a command's own exit code
        except BrokenPipeError as exc:  # `fedsilo runs list --json | head`: quiet, as Unix tools
            _silence_stdout()
            raise typer.Exit(PIPE_CLOSED) from exc
        except Exception as exc:
            code, message = describe(exc)
            if ctx.meta.get(DEBUG_KEY) or os.environ.get("FEDSILO_DEBUG") == "1":
                err_console.print(Text("".join(traceback.format_exception(exc)).rstrip()))
            err_console.print(Text(f"error: {one_line(message)}"))
            raise typer.Exit(code) from exc


def _silence_stdout() -> None:
    """Point stdout at /dev/null: the interpreter flushes it at exit, and a second broken pipe
    there would print "Exception ignored" (the recipe of Python's `signal` documentation)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (CliRunner): nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
