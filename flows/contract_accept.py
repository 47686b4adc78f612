"""``fedsilo silo accept-contract``: the silo operator reviews and accepts a published contract.

It fetches the version (the latest, the pinned one, or ``--version``) over the silo's signed
channel, checks its sha256 and the coordinator's signature, shows the signer's fingerprint
(trusted from the first acceptance on) and what the version changes from the last one accepted
here, asks, and records the acceptance in the silo's workspace (`silos.contract_store`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from schemas.contract_registry import PublishedContract, fingerprint
from schemas.contracts.loader import Contract
from silos import contract_store
from silos.config import SiloConfig, load_silo_config

EXIT_ACCEPTED = 0
EXIT_DECLINED = 1


def fetch_published(config: SiloConfig, version: str | None) -> PublishedContract:
    """The published contract of `config` (the version asked, else the pin, else the latest).

    Raises ContractError when the service has none or cannot be reached."""
    from silos.agent import make_client  # the agent's signed client (imports Prefect)

    client = make_client(config, retry_for_s=15)
    try:
        return contract_store.fetch(
            client, config.data.contract, version or config.data.contract_version
        )
    finally:
        client.close()


def signer_line(config: SiloConfig, pc: PublishedContract) -> str:
    """Who signed `pc`, and whether this silo already trusts that key."""
    if contract_store.trusted_signer(config) is None:
        return (
            f"signer {fingerprint(pc.signer)}: not trusted here yet; accepting pins it. Compare it "
            "with the fingerprint the coordinator gives you (`fedsilo contract show`)."
        )
    return f"signer {fingerprint(pc.signer)} (the federation's pinned contract signer)"


def accept_contract(
    config_path: Path,
    version: str | None,
    *,
    yes: bool,
    say: Callable[[str], None],
    confirm: Callable[[str], bool],
) -> int:
    """Review and accept a published contract version at this silo.

    Returns
    -------
    int
        0 accepted (or accepted before), 1 the operator said no.

    Raises
    ------
    SiloConfigError, ContractError
        silo.toml is invalid; the contract cannot be fetched, fails its checks, or is signed
        by another key than the pinned one.
    """
    config = load_silo_config(config_path)
    pc = fetch_published(config, version)
    contract = contract_store.verify(config, pc)
    say(f"contract {pc.name} version {pc.version} of federation {pc.federation}")
    say(f"  sha256 {pc.sha256}, published {pc.published_at.isoformat(timespec='seconds')}")
    say("  " + signer_line(config, pc))
    done = next(
        (r for r in contract_store.accepted(config, pc.name) if r.version == pc.version), None
    )
    if done is not None and done.sha256 == pc.sha256:
        say(f"already accepted here on {done.accepted_at} ({done.by})")
        return EXIT_ACCEPTED
    _show_changes(config, contract, say)
    pin = config.data.contract_version
    if pin is not None and pin != pc.version:
        say(
            f"note: {config.source} pins version {pin}; the agent takes only runs on {pin} until "
            "you change the pin"
        )
    if not yes and not confirm(f"accept contract {pc.name} version {pc.version}?"):
        say("not accepted: the agent declines runs on this version")
        return EXIT_DECLINED
    contract_store.accept(config, pc, by="fedsilo silo accept-contract")
    say(
        f"accepted {pc.name} version {pc.version} (recorded in "
        f"{contract_store.store_dir(config) / pc.name / 'accepted.json'})"
    )
    return EXIT_ACCEPTED


def _show_changes(config: SiloConfig, contract: Contract, say: Callable[[str], None]) -> None:
    last = contract_store.last_accepted(config, contract.name)
    lines = contract_store.changes_from_last(config, contract)
    heading = f"changes from version {last.version}" if last else "first version accepted here"
    say(f"{heading}:" if lines else f"{heading}: none (the same rules)")
    for line in lines:
        say(f"  {line}")
