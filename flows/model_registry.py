"""`fedsilo model register`: put a run's global model into an MLflow model registry.

The registry entry and the ledger point at each other: the MLflow run and model version carry
tags with the fedsilo run id, the ledger head (seq and hash) at registration, the model's
sha256 as the ledger records it, the federation and the data contract; the command prints the
registry's model URI and version for the coordinator's records. The model bytes are downloaded
from the service and must hash to the ledger's sha256 before anything is logged, and the
ledger's chain and signatures must verify.

Every model is logged with a signature naming its inputs, the run's contract's encoded
features in pipeline order (`register`'s `feature_names`), so MLflow takes a DataFrame of
encoded rows by column name and refuses a missing column or an unnamed array (raw rows go
through `fedsilo predict`, `flows.predict`). XGBoost and LightGBM models use MLflow's native
flavours; a PyTorch model is logged as its
safetensors file (an artifact) under a pyfunc wrapper that rebuilds the network to predict; a
FedBoost ensemble as its artifact JSON under a pyfunc wrapper that mixes its members as the
silos do. A run with no global model MLflow could load (distillation: each silo keeps its own;
vertical: split between the parties) is refused, saying where its models are instead, and so
is a model version whose bytes are not the kind the run trains (an ensemble run's empty v0).
mlflow is an optional extra (``pip install 'fedsilo[registry]'``); only this module imports it,
and only when it logs: `fedsilo predict` reads the same ledger records (`run_model`,
`check_bytes`) without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as installed
from pathlib import Path
from typing import Any

import numpy as np

from flows.exceptions import FlowError, RunCancelled, UnknownName
from flows.lineage_cmds import parse_keys
from flows.lineage_view import ModelRecord, RunView, as_dict, payload_of, run_view
from schemas import tensors
from schemas.ensemble import EnsembleArtifact
from schemas.ledger_verify import verify_chain
from schemas.lineage import LineageEntry
from schemas.specs import ModelSpec, param_shapes
from silos.exceptions import ModelError

TAG = "fedsilo."
TREE_KINDS = ("xgboost", "lightgbm")
# MLflow retries an unreachable server 7 times with backoff (about 4 minutes) and waits 120 s
# per request; the reachability check before registering asks once, briefly
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class RegistryError(FlowError):
    """A run's model cannot be registered: no final model, a model whose bytes do not match
    the ledger or do not load, an unverifiable ledger, an unknown model kind or a run with no
    global model (distillation, vertical); the message names the run."""


class NoFinalModel(RegistryError, RunCancelled):
    """The run was cancelled, so it has no final model: the CLI's exit 7 (a RunCancelled)."""


class TrackingUnreachable(FlowError):
    """The MLflow tracking server did not answer; the message names its URI (exit 5)."""


@dataclass(frozen=True)
class RunModel:
    """What the ledger says about a run's final model, and the lineage to tag it with."""

    run_id: str
    run_status: str
    kind: str
    spec: dict[str, Any]
    model_version: int
    sha256: str
    path: str
    metrics: dict[str, float]
    history: list[tuple[int, dict[str, float]]]
    per_silo: dict[str, dict[str, float]]
    contract: str
    contract_version: str
    ledger_head_seq: int
    ledger_head_hash: str
    # the published contract text the run pinned (run_started), else the one silos validated
    contract_sha256: str = ""
    # the ledger's digest of the run's federation statistics (its statistics round), if any
    statistics_digest: str = ""

    def tags(self) -> dict[str, str]:
        """Lineage tags for the MLflow run and the registered model version."""
        return {
            f"{TAG}run_id": self.run_id,
            f"{TAG}run_status": self.run_status,  # other than finished: an intermediate model
            f"{TAG}ledger_head_seq": str(self.ledger_head_seq),
            f"{TAG}ledger_head_hash": self.ledger_head_hash,
            f"{TAG}model_sha256": self.sha256,
            f"{TAG}model_version": str(self.model_version),
            f"{TAG}model_kind": self.kind,
            f"{TAG}federation": str(self.spec.get("federation", "")),
            f"{TAG}dataset": str(self.spec.get("dataset", "")),
            f"{TAG}contract": self.contract,
            f"{TAG}contract_version": self.contract_version,
        }


@dataclass(frozen=True)
class Registered:
    """Where the model went: registry name and version, MLflow run, model URI."""

    name: str
    version: str
    mlflow_run_id: str
    model_uri: str
    tracking_uri: str
    tags: dict[str, str]


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
    }


