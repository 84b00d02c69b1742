"""The DDPM of Ho et al. (2020): forward process, training loss (Alg. 1) and reverse-step coefficients (Alg. 2).

Step t = 1..T lives at index t - 1 of every schedule tensor; the network sees the 0-based index divided
by T, shape (batch, 1), as the exercise feeds it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .ops import StepCoefficients
from .schedules import make_betas

VARIANCES = ("beta", "beta_tilde")


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
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
        self.network = network
        self.beta_1, self.beta_T, self.T = beta_1, beta_T, T
        self.schedule, self.variance = schedule, variance
        beta64 = make_betas(schedule, T, beta_1, beta_T)
        self._beta64 = beta64
        self.register_buffer("beta", beta64.float())
        self.register_buffer("alpha", (1 - beta64).float())
        self.register_buffer("alpha_cumprod", torch.cumprod(1 - beta64, 0).float())
        self._coefficient_cache: dict[tuple, list[StepCoefficients]] = {}

    # ----- forward process ----------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 4), for 1-based steps t of shape (batch,)."""
        abar = self.alpha_cumprod[t - 1].reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    # ----- the reverse process as distributions (for the bound, eq. 5) -------------------------------
    def schedule_at(self, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float64 (beta_t, abar_t, abar_{t-1}) for 1-based steps t of shape (batch,), shaped to broadcast
        over a batch with ``ndim`` dimensions; abar_0 = 1."""
        beta = self._beta64.to(t.device)
        abar = torch.cumprod(1 - beta, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        shape = (-1,) + (1,) * (ndim - 1)
        return tuple(v[t - 1].reshape(shape) for v in (beta, abar, abar_prev))

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
        variance = variance or self.variance
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
        sigma2 = self._beta64.to(t.device)
        if variance == "beta_tilde":
            abar = torch.cumprod(1 - sigma2, 0)
            sigma2 = torch.cat([sigma2[:1], (1 - abar[:-1]) / (1 - abar[1:]) * sigma2[1:]])  # eq. 7, t >= 2
            sigma2[0] = sigma2[min(1, self.T - 1)]  # beta_tilde_1 = 0 -> beta_tilde_2 (beta_1 when T = 1)
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
        return ((t - 1).float() / self.T).reshape(-1, 1)

    # ----- Algorithm 1 --------------------------------------------------------------------------
    def negative_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example L_simple = ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2 (Alg. 1)."""
        if x.dim() < 2:
            raise ValueError(f"DDPM expects a batch of shape (batch, *sample_shape), got {tuple(x.shape)}")
        t = torch.randint(1, self.T + 1, (x.shape[0],), device=x.device)  # Alg. 1 line 3
        eps = torch.randn_like(x)  # line 4
        eps_hat = self.network(self.q_sample(x, t, eps), self.time_input(t))  # line 5
        return (eps - eps_hat).float().pow(2).flatten(1).sum(1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``negative_elbo`` over the batch."""
        return self.negative_elbo(x).mean()

    forward = negative_elbo

    # ----- Algorithm 2 --------------------------------------------------------------------------
    def sample(self, shape, seed: int | None = None, backend: str = "fused", **kwargs) -> torch.Tensor:
        """x_0 ~ p_theta by Algorithm 2; see ``pyddpm.samplers.ddpm_sample`` for the options."""
        from .samplers import ddpm_sample

        return ddpm_sample(self, shape, seed=seed, backend=backend, **kwargs)

    def step_coefficients(self, variance: str | None = None, clip: bool = False) -> list[StepCoefficients]:
        """Per-step coefficients of x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t) + sigma_t z.

        Index t - 1 holds step t; sigma_1 = 0 (no noise at the last step). With ``clip`` the x0 estimate
        (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) is clamped to [-1, 1] and the posterior mean
        mu_tilde(x_t, x0) of eq. 7 is used instead.
        """
        variance = variance or self.variance
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
        key = ("ddpm", variance, clip)
        if key not in self._coefficient_cache:
            beta = self._beta64.tolist()
            coefs = []
            abar = 1.0
            for t in range(1, self.T + 1):
                b = beta[t - 1]
                alpha = 1.0 - b
                abar_prev, abar = abar, abar * alpha
                var = b if variance == "beta" else (1 - abar_prev) / (1 - abar) * b
                sigma = math.sqrt(var) if t > 1 else 0.0
                if clip:  # eq. 7: mu_tilde = c x0 + a x_t with x0 = clamp(p x_t + q eps, -1, 1) (eq. 15)
                    coefs.append(StepCoefficients(
                        a=math.sqrt(alpha) * (1 - abar_prev) / (1 - abar), b=0.0, sigma=sigma, clip=True,
                        c=b * math.sqrt(abar_prev) / (1 - abar),
                        p=1 / math.sqrt(abar), q=-math.sqrt(1 / abar - 1)))
                else:  # Alg. 2 line 4
                    coefs.append(StepCoefficients(
                        a=1 / math.sqrt(alpha), b=-b / (math.sqrt(1 - abar) * math.sqrt(alpha)), sigma=sigma))
            self._coefficient_cache[key] = coefs
        return self._coefficient_cache[key]

    def ddim_timesteps(self, steps: int) -> list[int]:
        """``steps`` 1-based time steps from T down to 1, evenly spaced (Song et al. sec. 4.2)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.T:
            raise ValueError(f"DDIM steps must be an integer in [1, T={self.T}], got {steps!r}")
        ts = torch.linspace(self.T, 1, steps, dtype=torch.float64).round().long().tolist()
        return list(dict.fromkeys(ts))

    def ddim_coefficients(self, timesteps: list[int], eta: float = 0.0, clip: bool = False) -> list[StepCoefficients]:
        """Coefficients of the DDIM update from each t in ``timesteps`` to the next (0 after the last), eq. 12.

        x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z, with
        sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s) (eq. 16).
        """
        if not math.isfinite(eta) or eta < 0:
            raise ValueError(f"DDIM eta must be a finite number >= 0, got {eta}")
        abar_all = torch.cumprod(1 - self._beta64, 0).tolist()
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
