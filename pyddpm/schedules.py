"""Beta schedules of the forward process q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I), every quantity
derived from them (``NoiseSchedule``, computed once) and the per-step coefficients of the reverse step.

Arrays are 0-based: step t = 1..T is stored at index t - 1. Everything is float64 so that the
per-step coefficients derived from it are exact to float32 rounding. Plain torch: nothing compiled.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

SCHEDULES = ("linear", "cosine")
VARIANCES = ("beta", "beta_tilde")  # sigma_t^2 of the reverse process (sec. 3.2)


def check_variance(variance: str) -> str:
    """``variance`` if it names a reverse-process variance, else ValueError listing the choices."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    return variance


class StepCoefficients(NamedTuple):
    """One reverse step of any sampler: x_next = a x + b eps_hat + c d + sum_k h_k H_k + sigma z, with the data
    prediction d = p x + q eps_hat (clamped to [lo, hi] when clip) and the history H_k of earlier data predictions
    (H_0 the latest). Without history (``h`` empty) the c d term is used only when clip=True: Algorithm 2 and DDIM."""
    a: float
    b: float
    sigma: float
    clip: bool = False
    c: float = 0.0
    p: float = 0.0
    q: float = 0.0
    lo: float = -1.0
    hi: float = 1.0
    h: tuple[float, ...] = ()

    def row(self) -> list[float]:
        """[a, b, sigma, c, p, q, lo, hi, h_0, h_1, h_2]: the kernels' coefficient row (unused h_k are 0)."""
        return [self.a, self.b, self.sigma, self.c, self.p, self.q, self.lo, self.hi,
                *self.h, *[0.0] * (MAX_HISTORY - len(self.h))]


MAX_HISTORY = 3  # history buffers a step can read (csrc/reverse_step.h kMaxHistory)


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


class NoiseSchedule:
    """The float64 tensors of one schedule, computed once (index t - 1 holds step t):
    ``beta``, ``alpha`` = 1 - beta, ``abar`` = prod_{s<=t} alpha_s, ``abar_prev`` = abar_{t-1} (abar_0 = 1) and
    ``beta_tilde`` = (1 - abar_{t-1}) / (1 - abar_t) beta_t, the posterior variance of eq. 7 (0 at t = 1)."""

    def __init__(self, schedule: str, T: int, beta_1: float = 1e-4, beta_T: float = 2e-2):
        self.T = T
        self.beta = make_betas(schedule, T, beta_1, beta_T)
        self.alpha = 1 - self.beta
        self.abar = torch.cumprod(self.alpha, 0)
        self.abar_prev = torch.cat([self.abar.new_ones(1), self.abar[:-1]])
        self.beta_tilde = (1 - self.abar_prev) / (1 - self.abar) * self.beta
        self._sigma2 = {"beta": self.beta, "beta_tilde": self.beta_tilde.clone()}
        # beta_tilde_1 = 0 -> beta_tilde_2 (beta_1 when T = 1), as Ho et al.'s code clips the posterior variance
        self._sigma2["beta_tilde"][0] = self.beta_tilde[1] if T > 1 else self.beta[0]

    def sigma2(self, variance: str) -> torch.Tensor:
        """sigma_t^2 of p_theta(x_{t-1} | x_t) for every t: beta_t, or beta_tilde_t with beta_tilde_2 at t = 1."""
        return self._sigma2[check_variance(variance)]

    def step_coefficients(self, variance: str, clip: bool = False) -> list[StepCoefficients]:
        """Per-step coefficients of x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t) + sigma_t z
        (Alg. 2 line 4); sigma_1 = 0. With ``clip`` the x0 estimate (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
        (eq. 15) is clamped to [-1, 1] and the posterior mean mu_tilde(x_t, x0) of eq. 7 is used instead."""
        var_all = (self.beta if check_variance(variance) == "beta" else self.beta_tilde).tolist()
        coefs = []
        for b, alpha, abar, abar_prev, var, t in zip(self.beta.tolist(), self.alpha.tolist(), self.abar.tolist(),
                                                     self.abar_prev.tolist(), var_all, range(1, self.T + 1)):
            sigma = math.sqrt(var) if t > 1 else 0.0
            if clip:  # eq. 7: mu_tilde = c x0 + a x_t with x0 = clamp(p x_t + q eps, -1, 1) (eq. 15)
                coefs.append(StepCoefficients(
                    a=math.sqrt(alpha) * (1 - abar_prev) / (1 - abar), b=0.0, sigma=sigma, clip=True,
                    c=b * math.sqrt(abar_prev) / (1 - abar), p=1 / math.sqrt(abar), q=-math.sqrt(1 / abar - 1)))
            else:  # Alg. 2 line 4
                coefs.append(StepCoefficients(
                    a=1 / math.sqrt(alpha), b=-b / (math.sqrt(1 - abar) * math.sqrt(alpha)), sigma=sigma))
        return coefs

    def ddim_coefficients(self, timesteps: list[int], eta: float = 0.0, clip: bool = False) -> list[StepCoefficients]:
        """Coefficients of the DDIM update from each t in ``timesteps`` to the next (0 after the last), eq. 12:
        x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z, with
        sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s) (eq. 16)."""
        if not math.isfinite(eta) or eta < 0:
            raise ValueError(f"DDIM eta must be a finite number >= 0, got {eta}")
        abar_all = self.abar.tolist()
        coefs = []
        for i, t in enumerate(timesteps):
            s = timesteps[i + 1] if i + 1 < len(timesteps) else 0
            abar_t = abar_all[t - 1]
            abar_s = abar_all[s - 1] if s > 0 else 1.0
            sigma = eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
            k = math.sqrt(max(1 - abar_s - sigma**2, 0.0))
            if clip:  # eps re-derived from the clamped x0, so x_s = c x0 + a x_t + sigma z
                coefs.append(StepCoefficients(
                    a=k / math.sqrt(1 - abar_t), b=0.0, sigma=sigma, clip=True,
                    c=math.sqrt(abar_s) - k * math.sqrt(abar_t / (1 - abar_t)),
                    p=1 / math.sqrt(abar_t), q=-math.sqrt(1 / abar_t - 1)))
            else:
                coefs.append(StepCoefficients(
                    a=math.sqrt(abar_s / abar_t),
                    b=k - math.sqrt(abar_s) * math.sqrt((1 - abar_t) / abar_t), sigma=sigma))
        return coefs


def _check_T(T: int) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (the number of diffusion steps) must be a positive integer, got {T!r}")