def _kind(view: RunView) -> str:
    """The kind of the run's global model as the registry names it (the tag and the default
    name); a run without one is refused, naming where its models are instead."""
    if any(e.kind == "vertical_started" for e in view.entries):
        raise RegistryError(_vertical_refusal(view))
    if view.spec.get("distill"):
        raise RegistryError(
            f"run {view.run_id} is a distillation run: it has no global model (its model "
            "versions hold the federation's averaged soft labels, not weights); each silo "
            f"keeps its own distilled model in its workspace (distill/{view.run_id}.model), "
            "so there is nothing to register"
        )
    if view.spec.get("ensemble"):
        return "ensemble"  # its spec's model only sizes the mlp members
    trees, model = as_dict(view.spec, "trees"), as_dict(view.spec, "model")
    kind = str(trees.get("kind") or model.get("kind") or "")
    if kind not in (*TREE_KINDS, "logreg", "mlp"):
        raise RegistryError(
            f"run {view.run_id} trains {kind or 'an unknown model'!r}; the registry takes "
            "xgboost, lightgbm, logreg, mlp and ensemble models"
        )
    return kind


def _vertical_refusal(view: RunView) -> str:
    """Why a vertical run has nothing to register, and how its model is used instead."""
    parties = ", ".join(view.participants) or "its parties"
    said = (
        f"run {view.run_id} is a vertical run: a vertical model is split between the parties "
        f"({parties}), each keeping its own part at its silo, so there is no model to register"
    )
    mode = view.started.get("mode") or "train"
    if mode != "train":
        return f"{said} (and this {mode} run trained none)"
    federation = view.started.get("federation") or "FEDERATION"
    return (
        f"{said}; predict with it jointly: `fedsilo vertical predict --federation {federation} "
        f"--model-run {view.run_id}`"
    )


def _state(view: RunView) -> str:
    """How the run ended, for a sentence: "was cancelled (wrong dataset)", "failed (...)"."""
    said = {"cancelled": "was cancelled", "failed": "failed", "in progress": "is still running"}
    reason = (view.finish or {}).get("reason")
    text = said.get(view.status, f"is {view.status}")
    return f"{text} ({reason})" if reason else text


def chosen_model(view: RunView, version: int | None = None, verb: str = "register") -> ModelRecord:
    """The run's final model, or its model `version` when asked for one.

    `verb` says what the caller does with it ("register", "predict with"), for the messages.

    Raises
    ------
    NoFinalModel
        If the run was cancelled (so has no final model).
    RegistryError
        If the run failed or is running (so has no final model) or saved no model.
    UnknownName
        If the run saved no model `version`; the message lists the versions it did save.
    """
    if version is not None:
        model = view.model(version)
        if model is None:
            saved = ", ".join(f"v{m.version}" for m in view.models) or "none"
            raise UnknownName(f"run {view.run_id} saved no model v{version} (saved: {saved})")
        return model
    final = view.finished_model
    if final is not None:
        return final
    if not view.models:
        raise RegistryError(f"run {view.run_id} saved no model ({view.status}); nothing to {verb}")
    last = view.models[-1].version
    anyway = f"to {verb} that one anyway, pass --model-version {last}"
    if view.status == "cancelled":  # the CLI adds "it has no final model" (exit 7)
        raise NoFinalModel(
            f"run {view.run_id} {_state(view)}; its last model v{last} is intermediate: {anyway}"
        )
    raise RegistryError(
        f"run {view.run_id} {_state(view)}: it has no final model, and its last model v{last} "
        f"is intermediate; {anyway}"
    )


def run_model(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    run_id: str,
    version: int | None = None,
    verb: str = "register",
) -> RunModel:
    """Read the run's final model (or model `version`), metrics, contract and the ledger head.

    Raises
    ------
    RegistryError
        If the ledger does not verify, the run did not finish or saved no model (`verb` says
        what the caller meant to do with it); NoFinalModel if it was cancelled.
    UnknownName
        If the run saved no model `version`.
    LineageReviewError
        If the ledger holds no entry of `run_id`.
    """
    view = run_view(entries, run_id)
    kind = _kind(view)  # first: a run with no global model has no version worth naming
    final = chosen_model(view, version, verb)
    report = verify_chain(entries, parse_keys(keys))
    if not report.ok:
        raise RegistryError(
            f"the ledger does not verify ({report.reason}); run `fedsilo lineage verify`: "
            f"nothing of run {run_id} can be trusted to {verb} until it does"
        )
    scored = [m for m in view.metrics if m.model_version == final.version] or view.metrics
    last = scored[-1] if scored else None
    contracts = [(v.contract, v.contract_version) for v in view.validations]
    contract, contract_version = contracts[-1] if contracts else (view.spec.get("dataset"), "")
    validated = [v.contract_sha256 for v in view.validations if v.contract_sha256]
    pinned = view.started.get("contract_sha256") or (validated[-1] if validated else "")
    return RunModel(
        run_id=run_id,
        run_status=view.status,
        kind=kind,
        spec=view.spec,
        model_version=final.version,
        sha256=final.sha256,
        path=final.path,
        metrics=_numbers(last.weighted) if last else {},
        history=[(m.round, _numbers(m.weighted)) for m in view.metrics],
        per_silo={s: _numbers(v) for s, v in last.per_silo.items()} if last else {},
        contract=str(contract),
        contract_version=str(contract_version),
        ledger_head_seq=report.head_seq,
        ledger_head_hash=report.head_hash,
        contract_sha256=str(pinned),
        statistics_digest=statistics_digest(entries, run_id),
    )


