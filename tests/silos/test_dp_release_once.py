"""The privacy budget counts each noised update that can leave the silo exactly once.

A restarted agent in a secure round's masked stage sends the message it saved before the
restart, without training or noising anew, and the budget and the ledger's ``privacy_spent``
count that round once; a round reopened after its state was erased is a second release and
counts again. The budget file and the saved masked message are written durably.

Two silos run the secure-aggregation stages (`silos.secure_round`) through `Relay`, a fake
service at the client's edge that passes the protocol messages between them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

import silos.files
import silos.handlers.secagg as handler
import silos.handlers.training as training
from schemas import tensors
from schemas.secagg.messages import EncryptedShare, ShareKeys
from schemas.specs import ModelSpec, PrivacySpec, RunSpec, param_shapes
from schemas.tasks import SecAggAdvertiseTask, SecAggInfo, SecAggMaskedTask, SecAggShareTask
from silos import privacy, secure_round
from silos.client_errors import AlreadyAnswered, NotFound
from silos.config import SiloConfig, load_silo_config
from silos.decline import Declined
from silos.handlers.context import SiloContext
from silos.keys import load_or_create_key
from silos.local_data import LocalData

DP = PrivacySpec(noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)
MODEL = ModelSpec(kind="logreg", n_features=3)
SPEC = RunSpec(federation="f", dataset="heart_disease", model=MODEL, privacy=DP)
DIM = sum(int(np.prod(s)) for _, s in param_shapes(MODEL))
RUN = "run1"


class Killed(BaseException):
    """The agent's process dies here (SIGKILL): nothing after it runs."""


class Relay:
    """The service's mailbox for two silos: what each posted, per stage."""

    def __init__(self) -> None:
        self.posts: dict[str, dict[str, bytes]] = {}

    def get(self, silo: str, what: str) -> list[bytes]:
        if what == "adverts":
            return list(self.posts["advertise"].values())
        assert what == "shares"
        shares = [ShareKeys.from_bytes(m) for m in self.posts["share"].values()]
        return [
            EncryptedShare(RUN, m.round_num, m.silo, silo, m.ciphertexts[silo]).to_bytes()
            for m in shares
            if m.silo != silo
        ]


