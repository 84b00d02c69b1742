"""Building blocks the flow and the VAE share: an MLP, a soft bound, and seeded N(0, I) noise."""
from __future__ import annotations

import torch
from torch import nn

from ..nets.fc import ACTIVATIONS
from ..philox import philox_normal


def mlp(in_dim: int, hidden: int, num_hidden_layers: int, out_dim: int, activation: str) -> nn.Sequential:
    """in_dim -> [Linear -> activation] * num_hidden_layers -> Linear -> out_dim (one Linear when 0 hidden layers)."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_hidden_layers):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def soft_bound(raw: torch.Tensor, bound: float) -> torch.Tensor:
    """bound * tanh(raw / bound): the identity near 0, smoothly limited to (-bound, bound)."""
    return bound * torch.tanh(raw / bound)


def standard_normal(shape, seed: int | None, step: int, like: torch.Tensor, sample_offset: int = 0) -> torch.Tensor:
    """N(0, I) noise of ``shape`` on ``like``'s device and dtype.

    With a seed it follows pyddpm's counter-based Philox rule (``pyddpm.philox``): sample i depends only on
    (seed, i, step), not on the batch size, so a flow's z at step 0 is the DDPM's x_T for the same seed and
    shape; row r of the batch is sample ``sample_offset + r``. Without one it comes from torch's global generator.
    """
    if seed is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return philox_normal(shape, seed, step, sample_offset, device=like.device, dtype=like.dtype)
