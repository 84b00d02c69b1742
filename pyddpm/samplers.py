"""Reverse-process loops over a DDPM: Algorithm 2 (DDPM) and DDIM, on the fused op or the torch reference.

With a ``seed``, all noise (x_T and every z) comes from the counter-based Philox rule of ``pyddpm.ops``, so
sample i depends only on (seed, i): not on the batch size, the device or the backend. Without one, the
fused backend draws a seed from torch's global generator and the torch backend uses ``torch.randn``
exactly as the exercise does.

On CUDA the network evaluation of a step is captured once in a CUDA graph and replayed at every step (its
inputs x_t and t live in static buffers), so a step costs three launches: filling t, the graph replay and
the fused update, which writes x_{t-1} in place into the graph's input. The update itself stays outside
the graph because the kernel takes its per-step coefficients and Philox step as launch arguments, which a
replayed graph would freeze.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import ops

BACKENDS = ("fused", "torch")


def ddpm_sample(
    model,
    shape,
    *,
    seed: int | None = None,
    backend: str = "fused",
    variance: str | None = None,
    clip: bool = False,
    sample_offset: int = 0,
    progress: bool = False,
    graph: bool | None = None,
) -> torch.Tensor:
    """x_0 ~ p_theta(x_0) by Algorithm 2 with sigma_t^2 = beta_t (or beta_tilde_t), z = 0 at t = 1.

    Args:
        model: a ``pyddpm.DDPM``.
        shape: (batch, *sample_shape) of the samples.
        seed: seed of the counter-based noise; None draws noise from torch's global generator.
        backend: ``"fused"`` (the pyddpm._C op) or ``"torch"`` (the plain-torch reference step).
        variance: ``"beta"`` or ``"beta_tilde"``; defaults to the model's.
        clip: clamp the x0 estimate to [-1, 1] and step with the posterior mean.
        sample_offset: global index of the first sample (for splitting one seeded batch across processes).
        progress: show a tqdm bar over the T steps.
        graph: replay the network from a CUDA graph (True requires CUDA); None: on for the fused backend on CUDA.
            Gives the same samples as eager evaluation.
    """
    coefs = model.step_coefficients(variance, clip)
    timesteps = list(range(model.T, 0, -1))
    return _reverse_loop(model, shape, timesteps, [coefs[t - 1] for t in timesteps],
                         seed, backend, sample_offset, progress, graph)


def ddim_sample(
    model,
    shape,
    steps: int,
    *,
    eta: float = 0.0,
    seed: int | None = None,
    backend: str = "fused",
    clip: bool = False,
    sample_offset: int = 0,
    progress: bool = False,
    graph: bool | None = None,
) -> torch.Tensor:
    """x_0 by the DDIM sampler of Song et al. (2021) in ``steps`` steps; eta = 0 is deterministic after x_T.
    The options are those of ``ddpm_sample``."""
    timesteps = model.ddim_timesteps(steps)
    return _reverse_loop(model, shape, timesteps, model.ddim_coefficients(timesteps, eta, clip),
                         seed, backend, sample_offset, progress, graph)


def capture_network(model, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
    """(graph, t, eps_hat): one CUDA-graph capture of eps_theta(x, t) reading the static tensors ``x`` and
    ``t`` (filled before each replay) and writing ``eps_hat``. Run under torch.no_grad()."""
    device = x.device
    t = model.time_input(model.T, x.shape[0])
    with torch.cuda.device(device):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the capture: cuBLAS/cuDNN handles, lazy initialisation
            for _ in range(2):
                model.network(x, t)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            eps_hat = model.network(x, t)
    return graph, t, eps_hat


def _use_graph(graph: bool | None, backend: str, device: torch.device) -> bool:
    if graph is None:
        return device.type == "cuda" and backend == "fused"
    if graph and device.type != "cuda":
        raise ValueError(f"CUDA-graph sampling needs a CUDA device, the model is on {device}; "
                         "sample without --graph (graph=False)")
    return bool(graph)


def _reverse_loop(model, shape, timesteps, coefs, seed, backend, sample_offset, progress, graph) -> torch.Tensor:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"sample shape must be (batch, *sample_shape) with positive sizes, got {shape}")
    if seed is not None and not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}")
    device = model.beta.device
    if seed is None and backend == "fused":
        seed = int(torch.randint(0, 2**62, (1,)).item())
    if seed is None:
        x = torch.randn(shape, device=device)
    else:
        x = ops.normal_noise(shape, seed=seed, step=0, sample_offset=sample_offset, device=device, backend=backend)
    with torch.no_grad():
        if _use_graph(graph, backend, device):
            captured, t_static, eps_static = capture_network(model, x)
        else:
            captured = None
        for t, coef in tqdm(list(zip(timesteps, coefs)), desc="sampling", unit="step", disable=not progress,
                            leave=False):
            if captured is not None:
                t_static.fill_((t - 1) / model.T)  # = model.time_input(t, batch)
                captured.replay()
                eps_hat = eps_static
            else:
                eps_hat = model.network(x, model.time_input(t, shape[0]))
            step_seed = seed if coef.sigma != 0 else None
            if backend == "fused":
                x = ops.reverse_step(x, eps_hat, coef, seed=step_seed, step=t, sample_offset=sample_offset, out=x)
            else:
                noise = torch.randn_like(x) if seed is None and coef.sigma != 0 else None
                x_next = ops.reverse_step_reference(x, eps_hat, coef, noise=noise, seed=step_seed, step=t,
                                                    sample_offset=sample_offset)
                x = x.copy_(x_next) if captured is not None else x_next  # the graph reads x in place
    return x
