"""A trained model's own N time steps for a few-step sampler, chosen by measurement: the steps whose N-call samples
come closest to the model's probability-flow ODE solved finely, from the same x_T.

The objective compares the sampler's x_0 with steps (t_0 = T, t_1, ..., t_{N-1}) and a reference x_0 from
DPM-Solver++(2M) with ``REFERENCE_NFE`` calls uniform in log-SNR, on a small batch of shared Philox noise: the mean
squared distance of each sample to its own reference ("path"), or the energy distance of the two sets
("distribution"). Search: start from the best of the fixed spacings, then coordinate descent, each
interior step moved within its neighbours while the distance falls (the first step stays at T, where x_T is drawn).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .evaluate.toy import energy_distance
from .samplers import plan_for, run_plan

REFERENCE_NFE = 200
START_SPACINGS = ("trailing", "logsnr", "uniform")
OBJECTIVES = {"path": "mean squared distance of each sample", "distribution": "energy distance of the samples"}


def tune_timesteps(model, sampler: str, steps: int, sample_shape, *, order: int | None = None, num: int = 2000,
                   seed: int = 0, sweeps: int = 3, objective: str = "distribution", progress: bool = False,
                   **run_options) -> tuple[list[int], dict]:
    """(time steps, record) for ``sampler`` with ``steps`` calls on ``model`` and samples of ``sample_shape``: the
    record holds the objective of each start spacing and of the result, and the network calls spent.
    ``objective`` is "path" (the mean squared distance of each sample to its ODE solution) or "distribution" (the
    energy distance between the two sets of samples, blind to which x_T gave which). ``run_options`` are
    ``run_plan``'s (fast, runtime, precision)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    plan_options = {"order": order} if order is not None else {}
    return _search(model, sampler, steps, (num, *sample_shape), seed, sweeps, progress, plan_options, run_options,
                   objective)


def _search(model, sampler, steps, shape, seed, sweeps, progress, plan_options, run_options, objective):
    calls = [0]

    def solve(plan) -> torch.Tensor:
        calls[0] += plan.nfe
        return run_plan(model, shape, plan, seed=seed, **run_options)

    reference = solve(plan_for(model, "dpm++2m", min(REFERENCE_NFE, model.T), spacing="logsnr"))  # x_T: Philox

    def distance(ts) -> float:
        x = solve(plan_for(model, sampler, timesteps=ts, **plan_options))
        if objective == "distribution":
            return energy_distance(x.flatten(1), reference.flatten(1))
        return float((x - reference).pow(2).flatten(1).sum(1).mean())

    starts = {}
    for spacing in START_SPACINGS:
        try:
            ts = list(plan_for(model, sampler, steps, spacing=spacing, **plan_options).timesteps)
        except ValueError:
            continue
        starts[spacing] = (distance(ts), ts)
    best, ts = min(starts.values())
    bar = tqdm(range(sweeps), desc=f"tuning {sampler} {steps} steps", disable=not progress, leave=False)
    for _ in bar:
        improved = False
        for i in range(1, len(ts)):
            upper = ts[i - 1] - 1
            lower = ts[i + 1] + 1 if i + 1 < len(ts) else 1
            for candidate in _moves(ts[i], lower, upper):
                trial = ts[:i] + [candidate] + ts[i + 1:]
                value = distance(trial)
                if value < best:
                    best, ts, improved = value, trial, True
        bar.set_postfix(distance=f"{best:.3g}")
        if not improved:
            break
    record = {"objective": f"{OBJECTIVES[objective]} to the ODE solved with dpm++2m, 200 calls, logsnr spacing",
              "start": {k: v[0] for k, v in starts.items()}, "tuned": best, "samples": shape[0], "seed": seed,
              "network_calls": calls[0]}
    return ts, record


def most_calls(steps: int, sweeps: int) -> int:
    """The network calls a tuning of ``steps`` calls can spend at most (for progress estimates)."""
    return REFERENCE_NFE + len(START_SPACINGS) * steps + sweeps * (steps - 1) * 8 * steps


def _moves(t: int, lower: int, upper: int) -> list[int]:
    """Candidate positions for a step at t between lower and upper: t moved by 1, 2, 4, ... of the room each way."""
    out = []
    for frac in (0.5, 0.25, 0.1, 0.03):
        for target in (t + frac * (upper - t), t - frac * (t - lower)):
            c = int(round(target))
            if lower <= c <= upper and c != t and c not in out:
                out.append(c)
    return out
