"""Flower's side of the peer comparison: its deployment engine on 127.0.0.1.

`flower-superlink` and one `flower-supernode` per hospital as separate processes (insecure
gRPC on loopback: TLS is off on both sides of the comparison), the app under
`bench/peers/flower_heart` submitted with `flwr run` for every configuration. The SuperLink
spawns the ServerApp and each SuperNode its ClientApp as subprocesses. Every SuperNode reaches
the SuperLink's Fleet API through its own relay port, so bytes are counted per hospital.
All of it runs in `bench/peers/.venv-flower`, which has no fedsilo: the data come as .npz
files from `bench/_heart_data.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench._heart_data import MLP_HIDDEN, Config, run_spec
from bench._procs import BENCH, HOST, Relay, free_port, start_relay, terminate, tree, wait_port

VENV = BENCH / "peers" / ".venv-flower"
APP = BENCH / "peers" / "flower_heart"


def available() -> str | None:
    """None when Flower's venv is ready, else why not."""
    if not (VENV / "bin" / "flower-superlink").exists():
        return f"{VENV} is missing: run `bash bench/peers/setup.sh flower`"
    return None


@dataclass
class FlowerFederation:
    workspace: Path
    env: dict[str, str]
    relay: Relay
    procs: list[subprocess.Popen] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        # SuperNodes can take a while over SIGTERM (terminate() then kills them) and leave
        # their SuperExec/ClientApp children behind: end those descendants by pid as well
        children = tree(self.pids) - set(self.pids)
        terminate(self.procs)
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.relay.stop()


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(
            args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def start(workspace: Path, data_dir: Path, hospitals: list[str]) -> FlowerFederation:
    home = workspace / "flwr-home"
    home.mkdir(parents=True)
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    env.pop("VIRTUAL_ENV", None)
    bin_ = VENV / "bin"
    appio, fleet, control = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen] = []
    relay = start_relay({h: fleet for h in hospitals}, workspace / "relay.log")
    try:
        link = _spawn(
            [
                str(bin_ / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--serverappio-api-address",
                f"{HOST}:{appio}",
                "--fleet-api-address",
                f"{HOST}:{fleet}",
                "--control-api-address",
                f"{HOST}:{control}",
            ],
            workspace / "superlink.log",
            env,
        )
        procs.append(link)
        for port in (appio, fleet, control):
            wait_port(port, 60, "flower-superlink", link)
        for h in hospitals:
            node_config = f"data-path='{data_dir / (h + '.npz')}' hospital='{h}'"
            procs.append(
                _spawn(
                    [
                        str(bin_ / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"{HOST}:{relay.routes[h][0]}",
                        "--clientappio-api-address",
                        f"{HOST}:{free_port()}",
                        "--node-config",
                        node_config,
                    ],
                    workspace / f"supernode-{h}.log",
                    env,
                )
            )
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "{HOST}:{control}"\n'
            "insecure = true\n"
        )
        names = {link.pid: "superlink (+ServerApp)"}
        names |= {
            p.pid: f"supernode {h} (+ClientApp)" for p, h in zip(procs[1:], hospitals, strict=True)
        }
        return FlowerFederation(workspace, env, relay, procs, names)
    except BaseException:
        terminate(procs)
        relay.stop()
        raise


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


def run_config(
    fed: FlowerFederation,
    config: Config,
    rounds: int,
    init_dir: Path,
    n_silos: int,
    tag: str = "",
) -> tuple[subprocess.Popen, Path]:
    """Submit one configuration with `flwr run`; returns the CLI process and the result folder
    (the ServerApp writes `server.json` and `final.npz` there when it is done)."""
    spec = run_spec(config, rounds)
    out = fed.workspace / "runs" / f"{tag}{config.label.replace('/', '-')}"
    out.mkdir(parents=True)
    threshold = spec.secure_aggregation.threshold or max(2, n_silos // 2 + 1)
    values = {
        "model": spec.model.kind,
        "hidden": MLP_HIDDEN[0] if spec.model.kind == "mlp" else 0,
        "n-features": spec.model.n_features,
        "strategy": spec.strategy.name,
        "server-lr": spec.strategy.server_lr,
        "beta1": spec.strategy.beta1,
        "beta2": spec.strategy.beta2,
        "tau": spec.strategy.tau,
        "rounds": rounds,
        "local-epochs": spec.training.local_epochs,
        "batch-size": spec.training.batch_size,
        "lr": spec.training.lr,
        "seed": spec.training.seed,
        "secagg": config.secure,
        "num-shares": n_silos,  # complete graph: every hospital shares with every other
        "threshold": threshold,
        "n-silos": n_silos,
        "init-path": str(init_dir / f"init_{spec.model.kind}.npz"),
        "out-dir": str(out),
    }
    run_config_arg = " ".join(f"{k}={_toml(v)}" for k, v in values.items())
    args = [str(VENV / "bin" / "flwr"), "run", str(APP), "bench", "--stream"]
    args += ["--run-config", run_config_arg]
    return _spawn(args, out / "flwr-run.log", fed.env), out


def wait_result(proc: subprocess.Popen, out: Path, timeout_s: float) -> dict:
    """The ServerApp's timings once it wrote them (the CLI may still be streaming logs)."""
    deadline = time.monotonic() + timeout_s
    result = out / "server.json"
    while time.monotonic() < deadline:
        if result.exists() and (out / "final.npz").exists():
            try:
                return json.loads(result.read_text())
            except json.JSONDecodeError:
                pass  # being written
        if proc.poll() is not None and proc.returncode != 0:
            tail = (out / "flwr-run.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"flwr run failed ({proc.returncode}):\n{tail}")
        time.sleep(0.05)
    raise RuntimeError(f"Flower run did not finish within {timeout_s:.0f}s; see {out}")
