"""The silo's half of the protocol: one function per stage over a mutable :class:`ClientState`.

Importable by silo agents: it depends only on this package's primitives, never on the service.

    state, advert = advertise_keys(config, "hospital-a", identity, roster_keys)
    share_msg     = share_keys(state, adverts_from_service)
    masked_msg    = masked_input(state, encrypted_shares_for_me, quantized_update)
    consistency   = sign_survivors(state, survivors)          # if config.consistency_check
    response      = unmask(state, unmask_request)

Each function checks what it receives (round, signatures, roster, duplicates) and raises the
typed errors of :mod:`schemas.secagg.exceptions`. The state holds this round's secrets
(X25519 private keys, the self-mask seed, shares held for others); it must never leave the silo.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from schemas.secagg import crypto, shamir
from schemas.secagg.config import RoundConfig, pair_seed
from schemas.secagg.exceptions import (
    DecryptionError,
    DuplicateMessageError,
    InsufficientSharesError,
    LateMessageError,
    MessageFormatError,
    UnknownSiloError,
    UnmaskRefusedError,
    VectorShapeError,
    Where,
)
from schemas.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from schemas.secagg.prg import add_mask


@dataclass
class ClientState:
    """One silo's secrets and progress in one round (lives only in the silo's workspace)."""

    config: RoundConfig
    silo: str
    identity: Ed25519PrivateKey
    roster_keys: Mapping[str, bytes]
    c_key: X25519PrivateKey
    s_key: X25519PrivateKey
    stage: str = "advertise"
    self_seed: bytes = b""
    peers: dict[str, AdvertiseKeys] = field(default_factory=dict)
    held_b: dict[str, shamir.Share] = field(default_factory=dict)
    held_s: dict[str, shamir.Share] = field(default_factory=dict)
    signed_survivors: tuple[str, ...] | None = None
    revealed_b: set[str] = field(default_factory=set)
    revealed_s: set[str] = field(default_factory=set)

    def where(self, stage: str, silo: str | None = None) -> Where:
        """Error context for this round."""
        return {
            "run_id": self.config.run_id,
            "round_num": self.config.round_num,
            "stage": stage,
            "silo": silo or self.silo,
        }

    def require(self, expected: str) -> None:
        """Refuse to run a stage twice or out of order."""
        if self.stage != expected:
            raise DuplicateMessageError(
                f"this silo is at stage {self.stage!r}, cannot run {expected!r} (again)",
                **self.where(expected),
            )

    def advance(self, expected: str, following: str) -> None:
        """Move to ``following`` once a stage's inputs were all accepted."""
        self.require(expected)
        self.stage = following


def advertise_keys(
    config: RoundConfig,
    silo: str,
    identity: Ed25519PrivateKey,
    roster_keys: Mapping[str, bytes],
    n_examples: int | None = None,
) -> tuple[ClientState, AdvertiseKeys]:
    """Stage 0: generate the round's two X25519 key pairs and sign their public halves.

    Parameters
    ----------
    config
        Round parameters.
    silo
        This silo's id (must be on the roster).
    identity
        This silo's long-term Ed25519 key.
    roster_keys
        Registered Ed25519 public keys of all silos (to verify peers' messages).
    n_examples
        The row count this silo's update will be weighted by, signed into the advert so that
        every silo can check the weights the service sends (`AdvertiseKeys.counted`).
    """
    config.index(silo)
    state = ClientState(
        config, silo, identity, roster_keys, crypto.generate_x25519(), crypto.generate_x25519()
    )
    state.advance("advertise", "share")
    advert = AdvertiseKeys.create(
        identity,
        run_id=config.run_id,
        round_num=config.round_num,
        silo=silo,
        c_pk=crypto.x25519_public_bytes(state.c_key),
        s_pk=crypto.x25519_public_bytes(state.s_key),
    )
    if n_examples is not None:
        advert = advert.counted(identity, n_examples)
    state.peers[silo] = advert
    return state, advert


