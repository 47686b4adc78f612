"""The one abstract base every strategy implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from schemas.specs import StrategySpec

Arrays = list[np.ndarray]
State = dict[str, np.ndarray]


class Strategy(ABC):
    """Turns the example-weighted mean of the silos' deltas into the next global model.

    Strategies see only the mean delta (secure aggregation reveals nothing finer), and keep any
    server-optimizer state in a plain dict of arrays that the service persists with the run, so
    a restarted service continues with the same moments.
    """

    def __init__(self, spec: StrategySpec) -> None:
        self.spec = spec

    @abstractmethod
    def apply(
        self, global_params: Arrays, mean_delta: Arrays, state: State
    ) -> tuple[Arrays, State]:
        """Return the new global parameters and the new optimizer state."""

    def apply_round(
        self, global_params: Arrays, mean_delta: Arrays, state: State, participation: float
    ) -> tuple[Arrays, State]:
        """`apply` for a round in which a `participation` fraction of the run's silos answered
        (SCAFFOLD scales its control-variate step by it; the others ignore it)."""
        return self.apply(global_params, mean_delta, state)

    def local_proximal_mu(self) -> float:
        """The FedProx weight silos add to their local loss (0 for every other strategy)."""
        return 0.0
