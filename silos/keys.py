"""The silo's Ed25519 identity key: created on first start, stored with 0600 permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from silos.exceptions import SiloConfigError


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Load the silo's key, or create it (0600, parent 0700) when it does not exist yet.

    Refuses a key file that others can read: an identity key readable by other users of the
    silo's machine lets them impersonate the silo.
    """
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SiloConfigError(
                f"key file {path} has permissions {oct(mode)}; run `chmod 600 {path}` "
                "(other users must not read the silo's identity key)"
            )
        key = load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SiloConfigError(f"key file {path} does not hold an Ed25519 private key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key
