"""The variational bound (Ho et al. eq. 5) in bits/dim, checked against closed forms.

With the exact noise predictor of Gaussian data (tests/helpers/gaussian_model.py) eps*(x_t) is affine in x_t, so
mu_theta(x_t) = A_t x_t + c_t and, for a fixed image x0, every term of the bound has a closed form:

    E_eps L_{t-1} = d/2 (log(sigma_t^2 / beta_tilde_t) + beta_tilde_t / sigma_t^2 - 1)
                    + E||mu_tilde - mu_theta||^2 / (2 sigma_t^2),
    mu_tilde - mu_theta = (P_t I + sqrt(abar_t)(Q_t I - A_t)) x0 - c_t + sqrt(1 - abar_t)(Q_t I - A_t) eps,

with mu_tilde = P_t x0 + Q_t x_t (eq. 7), so E||.||^2 = ||u||^2 + (1 - abar_t) ||Q_t I - A_t||_F^2. L_T is
closed form, and L_0 = E -log P(bin of x0 | mu_theta(x_1)) is a sum over coordinates of 1-D Gaussian
expectations (coordinate i of mu_theta(x_1) is N(m_i, v_i) given x0), done by 80-node Gauss-Hermite
quadrature (exact to ~1e-12 here). The implementation estimates the same per-image expectation by Monte Carlo
(one x_t per image and t); their difference has mean 0 and only x_t-noise, so the test tolerance is
4 standard errors of that difference (the seed is fixed; a false failure would have probability < 1e-4).
Independently of all that, the data's own discrete entropy is known exactly, and no model's bound may be
below it.
"""
import math

import numpy as np
import pytest
import scipy.special
import torch
from helpers.gaussian_model import ExactGaussianEpsilon

from pyddpm import DDPM, FcNetwork
from pyddpm.evaluate.likelihood import (bound_terms, discretized_gaussian_log_likelihood, pixels_to_model,
                                        prior_kl, variational_bound)

MEAN = torch.tensor([0.2, -0.1, 0.0])
COV = torch.tensor([[0.050, 0.015, 0.000], [0.015, 0.025, -0.005], [0.000, -0.005, 0.040]])  # > 3.5 sd inside [-1, 1]
# the entropy of the data quantised to bins of width 2/255, in bits/dim: h(N(m, S)) - d log(2/255), exact up to
# O(width^2 / (24 var)) < 1e-4 nats and the 1e-4 of the mass clamped into the outer bins
ENTROPY_BITS = (0.5 * math.log((2 * math.pi * math.e) ** 3 * torch.linalg.det(COV.double()).item())
                - 3 * math.log(2 / 255)) / (3 * math.log(2))


def gaussian_ddpm(T, variance="beta", schedule="linear"):
    model = DDPM(torch.nn.Identity(), T=T, variance=variance, schedule=schedule)
    model.network = ExactGaussianEpsilon(MEAN, COV, model.alpha_cumprod)
    return model


def gaussian_pixels(n, seed=0):
    """n images of N(MEAN, COV) quantised to 8-bit pixels (clamped to the outer bins)."""
    g = torch.Generator().manual_seed(seed)
    x = MEAN + torch.randn(n, len(MEAN), generator=g) @ torch.linalg.cholesky(COV).T
    return ((x.double() + 1) * 127.5).round().clamp(0, 255).long()


def schedule64(model):
    beta = model.noise_schedule.beta
    abar = torch.cumprod(1 - beta, 0)
    return beta, abar, torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])


def sigma2_at(model, variance, t):
    beta, abar, abar_prev = schedule64(model)
    if variance == "beta":
        return beta[t - 1]
    s = max(t, 2) if model.T > 1 else 1  # beta_tilde_1 = 0: the decoder uses beta_tilde_2
    return (1 - abar_prev[s - 1]) / (1 - abar[s - 1]) * beta[s - 1]


