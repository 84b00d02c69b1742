"""The DDPM math: schedules (Ex. 3.1), the Gaussian KL (Ex. 3.3), Algorithm 1 and Algorithm 2, checked
against closed forms with an exact noise predictor, so the checks do not depend on any training."""
import math

import pytest
import torch
from helpers.gaussian_model import ExactGaussianEpsilon, algorithm2_moments, expected_loss

from pyddpm import DDPM, FcNetwork
from pyddpm.diffusion import normal_kl
from pyddpm.schedules import cosine_betas, linear_betas, make_betas

MEAN = torch.tensor([0.6, -0.4])
COV = torch.tensor([[0.30, 0.12], [0.12, 0.10]])


def gaussian_ddpm(T=1000, variance="beta", schedule="linear"):
    model = DDPM(torch.nn.Identity(), T=T, variance=variance, schedule=schedule)
    model.network = ExactGaussianEpsilon(MEAN, COV, model.alpha_cumprod)
    return model


# ----- Ex. 3.1: abar_T -> 0 -------------------------------------------------------------------------
@pytest.mark.parametrize("betas", [linear_betas, cosine_betas])
def test_alpha_cumprod_vanishes_as_T_grows(betas):
    abar_T = [torch.cumprod(1 - betas(T), 0)[-1].item() for T in (10, 100, 1000, 4000)]
    assert all(a > b for a, b in zip(abar_T, abar_T[1:])), abar_T
    assert abar_T[-1] < 1e-4
    if betas is linear_betas:  # any schedule with beta_t >= beta_1 > 0 has abar_T <= (1 - beta_1)^T
        assert abar_T[-1] <= (1 - 1e-4) ** 4000


def test_schedule_values_follow_the_paper():
    beta = linear_betas(1000)
    assert beta[0].item() == pytest.approx(1e-4) and beta[-1].item() == pytest.approx(0.02)
    assert torch.all(beta[1:] > beta[:-1])
    model = DDPM(FcNetwork(2, 8))  # the exercise's class default T = 100
    assert model.T == 100 and model.beta.shape == (100,)
    torch.testing.assert_close(model.alpha, 1 - model.beta)
    torch.testing.assert_close(model.alpha_cumprod, torch.cumprod(1 - model.beta.double(), 0).float())
    assert set(model.state_dict()) >= {"beta", "alpha", "alpha_cumprod"}


@pytest.mark.parametrize("T", [0, -5, 2.5])
def test_bad_T_is_a_clear_error(T):
    with pytest.raises(ValueError, match="positive integer"):
        DDPM(FcNetwork(2, 8), T=T)


def test_unknown_schedule_and_variance_are_clear_errors():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="unknown variance"):
        DDPM(FcNetwork(2, 8), variance="learned")


# ----- Ex. 3.3: the Gaussian KL -----------------------------------------------------------------------
def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
    v1 = torch.rand(1000, generator=g, dtype=torch.float64) * 3 + 0.01
    v2 = torch.rand(1000, generator=g, dtype=torch.float64) * 3 + 0.01
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, v1.sqrt()),
                                                 torch.distributions.Normal(m2, v2.sqrt()))
    torch.testing.assert_close(normal_kl(m1, v1, m2, v2), expected, rtol=1e-12, atol=1e-12)
    assert torch.all(normal_kl(m1, v1, m1, v1).abs() < 1e-12)


# ----- Algorithm 1 -------------------------------------------------------------------------------------
def test_loss_with_exact_predictor_has_its_expected_value():
    torch.manual_seed(0)
    model = gaussian_ddpm()
    x0 = MEAN + torch.randn(400_000, 2) @ torch.linalg.cholesky(COV).T
    per_example = model.negative_elbo(x0)
    assert per_example.shape == (400_000,)
    expected = expected_loss(COV, model.alpha_cumprod)
    stderr = per_example.std().item() / math.sqrt(len(per_example))
    # 5 standard errors: fails with probability < 1e-6 if the loss is right, and catches any wrong scaling
    assert abs(per_example.mean().item() - expected) < 5 * stderr, (per_example.mean().item(), expected, stderr)
    # the predictor is the MMSE one, so an untrained network (here: predicting 0) has a larger loss (= D)
    zero = DDPM(lambda x, t: torch.zeros_like(x), T=1000)
    assert zero.loss(x0[:100_000]).item() == pytest.approx(2.0, rel=0.02)
    assert expected < 1.5


def test_loss_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    model = DDPM(FcNetwork(2, 32, num_layers=3, time_embedding="sinusoidal"), T=1000)
    loss = model.loss(torch.rand(256, 2))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_wrong_data_shape_is_a_clear_error():
    model = DDPM(FcNetwork(2, 16))
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        model.loss(torch.rand(8, 3))
    with pytest.raises(ValueError, match="batch"):
        model.loss(torch.rand(8))


