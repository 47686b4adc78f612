"""The aggregator: Flower's ServerApp with its FedAvg or FedAdam, plain or with SecAgg+.

SecAgg+ in Flower 1.32 runs through the legacy `DefaultWorkflow(fit_workflow=SecAggPlusWorkflow)`
with a `LegacyContext` and a `flwr.server.strategy` strategy, so the plain runs use the same
path (only the fit workflow differs). The strategy is wrapped to time every round (from
`configure_fit` to the end of `aggregate_fit`) and the final model is evaluated once at the
hospitals after the last round, as fedsilo's coordinator does. At the end the final parameters
go to `<out-dir>/final.npz` and the round times to `<out-dir>/server.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAdam, FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

app = ServerApp()


def _timed(base: type, rounds: int, times: list[dict]) -> type:
    class Timed(base):  # type: ignore[misc, valid-type]
        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            times.append({"round": server_round, "start": time.time()})
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            out = super().aggregate_fit(server_round, results, failures)
            times[-1].update(end=time.time(), n_results=len(results), n_failures=len(failures))
            if failures:
                times[-1]["failures"] = [repr(f) for f in failures]
            return out

        def configure_evaluate(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            if server_round < rounds:  # the final model only, as fedsilo's evaluate round
                return []
            return super().configure_evaluate(server_round, parameters, client_manager)

    return Timed


@app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.time()
    cfg = context.run_config
    rounds = int(cfg["rounds"])
    n_silos = int(cfg["n-silos"])
    out = Path(str(cfg["out-dir"]))
    with np.load(str(cfg["init-path"])) as f:
        init = [f[f"p{i}"] for i in range(len(f.files))]
    common = dict(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=n_silos,
        min_evaluate_clients=n_silos,
        min_available_clients=n_silos,
        on_fit_config_fn=lambda r: {"server_round": r},
        initial_parameters=ndarrays_to_parameters(init),
        accept_failures=False,
    )
    times: list[dict] = []
    if cfg["strategy"] == "fedadam":
        strategy = _timed(FedAdam, rounds, times)(
            **common,
            eta=float(cfg["server-lr"]),
            eta_l=float(cfg["lr"]),
            beta_1=float(cfg["beta1"]),
            beta_2=float(cfg["beta2"]),
            tau=float(cfg["tau"]),
        )
    else:
        strategy = _timed(FedAvg, rounds, times)(**common)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    fit_workflow = (
        SecAggPlusWorkflow(
            num_shares=int(cfg["num-shares"]), reconstruction_threshold=int(cfg["threshold"])
        )
        if cfg["secagg"]
        else None
    )
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
    final = parameters_to_ndarrays(_final_parameters(legacy))
    np.savez(out / "final.npz", **{f"p{i}": a for i, a in enumerate(final)})
    (out / "server.json").write_text(
        json.dumps({"main_start": started, "main_end": time.time(), "rounds": times})
    )


def _final_parameters(legacy: LegacyContext):  # type: ignore[no-untyped-def]
    import flwr.compat.common.recorddict_compat as compat
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    record = legacy.state.array_records[MAIN_PARAMS_RECORD]
    return compat.arrayrecord_to_parameters(record, keep_input=True)
