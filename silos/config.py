"""The silo operator's configuration file (`silo.toml`), read with clear errors.

Example::

    [silo]
    name = "cleveland"
    federation = "heart"
    workspace = "workspace"          # keys, logs, local lineage; relative to this file

    [data]
    path = "data.csv"                # CSV or Parquet
    # test_path = "test.csv"         # optional held-out test file; else test_fraction of path
    contract = "heart_disease"       # published by the federation (`fedsilo silo accept-contract`)
    # contract_version = "1.0.0"     # optional pin: accept this version, and only it, in advance
    # contract_path = "draft.toml"   # optional: a local draft for `fedsilo silo check` only
    test_fraction = 0.25
    split_seed = 42

    [service]
    urls = ["http://127.0.0.1:8700"]

    [prefect]
    api_url = "http://127.0.0.1:4200/api"   # optional: where this silo's flow runs are recorded

    [policy]
    allowed_models = ["logreg", "mlp"]
    max_rounds_per_run = 200

    [policy.trees]                   # optional: limits on XGBoost / LightGBM runs
    allowed_modes = ["bagging", "cyclic"]
    max_depth = 6

    [tls]                            # production: mutual TLS with the service (https:// URLs)
    ca = "certs/ca.pem"              # the federation's CA
    cert = "certs/silo.pem"          # signed by the coordinator (`fedsilo federation sign-csr`)
    key = "certs/silo.key"           # made by `fedsilo silo enrol`, mode 0600

    [collective]                     # only to join XGBoost's federated collective (mutual TLS)
    ca = "certs/federation-ca.pem"
    cert = "certs/silo.pem"
    key = "certs/silo.key"

    [agent]                          # optional
    plugins = ["acme_fedsilo.sketch"]  # installed modules that register task handlers
    metrics_port = 9464              # Prometheus /metrics (silos/metrics.py); off when absent
    metrics_host = "127.0.0.1"       # keep it private: loopback or a monitoring interface

    [vertical]                       # optional: this silo's party role in vertical runs
    contract = "credit_vertical_bank"  # its vertical contract: id column, label (active
                                     # party only), columns (schemas/contracts/vertical, or a path)
    data = "bank.csv"                # default: [data] path
    predict_data = "new.csv"         # optional: rows to predict jointly when a run asks
    max_trees = 200                  # policy: refuse runs asking for more trees
    models = ["secureboost", "logreg"]  # policy: the vertical models it trains
    max_epochs = 100                 # policy: refuse logistic regressions asking for more

    [compute]                        # optional: big tables on Dask (silos/compute.py says
                                     # which rounds run there; needs [data] test_path)
    dask_scheduler = "tcp://10.0.0.5:8786"   # else a LocalCluster beyond local_max_bytes
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.contract_registry import CONTRACT_VERSION_PATTERN
from schemas.specs import ModelKind
from schemas.wire import NAME_PATTERN
from silos.compute import ComputeSection
from silos.exceptions import SiloConfigError
from silos.tree_policy import TreePolicy


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiloSection(_Section):
    name: str = Field(pattern=NAME_PATTERN)
    federation: str = Field(pattern=NAME_PATTERN)
    workspace: Path = Path("workspace")
    key_path: Path | None = None


class DataSection(_Section):
    path: Path
    contract: str = Field(pattern=NAME_PATTERN, description="the federation's published contract")
    # a pin: the operator accepts this published version, and only this one, in advance
    contract_version: str | None = Field(default=None, pattern=CONTRACT_VERSION_PATTERN)
    # a local draft, read only by `fedsilo silo check` before publication; never trained on
    contract_path: Path | None = None
    # a held-out test file (CSV or Parquet): train on all of `path`, evaluate on this one;
    # without it the silo splits `test_fraction` of `path` off for evaluation
    test_path: Path | None = None
    test_fraction: float = Field(default=0.25, gt=0, lt=1)
    split_seed: int = 42


class ServiceSection(_Section):
    urls: list[str] = Field(min_length=1)

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        # refused here, naming silo.toml: the agent would otherwise retry a malformed address
        # forever as if the service were down (imported here: httpx is heavy for a config)
        from silos.http_base import service_url

        return [service_url(url) for url in urls]


class PrefectSection(_Section):
    api_url: str | None = None


class PolicySection(_Section):
    allowed_models: list[ModelKind] = Field(default_factory=lambda: list(get_args(ModelKind)))
    max_rounds_per_run: int = Field(default=200, ge=1)
    max_epsilon: float | None = Field(
        default=None,
        gt=0,
        description="total DP budget across runs; rounds that would exceed it are refused",
    )
    delta: float = Field(
        default=1e-5,
        gt=0,
        lt=1,
        description="the delta max_epsilon is counted at (a run's own delta when smaller): a "
        "run asking for delta 0.99 would otherwise fit ~4x the rounds under the same cap",
    )
    require_privacy: bool = Field(default=False, description="refuse runs without silo-level DP")
    min_noise_multiplier: float | None = Field(
        default=None,
        gt=0,
        description="refuse a DP run whose noise multiplier is below this (require_privacy "
        "alone accepts any, even 1e-6)",
    )
    trees: TreePolicy = TreePolicy()


class CollectiveSection(_Section):
    """Certificates for XGBoost's federated collective: the federation CA, this silo's own."""

    ca: Path
    cert: Path
    key: Path


class TlsSection(_Section):
    """Mutual TLS with the aggregation service: the federation CA and this silo's certificate."""

    ca: Path
    cert: Path
    key: Path


MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


class AgentSection(_Section):
    """How the agent runs: the handler plugins it imports (see `silos.handlers.plugins`)."""

    plugins: list[str] = Field(
        default_factory=list, description="importable module names installed at this silo"
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve Prometheus /metrics on this port"
    )
    metrics_host: str = Field(
        default="127.0.0.1", min_length=1, description="interface the metrics port binds"
    )

    @field_validator("plugins")
    @classmethod
    def _module_names(cls, plugins: list[str]) -> list[str]:
        for name in plugins:
            if not re.match(MODULE_PATTERN, name):
                raise ValueError(
                    f"{name!r} is not a Python module name (dotted, like 'acme_fedsilo.sketch'); "
                    "a plugin is a module installed at the silo, never a path or URL"
                )
        if len(set(plugins)) != len(plugins):
            raise ValueError(f"plugins lists a module twice: {plugins}")
        return plugins


VerticalModel = Literal["secureboost", "logreg"]
VERTICAL_MODELS: tuple[VerticalModel, ...] = ("secureboost", "logreg")


class VerticalSection(_Section):
    """The silo's part in vertical runs (same customers, different columns): its contract
    names the id column, the label (the active party only) and its columns."""

    contract: str = Field(min_length=1, description="a vertical contract name or a .toml path")
    data: Path | None = None
    predict_data: Path | None = None
    max_trees: int = Field(default=200, ge=1)
    # what each leaks differs (docs/vertical.md): an operator may take part in one only
    models: list[VerticalModel] = Field(default_factory=lambda: list(VERTICAL_MODELS), min_length=1)
    max_epochs: int = Field(default=100, ge=1)


class SiloConfig(_Section):
    silo: SiloSection
    data: DataSection
    service: ServiceSection
    prefect: PrefectSection = PrefectSection()
    policy: PolicySection = PolicySection()
    collective: CollectiveSection | None = None
    tls: TlsSection | None = None
    agent: AgentSection = AgentSection()
    compute: ComputeSection = ComputeSection()
    vertical: VerticalSection | None = None
    source: Path | None = None

    @model_validator(mode="after")
    def _tls_matches_urls(self) -> SiloConfig:
        https = [u for u in self.service.urls if u.startswith("https://")]
        if https and len(https) != len(self.service.urls):
            raise ValueError("service.urls mixes http:// and https:// addresses")
        if https and self.tls is None:
            raise ValueError(
                "https:// service URLs need a [tls] section (ca, cert, key): the service "
                "accepts only client certificates from the federation's CA"
            )
        if self.tls is not None and not https:
            raise ValueError(
                "a [tls] section needs https:// service URLs (plain http:// is development mode)"
            )
        return self

    @property
    def workspace(self) -> Path:
        return self.silo.workspace

    @property
    def key_path(self) -> Path:
        return self.silo.key_path or self.silo.workspace / "keys" / "silo_ed25519.pem"


def load_silo_config(path: Path | str) -> SiloConfig:
    """Read and validate `silo.toml`; relative paths are resolved against its folder.

    Raises
    ------
    SiloConfigError
        naming the file and, for syntax errors, the line; for invalid values, the key.
    """
    path = Path(path)
    if path.is_dir():
        raise SiloConfigError(f"silo config {path} is a directory (pass --config PATH/silo.toml)")
    if not path.is_file():
        raise SiloConfigError(f"silo config {path} does not exist (pass --config PATH/silo.toml)")
    try:
        # utf-8-sig: a byte-order mark (Notepad, PowerShell 5) is dropped, not a syntax error
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:
        raise SiloConfigError(f"silo config {path}: TOML syntax error: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SiloConfigError(f"silo config {path} is not UTF-8 text") from exc
    try:
        cfg = SiloConfig.model_validate({**raw, "source": path})
    except ValidationError as exc:
        problems = "; ".join(
            f"key '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in exc.errors()
        )
        raise SiloConfigError(f"silo config {path}: {problems}") from exc
    base = path.parent.resolve()
    silo = cfg.silo.model_copy(
        update={
            "workspace": base / cfg.silo.workspace,
            "key_path": base / cfg.silo.key_path if cfg.silo.key_path else None,
        }
    )
    data = cfg.data.model_copy(
        update={
            "path": base / cfg.data.path,
            "contract_path": base / cfg.data.contract_path if cfg.data.contract_path else None,
            "test_path": base / cfg.data.test_path if cfg.data.test_path else None,
        }
    )
    collective = cfg.collective
    if collective is not None:
        collective = CollectiveSection(
            ca=base / collective.ca, cert=base / collective.cert, key=base / collective.key
        )
    tls = cfg.tls
    if tls is not None:
        tls = TlsSection(ca=base / tls.ca, cert=base / tls.cert, key=base / tls.key)
    vertical = cfg.vertical
    if vertical is not None:
        contract = Path(vertical.contract)
        vertical = vertical.model_copy(
            update={
                "contract": str(base / contract) if contract.suffix else vertical.contract,
                "data": base / vertical.data if vertical.data else data.path,
                "predict_data": base / vertical.predict_data if vertical.predict_data else None,
            }
        )
    update = {"silo": silo, "data": data, "collective": collective, "tls": tls}
    return cfg.model_copy(update=update | {"vertical": vertical})
