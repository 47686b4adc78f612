"""Silos with published contracts for tests: silo.toml writers, enrolment through the silo's own
key, publishing a contract text, and accepting a shipped contract offline (for tests whose
service is a fake at the process edge). Imported by tests, not a fixture module."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flows.service_client import CoordinatorClient
from schemas.contract_registry import PublishedContract, sign_contract
from schemas.contracts.loader import CONTRACTS_DIR
from silos import contract_store
from silos.agent import make_client
from silos.client import SiloClient
from silos.config import load_silo_config
from support.live_service import TEST_CONTRACT_KEY, write_silo_key

HEART = (CONTRACTS_DIR / "heart_disease.toml").read_text(encoding="utf-8")


def with_version(text: str, version: str, **changes: str) -> str:
    """`text` as another version; `changes` replace the first ``key = `` line's value."""
    assert 'version = "1.0.0"' in text
    text = text.replace('version = "1.0.0"', f'version = "{version}"', 1)
    for key, value in changes.items():
        head, sep, rest = text.partition(f"\n{key} = ")
        assert sep, key
        text = head + sep + value + "\n" + rest.split("\n", 1)[1]
    return text


def write_silo_toml(
    folder: Path,
    url: str,
    *,
    federation: str,
    name: str = "cleveland",
    pin: str | None = None,
    draft: str | None = None,
    prefect_url: str | None = None,
) -> Path:
    """A silo.toml for `data.csv` under the `heart_disease` contract, optionally pinned to a
    version or pointing at a local draft."""
    folder.mkdir(parents=True, exist_ok=True)
    extra = (f'contract_version = "{pin}"\n' if pin else "") + (
        f'contract_path = "{draft}"\n' if draft else ""
    )
    prefect = f'\n[prefect]\napi_url = "{prefect_url}"\n' if prefect_url else ""
    path = folder / "silo.toml"
    path.write_text(
        f'[silo]\nname = "{name}"\nfederation = "{federation}"\n\n'
        f'[data]\npath = "data.csv"\ncontract = "heart_disease"\n{extra}\n'
        f'[service]\nurls = ["{url}"]\n{prefect}\n'
        '[policy]\nallowed_models = ["logreg", "mlp"]\n',
        encoding="utf-8",
    )
    return path


def enrol(config_path: Path, coord: CoordinatorClient) -> SiloClient:
    """Enrol the silo with the key its agent uses and approve it."""
    config = load_silo_config(config_path)
    write_silo_key(config.key_path, config.silo.name)  # a name has one key on a hub
    client = make_client(config, retry_for_s=10)
    client.enrol()
    coord.approve(config.silo.federation, config.silo.name)
    return client


def publish(
    coord: CoordinatorClient, federation: str, text: str, key: Ed25519PrivateKey = TEST_CONTRACT_KEY
) -> PublishedContract:
    _, body = sign_contract(key, federation, text, source="test")
    return coord.publish_contract(federation, body)[0]


def signed_offline(
    federation: str, text: str = HEART, key: Ed25519PrivateKey = TEST_CONTRACT_KEY
) -> PublishedContract:
    """What the service would hand out for `text`, built without one."""
    _, body = sign_contract(key, federation, text, source="test")
    return PublishedContract(
        **body.model_dump(), federation=federation, published_at=datetime.now(UTC)
    )


def accept_shipped(config_path: Path, text: str = HEART) -> None:
    """Accept a contract text at the silo as its operator would, without a service."""
    config = load_silo_config(config_path)
    pc = signed_offline(config.silo.federation, text)
    contract_store.accept(config, pc, by="test")
