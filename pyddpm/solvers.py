"""Every sampler as data: the N time steps it calls the network at and one row of coefficients per call, computed
once in float64 from the schedule (``SolverPlan``).

Call i at 1-based step t_i (t_N = 0: the clean end, alpha = 1, sigma = 0) is the affine step of ``pyddpm.ops``:
d = p x + q eps_hat (the data prediction x0_hat = (x - sigma_i eps_hat) / alpha_i), x <- a x + b eps_hat + c d +
sum_k h_k H_k + sigma z, H <- (d, H_0, ...), where H_k = d of call i - 1 - k. With alpha_t = sqrt(abar_t),
sigma_t = sqrt(1 - abar_t) and the half log-SNR lambda_t = log(alpha_t / sigma_t), h = lambda_{i+1} - lambda_i:

- ``ddpm``: Algorithm 2 (all T steps); ``ddim``: Song et al. (2021) eq. 12 (``NoiseSchedule.ddim_coefficients``).
- ``dpm++2m``, ``dpm++3m``: DPM-Solver++ multistep in data prediction (Lu et al. 2022, Alg. 2 and its third-order
  form), x' = (sigma'/sigma) x - alpha' (e^-h - 1) D with D from the last 2 or 3 data predictions.
- ``sde-dpm++2m``: the SDE variant, x' = (sigma'/sigma) e^-h x + alpha' (1 - e^-2h) D + sigma' sqrt(1 - e^-2h) z.
- ``unipc``: UniPC with B(h) = e^h - 1 (Zhao et al. 2023, Alg. 1-3: UniP predictor, UniC corrector). The
  corrector of call i uses the network output at x_i and is folded into the same row: both share x_{i-1}'s base
  term, so corrected x_i = x_i + (terms in d_i, d_{i-1}, ...), and the step stays affine in (x_i, eps_hat, H).

Orders warm up (order <= i + 1) and, with ``lower_order_final`` (as diffusers does below 15 steps), drop to 1 on
the last call and <= 2 on the one before; the last call to sigma = 0 is always first order. The formulas follow
diffusers' DPMSolverMultistepScheduler and UniPCMultistepScheduler, against which tests/sampling/test_solvers.py checks
every step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .schedules import MAX_HISTORY, NoiseSchedule, StepCoefficients

SAMPLERS = ("ddpm", "ddim", "dpm++2m", "dpm++3m", "sde-dpm++2m", "unipc")
SPACINGS = ("trailing", "uniform", "leading", "logsnr")
_MULTISTEP_ORDER = {"dpm++2m": 2, "dpm++3m": 3, "sde-dpm++2m": 2}
UNIPC_ORDERS = (1, 2, 3)
UNIPC_DEFAULT_ORDER = 3  # measured better than diffusers' default 2 at 5-10 calls (docs/solvers.md)
DEFAULT_SPACING = "trailing"
# pyddpm-sample's default: the fewest calls measured to match Algorithm 2's 1000-call quality on the toy run and an
# MNIST U-Net (docs/solvers.md); the deterministic solvers converge to the probability-flow ODE's samples, which on
# MNIST stay behind Algorithm 2's at any number of calls, and the stochastic solver needs 20 for even squares
DEFAULT_SAMPLER, DEFAULT_STEPS = "sde-dpm++2m", 20


@dataclass(frozen=True)
class SolverPlan:
    """N network calls at ``timesteps`` (1-based, decreasing) with the step coefficients ``coefs`` of each call and
    ``history`` (K) buffers of earlier data predictions."""
    sampler: str
    timesteps: tuple[int, ...]
    coefs: tuple[StepCoefficients, ...]
    history: int
    spacing: str | None = None
    variance: str | None = None  # Algorithm 2's sigma_t^2

    @property
    def nfe(self) -> int:
        """Network function evaluations: one per call."""
        return len(self.timesteps)

    @property
    def stochastic(self) -> bool:
        """Whether any call draws noise (sigma != 0)."""
        return any(c.sigma != 0 for c in self.coefs)

    @property
    def clip(self) -> bool:
        return bool(self.coefs[0].clip)

    def rows(self) -> torch.Tensor:
        """(N, 11) float64: each call's coefficient row (``StepCoefficients.row``)."""
        return torch.tensor([c.row() for c in self.coefs], dtype=torch.float64)

    def label(self) -> str:
        """How pictures, reports and manifests name it, e.g. 'dpm++2m, 10 NFE'."""
        return f"{self.sampler}, {self.nfe} NFE"


