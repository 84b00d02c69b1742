"""Exponential moving average of a model's weights (Ho et al. use decay 0.9999; sampling uses the average)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow`` = decay * shadow + (1 - decay) * weights after each update, with the usual warm-up
    decay_k = min(decay, (1 + k) / (10 + k)) so early averages are not dominated by the initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        shadow = [p for p in self.shadow.parameters()]
        torch._foreach_lerp_(shadow, [p.detach() for p in model.parameters()], 1.0 - decay)
