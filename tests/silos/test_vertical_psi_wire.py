"""PSI as the parties run it over the relay (`agent_role.psi_over_wire`): honest runs of two
and three parties agree with `psi.run_psi`; a peer that sends a list out of turn (again, from
the wrong hop, with an owner that is not a party, a final list of another party) is refused
naming it, so no party answers as an exponentiation oracle; what three parties learn of each
other is exactly what the docs say; an empty intersection stops training and prediction
with the reason."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from schemas.vertical import PsiPoints
from silos.vertical import agent_role, predict_role
from silos.vertical.agent_role import PartyData, RoleError, psi_over_wire
from silos.vertical.channel import channels
from silos.vertical.psi import (
    PsiError,
    PsiParty,
    PsiResult,
    hash_to_group,
    intersection_digest,
    multiply,
    run_psi,
)
from silos.vertical.wire import LocalWire

RUN = "psi-wire"
SALT = hashlib.sha256(b"fedsilo psi salt|" + RUN.encode()).digest()  # psi_over_wire's


@pytest.fixture(autouse=True)
def _one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """No process pool forked from the test threads: one worker per party."""
    monkeypatch.setattr(agent_role, "PsiParty", partial(PsiParty, workers=1))


@dataclass
class ScriptWire:
    """One party's wire: `inbox` is what its peers sent it (sender fields as the channel
    authenticated them); `reply(to, msg)` may append answers to what it sends."""

    party: str
    inbox: list[PsiPoints] = field(default_factory=list)
    reply: Callable[[str, PsiPoints], list[PsiPoints]] = lambda to, msg: []
    run: str = RUN
    sent: list[tuple[str, PsiPoints]] = field(default_factory=list)

    @property
    def channel(self) -> SimpleNamespace:
        return SimpleNamespace(party=self.party)

    def send(self, to: str, msg: PsiPoints) -> None:
        self.sent.append((to, msg))
        self.inbox += self.reply(to, msg)

    def receive(self, sender: str | None = None) -> PsiPoints:
        if not self.inbox:
            raise AssertionError(f"{self.party} waits for a message that never comes")
        return self.inbox.pop(0)


def _psi(wire: object, parties: list[str], ids: list[str], mode: str = "intersection") -> PsiResult:
    return psi_over_wire(wire, parties, ids, mode)  # type: ignore[arg-type]  # a fake wire


def _list(owner: str, ids: list[str]) -> PsiPoints:
    """`owner`'s blinded list of `ids`, as it would send it first."""
    return PsiParty(owner, ids, RUN, SALT, workers=1).blinded()


def _pts(owner: str, stage: str, sender: str | None = None) -> PsiPoints:
    return PsiPoints(run=RUN, sender=sender or owner, owner=owner, stage=stage, count=0, points=b"")  # type: ignore[arg-type]


# --- honest runs --------------------------------------------------------------------------


@dataclass
class QueueWire:
    party: str
    boxes: dict[str, queue.Queue]
    run: str = RUN

    @property
    def channel(self) -> SimpleNamespace:
        return SimpleNamespace(party=self.party)

    def send(self, to: str, msg: PsiPoints) -> None:
        self.boxes[to].put(msg)

    def receive(self, sender: str | None = None) -> PsiPoints:
        return self.boxes[self.party].get(timeout=30)


