"""The service's half of the protocol: it relays, checks, sums and unmasks, never decrypts.

    state = ServerState(config, roster_keys)
    receive_advertise(state, msg) ...;  adverts = close_advertise(state)
    receive_shares(state, msg) ...;     deliveries = close_shares(state)
    receive_masked(state, msg) ...;     survivors = close_masked(state)
    receive_consistency(state, msg) ... (if config.consistency_check)
    requests = unmask_requests(state);  receive_unmask(state, msg) ...
    total = finalize(state)             # sum of the survivors' quantized inputs mod 2^k

The state is a pure function of the accepted messages in order, so a service that stores every
accepted message can rebuild it after a restart by replaying them. Masked vectors are summed on
arrival; individual ones need not be kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from schemas.secagg import crypto, shamir
from schemas.secagg.config import RoundConfig, pair_seed
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
from schemas.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    ShareKeys,
    Signed,
    UnmaskRequest,
    UnmaskResponse,
)
from schemas.secagg.prg import add_mask, dtype_for


@dataclass
class ServerState:
    """The service's view of one round."""

    config: RoundConfig
    roster_keys: Mapping[str, bytes]
    stage: str = "advertise"
    # False only while replaying messages this service already verified and stored (its
    # database mailbox); every newly arriving message is verified.
    check_signatures: bool = True
    # True when masked inputs were replayed without their vectors (replay_masked): `total` is
    # then not the sum and finalize refuses. Every other step only needs who sent one.
    partial_total: bool = False
    adverts: dict[str, AdvertiseKeys] = field(default_factory=dict)
    shares: dict[str, ShareKeys] = field(default_factory=dict)
    total: np.ndarray | None = None
    submitted: list[str] = field(default_factory=list)
    survivors: tuple[str, ...] = ()
    consistency: dict[str, bytes] = field(default_factory=dict)
    responses: dict[str, UnmaskResponse] = field(default_factory=dict)
    _sets: tuple | None = field(default=None, repr=False, compare=False)

    def where(self, stage: str, silo: str | None = None) -> Where:
        """Error context for this round."""
        cfg = self.config
        return {"run_id": cfg.run_id, "round_num": cfg.round_num, "stage": stage, "silo": silo}

    @property
    def dropped(self) -> tuple[str, ...]:
        """Silos that shared keys but sent no masked input (their masks must be recovered)."""
        return self._unmask_sets()[2]

    def _unmask_sets(self) -> tuple[frozenset[str], frozenset[str], tuple[str, ...]]:
        """(survivors, dropped, dropped in order), kept while the survivor list and the shares
        stay the same objects (shares are only ever added to): every unmask response checks
        against them, and the service replays every response on each request, so recomputing
        them made a stage O(N^3)."""
        kept = self._sets
        if (
            kept is None
            or kept[0] is not self.survivors
            or kept[1] is not self.shares
            or kept[2] != len(self.shares)
        ):
            survivors = frozenset(self.survivors)
            dropped = tuple(s for s in sorted(self.shares) if s not in survivors)
            kept = (self.survivors, self.shares, len(self.shares))
            kept += (survivors, frozenset(dropped), dropped)
            self._sets = kept
        return kept[3], kept[4], kept[5]


def _admit(state: ServerState, msg: Signed, seen: Mapping[str, object]) -> None:
    cfg = state.config
    msg.check_round(cfg.run_id, cfg.round_num)
    if state.stage != msg.stage:
        raise LateMessageError(
            f"{type(msg).__name__} arrived while the round is at stage {state.stage!r}",
            **state.where(msg.stage, msg.silo),
        )
    cfg.index(msg.silo)
    if state.check_signatures:
        msg.verify(state.roster_keys[msg.silo])
    if msg.silo in seen:
        raise DuplicateMessageError(
            f"second {type(msg).__name__} from this silo; the first one stands",
            **state.where(msg.stage, msg.silo),
        )


def _need(state: ServerState, got: int, stage: str, what: str, silo: str | None = None) -> None:
    t = state.config.threshold
    if got < t:
        raise InsufficientSharesError(what, needed=t, got=got, **state.where(stage, silo))


def receive_advertise(state: ServerState, msg: AdvertiseKeys) -> None:
    """Stage 0: accept a silo's signed public keys."""
    _admit(state, msg, state.adverts)
    if state.check_signatures:  # mailbox rows were checked when they arrived
        msg.verify_count(state.roster_keys[msg.silo])
        for name, key in (("c_pk", msg.c_pk), ("s_pk", msg.s_pk)):
            crypto.check_public(key, name, **state.where("advertise", msg.silo))
    state.adverts[msg.silo] = msg


