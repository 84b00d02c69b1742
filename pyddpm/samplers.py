"""The sampling loop over a DDPM for every sampler (``pyddpm.solvers``: Algorithm 2, DDIM, DPM-Solver++, UniPC),
on the fused op or the torch reference.

One loop runs every ``SolverPlan``: per call, eps_theta at the call's time step, then the fused affine step with the
plan's row and its history buffers (``ops.reverse_step``). The network is the one the model holds, called once per
call in order, unless a fast copy or another runtime is asked for (``fast``, ``runtime``: ``pyddpm.accel``).

With a ``seed``, all noise (x_T and every z) comes from the counter-based Philox rule of ``pyddpm.ops`` at the
call's time step, so sample i depends only on (seed, i): not on the batch size, the device or the backend. Without
one, the fused backend draws a seed from torch's global generator and the torch backend uses ``torch.randn``
exactly as the exercise does.

On CUDA, with the fused backend, one whole call (the network's time input, eps_theta, the fused update with its
history and the advance to the next call) is captured once in a CUDA graph and replayed N times: the update reads
its row and Philox step from a schedule on the device (``step_schedule.reverse_step_scheduled``), so a replay needs nothing
from the host and gives the same samples as the eager loop.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from . import ops
from .accel import check_runtime_options, loop_network
from .data import DataTransform, is_toy
from .diffusion import DDPM
from .solvers import SolverPlan, solver_plan
from .step_schedule import reverse_step_scheduled, step_schedule

BACKENDS = ("fused", "torch")


class NonFiniteSamples(ValueError):
    """The reverse process produced NaN or infinite samples (diverged weights, or a schedule that amplifies)."""


def plan_for(model, sampler: str = "ddpm", steps: int | None = None, *, variance: str | None = None,
             **options) -> SolverPlan:
    """The model's ``SolverPlan`` for ``sampler`` with ``steps`` network calls (``pyddpm.solvers.solver_plan``;
    ``variance`` defaults to the model's for Algorithm 2)."""
    if sampler == "ddpm":
        variance = variance or model.variance
    return solver_plan(model.noise_schedule, sampler, steps, variance=variance, **options)


def sample(model, shape, sampler: str = "ddpm", steps: int | None = None, *, spacing: str | None = None,
           timesteps=None, eta: float = 0.0, variance: str | None = None, clip: bool = False,
           order: int | None = None, **options) -> torch.Tensor:
    """x_0 from ``sampler`` with ``steps`` network calls (``plan_for``); ``options`` are ``run_plan``'s."""
    plan = plan_for(model, sampler, steps, spacing=spacing, timesteps=timesteps, eta=eta, variance=variance,
                    clip=clip, order=order)
    return run_plan(model, shape, plan, **options)


def ddpm_sample(model, shape, *, variance: str | None = None, clip: bool = False, **options) -> torch.Tensor:
    """x_0 ~ p_theta(x_0) by Algorithm 2 with sigma_t^2 = beta_t (or beta_tilde_t), z = 0 at t = 1: the network
    called T times, t = T..1. ``clip`` clamps the x0 estimate to [-1, 1] and steps with the posterior mean (eq. 7);
    ``options`` are ``run_plan``'s."""
    return run_plan(model, shape, plan_for(model, "ddpm", variance=variance, clip=clip), **options)


def ddim_sample(model, shape, steps: int, *, eta: float = 0.0, clip: bool = False, spacing: str = "uniform",
                **options) -> torch.Tensor:
    """x_0 by the DDIM sampler of Song et al. (2021) in ``steps`` steps (uniform in t from T to 1 by default, as
    the paper); eta = 0 is deterministic after x_T. ``options`` are ``run_plan``'s."""
    return run_plan(model, shape, plan_for(model, "ddim", steps, eta=eta, clip=clip, spacing=spacing), **options)


def step_runner(model, x: torch.Tensor, plan: SolverPlan, seed: int, sample_offset: int = 0, network=None,
                history=()):
    """A function that takes the next call of ``plan`` (row s at step ``plan.timesteps[s]``) on ``x`` and the
    ``history`` buffers in place.

    Everything it does is device work that waits for nothing on the host (the call's row is read from a
    schedule on the device), so one CUDA-graph capture of it replays every call. Run under torch.no_grad().
    ``network`` is what evaluates eps_theta (default: ``model.network``).
    """
    network = model.network if network is None else network
    device, batch = x.device, x.shape[0]
    schedule = step_schedule(list(plan.coefs), list(plan.timesteps), device=device)
    t_inputs = model.time_input(torch.tensor(list(plan.timesteps), device=device))  # (N, 1): row s for call s
    t_row = t_inputs[:1].clone()
    # on the CPU the batch's time input is that row seen batch times (stride 0: a network sees at no cost that the
    # batch is at one step); a CUDA graph replays a copy into a (batch, 1) tensor
    t_target = t_row if device.type == "cpu" else t_row.expand(batch, 1).clone()
    t_in = t_target.expand(batch, 1)
    history = list(history)

    def step() -> None:
        t_target.copy_(t_inputs.index_select(0, schedule.index.reshape(1)).expand_as(t_target))
        eps_hat = network(x, t_in).contiguous()
        reverse_step_scheduled(x, eps_hat, schedule, seed=seed, sample_offset=sample_offset, history=history)
        schedule.index.add_(1)

    step.warm_up = lambda: network(x, t_in)  # the network alone, leaving x and the schedule as they are
    return step