def mean_map(model, t):
    """(A_t, c_t) with mu_theta(x_t) = A_t x_t + c_t under the exact predictor (eq. 11)."""
    beta, abar, _ = schedule64(model)
    d = len(MEAN)
    eye = torch.eye(d, dtype=torch.float64)
    cov_t = abar[t - 1] * COV.double() + (1 - abar[t - 1]) * eye
    gain = (1 - abar[t - 1]).sqrt() * torch.linalg.inv(cov_t)  # eps* = gain (x_t - sqrt(abar_t) m)
    k = beta[t - 1] / (1 - abar[t - 1]).sqrt()
    A = (eye - k * gain) / (1 - beta[t - 1]).sqrt()
    c = k * gain @ (abar[t - 1].sqrt() * MEAN.double()) / (1 - beta[t - 1]).sqrt()
    return A, c


def analytic_bound_nats(model, x0, variance):
    """E_eps of (L_T, sum_{t>=2} L_{t-1}, L_0) for each image of x0 (n, d), in nats: the closed forms above."""
    beta, abar, abar_prev = schedule64(model)
    n, d = x0.shape
    eye = torch.eye(d, dtype=torch.float64)
    aT = abar[-1]
    prior = 0.5 * (d * (-torch.log(1 - aT) + (1 - aT) - 1) + aT * (x0**2).sum(1))
    diffusion = torch.zeros(n, dtype=torch.float64)
    for t in range(2, model.T + 1):
        A, c = mean_map(model, t)
        P = abar_prev[t - 1].sqrt() * beta[t - 1] / (1 - abar[t - 1])
        Q = (1 - beta[t - 1]).sqrt() * (1 - abar_prev[t - 1]) / (1 - abar[t - 1])
        tilde, s2 = (1 - abar_prev[t - 1]) / (1 - abar[t - 1]) * beta[t - 1], sigma2_at(model, variance, t)
        M = Q * eye - A
        u = x0 @ (P * eye + abar[t - 1].sqrt() * M).T - c
        sq = (u**2).sum(1) + (1 - abar[t - 1]) * (M**2).sum()
        diffusion += 0.5 * d * (torch.log(s2 / tilde) + tilde / s2 - 1) + sq / (2 * s2)
    A, c = mean_map(model, 1)
    m = x0 @ (abar[0].sqrt() * A).T + c  # mean of mu_theta(x_1) given x0
    v = (1 - abar[0]) * (A**2).sum(1)  # its variance per coordinate
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    nodes, weights = torch.from_numpy(nodes), torch.from_numpy(weights) / math.sqrt(2 * math.pi)
    mu = m[..., None] + v.sqrt()[:, None] * nodes  # (n, d, nodes)
    std = sigma2_at(model, variance, 1).sqrt()
    x = x0[..., None].expand_as(mu)
    # Phi(a_u) - Phi(a_l), a = (x +- 1/255 - mu) / std (eq. 13; the outer bins reach +-inf), mirrored to
    # Phi(-a_l) - Phi(-a_u) above the mean so that ndtr is evaluated in its accurate lower tail
    a_u = torch.where(x > 1 - 1 / 255, math.inf, (x + 1 / 255 - mu) / std)
    a_l = torch.where(x < -1 + 1 / 255, -math.inf, (x - 1 / 255 - mu) / std)
    ndtr = lambda a: torch.from_numpy(scipy.special.ndtr(a.numpy()))  # torch's ndtr underflows below -16
    p = torch.where(x < mu, ndtr(a_u) - ndtr(a_l), ndtr(-a_l) - ndtr(-a_u))
    decoder = -(torch.log(p) * weights).sum(-1).sum(1)
    return prior, diffusion, decoder


@pytest.mark.parametrize("T, variance, schedule, gap_below", [
    (100, "beta", "linear", 0.2), (1000, "beta_tilde", "linear", 1.0), (200, "beta", "cosine", 0.1)])
