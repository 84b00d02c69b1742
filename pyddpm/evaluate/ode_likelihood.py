"""The exact log-likelihood of a trained DDPM under its probability-flow ODE (Song et al. 2021, sec. 4.3, app. D.2).

The discrete forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t = 1..T, is read as the VP SDE
dx = -1/2 beta(s) x ds + sqrt(beta(s)) dw on s in [0, 1] (Song et al. eq. 11) whose log abar(s) = -int_0^s beta
is the cubic spline through log abar_t at the nodes s = t / T (``ContinuousSchedule``). So abar(t / T) = abar_t
exactly, beta(s) = -d log abar / ds is smooth, and the network, which saw step t as (t - 1) / T in training, sees
s - 1/T: the trained network at every node, interpolated in its time input between them. With the score
-eps_theta / sigma(s), sigma(s)^2 = 1 - abar(s), the probability-flow ODE is

    dx/ds = f(x, s) = -1/2 beta(s) (x - eps_theta(x, s) / sigma(s))                       (Song et al. eq. 13)

and the instantaneous change of variables (Chen et al. 2018, thm. 1; FFJORD, Grathwohl et al. 2019, eq. 4) gives

    log p_{s0}(x) = log N(x(1); 0, I) + int_{s0}^{1} div f(x(s), s) ds,   x(s0) = x,
    div f = -1/2 beta(s) (D - div eps_theta / sigma(s)).

The integration starts at s0 = 1/T, step t = 1, the smallest noise the network was trained on (sigma = sqrt(beta_1));
p_{s0} is the model's density of data blurred by that much noise, evaluated at the data. The prior N(0, I) at
s = 1 is Algorithm 2's x_T. The forward process keeps |x(s)| <= sqrt(abar) |x| + sigma |eps| of order
max(|x|, sqrt(D)) (N(0, I)'s typical set lies at 1 +- O(D^-1/2) sqrt(D)). An example whose x(s) goes ESCAPE_FACTOR
times beyond that is stopped there as escaped: its trajectory diverges, it gets no finite value, and it no longer
stiffens the ODE system that its batch shares. div eps_theta is exact (D backward passes) or Hutchinson's estimate
E_v[v^T (d eps_theta / dx) v] with Rademacher probes v (Hutchinson 1990; FFJORD sec. 3.1), each probe fixed along
the whole trajectory so that every probe's integral is an unbiased estimate of the exact one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.interpolate import CubicSpline
from torchdiffeq import odeint
from tqdm.auto import tqdm

from ..diffusion import DDPM

BAR_FORMAT = "{l_bar}{bar}| {n:.0f}/{total} [{elapsed}<{remaining}{postfix}]"  # n: examples, fractional in a batch
SOLVER = "dopri5"  # torchdiffeq's adaptive Dormand-Prince 5(4), as in Song et al. and FFJORD
# |x(s)| / max(|x(s0)|, sqrt(D)) beyond which an example is stopped as escaped. For data inside N(0, I)'s radius,
# the prior's log-density alone is D (ESCAPE_FACTOR^2 - 1) / 2 nats below the typical set's there, 71 bits/dim
ESCAPE_FACTOR = 10.0


class ContinuousSchedule:
    """The VP process of the module docstring for a DDPM's discrete schedule: log abar(s), beta(s), sigma(s)
    and the network's time input at continuous s in [1/T, 1], all float64.

    log abar(s) is the cubic spline through log abar_t at s = t / T, t = 0..T (abar_0 = 1), so abar(t / T) = abar_t
    exactly and beta(s) = -d log abar / ds is continuous with a continuous derivative: an adaptive solver's error
    estimate assumes a smooth right-hand side, and the piecewise-linear interpolant's jumps in beta(s) at each of
    the T nodes left dopri5 with errors far above its tolerance.
    """

    def __init__(self, model: DDPM):
        self.T = model.T
        log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), model.noise_schedule.abar.log()])
        self.spline = CubicSpline(np.arange(self.T + 1) / self.T, log_abar.numpy())
        self.slope = self.spline.derivative()
        self.start = 1.0 / self.T
        grid = np.linspace(self.start, 1.0, 8 * self.T + 1)
        if not (self.slope(grid) < 0).all():
            raise ValueError(f"the {model.schedule} schedule's interpolated abar(s) is not decreasing on [1/T, 1]; "
                             "its probability-flow ODE is undefined")

    def log_abar_at(self, s: float) -> float:
        """log abar(s), the spline through log abar_t at s = t / T."""
        return float(self.spline(s))

    def beta_at(self, s: float) -> float:
        """beta(s) = -d log abar / ds."""
        return -float(self.slope(s))

    def sigma_at(self, s: float) -> float:
        """sigma(s) = sqrt(1 - abar(s)), the noise level of x(s)."""
        return math.sqrt(-math.expm1(self.log_abar_at(s)))

    def network_time(self, s: float) -> float:
        """The network's time input: s - 1/T, which is the training input (t - 1) / T at s = t / T."""
        return s - 1.0 / self.T


