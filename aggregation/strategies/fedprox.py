"""FedProx (Li et al. 2020): FedAvg's server step; silos add (mu/2)||w - w_global||^2 locally."""

from __future__ import annotations

from aggregation.strategies.aggregate import apply_mean_delta
from aggregation.strategies.base import Arrays, State, Strategy


class FedProx(Strategy):
    def apply(
        self, global_params: Arrays, mean_delta: Arrays, state: State
    ) -> tuple[Arrays, State]:
        return apply_mean_delta(global_params, mean_delta, self.spec.server_lr), state

    def local_proximal_mu(self) -> float:
        return self.spec.mu