def capture_step(step) -> torch.cuda.CUDAGraph:
    """One CUDA-graph capture of ``step`` (from ``step_runner``), after warming the network up on a side stream
    (cuBLAS/cuDNN handles and lazy initialisation must not happen inside the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step.warm_up()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def _use_graph(graph: bool | None, backend: str, device: torch.device) -> bool:
    if graph is None:
        return device.type == "cuda" and backend == "fused"
    if graph and backend != "fused":
        raise ValueError("CUDA-graph sampling replays the fused step (backend='fused'); the torch reference "
                         "samples eagerly (graph=False)")
    if graph and device.type != "cuda":
        raise ValueError(f"CUDA-graph sampling needs a CUDA device, the model is on {device}; "
                         "sample without --graph (graph=False)")
    return bool(graph)


def run_plan(model, shape, plan: SolverPlan, *, seed: int | None = None, backend: str = "fused",
             sample_offset: int = 0, progress: bool = False, graph: bool | None = None,
             callback: Callable[[int, torch.Tensor], None] | None = None, precision: str = "fp32",
             fast: bool = False, runtime: str = "torch") -> torch.Tensor:
    """x_0 of ``plan`` for a batch of ``shape`` (batch, *sample_shape).

    Args:
        seed: seed of the counter-based noise; None draws noise from torch's global generator.
        backend: ``"fused"`` (the pyddpm._C op) or ``"torch"`` (the plain-torch reference step).
        sample_offset: global index of the first sample (for splitting one seeded batch across processes).
        progress: show a tqdm bar over the network calls.
        graph: replay each call from a CUDA graph (True requires CUDA); None: on for the fused backend on CUDA.
            Gives the same samples as eager evaluation.
        callback: called as ``callback(t, x_t)`` with x_T before the first call and after each call with the step
            it reached, ending with ``callback(0, x_0)`` (model space; ``x_t`` is overwritten by the next call, so
            clone what you keep). Under CUDA graphs it runs between replays.
        precision: ``"fp32"`` or ``"bf16"`` (the network under bf16 autocast on its fast copy; the update stays
            float32).
        fast: evaluate the network through its fast copy (``pyddpm.accel``; pyddpm's own network classes only,
            equal within float32 rounding); False (the default) calls ``model.network`` itself.
        runtime: with ``fast``: ``"torch"`` always takes the fast copy, ``"auto"`` only for loops long enough to
            repay making it (``pyddpm.accel.loop_network``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"sample shape must be (batch, *sample_shape) with positive sizes, got {shape}")
    if seed is not None and not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}")
    device = model.beta.device
    use_graph = _use_graph(graph, backend, device)
    check_runtime_options(precision, fast, runtime)
    if seed is None and backend == "fused":
        seed = int(torch.randint(0, 2**62, (1,)).item())
    if seed is None:
        x = torch.randn(shape, device=device)
    else:
        x = ops.normal_noise(shape, seed=seed, step=0, sample_offset=sample_offset, device=device, backend=backend)
    history = [torch.zeros(shape, device=device, dtype=torch.float32) for _ in range(plan.history)]
    timesteps = plan.timesteps
    calls = tqdm(list(zip(timesteps, plan.coefs)), desc=f"sampling ({plan.label()})", unit="call",
                 disable=not progress, leave=False)
    reached = list(timesteps[1:]) + [0]  # the step each call arrives at
    with torch.no_grad():
        network = loop_network(model, len(timesteps), precision, fast, runtime)
        if callback is not None:
            callback(timesteps[0], x)
        if use_graph:
            with torch.cuda.device(device):
                captured = capture_step(step_runner(model, x, plan, seed, sample_offset, network, history))
                for s, _ in enumerate(calls):
                    captured.replay()
                    if callback is not None:
                        callback(reached[s], x)
            return x
        for s, (t, coef) in enumerate(calls):
            eps_hat = network(x, model.time_input(t, shape[0])).contiguous()
            step_seed = seed if coef.sigma != 0 else None
            if backend == "fused":
                x = ops.reverse_step(x, eps_hat, coef, seed=step_seed, step=t, sample_offset=sample_offset, out=x,
                                     history=history)
            else:
                noise = torch.randn_like(x) if seed is None and coef.sigma != 0 else None
                x = ops.reverse_step_reference(x, eps_hat, coef, noise=noise, seed=step_seed, step=t,
                                               sample_offset=sample_offset, history=history)
            if callback is not None:
                callback(reached[s], x)
    return x


