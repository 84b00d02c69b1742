"""Validation of the baselines' constructor settings: one-line ValueErrors that name the setting."""
from __future__ import annotations

import math

import torch


def positive_int(owner: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else a ValueError naming ``owner`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def positive_float(owner: str, name: str, value, upper: float = math.inf) -> float:
    """``value`` as a float in (0, upper), else a ValueError naming ``owner`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < upper:
        bound = "> 0" if upper == math.inf else f"in (0, {upper})"
        raise ValueError(f"{owner}: {name} must be a number {bound}, got {value!r}")
    return float(value)


def choice(owner: str, name: str, value, choices) -> str:
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{owner}: unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def mlp_settings(owner: str, hidden, num_hidden_layers, activation, activations) -> None:
    """The settings every baseline's MLPs share: ``hidden`` units, ``num_hidden_layers`` (>= 0), ``activation``."""
    positive_int(owner, "hidden", hidden)
    positive_int(owner, "num_hidden_layers", num_hidden_layers, minimum=0)
    choice(owner, "activation", activation, activations)


def flat_batch(owner: str, x: torch.Tensor, dim: int) -> torch.Tensor:
    """x of shape (batch, *sample_shape) with prod(sample_shape) == dim, viewed as (batch, dim)."""
    if x.dim() < 2 or math.prod(x.shape[1:]) != dim:
        raise ValueError(f"{owner} expects x of shape (batch, *sample_shape) with {dim} values per example, "
                         f"got {tuple(x.shape)}")
    return x.reshape(x.shape[0], dim)


def sample_shape(owner: str, shape, dim: int) -> tuple[int, ...]:
    """``shape`` = (n, *sample_shape) as a tuple, checked to hold ``dim`` values per sample."""
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"{owner}: shape must be a sequence (n, *sample_shape), got {shape!r}") from None
    if len(shape) < 2 or shape[0] < 0 or math.prod(shape[1:]) != dim:
        raise ValueError(f"{owner}: shape must be (n, *sample_shape) with {dim} values per sample, got {shape}")
    return shape
