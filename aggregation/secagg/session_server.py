"""The service's half of a secure-aggregation session (see :mod:`silos.secagg.session`).

    state = SessionServer(config, roster_keys)
    receive_advert(state, msg) ...;   adverts = close_setup(state)        # once per run
    request = open_aggregation(state, dim)                                # per aggregation
    receive_masked(state, msg) ...;   survivors = close_masked(state)
    receive_consistency(state, msg) ... (if config.consistency_check)
    requests = unmask_requests(state); receive_unmask(state, msg) ...
    total = finalize(state)      # sum of the survivors' vectors mod 2^k; dropped silos leave

The state is a function of the accepted messages in order (replayable from a mailbox).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from schemas.secagg import crypto, shamir
from schemas.secagg.exceptions import (
    DuplicateMessageError,
    InsufficientSharesError,
    LateMessageError,
    MessageFormatError,
    ReconstructionError,
    UnknownSiloError,
    UnmaskRefusedError,
    VectorShapeError,
    Where,
)
from schemas.secagg.messages import Signed
from schemas.secagg.prg import SEED_BYTES, add_mask, dtype_for
from schemas.secagg.session_config import SessionConfig, b_commitment
from schemas.secagg.session_messages import (
    SETUP_COUNTER,
    AggregationRequest,
    SessionAdvert,
    SessionConsistency,
    SessionMasked,
    SessionUnmaskRequest,
    SessionUnmaskResponse,
)


@dataclass
class _Aggregation:
    counter: int
    dim: int
    active: tuple[str, ...]
    total: np.ndarray
    stage: str = "masked"
    masked: dict[str, SessionMasked] = field(default_factory=dict)  # header only is needed
    survivors: tuple[str, ...] = ()
    consistency: dict[str, bytes] = field(default_factory=dict)
    responses: dict[str, SessionUnmaskResponse] = field(default_factory=dict)

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(s for s in self.active if s not in self.survivors)


@dataclass
class SessionServer:
    """The service's view of one session."""

    config: SessionConfig
    roster_keys: Mapping[str, bytes]
    adverts: dict[str, SessionAdvert] = field(default_factory=dict)
    active: tuple[str, ...] = ()
    gone: list[str] = field(default_factory=list)
    counter: int = SETUP_COUNTER
    current: _Aggregation | None = None
    check_signatures: bool = True

    def where(self, silo: str | None = None, counter: int | None = None) -> Where:
        c = self.counter if counter is None else counter
        return {"run_id": self.config.run_id, "round_num": c, "stage": "session", "silo": silo}


def _admit(state: SessionServer, msg: Signed, counter: int, seen: Mapping[str, object]) -> None:
    msg.check_round(state.config.run_id, counter)
    state.config.index(msg.silo)
    if state.check_signatures:
        msg.verify(state.roster_keys[msg.silo])
    if msg.silo in seen:
        raise DuplicateMessageError(
            f"second {type(msg).__name__}; the first stands", **state.where(msg.silo, counter)
        )


def _need(state: SessionServer, got: int, what: str, silo: str | None = None) -> None:
    t = state.config.threshold
    if got < t:
        raise InsufficientSharesError(what, needed=t, got=got, **state.where(silo))


def receive_advert(state: SessionServer, msg: SessionAdvert) -> None:
    """Setup: accept a silo's signed session keys."""
    if state.active:
        raise LateMessageError("the session's setup is closed", **state.where(msg.silo))
    _admit(state, msg, SETUP_COUNTER, state.adverts)
    if state.check_signatures:  # else replayed: checked when it arrived
        for name, key in (("c_pk", msg.c_pk), ("s_pk", msg.s_pk)):
            crypto.check_public(key, name, **state.where(msg.silo))
    state.adverts[msg.silo] = msg


def close_setup(state: SessionServer) -> tuple[SessionAdvert, ...]:
    """Close the setup; the advertisers are the session's silos. Returns the adverts to relay."""
    _need(state, len(state.adverts), "too few silos advertised session keys")
    state.active = tuple(sorted(state.adverts))
    return tuple(state.adverts[s] for s in state.active)


def open_aggregation(state: SessionServer, dim: int) -> AggregationRequest:
    """Start aggregation counter + 1 over the silos still in the session."""
    if not state.active:
        raise LateMessageError("close the setup first", **state.where())
    if state.current is not None and state.current.stage != "done":
        raise LateMessageError(
            f"aggregation {state.current.counter} is still open", **state.where()
        )
    _need(state, len(state.active), "too few silos remain in the session")
    state.counter += 1
    total = np.zeros(dim, dtype=dtype_for(state.config.bits))
    state.current = _Aggregation(state.counter, dim, state.active, total)
    return AggregationRequest(state.config.run_id, state.counter, "service", state.active, dim)


def _open(state: SessionServer, stage: str, silo: str | None = None) -> _Aggregation:
    agg = state.current
    if agg is None or agg.stage != stage:
        raise LateMessageError(
            f"aggregation {state.counter} is not at stage {stage!r}", **state.where(silo)
        )
    return agg


def receive_masked(state: SessionServer, msg: SessionMasked) -> None:
    """Check a masked vector (length, dtype, recipients of its shares) and add it to the sum."""
    agg = _open(state, "masked", msg.silo)
    expected = dtype_for(state.config.bits)
    if msg.vector.shape != (agg.dim,) or msg.vector.dtype != expected:
        raise VectorShapeError(
            f"masked vector has shape {msg.vector.shape} and dtype {msg.vector.dtype}; "
            f"aggregation {agg.counter} expects ({agg.dim},) {expected}",
            **state.where(msg.silo, agg.counter),
        )
    _admit(state, msg, agg.counter, agg.masked)
    if msg.silo not in agg.active:
        raise UnknownSiloError("not active in this aggregation", **state.where(msg.silo))
    if set(msg.ciphertexts) != set(agg.active) - {msg.silo}:
        raise MessageFormatError(
            "self-mask shares must go to exactly the other active silos",
            **state.where(msg.silo),
        )
    np.add(agg.total, msg.vector, out=agg.total)
    agg.masked[msg.silo] = msg


