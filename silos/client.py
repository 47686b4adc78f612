"""The silo's HTTP client for the aggregation service: signed requests, on the retrying base
`silos.http_base.HttpBase` (shared with the coordinator's `flows.service_client`).

Lists of binary protocol messages come back as octet-stream bodies of frames
(`schemas.frames`); a 4xx answer is raised as the `ServiceRejected` subclass its code names.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlencode

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from httpx import Response

from schemas import carried, signing, tensors
from schemas.exceptions import TensorFormatError
from schemas.frames import FrameError, unpack_frames
from schemas.ledger_checkpoint import (
    COUNTERSIGNED_PARAM,
    MAX_COUNTERSIGNED_PER_POLL,
    encode_countersigned,
)
from schemas.lineage import make_statement, sign_statement
from schemas.tasks import (
    INLINE_INBOX,
    INLINE_INBOX_PARAM,
    INLINE_MODEL_PARAM,
    NEXT_TASK_FIELD,
    NEXT_WAIT_PARAM,
    TASK_ADAPTER,
    Task,
)
from schemas.url_path import seg
from schemas.wire import (
    WIRE_HEADER,
    WIRE_VERSION,
    EnrolRequest,
    MetricsReport,
    ReadyIn,
    Refusal,
    SiloOut,
    SiloRecordPage,
    enrol_proof_message,
)
from silos.client_errors import ServiceRejected
from silos.http_base import BACKOFF_CAP_S, HttpBase, rejection

__all__ = ["BACKOFF_CAP_S", "HttpBase", "SiloClient", "rejection"]

log = logging.getLogger("fedsilo.client")
RUNS_PREFIX = "/v1/silo/runs/"


@dataclass(frozen=True)
class _Held:
    """A signed statement waiting for the next POST to its run (`schemas.carried`)."""

    run_id: str
    kind: str
    payload: dict[str, Any]
    statement: dict[str, Any]
    signature: str

    @property
    def header(self) -> str:
        return carried.statement_header(self.kind, self.payload, self.signature)


class SiloClient(HttpBase):
    """Signs every request with the silo's Ed25519 identity key."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        federation: str,
        silo: str,
        key: Ed25519PrivateKey,
        **kwargs: Any,
    ) -> None:
        super().__init__(urls, **kwargs)
        self.federation = federation
        self.silo = silo
        self.key = key
        # the model the last task brought inline, (run, version) -> safetensors: the task's
        # handler takes it through `download_model` without a request
        self._inline: dict[tuple[str, int], bytes] = {}
        # likewise what a secure-aggregation stage's task brought, (run, round, what) -> frames:
        # `secagg_get` hands it over once
        self._inbox: dict[tuple[str, int, str], list[bytes]] = {}
        # with `follow_wait_s` > 0 an answer (a secure-aggregation message, a masked or plain
        # update) waits up to that long for the silo's next task in the run
        # (`schemas.tasks.NEXT_WAIT_PARAM`); the task it brings is kept here, and the next
        # `next_task` of that run takes it instead of polling
        self.follow_wait_s = 0.0
        self._next: Task | None = None
        # countersignatures of ledger checkpoints waiting for a request to ride on: the next
        # answer that asks for its next task, or the next poll (`carry_countersigned`)
        self._countersigned: list[tuple[int, str]] = []
        # statements that ride on the run's next POST (`carry_statement`): the kinds the
        # service takes that way (it says so on every answer), the held ones by run, and who
        # keeps their receipts (the agent: its copy of the ledger)
        self.carries: frozenset[str] = frozenset()
        self.on_receipt: Callable[[dict[str, Any]], object] | None = None
        self._held: dict[str, _Held] = {}
        self._held_lock = threading.Lock()
        self._answer = threading.local()  # the carried receipt of this thread's last answer

    def _headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        timestamp = datetime.now(UTC).isoformat()
        nonce = secrets.token_hex(16)
        message = signing.request_message(
            method, path, body, timestamp, nonce, self.federation, self.silo
        )
        # the wire version too, so a request built from these headers alone is complete
        return {
            WIRE_HEADER: str(WIRE_VERSION),
            signing.HEADER_FEDERATION: self.federation,
            signing.HEADER_SILO: self.silo,
            signing.HEADER_TIMESTAMP: timestamp,
            signing.HEADER_NONCE: nonce,
            signing.HEADER_SIGNATURE: self.key.sign(message).hex(),
        }

    def _answered(self, resp: Response) -> None:
        kinds = resp.headers.get(carried.CARRIES_HEADER, "")
        self.carries = frozenset(k for k in kinds.split(",") if k)
        self._answer.receipt = resp.headers.get(carried.RECEIPT_HEADER)

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        """`HttpBase.request`; a POST to a run takes the statement held for that run along
        (`carry_statement`) and hands its receipt to `on_receipt`."""
        held = self._take_held(method, path)
        if held is None:
            return super().request(method, path, **kwargs)
        kwargs["extra_headers"] = {
            **(kwargs.get("extra_headers") or {}),
            carried.STATEMENT_HEADER: held.header,
        }
        self._answer.receipt = None
        answered = False
        try:
            resp = super().request(method, path, **kwargs)
            answered = True
            return resp
        except ServiceRejected:
            answered = True
            raise
        finally:
            self._settle(held, answered)

    def carry_statement(
        self, run_id: str, kind: str, payload: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Sign a lineage statement and hold it for the run's next POST, when the service
        takes `kind` that way (None: its receipt goes to `on_receipt` then); else send it now
        and return it with its receipt, as `submit_statement`."""
        statement, signature = self._signed(run_id, kind, payload)
        held = _Held(run_id, kind, payload, statement, signature)
        if kind not in self.carries or len(held.header) > carried.MAX_HEADER_CHARS:
            return self._post_statement(held)
        with self._held_lock:
            older = self._held.pop(run_id, None)
        if older is not None:  # no POST took it: it goes alone, ahead of this one
            self._send_alone(older)
        with self._held_lock:
            self._held[run_id] = held
        return None

    def flush_held(self) -> None:
        """Send every held statement alone (the agent's run ended before another POST)."""
        with self._held_lock:
            held, self._held = list(self._held.values()), {}
        for h in held:
            self._send_alone(h)

    def _take_held(self, method: str, path: str) -> _Held | None:
        if method != "POST" or not path.startswith(RUNS_PREFIX) or not self._held:
            return None
        run_id = unquote(path[len(RUNS_PREFIX) :].split("/", 1)[0].split("?", 1)[0])
        with self._held_lock:
            return self._held.pop(run_id, None)

    def _settle(self, held: _Held, answered: bool) -> None:
        """After the POST that carried `held`: its receipt to `on_receipt`; sent alone when
        the service answered without recording it (an older service, a refusal before it got
        there); held again when no answer came (the agent's next POST tries again)."""
        receipt = getattr(self._answer, "receipt", None)
        if receipt is not None:
            try:
                answer = {"receipt": carried.decode(receipt)}
            except ValueError as exc:
                log.warning("silo %s: unreadable carried receipt (%s)", self.silo, exc)
                return
            self._keep({**answer, "statement": held.statement, "author_signature": held.signature})
        elif answered:
            self._send_alone(held)
        else:
            with self._held_lock:
                self._held.setdefault(held.run_id, held)

    def _send_alone(self, held: _Held) -> None:
        try:
            self._keep(self._post_statement(held))
        except ServiceRejected as exc:  # the request it rode on went its own way: say why
            log.warning(
                "silo %s: %s statement for run %s refused: %s",
                self.silo, held.kind, held.run_id, exc,
            )  # fmt: skip

    def _keep(self, answer: dict[str, Any]) -> None:
        if self.on_receipt is not None:
            self.on_receipt(answer)

    def public_key_hex(self) -> str:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def enrol(self) -> SiloOut:
        pub = self.public_key_hex()
        proof = self.key.sign(enrol_proof_message(self.federation, self.silo, pub)).hex()
        req = EnrolRequest(federation=self.federation, silo=self.silo, public_key=pub, proof=proof)
        return SiloOut.model_validate_json(self.request("POST", "/v1/enrol", json_body=req).content)

    def ready(self, report: ReadyIn) -> None:
        """Tell the service this agent warmed up (validated its data, loaded it) and whether
        its data passed: the first round waits for ready silos."""
        self.request("POST", "/v1/silo/ready", json_body=report)

    def whoami(self) -> SiloOut:
        return SiloOut.model_validate_json(self.request("GET", "/v1/silo/me").content)

    def next_task(
        self,
        wait_s: float = 25.0,
        run_id: str | None = None,
        countersigned: Sequence[tuple[int, str]] = (),
    ) -> Task | None:
        """Long-poll for a task; `countersigned` (height, signature hex) pairs of ledger
        checkpoints ride along (`schemas.ledger_checkpoint.encode_countersigned`). The task
        brings its model when it needs one and the model is small (`schemas.tasks`,
        INLINE_MODEL_TASKS); `download_model` then hands it over without a request."""
        followed, self._next = self._next, None
        if followed is not None and not countersigned and run_id in (None, followed.run_id):
            return followed  # the answer to this silo's last message brought it
        path = f"/v1/silo/tasks?wait={wait_s:g}&{INLINE_MODEL_PARAM}=true&{INLINE_INBOX_PARAM}=true"
        path += f"&{urlencode({'run_id': run_id})}" if run_id else ""
        carried = self._countersigned[: MAX_COUNTERSIGNED_PER_POLL - len(countersigned)]
        if countersigned or carried:
            both = [*carried, *countersigned]
            path += f"&{COUNTERSIGNED_PARAM}={encode_countersigned(both)}"
        resp = self.request("GET", path, timeout=wait_s + 30)
        del self._countersigned[: len(carried)]  # the service has them (a refused one it logged)
        if resp.status_code == 204:
            return None
        return self._received(TASK_ADAPTER.validate_json(resp.content))

    def _received(self, task: Task) -> Task:
        """`task` without what it brought inline (its model, its stage's messages), which
        `download_model` and `secagg_get` then hand over once."""
        if task.model_b64 is not None:
            try:
                model = base64.b64decode(task.model_b64, validate=True)
            except binascii.Error:
                model = None  # not usable: `download_model` fetches it instead
            self._inline = {} if model is None else {(task.run_id, task.model_version): model}
            task = task.model_copy(update={"model_b64": None})  # not kept twice, nor logged
        if task.inbox_b64 is not None:
            try:
                frames: list[bytes] | None = unpack_frames(
                    base64.b64decode(task.inbox_b64, validate=True)
                )
            except (binascii.Error, FrameError):
                frames = None  # not usable: `secagg_get` fetches them instead
            what = INLINE_INBOX.get(task.type, "")
            key = (task.run_id, task.round, what)
            self._inbox = {} if frames is None else {key: frames}
            task = task.model_copy(update={"inbox_b64": None})
        return task

    def followed(self, run_id: str) -> bool:
        """Whether the answer to this silo's last message brought its next task in `run_id`."""
        return self._next is not None and self._next.run_id == run_id

    def carry_countersigned(self, pairs: Sequence[tuple[int, str]]) -> None:
        """Countersignatures (height, signature hex) for the service, sent with this silo's
        next answer that asks for its next task, or its next poll, whichever comes first."""
        self._countersigned += pairs

    def take_countersigned(self) -> list[tuple[int, str]]:
        """The carried countersignatures no request took (the flow is ending)."""
        taken, self._countersigned = self._countersigned, []
        return taken

    def _follow_query(self) -> str:
        """The query that asks an answer for the silo's next task (or nothing), with
        the countersignatures waiting for a request (the answer's first look keeps them)."""
        if self.follow_wait_s <= 0:
            return ""
        query = (
            f"{NEXT_WAIT_PARAM}={self.follow_wait_s:g}&{INLINE_MODEL_PARAM}=true"
            f"&{INLINE_INBOX_PARAM}=true"
        )
        if carried := self._countersigned[:MAX_COUNTERSIGNED_PER_POLL]:
            query += f"&{COUNTERSIGNED_PARAM}={encode_countersigned(carried)}"
        return query

    def _followed(self, answer: dict[str, Any]) -> dict[str, Any]:
        """`answer` without the next task it brought, which `next_task` hands over. A task that
        does not parse is dropped: the next poll asks for it again."""
        if self.follow_wait_s > 0:  # the answer's query carried these (`_follow_query`)
            del self._countersigned[:MAX_COUNTERSIGNED_PER_POLL]
        raw = answer.pop(NEXT_TASK_FIELD, None)
        self._next = None
        if raw is not None:
            try:
                self._next = self._received(TASK_ADAPTER.validate_python(raw))
            except ValueError as exc:
                log.warning(
                    "silo %s: the next task an answer brought is unusable: %s", self.silo, exc
                )
        return answer

    def download_model(self, run_id: str, version: int) -> bytes:
        """Model `version` of the run (safetensors): the one the last task brought, once, or
        fetched."""
        inline = self._inline.pop((run_id, version), None)
        if inline is not None:
            return inline
        return self.request("GET", f"/v1/silo/runs/{seg(run_id)}/models/{version}").content

    def download_control(self, run_id: str, version: int) -> bytes:
        """SCAFFOLD's global control variate for model `version` (scaffold runs only)."""
        return self.request("GET", f"/v1/silo/runs/{seg(run_id)}/models/{version}/control").content

    def _signed(
        self, run_id: str, kind: str, payload: dict[str, Any]
    ) -> tuple[dict[str, Any], str]:
        """The silo's statement for the ledger and its Ed25519 signature over it."""
        statement = make_statement(
            run_id=run_id, kind=kind, payload=payload, author=f"silo:{self.silo}"
        )
        return statement.model_dump(), sign_statement(self.key, statement)

    def _post_with_statement(
        self,
        path: str,
        body: bytes,
        run_id: str,
        round_: int,
        n_examples: int,
        digest: str | None = None,
        base_round: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """POST an update whose `update_accepted` statement travels in a signed header.

        `digest` is what the statement names (default: the body's sha256); `base_round` the
        round an asynchronous buffer's update was trained for (`update_statement_payload`).
        """
        payload = signing.update_statement_payload(
            self.silo, round_, digest or tensors.digest(body), n_examples, base_round
        )
        statement, signature = self._signed(run_id, "update_accepted", payload)
        headers = {signing.STATEMENT_HEADER: signature}
        result = self.request(
            "POST", path, body=body, extra_headers=headers, timeout=timeout
        ).json()
        return {**result, "statement": statement, "author_signature": signature}

    def submit_update(self, run_id: str, round_: int, payload: bytes) -> dict[str, Any]:
        """Submit an update with the silo's signed ledger statement about it (with
        `follow_wait_s`, the answer brings the silo's next task, for `next_task`).

        Returns the service's answer: ``digest``, ``duplicate`` and, for a newly accepted
        update, ``receipt`` and the ``statement`` and ``author_signature`` it acknowledges.
        """
        try:
            n_examples = int(tensors.read_metadata(payload).get("n_examples", "0"))
        except (TensorFormatError, ValueError):
            n_examples = 0  # the service will refuse the payload and say why
        path = f"/v1/silo/runs/{seg(run_id)}/rounds/{round_}/update"
        if follow := self._follow_query():
            path += "?" + follow
        return self._followed(
            self._post_with_statement(
                path, payload, run_id, round_, n_examples, timeout=self._follow_timeout()
            )
        )

    def tree_base(self, run_id: str, round_: int) -> bytes | None:
        """The native model this silo's trees grow from this round (None: from scratch)."""
        path = f"/v1/silo/runs/{seg(run_id)}/rounds/{round_}/tree-base"
        content = self.request("GET", path).content
        return content or None

    def submit_trees(
        self, run_id: str, round_: int, sealed: bytes, envelope_sha256: str, n_examples: int
    ) -> dict[str, Any]:
        """Send a sealed tree update; the signed statement names the envelope's sha256 (the
        service can only check it after opening the seal)."""
        path = f"/v1/silo/runs/{seg(run_id)}/rounds/{round_}/trees"
        return self._post_with_statement(
            path, sealed, run_id, round_, n_examples, digest=envelope_sha256
        )

    def secagg_post(
        self, run_id: str, round_: int, stage: str, message: bytes, n_examples: int | None = None
    ) -> dict[str, Any]:
        """Send one secure-aggregation protocol message (advertise, share or unmask)."""
        params = [f"n_examples={n_examples}"] if n_examples is not None else []
        params += [q for q in (self._follow_query(),) if q]
        query = "?" + "&".join(params) if params else ""
        path = f"/v1/silo/runs/{seg(run_id)}/rounds/{round_}/secagg/{stage}{query}"
        resp = self.request("POST", path, body=message, timeout=self._follow_timeout())
        return self._followed(dict(resp.json()))

    def _follow_timeout(self) -> float | None:
        return self.follow_wait_s + 30 if self.follow_wait_s > 0 else None

    def announce_ready(self, run_id: str, round_: int, n_examples: int) -> dict[str, Any]:
        """Asynchronous secure runs: say that this silo trained for round `round_` and waits
        for a buffer's cohort. Returns ``buffer``, ``duplicate`` and ``cohort``."""
        return self.secagg_post(run_id, round_, "ready", b"", n_examples=n_examples)

    def secagg_get(self, run_id: str, round_: int, what: str) -> list[bytes]:
        """Fetch the adverts, this silo's shares or its unmask request (one frame) as the
        binary protocol messages they are."""
        inline = self._inbox.pop((run_id, round_, what), None)
        if inline is not None:  # the stage's task brought them (`next_task`)
            return inline
        path = f"/v1/silo/runs/{seg(run_id)}/rounds/{round_}/secagg/{what}"
        return unpack_frames(self.request("GET", path).content)

    def hist_inbox(self, run_id: str, counter: int) -> list[bytes]:
        """A secure-hist step's protocol messages for aggregation `counter`: the aggregation
        (or unmask) request first, then, at the setup aggregation, every silo's advert."""
        path = f"/v1/silo/runs/{seg(run_id)}/hist/inbox?counter={counter}"
        return unpack_frames(self.request("GET", path).content)

    def hist_cuts(self, run_id: str) -> dict[str, Any]:
        """The run's cut points and base score (JSON), once the setup aggregation is done."""
        return dict(self.request("GET", f"/v1/silo/runs/{seg(run_id)}/hist/cuts").json())

    def hist_post(self, run_id: str, stage: str, message: bytes, **query: object) -> None:
        """Send one secure-hist protocol message; `query` says which level it answers."""
        params = {k: v for k, v in query.items() if v is not None}
        path = f"/v1/silo/runs/{seg(run_id)}/hist/{seg(stage)}"
        path += "?" + urlencode(params) if params else ""
        self.request("POST", path, body=message)

    def submit_extension(self, run_id: str, round_: int, body: bytes) -> dict[str, Any]:
        """Send a plugin round mode's answer (its own binary format) for round `round_`."""
        path = f"/v1/silo/runs/{seg(run_id)}/rounds/{round_}/extension"
        resp = self.request("POST", path, body=body)
        return dict(resp.json()) if resp.content else {}

    def submit_masked(
        self,
        run_id: str,
        round_: int,
        message: bytes,
        n_examples: int,
        train_seconds: float,
        metrics_json: str | None,
        base_round: int | None = None,
    ) -> dict[str, Any]:
        """Send the masked update with its signed ledger statement; returns digest and receipt.
        An asynchronous buffer's update names the round it was trained for (`base_round`)."""
        params: dict[str, Any] = {"n_examples": n_examples, "train_seconds": f"{train_seconds:.6f}"}
        if metrics_json is not None:
            params["metrics"] = metrics_json
        path = f"/v1/silo/runs/{seg(run_id)}/rounds/{round_}/secagg/masked/update"
        path += f"?{urlencode(params)}"
        if follow := self._follow_query():
            path += "&" + follow
        return self._followed(
            self._post_with_statement(
                path, message, run_id, round_, n_examples, base_round=base_round,
                timeout=self._follow_timeout(),
            )
        )  # fmt: skip

    def submit_statement(self, run_id: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Sign and send a lineage statement; returns it with the service's receipt."""
        statement, signature = self._signed(run_id, kind, payload)
        return self._post_statement(_Held(run_id, kind, payload, statement, signature))

    def _post_statement(self, held: _Held) -> dict[str, Any]:
        body = json.dumps(
            {"kind": held.kind, "payload": held.payload, "signature": held.signature}
        ).encode()
        path = f"{RUNS_PREFIX}{seg(held.run_id)}/statements"
        result = self.request("POST", path, body=body, content_type="application/json").json()
        return {**result, "statement": held.statement, "author_signature": held.signature}

    def own_records(
        self,
        *,
        after: int = 0,
        limit: int | None = None,
        run_id: str | None = None,
        kind: str | None = None,
    ) -> SiloRecordPage:
        """One page of the ledger entries this silo authored past seq `after` (statement,
        signature, the service's receipt), optionally of one run and kind. `NotFound` from a
        service older than the route."""
        query = {"after": after, "limit": limit, "run_id": run_id, "kind": kind}
        params = urlencode({k: v for k, v in query.items() if v is not None})
        resp = self.request("GET", f"/v1/silo/ledger/records?{params}")
        return SiloRecordPage.model_validate_json(resp.content)

    def submit_evaluation(self, run_id: str, round_: int, report: MetricsReport) -> None:
        path = f"/v1/silo/runs/{seg(run_id)}/rounds/{round_}/evaluation"
        self.request("POST", path, json_body=report)

    def sit_out(self, run_id: str, round_: int, reason: str) -> None:
        """Sit one round out (the silo's data failed validation)."""
        self.request(
            "POST",
            f"/v1/silo/runs/{seg(run_id)}/rounds/{round_}/sit-out",
            json_body=Refusal(reason=reason[:2000]),
        )

    def refuse(self, run_id: str, reason: str) -> None:
        path = f"/v1/silo/runs/{seg(run_id)}/refusal"
        self.request("POST", path, json_body=Refusal(reason=reason))
