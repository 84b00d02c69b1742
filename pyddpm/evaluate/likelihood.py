"""The variational bound of Ho et al. (2020), eq. 5, in bits per dimension, for 8-bit images.

    L = L_T + sum_{t=2}^T L_{t-1} + L_0,
    L_T     = KL(q(x_T | x_0) || N(0, I))                            (closed form),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)),    x_t ~ q(x_t | x_0) (eqs. 6-7, 11),
    L_0     = -log p_theta(x_0 | x_1), the discretised Gaussian decoder of sec. 3.3 (eq. 13).

Convention: pixels k = 0..255 are evaluated undequantised at x_0 = 2 k / 255 - 1, each owning the bin
[x_0 - 1/255, x_0 + 1/255] of width 2/255 (the outermost bins extend to -inf and +inf), as in Ho et al. The
bound is then a discrete negative log-likelihood: -log2 P(pixels) / D with D the number of pixels, comparable
with published bits/dim. (pyddpm trains on pixels dequantised to k/255 + U/255, i.e. on [x_0, x_0 + 2/255]:
half a bin above the evaluation bin; see docs/RESULTS.md for what that costs.) The variance of
p_theta(x_{t-1} | x_t) is the run's sigma_t^2 (``DDPM.reverse_variance``). All bound arithmetic is float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..diffusion import DDPM, normal_kl

BINS = 256
BIN_WIDTH = 2.0 / (BINS - 1)  # one pixel level in model space


def pixels_to_model(pixels: torch.Tensor) -> torch.Tensor:
    """Integer pixels k in [0, 255] -> the bin centres x_0 = 2 k / 255 - 1 the bound is evaluated at (float64)."""
    if pixels.is_floating_point():
        raise TypeError(f"pixels must be an integer tensor of values 0..255, got {pixels.dtype}")
    if pixels.numel() and (pixels.min() < 0 or pixels.max() > BINS - 1):
        raise ValueError(f"pixels must lie in [0, {BINS - 1}], got [{int(pixels.min())}, {int(pixels.max())}]")
    return pixels.double() * (2 / (BINS - 1)) - 1


def dequantize_once(pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """Integer pixels k -> x = 2 (k + u) / 255 - 1 with u ~ U[0, 1) from a generator seeded by ``seed`` (float64):
    the continuous points whose log-density ``bits_per_dim`` turns into bits/dim of the pixels."""
    u = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (pixels.double() + u) * BIN_WIDTH - 1


def bits_per_dim(log_density: torch.Tensor, dims: int) -> torch.Tensor:
    """(-log p(x) / D + log(255/2)) / log 2 per example: a model-space log-density in nats of dequantised pixels
    -> an upper bound on -log2 P(pixels) / D (Theis et al. 2016), comparable with the variational bound."""
    return (-log_density.double() / dims - math.log(BIN_WIDTH)) / math.log(2)


def discretized_gaussian_log_likelihood(x0: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Elementwise log of int_{delta_-(x0)}^{delta_+(x0)} N(x; mean, var) dx (Ho et al. eq. 13), float64.

    delta_+(x) = x + 1/255 (+inf at x = 1), delta_-(x) = x - 1/255 (-inf at x = -1), for x0 on the grid
    2 k / 255 - 1. Phi(u) - Phi(l) is formed from log-CDFs on the side of the mean where both tails are
    small, so bins far in either tail keep their (tiny) probability instead of rounding to 0.
    """
    x0, mean, var = x0.double(), mean.double(), var.double()
    half = 1.0 / (BINS - 1)
    std = var.sqrt()
    upper = torch.where(x0 > 1 - half, math.inf, (x0 + half - mean) / std)
    lower = torch.where(x0 < -1 + half, -math.inf, (x0 - half - mean) / std)
    flip = lower > 0  # Phi(u) - Phi(l) = Phi(-l) - Phi(-u)
    hi, lo = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi))


def prior_kl(model: DDPM, x0: torch.Tensor) -> torch.Tensor:
    """Per-example L_T = KL(N(sqrt(abar_T) x0, (1 - abar_T) I) || N(0, I)) (eqs. 4-5) in nats, float64."""
    t = torch.full((x0.shape[0],), model.T, device=x0.device)
    _, abar, _ = model.schedule_at(t, x0.dim())
    kl = normal_kl(abar.sqrt() * x0.double(), 1 - abar, torch.zeros_like(abar), torch.ones_like(abar))
    return kl.expand_as(x0).flatten(1).sum(1)


DECODERS = ("discretized", "gaussian")


def bound_terms(model: DDPM, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None,
                variance: str | None = None, decoder: str = "discretized") -> torch.Tensor:
    """Per-example L_{t-1} in nats, float64: the KL of eq. 5 for t >= 2, L_0 = -log p_theta(x0 | x1) for t = 1.

    x0 is a batch on the grid 2 k / 255 - 1, t the 1-based steps of shape (batch,), eps the noise of
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 4; drawn when None). ``decoder`` "gaussian" takes L_0 as
    the continuous -log N(x0; mu_theta(x_1, 1), sigma_1^2) instead (continuous data such as the toy sets: the
    bound is then on -log p(x0), a density).
    """
    x0 = x0.double()
    eps = torch.randn_like(x0) if eps is None else eps.double()
    _, abar, _ = model.schedule_at(t, x0.dim())
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps  # eq. 4
    mean, var = model.p_mean_variance(x_t, t, variance)  # eq. 11
    terms = torch.empty_like(x0)
    first, rest = t == 1, t > 1
    if first.any() and decoder == "gaussian":  # L_0 of a continuous Gaussian decoder
        m, v = mean[first], var[first].expand_as(mean[first])
        terms[first] = 0.5 * ((x0[first] - m).pow(2) / v + v.log() + math.log(2 * math.pi))
    elif first.any():  # L_0 (eq. 13)
        terms[first] = -discretized_gaussian_log_likelihood(x0[first], mean[first], var[first])
    if rest.any():  # L_{t-1}: KL of eq. 5 between eqs. 6-7 and eq. 11
        post_mean, post_var = model.q_posterior(x0[rest], x_t[rest], t[rest])
        terms[rest] = normal_kl(post_mean, post_var, mean[rest], var[rest])
    return terms.flatten(1).sum(1)


