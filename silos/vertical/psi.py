"""ECDH private set intersection between two or more parties of a vertical run.

Group: Curve25519 in Montgomery form, through OpenSSL's X25519 (as the `cryptography` package
binds it). A point travels as its u-coordinate (32 bytes). Why OpenSSL's and not libsodium's
(PyNaCl's `crypto_scalarmult`, the same function with the same clamping and output): on this
machine's CPU a multiplication costs 33 us against 37 us, and the multiplications are
three quarters of the protocol's CPU (`bench/vertical.py --skip credit synthetic psi` prints
both). Why not ristretto255 or edwards25519: PyNaCl binds no ristretto255
function, and libsodium's edwards25519 calls (hash to the group, scalar multiplication, the
subgroup check of every received point) cost about 4x X25519's CPU per id
(`bench/vertical.py --skip credit synthetic psi` prints both). X25519 gives the same security here:
- An id hashes to a point of the curve, never of its twist: SHA-256 of a domain tag, the run's
  salt, a counter byte and the id, taken as u (top bit cleared), until u < p and
  u^3 + A u^2 + u is a square mod p (about two tries; gmpy2's Jacobi symbol, which for a
  prime p is Legendre's). Hashing to the curve only matters: a twist point would tell every
  peer one bit of the id's hash.
- X25519 clamps every scalar to a multiple of 8 (the cofactor), so each blinding lands in the
  prime-order subgroup and a small-order input gives the all-zero output, which OpenSSL
  refuses: such a point, or a received u that is not of the curve (or not canonical), is
  refused naming the sender. Multiplication commutes, so lists blinded in any order match.

Protocol (every party P_i with secret scalar a_i and set S_i): P_i sends {H(x)^a_i} shuffled;
the list visits every other party, each raising it to its own scalar without reordering,
and comes back to P_i as {H(x)^(a_1...a_k)} in P_i's order; P_i then sends a shuffled copy
to everyone. Each party sees the others' ids only as fully blinded points. In size mode the
last party shuffles before returning a list, so its owner can count matches but not tell
which ids. Cost: k exponentiations per id and party, hashing once; the ids never leave in
the clear.

What a party learns, besides every party's number of ids:
- two parties: the intersection (size mode: its size), nothing else;
- three or more (intersection mode only): every other party's fully blinded list arrives
  on its own, so a party learns for each of its own ids WHICH other parties hold it (A
  learns A&B and A&C, not only A&B&C), and, matching the others' lists against each other,
  how many ids each group of other parties shares outside its own set (|B&C| - |A&B&C|):
  the size of every region of the parties' Venn diagram. Size mode would leak those sizes
  too, breaking its promise of one count, so it takes exactly two parties (`check_parties`).
Each list is raised once per party, and only when it comes from the hop before it (its
owner for the first hop): a peer that could have lists raised at will would learn which of
its chosen ids a party holds, one list per id (silos/vertical/agent_role.py,
`psi_over_wire`). A party that relays another's list can still replace it: the owner's
result is then wrong (the service fails the run when the parties report different
intersections), but the replacing party learns no more than with that set as its own list.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Literal

import gmpy2
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from schemas.vertical import PsiPoints, VerticalMessage

POINT = 32
DOMAIN = b"fedsilo-psi-v2"
Mode = Literal["intersection", "size"]
_P = 2**255 - 19  # Curve25519: v^2 = u^3 + A u^2 + u over GF(p)
_A = 486662
_PZ = gmpy2.mpz(_P)
_U_MASK = (1 << 255) - 1


class PsiError(ValueError):
    """A PSI message refused; the message names the party."""


def _on_curve(u: int) -> bool:
    """u < p is the u-coordinate of a point of Curve25519 (not of its twist): u^3 + A u^2 + u
    is a square mod p (Jacobi = Legendre symbol for a prime p, in gmpy2's integers)."""
    m = gmpy2.mpz(u)
    return m < _PZ and gmpy2.jacobi(((m + _A) * m + 1) * m % _PZ, _PZ) != -1


def _salted(salt: bytes) -> hashlib._Hash:
    return hashlib.sha256(DOMAIN + len(salt).to_bytes(2, "big") + salt)


def hash_to_group(ident: str, salt: bytes, salted: hashlib._Hash | None = None) -> bytes:
    """The u-coordinate of a point of Curve25519 for `ident` (try-and-increment): SHA-256 of
    the domain tag, the salt (`salted`: that prefix hashed already), a counter byte and the id.
    """
    prefix = salted or _salted(salt)
    raw = ident.encode("utf-8")
    for counter in range(256):  # each try succeeds with probability about 1/2
        h = prefix.copy()
        h.update(counter.to_bytes(1, "big") + raw)
        u = int.from_bytes(h.digest(), "little") & _U_MASK
        if u > 1 and _on_curve(u):  # 0 and 1 are small-order points
            return u.to_bytes(POINT, "little")
    raise PsiError(f"id {ident[:40]!r} found no curve point in 256 tries")  # p ~ 2^-256


def in_group(point: bytes) -> bool:
    """A received u-coordinate: canonical and of the curve, not of its twist."""
    return len(point) == POINT and _on_curve(int.from_bytes(point, "little"))


def intersection_digest(ids: Sequence[str], salt: bytes) -> str:
    """sha256 over the salt and the sorted intersection (length-prefixed): for the ledger."""
    d = hashlib.sha256(DOMAIN + b"|digest|" + len(salt).to_bytes(2, "big") + salt)
    for ident in sorted(ids):
        raw = ident.encode("utf-8")
        d.update(len(raw).to_bytes(4, "big") + raw)
    return d.hexdigest()


# --- bulk group operations, split across cores -----------------------------------------------


def multiply(key: X25519PrivateKey, point: bytes) -> bytes:
    """X25519(key's clamped scalar, point): raises ValueError on a small-order point (the
    all-zero output)."""
    return key.exchange(X25519PublicKey.from_public_bytes(point))


@dataclass(frozen=True)
class _Blinding:
    """What a chunk of group work needs: the salt (and its hashed prefix) and the scalar."""

    salt: bytes
    salted: hashlib._Hash
    key: X25519PrivateKey


_WORKER: _Blinding | None = None  # a pool worker's own, set in the child by `_init`


def _hash_blind_chunk(ids: list[str], b: _Blinding | None = None) -> bytes:
    b = b or _WORKER
    assert b is not None
    return b"".join(multiply(b.key, hash_to_group(i, b.salt, b.salted)) for i in ids)


def _exp_chunk(points: bytes, b: _Blinding | None = None) -> bytes | int:
    b = b or _WORKER
    assert b is not None
    out = []
    for k in range(0, len(points), POINT):
        p = points[k : k + POINT]
        if not in_group(p):
            return k // POINT
        try:
            out.append(multiply(b.key, p))
        except ValueError:  # a small-order point: the all-zero output
            return k // POINT
    return b"".join(out)


def _blinding(salt: bytes, scalar: bytes) -> _Blinding:
    return _Blinding(salt, _salted(salt), X25519PrivateKey.from_private_bytes(scalar))


def _init(salt: bytes, scalar: bytes) -> None:
    global _WORKER
    _WORKER = _blinding(salt, scalar)


def _parallel(fn: Callable, chunks: list, salt: bytes, scalar: bytes, workers: int) -> list:
    """`fn` over `chunks` with this party's salt and scalar. In this process they are passed
    along, never kept in the module: parties in threads of one process (an agent's runs,
    the tests) each keep their own. Forked workers get them as the initializer's
    arguments, which a fork inherits without pickling."""
    if workers <= 1 or len(chunks) <= 1:
        b = _blinding(salt, scalar)
        return [fn(c, b) for c in chunks]
    with ProcessPoolExecutor(workers, get_context("fork"), _init, (salt, scalar)) as pool:
        return list(pool.map(fn, chunks))


def _chunks(seq: Sequence, size: int) -> list:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _shuffle(points: bytes) -> bytes:
    items = _chunks(points, POINT)
    secrets.SystemRandom().shuffle(items)
    return b"".join(items)


@dataclass
class PsiResult:
    party: str
    size: int
    ids: list[str] | None  # None in size mode
    digest: str | None


@dataclass
class PsiParty:
    name: str
    ids: Sequence[str]
    run: str
    salt: bytes
    mode: Mode = "intersection"
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    _scalar: bytes = field(default=b"", repr=False)
    _order: list[int] = field(default_factory=list, repr=False)
    _full: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if len(set(self.ids)) != len(self.ids):
            raise PsiError(f"party {self.name!r}: its id list has duplicates")
        self._scalar = os.urandom(32)  # X25519 clamps it: a multiple of 8 below 2^255

    def _chunk_size(self, n: int) -> int:
        return max(1, -(-n // (self.workers * 4)))

    def blinded(self) -> PsiPoints:
        """This party's ids, hashed, raised to its scalar and shuffled."""
        order = list(range(len(self.ids)))
        secrets.SystemRandom().shuffle(order)
        self._order = order
        shuffled = [self.ids[i] for i in order]
        parts = _parallel(
            _hash_blind_chunk,
            _chunks(shuffled, self._chunk_size(len(order))),
            self.salt,
            self._scalar,
            self.workers,
        )
        return PsiPoints(
            run=self.run,
            sender=self.name,
            owner=self.name,
            stage="blinded",
            count=len(order),
            points=b"".join(parts),
        )

    def exponentiate(self, msg: PsiPoints, last: bool) -> PsiPoints:
        """Raise another party's list to this party's scalar, keeping its order (shuffling
        it instead when this is the last hop of a size-only run)."""
        if msg.owner == self.name or msg.stage != "blinded":
            raise PsiError(
                f"party {self.name!r} got an unexpected {msg.stage} list of "
                f"{msg.owner!r} from party {msg.sender!r}"
            )
        self._check(msg)
        step = self._chunk_size(msg.count) * POINT
        parts = _parallel(
            _exp_chunk, _chunks(msg.points, step), self.salt, self._scalar, self.workers
        )
        for k, part in enumerate(parts):
            if isinstance(part, int):
                raise PsiError(
                    f"party {self.name!r} refused the list from party {msg.sender!r}"
                    f": point {k * step // POINT + part} is not in the group"
                )
        points = b"".join(parts)
        if last and self.mode == "size":
            points = _shuffle(points)
        stage = "exponentiated" if last else "blinded"
        return msg.model_copy(update={"sender": self.name, "stage": stage, "points": points})

    def publish(self, msg: PsiPoints) -> PsiPoints:
        """Keep the fully blinded own list; return a shuffled copy for the other parties."""
        if msg.owner != self.name or msg.stage != "exponentiated":
            raise PsiError(
                f"party {self.name!r} got a {msg.stage} list of {msg.owner!r} "
                f"from party {msg.sender!r} instead of its own, fully blinded"
            )
        self._check(msg)
        if msg.count != len(self.ids):
            raise PsiError(
                f"party {self.name!r}: party {msg.sender!r} returned {msg.count} "
                f"points for its {len(self.ids)} ids"
            )
        self._full = msg.points
        return PsiPoints(
            run=self.run,
            sender=self.name,
            owner=self.name,
            stage="final",
            count=msg.count,
            points=_shuffle(msg.points),
        )

    def intersect(self, others: Sequence[PsiPoints]) -> PsiResult:
        common: set[bytes] | None = None
        for msg in others:
            if msg.stage != "final" or msg.owner == self.name:
                raise PsiError(
                    f"party {self.name!r} expected a final list from party "
                    f"{msg.sender!r}, got {msg.stage} of {msg.owner!r}"
                )
            self._check(msg)
            theirs = set(_chunks(msg.points, POINT))
            common = theirs if common is None else common & theirs
        mine = _chunks(self._full, POINT)
        hits = [k for k, p in enumerate(mine) if common is None or p in common]
        if self.mode == "size":
            return PsiResult(self.name, len(hits), None, None)
        ids = sorted(self.ids[self._order[k]] for k in hits)
        return PsiResult(self.name, len(ids), ids, intersection_digest(ids, self.salt))

    def _check(self, msg: PsiPoints) -> None:
        if msg.run != self.run:
            raise PsiError(
                f"party {self.name!r} refused a list from party {msg.sender!r}: "
                f"run {msg.run!r}, expected {self.run!r}"
            )
        if len(msg.points) != msg.count * POINT:
            raise PsiError(
                f"party {self.name!r} refused the list from party {msg.sender!r}: "
                f"{len(msg.points)} bytes for {msg.count} points"
            )


Deliver = Callable[[str, str, PsiPoints], VerticalMessage]


def _points(deliver: Deliver, sender: str, recipient: str, msg: PsiPoints) -> PsiPoints:
    got = deliver(sender, recipient, msg)
    if not isinstance(got, PsiPoints):
        raise PsiError(
            f"party {recipient!r} expected PSI points from party {sender!r}, got {got.kind}"
        )
    return got


def check_parties(run: str, parties: Sequence[str], mode: Mode) -> None:
    """Refuse a run the protocol cannot serve as promised: fewer than two parties, or a
    size-only run of three or more (each party would learn every pairwise count)."""
    if len(parties) < 2:
        raise PsiError(f"run {run}: private set intersection needs at least two parties")
    if mode == "size" and len(parties) > 2:
        raise PsiError(
            f"run {run}: a size-only intersection takes exactly two parties, not "
            f"{len(parties)} ({', '.join(parties)}): with more, each party would learn the "
            f"size of every pair's intersection, not only the common count"
        )


def run_psi(parties: Sequence[PsiParty], deliver: Deliver) -> dict[str, PsiResult]:
    """Run the protocol among `parties`, every message through `deliver(sender, recipient,
    message)` (a relay that seals and opens it); returns each party's result."""
    size = any(p.mode == "size" for p in parties)
    run = parties[0].run if parties else "?"
    check_parties(run, [p.name for p in parties], "size" if size else "intersection")
    by_name = {p.name: p for p in parties}
    finals: dict[str, PsiPoints] = {}
    for owner in parties:
        msg = owner.blinded()
        others = [p for p in parties if p is not owner]
        hop = owner.name
        for k, party in enumerate(others):
            msg = party.exponentiate(
                _points(deliver, hop, party.name, msg), last=k == len(others) - 1
            )
            hop = party.name
        finals[owner.name] = owner.publish(_points(deliver, hop, owner.name, msg))
    results = {}
    for name, party in by_name.items():
        got = [_points(deliver, o, name, finals[o]) for o in by_name if o != name]
        results[name] = party.intersect(got)
    return results


__all__ = [
    "PsiError",
    "PsiParty",
    "PsiResult",
    "check_parties",
    "hash_to_group",
    "in_group",
    "intersection_digest",
    "multiply",
    "run_psi",
]
