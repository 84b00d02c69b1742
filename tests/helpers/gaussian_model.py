"""Gaussian data N(m, S) and its exact noise predictor: a 'trained' DDPM whose every quantity has a closed form.

With x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, x_t ~ N(sqrt(abar_t) m, C_t), C_t = abar_t S + (1 - abar_t) I,
and the MMSE predictor is E[eps | x_t] = sqrt(1 - abar_t) C_t^{-1} (x_t - sqrt(abar_t) m).
"""
import math

import torch
from torch import nn


class ExactGaussianEpsilon(nn.Module):
    """eps*(x_t, t) = E[eps | x_t] for data N(mean, cov); t is the network input (t - 1) / T."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, alpha_cumprod: torch.Tensor):
        super().__init__()
        self.T = len(alpha_cumprod)
        abar = alpha_cumprod.double()
        eye = torch.eye(len(mean), dtype=torch.float64)
        cov_t = abar[:, None, None] * cov.double() + (1 - abar)[:, None, None] * eye
        # gain_t = sqrt(1 - abar_t) C_t^{-1}, stored per step
        self.register_buffer("gain", ((1 - abar).sqrt()[:, None, None] * torch.linalg.inv(cov_t)).float())
        self.register_buffer("shift", (abar.sqrt()[:, None] * mean.double()).float())

    def step_index(self, t_input: torch.Tensor) -> torch.Tensor:
        return torch.round(t_input.reshape(-1) * self.T).long()

    def forward(self, x: torch.Tensor, t_input: torch.Tensor) -> torch.Tensor:
        k = self.step_index(t_input)
        if bool((k == k[0]).all()):  # the sampler's case: one step for the whole batch
            return (x - self.shift[k[0]]) @ self.gain[k[0]].T
        return torch.einsum("bij,bj->bi", self.gain[k], x - self.shift[k])


def expected_loss(cov: torch.Tensor, alpha_cumprod: torch.Tensor) -> float:
    """E[L_simple] under the exact predictor: mean over t of tr Cov[eps | x_t] = sum_i abar l_i / (abar l_i + 1 - abar)."""
    lam = torch.linalg.eigvalsh(cov.double())
    abar = alpha_cumprod.double()[:, None]
    return float((abar * lam / (abar * lam + 1 - abar)).sum(1).mean())


def algorithm2_moments(model, mean: torch.Tensor, cov: torch.Tensor, coefs) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact mean and covariance of Algorithm 2's output with the exact predictor.

    Each step is x_{t-1} = a x_t + b eps*(x_t) + sigma z with eps* affine in x_t, so the Gaussian is
    propagated exactly: M <- A M + c, V <- A V A^T + sigma^2 I, from M_T = 0, V_T = I.
    """
    d = len(mean)
    abar = model.alpha_cumprod.double()
    eye = torch.eye(d, dtype=torch.float64)
    M, V = torch.zeros(d, dtype=torch.float64), eye.clone()
    for t in range(model.T, 0, -1):
        co = coefs[t - 1]
        cov_t = abar[t - 1] * cov.double() + (1 - abar[t - 1]) * eye
        gain = (1 - abar[t - 1]).sqrt() * torch.linalg.inv(cov_t)
        A = co.a * eye + co.b * gain
        M = A @ M - co.b * gain @ (abar[t - 1].sqrt() * mean.double())
        V = A @ V @ A.T + co.sigma**2 * eye
    return M, V


class ContinuousMixtureEpsilon(nn.Module):
    """eps*(x, s) = -sigma(s) grad log q_s(x) for data sum_k w_k N(m_k, S_k) under the continuous VP process of
    ``pyddpm.evaluate.ode_likelihood.ContinuousSchedule`` (q_s = sum_k w_k N(sqrt(abar(s)) m_k, abar(s) S_k +
    (1 - abar(s)) I)), with s = t_input + 1/T: the exact predictor at every s of the probability-flow ODE."""

    def __init__(self, schedule, means: torch.Tensor, covs: torch.Tensor, weights: torch.Tensor):
        super().__init__()
        self.schedule = schedule
        self.means, self.covs, self.log_w = means.double(), covs.double(), weights.double().log()

    def marginal(self, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and covariances of q_s's components."""
        abar = math.exp(self.schedule.log_abar_at(s))
        eye = torch.eye(self.means.shape[1], dtype=torch.float64)
        return math.sqrt(abar) * self.means, abar * self.covs + (1 - abar) * eye

    def component_log_probs(self, x: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """log w_k + log N(x; mean_k, cov_k) of q_s's components (n, K), and cov_k^{-1} (x - mean_k) (n, K, d)."""
        means, covs = self.marginal(s)
        precision = torch.linalg.inv(covs)
        diff = x.double()[:, None, :] - means
        precision_diff = torch.einsum("kij,nkj->nki", precision, diff)
        log_norm = -0.5 * (torch.logdet(covs) + means.shape[1] * math.log(2 * math.pi))
        return self.log_w + log_norm - 0.5 * (diff * precision_diff).sum(-1), precision_diff

    def forward(self, x: torch.Tensor, t_input: torch.Tensor) -> torch.Tensor:
        s = float(t_input[0, 0]) + 1.0 / self.schedule.T
        parts, precision_diff = self.component_log_probs(x, s)
        score = -(torch.softmax(parts, dim=1)[..., None] * precision_diff).sum(1)
        sigma = math.sqrt(-math.expm1(self.schedule.log_abar_at(s)))
        return (-sigma * score).to(x.dtype)


class HalfDiverging(nn.Module):
    """For a ``ContinuousSchedule`` ``schedule``: eps = sigma(s) x, the exact predictor of N(0, I) data, under which
    x(s) stays put (zero drift) and log p_{s0} is log N(x; 0, I); but eps = 3 x (1 + power |x|^2 / D) where the first
    coordinate is positive: there the drift carries x outwards along its own direction, by a factor of about 90 from
    s0 to 1 (power 0), or to infinity at a finite s (power 1)."""

    def __init__(self, schedule, power: int):
        super().__init__()
        self.schedule, self.power = schedule, power

    def forward(self, x, t_input):
        sigma = self.schedule.sigma_at(float(t_input[0]) + self.schedule.start)
        outwards = 3 * x * (1 + self.power * x.pow(2).mean(1, keepdim=True))
        return torch.where(x[:, :1] > 0, outwards, sigma * x)
