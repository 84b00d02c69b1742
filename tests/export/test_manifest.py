"""manifest.json: what it records against the files themselves and the run, the few-step plans against pyddpm's,
the ONNX and TorchScript metadata rendered from it, and a host that samples with denoiser.onnx and the manifest's
numbers alone (Algorithm 2 and a few-step plan)."""
import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers.export_runs import EXPORT_NETS, FEW_STEP, plan_flags, exported, pyddpm_samples, trained_run

from pyddpm import philox
from pyddpm.store import load_model
from pyddpm.export import EXPORT_FORMAT, NOISE_SPEC
from pyddpm.export.metadata import METADATA_FILE
from pyddpm.export.plans import ROW, TABLE_STEPS
from pyddpm.solvers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, solver_plan

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\..* is deprecated:FutureWarning")
ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(bool)": "bool"}


def manifest_of(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("net", EXPORT_NETS)
def test_manifest_describes_the_files_and_the_run(net, tmp_path_factory):
    out, run = exported(tmp_path_factory, net), trained_run(tmp_path_factory, net)
    manifest = manifest_of(out)
    model, config = load_model(run)
    data = config["data"]
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir() if p.name != "manifest.json")
    for name, entry in manifest["files"].items():
        content = (out / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(content).hexdigest() and entry["bytes"] == len(content)
        assert entry["model"] == name.split(".")[0]
        if entry["format"] == "onnx":  # the inputs and outputs as onnxruntime sees them
            session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
            for stated, actual in zip(entry["inputs"] + entry["outputs"], session.get_inputs() + session.get_outputs()):
                assert stated["name"] == actual.name and stated["dtype"] == ORT_TYPES[actual.type]
                if stated["name"] in ("row", "clip"):  # the plan's row and flag: no batch
                    assert stated["shape"] == actual.shape == ([len(ROW)] if stated["name"] == "row" else [])
                    continue
                assert stated["shape"][0] == "batch" and isinstance(actual.shape[0], str)
                assert stated["shape"][1:] == actual.shape[1:]
            assert len(entry["inputs"]) + len(entry["outputs"]) == len(session.get_inputs()) + len(session.get_outputs())
    assert manifest["pyddpm_export"] == EXPORT_FORMAT and manifest["noise"]["rule"] == NOISE_SPEC
    assert manifest["T"] == model.T and manifest["sample_shape"] == data["shape"]
    assert manifest["t_input"]["first"] == model.T and manifest["t_input"]["last"] == 1
    assert manifest["t_input"]["network_input"] == {"subtract": 1, "divide": model.T}
    # the network input the manifest states is the one pyddpm feeds
    for t in (1, model.T):
        stated = (t - manifest["t_input"]["network_input"]["subtract"]) / manifest["t_input"]["network_input"]["divide"]
        assert torch.allclose(model.time_input(t, 2), torch.full((2, 1), stated))
    coefs = model.step_coefficients()
    for key in ("a", "b", "sigma"):
        assert np.array_equal(np.array(manifest["step_coefficients"][key], dtype=np.float32),
                              np.array([getattr(c, key) for c in coefs], dtype=np.float32))
    assert manifest["z_read_at_t_1"] is False and manifest["step_coefficients"]["sigma"][0] == 0.0
    assert manifest["to_data"]["divide"] == data["scale"] and manifest["to_data"]["add"] == data["center"]
    if net == "toy":
        assert manifest["to_data"]["clamp"] is None and manifest["pixels"] is None
    else:
        assert manifest["to_data"]["clamp"] == [0.0, 1.0]
        assert manifest["pixels"] == {"multiply": 255, "round": "half_to_even", "clamp": [0, 255], "dtype": "uint8",
                                      "image_shape": [1, 28, 28]}
    noise = manifest["noise"]
    assert noise["multipliers"] == [philox.PHILOX_M0, philox.PHILOX_M1]
    assert noise["weyl"] == [philox.PHILOX_W0, philox.PHILOX_W1] and noise["x_T_step"] == 0


@pytest.mark.parametrize("net", EXPORT_NETS)
def test_the_plans_are_pyddpm_s(net, tmp_path_factory):
    """The default plan (pyddpm-sample's), and every shipped sampler at every NFE of TABLE_STEPS up to T, with the
    time steps and the float32 rows of pyddpm's own plan (solver_plan)."""
    out, run = exported(tmp_path_factory, net), trained_run(tmp_path_factory, net)
    model, _ = load_model(run)
    solvers = manifest_of(out)["solvers"]
    # pyddpm-sample's default; Algorithm 2 where T is below its calls
    default = (DEFAULT_SAMPLER, DEFAULT_STEPS) if DEFAULT_STEPS <= model.T else ("ddpm", model.T)
    assert solvers["default"] == dict(zip(("sampler", "steps"), default))
    assert solvers["default_sampler"] == DEFAULT_SAMPLER and solvers["default_steps"] == DEFAULT_STEPS
    assert solvers["row"] == list(ROW) and solvers["history_buffers"] == 3
    carried = {(p["sampler"], p["steps"]): p for p in solvers["plans"]}
    assert len(carried) == len(solvers["plans"])
    assert {key for key in carried} >= {(s, n) for s in FEW_STEP for n in TABLE_STEPS if n <= model.T}
    assert {s for s, _ in carried} <= set(SAMPLERS)
    for (name, n), entry in carried.items():
        plan = solver_plan(model.noise_schedule, name, n)
        assert entry["timesteps"] == list(plan.timesteps) and entry["steps"] == len(plan.timesteps) == n
        assert np.array_equal(np.array(entry["rows"], dtype=np.float32), plan.rows().float().numpy())
        assert entry["history"] == plan.history and entry["clip"] == plan.clip and entry["spacing"] == plan.spacing
        assert entry["stochastic"] == plan.stochastic == bool((plan.rows()[:, 2] != 0).any())


@pytest.mark.parametrize("net", EXPORT_NETS)
def test_metadata_says_what_the_manifest_says(net, tmp_path_factory):
    out = exported(tmp_path_factory, net)
    manifest = manifest_of(out)
    metadata = {}
    for name in ("denoiser.onnx", "step.onnx", "solver_step.onnx"):
        metadata[name] = {p.key: p.value for p in onnx.load(str(out / name)).metadata_props}
    for name in ("denoiser.pt", "sampler.pt"):
        extra = {METADATA_FILE: ""}
        torch.jit.load(str(out / name), _extra_files=extra)
        metadata[name] = json.loads(extra[METADATA_FILE])
    for name, meta in metadata.items():
        assert meta["model"] == manifest["files"][name]["model"]
        for key, value in manifest.items():
            if key == "solvers" and name in ("denoiser.onnx", "step.onnx"):  # as they were before the plans
                assert key not in meta
            elif key != "files":
                assert (meta[key] if isinstance(value, str) else json.loads(meta[key])) == value, (name, key)
        # the format-1 keys, from the same numbers
        assert json.loads(meta["data_transform"]) == {"center": manifest["to_data"]["add"],
                                                      "scale": manifest["to_data"]["divide"]}
        assert json.loads(meta["value_range"]) == manifest["to_data"]["clamp"]
        assert json.loads(meta["image_shape"]) == (manifest["pixels"] or {}).get("image_shape")
        assert meta["noise_spec"] == manifest["noise"]["rule"]


def test_a_host_samples_with_denoiser_onnx_and_the_manifest_alone(tmp_path_factory, tmp_path):
    """Algorithm 2 written from the manifest's numbers (t convention, step tables, to_data), in numpy."""
    out, run = exported(tmp_path_factory, "toy"), trained_run(tmp_path_factory, "toy")
    m = manifest_of(out)
    num, seed = 30, 4
    entry = m["files"]["denoiser.onnx"]
    session = ort.InferenceSession(str(out / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    shape = [num, *m["sample_shape"]]
    a, b, sigma = (np.array(m["step_coefficients"][k], dtype=np.float32) for k in ("a", "b", "sigma"))
    x = philox.philox_normal(shape, seed, m["noise"]["x_T_step"]).numpy()
    for t in range(m["t_input"]["first"], m["t_input"]["last"] - 1, -1):
        z = philox.philox_normal(shape, seed, t).numpy() if t > 1 or m["z_read_at_t_1"] else np.zeros(shape, np.float32)
        feeds = dict(zip([i["name"] for i in entry["inputs"]], (x, np.full(num, t, dtype=np.int64))))
        eps = session.run([entry["outputs"][0]["name"]], feeds)[0]
        x = (a[t - 1] * x + b[t - 1] * eps) + sigma[t - 1] * z
    to_data = m["to_data"]
    x = x / np.float32(to_data["divide"]) + np.float32(to_data["add"])
    if to_data["clamp"]:
        x = np.clip(x, *to_data["clamp"])
    assert np.abs(x - pyddpm_samples(run, tmp_path, num, seed)).max() <= 1e-4


@pytest.mark.parametrize("sampler", FEW_STEP)
def test_a_host_runs_a_plan_with_denoiser_onnx_and_the_manifest_alone(sampler, tmp_path_factory, tmp_path):
    """A few-step plan written from the manifest's words and numbers (row layout, history, the z rule), in numpy
    float32 in the contract's order, against pyddpm-sample's same plan: float32 rounding of the network apart
    (onnxruntime against PyTorch), the same arithmetic, so within 1e-4 in data space."""
    out, run = exported(tmp_path_factory, "toy"), trained_run(tmp_path_factory, "toy")
    m = manifest_of(out)
    plan = next(p for p in m["solvers"]["plans"] if (p["sampler"], p["steps"]) == (sampler, 10))
    num, seed = 30, 8
    session = ort.InferenceSession(str(out / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    shape = [num, *m["sample_shape"]]
    x = philox.philox_normal(shape, seed, m["noise"]["x_T_step"]).numpy()
    h = np.zeros([num, m["solvers"]["history_buffers"], *m["sample_shape"]], np.float32)
    for t, row in zip(plan["timesteps"], np.array(plan["rows"], dtype=np.float32)):
        a, b, sigma, c, p, q, lo, hi = row[:8]
        eps = session.run(None, {"x_t": x, "t": np.full(num, t, dtype=np.int64)})[0]
        d = p * x + q * eps
        if plan["clip"]:
            d = np.clip(d, lo, hi)
        v = a * x + b * eps
        v = v + c * d
        for k in range(plan["history"]):
            v = v + row[8 + k] * h[:, k]
        if sigma != 0:
            v = v + sigma * philox.philox_normal(shape, seed, t).numpy()
        x, h = v, np.concatenate([d[:, None], h[:, :-1]], 1)
    x = x / np.float32(m["to_data"]["divide"]) + np.float32(m["to_data"]["add"])
    assert np.abs(x - pyddpm_samples(run, tmp_path, num, seed, *plan_flags(sampler, 10))).max() <= 1e-4
