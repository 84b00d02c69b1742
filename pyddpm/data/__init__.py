"""Data sets and the affine map between data space and the space the diffusion model works in."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .mnist import IMAGE_DATASETS, IMAGE_SHAPE, DataError, dequantize, load_images
from .toy import TOY_DATASETS, Chequerboard, TwoGaussians

ALIASES = {"cb": "chequerboard", "tg": "two-gaussians", "two_gaussians": "two-gaussians",
           "fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist"}
DATASETS = tuple(TOY_DATASETS) + tuple(IMAGE_DATASETS)


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


def toy_distribution(name: str):
    """The true distribution object (with ``sample`` and ``log_prob``) of a toy data set."""
    return TOY_DATASETS[canonical_name(name)]()


def load_training_data(name: str, *, num_train: int, seed: int, data_dir: str | None = None,
                       download: bool = False) -> torch.Tensor:
    """The training set, shape (N, *sample_shape): toy sets draw ``num_train`` points in data space from ``seed``;
    image sets return the first ``num_train`` training images as flat uint8 pixels (N, 784), which
    ``to_data_space`` dequantises per batch."""
    name = canonical_name(name)
    if name in IMAGE_DATASETS:
        images, _ = load_images(name, "train", data_dir, download_missing=download)
        return images[:num_train].reshape(min(num_train, len(images)), -1)
    generator = torch.Generator().manual_seed(seed)
    return toy_distribution(name).sample(num_train, generator=generator)


def describe_training_data(name: str, n: int, *, seed: int, data_dir: str | None = None) -> str:
    """One line saying how many training examples a run uses and where they come from."""
    name = canonical_name(name)
    if name not in IMAGE_DATASETS:
        return f"{n:,} training points drawn from the true {name} distribution (seed {seed})"
    from .mnist import default_data_dir

    directory = data_dir if data_dir is not None else default_data_dir(name)
    return (f"{n:,} {name} training images from {directory} (dequantised afresh every batch); pass --data-dir "
            "to use another copy")


def to_data_space(batch: torch.Tensor) -> torch.Tensor:
    """A training batch in data space: uint8 pixels are dequantised to [0, 256/255) (``mnist.dequantize``)."""
    return dequantize(batch) if batch.dtype == torch.uint8 else batch


def data_config_entries(name: str) -> dict:
    """Entries of a run's ``data`` config beyond name, shape and transform: picture shape and value range of images."""
    if canonical_name(name) in IMAGE_DATASETS:
        return {"image_shape": list(IMAGE_SHAPE), "value_range": [0.0, 1.0]}
    return {}


__all__ = ["Chequerboard", "TwoGaussians", "DataTransform", "DataError", "DATASETS", "IMAGE_DATASETS",
           "canonical_name", "describe_training_data", "is_toy", "toy_distribution", "load_training_data", "load_images", "to_data_space",
           "data_config_entries"]