@dataclass
class Bound:
    """The bound and its parts per image, in bits per dimension (float64 tensors of shape (n,))."""

    prior: torch.Tensor  # L_T
    diffusion: torch.Tensor  # sum_{t>=2} L_{t-1} (or its unbiased t-sampled estimate)
    decoder: torch.Tensor  # L_0
    per_t: list[float] | None  # mean L_{t-1} for t = 1..T (index t - 1; L_0 at 0), when all terms were computed

    @property
    def per_image(self) -> torch.Tensor:
        """L = L_T + sum_{t>=2} L_{t-1} + L_0 per image."""
        return self.prior + self.diffusion + self.decoder

    @property
    def bits_per_dim(self) -> float:
        return float(self.per_image.mean())

    @property
    def standard_error(self) -> float:
        """Standard error of the mean over images (it includes the Monte Carlo noise of x_t and t)."""
        n = self.per_image.numel()
        return float(self.per_image.std() / math.sqrt(n)) if n > 1 else math.nan


@torch.no_grad()
def variational_bound(model: DDPM, x0: torch.Tensor, *, t_samples: int | None = None, batch_size: int = 256,
                      variance: str | None = None, seed: int = 0, progress: bool = False,
                      decoder: str = "discretized") -> Bound:
    """The bound L of eq. 5 in bits/dim for each image of ``x0`` (grid values 2 k / 255 - 1, shape (n, ...)).
    With ``decoder`` "gaussian" (``bound_terms``) x0 is any continuous data in model space and L bounds -log p(x0).

    With ``t_samples`` None every term t = 1..T is computed, one x_t ~ q(x_t | x_0) per image and t.
    With ``t_samples = K`` each image gets K distinct steps s_1..s_K drawn uniformly from {2..T} and
    sum_{t>=2} L_{t-1} is estimated by (T - 1) / K sum_k L_{s_k - 1}, which is unbiased (each t >= 2 is drawn
    with probability K / (T - 1)); L_T (closed form) and L_0 (one network call; the largest single term, which
    would dominate the variance if sampled) are always exact. Noise comes from a generator seeded by ``seed``.
    """
    T = model.T
    if t_samples is not None and not (isinstance(t_samples, int) and 1 <= t_samples <= max(T - 1, 1)):
        raise ValueError(f"--t-samples must be an integer in [1, T - 1 = {T - 1}], got {t_samples!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if decoder == "discretized" and x0.numel() and (x0.min() < -1 or x0.max() > 1):
        raise ValueError("x0 must lie in [-1, 1] on the grid 2 k / 255 - 1; map pixels with pixels_to_model")
    device = model.beta.device
    generator = torch.Generator(device=device).manual_seed(seed)
    steps = list(range(2, T + 1)) if t_samples is None else None
    per_call = 1 + (len(steps) if steps is not None else t_samples)
    n, dims = x0.shape[0], x0[0].numel()
    to_bits = 1.0 / (dims * math.log(2))
    prior, diffusion, decoder = (torch.zeros(n, dtype=torch.float64) for _ in range(3))
    per_t = torch.zeros(T, dtype=torch.float64)
    bar = tqdm(total=n * per_call, desc="bound", unit="img·t", disable=not progress, dynamic_ncols=True,
               leave=False)
    for start in range(0, n, batch_size):
        x = x0[start:start + batch_size].to(device, torch.float64)
        b = x.shape[0]
        rows = slice(start, start + b)

        def term(t: torch.Tensor) -> torch.Tensor:
            eps = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float64)
            value = bound_terms(model, x, t, eps, variance, decoder).cpu()
            bar.update(b)
            return value

        prior[rows] = prior_kl(model, x).cpu()
        decoder[rows] = term(torch.ones(b, dtype=torch.long, device=device))
        per_t[0] += decoder[rows].sum()
        if steps is not None:
            for t in steps:
                value = term(torch.full((b,), t, dtype=torch.long, device=device))
                diffusion[rows] += value
                per_t[t - 1] += value.sum()
        elif T > 1:
            # K distinct steps per image, uniformly from {2..T}: the first K of a random permutation
            order = torch.rand(b, T - 1, generator=generator, device=device).argsort(dim=1)[:, :t_samples] + 2
            for k in range(t_samples):
                diffusion[rows] += term(order[:, k])
            diffusion[rows] *= (T - 1) / t_samples
    bar.close()
    return Bound(prior=prior * to_bits, diffusion=diffusion * to_bits, decoder=decoder * to_bits,
                 per_t=(per_t / n * to_bits).tolist() if steps is not None else None)
