"""`fedsilo contract publish|list|show` against a real service over HTTP; a contract that does
not parse is refused before any request; the signing key is created 0600 beside the token."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.live_service import coordinator, free_port, service_in_thread
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.errors import NOT_FOUND, REFUSED, USAGE
from schemas.contract_registry import contract_sha256, verify_published
from schemas.contracts.loader import CONTRACTS_DIR

runner = CliRunner()
HEART = CONTRACTS_DIR / "heart_disease.toml"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One service for the module, its federation `heart`, and a token file for the CLI."""
    root = tmp_path_factory.mktemp("cli_contract")
    with service_in_thread(root / "svc", f"sqlite:///{root / 'svc.db'}") as url:
        coordinator(url).create_federation("heart")
        token_file = root / "coordinator" / "admin.token"
        token_file.parent.mkdir()
        token_file.write_text("test-admin-token\n")
        token_file.chmod(0o600)
        yield url, token_file


def cli(url: str, token_file: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(
        app, [*args, "--service-url", url, "--token-file", str(token_file)], catch_exceptions=False
    )
    return result.exit_code, result.output


def test_publish_list_show_through_the_service(service: tuple[str, Path], tmp_path: Path) -> None:
    url, token_file = service
    code, out = cli(url, token_file, "contract", "publish", str(HEART), "--federation", "heart")
    assert code == 0, out
    assert (
        f"heart_disease 1.0.0 published in heart: sha256 {contract_sha256(HEART.read_text())}"
        in (" ".join(out.split()))
    )
    key_file = token_file.parent / "contract_ed25519.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # created beside the token, private
    code, out = cli(url, token_file, "contract", "publish", str(HEART), "--federation", "heart")
    assert code == 0 and "already published" in out, out
    newer = tmp_path / "heart_v2.toml"
    newer.write_text(HEART.read_text().replace('version = "1.0.0"', 'version = "1.1.0"', 1))
    assert cli(url, token_file, "contract", "publish", str(newer), "--federation", "heart")[0] == 0
    code, out = cli(url, token_file, "contract", "list", "--federation", "heart", "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert [(r["name"], r["version"]) for r in rows] == [
        ("heart_disease", "1.0.0"),
        ("heart_disease", "1.1.0"),
    ]
    assert "toml" not in rows[0]
    code, out = cli(url, token_file, "contract", "show", "heart_disease", "--federation", "heart")
    assert code == 0 and out == newer.read_text()  # the latest, byte for byte
    code, out = cli(
        url,
        token_file,
        "contract",
        "show",
        "heart_disease",
        "--version",
        "1.0.0",
        "--federation",
        "heart",
    )
    assert code == 0 and out == HEART.read_text()
    # what the CLI published verifies against the key file's public key
    pc = coordinator(url).contract("heart", "heart_disease", "1.0.0")
    from flows.contract_publish import load_or_create_key

    signer = load_or_create_key(key_file).public_key().public_bytes_raw().hex()
    assert verify_published(pc, signer).version == "1.0.0"


def test_refusals_name_the_file_the_version_or_the_fix(
    service: tuple[str, Path], tmp_path: Path
) -> None:
    url, token_file = service
    broken = tmp_path / "broken.toml"
    broken.write_text(HEART.read_text().replace('name = "heart_disease"', "name = heart", 1))
    # refused locally: the address below answers nothing, and the error names file and line
    dead = f"http://127.0.0.1:{free_port()}"
    code, out = cli(dead, token_file, "contract", "publish", str(broken), "--federation", "heart")
    assert code == USAGE, out
    line = HEART.read_text().splitlines().index('name = "heart_disease"') + 1
    assert str(broken) in " ".join(out.split()) and f"line {line}," in out
    changed = tmp_path / "changed.toml"
    changed.write_text(HEART.read_text().replace("min_rows = ", "min_rows = 1", 1))
    code, out = cli(url, token_file, "contract", "publish", str(changed), "--federation", "heart")
    assert code == REFUSED and "version 1.0.0 is already published" in out, out
    example = runner.invoke(app, ["contract", "example", "nosuch"])
    assert example.exit_code == USAGE and "heart_disease" in example.output
    code, out = cli(url, token_file, "contract", "show", "nosuch", "--federation", "heart")
    assert code == NOT_FOUND and "fedsilo contract publish FILE --federation heart" in out, out


def test_a_byte_order_mark_is_neither_an_error_nor_published(tmp_path: Path) -> None:
    from flows.contract_publish import read_contract_text

    saved = tmp_path / "heart_disease.toml"
    saved.write_text(HEART.read_text(encoding="utf-8"), encoding="utf-8-sig")  # Notepad
    assert read_contract_text(saved) == HEART.read_text(encoding="utf-8")


def test_a_drafted_contract_publishes_as_written(service: tuple[str, Path], tmp_path: Path) -> None:
    """`contract draft` on a table that ships nowhere, then `publish`: the service holds the
    draft's exact bytes, and its task and classes come from the data."""
    url, token_file = service
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 120
    pd.DataFrame(
        {
            "age": rng.integers(20, 80, n),
            "bp": rng.normal(120, 15, n).round(1),
            "outcome": rng.choice(["low", "mid", "high"], n),
        }
    ).to_csv(tmp_path / "clinic.csv", index=False)
    draft = tmp_path / "clinic.toml"
    result = runner.invoke(
        app,
        ["contract", "draft", str(tmp_path / "clinic.csv"), "--target", "outcome"]
        + ["--task", "multiclass", "-o", str(draft)],
    )
    assert result.exit_code == 0, result.output
    code, out = cli(url, token_file, "contract", "publish", str(draft), "--federation", "heart")
    assert code == 0, out
    pc = coordinator(url).contract("heart", "clinic")
    assert pc.toml == draft.read_text()
    contract = verify_published(pc, pc.signer)
    assert contract.task == "multiclass" and set(contract.classes) == {"low", "mid", "high"}
    bad = runner.invoke(app, ["contract", "draft", str(tmp_path / "clinic.csv"), "--target", "x"])
    assert bad.exit_code == USAGE and "target column 'x'" in bad.output


def _sample(path: Path) -> Path:
    import pandas as pd

    rows = [{"age": 30 + i % 40, "bp": 100 + i % 30, "sick": i % 3 == 0} for i in range(60)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_draft_overwrites_neither_its_sample_nor_a_file_without_force(tmp_path: Path) -> None:
    sample = _sample(tmp_path / "train.csv")
    before = sample.read_bytes()
    draft = ["contract", "draft", str(sample), "--target", "sick"]
    for force in ([], ["--force"]):  # never, not even with --force
        same = runner.invoke(app, [*draft, "-o", str(sample), *force])
        assert same.exit_code == USAGE and f"{sample} is the data sample itself" in same.output
        assert sample.read_bytes() == before
    edited = tmp_path / "train.toml"
    edited.write_text("# the steward's edits\n")
    kept = runner.invoke(app, [*draft, "-o", str(edited)])
    assert kept.exit_code == USAGE and f"{edited} exists; pass --force" in kept.output
    assert edited.read_text() == "# the steward's edits\n"
    replaced = runner.invoke(app, [*draft, "-o", str(edited), "--force"])
    assert replaced.exit_code == 0 and edited.read_text().startswith("# Draft data contract")


def test_an_example_replaces_an_adapted_copy_only_with_force(tmp_path: Path) -> None:
    adapted = tmp_path / "heart_disease.toml"
    adapted.write_text("# our edits\n")
    example = ["contract", "example", "heart_disease", "-o", str(adapted)]
    kept = runner.invoke(app, example)
    assert kept.exit_code == USAGE and f"{adapted} exists; pass --force" in kept.output
    assert adapted.read_text() == "# our edits\n"
    replaced = runner.invoke(app, [*example, "--force"])
    assert replaced.exit_code == 0
    assert adapted.read_text() == (CONTRACTS_DIR / "heart_disease.toml").read_text()


def test_a_contract_name_the_service_refuses_is_named_before_any_key(tmp_path: Path) -> None:
    sample = _sample(tmp_path / "train.csv")
    draft = ["contract", "draft", str(sample), "--target", "sick", "--name", "Heart Disease v2"]
    result = runner.invoke(app, draft)
    assert result.exit_code == USAGE and "--name" in result.output
    assert "'Heart Disease v2' is not accepted by the service" in result.output
    named = tmp_path / "named.toml"  # a draft whose name was edited by hand
    ok = runner.invoke(app, [*draft[:-1], "heart", "-o", str(named)])
    assert ok.exit_code == 0, ok.output
    named.write_text(named.read_text().replace('name = "heart"', 'name = "Heart Disease v2"'))
    key = tmp_path / "contract_ed25519.pem"
    publish = ["contract", "publish", str(named), "--federation", "f", "--signing-key", str(key)]
    dead = ["--token", "t", "--service-url", f"http://127.0.0.1:{free_port()}"]
    result = runner.invoke(app, [*publish, *dead])
    assert result.exit_code == USAGE, result.output
    assert f"{named}: contract name 'Heart Disease v2' is not accepted" in result.output
    assert not key.exists()  # refused before a signing key was made


def test_a_latin1_sample_is_named_once_with_its_line_and_the_fix(tmp_path: Path) -> None:
    sample = tmp_path / "export.csv"
    sample.write_bytes("age,sex,sick\n50,Male,1\n61,Männlich,0\n".encode("latin-1"))
    result = runner.invoke(app, ["contract", "draft", str(sample)])
    assert result.exit_code == USAGE
    assert result.output.count(str(sample)) == 1 and "line 3 is not UTF-8" in result.output
    assert "save the file as UTF-8" in result.output


def test_the_coordinator_pins_the_published_version(service: tuple[str, Path]) -> None:
    """What `federated_training` puts in a new run's spec: the latest published version and
    its parsed rules; an unpublished contract is refused, even one whose example ships."""
    from flows.contract_publish import resolve_run_contract
    from schemas.contracts.loader import ContractError
    from silos.client_errors import NotFound

    url, token_file = service
    client = coordinator(url)
    coordinator(url).create_federation("fresh")
    # the package's copy is never used: the coordinator points at it, nothing more
    with pytest.raises(ContractError, match="contract example heart_disease"):
        resolve_run_contract(client, "fresh", "heart_disease")
    with pytest.raises(ContractError, match="fedsilo contract publish FILE --federation fresh"):
        resolve_run_contract(client, "fresh", "no_such_table")
    with pytest.raises(NotFound, match="federation 'frehs' does not exist"):
        resolve_run_contract(client, "frehs", "heart_disease")  # a typo: not "unpublished"
    newer = HEART.read_text().replace('version = "1.0.0"', 'version = "2.0.0"', 1)
    newer = newer.replace("min_rows = 50", "min_rows = 60", 1)
    assert "min_rows = 60" in newer
    from support.live_service import TEST_CONTRACT_KEY

    from schemas.contract_registry import sign_contract

    _, body = sign_contract(TEST_CONTRACT_KEY, "fresh", newer, "newer")
    client.publish_contract("fresh", body)
    contract, version = resolve_run_contract(client, "fresh", "heart_disease")
    assert version == "2.0.0" and contract.min_rows == 60  # the published rules, not the package's


def test_the_demo_publishes_every_demo_contract(service: tuple[str, Path], tmp_path: Path) -> None:
    """`fedsilo demo` publishes its dataset's shipped example contract before training, with
    the contract key beside the service's admin token; a second demo run changes nothing."""
    from flows.demo import publish_example_contract
    from flows.demo_datasets import DATASETS

    url, _ = service
    client = coordinator(url)
    for data in DATASETS.values():
        client.create_federation(f"demo_{data.contract}")
        for _ in range(2):
            publish_example_contract(client, f"demo_{data.contract}", data.contract, tmp_path)
        published = client.contracts(f"demo_{data.contract}")
        assert [(c.name, c.version) for c in published] == [(data.contract, "1.0.0")]
    assert stat.S_IMODE((tmp_path / "contract_ed25519.pem").stat().st_mode) == 0o600
