"""Data sets and the affine map between data space and the space the diffusion model works in."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .toy import TOY_DATASETS, Chequerboard, TwoGaussians

ALIASES = {"cb": "chequerboard", "tg": "two-gaussians", "two_gaussians": "two-gaussians"}
DATASETS = tuple(TOY_DATASETS)


def canonical_name(name: str) -> str:
    """The data set's canonical name, accepting the exercise's short names (``cb``, ``tg``)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        choices = ", ".join(sorted(set(DATASETS) | set(ALIASES)))
        raise ValueError(f"unknown data set {name!r}; choose one of {choices}")
    return key


def is_toy(name: str) -> bool:
    """Whether the data set is one of the 2-D toy distributions."""
    return canonical_name(name) in TOY_DATASETS


@dataclass(frozen=True)
class DataTransform:
    """x_model = (x - center) * scale; the exercise uses center 0.5, scale 2 ([0, 1] -> [-1, 1])."""

    center: float = 0.5
    scale: float = 2.0

    def __post_init__(self):
        if not self.scale > 0:
            raise ValueError(f"data scale must be > 0, got {self.scale}")

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Data space -> model space."""
        return (x - self.center) * self.scale

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> data space."""
        return x / self.scale + self.center

    def to_dict(self) -> dict:
        return asdict(self)


def toy_distribution(name: str):
    """The true distribution object (with ``sample`` and ``log_prob``) of a toy data set."""
    return TOY_DATASETS[canonical_name(name)]()


def load_training_data(name: str, *, num_train: int, seed: int) -> torch.Tensor:
    """The training set in data space, shape (N, *sample_shape); toy sets draw ``num_train`` points from ``seed``."""
    name = canonical_name(name)
    generator = torch.Generator().manual_seed(seed)
    return toy_distribution(name).sample(num_train, generator=generator)


__all__ = ["Chequerboard", "TwoGaussians", "DataTransform", "DATASETS", "canonical_name", "is_toy",
           "toy_distribution", "load_training_data"]
