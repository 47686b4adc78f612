"""Service settings, read from FEDSILO_SERVICE_* environment variables or passed in."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.token_format import token_problem


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDSILO_SERVICE_", extra="forbid")

    workspace: Path = Field(default=Path("fedsilo-service"), description="keys, tokens, exports")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite in workspace")
    # PostgreSQL: a silent database host (hung, firewalled) fails the start or a request after
    # this long instead of holding it (and a worker thread) for good
    database_connect_timeout_s: float = Field(
        default=10.0, ge=0, description="PostgreSQL connect timeout, seconds; 0 = none"
    )
    database_statement_timeout_s: float = Field(
        default=0.0, ge=0, description="PostgreSQL statement_timeout, seconds; 0 = none"
    )
    host: str = "127.0.0.1"
    port: int = 8700
    mode: Literal["development", "production"] = "development"
    expose_docs: bool | None = Field(
        default=None,
        description="serve /docs, /redoc and /openapi.json; None = in development mode only",
    )
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    long_poll_max_s: float = Field(default=30.0, gt=0)
    # long-polls wake on commits (aggregation/service/wakeup.py); this re-check is the safety net
    poll_interval_s: float = Field(default=5.0, gt=0, description="long-poll re-check, seconds")
    notify: bool = Field(default=True, description="wake long-polls on commits (LISTEN/NOTIFY)")
    # Threads that run the sync handlers and the long-polls' checks. anyio's default is 40; at
    # 128 silos that many runnable threads cost more than they overlap (GIL hand-offs, and as
    # many PostgreSQL connections queueing on the same round lock): with 8, bench/scale.py
    # measured -11 to -14% service CPU and -45% PostgreSQL CPU a round. Scale out with replicas.
    worker_threads: int = Field(
        default=8, ge=1, le=256, description="threads running handlers and long-poll checks"
    )
    # vertical runs: relayed envelopes go once their recipient read them and when the run ends
    vertical_keep_envelopes: bool = Field(
        default=False, description="keep relayed vertical envelopes (audit) instead of deleting"
    )
    # A running run whose coordinator went away (killed, its machine gone) would hold its silos
    # for good: each agent serves one run at a time. The service fails a run whose current round
    # is still open this long after its deadline (or closed this long ago with nothing opened
    # since); `aggregation/service/abandoned.py`. The coordinator closes at the deadline itself,
    # so the grace only has to cover a live but slow one: its long-poll (10 s), its client's
    # retries through a service restart, a Prefect task run starting on a loaded server, a
    # paused process. The grace of a round is max(this, the round's own deadline length): a
    # slow deployment's long rounds get as long again. 0 turns it off.
    abandoned_after_s: float = Field(
        default=120.0,
        ge=0,
        description="fail a running run whose round is this long past its deadline with no "
        "close by its coordinator (at least the round's own deadline length); 0 = never",
    )
    admin_token: str = Field(default="", description="empty = read or create workspace/admin.token")
    admin_token_file: Path | None = Field(default=None, description="file holding the token")
    # production mode: mutual TLS (aggregation/service/tls.py)
    tls_cert: Path | None = Field(default=None, description="service certificate (PEM)")
    tls_key: Path | None = Field(default=None, description="service private key (PEM)")
    client_ca: Path | None = Field(default=None, description="CA that signs client certificates")
    # XGBoost's federated collective (tree mode "collective"): its gRPC server needs a server
    # certificate and the federation CA that silo certificates chain to; it refuses without them.
    collective_cert: Path | None = None
    collective_key: Path | None = None
    collective_ca: Path | None = None
    collective_host: str = Field(
        default="127.0.0.1", description="the address silos dial to reach the collective server"
    )
    collective_server_name: str = Field(
        default="127.0.0.1", description="the name in the collective server's certificate"
    )

    # The ledger's signing key off the database host (aggregation/service/keys.py): a PEM file
    # (owner-only permissions) or a PKCS#11/KMS hook 'module:factory'; default workspace/keys.
    signing_key_file: Path | None = Field(default=None, description="Ed25519 PEM, mode 0600")
    signer: str = Field(default="", description="module:factory returning the ledger signer")

    # observability (aggregation/service/observability.py): logs, /metrics, /readyz
    log_format: Literal["json", "text"] | None = Field(
        default=None, description="json or text; None = json in production, text in development"
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    metrics_token: str = Field(
        default="", description="bearer token for /metrics on the API port; empty = admin token"
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="also serve /metrics unauthenticated here"
    )
    metrics_host: str = Field(default="127.0.0.1", description="interface of metrics_port")

    plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="importable modules that register extra round engines at import "
        "(env: comma-separated, e.g. FEDSILO_SERVICE_PLUGINS=acme.fedprox_engine)",
    )

    @field_validator("plugins", mode="before")
    @classmethod
    def _split_plugins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _ops_port_is_its_own(self) -> ServiceSettings:
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError(
                f"metrics_port {self.metrics_port} is the API port: the ops port (/metrics, "
                "/readyz without credentials) needs a port of its own"
            )
        return self

    @model_validator(mode="after")
    def _production_needs_tls(self) -> ServiceSettings:
        if self.mode != "production":
            return self
        given = {"tls_cert": self.tls_cert, "tls_key": self.tls_key, "client_ca": self.client_ca}
        missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is None]
        if missing:
            raise ValueError(
                f"production mode serves HTTPS with client certificates only and needs "
                f"{', '.join(missing)} (files from `fedsilo federation init`); plain HTTP is "
                "development mode"
            )
        absent = [f"{k.replace('_', '-')} {v}" for k, v in given.items() if v and not v.is_file()]
        if absent:
            raise ValueError(f"production mode: no such file: {'; '.join(absent)}")
        return self

    def docs_exposed(self) -> bool:
        """Whether the API documentation is served: development mode does, production mode
        only when asked (``--expose-docs``): it maps every route for whoever can connect."""
        return self.mode == "development" if self.expose_docs is None else self.expose_docs

    def resolved_log_format(self) -> Literal["json", "text"]:
        """JSON lines in production (for a log shipper), readable text in development."""
        if self.log_format is not None:
            return self.log_format
        return "json" if self.mode == "production" else "text"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.workspace / 'service.db').resolve()}"

    def resolved_admin_token(self) -> str:
        """The coordinator's bearer token; created once (0600) in the workspace if not given."""
        if self.admin_token:
            if problem := token_problem(self.admin_token):
                raise ValueError(f"the admin token (FEDSILO_SERVICE_ADMIN_TOKEN) {problem}")
            return self.admin_token.strip()
        if self.admin_token_file:
            raw = self.admin_token_file.read_bytes()
            # a comment line or a stray byte would make a token no client can send
            if problem := token_problem(raw):
                raise ValueError(f"admin token file {self.admin_token_file} {problem}")
            return raw.decode("ascii").strip()
        return ensure_admin_token(self.workspace)


def ensure_admin_token(workspace: Path) -> str:
    path = workspace / "admin.token"
    if path.exists():
        return path.read_text().strip()
    workspace.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token