def _accept_adverts(
    state: ClientState, adverts: Iterable[AdvertiseKeys]
) -> dict[str, AdvertiseKeys]:
    cfg, mine = state.config, state.config.neighbours[state.silo]
    seen: set[str] = set()
    peers = {state.silo: state.peers[state.silo]}
    for advert in adverts:
        advert.check_round(cfg.run_id, cfg.round_num)
        if advert.silo in seen:
            raise DuplicateMessageError(
                "two key adverts from one silo", **state.where("share", advert.silo)
            )
        seen.add(advert.silo)
        if advert.silo == state.silo:
            if advert != state.peers[state.silo]:
                raise MessageFormatError(
                    "relayed advert for this silo is not the one it sent", **state.where("share")
                )
            continue
        if advert.silo not in mine:
            continue  # SecAgg+: keys of non-neighbours are irrelevant here
        identity = _identity(state, advert.silo, "advertise")
        advert.verify(identity)
        advert.verify_count(identity)
        peers[advert.silo] = advert
    return peers


def _identity(state: ClientState, silo: str, stage: str) -> bytes:
    try:
        return state.roster_keys[silo]
    except KeyError:
        raise UnknownSiloError("no registered identity key", **state.where(stage, silo)) from None


def _need(state: ClientState, got: int, stage: str, what: str) -> None:
    if got < state.config.threshold:
        raise InsufficientSharesError(
            f"{what}; the round cannot complete for this silo",
            needed=state.config.threshold,
            got=got,
            **state.where(stage),
        )


def share_keys(state: ClientState, adverts: Iterable[AdvertiseKeys]) -> ShareKeys:
    """Stage 1: pick the self-mask seed b, Shamir-share b and s_sk, encrypt shares per peer.

    ``adverts`` are the signed adverts the service relays; only neighbours' are used.
    """
    state.require("share")
    peers = _accept_adverts(state, adverts)  # all checked before any state changes
    state.advance("share", "masked")
    state.peers = peers
    cfg = state.config
    _need(state, len(state.peers), "share", "too few neighbours advertised keys")
    holders = {cfg.index(p): p for p in state.peers}
    state.self_seed = os.urandom(32)
    b_shares = shamir.split(state.self_seed, cfg.threshold, sorted(holders))
    s_raw = crypto.x25519_private_bytes(state.s_key)
    s_shares = shamir.split(s_raw, cfg.threshold, sorted(holders))
    ciphertexts = {}
    for index, peer in holders.items():
        if peer == state.silo:
            state.held_b[peer], state.held_s[peer] = b_shares[index], s_shares[index]
            continue
        key = _share_key(state, peer)
        ad = crypto.share_associated_data(cfg.run_id, cfg.round_num, "share", state.silo, peer)
        plain = b_shares[index].to_bytes() + s_shares[index].to_bytes()
        ciphertexts[peer] = crypto.encrypt(key, plain, ad)
    return ShareKeys.create(
        state.identity,
        run_id=cfg.run_id,
        round_num=cfg.round_num,
        silo=state.silo,
        b_commitment=_b_commitment(cfg, state.silo, state.self_seed),
        ciphertexts=ciphertexts,
    )


def _b_commitment(cfg: RoundConfig, silo: str, seed: bytes) -> bytes:
    return shamir.commit(seed, "b", cfg.run_id, cfg.round_num, silo)


def _share_key(state: ClientState, peer: str) -> bytes:
    shared = crypto.agree(state.c_key, state.peers[peer].c_pk)
    cfg = state.config
    return crypto.derive_share_key(
        shared, run_id=cfg.run_id, round_num=cfg.round_num, a=state.silo, b=peer
    )