def rademacher(shape: tuple[int, ...], generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Independent +-1 entries with probability 1/2 each (Hutchinson's probes)."""
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(dtype)


def divergence(output: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """div_x output per example, float64 of shape (batch, K): the exact trace of d output / dx (K = 1) when
    ``probes`` is None, else Hutchinson's v_k^T (d output / dx) v_k for each probe v_k of ``probes`` (K, *x.shape).

    ``output`` must be computed from ``x`` (which requires grad) example by example: row i of the Jacobian only
    depends on example i, so one backward pass per coordinate (exact) or per probe (Hutchinson) serves the batch.
    """
    if probes is None:
        flat = output.flatten(1)
        trace = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for i in range(flat.shape[1]):
            grad, = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
            trace += grad.flatten(1)[:, i].double()
        return trace[:, None]
    columns = []
    for k, v in enumerate(probes):
        grad, = torch.autograd.grad(output, x, v, retain_graph=k + 1 < len(probes))
        columns.append((grad * v).flatten(1).sum(1).double())
    return torch.stack(columns, 1)


class FlowDynamics:
    """The right-hand side (dx/ds, d log p/ds) of one batch's ODE (module docstring) for torchdiffeq, counting its
    network calls. torchdiffeq calls ``callback_step`` with the accepted state before each step; it stops the
    examples beyond their ``escape_radius``, whose drift is zero from then on. The stopped set changes only between
    steps, so the right-hand side is smooth within every step whose error the solver estimates. ``on_step(self, s)``,
    if given, runs there too (a progress bar).
    """

    def __init__(self, network, schedule: ContinuousSchedule, probes: torch.Tensor | None,
                 escape_radius: torch.Tensor, dtype: torch.dtype, on_step=None):
        self.network, self.schedule, self.probes = network, schedule, probes
        self.escape_radius, self.dtype, self.on_step = escape_radius, dtype, on_step
        self.stopped = torch.zeros_like(escape_radius, dtype=torch.bool)
        self.calls = 0

    def callback_step(self, s0, state, ds) -> None:
        if self.on_step is not None:
            self.on_step(self, float(s0))
        self.stopped |= state[0].flatten(1).norm(dim=1) > self.escape_radius

    def __call__(self, s: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        s, x = float(s), state[0]
        beta, sigma = self.schedule.beta_at(s), self.schedule.sigma_at(s)
        time = torch.full((x.shape[0], 1), self.schedule.network_time(s), dtype=self.dtype, device=x.device)
        with torch.enable_grad():
            xg = x.detach().to(self.dtype).requires_grad_(True)
            eps = self.network(xg, time)
            div_eps = divergence(eps, xg, self.probes)
        self.calls += 1
        drift = -0.5 * beta * (x - eps.detach().double() / sigma)  # eq. 13
        log_rate = -0.5 * beta * (x[0].numel() - div_eps / sigma)
        return (drift.masked_fill(self.stopped.view(-1, *[1] * (x.dim() - 1)), 0.0),
                log_rate.masked_fill(self.stopped[:, None], 0.0))


@dataclass
class OdeLikelihood:
    """log p_{s0}(x) per example in nats of model space (float64, shape (n,)), with how it was computed."""

    log_density: torch.Tensor  # NaN where escaped
    end_radius: torch.Tensor  # per example |x(1)| / sqrt(D): 1 +- O(D^-1/2) where x(1) lies in the prior's typical set
    escaped: torch.Tensor  # per example, bool: stopped beyond escape_factor max(|x(s0)|, sqrt(D)) (module docstring)
    escape_factor: float
    probe_variance: torch.Tensor | None  # per example: variance of the mean over its probes (Hutchinson, K >= 2)
    network_calls: list[int]  # per batch: evaluations of the ODE's right-hand side
    batch_sizes: list[int]
    rtol: float
    atol: float
    probes: int | None  # None: exact divergence

    @property
    def mean_network_calls(self) -> float:
        """Network evaluations per example, averaged over examples (each batch shares its solver's steps)."""
        return sum(c * b for c, b in zip(self.network_calls, self.batch_sizes)) / sum(self.batch_sizes)


def check_solver_options(rtol: float, atol: float, probes: int | None) -> None:
    """ValueError naming the option unless the tolerances are finite and positive and probes is None or >= 1."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} (the ODE solver's tolerance) must be a positive number, got {value!r}")
    if probes is not None and (isinstance(probes, bool) or not isinstance(probes, int) or probes < 1):
        raise ValueError(f"probes (Hutchinson's probes per example) must be a positive integer, got {probes!r}")


def ode_log_likelihood(model: DDPM, x: torch.Tensor, *, rtol: float = 1e-5, atol: float = 1e-5,
                       probes: int | None = None, batch_size: int = 256, seed: int = 0,
                       escape_factor: float = ESCAPE_FACTOR, progress: bool = False) -> OdeLikelihood:
    """log p_{s0}(x) in nats of model space for each example of ``x`` (model space, (n, *sample_shape)): the
    probability-flow ODE integrated from s0 = 1/T to 1 by dopri5 at ``rtol``/``atol`` (module docstring).

    ``probes`` None computes div eps_theta exactly (D backward passes per network call: small D, the toy sets);
    K >= 1 uses K Rademacher probes per example from a generator seeded by ``seed`` (images). Each batch of
    ``batch_size`` examples is one ODE system, its error measured by torchdiffeq's default norm (the larger of the
    RMS over the batch's coordinates and the RMS over its log-density terms), as Song et al. solve theirs: what is
    reported is the mean over examples, and a per-example (max) norm doubled the network calls on the default
    Chequerboard run for the same mean to 1e-4 nats. An example whose accepted state lies beyond ``escape_factor``
    max(|x(s0)|, sqrt(D)) is stopped there (``FlowDynamics``): its log-density is NaN and ``escaped`` marks it.
    The network must be in eval mode (dropout off): its output must be a function of (x, t).
    """
    check_solver_options(rtol, atol, probes)
    if not (isinstance(escape_factor, (int, float)) and escape_factor > 1):  # nan fails too
        raise ValueError(f"escape_factor must be a number above 1 (math.inf never stops an example), got "
                         f"{escape_factor!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if model.network.training:
        raise ValueError("the network is in training mode; call model.eval() so that eps_theta is deterministic")
    schedule = ContinuousSchedule(model)
    device = model.beta.device
    dtype = model.beta.dtype
    generator = torch.Generator().manual_seed(seed)
    n, dims = x.shape[0], x[0].numel()
    log_density = torch.empty(n, dtype=torch.float64)
    end_radius = torch.empty(n, dtype=torch.float64)
    escaped = torch.empty(n, dtype=torch.bool)
    probe_variance = torch.empty(n, dtype=torch.float64) if probes and probes > 1 else None
    calls, sizes = [], []
    bar = tqdm(total=n, desc=f"ODE likelihood ({SOLVER}, rtol {rtol:g})", unit="ex", disable=not progress,
               dynamic_ncols=True, leave=False, bar_format=BAR_FORMAT, smoothing=0)  # ETA: the run's mean rate
    times = torch.tensor([schedule.start, 1.0], dtype=torch.float64, device=device)
    for start in range(0, n, batch_size):
        x0 = x[start:start + batch_size].to(device, torch.float64)
        b = x0.shape[0]
        v = None if probes is None else rademacher((probes, *x0.shape), generator, dtype).to(device)

        def advance_bar(dynamics: FlowDynamics, s: float) -> None:
            """Count the square root of the integrated share of this batch's s range as done: dopri5 spends its
            steps early (on the README's recipe U-Net a fifth of a batch's calls went to s < 0.005 and half to
            s < 0.55), and the plain share put the first ETA at hours for an eight-minute run."""
            done = start + b * math.sqrt((s - schedule.start) / (1.0 - schedule.start))
            if done > bar.n:
                bar.set_postfix(s=f"{s:.3f}", calls=dynamics.calls, escaped=int(dynamics.stopped.sum()),
                                refresh=False)
                bar.update(done - bar.n)

        radius = escape_factor * x0.flatten(1).norm(dim=1).clamp(min=math.sqrt(dims))
        dynamics = FlowDynamics(model.network, schedule, v, radius, dtype, on_step=advance_bar)
        zero = torch.zeros(b, 1 if probes is None else probes, dtype=torch.float64, device=device)
        with torch.no_grad():
            xs, deltas = odeint(dynamics, (x0, zero), times, rtol=rtol, atol=atol, method=SOLVER)
        x1, delta = xs[-1].flatten(1), deltas[-1]
        prior = -0.5 * x1.pow(2).sum(1) - 0.5 * dims * math.log(2 * math.pi)  # log N(x(1); 0, I)
        per_probe = (prior[:, None] + delta).masked_fill(dynamics.stopped[:, None], math.nan)
        log_density[start:start + b] = per_probe.mean(1).cpu()
        end_radius[start:start + b] = (x1.norm(dim=1) / math.sqrt(dims)).cpu()
        escaped[start:start + b] = dynamics.stopped.cpu()
        if probe_variance is not None:
            probe_variance[start:start + b] = (per_probe.var(1) / probes).cpu()
        calls.append(dynamics.calls)
        sizes.append(b)
        bar.update(start + b - bar.n)
    bar.close()
    return OdeLikelihood(log_density=log_density, end_radius=end_radius, escaped=escaped, escape_factor=escape_factor,
                         probe_variance=probe_variance, network_calls=calls, batch_sizes=sizes, rtol=rtol, atol=atol,
                         probes=probes)
