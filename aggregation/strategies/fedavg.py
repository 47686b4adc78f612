"""FedAvg (McMahan et al. 2017): the global model moves by the example-weighted mean delta."""

from __future__ import annotations

from aggregation.strategies.aggregate import apply_mean_delta
from aggregation.strategies.base import Arrays, State, Strategy


class FedAvg(Strategy):
    def apply(
        self, global_params: Arrays, mean_delta: Arrays, state: State
    ) -> tuple[Arrays, State]:
        return apply_mean_delta(global_params, mean_delta, self.spec.server_lr), state
