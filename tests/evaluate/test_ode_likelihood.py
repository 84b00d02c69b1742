"""The probability-flow ODE likelihood (``pyddpm.evaluate.ode_likelihood``) against closed forms.

With the exact predictor of Gaussian data at every s (tests/helpers/gaussian_model.py) the ODE is linear, its flow map from
s0 to 1 is y -> C_1^{1/2} C_{s0}^{-1/2} y in y = x - sqrt(abar(s)) m (C_s = abar(s) S + (1 - abar(s)) I; all C_s
commute), so the model's density is known exactly: log N(Phi(x); 0, I) + 1/2 log det C_1 - 1/2 log det C_{s0}. It
differs from the data's own density only by the step-1 noise sigma_1 = 0.01 (the ODE starts at s0 = 1/T) and by
q_1 != N(0, I) (abar_T = 4e-5). With the exact predictor of the Two Gaussians at the default data scale 64, the ODE's
NLL in nats of data space must then be the truth's, up to those two effects.
"""
import math

import pytest
import torch
from helpers.gaussian_model import ContinuousMixtureEpsilon, HalfDiverging

from pyddpm import DDPM, FcNetwork
from pyddpm.data import DataTransform, toy_distribution
from pyddpm.evaluate.ode_likelihood import (ContinuousSchedule, check_solver_options, divergence,
                                            ode_log_likelihood, rademacher)

MEAN = torch.tensor([0.2, -0.1, 0.0], dtype=torch.float64)
COV = torch.tensor([[0.050, 0.015, 0.000], [0.015, 0.025, -0.005], [0.000, -0.005, 0.040]], dtype=torch.float64)


def exact_ddpm(means, covs, weights, T=1000):
    """A DDPM whose network is the exact predictor of the mixture sum_k w_k N(m_k, S_k) at every s."""
    model = DDPM(torch.nn.Identity(), T=T)
    model.network = ContinuousMixtureEpsilon(ContinuousSchedule(model), means, covs, weights)
    return model.eval()


def gaussian_log_prob(x, mean, cov):
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)


def sqrtm(c):
    w, v = torch.linalg.eigh(c)
    return v @ torch.diag(w.sqrt()) @ v.T


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_continuous_schedule_is_the_discrete_one_at_every_step(schedule):
    model = DDPM(torch.nn.Identity(), T=200, schedule=schedule)
    cont = ContinuousSchedule(model)
    abar = model.noise_schedule.abar
    for t in (1, 2, 3, 50, 199, 200):
        assert cont.log_abar_at(t / 200) == pytest.approx(math.log(abar[t - 1]), abs=1e-12)
        assert cont.network_time(t / 200) == pytest.approx(float(model.time_input(t, 1)), abs=1e-7)
    s = torch.linspace(cont.start, 1, 1001).tolist()
    betas = [cont.beta_at(v) for v in s]
    assert min(betas) > 0  # abar(s) decreasing
    # beta(s) ~ T beta_t between the nodes: the discrete schedule's rate
    mid = 100.5 / 200
    assert cont.beta_at(mid) == pytest.approx(-200 * math.log(1 - model.noise_schedule.beta[100]), rel=1e-2)


