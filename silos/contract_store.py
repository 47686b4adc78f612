"""The data contracts this silo's operator accepted, kept in the silo's workspace.

The federation publishes its contracts on the service, signed by the coordinator's contract key
(`schemas.contract_registry`). A silo trains only under a version its operator accepted: with
``fedsilo silo accept-contract`` (which shows what changed from the last accepted version), or
in advance with a pin in silo.toml (``[data] contract_version``). Layout::

    workspace/contracts/signer.json              the trusted contract signer (hex key, fingerprint)
    workspace/contracts/{name}/{version}.toml    the exact published text of each accepted version
    workspace/contracts/{name}/accepted.json     who accepted which version, when, its sha256

The signer is trusted on first acceptance (its fingerprint is shown, for the operator to compare
with the coordinator's); afterwards a version signed by another key is refused. A stored text
whose sha256 no longer matches its record is refused as well.

Every reader of the contract at the silo (data loading, the validation gate, warm-up, the
statistics and secure-hist rounds) calls `contract_for(config)`: the version the config names
(a pin, or the run's version the agent bound with `bind_run`), else the last one accepted.
"""

from __future__ import annotations

import getpass
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from schemas.contract_diff import diff_contracts
from schemas.contract_registry import (
    PublishedContract,
    contract_sha256,
    fingerprint,
    verify_published,
)
from schemas.contracts.loader import Contract, ContractError, load_contract_text
from schemas.url_path import seg
from silos.client import SiloClient
from silos.client_errors import ClientError
from silos.config import SiloConfig
from silos.files import private_dir, write_private

log = logging.getLogger("fedsilo.silo")


class ContractNotAccepted(ContractError):
    """The run (or the reader) needs a contract version this silo's operator has not accepted."""


@dataclass(frozen=True)
class Acceptance:
    """One accepted version: what, its text's sha256, whose signature, who accepted it, when."""

    version: str
    sha256: str
    signer: str
    accepted_at: str
    by: str


def store_dir(config: SiloConfig) -> Path:
    return config.workspace / "contracts"


def accept_command(config: SiloConfig, version: str) -> str:
    """The command an operator runs to accept `version` (quoted in declines and logs)."""
    where = config.source or "silo.toml"
    return f"fedsilo silo accept-contract --config {where} --version {version}"


def fetch(client: SiloClient, name: str, version: str | None = None) -> PublishedContract:
    """The federation's published contract `name` (its latest version when `version` is None),
    unverified: pass it to `verify` or `accept`.

    Raises
    ------
    ContractError
        The service has no such contract or version, or cannot be reached.
    """
    path = f"/v1/silo/contracts/{seg(name)}" + (f"/{seg(version)}" if version else "")
    what = f"contract {name!r}" + (f" version {version}" if version else "")
    try:
        return PublishedContract.model_validate_json(client.request("GET", path).content)
    except ClientError as exc:
        raise ContractError(f"cannot fetch {what} from the service: {exc}") from exc


def trusted_signer(config: SiloConfig) -> str | None:
    """The contract signer this silo pinned on its first acceptance (hex), or None."""
    path = store_dir(config) / "signer.json"
    return str(json.loads(path.read_text())["signer"]) if path.is_file() else None


def verify(config: SiloConfig, pc: PublishedContract) -> Contract:
    """Check the text's sha256 and signature (against the pinned signer, or, before the first
    acceptance, the one it names) and parse it. Raises ContractError naming what is wrong."""
    if pc.federation != config.silo.federation:
        raise ContractError(
            f"contract {pc.name!r} version {pc.version} was published in federation "
            f"{pc.federation!r}, not in this silo's {config.silo.federation!r}"
        )
    return verify_published(pc, trusted_signer(config) or pc.signer)


