"""Save and restore a silo's :class:`ClientState` so an agent restart mid-round loses nothing.

The bytes contain the round's X25519 private keys, the self-mask seed and the shares held for
others: the silo agent must write them only to its own workspace (file mode 0600) and delete
them when the round ends. The long-term identity key is not included; it is passed back in.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.secagg import crypto, shamir
from schemas.secagg.config import RoundConfig
from schemas.secagg.exceptions import MessageFormatError
from schemas.secagg.messages import AdvertiseKeys
from silos.secagg.client import ClientState

FORMAT = "fedsilo-secagg-client-state/1"


def dump_state(state: ClientState) -> bytes:
    """Serialize ``state`` (secrets included) to JSON bytes."""
    doc = {
        "format": FORMAT,
        "config": state.config.to_dict(),
        "silo": state.silo,
        "roster_keys": {s: k.hex() for s, k in state.roster_keys.items()},
        "c_key": crypto.x25519_private_bytes(state.c_key).hex(),
        "s_key": crypto.x25519_private_bytes(state.s_key).hex(),
        "stage": state.stage,
        "self_seed": state.self_seed.hex(),
        "peers": {s: m.to_bytes().hex() for s, m in state.peers.items()},
        "held_b": {s: sh.to_bytes().hex() for s, sh in state.held_b.items()},
        "held_s": {s: sh.to_bytes().hex() for s, sh in state.held_s.items()},
        "signed_survivors": state.signed_survivors,
        "revealed_b": sorted(state.revealed_b),
        "revealed_s": sorted(state.revealed_s),
    }
    return json.dumps(doc, sort_keys=True).encode()


def load_state(raw: bytes, identity: Ed25519PrivateKey) -> ClientState:
    """Inverse of :func:`dump_state`; ``identity`` is the silo's long-term signing key.

    Raises
    ------
    MessageFormatError
        If ``raw`` is not a saved client state of this format.
    """
    try:
        doc = json.loads(raw)
        if doc.pop("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        survivors = doc["signed_survivors"]
        return ClientState(
            config=RoundConfig.from_dict(doc["config"]),
            silo=doc["silo"],
            identity=identity,
            roster_keys={s: bytes.fromhex(k) for s, k in doc["roster_keys"].items()},
            c_key=crypto.x25519_private_from_bytes(bytes.fromhex(doc["c_key"])),
            s_key=crypto.x25519_private_from_bytes(bytes.fromhex(doc["s_key"])),
            stage=doc["stage"],
            self_seed=bytes.fromhex(doc["self_seed"]),
            peers={s: AdvertiseKeys.from_bytes(bytes.fromhex(m)) for s, m in doc["peers"].items()},
            held_b={s: shamir.Share.from_bytes(bytes.fromhex(v)) for s, v in doc["held_b"].items()},
            held_s={s: shamir.Share.from_bytes(bytes.fromhex(v)) for s, v in doc["held_s"].items()},
            signed_survivors=None if survivors is None else tuple(survivors),
            revealed_b=set(doc["revealed_b"]),
            revealed_s=set(doc["revealed_s"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageFormatError(f"cannot load saved secagg client state: {exc}") from exc
