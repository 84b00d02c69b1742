"""The few-step plans an export carries (docs/export.md, issue 32): the one ``pyddpm-export`` was asked
for, and every shipped sampler at the NFEs of ``TABLE_STEPS``, as numbers for the manifest and as float32 tables
for the scripted sampler. Algorithm 2 itself ("ddpm" with all T steps) is not a plan here: ``step.onnx`` and the
manifest's ``step_coefficients`` already carry it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..store import tuned_timesteps
from ..schedules import MAX_HISTORY
from ..solvers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, check_sampler, resolve_sampler, solver_plan

TABLE_STEPS = (5, 8, 10, 20)  # the NFEs every export carries for every shipped sampler
ROW = ("a", "b", "sigma", "c", "p", "q", "lo", "hi", "h_0", "h_1", "h_2")
HISTORY = MAX_HISTORY  # history buffers the step graph always carries (h_k = 0 for k >= the plan's K)
ALGORITHM_2 = "ddpm"

class ExportPlans(NamedTuple):
    default: dict  # {"sampler", "steps"}: what a host runs without --sampler/--steps
    default_sampler: str  # what --steps N alone runs
    default_steps: int  # what --sampler NAME alone runs (but ddpm: T)
    plans: list[dict]  # manifest entries, the default's first where it is a plan


def is_algorithm_2(sampler: str, steps: int | None, T: int) -> bool:
    """Whether (sampler, steps) is Algorithm 2 with all T steps, which step.onnx runs."""
    return sampler == ALGORITHM_2 and steps in (None, T)


def plan_entry(plan) -> dict:
    """A plan as the manifest states it: rows as float32 values (what the step graph reads), t_i 1-based, and its
    spacing ("model": the run's tuned time steps)."""
    rows = plan.rows().to(torch.float32)
    if rows.dim() != 2 or rows.shape[1] != len(ROW) or rows.shape[0] != len(plan.timesteps):
        raise ValueError(f"a plan needs one row of {len(ROW)} coefficients per time step, got {tuple(rows.shape)} "
                         f"for {len(plan.timesteps)} steps")
    if not 0 <= plan.history <= HISTORY:
        raise ValueError(f"the step graph carries at most {HISTORY} history buffers, the plan needs {plan.history}")
    return {"sampler": plan.sampler, "steps": len(plan.timesteps), "spacing": plan.spacing,
            "timesteps": [int(t) for t in plan.timesteps],
            "rows": rows.tolist(), "history": int(plan.history), "clip": bool(plan.clip),
            "stochastic": bool(plan.stochastic)}


def export_plans(model, run_dir, sampler: str | None = None, steps: int | None = None) -> ExportPlans:
    """The plans of an export of ``model`` (the run in ``run_dir``) asked for ``sampler`` and ``steps``, with
    pyddpm-sample's defaults (``solvers.resolve_sampler``) and, as pyddpm-sample takes them, the run's tuned time
    steps where stored. ValueError naming --sampler or --steps for a plan that cannot be built, before anything is
    written."""
    if sampler is not None:
        check_sampler(sampler)
    sampler, steps = resolve_sampler(sampler, steps, model.T)
    if sampler == ALGORITHM_2 and steps is None:  # T no more than the default's calls, or asked for
        steps = model.T
    tuned = tuned_timesteps(run_dir)

    def plan(name: str, n: int):
        if (name, n) in tuned:
            return solver_plan(model.noise_schedule, name, timesteps=tuned[name, n])
        return solver_plan(model.noise_schedule, name, n)

    plans = []
    if not is_algorithm_2(sampler, steps, model.T):  # solver_plan names --steps where they do not fit
        plans.append(plan_entry(plan(sampler, steps)))
    default = {"sampler": sampler, "steps": plans[0]["steps"] if plans else model.T}
    for name in SAMPLERS:
        for n in TABLE_STEPS:
            if n > model.T or is_algorithm_2(name, n, model.T) or (name, n) == (sampler, steps):
                continue
            try:
                entry = plan_entry(plan(name, n))
            except ValueError:  # a sampler that does not take n calls (Algorithm 2, an order above n)
                continue
            plans.append(entry)
    return ExportPlans(default, DEFAULT_SAMPLER, DEFAULT_STEPS, plans)