def test_bound_matches_its_closed_form_with_the_exact_predictor(T, variance, schedule, gap_below):
    """Measured gaps L - H: 0.11, 0.74 (beta_tilde is too small a reverse variance for this narrow data) and
    0.04 bits/dim; ``gap_below`` keeps a margin over each."""
    model = gaussian_ddpm(T, variance, schedule)
    x0 = pixels_to_model(gaussian_pixels(1000))
    bound = variational_bound(model, x0, batch_size=1000, seed=1)
    to_bits = 1 / (x0.shape[1] * math.log(2))
    prior, diffusion, decoder = (v * to_bits for v in analytic_bound_nats(model, x0, variance))
    torch.testing.assert_close(bound.prior, prior, rtol=1e-9, atol=1e-12)  # closed form in both
    parts = ((bound.diffusion, diffusion), (bound.decoder, decoder), (bound.per_image, prior + diffusion + decoder))
    for got, exact in parts:
        diff = got - exact
        se = diff.std().item() / math.sqrt(len(diff))
        assert abs(diff.mean().item()) < 4 * se, (got.mean().item(), exact.mean().item(), se)
    # a cross-entropy is never below the entropy: E_data[L] >= H (the images' mean is within 4 s.e. of E_data)
    exact = prior + diffusion + decoder
    assert exact.mean().item() > ENTROPY_BITS - 4 * exact.std().item() / math.sqrt(len(exact))
    assert exact.mean().item() < ENTROPY_BITS + gap_below, (exact.mean().item(), ENTROPY_BITS)
    assert bound.per_t is not None and len(bound.per_t) == T
    assert sum(bound.per_t) + bound.prior.mean().item() == pytest.approx(bound.bits_per_dim, rel=1e-9)


def test_t_sampled_estimate_is_unbiased():
    """K = 10 of the T - 1 = 199 diffusion terms per image, scaled by (T - 1) / K, against the exact value."""
    model = gaussian_ddpm(200)
    x0 = pixels_to_model(gaussian_pixels(3000, seed=2))
    bound = variational_bound(model, x0, t_samples=10, batch_size=1000, seed=3)
    exact = sum(analytic_bound_nats(model, x0, "beta")) / (x0.shape[1] * math.log(2))
    diff = bound.per_image - exact
    se = diff.std().item() / math.sqrt(len(diff))
    assert abs(diff.mean().item()) < 4 * se, (bound.bits_per_dim, exact.mean().item(), se)
    assert bound.per_t is None
    full = variational_bound(model, x0[:200], seed=3).bits_per_dim
    assert full == pytest.approx(bound.bits_per_dim, rel=0.05)


