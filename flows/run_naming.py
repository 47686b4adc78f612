"""Names and tags of the coordinator's Prefect flow runs: what a person looks for in the UI.

A flow run is named `FEDERATION-DATASET-MODEL` when it starts (the run id does not exist yet)
and renamed `FEDERATION-DATASET-MODEL-RUN_ID` once the service created the run; its tags
`federation:..`, `dataset:..`, `model:..`, `run:..` filter the UI's run list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from schemas.specs import RunSpec


def model_slug(model: Any, trees: Any) -> str:
    """`logreg`, `mlp`, `xgboost-bagging`...: from specs or their JSON form (Prefect passes
    a deployment's parameters as dicts)."""

    def get(obj: Any, key: str) -> Any:
        return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)

    if trees is not None:
        return f"{get(trees, 'kind')}-{get(trees, 'mode')}"
    return str(get(model, "kind") or "model")


def initial_name() -> str:
    """The flow run's name before the run exists (Prefect calls this at the run's start)."""
    p = flow_run.parameters
    name = f"{p['federation']}-{p['dataset']}-{model_slug(p.get('model'), p.get('trees'))}"
    resume = p.get("resume_run_id")
    return f"{name}-{resume}" if resume else name


def run_tags(spec: RunSpec, run_id: str) -> list[str]:
    return [
        f"federation:{spec.federation}",
        f"dataset:{spec.dataset}",
        f"model:{model_slug(spec.model, spec.trees)}",
        f"run:{run_id}",
    ]


def label_flow_run(spec: RunSpec, run_id: str) -> str | None:
    """Rename the current flow run after its run and add the tags; returns the new name (None
    outside a flow run)."""
    flow_run_id = flow_run.get_id()
    if not flow_run_id:
        return None
    name = f"{spec.federation}-{spec.dataset}-{model_slug(spec.model, spec.trees)}-{run_id}"
    tags = sorted({*flow_run.tags, *run_tags(spec, run_id)})
    with get_client(sync_client=True) as client:
        client.update_flow_run(UUID(flow_run_id), name=name, tags=tags)
    return name