def close_masked(state: SessionServer) -> tuple[str, ...]:
    """Close the masked stage; returns the survivors (who sent a vector)."""
    agg = _open(state, "masked")
    _need(state, len(agg.masked), "too few silos sent masked vectors")
    agg.survivors = tuple(sorted(agg.masked))
    agg.stage = "consistency" if state.config.consistency_check else "unmask"
    return agg.survivors


def receive_consistency(state: SessionServer, msg: SessionConsistency) -> None:
    """Accept a survivor's signature on the survivor list."""
    agg = _open(state, "consistency", msg.silo)
    _admit(state, msg, agg.counter, agg.consistency)
    if msg.silo not in agg.survivors or tuple(sorted(msg.survivors)) != agg.survivors:
        raise MessageFormatError("signed survivor list differs", **state.where(msg.silo))
    agg.consistency[msg.silo] = msg.signature


def unmask_requests(state: SessionServer) -> dict[str, SessionUnmaskRequest]:
    """One request per survivor, carrying the self-mask shares addressed to it."""
    agg = state.current
    if agg is None or agg.stage not in ("consistency", "unmask"):
        raise LateMessageError("nothing to unmask", **state.where())
    if state.config.consistency_check:
        _need(state, len(agg.consistency), "too few survivors signed the survivor list")
    agg.stage = "unmask"
    return {
        s: SessionUnmaskRequest(
            state.config.run_id,
            agg.counter,
            s,
            agg.survivors,
            agg.dropped,
            dict(agg.consistency),
            {j: agg.masked[j].ciphertexts[s] for j in agg.survivors if j != s},
        )
        for s in agg.survivors
    }


def receive_unmask(state: SessionServer, msg: SessionUnmaskResponse) -> None:
    """Accept a survivor's shares and pairwise seeds; refuse any that could expose a vector."""
    agg = _open(state, "unmask", msg.silo)
    _admit(state, msg, agg.counter, agg.responses)
    if msg.silo not in agg.survivors:
        raise UnknownSiloError("response from a non-survivor", **state.where(msg.silo))
    if not set(msg.b_shares) <= set(agg.survivors) or set(msg.pair_seeds) != set(agg.dropped):
        raise UnmaskRefusedError(
            "response must carry self-mask shares of survivors only and the pairwise seeds "
            "with exactly the dropped silos",
            **state.where(msg.silo),
        )
    for gone, seed in msg.pair_seeds.items():  # finalize would fail on it, for every silo
        if len(seed) != SEED_BYTES:
            raise MessageFormatError(
                f"pairwise seed with {gone} is {len(seed)} bytes, not {SEED_BYTES}",
                **state.where(msg.silo),
            )
    index = state.config.index(msg.silo)
    for raw in msg.b_shares.values():
        if shamir.Share.from_bytes(raw).index != index:
            raise MessageFormatError("share of another holder", **state.where(msg.silo))
    agg.responses[msg.silo] = msg


def finalize(state: SessionServer) -> np.ndarray:
    """Remove every mask; return the survivors' sum mod 2^k. Dropped silos leave the session.

    Raises
    ------
    InsufficientSharesError
        Fewer than t shares of a survivor's self-mask seed, or a survivor that did not reveal
        its pairwise seed with a dropped silo (run the aggregation again under a new counter
        without the silos that stopped answering).
    ReconstructionError
        A reconstructed seed contradicts its commitment.
    """
    agg = _open(state, "unmask")
    cfg, total = state.config, agg.total.copy()
    for silo in agg.survivors:
        shares = [
            shamir.Share.from_bytes(r.b_shares[silo])
            for r in agg.responses.values()
            if silo in r.b_shares
        ]
        commitment = agg.masked[silo].b_commitment
        try:
            seed = shamir.reconstruct(shares, cfg.threshold)
        except InsufficientSharesError as exc:
            raise InsufficientSharesError(
                "too few shares of a self-mask seed", needed=exc.needed, got=exc.got,
                **state.where(silo),
            ) from exc  # fmt: skip
        if b_commitment(seed, cfg.run_id, agg.counter, silo) != commitment:
            raise ReconstructionError(
                "self-mask seed contradicts its commitment", **state.where(silo)
            )
        add_mask(total, seed, -1)
    for gone in agg.dropped:
        for silo in agg.survivors:
            answer = agg.responses.get(silo)
            if answer is None:
                raise InsufficientSharesError(
                    f"survivor {silo} did not reveal its pairwise seed with dropped {gone}; "
                    "rerun this aggregation under a new counter without the silent silos",
                    needed=len(agg.survivors), got=len(agg.responses), **state.where(silo),
                )  # fmt: skip
            # the survivor added +PRG when the dropped silo sorts after it: undo that
            sign = -1 if cfg.index(gone) > cfg.index(silo) else +1
            add_mask(total, answer.pair_seeds[gone], sign)
    agg.stage = "done"
    state.gone.extend(agg.dropped)
    state.active = tuple(s for s in state.active if s not in agg.dropped)
    return total


def abandon(state: SessionServer, silent: tuple[str, ...]) -> None:
    """Give up the open aggregation; `silent` silos leave (a later counter starts afresh)."""
    if state.current is not None:
        state.current.stage = "done"
    state.gone.extend(s for s in silent if s in state.active)
    state.active = tuple(s for s in state.active if s not in silent)