def close_advertise(state: ServerState) -> tuple[AdvertiseKeys, ...]:
    """Close stage 0; returns the adverts to relay to every silo (U1)."""
    _need(state, len(state.adverts), "advertise", "too few silos advertised keys")
    state.stage = "share"
    return tuple(state.adverts[s] for s in sorted(state.adverts))


def receive_shares(state: ServerState, msg: ShareKeys) -> None:
    """Stage 1: accept a silo's encrypted shares (addressed to neighbours in U1)."""
    _admit(state, msg, state.shares)
    if msg.silo not in state.adverts:
        raise UnknownSiloError(
            "shares from a silo that advertised no keys", **state.where("share", msg.silo)
        )
    neighbours = state.config.neighbours[msg.silo]  # O(degree) a message, not O(N)
    for recipient in msg.ciphertexts:
        if recipient not in neighbours or recipient not in state.adverts:
            raise UnknownSiloError(
                f"share addressed to {recipient!r}, not a neighbour that advertised keys",
                **state.where("share", msg.silo),
            )
    state.shares[msg.silo] = msg


class Deliveries(Mapping[str, tuple[EncryptedShare, ...]]):
    """The encrypted shares to deliver, per recipient in U2 (in sender order), built when one
    is looked up: a request needs one recipient's N shares, not all N^2."""

    def __init__(self, config: RoundConfig, shares: Mapping[str, ShareKeys]) -> None:
        self._config = config
        self._shares = dict(shares)
        self._order = sorted(self._shares)

    def __getitem__(self, recipient: str) -> tuple[EncryptedShare, ...]:
        if recipient not in self._shares:
            raise KeyError(recipient)
        cfg = self._config
        return tuple(
            EncryptedShare(cfg.run_id, cfg.round_num, sender, recipient, blob)
            for sender in self._order
            if (blob := self._shares[sender].ciphertexts.get(recipient)) is not None
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)


def close_shares(state: ServerState) -> Deliveries:
    """Close stage 1 (U2 fixed); returns the encrypted shares to deliver, per recipient."""
    _need(state, len(state.shares), "share", "too few silos shared keys")
    state.stage = "masked"
    state.total = np.zeros(state.config.dim, dtype=dtype_for(state.config.bits))
    return Deliveries(state.config, state.shares)


def receive_masked(state: ServerState, msg: MaskedInput) -> None:
    """Stage 2: check a masked vector and add it to the running sum."""
    cfg = state.config
    expected = dtype_for(cfg.bits)
    if msg.vector.shape != (cfg.dim,) or msg.vector.dtype != expected:
        raise VectorShapeError(
            f"masked vector has shape {msg.vector.shape} and dtype {msg.vector.dtype}; the round "
            f"expects ({cfg.dim},) {expected}",
            **state.where("masked", msg.silo),
        )
    _admit(state, msg, dict.fromkeys(state.submitted))
    if msg.silo not in state.shares:
        raise UnknownSiloError(
            "masked input from a silo that shared no keys", **state.where("masked", msg.silo)
        )
    assert state.total is not None  # allocated when stage 1 closed; _admit checked the stage
    np.add(state.total, msg.vector, out=state.total)
    state.submitted.append(msg.silo)


def replay_masked(state: ServerState, silo: str, vector: np.ndarray | None) -> None:
    """Replay a masked input accepted (checked) earlier. With `vector` None only the sender
    is recorded, which spares loading and summing every stored vector on each request; the
    state can then do everything but :func:`finalize`."""
    if state.stage != "masked" or state.total is None or silo in state.submitted:
        raise LateMessageError("replayed masked input out of order", **state.where("masked", silo))
    if vector is None:
        state.partial_total = True
    else:
        np.add(state.total, vector, out=state.total)
    state.submitted.append(silo)


def close_masked(state: ServerState) -> tuple[str, ...]:
    """Close stage 2; returns the survivor list U3 (to be signed if consistency is checked)."""
    _need(state, len(state.submitted), "masked", "too few silos sent masked inputs")
    state.survivors = tuple(sorted(state.submitted))
    state.stage = "consistency" if state.config.consistency_check else "unmask"
    return state.survivors


def receive_consistency(state: ServerState, msg: ConsistencySignature) -> None:
    """Stage 3: accept a survivor's signature on U3."""
    _admit(state, msg, state.consistency)
    if msg.silo not in state.survivors or tuple(sorted(msg.survivors)) != state.survivors:
        raise MessageFormatError(
            "signed survivor list differs from U3", **state.where("consistency", msg.silo)
        )
    state.consistency[msg.silo] = msg.signature


