"""``manifest.json``: what an export says about itself, as JSON numbers, for hosts that cannot read ONNX metadata
(onnxruntime-node and onnxruntime-web expose none). It is the one source of the exported facts: the ONNX
``metadata_props`` and the TorchScript ``pyddpm.json`` are rendered from it (``pyddpm.export.metadata``).

Schema (``pyddpm_export`` "1"; every key is always present, null where it does not apply):
    pyddpm_export        "1", the version of this contract; pyddpm_version: the pyddpm that wrote it
    T, schedule, beta_1, beta_T, variance      the diffusion (variance: sigma_t^2 = beta_t or beta_tilde_t)
    data                 the data set's name; sample_shape: one sample's shape, x_t is (batch, *sample_shape)
    t_input              the input t: {"dtype": "int64", "shape": ["batch"], "first": T, "last": 1,
                         "network_input": {"subtract": 1, "divide": T}}: a host feeds t = T, T-1, ..., 1 (the 1-based
                         step of Algorithm 2) and the network sees (t - 1) / T
    z_read_at_t_1        false: sigma_1 = 0, so z of the step at t = 1 does not change x_0 (pass zeros)
    step_coefficients    {"a", "b", "sigma"}: float32 values of the per-step scalars at index t - 1, with
                         x_{t-1} = (a_t * x_t + b_t * eps_hat) + sigma_t * z (Alg. 2 line 4), so a host can step with
                         denoiser.onnx alone
    to_data              model space -> data space, applied in this order: {"divide": scale, "add": center,
                         "clamp": [lo, hi] or null}, i.e. x_data = clamp(x / scale + center), float32
    pixels               data space -> pixels, null for point data; else applied in order {"multiply": 255,
                         "round": "half_to_even", "clamp": [0, 255], "dtype": "uint8", "image_shape": [C, H, W]}
    noise                the rule the seeds refer to: {"rule": NOISE_SPEC, "generator", "rounds", "multipliers",
                         "weyl", "key", "counter", "lane", "x_T_step", "seed_range", "about"} (spec: pyddpm/philox.py)
    solvers              the few-step plans (pyddpm.export.plans), run by solver_step.onnx (or sampler.pt's
                         solver_step): {"default": {"sampler", "steps"} (what a host runs without --sampler/--steps;
                         "ddpm" with steps T is Algorithm 2, step.onnx), "default_sampler" (what --steps N alone
                         runs), "default_steps" (what --sampler NAME alone runs, but ddpm: T), "row": the 11 names of a row, "history_buffers": 3, "update", "noise": in words, and
                         "plans": [{"sampler", "steps", "spacing", "timesteps" (t_0 > ... > t_{N-1}, 1-based), "rows" (N rows
                         of float32 values), "history" (K), "clip", "stochastic"}]}
    files                {name: {"model", "format", "inputs", "outputs", "bytes", "sha256"}}: every file written,
                         inputs/outputs as {"name", "dtype", "shape"} with "batch" for the dynamic dimension
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .. import __version__
from ..data import is_toy
from ..diffusion import DDPM
from ..schedules import StepCoefficients
from ..philox import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1
from .metadata import EXPORT_FORMAT, NOISE, NOISE_SPEC, SOLVER_NOISE, SOLVER_UPDATE
from .plans import HISTORY, ROW, ExportPlans

MANIFEST_FILE = "manifest.json"
_ONNX_DTYPES = {1: "float32", 7: "int64", 9: "bool"}  # onnx.TensorProto.FLOAT, INT64, BOOL: the types the exports use


def build_manifest(model: DDPM, config: dict, coefs: list[StepCoefficients], variance: str,
                   plans: ExportPlans) -> dict:
    """The manifest of an export of ``model`` (sampled with ``coefs``, sigma_t^2 = ``variance``, and the few-step
    ``plans``) without ``files``."""
    data = config["data"]
    image = not is_toy(data["name"])
    value_range = data.get("value_range") if image else None
    pixels = None
    if image and value_range:
        pixels = {"multiply": 255, "round": "half_to_even", "clamp": [0, 255], "dtype": "uint8",
                  "image_shape": [int(s) for s in data["image_shape"]]}
    return {
        "pyddpm_export": EXPORT_FORMAT,
        "pyddpm_version": __version__,
        "T": int(model.T),
        "schedule": model.schedule,
        "beta_1": float(model.beta_1),
        "beta_T": float(model.beta_T),
        "variance": variance,
        "data": data["name"],
        "sample_shape": [int(s) for s in data["shape"]],
        "t_input": {"dtype": "int64", "shape": ["batch"], "first": int(model.T), "last": 1,
                    "network_input": {"subtract": 1, "divide": int(model.T)}},
        "z_read_at_t_1": bool(coefs[0].sigma != 0.0),
        # float32 values, as the exported tables and the fused kernel hold them
        "step_coefficients": {name: torch.tensor([getattr(c, name) for c in coefs], dtype=torch.float32).tolist()
                              for name in ("a", "b", "sigma")},
        "to_data": {"divide": float(data["scale"]), "add": float(data["center"]),
                    "clamp": [float(v) for v in value_range] if value_range else None},
        "pixels": pixels,
        "noise": {"rule": NOISE_SPEC, "generator": "philox4x32", "rounds": 10, "multipliers": [PHILOX_M0, PHILOX_M1],
                  "weyl": [PHILOX_W0, PHILOX_W1], "key": ["seed & 0xffffffff", "seed >> 32"],
                  "counter": ["element >> 2", "sample & 0xffffffff", "sample >> 32", "step"],
                  "lane": "element & 3", "x_T_step": 0, "seed_range": [0, 2**63 - 1], "about": NOISE},
        "solvers": {"default": plans.default, "default_sampler": plans.default_sampler,
                    "default_steps": plans.default_steps, "row": list(ROW),
                    "history_buffers": HISTORY, "update": SOLVER_UPDATE, "noise": SOLVER_NOISE, "plans": plans.plans},
    }


def _onnx_io(path: Path) -> dict:
    """The inputs and outputs of an ONNX file as the manifest states them, read from the file itself."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(value):
        tensor = value.type.tensor_type
        shape = ["batch" if d.dim_param else int(d.dim_value) for d in tensor.shape.dim]
        return {"name": value.name, "dtype": _ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type)), "shape": shape}

    return {"inputs": [describe(v) for v in graph.input], "outputs": [describe(v) for v in graph.output]}


