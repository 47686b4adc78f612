"""Protocol messages: frozen dataclasses that serialize to bytes without pickle.

Wire format (version 1): ``b"FSA1"`` + 4-byte big-endian header length + UTF-8 JSON header
(``{"kind": ..., fields...}``; bytes as hex) + raw payload. Only :class:`MaskedInput` has a
payload: the masked vector as little-endian unsigned integers, so 10^6 parameters cost 4 MB, not
a JSON list. Every message a silo sends carries an Ed25519 signature over :meth:`body` bound to
(run, round, stage, silo); the service relays :class:`EncryptedShare`, authenticated by AES-GCM.
"""

from __future__ import annotations

import hashlib
import json
import struct
import typing
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, ClassVar, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.secagg import crypto
from schemas.secagg.exceptions import MessageFormatError, WrongRoundError
from schemas.secagg.prg import DTYPES

MAGIC = b"FSA1"
M = TypeVar("M", bound="Message")
S = TypeVar("S", bound="Signed")


@dataclass(frozen=True)
class Message:
    """Common fields and codec of all protocol messages."""

    stage: ClassVar[str] = ""
    run_id: str
    round_num: int
    silo: str

    def body(self) -> bytes:
        """Bytes that the signature covers besides (run, round, stage, silo)."""
        return b""

    def to_bytes(self) -> bytes:
        """Serialize (see module docstring for the format)."""
        header: dict[str, object] = {"kind": type(self).__name__}
        payload = b""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                header[f.name] = {"dtype": value.dtype.str, "length": int(value.size)}
                payload = np.ascontiguousarray(value).tobytes()
            elif isinstance(value, bytes):
                header[f.name] = value.hex()
            elif isinstance(value, dict):
                header[f.name] = {k: v.hex() for k, v in value.items()}
            elif isinstance(value, tuple):
                header[f.name] = list(value)
            else:
                header[f.name] = value
        raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        return MAGIC + struct.pack(">I", len(raw)) + raw + payload

    @classmethod
    def from_bytes(cls: type[M], data: bytes) -> M:
        """Parse bytes produced by :meth:`to_bytes` of this class.

        Raises
        ------
        MessageFormatError
            On a wrong magic, kind, missing field, bad hex or a payload of the wrong size.
        """
        try:
            if data[:4] != MAGIC:
                raise ValueError("not a fedsilo secagg v1 message")
            (size,) = struct.unpack(">I", data[4:8])
            header = json.loads(data[8 : 8 + size])
            if header.pop("kind") != cls.__name__:
                raise ValueError(f"expected a {cls.__name__}")
            hints = _hints(cls)
            payload = memoryview(data)[8 + size :]  # a view: no copy of a 4 MB vector per field
            kwargs: dict[str, Any] = {
                f.name: _decode(hints[f.name], header[f.name], payload)
                for f in fields(cls)
                if f.name in header or f.default is MISSING  # an older sender's message
            }
            return cls(**kwargs)
        except (ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
            raise MessageFormatError(f"cannot decode {cls.__name__}: {exc}") from exc
        except RecursionError as exc:  # a header nested deeper than any real message
            raise MessageFormatError(f"cannot decode {cls.__name__}: nested too deeply") from exc

    def check_round(self, run_id: str, round_num: int) -> None:
        """Raise WrongRoundError unless this message belongs to (run_id, round_num)."""
        if (self.run_id, self.round_num) != (run_id, round_num):
            raise WrongRoundError(
                f"{type(self).__name__} is for run {self.run_id} round {self.round_num}, "
                f"expected run {run_id} round {round_num}: stale or replayed, discard it",
                run_id=run_id,
                round_num=round_num,
                stage=self.stage,
                silo=self.silo,
            )


_HINTS: dict[str, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """Field types of a message class, resolved once (that costs more than parsing one)."""
    if cls.__name__ not in _HINTS:
        _HINTS[cls.__name__] = typing.get_type_hints(cls)
    return _HINTS[cls.__name__]


def _decode(hint: Any, value: Any, payload: memoryview) -> Any:
    if hint is bytes:
        return bytes.fromhex(value)
    if hint is np.ndarray:
        dtype = np.dtype(value["dtype"])
        if dtype not in DTYPES.values():
            raise ValueError(f"vector dtype {dtype} is not <u4 or <u8")
        length = value["length"]
        if len(payload) != length * dtype.itemsize:
            raise ValueError(f"payload has {len(payload)} bytes for {length} x {dtype}")
        return np.frombuffer(payload, dtype=dtype).copy()
    origin = typing.get_origin(hint)
    if origin is dict:
        return {str(k): bytes.fromhex(v) for k, v in value.items()}
    if origin is tuple:
        return tuple(str(v) for v in value)
    if hint in (str, int) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise ValueError(f"expected {hint}, got {value!r}")
    if hint == int | None and value is not None:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**31:
            raise ValueError(f"expected a row count or null, got {value!r}")
    return value


def _items(mapping: dict[str, bytes]) -> list[bytes | str]:
    out: list[bytes | str] = []
    for key in sorted(mapping):
        out += [key, mapping[key]]
    return out


@dataclass(frozen=True)
class Signed(Message):
    """A message signed by its sender's identity key."""

    signature: bytes

    def signing_context(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "round_num": self.round_num,
            "stage": self.stage,
            "silo": self.silo,
        }

    def verify(self, identity_public: bytes) -> None:
        """Raise SignatureError unless signed by ``identity_public`` for this exact context."""
        crypto.verify(identity_public, self.signature, body=self.body(), **self.signing_context())

    @classmethod
    def create(cls: type[S], identity: Ed25519PrivateKey, **values: Any) -> S:
        """Build the message and sign it with ``identity``."""
        unsigned = cls(signature=b"", **values)
        signature = crypto.sign(identity, body=unsigned.body(), **unsigned.signing_context())
        return cls(signature=signature, **values)


@dataclass(frozen=True)
class AdvertiseKeys(Signed):
    """Stage 0: a silo's two fresh X25519 public keys (c: share encryption, s: masks), and
    the row count its update will be weighted by, under a signature of its own.

    The count lets every silo compute the weights n_k / N itself instead of taking them from
    the service (which could weight one silo's update near-alone). It is signed apart from
    the keys (stage ``advertise_count``) so that adverts stay readable both ways across
    versions: an older silo verifies the keys' signature and ignores the count; an advert
    from an older silo has no count (``n_examples`` None).
    """

    stage: ClassVar[str] = "advertise"
    c_pk: bytes
    s_pk: bytes
    n_examples: int | None = None
    count_signature: bytes = b""

    def body(self) -> bytes:
        return crypto.transcript(self.c_pk, self.s_pk)

    def count_body(self) -> bytes:
        return crypto.transcript(self.c_pk, self.s_pk, self.n_examples or 0)

    def counted(self, identity: Ed25519PrivateKey, n_examples: int) -> AdvertiseKeys:
        """This advert with `n_examples` signed by `identity`."""
        with_count = replace(self, n_examples=n_examples)
        signature = crypto.sign(identity, body=with_count.count_body(), **self._count_context())
        return replace(with_count, count_signature=signature)

    def verify_count(self, identity_public: bytes) -> None:
        """Raise SignatureError unless the count (when there is one) is signed by its silo."""
        if self.n_examples is not None:
            crypto.verify(
                identity_public,
                self.count_signature,
                body=self.count_body(),
                **self._count_context(),
            )

    def _count_context(self) -> dict[str, Any]:
        return self.signing_context() | {"stage": "advertise_count"}


@dataclass(frozen=True)
class ShareKeys(Signed):
    """Stage 1: encrypted shares for each neighbour, and a commitment to the self-mask seed."""

    stage: ClassVar[str] = "share"
    b_commitment: bytes
    ciphertexts: dict[str, bytes]

    def body(self) -> bytes:
        return crypto.transcript(self.b_commitment, *_items(self.ciphertexts))


@dataclass(frozen=True)
class EncryptedShare(Message):
    """Stage 1, relayed by the service: one ciphertext from ``silo`` to ``recipient``."""

    stage: ClassVar[str] = "share"
    recipient: str
    ciphertext: bytes


@dataclass(frozen=True)
class MaskedInput(Signed):
    """Stage 2: the masked quantized vector (signature covers its SHA-256)."""

    stage: ClassVar[str] = "masked"
    vector: np.ndarray

    def body(self) -> bytes:
        v = np.ascontiguousarray(self.vector)
        return crypto.transcript(v.dtype.str, v.size, hashlib.sha256(v.data).digest())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MaskedInput) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class ConsistencySignature(Signed):
    """Stage 3: a survivor's signature on the survivor list the service announced."""

    stage: ClassVar[str] = "consistency"
    survivors: tuple[str, ...]

    def body(self) -> bytes:
        return crypto.transcript(*sorted(self.survivors))


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Stage 4, from the service (``silo`` is the addressed survivor): which shares to reveal."""

    stage: ClassVar[str] = "unmask"
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    consistency: dict[str, bytes]


@dataclass(frozen=True)
class UnmaskResponse(Signed):
    """Stage 4: shares of b for survivors and of s_sk for dropped silos (encoded Shares)."""

    stage: ClassVar[str] = "unmask"
    b_shares: dict[str, bytes]
    s_shares: dict[str, bytes]

    def body(self) -> bytes:
        return crypto.transcript("b", *_items(self.b_shares), "s", *_items(self.s_shares))
