"""The course's comparison models beside the DDPM: a RealNVP flow and a VAE with the same face as ``pyddpm.DDPM``.

Each has ``loss(x)`` (the mean training objective over a batch), ``sample(shape, seed=None)`` and
``log_likelihood(x, ...)`` (per-example log-density in nats of model space; ``bits_per_dim`` turns it into the
DDPM's bits/dim convention for pixels), and a JSON-serialisable ``config`` that ``build_baseline`` rebuilds from.
"""
from __future__ import annotations

from torch import nn

from ..data import is_toy
from ..families import build_registered, register_family
from .flow import RealNVP
from .pixels import bits_per_dim, pixel_grid
from .vae import VAE, gaussian_kl

BASELINES: dict[str, type[nn.Module]] = {"flow": RealNVP, "vae": VAE}
for _name, _cls in BASELINES.items():  # so that pyddpm.store rebuilds their runs
    register_family(_name, _cls)
DATA_SCALE = 2.0  # the model-space scale the default settings are made for, toy data too: the exercise's [-1, 1]

_DEFAULTS = {
    ("flow", "toy"): {"dim": 2, "num_couplings": 8, "hidden": 128, "num_hidden_layers": 2},
    ("flow", "image"): {"dim": 784, "num_couplings": 8, "hidden": 512, "num_hidden_layers": 2,
                        "image_shape": [1, 28, 28], "mask": "checkerboard", "pretransform": "logit", "alpha": 0.05},
    ("vae", "toy"): {"dim": 2, "latent_dim": 2, "hidden": 64, "num_hidden_layers": 2, "likelihood": "gaussian"},
    ("vae", "image"): {"dim": 784, "latent_dim": 32, "hidden": 512, "num_hidden_layers": 2,
                       "likelihood": "discretized"},
}


def build_baseline(name: str, **kwargs) -> nn.Module:
    """The baseline registered under ``name``, built with ``kwargs`` (as stored in a run's config)."""
    return build_registered(BASELINES, "baseline", name, kwargs)


def default_kwargs(name: str, dataset: str) -> dict:
    """The default constructor settings of baseline ``name`` for data set ``dataset`` (toy or image)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return dict(_DEFAULTS[name, "toy" if is_toy(dataset) else "image"])


__all__ = [
    "BASELINES",
    "DATA_SCALE",
    "VAE",
    "RealNVP",
    "bits_per_dim",
    "build_baseline",
    "default_kwargs",
    "gaussian_kl",
    "pixel_grid",
]