def test_the_gaussian_identity():
    """The ODE log-likelihood of the exact Gaussian predictor is the model's exact density to <= 1e-3 nats/dim
    (measured ~4e-5 at rtol 1e-5), and the data's own density to the same."""
    model = exact_ddpm(MEAN[None], COV[None], torch.ones(1))
    g = torch.Generator().manual_seed(1)
    x = MEAN + torch.randn(300, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(COV).T
    result = ode_log_likelihood(model, x, rtol=1e-5, atol=1e-5, batch_size=150)
    eye = torch.eye(3, dtype=torch.float64)
    a0, a1 = float(model.noise_schedule.abar[0]), float(model.noise_schedule.abar[-1])
    c0, c1 = a0 * COV + (1 - a0) * eye, a1 * COV + (1 - a1) * eye
    phi = (x - math.sqrt(a0) * MEAN) @ (sqrtm(c1) @ torch.linalg.inv(sqrtm(c0))).T + math.sqrt(a1) * MEAN
    exact = (gaussian_log_prob(phi, torch.zeros(3, dtype=torch.float64), eye)
             + 0.5 * (torch.logdet(c1) - torch.logdet(c0)))
    assert (result.log_density - exact).abs().max() / 3 <= 1e-3
    torch.testing.assert_close(result.end_radius, phi.norm(dim=1) / math.sqrt(3), rtol=0, atol=1e-3)  # the flow map
    assert abs(float((result.log_density - gaussian_log_prob(x, MEAN, COV)).mean())) / 3 <= 1e-3
    assert result.probes is None and result.probe_variance is None and not result.escaped.any()
    assert len(result.network_calls) == 2 and 20 < result.mean_network_calls < 1000


@pytest.mark.parametrize("power", [0, 1])
def test_diverging_examples_stop_as_escaped_and_leave_the_rest_exact(power):
    """Each example whose trajectory runs away stops beyond 10 max(|x|, sqrt(D)) as escaped, with no value; the
    others keep their exact values. A finite-time blow-up (power 1) leaves dopri5 without a step size unless its
    examples stop."""
    model = DDPM(torch.nn.Identity(), T=1000)
    model.network = HalfDiverging(ContinuousSchedule(model), power)
    model.eval()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    result = ode_log_likelihood(model, x, batch_size=16)
    out = x[:, 0] > 0
    assert torch.equal(result.escaped, out) and 0 < int(out.sum()) < 16
    assert result.log_density[out].isnan().all()
    exact = gaussian_log_prob(x[~out], torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(result.log_density[~out], exact, rtol=0, atol=1e-4)  # float32 network input
    # stopped on the step after the one that crossed 10 max(|x|, sqrt(D)); the others stayed put
    bound = 10 * x.norm(dim=1).clamp(min=math.sqrt(3))
    stopped_at = result.end_radius * math.sqrt(3)
    assert (stopped_at[out] > bound[out]).all() and (stopped_at[out] < 2 * bound[out]).all()
    torch.testing.assert_close(stopped_at[~out], x[~out].norm(dim=1), rtol=0, atol=1e-4)


def small_network(dims=4):
    torch.manual_seed(0)
    return FcNetwork(dims, 32, num_layers=2, activation="silu", time_embedding="sinusoidal").eval()


def test_hutchinson_matches_the_exact_divergence_within_its_standard_error():
    """v^T J v over 4000 Rademacher probes is the exact trace of J (D backward passes) within 4 standard errors of
    the probes' mean, per example, on a small random network (a false failure has probability < 1e-3)."""
    network = small_network()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    out = network(x, torch.full((6, 1), 0.3))
    exact = divergence(out, x, None)[:, 0]
    probes = rademacher((4000, 6, 4), torch.Generator().manual_seed(3))
    estimates = divergence(out, x, probes)
    error = estimates.std(1) / math.sqrt(4000)
    assert ((estimates.mean(1) - exact).abs() <= 4 * error).all()
    assert (exact.abs() > 10 * error).any()  # the check has teeth: the trace is not ~0
    assert (estimates.std(1) > 0).all()  # and the estimates do vary


def test_hutchinson_log_likelihood_matches_the_exact_one_within_its_standard_error():
    network = small_network()
    model = DDPM(network, T=100).eval()
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(4))
    exact = ode_log_likelihood(model, x, batch_size=40)
    estimate = ode_log_likelihood(model, x, probes=4, batch_size=40, seed=5)
    error = float(estimate.probe_variance.sum().sqrt() / 40)  # s.e. of the mean over examples from the probes
    assert abs(float((estimate.log_density - exact.log_density).mean())) <= 4 * error
    assert error > 0 and estimate.probes == 4


@pytest.fixture(scope="module")
def two_gaussians():
    """The exact predictor of the Two Gaussians at the default data scale 64, and 300 true points."""
    distribution = toy_distribution("two-gaussians")
    transform = DataTransform(0.5, 64.0)
    means = transform.to_model(distribution.means)
    covs = torch.eye(2, dtype=torch.float64).expand(2, 2, 2) * (distribution.std * 64) ** 2
    points = distribution.sample(300, generator=torch.Generator().manual_seed(6))
    return exact_ddpm(means, covs, distribution.weights), distribution, transform, points


def data_space_nll(result, transform, points):
    return -result.log_density - points.shape[1] * math.log(transform.scale)


def test_toy_nll_is_stable_as_the_tolerance_is_tightened(two_gaussians):
    """From rtol 1e-5 to 1e-6 the toy NLL moves by < 0.01 nats (measured ~1e-5), and with the exact predictor it
    is the truth's NLL point by point, in nats of data space (the model-space figure minus D log 64)."""
    model, distribution, transform, points = two_gaussians
    x = transform.to_model(points.double())
    loose = data_space_nll(ode_log_likelihood(model, x, rtol=1e-5, atol=1e-5), transform, points)
    tight = data_space_nll(ode_log_likelihood(model, x, rtol=1e-6, atol=1e-6), transform, points)
    assert abs(float(loose.mean() - tight.mean())) < 0.01
    gap = tight + distribution.log_prob(points)  # q_1 != N(0, I) moves single points by up to ~0.3 nats
    assert abs(float(gap.mean())) < 0.01


@pytest.mark.parametrize("rtol, atol, probes, message", [
    (0.0, 1e-5, None, "rtol"), (1e-5, -1.0, None, "atol"), (float("nan"), 1e-5, None, "rtol"),
    (1e-5, 1e-5, 0, "probes"), (1e-5, 1e-5, 1.5, "probes"),
])
def test_bad_solver_options_are_clear_errors(rtol, atol, probes, message):
    with pytest.raises(ValueError, match=message):
        check_solver_options(rtol, atol, probes)


@pytest.mark.parametrize("factor", [1.0, 0.5, -2.0, float("nan"), "10"])
def test_an_escape_factor_that_would_stop_data_in_the_typical_set_is_refused(factor):
    model = DDPM(small_network(), T=10).eval()
    with pytest.raises(ValueError, match="escape_factor must be a number above 1"):
        ode_log_likelihood(model, torch.randn(2, 4), escape_factor=factor)


def test_a_network_in_training_mode_is_refused():
    model = DDPM(small_network(), T=10)
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        ode_log_likelihood(model, torch.zeros(2, 4))


def test_the_progress_bar_advances_within_a_batch(monkeypatch):
    """The bar counts examples and moves with the integration time inside each batch, so its ETA is live from the
    first network calls, not only after a whole batch has been solved; it ends at the number of examples."""
    import pyddpm.evaluate.ode_likelihood as module

    seen = []

    class Recorder(module.tqdm):
        def update(self, n=1):
            super().update(n)
            seen.append(self.n)

    monkeypatch.setattr(module, "tqdm", Recorder)
    model = exact_ddpm(MEAN[None], COV[None], torch.ones(1), T=100)
    x = MEAN + torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.1
    ode_log_likelihood(model, x, batch_size=5, rtol=1e-4, atol=1e-4, progress=True)
    inside_first = [n for n in seen if 0 < n < 5]
    assert len(inside_first) >= 3 and inside_first == sorted(inside_first), seen
    assert all(b >= a - 1e-9 for a, b in zip(seen, seen[1:])) and seen[-1] == pytest.approx(10), seen