def statistics_digest(entries: Sequence[LineageEntry], run_id: str) -> str:
    """The ``aggregate_digest`` of the run's statistics round (``""``: it had none)."""
    for entry in entries:
        if entry.run_id == run_id and entry.kind == "aggregate":
            payload = payload_of(entry)
            if payload.get("statistics") is True:
                return str(payload.get("aggregate_digest", ""))
    return ""


def check_bytes(model: RunModel, payload: bytes) -> None:
    """Refuse model bytes whose sha256 is not the one the ledger records."""
    actual = hashlib.sha256(payload).hexdigest()
    if actual != model.sha256:
        raise RegistryError(
            f"run {model.run_id} model v{model.model_version}: downloaded bytes hash to "
            f"{actual[:12]}…, the ledger records {model.sha256[:12]}…; the stored model was "
            "altered (run `fedsilo lineage verify`)"
        )


def check_loadable(model: RunModel, payload: bytes) -> None:
    """Refuse bytes that are not the kind of model the run trains, before anything is logged:
    the registry entry must load. An ensemble run's v0 is empty (its members come in round 1);
    a PyTorch model must hold the spec's arrays."""
    try:
        if model.kind == "ensemble":
            from silos.ensemble import load_ensemble

            load_ensemble(payload)
        elif model.kind not in TREE_KINDS:  # the native loaders check tree models
            spec = ModelSpec.model_validate(model.spec.get("model"))
            tensors.decode_expected(payload, param_shapes(spec))
    except (ValueError, ModelError) as exc:  # TensorFormatError, ValidationError: ValueErrors
        raise RegistryError(
            f"run {model.run_id} model v{model.model_version} is not a loadable "
            f"{model.kind} model ({exc}); nothing was registered"
        ) from exc


def default_name(model: RunModel) -> str:
    """``fedsilo-<federation>-<dataset>-<kind>``, in the characters registries accept."""
    raw = f"fedsilo-{model.spec.get('federation')}-{model.spec.get('dataset')}-{model.kind}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)


def _requirements(*packages: str) -> list[str]:
    # Pinned to what produced the model; given explicitly so MLflow does not import the
    # model in a subprocess to guess them.
    return [f"{p}=={installed(p)}" for p in packages]


def require_mlflow() -> None:
    """ImportError (naming the module) when the `registry` extra is not installed."""
    import mlflow  # noqa: F401


def _signature(feature_names: Sequence[str] | None) -> Any:
    """The model's inputs by name, in the order of the contract's pipeline: MLflow then picks
    a DataFrame's columns by name (any order) and refuses missing ones or an unnamed array."""
    if not feature_names:
        return None
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("double", n) for n in feature_names]))


def _log_model(
    model: RunModel,
    payload: bytes,
    name: str,
    folder: Path,
    feature_names: Sequence[str] | None = None,
) -> Any:
    """Log the model with its flavour and signature; returns MLflow's ModelInfo."""
    from mlflow import pyfunc as mlflow_pyfunc

    common: dict[str, Any] = {
        "name": "model",
        "registered_model_name": name,
        "signature": _signature(feature_names),
    }
    if model.kind == "xgboost":
        import xgboost as xgb
        from mlflow import xgboost as mlflow_xgboost

        booster = xgb.Booster(model_file=bytearray(payload))
        reqs = _requirements("xgboost", "numpy")
        return mlflow_xgboost.log_model(
            booster, model_format="json", pip_requirements=reqs, **common
        )
    if model.kind == "lightgbm":
        import lightgbm as lgb
        from mlflow import lightgbm as mlflow_lightgbm

        lgb_booster = lgb.Booster(model_str=payload.decode("utf-8"))
        reqs = _requirements("lightgbm", "numpy")
        return mlflow_lightgbm.log_model(lgb_booster, pip_requirements=reqs, **common)
    if model.kind == "ensemble":
        return _log_ensemble(payload, folder, common)
    from flows.model_registry_torch import SafetensorsTabularNet

    weights = folder / "model.safetensors"
    weights.write_bytes(payload)
    return mlflow_pyfunc.log_model(
        python_model=SafetensorsTabularNet(),
        artifacts={"weights": str(weights)},
        model_config={"model_spec": json.dumps(model.spec.get("model"))},
        pip_requirements=_requirements("torch", "safetensors", "numpy", "fedsilo"),
        **common,
    )


