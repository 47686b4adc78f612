"""The aggregator: Flower's FedXgbBagging for `rounds` rounds; writes the final model
(`<out-dir>/final.json`, XGBoost JSON) and round times (`<out-dir>/server.json`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedXgbBagging

app = ServerApp()


class TimedBagging(FedXgbBagging):
    times: list[dict]

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self.times.append({"round": server_round, "start": time.time()})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        out = super().aggregate_train(server_round, replies)
        self.times[-1]["end"] = time.time()
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.time()
    cfg = context.run_config
    n = int(cfg["n-silos"])
    strategy = TimedBagging(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=n,
        min_available_nodes=n,
    )
    strategy.times = []
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.frombuffer(b"", dtype=np.uint8)]),
        num_rounds=int(cfg["rounds"]),
    )
    out = Path(str(cfg["out-dir"]))
    (out / "final.json").write_bytes(result.arrays["0"].numpy().tobytes())
    (out / "server.json").write_text(
        json.dumps({"main_start": started, "main_end": time.time(), "rounds": strategy.times})
    )
