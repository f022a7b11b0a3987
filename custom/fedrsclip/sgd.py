"""Plain SGD with momentum and weight decay for the prompt contexts: torch.optim.SGD's update, without its import.

The first call of any `torch.optim` optimizer imports torch._dynamo (its methods are wrapped by
`torch._compile._disable_dynamo`): 2 to 4 s and about 180 MB resident on 2 cores, more than everything else a warm
site start does. The prompts are two small tensors, so the update is written out here: the same operations in the
same order as `torch.optim.SGD` (single-tensor path, dampening 0, no Nesterov), which the tests compare step by step.
"""

from __future__ import annotations

from typing import Iterable

import torch


class SGD:
    """p <- p - lr * b, b <- momentum * b + (g + weight_decay * p) (b = g + weight_decay * p at the first step)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.params = list(params)
        if not lr > 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"SGD needs lr > 0, momentum >= 0, weight_decay >= 0; got {lr}, {momentum}, {weight_decay}"
            )
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for i, param in enumerate(self.params):
            if param.grad is None:
                continue
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum != 0:
                if self.buffers[i] is None:
                    self.buffers[i] = torch.clone(grad).detach()
                else:
                    self.buffers[i].mul_(self.momentum).add_(grad)
                grad = self.buffers[i]
            param.add_(grad, alpha=-self.lr)