class Client:
    """Silo `silo`'s client: protocol messages go to the relay; its masked submissions and
    statements are kept; `on_submit` decides each submission's fate."""

    def __init__(self, silo: str, key: Ed25519PrivateKey, relay: Relay) -> None:
        self.silo, self.key, self.relay = silo, key, relay
        self.submitted: list[bytes] = []
        self.statements: list[tuple[str, dict[str, Any]]] = []
        self.on_submit: list[str] = []  # "kill", "kill-after", "already", default "accept"

    def secagg_post(self, run_id: str, round_: int, stage: str, raw: bytes, **_: Any) -> None:
        self.relay.posts.setdefault(stage, {})[self.silo] = raw

    def secagg_get(self, run_id: str, round_: int, what: str) -> list[bytes]:
        return self.relay.get(self.silo, what)

    def download_model(self, run_id: str, version: int) -> bytes:
        return tensors.encode({n: np.zeros(s, np.float32) for n, s in param_shapes(MODEL)})

    def submit_masked(self, run_id: str, round_: int, message: bytes, *_: Any) -> dict[str, Any]:
        fate = self.on_submit.pop(0) if self.on_submit else "accept"
        if fate == "kill":
            raise Killed
        if fate == "already":
            raise AlreadyAnswered(409, "answered before", "POST", "/masked")
        self.submitted.append(message)
        if fate == "kill-after":  # the service took it; the agent died before the answer
            raise Killed
        return {"digest": f"d{len(self.submitted)}", "duplicate": False, "receipt": None}

    def own_records(self, **_: Any) -> Any:
        """A service older than the route (`silos.ledger_sync` then keeps the old ways)."""
        raise NotFound(404, "Not Found", "GET", "/v1/silo/ledger/records")

    def submit_statement(self, run_id: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Kept, and answered with a receipt the silo files in its copy of its lineage."""
        self.statements.append((kind, payload))
        body = json.dumps(payload, sort_keys=True)
        statement = {"run_id": run_id, "kind": kind, "payload": body, "author": self.silo}
        n = len(self.statements)
        receipt = {"seq": n, "entry_hash": f"h{n}", "prev_hash": f"h{n - 1}"}
        receipt |= {"created_at": "2026-12-07T00:00:00Z", "signature": "s"}
        return {"statement": statement, "author_signature": "s", "receipt": receipt}


def _config(folder: Path, name: str) -> SiloConfig:
    path = folder / name / "silo.toml"
    path.parent.mkdir(parents=True)
    path.write_text(
        f'[silo]\nname = "{name}"\nfederation = "f"\n[data]\npath = "d.csv"\n'
        'contract = "heart_disease"\n[service]\nurls = ["http://127.0.0.1:1"]\n'
    )
    return load_silo_config(path)


def _data(seed: int) -> LocalData:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.float32)
    return LocalData(X[:40], y[:40], X[40:], y[40:], 3, {}, "")


def _hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


class Federation:
    """Silos a and b of a DP secure run; `ready(round)` runs both through the share stage."""

    def __init__(self, folder: Path) -> None:
        self.relay = Relay()
        self.ctx: dict[str, SiloContext] = {}
        for i, name in enumerate(("a", "b")):
            config = _config(folder, name)
            client = Client(name, load_or_create_key(config.key_path), self.relay)
            self.ctx[name] = SiloContext(client, config, _data(i))  # type: ignore[arg-type]
        self.keys = {n: _hex(c.key) for n, c in self.ctx.items()}

    def task(self, kind: type, stage: str, round_: int) -> Any:
        info = SecAggInfo(
            stage=stage,  # type: ignore[arg-type]
            roster=["a", "b"],
            roster_keys=self.keys,
            threshold=2,
            dim=DIM,
            bits=32,
            clip=DP.quantizer_clip(2),  # the service's range under DP
            weight=0.5,
        )
        return kind(run_id=RUN, round=round_, spec=SPEC, secagg=info)

    def ready(self, round_: int) -> SecAggMaskedTask:
        self.relay.posts.clear()
        for ctx in self.ctx.values():
            task = self.task(SecAggAdvertiseTask, "advertise", round_)
            secure_round.advertise(ctx.client, ctx.key, task, ctx.workspace, n_examples=40)
        for ctx in self.ctx.values():
            task = self.task(SecAggShareTask, "share", round_)
            secure_round.share(ctx.client, ctx.key, task, ctx.workspace)
        return self.task(SecAggMaskedTask, "masked", round_)  # type: ignore[no-any-return]


@pytest.fixture
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Federation:
    log = logging.getLogger("test.silo")
    monkeypatch.setattr(training, "get_run_logger", lambda: log)
    monkeypatch.setattr(handler, "get_run_logger", lambda: log)
    return Federation(tmp_path)


def _count_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = training.train_delta

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_delta", counted)
    return calls


def _rounds(ctx: SiloContext) -> int:
    return int(privacy.spent_rounds(ctx.config)[RUN]["rounds"])


def _epsilons(client: Client) -> list[float]:
    return [p["epsilon"] for kind, p in client.statements if kind == "privacy_spent"]


@pytest.mark.parametrize("fate", ["kill", "kill-after"])
def test_a_restart_in_the_masked_stage_counts_the_round_once(
    fed: Federation, monkeypatch: pytest.MonkeyPatch, fate: str
) -> None:
    """Killed before the service took the update (`kill`) or after it took it and before its
    answer came (`kill-after`): the restarted agent sends the saved message again, without
    training or noising anew; the budget says one round, the ledger one entry (after
    `kill-after` the resend's answer says "duplicate", and the silo's copy of its lineage
    shows the statement was never sent)."""
    trainings = _count_training(monkeypatch)
    work = fed.ready(1)
    a = fed.ctx["a"]
    client: Client = a.client  # type: ignore[assignment]
    client.on_submit = [fate] + (["already"] if fate == "kill-after" else [])
    with pytest.raises(Killed):
        handler.masked_train(a, work)
    saved = secure_round.saved_masked(a.workspace, work)
    assert saved is not None and _rounds(a) == 1

    handler.masked_train(a, work)  # the restarted agent gets the round's masked task again

    assert client.submitted == [saved]  # the one message, whichever attempt delivered it
    assert trainings == [1] and _rounds(a) == 1
    one_round = privacy.epsilon({1.0: 1}, DP.delta)
    assert _epsilons(client) == [pytest.approx(one_round)]


def test_a_resend_after_the_statement_went_sends_no_second_one(fed: Federation) -> None:
    """The agent died after its privacy_spent statement was receipted but before the round's
    task was done: the restart's resend is answered "duplicate", and the silo's copy of its
    lineage already holds the statement, so the ledger gets no second one."""
    work = fed.ready(1)
    a = fed.ctx["a"]
    client: Client = a.client  # type: ignore[assignment]
    handler.masked_train(a, work)
    client.on_submit = ["already"]
    handler.masked_train(a, work)  # the restarted agent gets the round's masked task again
    assert len(_epsilons(client)) == 1 and len(client.submitted) == 1


def test_the_following_rounds_report_epsilon_of_their_own_round_count(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's run: a restart in round 1, then rounds 2 and 3 as usual."""
    a = fed.ctx["a"]
    client: Client = a.client  # type: ignore[assignment]
    client.on_submit = ["kill"]
    for round_ in (1, 2, 3):
        work = fed.ready(round_)
        if round_ == 1:
            with pytest.raises(Killed):
                handler.masked_train(a, work)
        handler.masked_train(a, work)
    want = [privacy.epsilon({1.0: r}, DP.delta) for r in (1, 2, 3)]
    assert _epsilons(client) == pytest.approx(want)  # 4.73, 7.08, 9.01; not 7.08, 9.01, 10.73
    assert _rounds(a) == 3


def test_a_round_reopened_after_its_state_went_is_a_second_release(fed: Federation) -> None:
    """A restored hub opens round 1 again; the silo's round state was erased, so it masks a
    new noised update: that one may leave the silo too and must count (never under-count)."""
    a = fed.ctx["a"]
    handler.masked_train(a, fed.ready(1))
    for ctx in fed.ctx.values():  # each silo's round 1 is over: its state goes
        secure_round.erase_round_state(ctx.workspace, RUN, 1)
    handler.masked_train(a, fed.ready(1))
    client: Client = a.client  # type: ignore[assignment]
    assert len(client.submitted) == 2 and client.submitted[0] != client.submitted[1]
    assert _rounds(a) == 2


def test_without_its_bookkeeping_the_saved_message_is_still_the_one_sent(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note beside the saved message is lost: the round trains again for its row count
    and metrics, but sends the saved message and counts it once."""
    trainings = _count_training(monkeypatch)
    work = fed.ready(1)
    a = fed.ctx["a"]
    client: Client = a.client  # type: ignore[assignment]
    client.on_submit = ["kill"]
    with pytest.raises(Killed):
        handler.masked_train(a, work)
    secure_round.round_file(a.workspace, work, handler.BOOKKEEPING).unlink()
    handler.masked_train(a, work)
    assert client.submitted == [secure_round.saved_masked(a.workspace, work)]
    assert trainings == [1, 1] and _rounds(a) == 1


def _fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths `silos.files` fsyncs from now on."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(silos.files.os, "fsync", fsync)
    return seen


def test_the_budget_and_the_saved_masked_message_are_written_durably(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = fed.ready(1)
    seen = _fsynced(monkeypatch)
    a = fed.ctx["a"]
    handler.masked_train(a, work)
    budget = a.workspace / "privacy" / "spent.json"
    saved = secure_round.round_file(a.workspace, work, ".masked.msg")
    assert f"{budget}.tmp" in seen and str(budget.parent) in seen
    assert f"{saved}.tmp" in seen and str(saved.parent) in seen


RELEASES = st.lists(st.tuples(st.integers(1, 4), st.sampled_from([b"x", b"y", b"z"])), max_size=8)


@settings(max_examples=25, deadline=None)
@given(releases=RELEASES)
def test_recording_counts_each_distinct_release_once(releases: list[tuple[int, bytes]]) -> None:
    """However often a release is recorded again (resends, restarts), the budget holds one
    round per distinct message, and epsilon is that count's."""
    with tempfile.TemporaryDirectory() as folder:
        config = _config(Path(folder), "a")
        new = [privacy.record_round(config, RUN, DP, privacy.release_id(r, m)) for r, m in releases]
        distinct = {privacy.release_id(r, m) for r, m in releases}
        assert sum(new) == len(distinct)
        spent = privacy.spent_rounds(config).get(RUN, {"rounds": 0})
        assert spent["rounds"] == len(distinct)
        assert privacy.epsilon_if(config, RUN, DP, 0) == privacy.epsilon(
            {1.0: len(distinct)}, DP.delta
        )


def test_the_statement_tells_this_runs_epsilon_from_the_silos_total(fed: Federation) -> None:
    """A silo that spent budget in an earlier run signs both figures: its total over all its
    runs (what its policy caps) and this run's alone (what the run's report is about)."""
    a = fed.ctx["a"]
    client: Client = a.client  # type: ignore[assignment]
    privacy.record_round(a.config, "earlier-run", DP, "1:x")
    privacy.record_round(a.config, "earlier-run", DP, "2:y")
    handler.masked_train(a, fed.ready(1))
    (statement,) = [p for kind, p in client.statements if kind == "privacy_spent"]
    assert statement["epsilon"] == pytest.approx(privacy.epsilon({1.0: 3}, DP.delta))
    assert statement["run_epsilon"] == pytest.approx(privacy.epsilon({1.0: 1}, DP.delta))


def test_a_weight_that_would_isolate_one_silo_is_refused_before_anything_is_noised(
    fed: Federation,
) -> None:
    """A service that sends silo a weight 1e-12 (and its target 1) would unmask the target's
    update nearly alone. Under DP with the complete graph a silo checks 1/m for the m adverts
    it verified: a leaves the run, nothing is masked, sent or counted."""
    work = fed.ready(1)
    a = fed.ctx["a"]
    client: Client = a.client  # type: ignore[assignment]
    forged = work.model_copy(update={"secagg": work.secagg.model_copy(update={"weight": 1e-12})})
    with pytest.raises(Declined) as refused:
        handler.masked_train(a, forged)
    assert refused.value.scope == "run" and refused.value.cause == "policy"
    assert "1/m for the m = 2 silos" in refused.value.reason and "1e-12" in refused.value.reason
    assert client.submitted == [] and RUN not in privacy.spent_rounds(a.config)
    assert secure_round.saved_masked(a.workspace, work) is None
    handler.masked_train(a, work)  # the weight the two adverts give, 1/2, is applied
    assert len(client.submitted) == 1


def test_weights_outside_what_a_silo_can_check_are_refused(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    roster = ["a", "b", "c", "d", "e"]

    def task(weight: float, *, dp: bool, degree: int | None = None) -> SecAggMaskedTask:
        info = SecAggInfo(
            stage="masked", roster=roster, roster_keys={}, threshold=3, dim=DIM, bits=32,
            clip=DP.quantizer_clip(3), weight=weight, degree=degree,
        )  # fmt: skip
        spec = SPEC if dp else SPEC.model_copy(update={"privacy": None})
        return SecAggMaskedTask(run_id=RUN, round=4, spec=spec, secagg=info)

    refusal = secure_round.weight_refusal(key, task(1.5, dp=False), tmp_path)
    assert refusal is not None and "round 4" in refusal and "outside (0, 1]" in refusal
    # SecAgg+ without DP: only neighbours' counts were seen, so only (0, 1] is checked
    assert secure_round.weight_refusal(key, task(1e-12, dp=False, degree=2), tmp_path) is None
    # SecAgg+ under DP: only neighbours' adverts were seen, so 1/n <= w <= 1/2 is checked
    assert secure_round.weight_refusal(key, task(0.25, dp=True, degree=2), tmp_path) is None
    low = secure_round.weight_refusal(key, task(0.1, dp=True, degree=2), tmp_path)
    assert low is not None and "between 1/5 and 1/2" in low


def test_a_run_whose_noise_multiplier_changes_is_refused(fed: Federation) -> None:
    """The budget counts a run's rounds at its first round's noise multiplier: a later task
    with a smaller one (10 rounds at 0.3 after one at 1.0 would spend epsilon ~100, counted
    as ~20) is refused and the run left."""
    work = fed.ready(1)
    a = fed.ctx["a"]
    handler.masked_train(a, work)
    weaker = SPEC.model_copy(update={"privacy": DP.model_copy(update={"noise_multiplier": 0.3})})
    second = fed.ready(2).model_copy(update={"spec": weaker})
    outcome = handler.masked_train(a, second)
    assert isinstance(outcome, Declined) and outcome.scope == "run"
    assert "noise multiplier 1" in outcome.reason and "asks for 0.3" in outcome.reason
    assert _rounds(a) == 1


def test_without_dp_a_weight_is_checked_against_the_adverts_signed_row_counts(
    fed: Federation,
) -> None:
    """Both silos advertised 40 rows, each count signed with the silo's key: n_k / N = 1/2,
    checked by each silo itself, so a service cannot weight one silo's update near-alone."""
    work = fed.ready(1)
    a = fed.ctx["a"]
    plain = work.model_copy(update={"spec": SPEC.model_copy(update={"privacy": None})})

    def weighted(w: float) -> SecAggMaskedTask:
        return plain.model_copy(update={"secagg": plain.secagg.model_copy(update={"weight": w})})

    assert secure_round.weight_refusal(a.key, weighted(0.5), a.workspace) is None
    refusal = secure_round.weight_refusal(a.key, weighted(1e-12), a.workspace)
    assert refusal is not None and "n_k / N = 40 / 80" in refusal and "1e-12" in refusal