def _torchscript_io(name: str, manifest: dict) -> dict:
    """forward's inputs and outputs of denoiser.pt and sampler.pt (``pyddpm.export.modules``)."""
    x = ["batch", *manifest["sample_shape"]]
    if name == "denoiser.pt":
        return {"inputs": [{"name": "x_t", "dtype": "float32", "shape": x},
                           {"name": "t", "dtype": "int64", "shape": ["batch"]}],
                "outputs": [{"name": "eps_hat", "dtype": "float32", "shape": x}]}
    return {"inputs": [{"name": "x_T", "dtype": "float32", "shape": x},
                       {"name": "noise", "dtype": "float32", "shape": [manifest["T"], *x]}],
            "outputs": [{"name": "x_0", "dtype": "float32", "shape": x}]}


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(out: Path, manifest: dict, paths: list[Path]) -> Path:
    """Write ``manifest`` with a ``files`` entry (I/O, size, SHA-256) per file in ``paths`` as out/manifest.json."""
    files = {}
    for path in paths:
        path = Path(path)
        kind, fmt = path.stem, {".onnx": "onnx", ".pt": "torchscript"}[path.suffix]
        io = _onnx_io(path) if fmt == "onnx" else _torchscript_io(path.name, manifest)
        files[path.name] = {"model": kind, "format": fmt, **io, "bytes": path.stat().st_size, "sha256": sha256(path)}
    target = Path(out) / MANIFEST_FILE
    partial = target.with_name(target.name + ".tmp")
    partial.write_text(json.dumps({**manifest, "files": files}, indent=1) + "\n")
    os.replace(partial, target)
    return target
