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
        """Move the average one step towards ``model``'s current weights, paired by name (``model`` may be a
        rewritten copy of the shadow's architecture with the same parameter names, as ``training_network``'s)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        weights = dict(model.named_parameters())
        names = [name for name, _ in self.shadow.named_parameters()]
        missing = [name for name in names if name not in weights]
        if missing:
            raise KeyError(f"EMA: the model has no parameter {missing[0]!r} of the average")
        torch._foreach_lerp_([p for p in self.shadow.parameters()], [weights[n].detach() for n in names],
                             1.0 - decay)
