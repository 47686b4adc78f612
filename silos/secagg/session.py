"""The silo's half of a secure-aggregation *session*: one key exchange, many aggregations.

Built for protocols that sum many vectors in a row (secure-histogram boosting sums one vector
per tree level), on the primitives of this package (X25519, HKDF-SHA256, AES-256-GCM, Ed25519,
Shamir over GF(2^521 - 1), the AES-CTR PRG); README section "Sessions" has the construction.

    state, advert = start_session(config, "bank-a", identity, roster_keys)
    accept_adverts(state, adverts)                       # once: pairwise seeds s_ij
    masked = masked_input(state, aggregation_request, x) # per aggregation c
    signed = sign_survivors(state, c, survivors)         # if config.consistency_check
    answer = unmask(state, unmask_request)

Per aggregation c the silo sends y = x + PRG(b_c) + sum_{j>i} PRG(s_ij^c) - sum_{j<i} PRG(s_ij^c)
with s_ij^c = HKDF(s_ij, counter c) and a fresh self-mask seed b_c, Shamir-shared to the
active peers inside the same message. Nothing long-lived is ever revealed: a dropped silo's
pairwise masks are removed with the survivors' s_ij^c for that c alone, so the service cannot
unmask any earlier (or later) vector of anyone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.secagg import crypto, shamir
from schemas.secagg.exceptions import (
    DuplicateMessageError,
    InsufficientSharesError,
    LateMessageError,
    MessageFormatError,
    UnknownSiloError,
    UnmaskRefusedError,
    VectorShapeError,
    Where,
    WrongRoundError,
)
from schemas.secagg.prg import add_mask, dtype_for
from schemas.secagg.session_config import (
    SessionConfig,
    b_commitment,
    derive,
    pair_counter_seed,
    share_ad,
)
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
    active: tuple[str, ...]
    own_share: shamir.Share
    stage: str
    signed: tuple[str, ...] | None = None
    answered: tuple[tuple[str, ...], tuple[str, ...]] | None = None


@dataclass
class SessionClient:
    """One silo's session secrets (pairwise seeds, AES keys); never leaves the silo."""

    config: SessionConfig
    silo: str
    identity: Ed25519PrivateKey
    roster_keys: Mapping[str, bytes]
    advert: SessionAdvert
    private: tuple[bytes, bytes] | None  # raw c and s keys until the adverts are accepted
    share_keys: dict[str, bytes] = field(default_factory=dict)
    pair_seeds: dict[str, bytes] = field(default_factory=dict)
    active: frozenset[str] = frozenset()
    counter: int = SETUP_COUNTER
    current: _Aggregation | None = None

    def where(self, counter: int | None = None, silo: str | None = None) -> Where:
        return {
            "run_id": self.config.run_id,
            "round_num": self.counter if counter is None else counter,
            "stage": "session",
            "silo": silo or self.silo,
        }


def start_session(
    config: SessionConfig, silo: str, identity: Ed25519PrivateKey, roster_keys: Mapping[str, bytes]
) -> tuple[SessionClient, SessionAdvert]:
    """Generate the session's two X25519 key pairs and sign their public halves."""
    config.index(silo)
    c_key, s_key = crypto.generate_x25519(), crypto.generate_x25519()
    advert = SessionAdvert.create(
        identity,
        run_id=config.run_id,
        round_num=SETUP_COUNTER,
        silo=silo,
        c_pk=crypto.x25519_public_bytes(c_key),
        s_pk=crypto.x25519_public_bytes(s_key),
    )
    raw = (crypto.x25519_private_bytes(c_key), crypto.x25519_private_bytes(s_key))
    return SessionClient(config, silo, identity, roster_keys, advert, raw), advert


