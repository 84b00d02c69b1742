"""pyddpm.solvers: every sampler's coefficient table against diffusers' schedulers step by step (float64, same
eps_hat sequence), against the papers' formulas written out independently, and in convergence on the analytic
Gaussian model; plus the plans' options and errors."""
import math

import numpy as np
import pytest
import torch

from pyddpm.schedules import NoiseSchedule
from pyddpm.solvers import SAMPLERS, solver_plan, spaced_timesteps

import diffusers

T = 1000
SCHEDULE = NoiseSchedule("linear", T)


def run_plan(plan, x, eps_seq, noise_seq=None):
    """The plan applied in float64 to x with the given eps_hat (and z) per call; the iterate after every call."""
    history = [torch.zeros_like(x) for _ in range(plan.history)]
    out = []
    for i, coef in enumerate(plan.coefs):
        e = eps_seq[i]
        d = coef.p * x + coef.q * e
        v = coef.a * x + coef.b * e
        if plan.history or coef.clip:
            v = v + coef.c * d
        for h_k, buffer in zip(coef.h, history):
            v = v + h_k * buffer
        if coef.sigma:
            v = v + coef.sigma * noise_seq[i]
        history = [d, *history[:-1]] if history else history
        x = v
        out.append(x)
    return out


@pytest.fixture
def float64_diffusers(monkeypatch):
    """diffusers' schedulers upcast the sample with ``.to(torch.float32)``: keep float64 tensors float64, so the
    comparison sees the formulas, not float32 rounding."""
    to = torch.Tensor.to

    def keep_float64(self, *args, **kwargs):
        if self.dtype == torch.float64 and (torch.float32 in args or kwargs.get("dtype") == torch.float32):
            return self
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", keep_float64)


def diffusers_scheduler(sampler: str, steps: int, spacing: str):
    """diffusers' scheduler for ``sampler`` on pyddpm's linear schedule (0-based step s = t - 1), its sigmas and
    alphas replaced by float64 ones from pyddpm's schedule."""
    common = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear",
                  timestep_spacing=spacing)
    if sampler == "ddim":
        s = diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
        s.set_timesteps(steps)
        s.alphas_cumprod = SCHEDULE.abar.clone()
        s.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
        return s
    if sampler.startswith("unipc"):
        s = diffusers.UniPCMultistepScheduler(**common, solver_order=int(sampler[-1]), solver_type="bh2")
    else:
        algorithm = "sde-dpmsolver++" if sampler.startswith("sde") else "dpmsolver++"
        s = diffusers.DPMSolverMultistepScheduler(**common, algorithm_type=algorithm,
                                                  solver_order=3 if "3m" in sampler else 2)
    s.set_timesteps(steps)
    abar = SCHEDULE.abar[s.timesteps.long()]
    s.sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=torch.float64)])
    return s


# diffusers' DDIM steps from t to t - T // N whatever the spacing: the same method only with "trailing" and N | T.
# (diffusers' "linspace" is not pyddpm's "uniform": it leaves out t = 1, which DDIM's original spacing keeps.)
CASES = [(sampler, steps, spacing) for sampler in ("ddim", "dpm++2m", "dpm++3m", "sde-dpm++2m", "unipc2", "unipc3")
         for steps, spacing in ((5, "trailing"), (8, "trailing"), (10, "leading"), (20, "trailing"), (16, "trailing"))
         if sampler != "ddim" or (spacing == "trailing" and T % steps == 0)]


@pytest.mark.parametrize("sampler, steps, spacing", CASES)
def test_each_step_equals_diffusers(float64_diffusers, sampler, steps, spacing):
    reference = diffusers_scheduler(sampler, steps, spacing)
    name, order = ("unipc", int(sampler[-1])) if sampler.startswith("unipc") else (sampler, None)
    plan = solver_plan(SCHEDULE, name, steps, spacing=spacing, order=order)
    assert list(plan.timesteps) == [int(s) + 1 for s in reference.timesteps]
    gen = torch.Generator().manual_seed(steps)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    eps = [torch.randn(6, 3, generator=gen, dtype=torch.float64) for _ in plan.timesteps]
    noise = [torch.randn(6, 3, generator=gen, dtype=torch.float64) for _ in plan.timesteps]
    ours = run_plan(plan, x, eps, noise)
    theirs = x
    for i, s in enumerate(reference.timesteps):
        kwargs = {"variance_noise": noise[i]} if sampler.startswith("sde") else {}
        theirs = reference.step(eps[i], s, theirs, **kwargs).prev_sample
        # 1e-10: float64 formulas that agree up to their order of operations (|x| ~ 1, coefficients <~ 10)
        torch.testing.assert_close(ours[i], theirs, rtol=0, atol=1e-10, msg=f"call {i} of {plan.label()}")