def _over_wire(sets: dict[str, list[str]], mode: str = "intersection") -> dict[str, object]:
    names = list(sets)
    boxes: dict[str, queue.Queue] = {n: queue.Queue() for n in names}
    out: dict[str, object] = {}

    def party(name: str) -> None:
        try:
            out[name] = _psi(QueueWire(name, boxes), names, sets[name], mode)
        except Exception as exc:  # the test reads it
            out[name] = exc

    threads = [threading.Thread(target=party, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.mark.parametrize("mode", ["intersection", "size"])
def test_two_honest_parties_over_the_wire(mode: str) -> None:
    a, b = [f"c{i}" for i in range(30)], [f"c{i}" for i in range(20, 45)]
    out = _over_wire({"bank": a, "bureau": b}, mode)
    common = sorted(set(a) & set(b))
    for r in out.values():
        assert isinstance(r, PsiResult) and r.size == len(common)
        assert r.ids == (common if mode == "intersection" else None)


def test_three_honest_parties_over_the_wire() -> None:
    sets = {
        "bank": [f"c{i}" for i in range(30)],
        "bureau": [f"c{i}" for i in range(10, 40)],
        "insurer": [f"c{i}" for i in range(25, 60)],
    }
    out = _over_wire(sets)
    common = sorted(set(sets["bank"]) & set(sets["bureau"]) & set(sets["insurer"]))
    assert all(isinstance(r, PsiResult) and r.ids == common for r in out.values())


# --- refusals: no exponentiation oracle, no crash -----------------------------------------


@pytest.mark.parametrize("mode", ["intersection", "size"])
@pytest.mark.parametrize("again", ["replayed", "fresh"])
def test_a_second_list_of_the_same_owner_is_refused(mode: str, again: str) -> None:
    """One id per list would tell the sender which of its ids the victim holds, even in size
    mode (the last hop's shuffle of one point hides nothing)."""
    first = _list("mallory", ["cust3"])
    second = first if again == "replayed" else _list("mallory", ["cust4"])
    wire = ScriptWire("victim", [first, second])
    with pytest.raises(PsiError, match="from party 'mallory': a second list of the same owner"):
        _psi(wire, ["mallory", "victim"], ["cust3", "cust9"], mode)
    assert [m.stage for _, m in wire.sent] == ["blinded", "exponentiated"]  # answered once


@pytest.mark.parametrize(
    "victim, msg, hop",
    [
        ("insurer", _pts("bank", "blinded"), "bureau"),  # bank's list skips bureau
        ("bureau", _pts("insurer", "blinded"), "bank"),  # insurer's list skips bank
        ("insurer", _pts("bureau", "blinded", sender="bureau"), "bank"),
    ],
)
def test_a_list_from_the_wrong_hop_is_refused(victim: str, msg: PsiPoints, hop: str) -> None:
    wire = ScriptWire(victim, [msg])
    with pytest.raises(PsiError, match=f"from party {msg.sender!r}: its hop before .* {hop!r}"):
        _psi(wire, ["bank", "bureau", "insurer"], ["c1"])
    assert len(wire.sent) == 1  # its own blinded list only


@pytest.mark.parametrize("stage", ["blinded", "final"])
def test_a_list_whose_owner_is_no_party_is_refused_not_a_crash(stage: str) -> None:
    """A final list of a non-party ended the loop early (KeyError); a blinded one had the
    victim send a list to a party that would refuse it, blaming the victim."""
    wire = ScriptWire("victim", [_pts("mallory", stage, sender="bank")])
    with pytest.raises(PsiError, match="from party 'bank': 'mallory' is not a party of run"):
        _psi(wire, ["bank", "victim"], ["c1"])
    assert len(wire.sent) == 1


def test_a_final_list_from_another_than_its_owner_is_refused() -> None:
    wire = ScriptWire("insurer", [_pts("bank", "final", sender="bureau")])
    with pytest.raises(PsiError, match="of 'bank' from party 'bureau': only its owner publishes"):
        _psi(wire, ["bank", "bureau", "insurer"], ["c1"])


def test_a_final_list_twice_or_too_early_is_refused() -> None:
    with pytest.raises(PsiError, match="from party 'bank': published before it visited"):
        _psi(ScriptWire("victim", [_pts("bank", "final")]), ["bank", "victim"], ["c1"])
    wire = ScriptWire(
        "victim", [_list("bank", ["c1"]), _pts("bank", "final"), _pts("bank", "final")]
    )
    with pytest.raises(PsiError, match="from party 'bank': a second final list"):
        _psi(wire, ["bank", "victim"], ["c1"])


def test_its_own_list_back_from_the_wrong_hop_or_twice_is_refused() -> None:
    wire = ScriptWire("bank", [_pts("bank", "exponentiated", sender="bureau")])
    with pytest.raises(PsiError, match="from party 'bureau': its last hop is 'insurer'"):
        _psi(wire, ["bank", "bureau", "insurer"], ["c1"])
    peer = PsiParty("bureau", ["c1", "c2"], RUN, SALT, workers=1)

    def twice(to: str, msg: PsiPoints) -> list[PsiPoints]:
        back = peer.exponentiate(msg, last=True) if msg.stage == "blinded" else None
        return [back, back] if back and msg.owner == "bank" else []

    wire = ScriptWire("bank", reply=twice)
    with pytest.raises(PsiError, match="from party 'bureau': its own list came back a second"):
        _psi(wire, ["bank", "bureau"], ["c1"])


# --- three parties: what is and is not revealed --------------------------------------------


def test_three_parties_reveal_the_documented_venn_regions_and_no_outside_id() -> None:
    """psi.py's docstring and docs/vertical.md: with three parties A learns, besides A&B&C,
    which of its ids B holds and which C holds, and |B&C| outside its set; it cannot test
    an id outside its own set (nothing it received is H(x) or H(x)^a for such an x)."""
    A = [f"id{i}" for i in range(0, 30)]
    B = [f"id{i}" for i in range(10, 40)]
    C = [f"id{i}" for i in range(25, 60)]
    salt = b"venn"
    ps = [PsiParty(n, s, RUN, salt, workers=1) for n, s in (("A", A), ("B", B), ("C", C))]
    wire = LocalWire(channels(RUN, ["A", "B", "C"]), keep_frames=True)
    res = run_psi(ps, wire.deliver)
    a = ps[0]
    assert res["A"].ids == sorted(set(A) & set(B) & set(C), key=str)

    def pts(m: PsiPoints) -> set[bytes]:
        return {m.points[i : i + 32] for i in range(0, len(m.points), 32)}

    got = [m for m in wire.opened["A"] if isinstance(m, PsiPoints)]
    finals = {m.owner: pts(m) for m in got if m.stage == "final"}
    mine = [a._full[i : i + 32] for i in range(0, len(a._full), 32)]
    holds = {
        o: {a.ids[a._order[k]] for k, p in enumerate(mine) if p in f} for o, f in finals.items()
    }
    assert holds == {"B": set(A) & set(B), "C": set(A) & set(C)}  # per id, per party
    assert len(finals["B"] & finals["C"]) == len(set(B) & set(C))  # a count, no id
    key = X25519PrivateKey.from_private_bytes(a._scalar)
    outside = [x for x in B + C if x not in A]
    probes = {hash_to_group(x, salt) for x in outside}
    probes |= {multiply(key, p) for p in probes}
    assert not any(pts(m) & probes for m in got)


def test_size_only_with_three_parties_is_refused_before_anything_is_sent() -> None:
    wire = ScriptWire("bank")
    with pytest.raises(PsiError, match="size-only intersection takes exactly two parties"):
        _psi(wire, ["bank", "bureau", "insurer"], ["c1"], "size")
    assert wire.sent == []
    ps = [PsiParty(n, ["c1"], RUN, SALT, "size", workers=1) for n in ("A", "B", "C")]
    with pytest.raises(PsiError, match="not 3 \\(A, B, C\\)"):
        run_psi(ps, LocalWire(channels(RUN, ["A", "B", "C"])).deliver)


# --- an empty intersection ------------------------------------------------------------------


def _no_common(monkeypatch: pytest.MonkeyPatch, module: object, silo: str) -> list[object]:
    """`module`'s PSI finds nothing in common; returns the events it reports."""
    reported: list[object] = []
    info = SimpleNamespace(active="bank", parties=["bank", "bureau"])
    empty = PsiResult(silo, 0, [], intersection_digest([], SALT))
    monkeypatch.setattr(module, "run_info", lambda client, run: info)
    monkeypatch.setattr(module, "open_channel", lambda client, run: None)
    monkeypatch.setattr(module, "HttpWire", lambda client, ch: ScriptWire(silo))
    monkeypatch.setattr(module, "psi_over_wire", lambda *a, **k: empty)
    monkeypatch.setattr(module, "report", lambda client, run, ev: reported.append(ev))
    return reported


@pytest.mark.parametrize("silo", ["bank", "bureau"])
def test_training_with_no_customer_in_common_stops_after_psi(
    monkeypatch: pytest.MonkeyPatch, silo: str
) -> None:
    reported = _no_common(monkeypatch, agent_role, silo)
    y = np.zeros(3) if silo == "bank" else None
    data = PartyData(["x", "y", "z"], np.zeros((3, 2)), ["f1", "f2"], y)
    with pytest.raises(RoleError, match=f"run {RUN}: no customer in common.*size 0.*{silo!r}"):
        agent_role.join(SimpleNamespace(silo=silo), RUN, data)  # type: ignore[arg-type]
    assert reported == []


@pytest.mark.parametrize("silo", ["bank", "bureau"])
def test_prediction_with_no_customer_in_common_stops_after_psi(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, silo: str
) -> None:
    reported = _no_common(monkeypatch, predict_role, silo)
    data = PartyData(["x", "y"], np.zeros((2, 2)), ["f1", "f2"], None)
    monkeypatch.setattr(predict_role, "load_vertical_contract", lambda name: None)
    monkeypatch.setattr(predict_role, "load_checked", lambda *a, **k: data)
    with pytest.raises(RoleError, match=f"run {RUN}: no customer in common.*size 0"):
        predict_role.predict(SimpleNamespace(silo=silo), RUN, tmp_path, "c", tmp_path)  # type: ignore[arg-type]
    assert reported == []
