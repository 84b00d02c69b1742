"""TorchScript export: ``denoiser.pt`` and ``sampler.pt`` (``pyddpm.export.modules``), loadable with
``torch.jit.load`` and ``torch::jit::load`` without pyddpm, validated against PyTorch after loading them back.

The network is traced (any nn.Module works; the trace is checked at a second batch size), the wrappers around
it are scripted so the sampling loop and the Philox noise stay loops. TorchScript is deprecated in recent torch
(``torch.jit.trace``/``script`` warn); its files still load in libtorch, which is what the C++ sampler uses.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..schedules import StepCoefficients
from ..diffusion import network_time
from ..philox import philox_normal
from .metadata import METADATA_FILE
from .modules import Denoiser, ReverseStep, ScriptDenoiser, ScriptSampler, SolverStep
from .onnx_export import ExportError
from .plans import ExportPlans


@contextlib.contextmanager
def _quiet_jit():
    """Hides torch.jit's deprecation and tracer warnings (docs/export.md explains the deprecation once)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def trace_network(network: nn.Module, x: torch.Tensor, t_input: torch.Tensor) -> torch.jit.ScriptModule:
    """``network`` traced on (x, t_input), after checking that the trace also holds at another batch size."""
    with _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(network, (x, t_input), check_trace=False)
        for batch in (x.shape[0], max(1, x.shape[0] // 2 - 1)):
            expected = network(x[:batch], t_input[:batch])
            got = traced(x[:batch], t_input[:batch])
            if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-5, atol=1e-5):
                raise ExportError(f"tracing {type(network).__name__} gives different results at batch {batch}: "
                                  "its forward depends on the batch size in a way torch.jit.trace cannot record")
    return traced


def export_torchscript(step: ReverseStep, coefs: list[StepCoefficients], sample_shape: list[int], transform: dict,
                       value_range, out: Path, metadata: dict[str, str], example: tuple, plans: ExportPlans,
                       atol: float = 1e-4) -> list[Path]:
    """Write ``denoiser.pt`` and ``sampler.pt`` for the eager ``step`` (built from ``coefs``), carrying the few-step
    ``plans``; ``example`` = (x, t, z, h, row, clip) (the solver step's inputs, the reverse step's first three) is
    used to trace the network and to validate the files after loading them back. Returns the paths written."""
    x, t = example[:2]
    denoiser = step.denoiser
    traced = trace_network(denoiser.network, x, network_time(t, denoiser.T))
    scripted_step = ReverseStep(Denoiser(traced, denoiser.T), coefs)
    args = (sample_shape, transform["center"], transform["scale"], value_range, plans.plans, plans.default,
            plans.default_sampler, plans.default_steps)
    paths = []
    for cls, name, kind in ((ScriptDenoiser, "denoiser.pt", "denoiser"), (ScriptSampler, "sampler.pt", "sampler")):
        path = out / name
        with _quiet_jit():
            module = torch.jit.script(cls(scripted_step, *args))
            extra = {METADATA_FILE: json.dumps({**metadata, "model": kind})}
            torch.jit.save(module, str(path), _extra_files=extra)
            loaded = torch.jit.load(str(path))
        paths.append(path)
        _validate(path, loaded, step, example, atol)
    return paths


def _validate(path: Path, loaded, step: ReverseStep, example, atol: float) -> None:
    x, t, z, h, row, clip = example
    with torch.no_grad():
        solver = SolverStep(step.denoiser)(x, t, z, h, row, clip)
        checks = [("denoise", loaded.denoise(x, t), step.denoiser(x, t))]
        checks += [(f"solver_step output {k}", got, want)
                   for k, (got, want) in enumerate(zip(loaded.solver_step(x, t, z, h, row, clip), solver))]
        if hasattr(loaded, "reverse_step"):
            checks.append(("reverse_step", loaded.reverse_step(x, t, z), step(x, t, z)))
            shape = [2] + list(x.shape[1:])
            checks.append(("noise", loaded.noise(shape, 12345, 3, 7, torch.device("cpu")),
                           philox_normal(shape, 12345, 3, 7)))
    for what, got, expected in checks:
        diff = float((got - expected).abs().max())
        tol = 0.0 if what == "noise" else atol * max(1.0, float(expected.abs().max()))
        if not diff <= tol:
            raise ExportError(f"{path.name}: {what} does not reproduce PyTorch after loading it back "
                              f"(max abs difference {diff:.3g} > {tol:.3g})")