def _accept_share(
    state: ClientState,
    msg: EncryptedShare,
    held_b: dict[str, shamir.Share],
    held_s: dict[str, shamir.Share],
) -> None:
    cfg = state.config
    msg.check_round(cfg.run_id, cfg.round_num)
    if msg.recipient != state.silo or msg.silo not in state.peers or msg.silo == state.silo:
        raise UnknownSiloError(
            f"share from {msg.silo!r} to {msg.recipient!r} is not for this silo from a neighbour",
            **state.where("share", msg.silo),
        )
    if msg.silo in held_b:
        raise DuplicateMessageError(
            "a second share from this silo", **state.where("share", msg.silo)
        )
    ad = crypto.share_associated_data(cfg.run_id, cfg.round_num, "share", msg.silo, state.silo)
    try:
        plain = crypto.decrypt(_share_key(state, msg.silo), msg.ciphertext, ad)
    except DecryptionError as exc:  # name the sender: the round's failure reason quotes this
        raise DecryptionError(
            f"share from silo {msg.silo!r} failed authentication: a tampered or garbage share "
            f"(sent so by {msg.silo!r}, or altered, misrouted or replayed by the relay)",
            **state.where("masked", msg.silo),
        ) from exc
    size = shamir.SHARE_BYTES
    try:
        b_share = shamir.Share.from_bytes(plain[:size])
        s_share = shamir.Share.from_bytes(plain[size:])
    except MessageFormatError as exc:  # authentic, so the sender encrypted garbage
        raise MessageFormatError(
            f"share from silo {msg.silo!r} decrypts to no valid pair of shares: {exc}",
            **state.where("masked", msg.silo),
        ) from exc
    if b_share.index != cfg.index(state.silo) or s_share.index != b_share.index:
        raise MessageFormatError(
            "shares carry another holder's index", **state.where("share", msg.silo)
        )
    held_b[msg.silo], held_s[msg.silo] = b_share, s_share


def masked_input(
    state: ClientState, shares: Iterable[EncryptedShare], quantized: np.ndarray
) -> MaskedInput:
    """Stage 2: y = x + PRG(b) + sum_{j>i} PRG(s_ij) - sum_{j<i} PRG(s_ij) (mod 2^k).

    Parameters
    ----------
    state
        After :func:`share_keys`.
    shares
        The encrypted shares the service relays to this silo (they define U2: the neighbours
        that completed stage 1; only their pairwise masks are applied).
    quantized
        This silo's update from :meth:`Quantizer.quantize` (length d, dtype of k bits).
    """
    cfg = state.config
    expected = np.dtype(f"<u{cfg.bits // 8}")
    if quantized.shape != (cfg.dim,) or quantized.dtype != expected:
        raise VectorShapeError(
            f"update has shape {quantized.shape} and dtype {quantized.dtype}, the round expects "
            f"({cfg.dim},) {expected}: quantize with bits={cfg.bits}",
            **state.where("masked"),
        )
    state.require("masked")
    held_b, held_s = dict(state.held_b), dict(state.held_s)
    for msg in shares:
        _accept_share(state, msg, held_b, held_s)
    _need(state, len(held_b), "masked", "too few neighbours shared keys")
    state.advance("masked", "consistency" if cfg.consistency_check else "unmask")
    state.held_b, state.held_s = held_b, held_s
    y = quantized.copy()
    add_mask(y, state.self_seed, +1)
    me = cfg.index(state.silo)
    for peer in state.held_b:
        if peer != state.silo:
            add_mask(
                y,
                pair_seed(state.s_key, state.peers[peer].s_pk, cfg, state.silo, peer),
                +1 if cfg.index(peer) > me else -1,
            )
    return MaskedInput.create(
        state.identity, run_id=cfg.run_id, round_num=cfg.round_num, silo=state.silo, vector=y
    )


