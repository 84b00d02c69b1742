"""A private stand-in for ``pyddpm.solvers`` (issue 32, the lead's), to be DROPPED when it lands on main: the same
face as /work/solver-contract.md (``solver_plan`` and a plan's fields) for DDIM alone, with today's DDIM rows
(``NoiseSchedule.ddim_coefficients``: a, b, sigma; c = p = q = h_k = 0), so the export can be built and tested.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

SAMPLERS = ("ddpm", "ddim")
DEFAULT_SAMPLER = "ddim"


class SolverPlan(NamedTuple):
    sampler: str
    timesteps: list[int]
    rows: torch.Tensor  # (N, 11) float64: a, b, sigma, c, p, q, lo, hi, h_0, h_1, h_2
    history: int
    clip: bool
    stochastic: bool


def solver_plan(model, sampler: str = DEFAULT_SAMPLER, steps: int | None = None, spacing=None) -> SolverPlan:
    """The plan of ``sampler`` with ``steps`` network calls on ``model`` (DDIM, eta 0, today's spacing)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown --sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if steps is None:
        steps = model.T if sampler == "ddpm" else 10
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= model.T:
        raise ValueError(f"--steps must be an integer in [1, T={model.T}], got {steps!r}")
    if sampler == "ddpm":
        if steps != model.T:
            raise ValueError(f"--sampler ddpm is Algorithm 2: it takes all T = {model.T} steps, got --steps {steps}")
        timesteps = list(range(model.T, 0, -1))
        coefs = [model.step_coefficients()[t - 1] for t in timesteps]
    else:
        timesteps = model.ddim_timesteps(steps)
        coefs = model.ddim_coefficients(timesteps)
    rows = torch.tensor([[c.a, c.b, c.sigma, 0.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0] for c in coefs],
                        dtype=torch.float64)
    return SolverPlan(sampler, timesteps, rows, 0, False, bool((rows[:, 2] != 0).any()))


def default_plan(model) -> tuple[str, int]:
    """(sampler, steps) that ``pyddpm-sample`` runs without --sampler/--steps: Algorithm 2, all T steps."""
    return "ddpm", model.T