def accept_adverts(state: SessionClient, adverts: Iterable[SessionAdvert]) -> None:
    """Verify the peers' signed keys; derive the pairwise seeds and share keys; forget the
    private keys (nothing long-lived is ever needed again)."""
    if state.private is None:
        raise DuplicateMessageError("adverts were already accepted", **state.where(0))
    cfg, seen = state.config, {state.silo}
    c_key = crypto.x25519_private_from_bytes(state.private[0])
    s_key = crypto.x25519_private_from_bytes(state.private[1])
    share_keys, pair_seeds = {}, {}
    for advert in adverts:
        advert.check_round(cfg.run_id, SETUP_COUNTER)
        if advert.silo == state.silo:
            if advert != state.advert:
                raise MessageFormatError(
                    "relayed advert of this silo was altered", **state.where(0)
                )
            continue
        if advert.silo in seen:
            raise DuplicateMessageError("two adverts from one silo", **state.where(0, advert.silo))
        cfg.index(advert.silo)
        try:
            advert.verify(state.roster_keys[advert.silo])
        except KeyError:
            raise UnknownSiloError("no identity key", **state.where(0, advert.silo)) from None
        seen.add(advert.silo)
        c_shared = crypto.agree(c_key, advert.c_pk)
        share_keys[advert.silo] = derive(
            c_shared, b"share-enc", cfg.run_id, 0, state.silo, advert.silo
        )
        s_shared = crypto.agree(s_key, advert.s_pk)
        pair_seeds[advert.silo] = derive(s_shared, b"pair", cfg.run_id, 0, state.silo, advert.silo)
    _need(state, len(seen), 0, "too few silos advertised session keys")
    state.share_keys, state.pair_seeds = share_keys, pair_seeds
    state.active, state.private = frozenset(seen), None


def _need(state: SessionClient, got: int, counter: int, what: str) -> None:
    if got < state.config.threshold:
        raise InsufficientSharesError(
            what, needed=state.config.threshold, got=got, **state.where(counter)
        )


def masked_input(state: SessionClient, request: AggregationRequest, x: np.ndarray) -> SessionMasked:
    """Mask `x` for aggregation ``request.round_num`` among ``request.active``.

    Refuses a counter that is not newer than the last one (re-using a counter would re-use the
    masks, and the difference of two vectors under one mask is unmasked), an active list with a
    silo that left the session, and a vector of the wrong length or dtype.
    """
    cfg, c = state.config, request.round_num
    if state.private is not None:
        raise LateMessageError("accept the peers' adverts first", **state.where(c))
    if request.run_id != cfg.run_id or c <= state.counter:
        raise WrongRoundError(
            f"aggregation {request.run_id}/{c} is not newer than {state.counter}: a counter is "
            "never re-used (its masks would be re-used)",
            **state.where(c),
        )
    active = tuple(sorted(set(request.active)))
    if state.silo not in active or not set(active) <= state.active:
        raise UnknownSiloError(
            f"active list {list(active)} must include this silo and only silos still in the "
            f"session {sorted(state.active)}",
            **state.where(c),
        )
    _need(state, len(active), c, "too few silos are active")
    expected = dtype_for(cfg.bits)
    if x.shape != (request.dim,) or x.dtype != expected:
        raise VectorShapeError(
            f"vector has shape {x.shape}, dtype {x.dtype}; aggregation {c} expects "
            f"({request.dim},) {expected}",
            **state.where(c),
        )
    seed = os.urandom(32)
    holders = {cfg.index(s): s for s in active}
    shares = shamir.split(seed, cfg.threshold, sorted(holders))
    ciphertexts = {
        peer: crypto.encrypt(
            state.share_keys[peer], shares[i].to_bytes(), share_ad(cfg.run_id, c, state.silo, peer)
        )
        for i, peer in holders.items()
        if peer != state.silo
    }
    y = x.copy()
    add_mask(y, seed, +1)
    me = cfg.index(state.silo)
    for peer in active:
        if peer != state.silo:
            s = pair_counter_seed(state.pair_seeds[peer], cfg.run_id, c, state.silo, peer)
            add_mask(y, s, +1 if cfg.index(peer) > me else -1)
    stage = "consistency" if cfg.consistency_check else "unmask"
    state.counter, state.active = c, frozenset(active)
    state.current = _Aggregation(c, active, shares[me], stage)
    return SessionMasked.create(
        state.identity,
        run_id=cfg.run_id,
        round_num=c,
        silo=state.silo,
        b_commitment=b_commitment(seed, cfg.run_id, c, state.silo),
        ciphertexts=ciphertexts,
        vector=y,
    )


def _current(state: SessionClient, counter: int, stage: str) -> _Aggregation:
    agg = state.current
    if agg is None or agg.counter != counter:
        raise WrongRoundError(
            f"no pending aggregation {counter} (this silo is at {state.counter})",
            **state.where(counter),
        )
    if agg.stage != stage:
        raise LateMessageError(
            f"aggregation {counter} is at stage {agg.stage}", **state.where(counter)
        )
    return agg


