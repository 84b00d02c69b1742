"""Export a trained run to ONNX and TorchScript (``export_run``; the command line is ``pyddpm.cli.export``).

Writes denoiser.onnx ((x_t, t) -> eps_hat) and step.onnx ((x_t, t, z) -> x_{t-1}, the schedule baked in), both
with a dynamic batch and pyddpm metadata, and denoiser.pt and sampler.pt (TorchScript). t is the 1-based step
of Algorithm 2 (int64, shape (batch,)); a host loops t = T..1. Beside them, solver_step.onnx ((x, t, z, h, row,
clip) -> (x_next, h_next)) runs one network call of any few-step plan, whose time steps and coefficient rows the
manifest carries (``pyddpm.export.plans``). Every file is checked and run once against PyTorch; then manifest.json
(``pyddpm.export.manifest``) records them with their SHA-256.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..diffusion import DDPM
from ..store import load_model
from .manifest import build_manifest, write_manifest
from .metadata import export_metadata
from .modules import Denoiser, ReverseStep, SolverStep
from .plans import HISTORY, ROW, export_plans
from .onnx_export import DYNAMO, export_onnx
from .torchscript import export_torchscript

FORMATS = ("onnx", "torchscript")


def export_run(run_dir: str | Path, out: str | Path, formats=FORMATS, variance: str | None = None,
               batch: int = 4, sampler: str | None = None, steps: int | None = None) -> list[tuple[Path, str]]:
    """Export the run in ``run_dir`` into ``out``; returns (path, note) per file written.

    ``variance`` overrides the run's sigma_t^2 (``beta`` or ``beta_tilde``); ``batch`` is the size of the random
    example batch the files are traced and validated with; ``sampler`` and ``steps`` name the few-step plan the
    export's hosts run by default (``pyddpm.export.plans.export_plans``).
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"unknown --format {','.join(unknown) or '(empty)'}; choose from {','.join(FORMATS)}")
    if batch < 2:
        raise ValueError(f"the example batch must be >= 2 (to check the dynamic batch), got {batch}")
    model, config = load_model(run_dir, "cpu")
    if not isinstance(model, DDPM):
        raise ValueError(f"{run_dir} holds a {config['model']['name']} run; pyddpm-export writes a DDPM's denoiser and "
                         "reverse step (a baseline samples in one pass and has neither)")
    model.requires_grad_(False)
    variance = variance or model.variance
    coefs = model.step_coefficients(variance)
    plans = export_plans(model, run_dir, sampler, steps)
    manifest = build_manifest(model, config, coefs, variance, plans)
    metadata = export_metadata(manifest)
    step = ReverseStep(Denoiser(model.network, model.T), coefs).eval()
    solver = SolverStep(step.denoiser).eval()
    data = config["data"]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *data["shape"], generator=generator)
    t = torch.randint(1, model.T + 1, (batch,), generator=generator)
    z = torch.randn(x.shape, generator=generator)
    # a row with every term at work (the clamp too) and a random history: the graph is checked beyond the plans
    h = torch.randn(batch, HISTORY, *data["shape"], generator=generator)
    row = torch.randn(len(ROW), generator=generator)
    row[ROW.index("lo")], row[ROW.index("hi")] = -0.5, 0.5
    clip = torch.tensor(True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "onnx" in formats:
        exporter = DYNAMO
        legacy = export_metadata(manifest, plans=False)
        for name, module, args, inputs, outputs, meta in (
                ("denoiser", step.denoiser, (x, t), ["x_t", "t"], "eps_hat", legacy),
                ("step", step, (x, t, z), ["x_t", "t", "z"], "x_prev", legacy),
                ("solver_step", solver, (x, t, z, h, row, clip), ["x", "t", "z", "h", "row", "clip"],
                 ["x_next", "h_next"], metadata)):
            path = out / f"{name}.onnx"
            # the steps hold the denoiser: where dynamo failed on that, it fails again
            exporter = export_onnx(module, args, path, inputs, outputs, {**meta, "model": name},
                                   dynamo=exporter == DYNAMO, static_inputs=("row", "clip"))
            written.append((path, f"ONNX, {exporter} exporter"))
    if "torchscript" in formats:
        value_range = json.loads(metadata["value_range"])  # images only: toy samples are not clamped
        for path in export_torchscript(step, coefs, list(data["shape"]), data, value_range, out, metadata,
                                       (x, t, z, h, row, clip), plans):
            written.append((path, "TorchScript"))
    manifest_path = write_manifest(out, manifest, [path for path, _ in written])
    written.append((manifest_path, "manifest: the metadata as JSON numbers and the SHA-256 of each file above, all of them validated against PyTorch"))
    return written
