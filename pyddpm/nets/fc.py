"""The exercise's fully connected noise-prediction network, made configurable."""
from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}
TIME_EMBEDDINGS = ("linear", "sinusoidal")


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style sin/cos features of the time step (Ho et al. appendix B).

    The input is the network's time (t - 1) / T in [0, 1); it is scaled back by ``steps`` (T = 1000 by default) so
    the frequencies match the usual embedding of the integer step.
    """

    def __init__(self, dim: int, steps: float = 1000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time embedding dim must be an even number >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs * steps, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.reshape(-1, 1).float() * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class FcNetwork(nn.Module):
    """eps_theta(x_t, t) as a multilayer perceptron on flat inputs.

    With the defaults this is exactly the exercise's network: ``[x, t] -> Linear -> ReLU -> Linear -> ReLU ->
    Linear``, with ``t`` of shape (batch, 1) holding the 0-based step index divided by T.

    Args:
        input_dim: the data dimension D (2 for the toy data, 784 for MNIST).
        num_hidden: units per hidden layer.
        num_layers: number of hidden layers (the exercise uses 2).
        activation: one of ``ACTIVATIONS``.
        time_embedding: ``"linear"`` feeds t as one extra input (the exercise); ``"sinusoidal"`` feeds
            ``time_dim`` sin/cos features of t.
        time_dim: size of the sinusoidal embedding.
    """

    def __init__(
        self,
        input_dim: int,
        num_hidden: int,
        num_layers: int = 2,
        activation: str = "relu",
        time_embedding: str = "linear",
        time_dim: int = 32,
    ):
        super().__init__()
        for name, value in (("input_dim", input_dim), ("num_hidden", num_hidden), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FcNetwork: {name} must be a positive integer, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"FcNetwork: unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(
                f"FcNetwork: unknown time_embedding {time_embedding!r}; choose one of {', '.join(TIME_EMBEDDINGS)}"
            )
        self.input_dim = input_dim
        if time_embedding == "sinusoidal":
            self.time_embedding = SinusoidalTimeEmbedding(time_dim)
            extra = time_dim
        else:
            self.time_embedding = None
            extra = 1
        layers: list[nn.Module] = [nn.Linear(input_dim + extra, num_hidden), ACTIVATIONS[activation]()]
        for _ in range(num_layers - 1):
            layers += [nn.Linear(num_hidden, num_hidden), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(num_hidden, input_dim))
        self.network = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_hat for x of shape (batch, input_dim) and t of shape (batch, 1)."""
        if x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"FcNetwork expects x of shape (batch, {self.input_dim}), got {tuple(x.shape)}")
        t = t.reshape(x.shape[0], 1).to(x.dtype)
        features = self.time_embedding(t).to(x.dtype) if self.time_embedding is not None else t
        return self.network(torch.cat([x, features], dim=1))