def resolve_sampler(sampler: str | None, steps: int | None, T: int | None = None) -> tuple[str, int | None]:
    """(sampler, steps) with the defaults filled in: neither given, ``DEFAULT_SAMPLER`` with ``DEFAULT_STEPS``
    calls (Algorithm 2 for a model of ``T`` <= that many steps: its T calls are already as few); only ``steps``,
    the default sampler with that many; only a sampler, Algorithm 2's T or the default steps (at most ``T``)."""
    if sampler is None and steps is None and T is not None and T <= DEFAULT_STEPS:
        return "ddpm", None
    if sampler is None:
        return DEFAULT_SAMPLER, DEFAULT_STEPS if steps is None else steps
    if steps is None and sampler != "ddpm":
        steps = DEFAULT_STEPS if T is None else min(DEFAULT_STEPS, T)
    return sampler, steps


def check_sampler(sampler: str) -> str:
    """``sampler`` if pyddpm ships it, else ValueError naming --sampler and the choices."""
    if sampler not in SAMPLERS:
        raise ValueError(f"--sampler: unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return sampler


def spaced_timesteps(schedule: NoiseSchedule, steps: int, spacing: str) -> list[int]:
    """``steps`` 1-based time steps from near T down, by ``spacing``: ``trailing`` (T, T - T/N, ...; the last above
    0), ``uniform`` (uniform in t from T to 1, DDIM's original), ``leading`` (multiples of T // (N + 1), diffusers'
    'leading' shifted to 1-based), ``logsnr`` (uniform in lambda between lambda_T and lambda_1)."""
    T = schedule.T
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"--steps must be a positive integer (at most {T}, the model's T), got {steps!r}")
    if spacing == "trailing":
        ts = [round(T - i * T / steps) for i in range(steps)]
    elif spacing == "uniform":
        ts = torch.linspace(T, 1, steps, dtype=torch.float64).round().long().tolist()
    elif spacing == "leading":
        ratio = T // (steps + 1)
        if ratio < 1:
            raise ValueError(f"--spacing leading needs --steps < T (= {T}), got {steps}")
        ts = [(steps - i) * ratio + 1 for i in range(steps)]
    elif spacing == "logsnr":
        lam = _half_log_snr(schedule)
        targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
        ts = [int((lam - v).abs().argmin()) + 1 for v in targets.tolist()]
        for i in range(len(ts) - 2, -1, -1):  # distinct where lambda moves by more than the spacing (near t = 1)
            ts[i] = max(ts[i], ts[i + 1] + 1)
        if ts[0] > T:
            raise ValueError(f"--spacing logsnr cannot place {steps} distinct steps in T = {T}")
    else:
        raise ValueError(f"--spacing: unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return list(dict.fromkeys(ts))


def check_timesteps(timesteps, T: int) -> list[int]:
    """``timesteps`` as a list after checking they are distinct 1-based steps in T..1, decreasing."""
    ts = [int(t) for t in timesteps]
    if not ts or any(not 1 <= t <= T for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be decreasing integers in [1, T={T}], got {ts[:12]}")
    return ts


def solver_plan(schedule: NoiseSchedule, sampler: str, steps: int | None = None, *, spacing: str | None = None,
                timesteps=None, eta: float = 0.0, variance: str = "beta", clip: bool = False,
                order: int | None = None, lower_order_final: bool = True) -> SolverPlan:
    """The plan of ``sampler`` with ``steps`` network calls (ddpm: all T), its time steps from ``spacing`` (default
    ``DEFAULT_SPACING``) or given as ``timesteps``. ``eta`` is DDIM's, ``variance`` Algorithm 2's, ``order`` UniPC's
    (1-3, default ``UNIPC_DEFAULT_ORDER``); each refuses the others' options with a one-line error naming the flag."""
    check_sampler(sampler)
    T = schedule.T
    _check_options(sampler, steps, T, eta=eta, variance=variance, order=order, spacing=spacing,
                   timesteps=timesteps)
    if sampler == "ddpm":
        return SolverPlan("ddpm", tuple(range(T, 0, -1)),
                          tuple(reversed(schedule.step_coefficients(variance, clip))), 0, None, variance)
    if timesteps is not None:
        ts, spacing = check_timesteps(timesteps, T), "model"
    else:
        spacing = spacing or DEFAULT_SPACING
        ts = spaced_timesteps(schedule, steps, spacing)
    if sampler == "ddim":
        return SolverPlan("ddim", tuple(ts), tuple(schedule.ddim_coefficients(ts, eta, clip)), 0, spacing)
    order = (order or UNIPC_DEFAULT_ORDER) if sampler == "unipc" else _MULTISTEP_ORDER[sampler]
    if len(ts) < order:
        raise ValueError(f"--steps: --sampler {sampler} is of order {order} and needs at least {order} steps, got "
                         f"{len(ts)}")
    alpha, sigma, lam = _alpha_sigma_lambda(schedule, ts)
    if sampler == "unipc":
        vectors = _unipc_vectors(alpha, sigma, lam, order, lower_order_final)
        history, noise = order, [0.0] * len(ts)
    else:
        vectors, noise = _dpm_vectors(alpha, sigma, lam, order, lower_order_final, sde=sampler.startswith("sde"))
        history = order - 1
    coefs = []
    for i, vec in enumerate(vectors):  # vec: coefficients of (x, d_i, d_{i-1}, d_{i-2}, d_{i-3})
        coefs.append(StepCoefficients(
            a=vec[0], b=0.0, sigma=noise[i], clip=clip, c=vec[1], p=1 / alpha[i], q=-sigma[i] / alpha[i],
            h=tuple(vec[2:2 + history])))
    return SolverPlan(sampler, tuple(ts), tuple(coefs), history, spacing)


def _check_options(sampler: str, steps, T: int, *, eta, variance, order, spacing, timesteps) -> None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T):
        raise ValueError(f"--steps must be a positive integer (at most {T}, the model's T), got {steps!r}")
    given = {"--eta": eta not in (None, 0, 0.0), "--order": order is not None, "--spacing": spacing is not None}
    takes = {"ddpm": (), "ddim": ("--eta", "--spacing"), "unipc": ("--order", "--spacing")}.get(sampler, ("--spacing",))
    refused = [flag for flag, on in given.items() if on and flag not in takes]
    if refused:
        owner = {"--eta": "--sampler ddim", "--order": "--sampler unipc",
                 "--spacing": "the few-step samplers"}[refused[0]]
        raise ValueError(f"{refused[0]} applies to {owner}, not to --sampler {sampler}: leave it out or choose "
                         "that sampler")
    if sampler == "ddpm":
        if steps not in (None, T):
            raise ValueError(f"--steps: --sampler ddpm is Algorithm 2 and calls the network all T = {T} times; "
                             "leave out --steps or choose a few-step sampler (e.g. --sampler dpm++2m)")
        if timesteps is not None:
            raise ValueError("--sampler ddpm is Algorithm 2 and takes every step; it takes no stored time steps")
        return
    if variance != "beta" and variance is not None:
        raise ValueError(f"--variance applies to --sampler ddpm only, not {sampler}")
    if steps is None and timesteps is None:
        raise ValueError(f"--steps: --sampler {sampler} needs the number of network calls")
    if order is not None and (isinstance(order, bool) or order not in UNIPC_ORDERS):
        raise ValueError(f"--order must be one of {', '.join(map(str, UNIPC_ORDERS))}, got {order!r}")


def _half_log_snr(schedule: NoiseSchedule) -> torch.Tensor:
    """lambda_t = log(alpha_t / sigma_t) = log(abar_t / (1 - abar_t)) / 2 for t = 1..T (float64)."""
    return 0.5 * (torch.log(schedule.abar) - torch.log1p(-schedule.abar))


def _alpha_sigma_lambda(schedule: NoiseSchedule, ts: list[int]):
    """alpha, sigma, lambda at t_0..t_{N-1} and at the clean end t_N = 0 (1, 0, +inf), as float lists."""
    abar = [float(schedule.abar[t - 1]) for t in ts]
    alpha = [math.sqrt(v) for v in abar] + [1.0]
    sigma = [math.sqrt(1 - v) for v in abar] + [0.0]
    lam = [math.log(a) - math.log(s) for a, s in zip(alpha[:-1], sigma[:-1])] + [math.inf]
    return alpha, sigma, lam


def _multistep_order(i: int, n: int, order: int, lower_order_final: bool) -> int:
    """The order of call i of n: warm-up (<= i + 1), first order into sigma = 0, and with ``lower_order_final``
    below 15 steps <= 2 on the call before the last (diffusers' rule)."""
    if i == n - 1:
        return 1
    if lower_order_final and n < 15 and i == n - 2:
        order = min(order, 2)
    return min(order, i + 1)


def _dpm_vectors(alpha, sigma, lam, order: int, lower_order_final: bool, sde: bool):
    """DPM-Solver++ (SDE) multistep: per call, the coefficients of (x, d_i, d_{i-1}, d_{i-2}) and of z."""
    n = len(lam) - 1
    vectors, noise = [], []
    for i in range(n):
        k = _multistep_order(i, n, order, lower_order_final)
        h = lam[i + 1] - lam[i]
        ratio = sigma[i + 1] / sigma[i]
        if sde:  # x' = (sigma'/sigma) e^-h x + alpha' (1 - e^-2h) D + sigma' sqrt(1 - e^-2h) z
            x_coef, phi = ratio * math.exp(-h), -alpha[i + 1] * math.expm1(-2 * h)
            noise.append(sigma[i + 1] * math.sqrt(-math.expm1(-2 * h)))
        else:  # x' = (sigma'/sigma) x - alpha' (e^-h - 1) D
            x_coef, phi = ratio, -alpha[i + 1] * math.expm1(-h)
            noise.append(0.0)
        d = [0.0] * (MAX_HISTORY + 1)  # D over (d_i, d_{i-1}, d_{i-2}, d_{i-3})
        if k == 1:
            d[0] = phi
        elif k == 2:  # D = D0 + D1 / 2, D1 = (d_i - d_{i-1}) / r0 (midpoint)
            r0 = (lam[i] - lam[i - 1]) / h
            d[0], d[1] = phi * (1 + 0.5 / r0), -phi * 0.5 / r0
        else:  # D0 - ((e^-h - 1)/h + 1)/(e^-h - 1) D1 + ((e^-h - 1 + h)/h^2 - 1/2)/(e^-h - 1) D2 (Lu et al. 2022)
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            d1_0 = [1 / r0, -1 / r0, 0.0]
            d1_1 = [0.0, 1 / r1, -1 / r1]
            d1 = [u + r0 / (r0 + r1) * (u - v) for u, v in zip(d1_0, d1_1)]
            d2 = [(u - v) / (r0 + r1) for u, v in zip(d1_0, d1_1)]
            em1 = math.expm1(-h)
            w1 = alpha[i + 1] * (em1 / h + 1)
            w2 = -alpha[i + 1] * ((em1 + h) / h ** 2 - 0.5)
            d[:3] = [phi * (j == 0) + w1 * u + w2 * v for j, (u, v) in enumerate(zip(d1, d2))]
        vectors.append([x_coef, *d])
    return vectors, noise


def _unipc_b(lam, i: int, j: int, order: int):
    """UniPC's h, B(h) = e^-h - 1 (bh2, data prediction), h phi_1, the ratios r_k and the b vector of the step from
    lambda_i to lambda_j with the model outputs at i, i-1, ... (Zhao et al. 2023, Alg. 2)."""
    h = lam[j] - lam[i]
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    rks = [(lam[i - k] - lam[i]) / h for k in range(1, order)] + [1.0]
    h_phi_k, factorial, b = h_phi_1 / hh - 1, 1, []
    for m in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= m + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R = torch.tensor([[r ** (m - 1) for r in rks] for m in range(1, order + 1)], dtype=torch.float64)
    return h_phi_1, b_h, rks, R, torch.tensor(b, dtype=torch.float64)


def _unipc_rhos_p(R: torch.Tensor, b: torch.Tensor, order: int) -> list[float]:
    if order == 1:
        return []
    if order == 2:
        return [0.5]
    return torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()


def _unipc_vectors(alpha, sigma, lam, order: int, lower_order_final: bool):
    """UniPC-bh2 with its corrector folded in: per call, the coefficients of (x_i, d_i, d_{i-1}, d_{i-2}, d_{i-3})."""
    n = len(lam) - 1
    vectors, previous = [], None  # previous: (order, rhos_p, rks, b_h) of the predictor that gave x_i
    for i in range(n):
        corrected = [1.0] + [0.0] * (MAX_HISTORY + 1)  # x_i^c over (x_i, d_i, d_{i-1}, ...)
        if previous is not None:  # UniC: x_i^c = x_i - alpha_i B(h) [sum (rho_c - rho_p) D1_k + rho_c[-1] D1_t]
            p_order, rhos_p, rks, b_h, R, b = previous
            rhos_c = [0.5] if p_order == 1 else torch.linalg.solve(R, b).tolist()
            scale = -alpha[i] * b_h
            for k in range(1, p_order):  # D1_k = (d_{i-1-k} - d_{i-1}) / r_k
                w = scale * (rhos_c[k - 1] - rhos_p[k - 1]) / rks[k - 1]
                corrected[2 + k] += w
                corrected[2] -= w
            corrected[1] += scale * rhos_c[-1]  # D1_t = d_i - d_{i-1}
            corrected[2] -= scale * rhos_c[-1]
        this_order = 1 if i == n - 1 else min(order, n - i if lower_order_final else order, i + 1)
        h_phi_1, b_h, rks, R, b = _unipc_b(lam, i, i + 1, this_order)
        rhos_p = _unipc_rhos_p(R, b, this_order)
        ratio = sigma[i + 1] / sigma[i]
        vec = [ratio * v for v in corrected]  # (sigma'/sigma) x_i^c
        vec[1] -= alpha[i + 1] * h_phi_1
        for k in range(1, this_order):  # - alpha' B(h) sum rho_p D1_k, D1_k = (d_{i-k} - d_i) / r_k
            w = -alpha[i + 1] * b_h * rhos_p[k - 1] / rks[k - 1]
            vec[1 + k] += w
            vec[1] -= w
        vectors.append(vec)
        previous = (this_order, rhos_p, rks, b_h, R, b)
    return vectors
