"""ECDH-PSI over Curve25519 (X25519): correct intersections, sizes only in size mode, no id in
the clear on the wire, ids hashed to the curve (never its twist), foreign points (small order,
on the twist, not canonical) refused naming the party."""

from __future__ import annotations

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silos.vertical.channel import ChannelError, channels
from silos.vertical.psi import (
    PsiError,
    PsiParty,
    hash_to_group,
    in_group,
    intersection_digest,
    run_psi,
)
from silos.vertical.wire import LocalWire

RUN = "psi-test"
SALT = b"federation-salt"
ids = st.sets(st.text(min_size=1, max_size=12), max_size=25)


def _run(sets: dict[str, list[str]], mode: str = "intersection", keep: bool = False):
    wire = LocalWire(channels(RUN, list(sets)), keep_frames=keep)
    parties = [PsiParty(n, s, RUN, SALT, mode=mode, workers=1) for n, s in sets.items()]  # type: ignore[arg-type]
    return run_psi(parties, wire.deliver), wire


@settings(max_examples=12, deadline=None)
@given(a=ids, b=ids)
def test_two_parties_learn_exactly_the_intersection(a: set[str], b: set[str]) -> None:
    results, _ = _run({"bank": sorted(a), "bureau": sorted(b)})
    expected = sorted(a & b)
    for r in results.values():
        assert r.ids == expected and r.size == len(expected)
        assert r.digest == intersection_digest(expected, SALT)


@settings(max_examples=5, deadline=None)
@given(a=ids, b=ids, c=ids)
def test_three_parties_learn_the_common_ids(a: set[str], b: set[str], c: set[str]) -> None:
    results, _ = _run({"bank": sorted(a), "bureau": sorted(b), "insurer": sorted(c)})
    assert all(r.ids == sorted(a & b & c) for r in results.values())


@settings(max_examples=6, deadline=None)
@given(a=ids, b=ids)
def test_size_mode_reveals_only_the_size(a: set[str], b: set[str]) -> None:
    results, _ = _run({"bank": sorted(a), "bureau": sorted(b)}, mode="size")
    for r in results.values():
        assert r.size == len(a & b) and r.ids is None and r.digest is None


def test_no_id_or_unblinded_hash_travels() -> None:
    a = [f"customer-{i}" for i in range(40)]
    b = [f"customer-{i}" for i in range(20, 70)]
    results, wire = _run({"bank": a, "bureau": b}, keep=True)
    assert results["bank"].size == 20
    frames = [f for fs in wire.frames.values() for f in fs]
    hashed = {hash_to_group(i, SALT) for i in a + b}
    for msg in (m for ms in wire.opened.values() for m in ms):
        text = msg.model_dump_json()
        assert "customer-" not in text
        points = {msg.points[k : k + 32] for k in range(0, len(msg.points), 32)}
        assert not points & hashed
    assert frames and not any(b"customer-" in f for f in frames)


def _twist_point() -> bytes:
    """The smallest u whose point lies on Curve25519's twist, not the curve."""
    p, a = 2**255 - 19, 486662
    u = next(u for u in range(2, 100) if gmpy2.legendre((u**3 + a * u * u + u) % p, p) == -1)
    return u.to_bytes(32, "little")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(bytes(32), id="small-order (u=0)"),
        pytest.param(_twist_point(), id="on the twist"),
        pytest.param((2**255 - 19 + 2).to_bytes(32, "little"), id="not canonical (u >= p)"),
    ],
)
def test_a_point_outside_the_group_is_refused_naming_the_party(bad: bytes) -> None:
    bank = PsiParty("bank", ["x", "y"], RUN, SALT, workers=1)
    bureau = PsiParty("bureau", ["y"], RUN, SALT, workers=1)
    msg = bureau.blinded()
    points = msg.points[:32] + bad  # the second point is the bad one
    with pytest.raises(PsiError, match="party 'bureau'.*point 1 is not in the group"):
        bank.exponentiate(msg.model_copy(update={"points": points, "count": 2}), last=True)


def test_every_hashed_and_blinded_point_is_of_the_curve() -> None:
    assert all(in_group(hash_to_group(f"id-{k}", SALT)) for k in range(200))
    blinded = PsiParty("bank", [f"id-{k}" for k in range(50)], RUN, SALT, workers=1).blinded()
    assert all(in_group(blinded.points[k : k + 32]) for k in range(0, 50 * 32, 32))


def test_a_tampered_psi_frame_is_refused_naming_the_sender() -> None:
    wire = LocalWire(channels(RUN, ["bank", "bureau"]))
    wire.tamper["bureau"] = lambda data: data[:-1] + bytes([data[-1] ^ 1])
    parties = [
        PsiParty("bank", ["a"], RUN, SALT, workers=1),
        PsiParty("bureau", ["a"], RUN, SALT, workers=1),
    ]
    with pytest.raises(ChannelError, match="from party 'bank'.*authentication failed"):
        run_psi(parties, wire.deliver)


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(PsiError, match="'bank'.*duplicates"):
        PsiParty("bank", ["a", "a"], RUN, SALT)
