"""Bring your own data, with the CLI only (issue 14's end-to-end check).

A federation of three wards for a table no contract ships: a synthetic multiclass risk table
with its own column names (a patient id, numbers, a yes/no column, the target `risk_band`),
generated here, each ward with a training file and a separate test file. Every step is a
`fedsilo` subprocess, as a data steward would type it (README "Your own data"):

1. `contract draft` from one ward's sample; the steward's edit (programmatic here): classes in
   risk order, numeric ranges widened to what every ward may record, version 1.0.0;
2. `silo check` against the unedited local draft fails at the ward whose blood pressures lie
   outside the sample's range, naming the column; against the edited draft it passes;
3. `contract publish`, silos with `test_path` (two pin the version in silo.toml), agents,
   approval, `silo accept-contract --yes` at the third, `silo check` against the published
   version;
4. `train` without `--n-features` (the width comes from the published contract);
5. `runs show --json`: every ward's metrics on its own test file (macro-F1, accuracy, loss),
   n_test equal to its test file's rows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.live_service import free_port

pytestmark = pytest.mark.integration

FEDERATION = "wards"
CONTRACT = "ward_risk"
WARDS = {"north": 0.0, "south": 0.5, "east": 1.5}  # shift of each ward's patients
TRAIN_ROWS, TEST_ROWS = 150, 50
STEP_S = 180  # bound on any one step (agent start-up on a loaded machine included)
# training waits for three agents' first validation, then runs three rounds: a loaded machine
TRAIN_S = 900
FEDSILO = str(Path(sys.executable).parent / "fedsilo")


def ward_table(rng: np.random.Generator, n: int, first_id: int, shift: float) -> pd.DataFrame:
    """Patients of one ward: the risk band follows age, blood pressure, frailty and smoking."""
    age = rng.normal(55 + 4 * shift, 12, n).clip(18, 95).round()
    sbp = rng.normal(128 + 30 * shift, 14, n).clip(80, 240).round()
    frailty = rng.normal(0, 1, n).round(3)
    smoker = rng.choice(["yes", "no"], n, p=[0.3, 0.7])
    z = (
        0.04 * (age - 60) + 0.01 * (sbp - 150) + 1.2 * frailty + 0.8 * (smoker == "yes")
        + rng.normal(0, 0.5, n)
    )  # fmt: skip
    band = np.where(z < -0.5, "low", np.where(z < 0.8, "medium", "high"))
    return pd.DataFrame(
        {
            "patient_ref": np.arange(first_id, first_id + n),
            "age_years": age,
            "systolic_mmhg": sbp,
            "frailty_score": frailty,
            "smoker": smoker,
            "risk_band": band,
        }
    )


def edit_draft(text: str) -> str:
    """The steward's review: classes in risk order (class index 0 = low), ranges that every
    ward's records fit (the draft's come from one ward's sample), the first real version."""
    text = re.sub(r'(?m)^version = ".*"$', 'version = "1.0.0"', text)
    text = re.sub(r"(?m)^values = \[.*\]$", 'values = ["low", "medium", "high"]', text, count=1)
    text = re.sub(
        r"(?m)^categories = \[.*\]$",
        lambda m: (
            'categories = ["low", "medium", "high"]' if '"medium"' in m.group(0) else m.group(0)
        ),
        text,
    )
    for column, wide in (("age_years", "[18, 100]"), ("systolic_mmhg", "[70, 260]")):
        block = re.compile(rf'(name = "{column}"\n(?:(?!\[\[columns\]\]).*\n)*?)range = \[.*\]')
        text, n = block.subn(rf"\1range = {wide}", text)
        assert n == 1, f"no range for {column} in the draft:\n{text}"
    # reference statistics from one ward's sample do not describe the others (they differ:
    # that is why they federate); the steward drops them rather than widen every tolerance
    return re.sub(r"(?m)^reference = .*\n", "", text)


class Fedsilo:
    """Runs `fedsilo` commands in `cwd` with the test's environment."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        self.background: list[subprocess.Popen[bytes]] = []

    def __call__(
        self, *args: str, ok: bool = True, timeout_s: float = STEP_S
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [FEDSILO, *args], cwd=self.cwd, env=self.env, capture_output=True, text=True,
            timeout=timeout_s,
        )  # fmt: skip
        if ok:
            assert done.returncode == 0, f"fedsilo {' '.join(args)} exited {done.returncode}:\n" + (
                done.stdout[-3000:] + done.stderr[-3000:]
            )
        return done

    def start(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [FEDSILO, *args], cwd=self.cwd, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.background.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.background):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.background:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def cli(tmp_path: Path, prefect_api_url: str) -> Iterator[Fedsilo]:
    env = dict(
        os.environ,
        PREFECT_API_URL=prefect_api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        GX_ANALYTICS_ENABLED="false",
    )
    env.pop("FEDSILO_ADMIN_TOKEN", None)
    runner = Fedsilo(tmp_path, env)
    try:
        yield runner
    finally:
        runner.stop_all()


def wait_until(what: str, check, timeout_s: float, procs=()) -> None:  # type: ignore[no-untyped-def]
    """Poll `check` until it is true; fail early when a background process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, f"{what}: a process exited ({dead[0].args})"
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def silo_toml(ward: str, service_url: str, prefect_url: str, contract_line: str) -> str:
    return (
        f'[silo]\nname = "{ward}"\nfederation = "{FEDERATION}"\nworkspace = "workspace"\n\n'
        f'[data]\npath = "train.csv"\ntest_path = "test.csv"\ncontract = "{CONTRACT}"\n'
        f"{contract_line}\n"
        f'[service]\nurls = ["{service_url}"]\n\n[prefect]\napi_url = "{prefect_url}"\n'
    )