# ----- Algorithm 2 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance, cov_rtol", [("beta", 0.01), ("beta_tilde", 0.03)])
def test_algorithm2_moments_reach_the_data_distribution(variance, cov_rtol):
    """The analytic output law of Alg. 2 with the exact predictor is the data law up to discretisation.

    With T = 1000 the covariance is off by at most 0.5% (sigma^2 = beta) and 2.1% (beta_tilde, which is
    too small for data this narrow); the tolerances leave a margin over that. A wrong coefficient (a missing
    square root, sigma on the last step) is off by tens of percent."""
    model = gaussian_ddpm(variance=variance)
    M, V = algorithm2_moments(model, MEAN, COV, model.step_coefficients())
    torch.testing.assert_close(M, MEAN.double(), atol=1e-3, rtol=0)
    assert torch.all(((V - COV.double()) / COV.double()).abs() < cov_rtol), V


@pytest.mark.parametrize("backend, seeded", [("torch", False), ("fused", False), ("fused", True)])
def test_sample_reproduces_gaussian_mean_and_covariance(backend, seeded):
    torch.manual_seed(0)
    model = gaussian_ddpm()
    n = 40_000
    x = model.sample((n, 2), seed=123 if seeded else None, backend=backend)
    assert x.shape == (n, 2) and torch.isfinite(x).all()
    M, V = algorithm2_moments(model, MEAN, COV, model.step_coefficients())
    # Monte Carlo tolerances: 5 standard errors of the sample mean (sqrt(V_ii / n)) and of the sample
    # covariance (sqrt((V_ii V_jj + V_ij^2) / n)).
    mean_se = (V.diagonal() / n).sqrt()
    assert torch.all((x.double().mean(0) - M).abs() < 5 * mean_se), (x.mean(0), M)
    cov_se = ((V.diagonal()[:, None] * V.diagonal()[None, :] + V**2) / n).sqrt()
    assert torch.all((torch.cov(x.double().T) - V).abs() < 5 * cov_se), (torch.cov(x.T), V)


def test_backends_agree_for_the_same_seed():
    """The fused op and the plain-torch reference draw the same counter-based noise, so the samples agree to
    float32 rounding accumulated over T = 1000 steps (1e-4 absolute on values of order 1)."""
    model = gaussian_ddpm()
    fused = model.sample((300, 2), seed=2024, backend="fused")
    reference = model.sample((300, 2), seed=2024, backend="torch")
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-4)
    other = model.sample((300, 2), seed=2025, backend="fused")
    assert (other - fused).abs().mean() > 0.1  # a different seed gives different samples


def test_no_noise_at_the_last_step_and_coefficients_match_algorithm2():
    model = DDPM(FcNetwork(2, 8), T=50)
    coefs = model.step_coefficients()
    assert coefs[0].sigma == 0.0 and all(c.sigma > 0 for c in coefs[1:])
    t = 17
    beta, alpha, abar = model.beta[t - 1].item(), model.alpha[t - 1].item(), model.alpha_cumprod[t - 1].item()
    assert coefs[t - 1].a == pytest.approx(1 / math.sqrt(alpha), rel=1e-6)
    assert coefs[t - 1].b == pytest.approx(-beta / math.sqrt(1 - abar) / math.sqrt(alpha), rel=1e-5)
    assert coefs[t - 1].sigma == pytest.approx(math.sqrt(beta), rel=1e-6)
    tilde = model.step_coefficients("beta_tilde")[t - 1].sigma ** 2
    abar_prev = model.alpha_cumprod[t - 2].item()
    assert tilde == pytest.approx((1 - abar_prev) / (1 - abar) * beta, rel=1e-5)


def test_clipped_step_equals_the_posterior_mean_of_the_clamped_x0():
    torch.manual_seed(3)
    model = DDPM(FcNetwork(2, 8), T=100)
    x, eps = torch.randn(64, 2) * 2, torch.randn(64, 2)
    for t in (2, 50, 100):
        c = model.step_coefficients(clip=True)[t - 1]
        beta64 = linear_betas(100)
        abar64 = torch.cumprod(1 - beta64, 0)
        abar, abar_prev, beta = abar64[t - 1], abar64[t - 2], beta64[t - 1]
        alpha = 1 - beta
        x0 = ((x.double() - (1 - abar).sqrt() * eps.double()) / abar.sqrt()).clamp(-1, 1)
        mean = beta * abar_prev.sqrt() / (1 - abar) * x0 + alpha.sqrt() * (1 - abar_prev) / (1 - abar) * x.double()
        got = c.a * x.double() + c.b * eps.double() + c.c * (c.p * x.double() + c.q * eps.double()).clamp(c.lo, c.hi)
        torch.testing.assert_close(got, mean, rtol=1e-5, atol=1e-5)


def test_ddim_with_exact_predictor_reaches_the_data_distribution():
    torch.manual_seed(0)
    model = gaussian_ddpm()
    from pyddpm.samplers import ddim_sample
    x = ddim_sample(model, (40_000, 2), 100, seed=5, backend="torch").double()
    torch.testing.assert_close(x.mean(0), MEAN.double(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), COV.double(), atol=0.02, rtol=0)
    assert model.ddim_timesteps(100)[0] == 1000 and model.ddim_timesteps(100)[-1] == 1