def generate_samples(model, data_config: dict, num: int, *, seed: int, batch_size: int = 10000,
                     backend: str = "fused", sampler: str = "ddpm", steps: int | None = None,
                     spacing: str | None = None, timesteps=None, eta: float = 0.0, variance: str | None = None,
                     clip: bool = False, order: int | None = None, progress: bool = False,
                     graph: bool | None = None, precision: str = "fp32", fast: bool = False,
                     runtime: str = "torch") -> torch.Tensor:
    """``num`` samples mapped back to data space (images clamped to their value range), on the CPU.

    Samples are drawn in batches with the counter-based noise, so sample i is the same whatever the batch size.
    ``sampler``, ``steps`` and the plan's options choose the sampler (``plan_for``); ``graph``, ``precision``,
    ``fast`` and ``runtime`` are ``run_plan``'s. A model that is not a DDPM (``pyddpm.baselines``) draws by its own
    ``sample(shape, seed=, sample_offset=)``, which takes none of the DDPM's sampler options (``backend`` is
    ignored). A batch with a NaN or infinite sample raises NonFiniteSamples (before the next batch is drawn).
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"--num and --batch-size must be positive, got {num} and {batch_size}")
    if not isinstance(model, DDPM):
        given = [flag for flag, value in (("--sampler", sampler != "ddpm"), ("--steps", steps), ("--eta", eta),
                                          ("--spacing", spacing), ("--order", order), ("--variance", variance),
                                          ("--clip", clip), ("--graph", graph), ("--precision", precision != "fp32"))
                 if value not in (None, 0.0, False)]
        if given:
            raise ValueError(f"{', '.join(given)} set the DDPM's sampler; this run's {type(model).__name__} samples "
                             "in one pass: leave them out")
    else:
        plan = plan_for(model, sampler, steps, spacing=spacing, timesteps=timesteps, eta=eta, variance=variance,
                        clip=clip, order=order)
    shape = tuple(data_config["shape"])
    out = []
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        if not isinstance(model, DDPM):
            x = model.sample((b, *shape), seed=seed, sample_offset=start)
        else:
            x = run_plan(model, (b, *shape), plan, seed=seed, backend=backend, sample_offset=start, progress=progress,
                         graph=graph, precision=precision, fast=fast, runtime=runtime)
        x = x.float().cpu()
        finite = torch.isfinite(x.reshape(b, -1)).all(dim=1)
        if not finite.all():
            raise NonFiniteSamples(
                f"{int((~finite).sum())} of the {b} samples {start}..{start + b - 1} are NaN or infinite: the "
                "model's weights or the sampler's settings (--sampler, --steps, --eta, --variance) make the reverse "
                "process diverge; nothing was written")
        out.append(x)
    return model_to_data(torch.cat(out), data_config)


def model_to_data(x: torch.Tensor, data_config: dict) -> torch.Tensor:
    """Model-space samples mapped back to data space on the CPU (images clamped to their value range)."""
    samples = DataTransform(data_config["center"], data_config["scale"]).from_model(x.float()).cpu()
    if "value_range" in data_config and not is_toy(data_config["name"]):
        samples = samples.clamp(*data_config["value_range"])
    return samples


def trajectory_steps(plan: SolverPlan, frames: int) -> list[int]:
    """``frames`` time steps from the first call's down to 0, evenly spaced among those ``plan`` visits."""
    if frames < 2:
        raise ValueError(f"a trajectory needs at least 2 frames (x_T and x_0), got {frames}")
    visited = list(plan.timesteps) + [0]
    picks = torch.linspace(0, len(visited) - 1, min(frames, len(visited)), dtype=torch.float64).round().long()
    return list(dict.fromkeys(visited[i] for i in picks.tolist()))


def sample_trajectory(model, data_config: dict, num: int, keep, *, seed: int, plan: SolverPlan | None = None,
                      **options) -> dict[int, torch.Tensor]:
    """{t: x_t in data space} for the time steps in ``keep`` on the way from x_T to x_0 of ``num`` samples, from one
    run of ``plan`` (default: Algorithm 2) through its callback; frame 0 equals ``generate_samples`` with the same
    seed and sampler. ``options`` are ``run_plan``'s (backend, graph, precision, fast, runtime)."""
    keep, frames = set(keep), {}
    plan = plan or plan_for(model)

    def record(t: int, x: torch.Tensor) -> None:
        if t in keep:
            frames[t] = model_to_data(x, data_config)

    run_plan(model, (num, *data_config["shape"]), plan, seed=seed, callback=record, **options)
    missing = sorted(keep - set(frames))
    if missing:
        raise ValueError(f"the sampler never visits steps {missing[:5]}; choose them with trajectory_steps")
    return dict(sorted(frames.items(), reverse=True))