def _log_ensemble(payload: bytes, folder: Path, common: dict[str, Any]) -> Any:
    """The ensemble artifact under a pyfunc wrapper that mixes its members as the silos do."""
    from mlflow import pyfunc as mlflow_pyfunc

    from flows.model_registry_ensemble import EnsembleMixture

    trees = {m.kind for m in EnsembleArtifact.model_validate_json(payload).members}
    artifact = folder / "ensemble.json"
    artifact.write_bytes(payload)
    return mlflow_pyfunc.log_model(
        python_model=EnsembleMixture(),
        artifacts={"ensemble": str(artifact)},
        pip_requirements=_requirements(
            "torch", "numpy", "fedsilo", *sorted(trees & set(TREE_KINDS))
        ),
        **common,
    )


@contextlib.contextmanager
def _environ(defaults: Mapping[str, str]) -> Iterator[None]:
    """`defaults` for the environment variables the user did not set, restored after."""
    added = [key for key in defaults if key not in os.environ]
    os.environ.update({key: defaults[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _unreachable(exc: BaseException) -> str | None:
    """Why the server did not answer (refused, unknown host, timed out), if that was the error.
    MLflow wraps requests' error in its own exception, as its cause or context."""
    import requests

    inner = exc.__cause__ or exc.__context__
    if isinstance(inner, requests.exceptions.SSLError):
        return None  # it answered: a certificate problem is not an unreachable server
    if isinstance(inner, requests.exceptions.Timeout) or "timed out" in str(inner):
        return "timed out"
    if isinstance(inner, requests.exceptions.ConnectionError):
        errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(inner))
        return errno[1].strip() if errno else "cannot connect"
    return None


def check_reachable(tracking_uri: str) -> None:
    """Ask an HTTP tracking server one cheap question, once, before logging anything.

    Raises
    ------
    TrackingUnreachable
        If it does not answer (connection refused, unknown host, timeout).
    RegistryError
        If it answers with an error (not an MLflow server, authentication, TLS). Both name
        `tracking_uri`.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    if not tracking_uri.startswith(("http://", "https://")):
        return  # a local store (sqlite:///, file:) or a named platform (databricks)
    try:
        with _environ(PROBE_ENV):
            MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
    except mlflow.exceptions.MlflowException as exc:
        why = _unreachable(exc)
        if why is None:
            raise RegistryError(
                f"the MLflow tracking server {tracking_uri} refused a first request: "
                f"{exc.message}; check --tracking-uri and its credentials"
            ) from exc
        raise TrackingUnreachable(
            f"the MLflow tracking server {tracking_uri} did not answer ({why}); start it "
            "(`mlflow server`) or check --tracking-uri"
        ) from exc


def register(
    model: RunModel,
    payload: bytes,
    tracking_uri: str,
    name: str | None = None,
    feature_names: Sequence[str] | None = None,
) -> Registered:
    """Log `payload` (the run's final model) as a new version of registered model `name`.

    `feature_names` (the run's contract pipeline's, `FeaturePipeline.feature_names`) become
    the model's signature: it then takes a DataFrame of encoded rows by column name.

    The MLflow run (in experiment ``fedsilo/<federation>``) holds the final weighted and
    per-silo metrics, the weighted metrics per round as history and the run spec (an
    artifact); it and the model version carry the lineage tags.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    check_bytes(model, payload)
    check_loadable(model, payload)
    name = name or default_name(model)
    tags = model.tags()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    check_reachable(tracking_uri)
    mlflow.set_experiment(f"fedsilo/{model.spec.get('federation', 'default')}")
    with (
        contextlib.redirect_stdout(sys.stderr),  # MLflow's progress lines: keep --json clean
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(run_name=f"fedsilo-{model.run_id}", tags=tags) as active,
    ):
        for rnd, values in model.history:
            mlflow.log_metrics(values, step=rnd)
        mlflow.log_metrics({f"final_{k}": v for k, v in model.metrics.items()})
        for silo, values in model.per_silo.items():
            mlflow.log_metrics({f"{silo}/{k}": v for k, v in values.items()})
        mlflow.log_dict(model.spec, "fedsilo/run_spec.json")
        info = _log_model(model, payload, name, Path(tmp), feature_names)
        mlflow_run_id = active.info.run_id
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return Registered(name, version, mlflow_run_id, f"models:/{name}/{version}", tracking_uri, tags)
