"""Public parameters and key derivations of a secure-aggregation *session*, used by both halves.

The silo's half is `silos.secagg.session`, the service's `aggregation.secagg.session_server`;
README section "Sessions" in aggregation/secagg/ has the construction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.secagg import crypto, shamir
from schemas.secagg.exceptions import SecAggConfigError, UnknownSiloError
from schemas.secagg.prg import dtype_for

SESSION_LABEL = crypto.PROTOCOL_LABEL + b"/session"


@dataclass(frozen=True)
class SessionConfig:
    """Public parameters of a session: run id, roster, threshold t, modulus bits, consistency."""

    run_id: str
    silos: tuple[str, ...]
    threshold: int
    bits: int = 64
    consistency_check: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "silos", tuple(sorted(self.silos)))
        dtype_for(self.bits)
        n = len(self.silos)
        if len(set(self.silos)) != n or n < 2 or not 2 <= self.threshold <= n:
            raise SecAggConfigError(
                f"a session needs >= 2 distinct silos and 2 <= t <= n; got {n} silos, "
                f"t = {self.threshold}",
                run_id=self.run_id,
                stage="session-setup",
            )

    def index(self, silo: str) -> int:
        """Shamir index (1..n); UnknownSiloError off the roster."""
        try:
            return self.silos.index(silo) + 1
        except ValueError:
            raise UnknownSiloError(
                f"{silo!r} is not on the session roster {list(self.silos)}",
                run_id=self.run_id,
                silo=silo,
            ) from None


def derive(secret: bytes, purpose: bytes, run_id: str, counter: int, a: str, b: str) -> bytes:
    """HKDF-SHA256 of `secret` bound to (purpose, run, counter, unordered pair a-b)."""
    lo, hi = sorted((a, b))
    salt = hashlib.sha256(crypto.transcript("session-salt", run_id, counter)).digest()
    info = SESSION_LABEL + b"/" + purpose + crypto.transcript(lo, hi)
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info)
    return kdf.derive(secret)


def pair_counter_seed(session_seed: bytes, run_id: str, counter: int, a: str, b: str) -> bytes:
    """s_ab^c: the PRG seed of the a-b pairwise mask in aggregation `counter` only."""
    return derive(session_seed, b"pair-mask", run_id, counter, a, b)


def b_commitment(seed: bytes, run_id: str, counter: int, silo: str) -> bytes:
    """Commitment to a silo's self-mask seed of one aggregation."""
    return shamir.commit(seed, "session-b", run_id, counter, silo)


def share_ad(run_id: str, counter: int, sender: str, recipient: str) -> bytes:
    """AES-GCM associated data of a self-mask share: binds run, counter and direction."""
    return crypto.share_associated_data(run_id, counter, "session-masked", sender, recipient)