def test_each_kl_term_matches_torch_distributions():
    """L_{t-1} for t >= 2 equals kl_divergence of q(x_{t-1} | x_t, x0) and p_theta(x_{t-1} | x_t), summed over
    dimensions, with both distributions built here from the paper's formulas (eqs. 4, 7, 11)."""
    torch.manual_seed(0)
    for variance in ("beta", "beta_tilde"):
        model = DDPM(FcNetwork(4, 32, time_embedding="sinusoidal"), T=300, variance=variance).double()
        x0 = pixels_to_model(torch.randint(0, 256, (64, 4)))
        t = torch.randint(2, 301, (64,))
        eps = torch.randn(64, 4, dtype=torch.float64)
        beta, abar, abar_prev = (v[t - 1, None] for v in schedule64(model))
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        post = torch.distributions.Normal(
            abar_prev.sqrt() * beta / (1 - abar) * x0 + (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar) * x_t,
            ((1 - abar_prev) / (1 - abar) * beta).sqrt())
        with torch.no_grad():
            eps_hat = model.network(x_t, model.time_input(t))
        sigma2 = torch.stack([sigma2_at(model, variance, int(s)) for s in t])[:, None]
        p = torch.distributions.Normal((x_t - beta / (1 - abar).sqrt() * eps_hat) / (1 - beta).sqrt(), sigma2.sqrt())
        expected = torch.distributions.kl_divergence(post, p).sum(1)
        with torch.no_grad():
            got = bound_terms(model, x0, t, eps)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_prior_term_is_the_kl_to_the_standard_normal():
    model = DDPM(torch.nn.Identity(), T=50)
    x0 = pixels_to_model(torch.randint(0, 256, (16, 3, 2)))
    abar_T = torch.cumprod(1 - model.noise_schedule.beta, 0)[-1]
    q = torch.distributions.Normal(abar_T.sqrt() * x0, (1 - abar_T).sqrt())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(prior_kl(model, x0), expected.double(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mean, std", [(0.0, 0.01), (-0.9981, 0.004), (0.7, 0.3), (1.3, 0.02), (-5.0, 0.5)])
def test_discretized_decoder_is_a_distribution_over_the_256_bins(mean, std):
    grid = pixels_to_model(torch.arange(256))
    log_p = discretized_gaussian_log_likelihood(grid, torch.tensor(mean, dtype=torch.float64),
                                                torch.tensor(std**2, dtype=torch.float64))
    assert torch.isfinite(log_p).all() and (log_p <= 0).all()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    # inner bins: Phi((x + 1/255 - mean) / std) - Phi((x - 1/255 - mean) / std) (eq. 13)
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), std)
    inner = normal.cdf(grid[1:-1] + 1 / 255) - normal.cdf(grid[1:-1] - 1 / 255)
    torch.testing.assert_close(log_p[1:-1].exp(), inner, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(log_p[0].exp(), normal.cdf(grid[0] + 1 / 255), rtol=1e-9, atol=1e-15)


def test_decoder_keeps_far_tail_bins_finite():
    """Bins 50 standard deviations from the mean have probability ~1e-545 < float64 min: finite log, not -inf."""
    grid = pixels_to_model(torch.tensor([10, 128, 245]))
    log_p = discretized_gaussian_log_likelihood(grid, torch.tensor(0.0), torch.tensor(0.01**2))
    assert torch.isfinite(log_p).all() and log_p[0] < -1000 and log_p[2] < -1000
    assert log_p[0].item() == pytest.approx(log_p[2].item(), rel=1e-3)  # symmetric about the mean


def test_bad_inputs_are_clear_errors():
    model = gaussian_ddpm(10)
    with pytest.raises(ValueError, match="t-samples"):
        variational_bound(model, torch.zeros(4, 3), t_samples=10)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        variational_bound(model, torch.full((4, 3), 2.0))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        pixels_to_model(torch.tensor([0, 256]))
    with pytest.raises(TypeError, match="integer"):
        pixels_to_model(torch.tensor([0.5]))


def test_gaussian_decoder_is_the_normal_log_density_and_the_bound_is_above_the_entropy():
    """decoder="gaussian" (continuous data): L_0 = -log N(x0; mu_theta(x_1, 1), sigma_1^2) by torch.distributions,
    the t >= 2 terms as for pixels, and the mean bound on Gaussian data never below its differential entropy."""
    model = gaussian_ddpm(100)
    g = torch.Generator().manual_seed(3)
    x0 = MEAN.double() + torch.randn(64, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(COV.double()).T
    eps = torch.randn(64, 3, generator=g, dtype=torch.float64)
    ones = torch.ones(64, dtype=torch.long)
    _, abar, _ = model.schedule_at(ones, 2)
    mean, var = model.p_mean_variance(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, ones)
    expected = -torch.distributions.Normal(mean, var.sqrt()).log_prob(x0).sum(1)
    torch.testing.assert_close(bound_terms(model, x0, ones, eps, decoder="gaussian"), expected, atol=1e-9, rtol=0)
    later = torch.full((64,), 7)
    torch.testing.assert_close(bound_terms(model, x0, later, eps, decoder="gaussian"),
                               bound_terms(model, x0, later, eps), atol=0, rtol=0)
    many = MEAN.double() + torch.randn(2000, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(COV.double()).T
    bound = variational_bound(model, many * 4, batch_size=2000, decoder="gaussian")  # any scale: not pixels
    nats = bound.per_image * 3 * math.log(2) - 3 * math.log(4)
    entropy = 0.5 * math.log((2 * math.pi * math.e) ** 3 * torch.linalg.det(COV.double()).item())
    assert float(nats.mean()) > entropy - 4 * float(nats.std()) / math.sqrt(2000)
    with pytest.raises(ValueError, match="unknown decoder"):
        variational_bound(model, many, decoder="laplace")