def sign_survivors(state: ClientState, survivors: Sequence[str]) -> ConsistencySignature:
    """Stage 3 (Bonawitz's consistency check): sign the survivor list, once per round."""
    state.require("consistency")
    _check_survivors(state, tuple(sorted(survivors)), "consistency")
    state.advance("consistency", "unmask")
    state.signed_survivors = tuple(sorted(survivors))
    cfg = state.config
    return ConsistencySignature.create(
        state.identity,
        run_id=cfg.run_id,
        round_num=cfg.round_num,
        silo=state.silo,
        survivors=state.signed_survivors,
    )


def _check_survivors(state: ClientState, survivors: tuple[str, ...], stage: str) -> None:
    if state.silo not in survivors:
        raise UnmaskRefusedError(
            "the service lists this silo as dropped although it submitted its masked input: "
            "revealing its s-key shares would expose its update",
            **state.where(stage),
        )
    for s in survivors:
        state.config.index(s)
    mine = [s for s in survivors if s in state.held_b]
    _need(state, len(mine), stage, "too few of this silo's neighbours survived")


def _check_consistency(state: ClientState, request: UnmaskRequest) -> None:
    survivors = tuple(sorted(request.survivors))
    if survivors != state.signed_survivors:
        raise UnmaskRefusedError(
            f"unmasking request lists survivors {list(survivors)} but this silo signed "
            f"{list(state.signed_survivors or ())}: the service is inconsistent; not revealing",
            **state.where("unmask"),
        )
    cfg = state.config
    eligible = cfg.neighbours[state.silo] | {state.silo}
    valid = 0
    for signer, signature in request.consistency.items():
        if signer not in survivors:
            raise UnknownSiloError(
                "consistency signature from a non-survivor", **state.where("unmask", signer)
            )
        sig = ConsistencySignature(cfg.run_id, cfg.round_num, signer, signature, survivors)
        sig.verify(_identity(state, signer, "consistency"))
        valid += signer in eligible
    _need(state, valid, "unmask", "too few neighbours signed the survivor list")


def unmask(state: ClientState, request: UnmaskRequest) -> UnmaskResponse:
    """Stage 4: reveal b-shares of survivors and s_sk-shares of dropped silos.

    Refuses (UnmaskRefusedError) whenever answering would let the service learn an individual
    input: this silo listed as dropped, a silo listed both as survivor and dropped, or a request
    for the b-share of a silo whose s-share this silo already revealed (or vice versa). With
    the consistency check on, the survivor list must be the one this silo signed, endorsed by
    at least t valid signatures from its neighbourhood. Repeating an identical request is safe.
    """
    cfg = state.config
    request.check_round(cfg.run_id, cfg.round_num)
    if state.stage != "unmask":
        raise LateMessageError(
            f"unmasking requested at stage {state.stage!r}", **state.where("unmask")
        )
    if request.silo != state.silo:
        raise UnknownSiloError(f"request addressed to {request.silo!r}", **state.where("unmask"))
    survivors, dropped = set(request.survivors), set(request.dropped)
    for silo in sorted(survivors & dropped):
        raise UnmaskRefusedError(
            "listed both as survivor and dropped: revealing both shares would expose its input",
            **state.where("unmask", silo),
        )
    _check_survivors(state, tuple(sorted(survivors)), "unmask")
    if cfg.consistency_check:
        _check_consistency(state, request)
    b_for = sorted(s for s in survivors if s in state.held_b)
    s_for = sorted(s for s in dropped if s in state.held_s)
    for silo in sorted((set(b_for) & state.revealed_s) | (set(s_for) & state.revealed_b)):
        raise UnmaskRefusedError(
            "this silo already revealed the other kind of share of that silo; revealing both "
            "its self-mask and its mask key would expose its input",
            **state.where("unmask", silo),
        )
    state.revealed_b.update(b_for)
    state.revealed_s.update(s_for)
    return UnmaskResponse.create(
        state.identity,
        run_id=cfg.run_id,
        round_num=cfg.round_num,
        silo=state.silo,
        b_shares={s: state.held_b[s].to_bytes() for s in b_for},
        s_shares={s: state.held_s[s].to_bytes() for s in s_for},
    )
