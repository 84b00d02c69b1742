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
INPUT_EMBEDDINGS = ("none", "fourier")
MAX_INPUT_FREQUENCIES = 32  # octaves of the Fourier input features: 2^31 times the lowest frequency is plenty


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


class FourierInputEmbedding(nn.Module):
    """Fourier features of the input (Tancik et al. 2020; NeRF's positional encoding): sin and cos of each
    coordinate at ``frequencies`` octave-spaced angular frequencies 2 pi 2^k / ``max_period``, k = 0..frequencies-1
    (periods ``max_period``, ``max_period`` / 2, ...), in the units the network sees (model space).

    An MLP on raw coordinates is biased towards smooth functions (spectral bias), so it blurs sharp edges of the
    data; these features let it place edges more finely at little cost (a wider first layer). On the chequerboard
    (default toy run) they raise the share of samples inside the squares from 98.4% to 98.8%, to 99.4% together with
    ``TrainConfig.low_t_share``.
    Output: (batch, 2 * frequencies * dim), all sines first, each block ordered by coordinate then frequency.
    """

    def __init__(self, dim: int, frequencies: int = 8, max_period: float = 64.0):
        super().__init__()
        if (isinstance(frequencies, bool) or not isinstance(frequencies, int)
                or not 1 <= frequencies <= MAX_INPUT_FREQUENCIES):
            raise ValueError(f"FcNetwork: input_frequencies must be an integer in [1, {MAX_INPUT_FREQUENCIES}], "
                             f"got {frequencies!r}")
        if isinstance(max_period, bool) or not isinstance(max_period, (int, float)) or not (
                math.isfinite(max_period) and max_period > 0):
            raise ValueError(f"FcNetwork: input_max_period must be a positive number, got {max_period!r}")
        self.dim, self.frequencies = dim, frequencies
        freqs = 2 * math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float64) / max_period
        self.register_buffer("freqs", freqs.float(), persistent=False)

    @property
    def out_features(self) -> int:
        return 2 * self.frequencies * self.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = self._angles(x)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def with_input(self, x: torch.Tensor) -> torch.Tensor:
        """``torch.cat([x, self(x)], dim=1)`` in one concatenation (the fast sampling copy's first layer input)."""
        angles = self._angles(x)
        return torch.cat([x, angles.sin(), angles.cos()], dim=1)

    def _angles(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(-1) * self.freqs.to(x.dtype)).flatten(1)  # (batch, dim * frequencies)


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
        input_embedding: ``"none"`` feeds x as it is (the exercise); ``"fourier"`` feeds x and its Fourier features
            (``FourierInputEmbedding``: sin/cos of each coordinate at ``input_frequencies`` octaves, the longest
            period ``input_max_period`` in model-space units), which resolve sharp edges of the data better.
        input_frequencies: number of octaves of the Fourier features.
        input_max_period: their longest period (the toy data span 64 model-space units at the default data scale).
    """

    def __init__(
        self,
        input_dim: int,
        num_hidden: int,
        num_layers: int = 2,
        activation: str = "relu",
        time_embedding: str = "linear",
        time_dim: int = 32,
        input_embedding: str = "none",
        input_frequencies: int = 8,
        input_max_period: float = 64.0,
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
        if input_embedding not in INPUT_EMBEDDINGS:
            raise ValueError(f"FcNetwork: unknown input_embedding {input_embedding!r}; choose one of "
                             f"{', '.join(INPUT_EMBEDDINGS)}")
        self.input_dim = input_dim
        if input_embedding == "fourier":
            self.input_embedding = FourierInputEmbedding(input_dim, input_frequencies, input_max_period)
            extra_inputs = self.input_embedding.out_features
        else:
            self.input_embedding = None
            extra_inputs = 0
        if time_embedding == "sinusoidal":
            self.time_embedding = SinusoidalTimeEmbedding(time_dim)
            extra = time_dim
        else:
            self.time_embedding = None
            extra = 1
        layers: list[nn.Module] = [nn.Linear(input_dim + extra_inputs + extra, num_hidden), ACTIVATIONS[activation]()]
        for _ in range(num_layers - 1):
            layers += [nn.Linear(num_hidden, num_hidden), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(num_hidden, input_dim))
        self.network = nn.Sequential(*layers)

    @property
    def input_features(self) -> int:
        """How many of the first layer's inputs are x and its input features; the time features follow them."""
        return self.input_dim + (0 if self.input_embedding is None else self.input_embedding.out_features)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """The first layer's time inputs for t of shape (batch, 1): t itself, or its sinusoidal embedding."""
        return self.time_embedding(t) if self.time_embedding is not None else t

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_hat for x of shape (batch, input_dim) and t of shape (batch, 1)."""
        if x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"FcNetwork expects x of shape (batch, {self.input_dim}), got {tuple(x.shape)}")
        t = t.reshape(x.shape[0], 1).to(x.dtype)
        features = self.time_features(t).to(x.dtype)
        if self.input_embedding is None:
            return self.network(torch.cat([x, features], dim=1))
        return self.network(torch.cat([x, self.input_embedding(x), features], dim=1))
