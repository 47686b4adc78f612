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


# what a workspace holds once it has worked under a key: the key's signatures are in them
_SIGNED_TRACES = ("privacy/signed", "lineage/records.jsonl")  # the marker: a signed budget


def load_silo_key(path: Path, workspace: Path) -> Ed25519PrivateKey:
    """The silo's key (`load_or_create_key`), except that a missing key is not created anew
    for a workspace that already worked under one: a new key is a new identity, which the
    service refuses for an enrolled silo and under which the signed privacy budget no longer
    verifies, so it would only lead to a reset that forgets the rounds spent.

    Raises
    ------
    SiloConfigError
        The key is missing although the workspace holds files signed under a key.
    """
    if not path.exists():
        traces = [str(workspace / t) for t in _SIGNED_TRACES if (workspace / t).exists()]
        if traces:
            raise SiloConfigError(
                f"the silo's identity key {path} is missing, but its workspace has worked "
                f"under a key ({', '.join(traces)}): restore the key file from a backup; a "
                "new key would be a new identity (the service refuses it for an enrolled "
                "silo, and the signed privacy budget would no longer verify)"
            )
    return load_or_create_key(path)
