"""What an exported model says about itself inside its files: ONNX ``metadata_props`` and the ``pyddpm.json``
extra file of the TorchScript files, rendered from the export's manifest (``pyddpm.export.manifest``, the one
source). All values are strings (JSON where structured), so any host can read them.

Keys (``EXPORT_FORMAT`` 1): every manifest key but ``files``, its value as is when a string, else as JSON
(pyddpm_export, pyddpm_version, T, schedule, beta_1, beta_T, variance, data, sample_shape, t_input, z_read_at_t_1,
step_coefficients, to_data, pixels, noise; and ``solvers`` in the files that run few-step plans, solver_step.onnx
and the TorchScript files, so denoiser.onnx and step.onnx stay as they were), then ``model`` per file ("denoiser"
((x_t, t) -> eps_hat), "step" ((x_t, t, z) -> x_{t-1}), "solver_step" ((x, t, z, h, row, clip) -> (x_next, h_next))
or "sampler"), and the format-1 keys the manifest's numbers also give:
    t, update          what the input t means and the formula of the step, in words
    data_transform     JSON {"center", "scale"}; value_range: JSON [lo, hi] or null; image_shape: JSON or null
    pixel_mapping      the pixel mapping in words ("none: ..." for point data)
    noise_spec         the name of the Philox noise rule the seeds refer to
"""
from __future__ import annotations

import json

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


SOLVER_UPDATE = ("one network call i of a few-step plan, in float32 and this order (the fused kernel's): "
                 "eps = eps_theta(x, (t_i - 1) / T); d = p x + q eps, clamped to [lo, hi] if clip; "
                 "x_next = a x + b eps, + c d, + h_0 H_0, + h_1 H_1, + h_2 H_2, + sigma z; the history H "
                 "(batch, 3, *sample_shape), zero before the first call, becomes [d, H_0, H_1]; row = [a, b, sigma, "
                 "c, p, q, lo, hi, h_0, h_1, h_2] (h_k = 0 for k >= K)")
SOLVER_NOISE = ("x_T at Philox step 0; the z of call i at Philox step t_i, drawn only where sigma != 0 (zeros "
                "otherwise), sample index sample_offset + i, as the noise rule says")
PLANS_KEY = "solvers"  # the manifest key that only the files which run plans repeat


def export_metadata(manifest: dict, plans: bool = True) -> dict[str, str]:
    """The metadata shared by the exported files of a run (``model`` is added per file), from its manifest
    (``pyddpm.export.manifest.build_manifest``); ``plans`` False leaves the few-step plans out (the files that
    predate them, denoiser.onnx and step.onnx)."""
    to_data, pixels = manifest["to_data"], manifest["pixels"]
    if pixels:
        lo, hi = to_data["clamp"]
        pixel = (f"pixel = round({pixels['multiply']} * clamp(x_data, {lo:g}, {hi:g})), grayscale "
                 f"{json.dumps(pixels['image_shape'])} (C, H, W) images; pyddpm-sample writes PNGs as a grid with "
                 "2-pixel white borders")
    else:
        pixel = "none: samples are points, written as they are in data space"
    metadata = {key: value if isinstance(value, str) else json.dumps(value)
                for key, value in manifest.items() if key != "files" and (plans or key != PLANS_KEY)}
    return {
        **metadata,
        "t": T_MEANING,
        "update": UPDATE,
        "data_transform": json.dumps({"center": to_data["add"], "scale": to_data["divide"]}),
        "value_range": json.dumps(to_data["clamp"]),
        "image_shape": json.dumps(pixels["image_shape"] if pixels else None),
        "pixel_mapping": pixel,
        "noise_spec": manifest["noise"]["rule"],
    }
