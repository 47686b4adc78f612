"""NVIDIA FLARE's histogram-based horizontal XGBoost on fedsilo's five credit banks.

Runs in bench/peers/.venv-nvflare, started by bench/compare_xgboost.py:

    python run_hist.py DATA_DIR WORKSPACE ROUNDS N_SITES MAX_DEPTH ETA

DATA_DIR/site-<i>/train.csv and valid.csv (label first, no header) are written by
compare_xgboost.py from fedsilo's pipeline. The job is NVFLARE's own recipe
(`XGBHorizontalRecipe`: `XGBFedController` + `FedXGBHistogramExecutor`, XGBoost's federated
communicator) executed with `SimEnv`, NVFLARE's simulator: server and sites as threads of one
process on this machine, internal connections on 127.0.0.1. The final model lands in
WORKSPACE/<job>/site-1/simulate_job/model.json.
"""

from __future__ import annotations

import sys

from nvflare.app_opt.xgboost.histogram_based_v2.csv_data_loader import CSVDataLoader
from nvflare.app_opt.xgboost.recipes import XGBHorizontalRecipe
from nvflare.recipe import SimEnv, set_per_site_config


def main() -> None:
    data, workspace, rounds, n_sites, depth, eta = sys.argv[1:7]
    sites = [f"site-{i}" for i in range(1, int(n_sites) + 1)]
    recipe = XGBHorizontalRecipe(
        name="credit_hist",
        min_clients=len(sites),
        num_rounds=int(rounds),
        early_stopping_rounds=int(rounds) + 1,  # never stop early: the same budget as the others
        xgb_params={
            "max_depth": int(depth),
            "eta": float(eta),
            "objective": "binary:logistic",
            "eval_metric": "auc",
            "tree_method": "hist",
            "nthread": 1,
        },
    )
    set_per_site_config(recipe, {s: {"data_loader": CSVDataLoader(folder=data)} for s in sites})
    recipe.execute(SimEnv(clients=sites, workspace_root=workspace))


if __name__ == "__main__":
    main()
