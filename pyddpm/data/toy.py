"""The course's 2-D toy distributions on (about) [0, 1]^2, with their true densities."""
from __future__ import annotations

import math

import torch


def sample_count(n) -> int:
    """The number of points ``n`` asks for: an int, or a one-element shape ``(n,)`` as torch.distributions takes."""
    if isinstance(n, (tuple, list, torch.Size)):
        if len(n) != 1:
            raise ValueError(f"toy data sets draw points of shape (n, 2): sample_shape must be (n,), got {tuple(n)}")
        n = n[0]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of points must be a non-negative integer, got {n!r}")
    return n


class TwoGaussians:
    """Mixture 1/5 N((0.75, 0.75), 0.1^2 I) + 4/5 N((0.25, 0.25), 0.1^2 I)."""

    name = "two-gaussians"
    means = torch.tensor([[0.75, 0.75], [0.25, 0.25]], dtype=torch.float64)
    weights = torch.tensor([0.2, 0.8], dtype=torch.float64)
    std = 0.1
    plot_range = (-0.25, 1.25)

    def sample(self, n=(1,), generator: torch.Generator | None = None) -> torch.Tensor:
        """n points, shape (n, 2), float32; ``n`` is an int or ``(n,)`` (``sample((n,))`` as in the course)."""
        n = sample_count(n)
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (self.means[component] + self.std * noise).float()

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; mu_k, std^2 I) per component, shape (n, 2)."""
        x = x.double().unsqueeze(1)
        sq = ((x - self.means.to(x.device)) ** 2).sum(-1)
        log_norm = -math.log(2 * math.pi * self.std**2)
        return self.weights.to(x.device).log() + log_norm - sq / (2 * self.std**2)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The true log-density at each point, shape (n,)."""
        return torch.logsumexp(self.component_log_probs(x), dim=1)


class Chequerboard:
    """Uniform on the 5 squares (i + j even) of a 3x3 grid on [0, 1]^2: density 9/5 there, 0 elsewhere."""

    name = "chequerboard"
    grid = 3
    squares = [(i, j) for i in range(3) for j in range(3) if (i + j) % 2 == 0]
    plot_range = (-0.1, 1.1)

    def sample(self, n=(1,), generator: torch.Generator | None = None) -> torch.Tensor:
        """n points, shape (n, 2), float32; ``n`` is an int or ``(n,)`` (``sample((n,))`` as in the course)."""
        n = sample_count(n)
        cells = torch.tensor(self.squares, dtype=torch.float64)
        which = torch.randint(len(self.squares), (n,), generator=generator)
        offset = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return ((cells[which] + offset) / self.grid).float()

    def square_index(self, x: torch.Tensor) -> torch.Tensor:
        """Index into ``squares`` of the square holding each point, or -1 outside the support; shape (n,)."""
        x = x.double()
        cell = torch.floor(x * self.grid).long()
        inside = ((x >= 0) & (x < 1)).all(1) & ((cell.sum(1) % 2) == 0)
        index = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        for k, (i, j) in enumerate(self.squares):
            index[inside & (cell[:, 0] == i) & (cell[:, 1] == j)] = k
        return index

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log(9/5) inside the support, -inf outside; shape (n,)."""
        inside = self.square_index(x) >= 0
        value = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
        value[inside] = math.log(self.grid**2 / len(self.squares))
        return value


TOY_DATASETS = {"two-gaussians": TwoGaussians, "chequerboard": Chequerboard}
