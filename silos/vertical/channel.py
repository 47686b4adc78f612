"""Authenticated, encrypted channel between two parties of a vertical run.

Protocol: every party holds an X25519 key pair whose public half the federation registers
(as silo keys are). For a pair (a, b) both sides derive the same 32-byte key:
HKDF-SHA256(X25519(own secret, peer public), salt = run id, info = "fedsilo vertical v1|" +
the two party names in sorted order). A message is the JSON of a `schemas.vertical` model,
encrypted with ChaCha20-Poly1305 under a fresh random 12-byte nonce; the envelope header
(run, sender, recipient, seq, nonce) is the associated data, so a relay can neither read nor
alter nor redirect a message, and `seq` (one up per direction) refuses a replay. A flipped
bit anywhere, or a message sealed with another key, fails the tag and is refused naming the
sender.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ValidationError

from schemas.vertical import Envelope, Sealed, VerticalMessage, frame, unframe


class ChannelError(ValueError):
    """A message refused: wrong key, tampered, replayed or misaddressed; names the party."""


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def pair_key(run: str, own: str, own_key: X25519PrivateKey, peer: str, peer_pub: bytes) -> bytes:
    shared = own_key.exchange(X25519PublicKey.from_public_bytes(peer_pub))
    names = "|".join(sorted((own, peer)))
    return HKDF(hashes.SHA256(), 32, run.encode(), f"fedsilo vertical v1|{names}".encode()).derive(
        shared
    )


@dataclass
class Channel:
    """One party's end of its channels to every peer in one run."""

    run: str
    party: str
    key: X25519PrivateKey
    peers: dict[str, bytes]  # peer name -> X25519 public key
    _aead: dict[str, ChaCha20Poly1305] = field(default_factory=dict, repr=False)
    _sent: dict[str, int] = field(default_factory=dict, repr=False)
    _seen: dict[str, int] = field(default_factory=dict, repr=False)

    def _cipher(self, peer: str) -> ChaCha20Poly1305:
        if peer not in self.peers:
            raise ChannelError(f"party {peer!r} is not a member of vertical run {self.run!r}")
        if peer not in self._aead:
            k = pair_key(self.run, self.party, self.key, peer, self.peers[peer])
            self._aead[peer] = ChaCha20Poly1305(k)
        return self._aead[peer]

    def seal(self, recipient: str, message: BaseModel) -> bytes:
        seq = self._sent.get(recipient, 0) + 1
        self._sent[recipient] = seq
        shell = Sealed(
            run=self.run,
            sender=self.party,
            recipient=recipient,
            seq=seq,
            nonce=os.urandom(12),
            body=b"",
        )
        body = self._cipher(recipient).encrypt(
            shell.nonce, message.model_dump_json().encode(), shell.header()
        )
        return frame(shell.model_copy(update={"body": body}))

    def open(self, data: bytes) -> VerticalMessage:
        try:
            sealed = unframe(data)
        except ValueError as exc:
            raise ChannelError(f"{self.party!r} refused a frame: {exc}") from exc
        who = sealed.sender
        if sealed.run != self.run or sealed.recipient != self.party:
            raise ChannelError(
                f"{self.party!r} refused a message from party {who!r}: "
                f"addressed to {sealed.recipient!r} in run {sealed.run!r}"
            )
        try:
            plain = self._cipher(who).decrypt(sealed.nonce, sealed.body, sealed.header())
        except InvalidTag:
            raise ChannelError(
                f"{self.party!r} refused a message from party {who!r} "
                f"(seq {sealed.seq}): authentication failed, tampered or "
                "sealed with another key"
            ) from None
        if sealed.seq <= self._seen.get(who, 0):
            raise ChannelError(
                f"{self.party!r} refused a replayed message from party {who!r} (seq {sealed.seq})"
            )
        self._seen[who] = sealed.seq
        try:
            message = Envelope.model_validate_json(b'{"message":' + plain + b"}").message
        except ValidationError as exc:
            raise ChannelError(
                f"{self.party!r} refused a malformed message from party "
                f"{who!r}: {exc.errors()[0]['msg']}"
            ) from exc
        if message.sender != who or message.run != self.run:
            raise ChannelError(
                f"{self.party!r} refused a message from party {who!r} that "
                f"claims sender {message.sender!r}"
            )
        return message


def channels(run: str, parties: list[str]) -> dict[str, Channel]:
    """Fresh keys and channels for every party (tests, benchmarks, the in-process relay)."""
    keys = {p: X25519PrivateKey.generate() for p in parties}
    pubs = {p: public_bytes(k) for p, k in keys.items()}
    return {p: Channel(run, p, keys[p], {q: pubs[q] for q in parties if q != p}) for p in parties}
