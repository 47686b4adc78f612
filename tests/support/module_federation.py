"""One live federation per test module: the module-scoped `fed` fixture the end-to-end files
of the per-silo modes (distillation, ensembles, personalization) share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from support.fault_helpers import Federation, start_federation


def federation_fixture(folder: str, silos: tuple[str, ...], policy: str) -> Callable[..., Any]:
    """A module-scoped fixture starting a service and one agent per silo in `silos` (each with
    the silo policy `policy`) under a temporary `folder`, stopped after the module's tests.

    Assign it to `fed` in the test module: ``fed = federation_fixture("distill", SILOS, POLICY)``.
    """

    @pytest.fixture(scope="module", name="fed")
    def fed(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> Iterator[Federation]:
        federation = start_federation(
            tmp_path_factory.mktemp(folder),
            prefect_api_url,
            silos=silos,
            policy=dict.fromkeys(silos, policy),
        )
        try:
            yield federation
        finally:
            federation.stop()

    return fed
