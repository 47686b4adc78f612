"""Published data contracts: the federation's own versions of its tables' rules.

The coordinator publishes a contract's exact TOML text to the service, signed with its
contract-signing key (Ed25519); the service pins the first signer of each federation and keeps
every published version. A silo fetches a version, checks the sha256 of the text and the
signature against the signer it trusts (`verify_published`), and only then parses it.

What the signature covers (`contract_signing_payload`): a domain tag and the federation, name,
version and sha256 of the TOML bytes, each length-prefixed (`schemas.lineage_crypto`'s field
encoding), so a signature for one federation, name or version never verifies for another.
"""

from __future__ import annotations

import hashlib
import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field

from schemas.contracts.loader import Contract, ContractError, load_contract_text
from schemas.lineage_crypto import encode_fields, verify_signature
from schemas.wire import NAME_PATTERN, TEXT_PATTERN, Message, UtcDatetime

__all__ = [
    "CONTRACT_VERSION_PATTERN",
    "ContractPublish",
    "PublishedContract",
    "check_contract_name",
    "check_publishable",
    "contract_sha256",
    "contract_signing_payload",
    "fingerprint",
    "sign_contract",
    "version_key",
    "verify_published",
]

_DOMAIN = b"fedsilo/contract/publish/v1\x00"
_HEX64 = r"^[0-9a-f]{64}$"
_SIG = r"^[0-9a-f]{128}$"
# MAJOR[.MINOR[.PATCH]] with an optional -prerelease: what "latest" is ordered by.
CONTRACT_VERSION_PATTERN = r"^[0-9]{1,9}(\.[0-9]{1,9}){0,2}(-[0-9A-Za-z.]{1,32})?$"
_VERSION = re.compile(CONTRACT_VERSION_PATTERN)
MAX_CONTRACT_BYTES = 1_000_000


class ContractPublish(Message):
    """What the coordinator sends to publish a contract (the service reads name and version
    from the TOML itself and checks they match)."""

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=CONTRACT_VERSION_PATTERN)
    sha256: str = Field(pattern=_HEX64)
    toml: str = Field(max_length=MAX_CONTRACT_BYTES, pattern=TEXT_PATTERN)
    signer: str = Field(pattern=_HEX64, description="hex of the raw Ed25519 public key")
    signature: str = Field(pattern=_SIG)


class PublishedContract(ContractPublish):
    """A contract version as the service holds it, for coordinators and silos."""

    federation: str = Field(pattern=NAME_PATTERN)
    published_at: UtcDatetime


def contract_sha256(toml: str) -> str:
    """Hex sha256 of the contract's exact UTF-8 text: what silos compare and the ledger holds."""
    return hashlib.sha256(toml.encode("utf-8")).hexdigest()


def contract_signing_payload(federation: str, name: str, version: str, sha256: str) -> bytes:
    """The exact bytes the coordinator's contract key signs for one published version."""
    return encode_fields(_DOMAIN, [federation, name, version, sha256])


def fingerprint(signer_hex: str) -> str:
    """A short, comparable name for a signing key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(bytes.fromhex(signer_hex)).hexdigest()[:16]


def version_key(version: str) -> tuple[tuple[int, ...], int, str]:
    """Sort key of a contract version: numeric parts, then a release after its prereleases."""
    match = _VERSION.match(version)
    if match is None:
        raise ContractError(
            f"contract version {version!r} is not MAJOR[.MINOR[.PATCH]][-PRERELEASE], e.g. 1.2.0"
        )
    core, _, pre = version.partition("-")
    numbers = tuple(int(p) for p in core.split("."))
    return numbers + (0,) * (3 - len(numbers)), 0 if pre else 1, pre


def check_publishable(contract: Contract, source: str) -> None:
    """Raise ContractError, naming `source`, unless the service takes the contract's name and
    version (the rules of `ContractPublish`; a silo.toml names the contract by the same rule)."""
    check_contract_name(contract.name, source)
    try:
        version_key(contract.version)
    except ContractError as exc:
        raise ContractError(f"{source}: {exc}") from exc


def check_contract_name(name: str, source: str = "") -> None:
    """Raise ContractError unless `name` is a name the service and a silo.toml accept."""
    if re.fullmatch(NAME_PATTERN, name) is None:
        where = f"{source}: " if source else ""
        suggestion = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:64] or "my_table"
        raise ContractError(
            f"{where}contract name {name!r} is not accepted by the service: use up to 64 "
            f"letters, digits, '_', '.' or '-', starting with a letter or digit, e.g. "
            f"{suggestion!r}"
        )


def check_integrity(
    federation: str, name: str, version: str, toml: str, sha256: str, signer: str, signature: str
) -> None:
    """Raise ContractError unless `toml` hashes to `sha256` and `signature` is `signer`'s."""
    label = f"contract {name!r} version {version}"
    if contract_sha256(toml) != sha256:
        raise ContractError(
            f"{label}: the text's sha256 is {contract_sha256(toml)}, not the published "
            f"{sha256}; it was altered after signing"
        )
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer))
    except ValueError as exc:
        raise ContractError(f"{label}: signer {signer!r} is not an Ed25519 public key") from exc
    payload = contract_signing_payload(federation, name, version, sha256)
    if not verify_signature(key, signature, payload):
        raise ContractError(
            f"{label}: the signature does not verify for signer {fingerprint(signer)} in "
            f"federation {federation!r}"
        )


def sign_contract(
    key: Ed25519PrivateKey, federation: str, toml: str, source: str
) -> tuple[Contract, ContractPublish]:
    """Parse `toml` (errors name `source`) and sign it for `federation`.

    Raises
    ------
    ContractError
        The text does not parse or its version is not MAJOR[.MINOR[.PATCH]][-PRERELEASE].
    """
    contract = load_contract_text(toml, source=source)
    check_publishable(contract, source)
    sha = contract_sha256(toml)
    payload = contract_signing_payload(federation, contract.name, contract.version, sha)
    body = ContractPublish(
        name=contract.name,
        version=contract.version,
        sha256=sha,
        toml=toml,
        signer=key.public_key().public_bytes_raw().hex(),
        signature=key.sign(payload).hex(),
    )
    return contract, body


def verify_published(pc: PublishedContract, trusted_signer_hex: str) -> Contract:
    """Check a fetched contract against the signer the silo trusts, then parse it.

    Raises
    ------
    ContractError
        Naming the contract and version: another signer than the trusted one, a sha256 or
        signature that does not match, a text that does not parse, or a text whose own name or
        version differs from the published ones.
    """
    if pc.signer != trusted_signer_hex:
        raise ContractError(
            f"contract {pc.name!r} version {pc.version} is signed by {fingerprint(pc.signer)}, "
            f"not by the trusted signer {fingerprint(trusted_signer_hex)}"
        )
    check_integrity(pc.federation, pc.name, pc.version, pc.toml, pc.sha256, pc.signer, pc.signature)
    contract = load_contract_text(pc.toml, source=f"{pc.name} {pc.version} (published)")
    if (contract.name, contract.version) != (pc.name, pc.version):
        raise ContractError(
            f"contract {pc.name!r} version {pc.version} (published) holds a text for "
            f"{contract.name!r} version {contract.version}"
        )
    return contract
