"""A federation CA and a production-mode service shared by a module's security tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tls_federation import production_service

from flows.federation_files import DEFAULT_HOSTS, init_federation


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`fedsilo federation init --federation heart` in a fresh folder."""
    folder = tmp_path_factory.mktemp("federation")
    init_federation(folder, "heart", list(DEFAULT_HOSTS))
    return folder


@pytest.fixture(scope="module")
def prod_url(fed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A production service (SQLite, 256 KiB body limit) with federation `heart` created."""
    from tls_federation import coordinator

    work = tmp_path_factory.mktemp("service")
    with production_service(
        work, f"sqlite:///{work}/service.db", fed, max_body_bytes=256 * 1024
    ) as url:
        coordinator(url, fed).create_federation("heart")
        yield url