def sign_survivors(
    state: SessionClient, counter: int, survivors: Sequence[str]
) -> SessionConsistency:
    """Sign the survivor list of aggregation `counter` (once)."""
    agg = _current(state, counter, "consistency")
    listed = tuple(sorted(survivors))
    _check_lists(state, agg, listed)
    agg.signed, agg.stage = listed, "unmask"
    return SessionConsistency.create(
        state.identity, run_id=state.config.run_id, round_num=counter, silo=state.silo,
        survivors=listed,
    )  # fmt: skip


def _check_lists(state: SessionClient, agg: _Aggregation, survivors: tuple[str, ...]) -> None:
    if state.silo not in survivors:
        raise UnmaskRefusedError(
            "the service lists this silo as dropped although it sent its masked vector: its "
            "pairwise seeds would expose that vector",
            **state.where(agg.counter),
        )
    if not set(survivors) <= set(agg.active):
        raise UnknownSiloError(
            f"survivors {list(survivors)} include silos that were not active in this aggregation",
            **state.where(agg.counter),
        )
    _need(state, len(survivors), agg.counter, "too few survivors")


def unmask(state: SessionClient, request: SessionUnmaskRequest) -> SessionUnmaskResponse:
    """Reveal self-mask shares of survivors and this aggregation's pairwise seeds with the
    dropped silos; those leave the session for good.

    Refuses (UnmaskRefusedError): this silo listed as dropped; a silo both survivor and
    dropped; a dropped list other than active - survivors; a second, different answer for the
    same aggregation; with the consistency check, a survivor list other than the signed one or
    fewer than t valid signatures on it.
    """
    cfg, c = state.config, request.round_num
    if request.run_id != cfg.run_id or request.silo != state.silo:
        raise WrongRoundError("unmask request for another run or silo", **state.where(c))
    agg = _current(state, c, "unmask")
    survivors, dropped = tuple(sorted(request.survivors)), tuple(sorted(request.dropped))
    _check_lists(state, agg, survivors)
    if set(dropped) != set(agg.active) - set(survivors):
        raise UnmaskRefusedError(
            f"dropped list {list(dropped)} is not the active silos minus the survivors; a silo "
            "listed both ways would have its vector exposed",
            **state.where(c),
        )
    if agg.answered is not None and agg.answered != (survivors, dropped):
        raise UnmaskRefusedError("a second, different unmask request", **state.where(c))
    if cfg.consistency_check:
        _check_consistency(state, agg, request, survivors)
    b_shares = {state.silo: agg.own_share.to_bytes()}
    for sender in survivors:
        if sender == state.silo:
            continue
        blob = request.ciphertexts.get(sender)
        if blob is None:
            continue  # a share the relay did not deliver only lowers the count of shares
        plain = crypto.decrypt(
            state.share_keys[sender], blob, share_ad(cfg.run_id, c, sender, state.silo)
        )
        share = shamir.Share.from_bytes(plain)
        if share.index != cfg.index(state.silo):
            raise MessageFormatError("share for another holder", **state.where(c, sender))
        b_shares[sender] = plain
    pair = {
        j: pair_counter_seed(state.pair_seeds[j], cfg.run_id, c, state.silo, j) for j in dropped
    }
    agg.answered = (survivors, dropped)
    state.active = state.active - set(dropped)
    return SessionUnmaskResponse.create(
        state.identity, run_id=cfg.run_id, round_num=c, silo=state.silo,
        b_shares=b_shares, pair_seeds=pair,
    )  # fmt: skip


def _check_consistency(
    state: SessionClient,
    agg: _Aggregation,
    request: SessionUnmaskRequest,
    survivors: tuple[str, ...],
) -> None:
    if survivors != agg.signed:
        raise UnmaskRefusedError(
            f"unmask request lists survivors {list(survivors)}, this silo signed "
            f"{list(agg.signed or ())}",
            **state.where(agg.counter),
        )
    valid = 0
    for signer, signature in request.consistency.items():
        if signer not in survivors:
            raise UnknownSiloError(
                "signature from a non-survivor", **state.where(agg.counter, signer)
            )
        msg = SessionConsistency(state.config.run_id, agg.counter, signer, signature, survivors)
        msg.verify(state.roster_keys[signer])
        valid += 1
    _need(state, valid, agg.counter, "too few survivors signed the survivor list")
