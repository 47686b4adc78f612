"""The federation's published data contracts: publish, read, and pin a run's version.

A federation owns its contracts: the coordinator publishes each version's exact TOML text signed
with its contract key; the first key to publish in a federation is pinned and any other is
refused (rotating it is not implemented: a new key means a new federation for now). A version,
once published, never changes: the same text again is answered as before, another text under
the same name and version is a conflict. The hub reads a run's contract from here (the version
pinned in its spec), never from the installed package.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from aggregation.service.db import Base
from aggregation.service.exceptions import Conflict, InvalidPayload, NotFound
from aggregation.service.federations import get_federation
from aggregation.service.tables import utcnow
from schemas.contract_registry import (
    ContractPublish,
    PublishedContract,
    check_integrity,
    fingerprint,
    version_key,
)
from schemas.contracts.loader import Contract, ContractError, load_contract_text
from schemas.specs import RunSpec

PUBLISH_HINT = "fedsilo contract publish FILE --federation {federation}"


class PublishedContractRow(Base):
    __tablename__ = "published_contracts"
    __table_args__ = (
        UniqueConstraint("federation", "name", "version", name="uq_published_contract"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    federation: Mapped[str] = mapped_column(ForeignKey("federations.name"))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    toml: Mapped[str] = mapped_column(Text)
    signer: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    published_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def published_out(row: PublishedContractRow) -> PublishedContract:
    return PublishedContract(
        federation=row.federation,
        name=row.name,
        version=row.version,
        sha256=row.sha256,
        toml=row.toml,
        signer=row.signer,
        signature=row.signature,
        published_at=row.published_at,
    )


def _pinned_signer(s: Session, federation: str) -> str | None:
    """The key of the federation's first published contract: the only one it accepts."""
    return s.scalar(
        select(PublishedContractRow.signer)
        .where(PublishedContractRow.federation == federation)
        .order_by(PublishedContractRow.id)
        .limit(1)
    )


def _check_body(federation: str, body: ContractPublish) -> Contract:
    """Parse and authenticate a publication (InvalidPayload naming what is wrong)."""
    label = f"contract {body.name!r} version {body.version}"
    try:
        contract = load_contract_text(body.toml, source=f"{label} (as published)")
        check_integrity(
            federation, body.name, body.version, body.toml, body.sha256, body.signer, body.signature
        )
    except ContractError as exc:
        raise InvalidPayload(str(exc)) from exc
    if (contract.name, contract.version) != (body.name, body.version):
        raise InvalidPayload(
            f"{label}: the TOML says name = {contract.name!r}, version = {contract.version!r}"
        )
    return contract


def publish(
    s: Session, federation: str, body: ContractPublish
) -> tuple[PublishedContractRow, bool]:
    """Store a signed contract version; returns (row, published now).

    Raises
    ------
    InvalidPayload
        The TOML does not parse (naming line or key), or its sha256 or signature is wrong.
    Conflict
        Another key than the federation's pinned signer, or another text under a published
        name and version.
    """
    get_federation(s, federation)
    _check_body(federation, body)
    pinned = _pinned_signer(s, federation)
    if pinned is not None and pinned != body.signer:
        raise Conflict(
            f"federation {federation!r} accepts contracts signed by {fingerprint(pinned)}; this "
            f"one is signed by {fingerprint(body.signer)}. Publish with the federation's "
            "contract key (rotating the key is not supported)"
        )
    existing = find(s, federation, body.name, body.version)
    if existing is not None:
        if existing.sha256 != body.sha256:
            raise Conflict(
                f"contract {body.name!r} version {body.version} is already published in "
                f"{federation!r} with sha256 {existing.sha256[:12]}; a published version never "
                "changes: bump `version` in the TOML and publish again"
            )
        return existing, False
    row = PublishedContractRow(
        federation=federation,
        name=body.name,
        version=body.version,
        sha256=body.sha256,
        toml=body.toml,
        signer=body.signer,
        signature=body.signature,
    )
    s.add(row)
    s.flush()
    return row, True


