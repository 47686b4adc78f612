"""The service's own keys, kept in its workspace with 0600 permissions.

Ed25519 signs every ledger entry and receipt; processes that share one database (high
availability) must share this file too, so the ledger has one author key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

_Key = TypeVar("_Key", Ed25519PrivateKey, X25519PrivateKey)


def load_or_create_service_key(workspace: Path) -> Ed25519PrivateKey:
    """The Ed25519 key that signs the ledger and receipts."""
    path = workspace / "keys" / "service_ed25519.pem"
    return _load_or_create(path, Ed25519PrivateKey)  # type: ignore[type-abstract]


def load_or_create_seal_key(workspace: Path) -> X25519PrivateKey:
    """The X25519 key silos seal tree updates to (`schemas.sealed`).

    Processes sharing one database must share it too, like the signing key.
    """
    path = workspace / "keys" / "service_x25519.pem"
    return _load_or_create(path, X25519PrivateKey)  # type: ignore[type-abstract]


def _load_or_create(path: Path, kind: type[_Key]) -> _Key:
    """Read the PEM key at `path`, or create it (0600) if absent."""
    if path.exists():
        key = load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, kind):
            raise ValueError(f"{path} does not hold an {kind.__name__}")
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    new = kind.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another service process sharing the workspace won the race
        return _load_or_create(path, kind)
    with os.fdopen(fd, "wb") as fh:
        fh.write(new.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return new


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
