"""export/onnx_sampler.py: run where torch cannot be imported, against pyddpm-sample with the same seed (Algorithm 2
and every few-step sampler); its numpy Philox port against pyddpm's; its pictures, its errors and its refusal of
files that do not match the manifest."""
import hashlib
import importlib.util
import io
import json
import math
import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch
from helpers.export_runs import (EXPORT_NETS, FEW_STEP, ONNX_SAMPLER, PYTHON, exported, plan_flags,
                         pyddpm_samples, torchless_env, trained_run, unet_available)
from PIL import Image

from pyddpm import philox



def load_sampler_module():
    spec = importlib.util.spec_from_file_location("onnx_sampler", ONNX_SAMPLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_sampler(tmp_path, *args):
    """The sampler as a user runs it, in a Python where importing torch or pyddpm raises."""
    return subprocess.run([PYTHON, str(ONNX_SAMPLER), *map(str, args)], capture_output=True, text=True,
                          env=torchless_env(tmp_path), cwd=tmp_path, timeout=300)


def test_the_subprocess_really_cannot_import_torch(tmp_path):
    result = subprocess.run([PYTHON, "-c", "import torch"], capture_output=True, text=True,
                            env=torchless_env(tmp_path), cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and "must not be imported" in result.stderr


@pytest.mark.parametrize("net", EXPORT_NETS)
def test_same_seed_same_samples_as_pyddpm_sample(net, tmp_path_factory, tmp_path):
    out, run = exported(tmp_path_factory, net), trained_run(tmp_path_factory, net)
    num, seed = (40, 5) if net == "toy" else (3, 11)
    expected = pyddpm_samples(run, tmp_path, num, seed)
    models = [out, out / "denoiser.onnx"] if net == "toy" else [out]  # step.onnx, or denoiser.onnx + numpy step
    for model in models:
        result = run_sampler(tmp_path, model, "--num", num, "--seed", seed, "--out", tmp_path / "onnx.npy",
                             "--batch-size", 16, "--sampler", "ddpm")
        assert result.returncode == 0, result.stderr
        got = np.load(tmp_path / "onnx.npy")
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-3, model


# A few-step plan against pyddpm-sample's: the same Philox noise bit for bit and the same float32 update order, so
# the samples differ only by the network's float32 rounding (onnxruntime and PyTorch sum in different orders,
# ~1e-7 relative per call), carried through 5-10 calls whose coefficients stay below 2 in magnitude on these runs:
# far below 1e-4 in data space.
PLAN_ATOL = 1e-4


@pytest.mark.parametrize("net, sampler, steps", [("toy", s, 10) for s in FEW_STEP] + [
    pytest.param("unet", FEW_STEP[0], 5, marks=pytest.mark.skipif(not unet_available()[0], reason=unet_available()[1]))])
def test_few_step_plans_give_pyddpm_sample_s_samples(net, sampler, steps, tmp_path_factory, tmp_path):
    out, run = exported(tmp_path_factory, net), trained_run(tmp_path_factory, net)
    num, seed = (40, 6) if net == "toy" else (3, 11)
    expected = pyddpm_samples(run, tmp_path, num, seed, *plan_flags(sampler, steps))
    result = run_sampler(tmp_path, out, "--num", num, "--seed", seed, "--out", tmp_path / "plan.npy",
                         "--batch-size", 16, *plan_flags(sampler, steps))
    assert result.returncode == 0, result.stderr
    got = np.load(tmp_path / "plan.npy")
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= PLAN_ATOL
    # --steps alone is the export's default sampler
    default = json.loads((out / "manifest.json").read_text())["solvers"]["default_sampler"]
    if default == sampler:
        result = run_sampler(tmp_path, out, "--num", num, "--seed", seed, "--out", tmp_path / "alone.npy",
                             "--batch-size", 16, "--steps", steps)
        assert result.returncode == 0 and np.array_equal(np.load(tmp_path / "alone.npy"), got), result.stderr


def test_plan_flags_that_the_export_does_not_carry_are_refused(tmp_path_factory, tmp_path):
    """Unknown sampler, steps not exported, bad steps, an export that predates the plans: one line naming the
    flag and saying how to re-export, exit 2, nothing written."""
    out = exported(tmp_path_factory, "toy")
    manifest = json.loads((out / "manifest.json").read_text())
    old = altered_export(out, tmp_path / "old", solvers=None)
    cases = [
        (("--sampler", "euler", "--steps", 10), "unknown --sampler 'euler': this export carries"),
        (("--sampler", FEW_STEP[0], "--steps", 7), f"--sampler {FEW_STEP[0]} --steps 7`"),
        (("--steps", 7), f"re-export the run with `pyddpm-export RUN --out DIR --sampler "
                         f"{manifest['solvers']['default_sampler']} --steps 7`"),
        (("--steps", 0), "--steps must be in [1, T = 30], got 0"),
        (("--steps", 31), "--steps must be in [1, T = 30], got 31"),
        (("--sampler", "ddpm", "--steps", 10), "--sampler ddpm at --steps 30, not 10"),
    ]
    for args, message in cases + [((old, "--steps", 10), "carries no few-step plans (it predates them)")]:
        model = () if args[0] == old else (out,)
        result = run_sampler(tmp_path, *model, *args, "--out", tmp_path / "x.npy")
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, (
            args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "x.npy").exists()
    # an export that predates the plans still samples by Algorithm 2, as does --sampler ddpm
    for args in ((old,), (out, "--sampler", "ddpm")):
        assert run_sampler(tmp_path, *args, "--num", 4, "--out", tmp_path / "a2.npy").returncode == 0


def test_numpy_philox_is_bit_identical_to_pyddpm():
    sampler = load_sampler_module()
    for shape, seed, step, offset in [((1, 8), 42, 0, 0), ((1, 8), 2**40 + 5, 7, 3), ((3, 7), 1, 2, 3),
                                      ((5, 2), 2**63 - 1, 2**32 - 1, 2**32 - 3), ((2, 1, 28, 28), 123, 17, 5)]:
        got = sampler.philox_normal(shape, seed, step, offset)
        expected = philox.philox_normal(shape, seed, step, offset).numpy()
        assert got.dtype == np.float32 and np.array_equal(got.view(np.int32), expected.view(np.int32))
    words = (np.arange(0, 2**24, 89, dtype=np.uint64) << np.uint64(8)) | np.uint64(0xA5)
    t = torch.from_numpy(words.astype(np.int64))
    for got, expected in zip(sampler.normal_pair(words, words[::-1]), philox.normal_pair(t, t.flip(0))):
        assert np.array_equal(got.view(np.int32), expected.numpy().view(np.int32))


def test_png_output(tmp_path_factory, tmp_path):
    out = exported(tmp_path_factory, "toy")
    result = run_sampler(tmp_path, out, "--num", 200, "--out", tmp_path / "s.png")
    assert result.returncode == 0, result.stderr
    image = Image.open(tmp_path / "s.png")
    assert image.mode == "L" and image.size == (300, 300) and np.asarray(image).max() == 255


@pytest.mark.skipif(not unet_available()[0], reason=unet_available()[1])
def test_image_png_is_pyddpm_samples_grid(tmp_path_factory, tmp_path):
    out, run = exported(tmp_path_factory, "unet"), trained_run(tmp_path_factory, "unet")
    samples = pyddpm_samples(run, tmp_path, 5, 2)
    assert run_sampler(tmp_path, out, "--num", 5, "--seed", 2, "--out", tmp_path / "g.png", "--sampler",
                       "ddpm").returncode == 0
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (2 + 2 * 30, 2 + 3 * 30)  # 3 per row, 28 x 28 images with 2-pixel borders
    first = grid[2:30, 2:30].astype(int)
    assert np.abs(first - np.round(samples[0].reshape(28, 28) * 255)).max() <= 1


def altered_export(source, target, *, replace=None, **changes):
    """A copy of the export ``source`` in ``target`` with manifest keys changed (None removes one) and
    ``replace`` = {name: bytes} files replaced, their SHA-256 in the manifest updated to match."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    for name, data in (replace or {}).items():
        (target / name).write_bytes(data)
        manifest["files"][name]["sha256"] = hashlib.sha256(data).hexdigest()
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_errors_name_the_problem(tmp_path_factory, tmp_path):
    out = exported(tmp_path_factory, "toy")
    identity = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 2])]))
    (tmp_path / "other").mkdir()
    onnx.save(identity, str(tmp_path / "other" / "step.onnx"))
    noise = json.loads((out / "manifest.json").read_text())["noise"]
    cases = [
        ((tmp_path / "missing",), "does not exist"),
        ((tmp_path / "other",), "holds no manifest.json"),
        ((altered_export(out, tmp_path / "text", replace={"step.onnx": b"not a model", "solver_step.onnx": b"no"}),),
         "not a loadable ONNX model"),
        ((altered_export(out, tmp_path / "shape", sample_shape=[3]),), "input x has shape"),
        ((altered_export(out, tmp_path / "shape2", sample_shape=[3]), "--sampler", "ddpm"), "input x_t has shape"),
        ((altered_export(out, tmp_path / "future", pyddpm_export="2"),), "export format 2"),
        ((altered_export(out, tmp_path / "noise", noise={**noise, "rule": "other-rng"}),), "noise rule"),
        ((altered_export(out, tmp_path / "partial", T=None),), "malformed pyddpm manifest"),
        ((out / "step.onnx", "--out", tmp_path / "s.txt"), "must end in .npy or .png"),
        ((out / "step.onnx", "--num", 0), "must be positive"),
        ((out / "step.onnx", "--seed", -1), "--seed must be in"),
    ]
    for args, message in cases:
        result = run_sampler(tmp_path, *args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, (
            args, result.stderr)


@pytest.mark.parametrize("name", ["step.onnx", "denoiser.onnx"])
def test_a_modified_file_is_refused_by_name(name, tmp_path_factory, tmp_path):
    out = exported(tmp_path_factory, "toy")
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    # a model that still loads and has the right inputs: only its checksum tells it apart
    model = onnx.load(str(copy / name))
    model.doc_string = "modified after the export"
    onnx.save(model, str(copy / name))
    result = run_sampler(tmp_path, copy / name, "--num", 4, "--out", tmp_path / "s.npy")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{name} does not match its SHA-256 in manifest.json" in result.stderr and "refusing" in result.stderr
    assert not (tmp_path / "s.npy").exists()
    # the untouched file beside it still samples, and a file the manifest does not list is refused
    other = "denoiser.onnx" if name == "step.onnx" else "step.onnx"
    assert run_sampler(tmp_path, copy / other, "--num", 4, "--out", tmp_path / "s.npy").returncode == 0
    shutil.copy(copy / other, copy / "renamed.onnx")
    result = run_sampler(tmp_path, copy / "renamed.onnx", "--num", 4, "--out", tmp_path / "r.npy")
    assert result.returncode == 2 and "renamed.onnx is not listed in" in result.stderr, result.stderr


def test_help_names_every_flag(tmp_path):
    result = run_sampler(tmp_path, "--help")
    assert result.returncode == 0
    for flag in ("--num", "--seed", "--out", "--batch-size", "--threads"):
        assert flag in result.stdout
    assert io.StringIO(result.stdout).readline().startswith("usage: onnx_sampler.py")


def test_bad_input_is_refused_before_sampling(tmp_path_factory, tmp_path):
    """Output paths, sizes, threads and manifest values a checksum cannot vouch for: one line naming the flag or
    entry, exit 2, no traceback, nothing written."""
    out = exported(tmp_path_factory, "toy")
    manifest = json.loads((out / "manifest.json").read_text())
    (tmp_path / "afile").write_text("a file, not a directory")
    sigma_nan = {**manifest["step_coefficients"], "sigma": [math.nan] * manifest["T"]}
    cases = [
        ((out, "--out", tmp_path / "afile" / "s.npy"), "is a file, not a directory"),
        ((out, "--num", 10**12), "--num must be positive and at most"),
        ((out, "--batch-size", 10**12), "--batch-size must be positive and at most"),
        ((out, "--threads", -1), "--threads must be in [0, "),
        ((out, "--threads", 10**9), "--threads must be in [0, "),
        ((altered_export(out, tmp_path / "scale0", to_data={**manifest["to_data"], "divide": 0.0}),),
         "finite divide > 0"),
        ((altered_export(out, tmp_path / "sigma", step_coefficients=sigma_nan),), "must be finite, with sigma >= 0"),
    ]
    (tmp_path / "dir.npy").mkdir()
    cases.append(((out, "--out", tmp_path / "dir.npy"), "is a directory"))
    for args, message in cases:
        written = sorted(p.name for p in tmp_path.rglob("*.npy") if p.is_file())
        result = run_sampler(tmp_path, *args, *(() if "--out" in args else ("--out", tmp_path / "x.npy")))
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, (
            args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert sorted(p.name for p in tmp_path.rglob("*.npy") if p.is_file()) == written  # nothing written
