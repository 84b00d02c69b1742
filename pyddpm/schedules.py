"""Beta schedules of the forward process q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I).

Arrays are 0-based: step t = 1..T is stored at index t - 1. Everything is float64 so that the
per-step coefficients derived from it are exact to float32 rounding.
"""
from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")


def linear_betas(T: int, beta_1: float = 1e-4, beta_T: float = 2e-2) -> torch.Tensor:
    """beta_t linearly spaced from beta_1 to beta_T (Ho et al. sec. 4)."""
    _check_T(T)
    if not 0.0 < beta_1 <= beta_T < 1.0:
        raise ValueError(f"need 0 < beta_1 <= beta_T < 1, got beta_1={beta_1}, beta_T={beta_T}")
    return torch.linspace(beta_1, beta_T, T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - abar_t / abar_{t-1} with abar from the cosine rule (Nichol & Dhariwal eq. 17)."""
    _check_T(T)
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def make_betas(schedule: str, T: int, beta_1: float = 1e-4, beta_T: float = 2e-2) -> torch.Tensor:
    """The betas of the named schedule ('linear' or 'cosine')."""
    if schedule == "linear":
        return linear_betas(T, beta_1, beta_T)
    if schedule == "cosine":
        return cosine_betas(T)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def _check_T(T: int) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (the number of diffusion steps) must be a positive integer, got {T!r}")
