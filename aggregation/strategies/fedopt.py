"""Adaptive server optimizers (Reddi et al. 2021): FedAdam, FedYogi, FedAdagrad.

The mean delta is the negated pseudo-gradient. First moment m and second moment v live in the
run's persisted state, keyed `m.<i>` and `v.<i>` by parameter index.
"""

from __future__ import annotations

import numpy as np

from aggregation.strategies.base import Arrays, State, Strategy


def _moments(state: State, params: Arrays) -> tuple[Arrays, Arrays]:
    m = [state.get(f"m.{i}", np.zeros_like(p, dtype=np.float32)) for i, p in enumerate(params)]
    v = [state.get(f"v.{i}", np.zeros_like(p, dtype=np.float32)) for i, p in enumerate(params)]
    return m, v


def _step(global_params: Arrays, m: Arrays, v: Arrays, lr: float, tau: float) -> Arrays:
    return [
        (w + lr * mi / (np.sqrt(vi) + tau)).astype(np.float32)
        for w, mi, vi in zip(global_params, m, v, strict=True)
    ]


def _pack(m: Arrays, v: Arrays) -> State:
    state: State = {}
    for i, (mi, vi) in enumerate(zip(m, v, strict=True)):
        state[f"m.{i}"] = mi.astype(np.float32)
        state[f"v.{i}"] = vi.astype(np.float32)
    return state


class FedAdam(Strategy):
    def apply(
        self, global_params: Arrays, mean_delta: Arrays, state: State
    ) -> tuple[Arrays, State]:
        b1, b2 = self.spec.beta1, self.spec.beta2
        m, v = _moments(state, global_params)
        m = [b1 * mi + (1 - b1) * d for mi, d in zip(m, mean_delta, strict=True)]
        v = [b2 * vi + (1 - b2) * d * d for vi, d in zip(v, mean_delta, strict=True)]
        return _step(global_params, m, v, self.spec.server_lr, self.spec.tau), _pack(m, v)


class FedYogi(Strategy):
    def apply(
        self, global_params: Arrays, mean_delta: Arrays, state: State
    ) -> tuple[Arrays, State]:
        b1, b2 = self.spec.beta1, self.spec.beta2
        m, v = _moments(state, global_params)
        m = [b1 * mi + (1 - b1) * d for mi, d in zip(m, mean_delta, strict=True)]
        v = [
            vi - (1 - b2) * d * d * np.sign(vi - d * d) for vi, d in zip(v, mean_delta, strict=True)
        ]
        return _step(global_params, m, v, self.spec.server_lr, self.spec.tau), _pack(m, v)


class FedAdagrad(Strategy):
    def apply(
        self, global_params: Arrays, mean_delta: Arrays, state: State
    ) -> tuple[Arrays, State]:
        b1 = self.spec.beta1
        m, v = _moments(state, global_params)
        m = [b1 * mi + (1 - b1) * d for mi, d in zip(m, mean_delta, strict=True)]
        v = [vi + d * d for vi, d in zip(v, mean_delta, strict=True)]
        return _step(global_params, m, v, self.spec.server_lr, self.spec.tau), _pack(m, v)