def accepted(config: SiloConfig, name: str) -> list[Acceptance]:
    """Every accepted version of contract `name`, in the order they were accepted."""
    path = store_dir(config) / name / "accepted.json"
    if not path.is_file():
        return []
    return [Acceptance(**row) for row in json.loads(path.read_text())]


def last_accepted(config: SiloConfig, name: str) -> Acceptance | None:
    rows = accepted(config, name)
    return rows[-1] if rows else None


def accept(config: SiloConfig, pc: PublishedContract, *, by: str) -> Contract:
    """Verify `pc` and record that this silo accepted it (`by`: how, e.g. the command).

    Pins the signer when this is the silo's first acceptance. Accepting a version again is a
    no-op; the same version with another text is refused (a published version never changes).
    """
    contract = verify(config, pc)
    rows = accepted(config, pc.name)
    for row in rows:
        if row.version == pc.version:
            if row.sha256 != pc.sha256:
                raise ContractError(
                    f"contract {pc.name!r} version {pc.version} was accepted here with sha256 "
                    f"{row.sha256}; the service now offers a different text ({pc.sha256})"
                )
            return contract
    root = private_dir(store_dir(config))
    if trusted_signer(config) is None:
        signer = {"signer": pc.signer, "fingerprint": fingerprint(pc.signer), "pinned_at": _now()}
        write_private(root / "signer.json", json.dumps(signer, indent=2).encode())
    folder = private_dir(root / pc.name)
    write_private(folder / f"{pc.version}.toml", pc.toml.encode("utf-8"))
    who = f"{getpass.getuser()}: {by}"
    rows.append(Acceptance(pc.version, pc.sha256, pc.signer, _now(), who))
    write_private(
        folder / "accepted.json", json.dumps([asdict(r) for r in rows], indent=2).encode()
    )
    return contract


def accepted_contract(config: SiloConfig, name: str, version: str) -> Contract:
    """The accepted version `version` of contract `name`, read from the workspace.

    Raises
    ------
    ContractNotAccepted
        The operator has not accepted that version; the message names the command to do so.
    ContractError
        The stored text was altered since it was accepted, or no longer parses.
    """
    row = next((r for r in accepted(config, name) if r.version == version), None)
    if row is None and version == config.data.contract_version:
        raise ContractNotAccepted(
            f"silo {config.silo.name} pins contract {name!r} version {version} in "
            f"{config.source}, but has not fetched it yet: the agent fetches it once the "
            "federation has published it (`fedsilo contract publish`)"
        )
    if row is None:
        raise ContractNotAccepted(
            f"silo {config.silo.name} has not accepted version {version} of contract {name!r}; "
            f"review and accept it with `{accept_command(config, version)}`"
        )
    path = store_dir(config) / name / f"{version}.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ContractError(f"accepted contract {path} cannot be read: {exc}") from exc
    if contract_sha256(text) != row.sha256:
        raise ContractError(
            f"accepted contract {path} was altered after it was accepted (sha256 "
            f"{contract_sha256(text)}, accepted {row.sha256}); accept it again with "
            f"`{accept_command(config, version)}`"
        )
    return _parsed(text, str(path))


@lru_cache(maxsize=8)
def _parsed(text: str, source: str) -> Contract:
    """`load_contract_text`, remembered: the gate asks for the contract every round, and the
    TOML and the model's checks cost more than the rest of an unchanged round's gate. The
    text is still read and its sha256 checked against the acceptance every time; a Contract
    is frozen, so the one object can serve every round."""
    return load_contract_text(text, source=source)


def contract_for(config: SiloConfig) -> Contract:
    """The contract this silo works under now: the version `config` names (the pin in
    silo.toml, or the run's version bound by `bind_run`), else the last one accepted."""
    name = config.data.contract
    version = config.data.contract_version
    if version is None:
        last = last_accepted(config, name)
        if last is None:
            raise ContractNotAccepted(
                f"silo {config.silo.name} has accepted no version of contract {name!r} yet; "
                f"review and accept the published one with `fedsilo silo accept-contract "
                f"--config {config.source or 'silo.toml'}`, or pin one in silo.toml "
                "([data] contract_version)"
            )
        version = last.version
    return accepted_contract(config, name, version)


