"""SCAFFOLD (Karimireddy et al. 2020): FedAvg's server step plus the global control variate.

Each silo's update is its model delta followed by its control-variate delta (the same shapes,
`schemas.specs.update_shapes`), so the mean the strategy receives holds both halves. The model
moves as FedAvg's does; c += (|S|/N) * mean(delta c_i), |S| silos of the run's N answering.
The mean is example-weighted like the model's, so c tracks the example-weighted mean of the
silos' c_i, the gradient estimate of the pooled (example-weighted) objective. c lives in the
run's strategy state under ``control.<i>``, saved with the model version it belongs to, and
the service serves it to the silos with that version (`aggregation.service.control`).
"""

from __future__ import annotations

import numpy as np

from aggregation.strategies.aggregate import apply_mean_delta
from aggregation.strategies.base import Arrays, State, Strategy


def control_of(state: State, params: Arrays) -> Arrays:
    """The global control variate in `state` (zeros before the first round)."""
    return [
        state.get(f"control.{i}", np.zeros(p.shape, dtype=np.float32)).astype(np.float32)
        for i, p in enumerate(params)
    ]


class Scaffold(Strategy):
    def apply(
        self, global_params: Arrays, mean_delta: Arrays, state: State
    ) -> tuple[Arrays, State]:
        return self.apply_round(global_params, mean_delta, state, participation=1.0)

    def apply_round(
        self, global_params: Arrays, mean_delta: Arrays, state: State, participation: float
    ) -> tuple[Arrays, State]:
        n = len(global_params)
        if len(mean_delta) != 2 * n:
            raise ValueError(
                f"scaffold expects the model delta and the control delta ({2 * n} arrays), "
                f"got {len(mean_delta)}"
            )
        if not 0 < participation <= 1:
            raise ValueError(f"participation must be in (0, 1], got {participation}")
        model_delta, control_delta = mean_delta[:n], mean_delta[n:]
        new_params = apply_mean_delta(global_params, model_delta, self.spec.server_lr)
        c = control_of(state, global_params)
        new_state = dict(state)
        for i, (g, d) in enumerate(zip(c, control_delta, strict=True)):
            new_state[f"control.{i}"] = (g + np.float32(participation) * d).astype(np.float32)
        return new_params, new_state