def unmask_requests(
    state: ServerState, dropped: tuple[str, ...] | None = None
) -> dict[str, UnmaskRequest]:
    """Open stage 4; returns one request per survivor.

    Parameters
    ----------
    state
        After :func:`close_masked` (and enough consistency signatures, if enabled).
    dropped
        The silos whose masks must be recovered; defaults to U2 \\ U3. Naming a silo whose
        masked input was received is refused: its mask key plus its self-mask seed would
        reveal its input.
    """
    stage = "unmask"
    if state.stage not in ("consistency", "unmask"):
        raise LateMessageError(f"cannot unmask at stage {state.stage!r}", **state.where(stage))
    dropped = state.dropped if dropped is None else tuple(sorted(dropped))
    for silo in dropped:
        if silo in state.submitted:
            raise UnmaskRefusedError(
                "this silo submitted its masked input; asking for its mask-key shares would "
                "reveal its update. Only silos that shared keys but sent nothing are dropped",
                **state.where(stage, silo),
            )
        if silo not in state.shares:
            raise UnknownSiloError("dropped silo never shared keys", **state.where(stage, silo))
    if state.config.consistency_check:
        _need(state, len(state.consistency), stage, "too few survivors signed the survivor list")
    state.stage = stage
    cfg = state.config
    return {
        s: UnmaskRequest(cfg.run_id, cfg.round_num, s, state.survivors, dropped, state.consistency)
        for s in state.survivors
    }


def receive_unmask(state: ServerState, msg: UnmaskResponse) -> None:
    """Stage 4: accept a survivor's shares; refuse any that could expose an individual input."""
    _admit(state, msg, state.responses)
    where = state.where("unmask", msg.silo)
    if msg.silo not in state.survivors:
        raise UnknownSiloError("unmasking response from a silo that is not a survivor", **where)
    survivors, dropped, _ = state._unmask_sets()
    if not msg.b_shares.keys() <= survivors or not msg.s_shares.keys() <= dropped:
        raise UnmaskRefusedError(
            "response mixes self-mask shares of dropped silos or mask-key shares of survivors; "
            "accepting them could expose an individual input",
            **where,
        )
    index = state.config.index(msg.silo)
    for raw in (*msg.b_shares.values(), *msg.s_shares.values()):
        if shamir.Share.from_bytes(raw).index != index:
            raise MessageFormatError("share carries another holder's index", **where)
    state.responses[msg.silo] = msg


def _gather(state: ServerState, silo: str, kind: str) -> list[shamir.Share]:
    out = []
    for response in state.responses.values():
        raw = (response.b_shares if kind == "b" else response.s_shares).get(silo)
        if raw is not None:
            out.append(shamir.Share.from_bytes(raw))
    return out


def _reconstruct(state: ServerState, silo: str, kind: str, commitment: bytes | None) -> bytes:
    cfg = state.config
    shares = _gather(state, silo, kind)
    what = "self-mask seed" if kind == "b" else "mask key of dropped silo"
    _need(state, len(shares), "unmask", f"too few survivors revealed shares of the {what}", silo)
    context = ("b", cfg.run_id, cfg.round_num, silo)
    try:
        return shamir.reconstruct(shares, cfg.threshold, commitment, context)
    except ReconstructionError as exc:
        raise ReconstructionError(str(exc), **state.where("unmask", silo)) from exc


def finalize(state: ServerState) -> np.ndarray:
    """Remove all masks and return the survivors' quantized sum modulo 2^k.

    Raises
    ------
    InsufficientSharesError
        If some survivor's seed or dropped silo's key has fewer than t revealed shares.
    ReconstructionError
        If a reconstructed secret contradicts its commitment (a survivor sent a bad share).
    """
    cfg = state.config
    if state.stage != "unmask" or state.total is None:
        raise LateMessageError(f"cannot finalize at stage {state.stage!r}", **state.where("unmask"))
    if state.partial_total:
        raise LateMessageError(
            "masked inputs were replayed without their vectors; the sum is incomplete",
            **state.where("unmask"),
        )
    total = state.total.copy()
    for silo in state.survivors:
        seed = _reconstruct(state, silo, "b", state.shares[silo].b_commitment)
        add_mask(total, seed, -1)
    for gone in state.dropped:
        raw = _reconstruct(state, gone, "s", None)
        key = crypto.x25519_private_from_bytes(raw)
        if crypto.x25519_public_bytes(key) != state.adverts[gone].s_pk:
            raise ReconstructionError(
                "reconstructed mask key does not match the advertised public key",
                **state.where("unmask", gone),
            )
        for silo in state.survivors:
            if silo in state.shares[gone].ciphertexts:
                try:
                    seed = pair_seed(key, state.adverts[silo].s_pk, cfg, gone, silo)
                except MessageFormatError as exc:  # a key stored before adverts were checked
                    why = f"its advertised s_pk is unusable ({exc.__cause__})"
                    raise MessageFormatError(why, **state.where("unmask", silo)) from exc
                # the survivor added +PRG when the dropped silo sorts after it: undo that
                add_mask(total, seed, -1 if cfg.index(gone) > cfg.index(silo) else +1)
    return total
