"""Server-side strategies: how the averaged silo update becomes the next global model."""

from aggregation.strategies.base import Strategy
from aggregation.strategies.fedavg import FedAvg
from aggregation.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from aggregation.strategies.fedprox import FedProx
from aggregation.strategies.scaffold import Scaffold
from schemas.specs import StrategySpec

_REGISTRY: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "scaffold": Scaffold,
}


def make_strategy(spec: StrategySpec) -> Strategy:
    """Build the strategy a run's spec names."""
    return _REGISTRY[spec.name](spec)


__all__ = [
    "Strategy",
    "make_strategy",
    "FedAvg",
    "FedProx",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "Scaffold",
]
