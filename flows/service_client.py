"""The coordinator's HTTP client for the aggregation service (bearer admin token).

It shares the silo client's retrying transport (`silos.client.HttpBase`): transport failures and
5xx answers are retried over every configured address; a 4xx answer raises a typed
`ServiceRejected` (its class follows the answer's ErrorOut code).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from schemas.contract_registry import ContractPublish, PublishedContract
from schemas.lineage import LineageEntry
from schemas.url_path import query, seg
from schemas.wire import (
    FederationOut,
    RoundClose,
    RoundOpen,
    RoundOut,
    RunCreate,
    RunFinish,
    RunOut,
    RunStatistics,
    SiloOut,
)
from silos.client import HttpBase
from silos.client_errors import Conflict


class CoordinatorClient(HttpBase):
    """The coordinator's client: bearer admin token."""

    def __init__(self, urls: str | Sequence[str], *, token: str, **kwargs: Any) -> None:
        super().__init__(urls, **kwargs)
        self.token = token

    def _headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        if body is not None and not hasattr(body, "model_dump_json"):
            return self.request(
                method, path, body=json.dumps(body).encode(), content_type="application/json"
            ).json()
        return self.request(method, path, json_body=body).json()

    def create_federation(self, name: str, description: str = "") -> None:
        try:
            self._json("POST", "/v1/federations", {"name": name, "description": description})
        except Conflict:  # it exists already: creating is idempotent
            pass

    def silos(self, federation: str) -> list[SiloOut]:
        return [
            SiloOut.model_validate(x)
            for x in self._json("GET", f"/v1/federations/{seg(federation)}/silos")
        ]

    def approve(self, federation: str, silo: str) -> SiloOut:
        return SiloOut.model_validate(
            self._json("POST", f"/v1/federations/{seg(federation)}/silos/{seg(silo)}/approve")
        )

    def revoke(self, federation: str, silo: str, reason: str | None = None) -> SiloOut:
        path = f"/v1/federations/{seg(federation)}/silos/{seg(silo)}/revoke"
        body = {"reason": reason} if reason is not None else None
        return SiloOut.model_validate(self._json("POST", path, body))

    def create_run(self, body: RunCreate) -> RunOut:
        return RunOut.model_validate(self._json("POST", "/v1/runs", body))

    def put_initial_model(self, run_id: str, payload: bytes) -> str:
        resp = self.request("PUT", f"/v1/runs/{seg(run_id)}/models/0", body=payload)
        return str(resp.json()["sha256"])

    def start_run(self, run_id: str) -> RunOut:
        return RunOut.model_validate(self._json("POST", f"/v1/runs/{seg(run_id)}/start"))

    def finish_run(self, run_id: str, body: RunFinish) -> RunOut:
        return RunOut.model_validate(self._json("POST", f"/v1/runs/{seg(run_id)}/finish", body))

    def run_statistics(self, run_id: str) -> RunStatistics:
        return RunStatistics.model_validate(self._json("GET", f"/v1/runs/{seg(run_id)}/statistics"))

    def get_run(self, run_id: str) -> RunOut:
        return RunOut.model_validate(self._json("GET", f"/v1/runs/{seg(run_id)}"))

    def list_runs(self, federation: str | None = None, limit: int = 50) -> list[RunOut]:
        q = query(limit=limit, federation=federation or None)
        return [RunOut.model_validate(x) for x in self._json("GET", f"/v1/runs{q}")]

    def cancel_run(self, run_id: str, reason: str) -> RunOut:
        return RunOut.model_validate(
            self._json("POST", f"/v1/runs/{seg(run_id)}/cancel", {"reason": reason})
        )

    def federations(self) -> list[FederationOut]:
        return [FederationOut.model_validate(x) for x in self._json("GET", "/v1/federations")]

    def open_round(self, run_id: str, body: RoundOpen) -> RoundOut:
        return RoundOut.model_validate(self._json("POST", f"/v1/runs/{seg(run_id)}/rounds", body))

    def wait_round(self, run_id: str, number: int, wait_s: float) -> RoundOut:
        resp = self.request(
            "GET", f"/v1/runs/{seg(run_id)}/rounds/{number}?wait={wait_s:g}", timeout=wait_s + 30
        )
        return RoundOut.model_validate_json(resp.content)

    def rounds(self, run_id: str) -> list[RoundOut]:
        rows = self._json("GET", f"/v1/runs/{seg(run_id)}/rounds")
        return [RoundOut.model_validate(x) for x in rows]

    def close_round(self, run_id: str, number: int, then_open: RoundOpen | None = None) -> RoundOut:
        """Close round `number`; `then_open` (round number + 1) opens the next one in the
        same transaction if the close ended this one and the run goes on (`opened_next`)."""
        body = RoundClose(then_open=then_open) if then_open is not None else None
        return RoundOut.model_validate(
            self._json("POST", f"/v1/runs/{seg(run_id)}/rounds/{number}/close", body)
        )

    def download_model(self, run_id: str, version: int) -> bytes:
        return self.request("GET", f"/v1/runs/{seg(run_id)}/models/{version}/admin").content

    def ledger(self, run_id: str | None = None, after: int = 0) -> list[LineageEntry]:
        q = query(after=after, run_id=run_id or None)
        return [LineageEntry.model_validate(x) for x in self._json("GET", f"/v1/ledger{q}")]

    def ledger_export(self) -> str:
        return self.request("GET", "/v1/ledger/export", timeout=600).text

    def ledger_keys(self) -> dict[str, str]:
        return dict(self._json("GET", "/v1/ledger/keys"))

    def publish_contract(
        self, federation: str, body: ContractPublish
    ) -> tuple[PublishedContract, bool]:
        """Publish a signed contract version; returns it and whether it is new (201)."""
        resp = self.request("POST", f"/v1/federations/{seg(federation)}/contracts", json_body=body)
        return PublishedContract.model_validate_json(resp.content), resp.status_code == 201

    def contracts(self, federation: str) -> list[PublishedContract]:
        rows = self._json("GET", f"/v1/federations/{seg(federation)}/contracts")
        return [PublishedContract.model_validate(x) for x in rows]

    def contract(self, federation: str, name: str, version: str | None = None) -> PublishedContract:
        """One published version of a contract; the latest when `version` is None."""
        path = f"/v1/federations/{seg(federation)}/contracts/{seg(name)}"
        path += f"/{seg(version)}" if version else ""
        return PublishedContract.model_validate(self._json("GET", path))
