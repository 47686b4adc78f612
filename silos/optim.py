"""SGD and Adam steps for local training, without `torch.optim` (lean agents, issue 20).

Building any `torch.optim` optimizer imports `torch._dynamo` (with sympy and mpmath): about
830 modules and 70 MB of an agent's memory, held for the rest of its life, for a compiler
local training never uses. These classes do what `torch.optim.SGD` (no momentum) and
`torch.optim.Adam` (no amsgrad) do on CPU tensors with their defaults: the same operations in
the same order as torch's single-tensor path, so the same seed, data and start give the same
parameters bit for bit (tests/silos/test_optim.py checks both against torch.optim).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Sgd:
    """Plain SGD with L2 weight decay added to the gradient (torch.optim.SGD's defaults)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0):
        self.params = list(params)
        self.lr = lr
        self.weight_decay = weight_decay

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None  # torch.optim's default (set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            grad = p.grad
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            p.add_(grad, alpha=-self.lr)


class Adam:
    """Adam with L2 weight decay added to the gradient (torch.optim.Adam's defaults)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.params = list(params)
        self.lr = lr
        self.weight_decay = weight_decay
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = [0] * len(self.params)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.beta1, self.beta2
        for i, p in enumerate(self.params):
            if p.grad is None:  # torch.optim skips a parameter without a gradient too
                continue
            grad = p.grad
            self.steps[i] += 1
            step = float(self.steps[i])
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            exp_avg, exp_avg_sq = self.exp_avg[i], self.exp_avg_sq[i]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = self.lr / (1 - beta1**step)
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)


Optimizer = Sgd | Adam


def make_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float
) -> Optimizer:
    """`name` "adam" or "sgd" (the spec's `optimizer`)."""
    if name == "adam":
        return Adam(params, lr=lr, weight_decay=weight_decay)
    return Sgd(params, lr=lr, weight_decay=weight_decay)
