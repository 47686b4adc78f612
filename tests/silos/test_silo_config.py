"""silo.toml and the identity key: errors name the file and key; keys are private."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.specs import ModelSpec, PrivacySpec, RunSpec
from silos.config import load_silo_config
from silos.exceptions import SiloConfigError
from silos.keys import load_or_create_key
from silos.policy import policy_violation

GOOD = """
[silo]
name = "cleveland"
federation = "heart"

[data]
path = "data.csv"
contract = "heart_disease"

[service]
urls = ["http://127.0.0.1:8700"]

[policy]
allowed_models = ["logreg"]
max_rounds_per_run = 5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "silo.toml"
    path.write_text(text)
    return path


def test_good_config_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    cfg = load_silo_config(write(tmp_path, GOOD))
    assert cfg.data.path == tmp_path.resolve() / "data.csv"
    assert cfg.key_path == tmp_path.resolve() / "workspace" / "keys" / "silo_ed25519.pem"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SiloConfigError, match=r"silo config .*nope\.toml does not exist"):
        load_silo_config(tmp_path / "nope.toml")


def test_a_directory_is_named_as_one_and_a_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    with pytest.raises(SiloConfigError, match=r"silo config .* is a directory"):
        load_silo_config(tmp_path)
    path = tmp_path / "silo.toml"
    path.write_text(GOOD, encoding="utf-8-sig")  # Notepad, PowerShell 5
    assert load_silo_config(path).silo.name == "cleveland"


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('name = "cleveland"', 'name = "cleveland'))
    with pytest.raises(SiloConfigError, match=r"silo\.toml: TOML syntax error: .*line 3"):
        load_silo_config(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (GOOD.replace('name = "cleveland"\n', ""), "key 'silo.name'"),
        (
            GOOD.replace('urls = ["http://127.0.0.1:8700"]', 'urls = ["ftp://x"]'),
            "key 'service.urls'",
        ),
        (
            GOOD.replace("max_rounds_per_run = 5", "max_rounds_per_run = 0"),
            "key 'policy.max_rounds_per_run'",
        ),
        (GOOD + "\n[extra]\nx = 1\n", "key 'extra'"),
        (
            GOOD.replace('allowed_models = ["logreg"]', 'allowed_models = ["svm"]'),
            "key 'policy.allowed_models.0'",
        ),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SiloConfigError) as err:
        load_silo_config(write(tmp_path, text))
    assert key in str(err.value) and "silo.toml" in str(err.value)


@pytest.mark.parametrize("broken", ["missing", "malformed"])
def test_agent_exits_with_a_message_naming_the_file(tmp_path: Path, broken: str) -> None:
    path = tmp_path / "silo.toml"
    if broken == "malformed":
        path.write_text("[silo\nname=")
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "silo", "start", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "silo.toml" in proc.stderr and "error" in proc.stderr  # errors go to stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_key_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "silo.pem"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_or_create_key(path)
    assert again.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "silo.pem"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(SiloConfigError, match="chmod 600"):
        load_or_create_key(path)


BASE_RUN = RunSpec(
    federation="heart",
    dataset="heart_disease",
    model=ModelSpec(kind="logreg", n_features=4),
    rounds=5,
)


def test_policy_refusals_say_why(tmp_path: Path) -> None:
    cfg = load_silo_config(write(tmp_path, GOOD))
    base = BASE_RUN
    assert policy_violation(cfg, base, 4) is None
    mlp = base.model_copy(update={"model": ModelSpec(kind="mlp", n_features=4, hidden=(8,))})
    assert "allows models ['logreg']" in (policy_violation(cfg, mlp, 4) or "")
    long_run = base.model_copy(update={"rounds": 6})
    assert "at most 5 rounds" in (policy_violation(cfg, long_run, 4) or "")
    other = base.model_copy(update={"dataset": "credit_default"})
    assert "contract 'heart_disease'" in (policy_violation(cfg, other, 4) or "")
    assert "expects 4 features" in (policy_violation(cfg, base, 7) or "")


def test_a_policy_floor_on_the_noise_multiplier_refuses_a_weaker_dp_run(tmp_path: Path) -> None:
    """require_privacy alone accepts any noise multiplier, 1e-6 included (epsilon ~5e11 for
    one round); min_noise_multiplier refuses one below the silo's floor."""
    text = GOOD + "require_privacy = true\nmin_noise_multiplier = 0.8\n"
    cfg = load_silo_config(write(tmp_path, text))
    base = BASE_RUN
    assert "requires silo-level differential privacy" in (policy_violation(cfg, base, 4) or "")
    weak = base.model_copy(update={"privacy": PrivacySpec(noise_multiplier=1e-6, clip_norm=0.5)})
    problem = policy_violation(cfg, weak, 4) or ""
    assert "noise multiplier of at least 0.8" in problem and "asks for 1e-06" in problem
    strong = base.model_copy(update={"privacy": PrivacySpec(noise_multiplier=1.0, clip_norm=0.5)})
    assert policy_violation(cfg, strong, 4) is None
