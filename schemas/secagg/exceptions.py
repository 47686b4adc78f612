"""Errors raised by the secure-aggregation protocol.

Every error names the run, round, stage and silo at fault (where known) and says what to do.

    SecAggError
    ├── SecAggConfigError          round parameters are inconsistent (t > n, bad k, ...)
    ├── InputError                 a silo's own update cannot be quantized (NaN, wrong shape)
    ├── MessageError               a protocol message is unacceptable
    │   ├── SignatureError         the Ed25519 signature does not verify (forged or altered)
    │   ├── WrongRoundError        the message belongs to another run, round or stage (replay)
    │   ├── DuplicateMessageError  a silo sent the same stage twice
    │   ├── LateMessageError       the stage was already closed when the message arrived
    │   ├── UnknownSiloError       the sender or recipient is not on the roster / not a neighbour
    │   ├── VectorShapeError       a masked vector has the wrong length or dtype
    │   ├── DecryptionError        an encrypted share fails AES-GCM authentication
    │   └── MessageFormatError     the bytes do not decode as the expected message
    ├── InsufficientSharesError    fewer than t shares / survivors: "needed t, got m"
    ├── ReconstructionError        a reconstructed secret does not match its commitment
    └── UnmaskRefusedError         an unmasking request would reveal a silo's own input
"""

from __future__ import annotations

from typing import TypedDict, Unpack


class Where(TypedDict, total=False):
    """Where an error happened; passed as keyword arguments to every error."""

    run_id: str | None
    round_num: int | None
    stage: str | None
    silo: str | None


class SecAggError(Exception):
    """Base class for secure-aggregation failures.

    Parameters
    ----------
    message
        What went wrong and how to fix it.
    run_id, round_num, stage, silo
        Where it went wrong; any of them may be unknown (None).
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        round_num: int | None = None,
        stage: str | None = None,
        silo: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.round_num = round_num
        self.stage = stage
        self.silo = silo
        where = [
            f"{name} {value}"
            for name, value in (
                ("run", run_id),
                ("round", round_num),
                ("stage", stage),
                ("silo", silo),
            )
            if value is not None
        ]
        prefix = f"[secagg {', '.join(where)}] " if where else "[secagg] "
        super().__init__(prefix + message)


class SecAggConfigError(SecAggError):
    """Round parameters are inconsistent (threshold, modulus bits, clip bound, graph degree)."""


class InputError(SecAggError):
    """A silo's own update cannot be quantized (non-finite values, wrong shape)."""


class MessageError(SecAggError):
    """A protocol message is unacceptable; the round can continue without it."""


class SignatureError(MessageError):
    """A message's Ed25519 signature does not verify under the sender's identity key."""


class WrongRoundError(MessageError):
    """A message is bound to another run, round or stage (stale or replayed)."""


class DuplicateMessageError(MessageError):
    """A silo sent a second message for a stage it already completed."""


class LateMessageError(MessageError):
    """A message arrived after the receiver closed its stage (too late to be counted)."""


class UnknownSiloError(MessageError):
    """A sender or recipient is not on the round's roster, or not a neighbour of the receiver."""


class VectorShapeError(MessageError):
    """A masked vector's length or dtype differs from the round's configuration."""


class DecryptionError(MessageError):
    """An encrypted share fails AES-GCM authentication (wrong key, tampered, or misrouted)."""


class MessageFormatError(MessageError):
    """Bytes that do not decode as the expected protocol message."""


class InsufficientSharesError(SecAggError):
    """Fewer than the threshold t of shares, keys or survivors are available.

    Attributes
    ----------
    needed, got
        The threshold and how many answered.
    """

    def __init__(self, message: str, *, needed: int, got: int, **where: Unpack[Where]) -> None:
        self.needed = needed
        self.got = got
        super().__init__(f"needed {needed}, got {got}: {message}", **where)


class ReconstructionError(SecAggError):
    """A secret reconstructed from shares does not match its commitment (bad or too few shares)."""


class UnmaskRefusedError(SecAggError):
    """An unmasking request asks for shares that would reveal an individual silo's input."""
