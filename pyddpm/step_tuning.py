"""A trained model's own N time steps for a few-step sampler, chosen by measurement: the steps whose N-call samples
come closest to what the sampler approximates.

The objective compares the sampler's x_0 with steps (t_0, t_1, ..., t_{N-1}) and a reference x_0 on a small batch
of Philox noise: the mean squared distance of each sample to its own reference from the same x_T ("path"), or the
energy distance of the two sets, the reference drawn from other noise ("distribution"). The reference: for a
deterministic sampler, the probability-flow ODE solved by DPM-Solver++(2M) with ``REFERENCE_NFE`` calls uniform in
log-SNR; for a stochastic one (whose samples have no ODE solution of their own, so only "distribution" applies),
Algorithm 2 with all T calls. Search: start from the best of the fixed spacings (leading's first step is below T),
then coordinate descent, each interior step moved within its neighbours while the distance falls.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .evaluate.toy import energy_distance
from .samplers import plan_for, run_plan

REFERENCE_NFE = 200
START_SPACINGS = ("trailing", "leading", "logsnr", "uniform")
OBJECTIVES = {"path": "mean squared distance of each sample", "distribution": "energy distance of the samples"}


def tune_timesteps(model, sampler: str, steps: int, sample_shape, *, order: int | None = None, num: int = 2000,
                   seed: int = 0, sweeps: int = 3, objective: str = "distribution", progress: bool = False,
                   **run_options) -> tuple[list[int], dict]:
    """(time steps, record) for ``sampler`` with ``steps`` calls on ``model`` and samples of ``sample_shape``: the
    record holds the objective of each start spacing and of the result, and the network calls spent.
    ``objective`` is "path" (the mean squared distance of each sample to its ODE solution) or "distribution" (the
    energy distance between the two sets of samples, the reference's from other noise). ``run_options`` are
    ``run_plan``'s (fast, runtime, precision)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    plan_options = {"order": order} if order is not None else {}
    return _search(model, sampler, steps, (num, *sample_shape), seed, sweeps, progress, plan_options, run_options,
                   objective)


def _search(model, sampler, steps, shape, seed, sweeps, progress, plan_options, run_options, objective):
    calls = [0]

    def solve(plan, seed=seed) -> torch.Tensor:
        calls[0] += plan.nfe
        return run_plan(model, shape, plan, seed=seed, **run_options)

    reference_plan, described = reference_for(model, sampler, steps, plan_options)
    if objective == "path" and reference_plan.stochastic:
        raise ValueError(f"objective 'path' compares each sample with its own ODE solution, but {sampler} draws "
                         "noise at every call; use 'distribution'")
    # "path" pairs each sample with its reference from the same x_T; "distribution" draws the reference from other
    # noise: from the same x_T a sampler close to the reference's path would look close in distribution too
    reference = solve(reference_plan, seed if objective == "path" else seed + 1)  # Philox

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
    record = {"objective": f"{OBJECTIVES[objective]} to {described}",
              "start": {k: v[0] for k, v in starts.items()}, "tuned": best, "samples": shape[0], "seed": seed,
              "network_calls": calls[0]}
    return ts, record


def reference_for(model, sampler: str, steps: int, plan_options: dict):
    """(plan, description) of the reference ``sampler`` with ``steps`` calls is tuned towards (module docstring)."""
    if plan_for(model, sampler, steps, **plan_options).stochastic:
        return plan_for(model, "ddpm"), f"Algorithm 2's samples ({model.T} calls)"
    nfe = min(REFERENCE_NFE, model.T)
    described = f"the ODE solved with dpm++2m, {nfe} calls, logsnr spacing"
    return plan_for(model, "dpm++2m", nfe, spacing="logsnr"), described


def most_calls(model, sampler: str, steps: int, sweeps: int) -> int:
    """The network calls a tuning of ``sampler`` with ``steps`` calls can spend at most (for progress estimates)."""
    reference = reference_for(model, sampler, steps, {})[0].nfe
    return reference + len(START_SPACINGS) * steps + sweeps * (steps - 1) * 8 * steps


def _moves(t: int, lower: int, upper: int) -> list[int]:
    """Candidate positions for a step at t between lower and upper: t moved by 1, 2, 4, ... of the room each way."""
    out = []
    for frac in (0.5, 0.25, 0.1, 0.03):
        for target in (t + frac * (upper - t), t - frac * (t - lower)):
            c = int(round(target))
            if lower <= c <= upper and c != t and c not in out:
                out.append(c)
    return out
