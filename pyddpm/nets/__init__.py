"""Noise-prediction networks eps_theta(x_t, t); each takes x of shape (batch, *sample_shape) and t of shape (batch, 1)."""
from __future__ import annotations

import inspect

from torch import nn

from ..families import build_registered
from .fc import FcNetwork
from .unet import ExerciseUNet
from .unet_ddpm import DDPMUNet

NETWORKS: dict[str, type[nn.Module]] = {"fc": FcNetwork, "unet": ExerciseUNet, "unet-ddpm": DDPMUNet}
# the image networks' default feature channels per level, as their constructors state them
DEFAULT_CHANNELS = {name: list(inspect.signature(cls).parameters["channels"].default)
                    for name, cls in NETWORKS.items() if "channels" in inspect.signature(cls).parameters}


def build_network(name: str, **kwargs) -> nn.Module:
    """The network registered under ``name``, built with ``kwargs`` (as stored in a run's config)."""
    return build_registered(NETWORKS, "network", name, kwargs)


__all__ = ["DDPMUNet", "DEFAULT_CHANNELS", "ExerciseUNet", "FcNetwork", "NETWORKS", "build_network"]