def find(s: Session, federation: str, name: str, version: str) -> PublishedContractRow | None:
    return s.scalar(
        select(PublishedContractRow).where(
            PublishedContractRow.federation == federation,
            PublishedContractRow.name == name,
            PublishedContractRow.version == version,
        )
    )


def list_published(s: Session, federation: str) -> list[PublishedContractRow]:
    get_federation(s, federation)
    rows = s.scalars(
        select(PublishedContractRow).where(PublishedContractRow.federation == federation)
    )
    return sorted(rows, key=lambda r: (r.name, version_key(r.version)))


def latest(s: Session, federation: str, name: str) -> PublishedContractRow | None:
    rows = s.scalars(
        select(PublishedContractRow).where(
            PublishedContractRow.federation == federation, PublishedContractRow.name == name
        )
    )
    return max(rows, key=lambda r: version_key(r.version), default=None)


def get(s: Session, federation: str, name: str, version: str | None) -> PublishedContractRow:
    """One published version (the latest when `version` is None), else NotFound."""
    get_federation(s, federation)
    row = latest(s, federation, name) if version is None else find(s, federation, name, version)
    if row is None:
        what = f"contract {name!r}" + (f" version {version}" if version else "")
        raise NotFound(
            f"{what} is not published in federation {federation!r}; publish it with "
            f"`{PUBLISH_HINT.format(federation=federation)}`"
        )
    return row


def needs_contract_at_hub(spec: RunSpec) -> bool:
    """Whether the service itself reads the run's contract (statistics, secure-hist)."""
    secure_hist = spec.trees is not None and spec.trees.secure_hist is not None
    return spec.federation_statistics or secure_hist


def pin_run_contract(s: Session, spec: RunSpec) -> RunSpec:
    """The spec to store for a new run: its contract version checked, or the latest pinned.

    A run naming a version that is not published is refused, as is a run without a version
    when nothing is published under its dataset and the service needs the contract itself.
    A run without a version whose contract nobody published stays unpinned (silos then use
    the contract they accepted locally).

    Raises
    ------
    Conflict
        Naming the contract, the federation and the command that publishes it.
    """
    hint = PUBLISH_HINT.format(federation=spec.federation)
    if spec.contract_version is not None:
        if find(s, spec.federation, spec.dataset, spec.contract_version) is None:
            raise Conflict(
                f"contract {spec.dataset!r} version {spec.contract_version} is not published in "
                f"federation {spec.federation!r}; publish it first: `{hint}`"
            )
        return spec
    row = latest(s, spec.federation, spec.dataset)
    if row is not None:
        return spec.model_copy(update={"contract_version": row.version})
    if needs_contract_at_hub(spec):
        raise Conflict(
            f"contract {spec.dataset!r} is not published in federation {spec.federation!r}, "
            f"and this run needs it at the service; publish it first: `{hint}`"
        )
    return spec


def pinned_sha256(s: Session, spec: RunSpec) -> str | None:
    """The sha256 of the published contract text a run pinned, for its ledger entry."""
    if spec.contract_version is None:
        return None
    row = find(s, spec.federation, spec.dataset, spec.contract_version)
    return row.sha256 if row is not None else None


def round_contract(rnd: object, spec: RunSpec) -> Contract:
    """`run_contract` through the session a round row was read with."""
    s = Session.object_session(rnd)
    assert s is not None  # rows reach the engines through a session
    return run_contract(s, spec)


def run_contract(s: Session, spec: RunSpec) -> Contract:
    """The parsed published contract a run pinned (InvalidPayload when it has none)."""
    if spec.contract_version is None:
        raise InvalidPayload(
            f"run of dataset {spec.dataset!r} pinned no published contract; publish it with "
            f"`{PUBLISH_HINT.format(federation=spec.federation)}` and start a new run"
        )
    row = find(s, spec.federation, spec.dataset, spec.contract_version)
    if row is None:  # published rows are never deleted; a restore from an older backup
        raise InvalidPayload(
            f"contract {spec.dataset!r} version {spec.contract_version} of the run is no longer "
            f"published in {spec.federation!r}"
        )
    try:
        return load_contract_text(row.toml, source=f"{row.name} {row.version} (published)")
    except ContractError as exc:
        raise InvalidPayload(str(exc)) from exc
