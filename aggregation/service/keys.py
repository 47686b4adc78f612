"""The service's own keys, kept in its workspace with 0600 permissions, or elsewhere.

Ed25519 signs every ledger entry, receipt and checkpoint; processes that share one database
(high availability) must share this key too, so the ledger has one author key.

The signing key need not live on the database host (`load_service_signer`): settings
``signing_key_file`` (``FEDSILO_SERVICE_SIGNING_KEY_FILE``, a PEM file readable by its owner
only) or ``signer`` (``FEDSILO_SERVICE_SIGNER=module:factory``, a hook to a PKCS#11 token or a
KMS: ``factory()`` returns an object with ``public_key_bytes() -> bytes`` (raw 32 bytes) and
``sign(message: bytes) -> bytes`` (raw 64-byte Ed25519 signature)). See infra/README.md.
"""

from __future__ import annotations

import importlib
import os
import stat
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

_Key = TypeVar("_Key", Ed25519PrivateKey, X25519PrivateKey)


class SigningKeyError(ValueError):
    """The service signing key (file or hook) cannot be used; the message says how to fix it."""


@runtime_checkable
class ServiceSigner(Protocol):
    """The service's signing key behind a hook (PKCS#11 token, KMS)."""

    def public_key_bytes(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


class KeySigner:
    """A `ServiceSigner` over an in-process Ed25519 key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def public_key_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def load_service_signer(
    workspace: Path, *, key_file: Path | None = None, hook: str = "", create: bool = True
) -> ServiceSigner:
    """The service's ledger signer: a hook, a key file, or the workspace key (in that order).

    Parameters
    ----------
    workspace
        The service workspace (default key: ``keys/service_ed25519.pem``, created if absent).
    key_file
        A PEM Ed25519 key kept off the database host; refused when group or others may read it.
    hook
        ``module:factory``; ``factory()`` returns a `ServiceSigner`. Its first signature is
        checked against its public key here, so a misconfigured token fails at start.
    create
        Whether a missing workspace key may be created: False once the ledger holds entries
        (they are signed by the key that went missing; a new one would fail every check).

    Raises
    ------
    SigningKeyError
        Unreadable, loosely permitted or wrong-type key file; a hook that cannot be imported
        or whose signatures do not verify; a missing workspace key that `create` forbids.
    """
    if hook:
        signer = _signer_from_hook(hook)
    elif key_file is not None:
        signer = KeySigner(_read_key_file(key_file))
    else:
        return KeySigner(load_or_create_service_key(workspace, create=create))
    _check_signer(signer, hook or str(key_file))
    return signer


def _read_key_file(path: Path) -> Ed25519PrivateKey:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SigningKeyError(f"service signing key file {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"service signing key file {path} has mode {stat.filemode(mode)}: group or others "
            f"may use it; run `chmod 600 {path}` (owner only) and start again"
        )
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"service signing key file {path} does not hold an Ed25519 key")
    return key


def _signer_from_hook(hook: str) -> ServiceSigner:
    module_name, _, factory_name = hook.partition(":")
    if not module_name or not factory_name:
        raise SigningKeyError(
            f"signer hook {hook!r} is not 'module:factory' (e.g. acme_hsm.fedsilo:make_signer)"
        )
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise SigningKeyError(f"signer hook {hook!r} cannot be loaded: {exc}") from exc
    signer = factory()
    if not isinstance(signer, ServiceSigner):
        raise SigningKeyError(
            f"signer hook {hook!r} returned {type(signer).__name__}, which lacks "
            "public_key_bytes() and sign(message)"
        )
    return signer


def _check_signer(signer: ServiceSigner, source: str) -> None:
    probe = b"fedsilo/service-signer-probe/v1"
    try:
        Ed25519PublicKey.from_public_bytes(signer.public_key_bytes()).verify(
            signer.sign(probe), probe
        )
    except (ValueError, InvalidSignature) as exc:
        raise SigningKeyError(
            f"service signer {source}: its signature does not verify with its public key "
            "(not an Ed25519 key, or the wrong key object)"
        ) from exc


def load_or_create_service_key(workspace: Path, *, create: bool = True) -> Ed25519PrivateKey:
    """The Ed25519 key that signs the ledger and receipts (created when absent and `create`)."""
    path = workspace / "keys" / "service_ed25519.pem"
    if not create and not path.exists():
        raise SigningKeyError(
            f"the service signing key {path} is missing, but the database's ledger already "
            "holds entries it signed: a new key would make every signature check fail. Put the "
            "key back (`fedsilo aggregator restore BACKUP`, or copy it from where it was "
            "kept), or point FEDSILO_SERVICE_SIGNING_KEY_FILE at it; the service "
            "does not create a new one"
        )
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
    os.chmod(path.parent, 0o700)  # mkdir's mode does not apply to a folder that existed
    new = kind.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another service process sharing the workspace won the race
        return _load_or_create(path, kind)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(new.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return new


def public_hex(key: Ed25519PrivateKey | ServiceSigner) -> str:
    """The raw public key in hex, for a key or a signer."""
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    return key.public_key_bytes().hex()
