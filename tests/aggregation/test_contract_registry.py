"""Published contracts on a live service, SQLite and PostgreSQL: publish, republish, refusals,
the ledger entry, silo reads, and runs pinned to a published version."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from support.live_service import coordinator, enrolled_silo, service_in_thread

from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.contract_registry import (
    ContractPublish,
    PublishedContract,
    contract_sha256,
    contract_signing_payload,
    fingerprint,
    sign_contract,
    verify_published,
)
from schemas.contracts.loader import CONTRACTS_DIR, ContractError
from schemas.ledger_verify import verify_chain
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RunCreate
from silos.client_errors import Conflict, InvalidPayload, NotFound

HEART = (CONTRACTS_DIR / "heart_disease.toml").read_text(encoding="utf-8")
KEY = Ed25519PrivateKey.generate()


def with_version(text: str, version: str) -> str:
    assert 'version = "1.0.0"' in text
    return text.replace('version = "1.0.0"', f'version = "{version}"', 1)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def svc(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CoordinatorClient]:
    """One service per backend for the module; each test works in its own federation."""
    root = tmp_path_factory.mktemp("contracts")
    if request.param == "sqlite":
        url_cm: AbstractContextManager[str] = _const(f"sqlite:///{root / 'svc.db'}")
    else:
        factory: Callable[[], AbstractContextManager[str]] = request.getfixturevalue(
            "pg_database_factory"
        )
        url_cm = factory()
    with url_cm as db_url, service_in_thread(root / "svc", db_url) as url:
        client = coordinator(url)
        client.url = url  # type: ignore[attr-defined]  # for the silo clients
        yield client


class _const(AbstractContextManager[str]):
    def __init__(self, value: str) -> None:
        self.value = value

    def __enter__(self) -> str:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None


_counter = iter(range(10_000))


@pytest.fixture
def fed(svc: CoordinatorClient) -> str:
    name = f"f{next(_counter)}"
    svc.create_federation(name)
    return name


def publish(
    svc: CoordinatorClient, fed: str, text: str, key: Ed25519PrivateKey = KEY
) -> tuple[PublishedContract, bool]:
    _, body = sign_contract(key, fed, text, source="test")
    return svc.publish_contract(fed, body)


def published_entries(svc: CoordinatorClient, fed: str) -> list[dict[str, str]]:
    payloads = [json.loads(e.payload) for e in svc.ledger() if e.kind == "contract_published"]
    return [p for p in payloads if p["federation"] == fed]


def test_publish_lists_reads_and_ledgers_the_contract(svc: CoordinatorClient, fed: str) -> None:
    pc, new = publish(svc, fed, HEART)
    assert new and pc.name == "heart_disease" and pc.version == "1.0.0"
    assert pc.sha256 == contract_sha256(HEART) and pc.toml == HEART
    assert [(c.name, c.version) for c in svc.contracts(fed)] == [("heart_disease", "1.0.0")]
    assert svc.contract(fed, "heart_disease").sha256 == pc.sha256
    assert svc.contract(fed, "heart_disease", "1.0.0").toml == HEART
    contract = verify_published(pc, KEY.public_key().public_bytes_raw().hex())
    assert contract.target.column == "num"
    # a silo of the federation reads it by signed request; its federation is its identity
    silo = enrolled_silo(svc.url, svc, fed, "a")  # type: ignore[attr-defined]
    got = PublishedContract.model_validate_json(
        silo.request("GET", "/v1/silo/contracts/heart_disease/1.0.0").content
    )
    assert got == pc
    latest = silo.request("GET", "/v1/silo/contracts/heart_disease").json()
    assert latest["version"] == "1.0.0"
    mine = published_entries(svc, fed)
    assert len(mine) == 1
    assert mine[0]["sha256"] == pc.sha256 and mine[0]["signer"] == pc.signer
    assert mine[0]["name"] == "heart_disease" and mine[0]["version"] == "1.0.0"
    keys = {
        k: Ed25519PublicKey.from_public_bytes(bytes.fromhex(v))
        for k, v in svc.ledger_keys().items()
    }
    assert verify_chain(svc.ledger(), keys).ok


def test_identical_republish_is_idempotent(svc: CoordinatorClient, fed: str) -> None:
    first, new = publish(svc, fed, HEART)
    again, new_again = publish(svc, fed, HEART)
    assert new and not new_again and again == first
    assert len(published_entries(svc, fed)) == 1


def test_other_text_under_a_published_version_is_refused(svc: CoordinatorClient, fed: str) -> None:
    publish(svc, fed, HEART)
    changed = HEART.replace("min_rows = ", "min_rows = 1", 1)
    assert changed != HEART
    with pytest.raises(Conflict) as err:
        publish(svc, fed, changed)
    assert "'heart_disease' version 1.0.0 is already published" in err.value.detail
    assert svc.contract(fed, "heart_disease").toml == HEART


def test_latest_is_by_semantic_version(svc: CoordinatorClient, fed: str) -> None:
    for version in ("1.2.0", "1.10.0", "1.10.0-rc1", "1.9"):
        publish(svc, fed, with_version(HEART, version))
    assert svc.contract(fed, "heart_disease").version == "1.10.0"
    assert [c.version for c in svc.contracts(fed)] == ["1.2.0", "1.9", "1.10.0-rc1", "1.10.0"]
    with pytest.raises(NotFound) as err:
        svc.contract(fed, "heart_disease", "2.0.0")
    assert "fedsilo contract publish FILE --federation" in err.value.detail


def _raw_body(
    fed: str, text: str, name: str = "heart_disease", version: str = "1.0.0"
) -> ContractPublish:
    sha = contract_sha256(text)
    return ContractPublish(
        name=name,
        version=version,
        sha256=sha,
        toml=text,
        signer=KEY.public_key().public_bytes_raw().hex(),
        signature=KEY.sign(contract_signing_payload(fed, name, version, sha)).hex(),
    )


def test_bad_toml_is_refused_naming_the_line(svc: CoordinatorClient, fed: str) -> None:
    broken = HEART.replace('name = "heart_disease"', 'name = "heart_disease', 1)
    with pytest.raises(ContractError):  # refused locally before any request
        sign_contract(KEY, fed, broken, source="heart.toml")
    with pytest.raises(InvalidPayload) as err:
        svc.publish_contract(fed, _raw_body(fed, broken))
    line = HEART.splitlines().index('name = "heart_disease"') + 1
    assert "TOML syntax error" in err.value.detail and f"line {line}," in err.value.detail
    unknown_type = HEART.replace('type = "numeric"', 'type = "number"', 1)
    with pytest.raises(InvalidPayload) as err:
        svc.publish_contract(fed, _raw_body(fed, unknown_type))
    assert "column 'id'" in err.value.detail and "type" in err.value.detail
    assert svc.contracts(fed) == []


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('name = "x"\nversion = "1.0.0"\ncolumns = [1]\n', "column '?' (columns[0])"),
        ('name = "x"\nz = ' + "[" * 2000 + "]" * 2000 + "\n", "TOML nested too deeply"),
    ],
)
def test_odd_toml_is_refused_not_a_crash(
    svc: CoordinatorClient, fed: str, toml: str, says: str
) -> None:
    """A column that is not a table, arrays nested past the recursion limit: each was a 500."""
    with pytest.raises(InvalidPayload) as err:
        svc.publish_contract(fed, _raw_body(fed, toml, name="x"))
    assert "contract 'x' version 1.0.0" in err.value.detail and says in err.value.detail
    assert svc.contracts(fed) == []


def test_wrong_signature_and_hash_are_refused(svc: CoordinatorClient, fed: str) -> None:
    body = _raw_body(fed, HEART)
    other_fed = body.model_copy(
        update={
            "signature": KEY.sign(
                contract_signing_payload("other", "heart_disease", "1.0.0", body.sha256)
            ).hex()
        }
    )
    with pytest.raises(InvalidPayload) as err:
        svc.publish_contract(fed, other_fed)
    assert "signature does not verify" in err.value.detail and "1.0.0" in err.value.detail
    tampered = body.model_copy(update={"toml": HEART + "\n# edited after signing\n"})
    with pytest.raises(InvalidPayload) as err:
        svc.publish_contract(fed, tampered)
    assert "altered after signing" in err.value.detail
    assert svc.contracts(fed) == []


def test_another_signer_is_refused_naming_both_keys(svc: CoordinatorClient, fed: str) -> None:
    first, _ = publish(svc, fed, HEART)
    intruder = Ed25519PrivateKey.generate()
    with pytest.raises(Conflict) as err:
        publish(svc, fed, with_version(HEART, "1.1.0"), key=intruder)
    intruder_hex = intruder.public_key().public_bytes_raw().hex()
    assert fingerprint(first.signer) in err.value.detail
    assert fingerprint(intruder_hex) in err.value.detail
    assert [c.version for c in svc.contracts(fed)] == ["1.0.0"]


def _spec(fed: str, **kw: object) -> RunSpec:
    return RunSpec(
        federation=fed,
        dataset="heart_disease",
        model=ModelSpec(kind="logreg", n_features=3),
        min_silos=1,
        secure_aggregation=SecureAggregationSpec(enabled=kw.pop("secure", False)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def initial_params() -> dict[str, np.ndarray]:
    return {
        n: np.zeros(s, np.float32) for n, s in param_shapes(ModelSpec(kind="logreg", n_features=3))
    }


def test_runs_use_only_published_versions(svc: CoordinatorClient, fed: str) -> None:
    enrolled_silo(svc.url, svc, fed, "a")  # type: ignore[attr-defined]
    with pytest.raises(Conflict) as err:
        svc.create_run(RunCreate(spec=_spec(fed, contract_version="1.0.0")))
    assert "'heart_disease' version 1.0.0 is not published" in err.value.detail
    assert f"fedsilo contract publish FILE --federation {fed}" in err.value.detail
    with pytest.raises(Conflict) as err:  # the service reads this run's contract itself
        svc.create_run(RunCreate(spec=_spec(fed, federation_statistics=True, secure=True)))
    assert "needs it at the service" in err.value.detail
    publish(svc, fed, HEART)
    publish(svc, fed, with_version(HEART, "1.1.0"))
    pinned = svc.create_run(RunCreate(spec=_spec(fed)))
    assert pinned.spec.contract_version == "1.1.0"  # the latest, pinned at creation
    chosen = svc.create_run(RunCreate(spec=_spec(fed, contract_version="1.0.0")))
    assert chosen.spec.contract_version == "1.0.0"
    # the ledger ties the run to the exact contract text it trains under
    svc.put_initial_model(chosen.run_id, tensors.encode(initial_params()))
    svc.start_run(chosen.run_id)
    started = [e for e in svc.ledger(run_id=chosen.run_id) if e.kind == "run_started"]
    assert json.loads(started[0].payload)["contract_sha256"] == contract_sha256(HEART)


def test_unknown_federation_is_not_found(svc: CoordinatorClient, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as err:
        publish(svc, "nosuch", HEART)
    assert "federation 'nosuch' does not exist" in err.value.detail