def test_own_data_federation_with_the_cli_only(
    tmp_path: Path, cli: Fedsilo, prefect_api_url: str
) -> None:
    rng = np.random.default_rng(2026)
    first_id = 1
    for ward, shift in WARDS.items():
        (tmp_path / ward).mkdir()
        table = ward_table(rng, TRAIN_ROWS + TEST_ROWS, first_id, shift)
        first_id += len(table)
        table[:TRAIN_ROWS].to_csv(tmp_path / ward / "train.csv", index=False)
        table[TRAIN_ROWS:].to_csv(tmp_path / ward / "test.csv", index=False)

    # 1. draft from one ward's sample, then the steward's edit
    cli("contract", "draft", "north/train.csv", "--target", "risk_band", "--task", "multiclass",
        "--name", CONTRACT, "-o", "draft.toml")  # fmt: skip
    draft = (tmp_path / "draft.toml").read_text()
    drafted = tomllib.loads(draft)
    assert "patient_ref" not in drafted["features"]  # the id was spotted and kept out
    assert drafted["target"]["task"] == "multiclass"
    sbp_high = next(c for c in drafted["columns"] if c["name"] == "systolic_mmhg")["range"][1]
    assert sbp_high < pd.read_csv(tmp_path / "east" / "train.csv")["systolic_mmhg"].max()
    (tmp_path / "contract.toml").write_text(edit_draft(draft))

    # 2. a check against the unedited draft fails where the data does not fit it
    port = free_port()
    service_url = f"http://127.0.0.1:{port}"
    east_toml = tmp_path / "east" / "silo.toml"
    east_toml.write_text(
        silo_toml("east", service_url, prefect_api_url, 'contract_path = "../draft.toml"')
    )
    failed = cli("silo", "check", "--config", str(east_toml), ok=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "systolic_mmhg" in failed.stdout
    east_toml.write_text(
        silo_toml("east", service_url, prefect_api_url, 'contract_path = "../contract.toml"')
    )
    cli("silo", "check", "--config", str(east_toml))

    # 3. the hub, the federation, the published contract
    service = cli.start(tmp_path / "service.log", "aggregator", "serve", "--workspace", "svc",
                        "--port", str(port))  # fmt: skip
    wait_until("service healthy", lambda: healthy(service_url), STEP_S, [service])
    token = ["--service-url", service_url, "--token-file", "svc/admin.token"]
    cli("federation", "create", FEDERATION, *token)
    published = cli("contract", "publish", "contract.toml", "--federation", FEDERATION, *token)
    assert re.search(r"contract ward_risk 1\.0\.0 published in wards: sha256 [0-9a-f]{64}",
                     published.stdout + published.stderr)  # fmt: skip
    listed = json.loads(
        cli("contract", "list", "--federation", FEDERATION, "--json", *token).stdout
    )
    assert [(c["name"], c["version"]) for c in listed] == [(CONTRACT, "1.0.0")]

    # each ward: train and test files, the published contract pinned in silo.toml (north,
    # east) or accepted by its operator once enrolled (south: a silo reads published contracts
    # over its signed channel, so only after the coordinator approved it)
    agents = []
    for ward in WARDS:
        pin = 'contract_version = "1.0.0"' if ward != "south" else ""
        config = tmp_path / ward / "silo.toml"
        config.write_text(silo_toml(ward, service_url, prefect_api_url, pin))
        agents.append(cli.start(tmp_path / ward / "agent.log", "silo", "start", "--config",
                                str(config)))  # fmt: skip

    for ward, agent in zip(WARDS, agents, strict=True):  # the agent's log says it enrolled
        log = tmp_path / ward / "agent.log"
        wait_until(f"{ward} enrolled", lambda f=log: "waiting for approval" in f.read_text(),
                   STEP_S, [agent])  # fmt: skip
        cli("silo", "approve", ward, "--federation", FEDERATION, *token)
    south = str(tmp_path / "south" / "silo.toml")
    accepted = cli("silo", "accept-contract", "--config", south, "--yes")
    assert "1.0.0" in accepted.stdout + accepted.stderr
    checked = cli("silo", "check", "--config", south)  # the accepted, published version
    assert "published ward_risk v1.0.0" in checked.stdout, checked.stdout

    # 4. train: no --n-features; softmax regression over the contract's three classes
    trained = cli("train", "--federation", FEDERATION, "--dataset", CONTRACT, "--model", "logreg",
                  "--rounds", "2", "--lr", "0.1", "--local-epochs", "2", "--min-silos", "3",
                  "--output-dir", "models", *token, timeout_s=TRAIN_S)  # fmt: skip
    match = re.search(r"run ([0-9a-f]{32}): model (\S+) sha256 [0-9a-f]{64}", trained.stdout)
    assert match, trained.stdout[-3000:] + trained.stderr[-3000:]
    run_id = match.group(1)

    # 5. every ward's metrics on its own test file
    shown = json.loads(cli("runs", "show", run_id, "--json", *token).stdout)
    assert shown["run"]["status"] == "finished"
    last = [r for r in shown["rounds"] if any(s.get("metrics") for s in r["silos"])][-1]
    metrics = {s["silo"]: s["metrics"] for s in last["silos"] if s.get("metrics")}
    assert set(metrics) == set(WARDS)
    for ward, m in metrics.items():
        assert m["n_test"] == TEST_ROWS, (ward, m)  # the test file, not a split of train.csv
        assert 0.0 <= m["f1_macro"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0, (ward, m)
        assert m["loss"] > 0 and m["auc"] is None and m["rmse"] is None, (ward, m)