def paper_dpm_solver_pp_2m(x, eps_seq, ts):
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2, written from the paper (x0 = (x - sigma eps) / alpha; the first
    and, going to sigma = 0, the last step first order)."""
    abar = [float(SCHEDULE.abar[t - 1]) for t in ts] + [1.0]
    alpha = [math.sqrt(a) for a in abar]
    sigma = [math.sqrt(1 - a) for a in abar]
    lam = [math.log(a / s) if s > 0 else math.inf for a, s in zip(alpha, sigma)]
    prev = None
    for i, e in enumerate(eps_seq):
        x0 = (x - sigma[i] * e) / alpha[i]
        h = lam[i + 1] - lam[i]
        if prev is None or i == len(ts) - 1:
            D = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * math.expm1(-h) * D
        prev = x0
    return x


@pytest.mark.parametrize("steps", [3, 10, 25])
def test_dpm_solver_pp_2m_is_the_papers_algorithm(steps):
    plan = solver_plan(SCHEDULE, "dpm++2m", steps, lower_order_final=False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    eps = [torch.randn(5, 2, generator=gen, dtype=torch.float64) for _ in plan.timesteps]
    torch.testing.assert_close(run_plan(plan, x, eps)[-1], paper_dpm_solver_pp_2m(x, eps, plan.timesteps),
                               rtol=0, atol=1e-12)


def test_ddim_rows_are_eq_12():
    """DDIM (eta = 0) from t to s: x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s) eps_hat (Song et al. eq. 12)."""
    plan = solver_plan(SCHEDULE, "ddim", 7)
    for i, (t, coef) in enumerate(zip(plan.timesteps, plan.coefs)):
        s = plan.timesteps[i + 1] if i + 1 < plan.nfe else 0
        abar_t, abar_s = float(SCHEDULE.abar[t - 1]), float(SCHEDULE.abar[s - 1]) if s else 1.0
        a = math.sqrt(abar_s / abar_t)
        b = math.sqrt(1 - abar_s) - math.sqrt(abar_s) * math.sqrt((1 - abar_t) / abar_t)
        assert coef.a == pytest.approx(a, rel=1e-14) and coef.b == pytest.approx(b, rel=1e-12, abs=1e-15)


# ---- convergence on Gaussian data with its exact noise predictor ------------------------------------------------
MEAN = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64)
VAR = torch.tensor([0.02, 0.5, 1.5], dtype=torch.float64)


def exact_eps(x, t):
    """E[eps | x_t] for data N(MEAN, diag(VAR)): sqrt(1 - abar) (x - sqrt(abar) m) / (abar v + 1 - abar)."""
    abar = float(SCHEDULE.abar[t - 1])
    return math.sqrt(1 - abar) * (x - math.sqrt(abar) * MEAN) / (abar * VAR + 1 - abar)


def ode_solution(x_T, t):
    """The probability-flow ODE's exact x_t from x_T: each coordinate's standardised value is constant along it."""
    abar_T, abar_t = float(SCHEDULE.abar[-1]), float(SCHEDULE.abar[t - 1])
    standard = (x_T - math.sqrt(abar_T) * MEAN) / (abar_T * VAR + 1 - abar_T).sqrt()
    return math.sqrt(abar_t) * MEAN + (abar_t * VAR + 1 - abar_t).sqrt() * standard


def ode_error(sampler, steps, **options):
    """max |x - exact ODE solution| over 256 points where the plan's last call starts (t = 1 with logsnr spacing),
    after ``steps`` - 1 calls of the exact predictor. (The last call, t = 1 -> 0, is one first-order step whose
    error does not depend on N: the floor of every solver at the clean end, as in diffusers.)"""
    plan = solver_plan(SCHEDULE, sampler, steps, spacing="logsnr", **options)
    x_T = torch.randn(256, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, history = x_T.clone(), [torch.zeros_like(x_T) for _ in range(plan.history)]
    for t, coef in zip(plan.timesteps[:-1], plan.coefs[:-1]):
        e = exact_eps(x, t)
        d = coef.p * x + coef.q * e
        v = coef.a * x + coef.b * e + coef.c * d
        for h_k, buffer in zip(coef.h, history):
            v = v + h_k * buffer
        history = [d, *history[:-1]] if history else history
        x = v
    return float((x - ode_solution(x_T, plan.timesteps[-1])).abs().max())


@pytest.mark.parametrize("sampler, options, order", [
    ("ddim", {}, 1), ("dpm++2m", {}, 2), ("unipc", {"order": 2}, 3), ("dpm++2m", {"lower_order_final": False}, 2),
    # a multistep method started with a first-order step converges at order 2 globally, whatever its own order
    ("dpm++3m", {}, 2),
])
def test_ode_solvers_converge_at_their_order(sampler, options, order):
    """As NFE doubles the error to the exact ODE solution falls by about 2^order (UniPC-2: 3, its corrector adds
    one): its slope over 20 -> 40 -> 80 calls is at least order - 0.3 (the asymptotic rate is reached from above or
    below; 0.3 leaves room for that)."""
    errors = [ode_error(sampler, n, **options) for n in (20, 40, 80)]
    slopes = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert min(slopes) >= order - 0.3, (errors, slopes)


# ---- options and errors ------------------------------------------------------------------------------------------
def test_spacings():
    assert spaced_timesteps(SCHEDULE, 10, "trailing") == list(range(1000, 0, -100))
    assert spaced_timesteps(SCHEDULE, 4, "uniform") == [1000, 667, 334, 1]
    assert spaced_timesteps(SCHEDULE, 4, "leading") == [801, 601, 401, 201]
    lam = 0.5 * (SCHEDULE.abar.log() - (-SCHEDULE.abar).log1p())
    ts = spaced_timesteps(SCHEDULE, 6, "logsnr")
    gaps = np.diff([float(lam[t - 1]) for t in ts])
    assert ts[0] == T and ts[-1] == 1 and np.allclose(gaps, gaps.mean(), rtol=0.1)


def test_ddpm_plan_is_algorithm_2():
    plan = solver_plan(SCHEDULE, "ddpm")
    assert plan.timesteps == tuple(range(T, 0, -1)) and plan.nfe == T and plan.history == 0
    assert plan.coefs[-1] == SCHEDULE.step_coefficients("beta")[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(sampler="euler", steps=10), "--sampler: unknown sampler 'euler'"),
    (dict(sampler="dpm++2m", steps=0), "--steps must be a positive integer \\(at most 1000, the model's T\\)"),
    (dict(sampler="dpm++2m", steps=1001), "--steps must be a positive integer"),
    (dict(sampler="dpm++3m", steps=2), "--sampler dpm\\+\\+3m is of order 3 and needs at least 3 steps"),
    (dict(sampler="unipc", steps=2, order=3), "--sampler unipc is of order 3"),
    (dict(sampler="dpm++2m", steps=10, eta=0.5), "--eta applies to --sampler ddim, not to --sampler dpm\\+\\+2m"),
    (dict(sampler="ddim", steps=10, order=2), "--order applies to --sampler unipc, not to --sampler ddim"),
    (dict(sampler="ddpm", steps=10), "--sampler ddpm is Algorithm 2"),
    (dict(sampler="ddpm", spacing="trailing"), "--spacing applies to the few-step samplers, not to --sampler ddpm"),
    (dict(sampler="dpm++2m", steps=10, variance="beta_tilde"), "--variance applies to --sampler ddpm only"),
    (dict(sampler="dpm++2m", steps=10, spacing="cosine"), "--spacing: unknown spacing"),
    (dict(sampler="unipc", steps=10, order=4), "--order must be one of 1, 2, 3"),
    (dict(sampler="dpm++2m"), "--steps: --sampler dpm\\+\\+2m needs"),
])
def test_bad_options_name_the_flag(kwargs, message):
    with pytest.raises(ValueError, match=message):
        solver_plan(SCHEDULE, **kwargs)


@pytest.mark.parametrize("sampler", SAMPLERS[1:])
def test_every_plan_ends_at_its_data_prediction(sampler):
    """The last call goes to sigma = 0: x_0 = the data prediction d of that call (a = 0, c = 1, no history)."""
    plan = solver_plan(SCHEDULE, sampler, 6)
    last = plan.coefs[-1]
    if sampler == "ddim":
        assert last.a == pytest.approx(1 / math.sqrt(float(SCHEDULE.abar[plan.timesteps[-1] - 1])))
    else:
        assert (last.a, last.c, last.sigma) == (0.0, 1.0, 0.0) and not any(last.h)
