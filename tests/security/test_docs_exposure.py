"""The API documentation (/docs, /redoc, /openapi.json) is served in development mode, and in
production mode only with ``--expose-docs``; the schema documents every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aggregation.service.main import create_app
from aggregation.service.settings import ServiceSettings

DOCS = ("/docs", "/redoc", "/openapi.json")


def _production(tmp_path: Path, **extra: object) -> ServiceSettings:
    files = {}
    for name in ("tls_cert", "tls_key", "client_ca"):  # the settings check only that they exist
        (tmp_path / name).write_text("-")
        files[name] = tmp_path / name
    return ServiceSettings(workspace=tmp_path / "svc", mode="production", **files, **extra)  # type: ignore[arg-type]


def _served(app) -> set[str]:  # type: ignore[no-untyped-def]
    return {getattr(r, "path", "") for r in app.routes} & set(DOCS)


def test_production_hides_the_docs(tmp_path: Path) -> None:
    assert _served(create_app(_production(tmp_path))) == set()


def test_production_with_expose_docs_serves_them(tmp_path: Path) -> None:
    assert _served(create_app(_production(tmp_path, expose_docs=True))) == set(DOCS)


def test_development_serves_the_docs(tmp_path: Path) -> None:
    app = create_app(ServiceSettings(workspace=tmp_path / "svc"))
    assert _served(app) == set(DOCS)
    assert TestClient(app).get("/openapi.json").status_code == 200


def test_cli_flag_reaches_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from flows.cli import app as cli
    from flows.cli import serve

    seen: list[ServiceSettings] = []
    monkeypatch.setattr(serve, "serve_service", seen.append)
    s = _production(tmp_path)
    args = ["aggregator", "serve", "--production", "--workspace", str(tmp_path / "svc")]
    args += ["--tls-cert", str(s.tls_cert), "--tls-key", str(s.tls_key)]
    args += ["--client-ca", str(s.client_ca), "--expose-docs"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert seen[0].docs_exposed()


def test_every_route_documents_its_refusals(tmp_path: Path) -> None:
    schema = create_app(ServiceSettings(workspace=tmp_path / "svc")).openapi()
    for path, item in schema["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in item.items():
            answers = op["responses"]
            assert {"400", "422"} <= set(answers), (method, path)
            for status in ("400", "422"):
                ref = answers[status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorOut"), (method, path, status)
