"""infra/k8s: every manifest is valid against the pinned Kubernetes version's schemas (bundled
by `kubernetes-validate`, offline, strict: unknown fields fail), and the hub's Deployment
has its probes, Secret references and non-root security context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"
KUBERNETES_VERSION = "1.31.0"  # the oldest minor the manifests support; pinned for CI


def _resources() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def _by_kind(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in _resources() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize(
    "resource", _resources(), ids=lambda r: f"{r[0]}:{r[1]['kind']}/{r[1]['metadata']['name']}"
)
def test_manifest_is_valid_for_the_pinned_kubernetes(resource: tuple[str, dict[str, Any]]) -> None:
    kubernetes_validate.validate(resource[1], KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    broken = _by_kind("Deployment", "fedsilo-aggregator")
    broken["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = _by_kind("Service", "fedsilo-aggregator")
    unknown["spec"]["portz"] = []  # strict: a misspelt field is an error, not ignored
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.stem != "kustomization")


def test_hub_deployment_probes_secrets_and_security() -> None:
    pod = _by_kind("Deployment", "fedsilo-aggregator")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    env = {e["name"]: e for e in container["env"]}
    assert env["FEDSILO_SERVICE_METRICS_PORT"]["value"] == str(ports["ops"])
    assert env["FEDSILO_SERVICE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "fedsilo-db"
    assert "--production" in container["args"]
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"fedsilo-service-tls"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    prefect = _by_kind("Deployment", "prefect")["spec"]["template"]["spec"]["containers"][0]
    assert prefect["readinessProbe"]["httpGet"]["path"] == "/api/health"
    postgres = _by_kind("StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]
    assert "pg_isready" in postgres["readinessProbe"]["exec"]["command"]