def ensure_pinned(client: SiloClient, config: SiloConfig) -> Contract | None:
    """Fetch and accept the version silo.toml pins when it is not stored yet (the pin is the
    operator's acceptance in advance); None without a pin."""
    pin = config.data.contract_version
    if pin is None:
        return None
    if any(r.version == pin for r in accepted(config, config.data.contract)):
        return accepted_contract(config, config.data.contract, pin)
    contract = accept(config, fetch(client, config.data.contract, pin), by="pin in silo.toml")
    log.info(
        "silo %s: accepted contract %s version %s as pinned in %s (signer %s)",
        config.silo.name,
        contract.name,
        pin,
        config.source,
        fingerprint(trusted_signer(config) or ""),
    )
    return contract


def changes_from_last(config: SiloConfig, offered: Contract) -> list[str]:
    """What `offered` changes from the last accepted version of its contract (diff lines)."""
    last = last_accepted(config, offered.name)
    previous = accepted_contract(config, offered.name, last.version) if last else None
    return diff_contracts(previous, offered)


def bind_run(client: SiloClient, config: SiloConfig, version: str | None) -> SiloConfig:
    """`config` bound to the run's contract version, once this silo accepted it.

    A version that is neither accepted nor pinned is refused (ContractNotAccepted, which the
    agent declines with cause "contract"); the log shows what it changes from the last
    accepted version. A run that names no version uses the pin, else the last accepted one.
    """
    name, pin = config.data.contract, config.data.contract_version
    if pin is not None and version not in (None, pin):
        raise ContractNotAccepted(
            f"silo {config.silo.name} pins contract {name!r} version {pin} in {config.source}; "
            f"the run uses version {version}: change the pin to accept it"
        )
    if pin is not None:
        ensure_pinned(client, config)
        return config
    last = last_accepted(config, name)
    version = version or (last.version if last else None)
    if version is None:
        contract_for(config)  # raises ContractNotAccepted with the command to run
    assert version is not None
    if not any(r.version == version for r in accepted(config, name)):
        _log_offer(config, fetch(client, name, version))
        accepted_contract(config, name, version)  # raises ContractNotAccepted
    data = config.data.model_copy(update={"contract_version": version})
    return config.model_copy(update={"data": data})


def check_at_start(client: SiloClient, config: SiloConfig) -> None:
    """At agent start: accept the pinned version, or tell the operator about a published
    version not accepted yet (with what it changes); a local draft is never trained on.
    Logs problems, never raises: the runs decline with the reason."""
    if config.data.contract_path is not None:
        log.warning(
            "silo %s: contract_path %s is a local draft, read only by `fedsilo silo check`; "
            "the agent trains only under a published version of %r this silo accepted",
            config.silo.name,
            config.data.contract_path,
            config.data.contract,
        )
    try:
        if ensure_pinned(client, config) is None:
            latest = fetch(client, config.data.contract)
            if not any(r.version == latest.version for r in accepted(config, latest.name)):
                _log_offer(config, latest)
    except ContractError as exc:
        log.warning("silo %s: %s", config.silo.name, exc)


def _log_offer(config: SiloConfig, pc: PublishedContract) -> None:
    try:
        lines = changes_from_last(config, verify(config, pc))
    except ContractError as exc:
        log.warning("silo %s: the run's contract cannot be verified: %s", config.silo.name, exc)
        return
    log.warning(
        "silo %s: contract %s version %s is not accepted here; what it changes:\n  %s\n"
        "accept it with `%s`",
        config.silo.name,
        pc.name,
        pc.version,
        "\n  ".join(lines) or "(nothing: same rules as the last accepted version)",
        accept_command(config, pc.version),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
