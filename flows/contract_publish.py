"""The coordinator's side of published contracts: its signing key, publishing, and reading the
version a run uses.

The contract-signing key is an Ed25519 key in a PEM file beside the coordinator's admin token
(``contract_ed25519.pem``), created mode 0600 on first use. The service pins the first key that
publishes in a federation, so keep the file: another key is refused there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flows.service_client import CoordinatorClient
from schemas.contract_registry import PublishedContract, check_publishable, sign_contract
from schemas.contracts.loader import Contract, ContractError, load_contract, load_contract_text
from silos.client_errors import NotFound

KEY_FILE_NAME = "contract_ed25519.pem"
log = logging.getLogger("fedsilo.coordinator")


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The contract-signing key in `path`, created (0600) when the file does not exist.

    Raises
    ------
    ContractError
        The file exists but does not hold an unencrypted Ed25519 PEM key, or others can read it.
    """
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return key
    if path.stat().st_mode & 0o077:
        raise ContractError(
            f"contract signing key {path} can be read by other users; `chmod 600 {path}`"
        )
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ContractError(f"{path} does not hold an unencrypted PEM private key: {exc}") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ContractError(f"{path} holds a {type(loaded).__name__}, not an Ed25519 key")
    return loaded


def read_contract_text(path: Path) -> str:
    """The exact text of a contract file (what gets hashed and signed), less a leading
    byte-order mark (Notepad, PowerShell 5 save one)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ContractError(f"cannot read data contract {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ContractError(f"{path}: not UTF-8 text: {exc}") from exc


def publish_file(
    client: CoordinatorClient, federation: str, path: Path, key_path: Path
) -> tuple[PublishedContract, bool]:
    """Check `path` locally (errors name the file and line or key), sign it, publish it.

    Returns the published version and whether it is new (False: the identical text was
    published before).
    """
    text = read_contract_text(path)
    # a bad file, name or version fails before a key is made
    check_publishable(load_contract_text(text, source=str(path)), str(path))
    _, body = sign_contract(load_or_create_key(key_path), federation, text, source=str(path))
    return client.publish_contract(federation, body)


def run_contract(
    client: CoordinatorClient, federation: str, dataset: str, version: str | None = None
) -> PublishedContract:
    """The published contract a run uses: `version`, or the latest when None.

    The service answers NotFound naming `fedsilo contract publish` when there is none.
    """
    return client.contract(federation, dataset, version)


def resolve_run_contract(
    client: CoordinatorClient, federation: str, dataset: str
) -> tuple[Contract, str]:
    """The contract a new run trains under and the published version to pin in its spec: the
    federation's latest published version of `dataset`.

    The coordinator never reads the package's contracts: silos fetch the published version
    anyway, so a run on an unpublished contract could only fail at round 1. ContractError
    naming `fedsilo contract publish` (and `contract example` when one of that name ships).
    """
    try:
        pc = client.contract(federation, dataset)
    except NotFound as exc:
        if all(f.name != federation for f in client.federations()):
            raise  # no such federation: the service's 404 says so (exit 3), not "unpublished"
        raise ContractError(unpublished_message(federation, dataset)) from exc
    return parse_published(pc), pc.version


def unpublished_message(federation: str, dataset: str) -> str:
    """Why a run cannot start on `dataset`, and the commands that fix it."""
    fix = f"publish it first: `fedsilo contract publish FILE --federation {federation}`"
    try:
        load_contract(dataset)
    except ContractError:
        pass
    else:  # only to point at the example; the run never uses the package's copy
        fix += (
            f" (fedsilo ships an example of that name: `fedsilo contract example {dataset} "
            f"-o {dataset}.toml`)"
        )
    return f"federation {federation!r} has not published a contract {dataset!r}; {fix}"


def parse_published(pc: PublishedContract) -> Contract:
    """Parse a published contract the coordinator fetched over its authenticated channel."""
    return load_contract_text(pc.toml, source=f"{pc.name} {pc.version} (published)")
