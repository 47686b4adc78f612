"""A PostgreSQL cluster of a test's own (made by scripts/pg-test-server, on its own port), which
a fault test may stop and start without disturbing the database every other test shares."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # tests/support/ -> the repository root


@dataclass
class PgCluster:
    """A cluster made by scripts/pg-test-server, on its own port, that a test may restart."""

    url: str
    base: Path

    @classmethod
    def start(cls, port: int | None = None) -> PgCluster:
        env = dict(os.environ)
        env.pop("FEDSILO_PG_PORT", None)
        if port:
            env["FEDSILO_PG_PORT"] = str(port)
        out = subprocess.run(
            [str(REPO / "scripts" / "pg-test-server"), "start"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"pg-test-server start failed:\n{out.stderr[-3000:]}")
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in out.stdout.splitlines()
            if line.startswith("export ")
        )
        return cls(exports["FEDSILO_TEST_PG_URL"], Path(exports["FEDSILO_TEST_PG_DATA"]))

    def _pg_ctl(self, *args: str) -> None:
        bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        pg_ctl = str(bindir[-1]) if bindir else shutil.which("pg_ctl") or "pg_ctl"
        cmd = [pg_ctl, "-D", str(self.base / "data"), "-l", str(self.base / "server.log"), *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, cwd="/", check=True, capture_output=True, timeout=120)

    def stop_server(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")

    def start_server(self) -> None:
        self._pg_ctl("-w", "-t", "60", "start")

    def remove(self) -> None:
        subprocess.run(
            [str(REPO / "scripts" / "pg-test-server"), "stop", str(self.base)],
            capture_output=True,
            check=False,
        )
