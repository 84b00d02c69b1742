"""What an exported model says about itself: ONNX ``metadata_props`` and the ``pyddpm.json`` extra file of the
TorchScript files. All values are strings (JSON where structured), so any host can read them.

Keys (``EXPORT_FORMAT`` 1):
    pyddpm_export      the version of this contract ("1"); absent = not a pyddpm export
    pyddpm_version     the pyddpm that wrote the file
    model              "denoiser" ((x_t, t) -> eps_hat), "step" ((x_t, t, z) -> x_{t-1}) or "sampler"
    T, schedule, beta_1, beta_T, variance     the diffusion (variance: sigma_t^2 = beta_t or beta_tilde_t)
    t                  what the input t means (see ``pyddpm.export.modules``)
    update             the formula of the step; step_coefficients: JSON {"a", "b", "sigma"}, float32 values
                       of the per-step scalars at index t - 1, so a host can step with denoiser.onnx alone
    sample_shape       JSON list: one sample's shape (x_t is (batch, *sample_shape), float32)
    data, data_transform, to_data, value_range, image_shape, pixel_mapping
                       how model space maps to data space (what pyddpm-sample writes) and to pixels
    noise_spec         the Philox noise rule the seeds refer to; noise: how x_T and z are keyed
"""
from __future__ import annotations

import json

import torch

from .. import __version__
from ..data import is_toy
from ..diffusion import DDPM
from ..schedules import StepCoefficients

EXPORT_FORMAT = "1"
NOISE_SPEC = "pyddpm-philox4x32-10-boxmuller-1"
METADATA_FILE = "pyddpm.json"  # the extra file of the TorchScript exports

T_MEANING = ("1-based step of Algorithm 2: int64 tensor of shape (batch,), values in 1..T. The network sees "
             "(t - 1) / T. Sample by starting from x_T ~ N(0, I) and applying step.onnx for t = T, T-1, ..., 1; "
             "z is ignored at t = 1 (sigma_1 = 0).")
UPDATE = ("x_{t-1} = (a_t * x_t + b_t * eps_hat) + sigma_t * z in float32, with a_t = 1 / sqrt(alpha_t), "
          "b_t = -beta_t / (sqrt(1 - abar_t) sqrt(alpha_t)), sigma_1 = 0 (Ho et al. 2020, Alg. 2 line 4)")
NOISE = ("seed s, global sample index i (sample k of a run of --num samples has i = k), element e of the "
         "sample in row-major order: x_T uses step 0, the z of the step at t uses step t; counter "
         "(e // 4, i & 0xffffffff, i >> 32, step), key (s & 0xffffffff, s >> 32), Philox4x32-10, lane e % 4 of "
         "the Box-Muller normals; the full rule is in pyddpm/philox.py and csrc/philox.h")


def export_metadata(model: DDPM, config: dict, coefs: list[StepCoefficients], variance: str) -> dict[str, str]:
    """The metadata shared by every exported file of a run (``model`` is added per file)."""
    data = config["data"]
    image = not is_toy(data["name"])
    image_shape = data.get("image_shape") if image else None
    value_range = data.get("value_range") if image else None
    if image and value_range:
        pixel = (f"pixel = round(255 * clamp(x_data, 0, 1)), grayscale {json.dumps(image_shape)} (C, H, W) images; "
                 "pyddpm-sample writes PNGs as a grid with 2-pixel white borders")
    else:
        pixel = "none: samples are points, written as they are in data space"
    # float32 values, as the exported tables and the fused kernel hold them
    table = {name: torch.tensor([getattr(c, name) for c in coefs], dtype=torch.float32).tolist()
             for name in ("a", "b", "sigma")}
    return {
        "pyddpm_export": EXPORT_FORMAT,
        "pyddpm_version": __version__,
        "T": str(model.T),
        "schedule": model.schedule,
        "beta_1": repr(float(model.beta_1)),
        "beta_T": repr(float(model.beta_T)),
        "variance": variance,
        "t": T_MEANING,
        "update": UPDATE,
        "step_coefficients": json.dumps(table),
        "sample_shape": json.dumps([int(s) for s in data["shape"]]),
        "data": data["name"],
        "data_transform": json.dumps({"center": float(data["center"]), "scale": float(data["scale"])}),
        "to_data": "x_data = x / scale + center, then clamped to value_range when it is not null",
        "value_range": json.dumps(value_range),
        "image_shape": json.dumps(image_shape),
        "pixel_mapping": pixel,
        "noise_spec": NOISE_SPEC,
        "noise": NOISE,
    }

