"""The DDPM of Ho et al. (2020): forward process, training loss (Alg. 1) and reverse-step coefficients (Alg. 2).

Step t = 1..T lives at index t - 1 of every schedule tensor; the network sees the 0-based index divided
by T, shape (batch, 1), as the exercise feeds it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .schedules import VARIANCES, NoiseSchedule, StepCoefficients, check_variance

__all__ = ["DDPM", "VARIANCES", "low_t_timesteps", "network_time", "normal_kl"]


def network_time(t: torch.Tensor, T: int) -> torch.Tensor:
    """What the network sees for 1-based steps t of shape (batch,): (t - 1) / T as float32 of shape (batch, 1)."""
    return ((t - 1).to(torch.float32) / T).reshape(-1, 1)


def low_t_timesteps(n: int, T: int, share: float, low_range: float, device=None) -> torch.Tensor:
    """1-based steps t, shape (n,), from the mixture (1 - share) U{1..T} + share U{1..ceil(low_range T)}: a
    training option that spends more of the batch on the last steps of the reverse process, where a sharp-edged
    data set is resolved. ``share`` 0 gives Algorithm 1's uniform t (the same draws as ``DDPM.negative_elbo``); this
    is not L_simple, but a reweighting of its terms over t."""
    if not 0.0 <= share <= 1.0 or not 0.0 < low_range <= 1.0:
        raise ValueError(f"low_t_timesteps: need share in [0, 1] and low_range in (0, 1], got {share}, {low_range}")
    t = torch.randint(1, T + 1, (n,), device=device)
    if share == 0.0:
        return t
    low = torch.randint(1, max(1, math.ceil(low_range * T - 1e-9)) + 1, (n,), device=device)
    return torch.where(torch.rand(n, device=device) < 1.0 - share, t, low)


def normal_kl(mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise, in nats (Ex. 3.3):
    1/2 (log(var2 / var1) + (var1 + (mean1 - mean2)^2) / var2 - 1)."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


class DDPM(nn.Module):
    """A denoising diffusion model around a noise-prediction network eps_theta(x_t, t).

    Args:
        network: maps (x_t, t) with t of shape (batch, 1) in [0, 1) to eps_hat of x_t's shape.
        beta_1, beta_T: ends of the linear schedule.
        T: number of diffusion steps.
        schedule: ``"linear"`` (Ho et al.) or ``"cosine"`` (Nichol & Dhariwal).
        variance: reverse-process variance sigma_t^2, ``"beta"`` (the default, as the exercise asks) or
            ``"beta_tilde"`` (the posterior variance).
    """

    def __init__(
        self,
        network: nn.Module,
        beta_1: float = 1e-4,
        beta_T: float = 2e-2,
        T: int = 100,
        schedule: str = "linear",
        variance: str = "beta",
    ):
        super().__init__()
        self.network = network
        self.beta_1, self.beta_T, self.T = beta_1, beta_T, T
        self.schedule, self.variance = schedule, check_variance(variance)
        self.noise_schedule = NoiseSchedule(schedule, T, beta_1, beta_T)  # float64, on the CPU
        self.register_buffer("beta", self.noise_schedule.beta.float())
        self.register_buffer("alpha", self.noise_schedule.alpha.float())
        self.register_buffer("alpha_cumprod", self.noise_schedule.abar.float())
        self._coefficient_cache: dict[tuple, list[StepCoefficients]] = {}

    # ----- forward process ----------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """A draw from the forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (eq. 4):
        x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

        Args:
            x0: clean data in model space, shape (batch, *sample_shape).
            t: 1-based steps of shape (batch,), each in 1..T (abar_t = prod_{s <= t} (1 - beta_s)).
            eps: the noise, eps ~ N(0, I) of x0's shape; passing it in lets Algorithm 1 compare eps_theta with it.
        """
        abar = self.alpha_cumprod[t - 1].reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    # ----- the reverse process as distributions (for the bound, eq. 5) -------------------------------
    def schedule_at(self, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float64 (beta_t, abar_t, abar_{t-1}) for 1-based steps t of shape (batch,), shaped to broadcast
        over a batch with ``ndim`` dimensions; abar_0 = 1."""
        shape = (-1,) + (1,) * (ndim - 1)
        s = self.noise_schedule
        return tuple(v.to(t.device)[t - 1].reshape(shape) for v in (s.beta, s.abar, s.abar_prev))

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean mu_tilde_t(x_t, x0) and variance beta_tilde_t of q(x_{t-1} | x_t, x0) (eqs. 6-7), float64.

        mu_tilde_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t,
        beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t; t is 1-based of shape (batch,).
        """
        beta, abar, abar_prev = self.schedule_at(t, x0.dim())
        mean = (abar_prev.sqrt() * beta / (1 - abar) * x0.double()
                + (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar) * x_t.double())
        return mean, (1 - abar_prev) / (1 - abar) * beta

    def reverse_variance(self, t: torch.Tensor, ndim: int = 1, variance: str | None = None) -> torch.Tensor:
        """sigma_t^2 of p_theta(x_{t-1} | x_t) (sec. 3.2): beta_t, or beta_tilde_t of eq. 7, float64.

        beta_tilde_1 = 0, so at t = 1 (the decoder of sec. 3.3) beta_tilde uses beta_tilde_2 instead, as Ho et
        al.'s code does (its clipped posterior log-variance; their code also uses beta_tilde_2 at t = 1 for
        sigma_t^2 = beta_t, where pyddpm keeps beta_1). Algorithm 2 adds no noise at t = 1 either way.
        """
        sigma2 = self.noise_schedule.sigma2(variance or self.variance).to(t.device)
        return sigma2[t - 1].reshape((-1,) + (1,) * (ndim - 1))

    def p_mean_variance(self, x_t: torch.Tensor, t: torch.Tensor,
                        variance: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean mu_theta(x_t, t) = (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(alpha_t) (eq. 11)
        and variance sigma_t^2 (``reverse_variance``) of p_theta(x_{t-1} | x_t), float64; t 1-based, (batch,)."""
        eps_hat = self.network(x_t.to(self.beta.dtype), self.time_input(t)).double()
        beta, abar, _ = self.schedule_at(t, x_t.dim())
        mean = (x_t.double() - beta / (1 - abar).sqrt() * eps_hat) / (1 - beta).sqrt()
        return mean, self.reverse_variance(t, x_t.dim(), variance)

    def time_input(self, t: torch.Tensor | int, batch: int | None = None) -> torch.Tensor:
        """What the network sees for 1-based step t: (t - 1) / T with shape (batch, 1)."""
        if isinstance(t, int):
            return torch.full((batch, 1), (t - 1) / self.T, device=self.beta.device)
        return network_time(t, self.T)

    # ----- Algorithm 1 --------------------------------------------------------------------------
    def negative_elbo(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example L_simple = ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2 (Alg. 1);
        ``t`` (1-based, shape (batch,)) given: at those steps instead of t ~ U{1..T}."""
        if x.dim() < 2:
            raise ValueError(f"DDPM expects a batch of shape (batch, *sample_shape), got {tuple(x.shape)}")
        if t is None:
            t = torch.randint(1, self.T + 1, (x.shape[0],), device=x.device)  # Alg. 1 line 3
        elif t.shape != (x.shape[0],):
            raise ValueError(f"DDPM: t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        eps = torch.randn_like(x)  # line 4
        eps_hat = self.network(self.q_sample(x, t, eps), self.time_input(t))  # line 5
        return (eps - eps_hat).float().pow(2).flatten(1).sum(1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``negative_elbo`` over the batch."""
        return self.negative_elbo(x).mean()

    forward = negative_elbo

    # ----- Algorithm 2 --------------------------------------------------------------------------
    def sample(self, shape, seed: int | None = None, backend: str = "fused", sampler: str = "ddpm",
               steps: int | None = None, **kwargs) -> torch.Tensor:
        """x_0 ~ p_theta by Algorithm 2 (the network called T times, t = T..1), or by ``sampler`` with ``steps``
        network calls (e.g. ``sampler="dpm++2m", steps=10``); see ``pyddpm.samplers.sample`` for the options."""
        from .samplers import sample

        return sample(self, shape, sampler, steps, seed=seed, backend=backend, **kwargs)

    def step_coefficients(self, variance: str | None = None, clip: bool = False) -> list[StepCoefficients]:
        """Per-step coefficients of x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t) + sigma_t z
        (Alg. 2), index t - 1 holding step t; see ``NoiseSchedule.step_coefficients``. Cached per (variance, clip)."""
        key = (check_variance(variance or self.variance), clip)
        if key not in self._coefficient_cache:
            self._coefficient_cache[key] = self.noise_schedule.step_coefficients(*key)
        return self._coefficient_cache[key]

    def ddim_timesteps(self, steps: int) -> list[int]:
        """``steps`` 1-based time steps from T down to 1, evenly spaced (Song et al. sec. 4.2)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.T:
            raise ValueError(f"DDIM steps must be an integer in [1, T={self.T}], got {steps!r}")
        ts = torch.linspace(self.T, 1, steps, dtype=torch.float64).round().long().tolist()
        return list(dict.fromkeys(ts))

    def ddim_coefficients(self, timesteps: list[int], eta: float = 0.0, clip: bool = False) -> list[StepCoefficients]:
        """Coefficients of the DDIM update from each t in ``timesteps`` to the next (0 after the last), eq. 12; see
        ``NoiseSchedule.ddim_coefficients``."""
        return self.noise_schedule.ddim_coefficients(timesteps, eta, clip)
