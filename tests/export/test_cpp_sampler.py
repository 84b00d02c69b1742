"""The C++ sampler in export/: built with CMake against the pip torch's libtorch, run on sampler.pt and
denoiser.pt, against pyddpm-sample with the same seed (Algorithm 2 and every few-step sampler); files that do not
match the manifest's SHA-256 are refused, and so are plans the export does not carry.

The build (about a minute) goes to a per-session temporary directory; set PYDDPM_CPP_BUILD_DIR to keep it
between sessions (ninja then rebuilds only what changed).
"""
import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from helpers.export_runs import (EXPORT_NETS, FEW_STEP, ROOT, exported, plan_flags, pyddpm_samples,
                         trained_run)

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\..* is deprecated:FutureWarning")


@pytest.fixture(scope="session")
def cpp_sampler(tmp_path_factory):
    """Path of the built pyddpm-sampler-cpp executable."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (pip install cmake)")
    build = os.environ.get("PYDDPM_CPP_BUILD_DIR") or str(tmp_path_factory.mktemp("cpp-sampler-build"))
    configure = [cmake, "-S", str(ROOT / "export"), "-B", build, f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    if shutil.which("ninja") and not os.path.exists(os.path.join(build, "CMakeCache.txt")):
        configure += ["-G", "Ninja"]
    for command in (configure, [cmake, "--build", build, "-j", "2"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return os.path.join(build, "pyddpm-sampler-cpp")


def run_cpp(binary, *args):
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("net", EXPORT_NETS)
def test_same_seed_same_samples_as_pyddpm_sample(net, cpp_sampler, tmp_path_factory, tmp_path):
    out, run = exported(tmp_path_factory, net), trained_run(tmp_path_factory, net)
    num, seed = (40, 5) if net == "toy" else (3, 11)
    expected = pyddpm_samples(run, tmp_path, num, seed)
    for model, batch in (("sampler.pt", 10000), ("denoiser.pt", 16)):
        result = run_cpp(cpp_sampler, out / model, "--num", num, "--seed", seed, "--out", tmp_path / "cpp.npy",
                         "--batch-size", batch, "--threads", 2, "--sampler", "ddpm")
        assert result.returncode == 0, result.stderr
        got = np.load(tmp_path / "cpp.npy")
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-3, model


# the same Philox noise bit for bit (the kernel's) and the same float32 update order as pyddpm-sample: the samples
# differ by the network's float32 rounding alone (libtorch's traced graph against eager PyTorch; ~1e-7 relative per
# call, through 10 calls with coefficients below 2 here), so 1e-4 in data space bounds it with a wide margin
PLAN_ATOL = 1e-4


@pytest.mark.parametrize("sampler", FEW_STEP)
def test_few_step_plans_give_pyddpm_sample_s_samples(sampler, cpp_sampler, tmp_path_factory, tmp_path):
    out, run = exported(tmp_path_factory, "toy"), trained_run(tmp_path_factory, "toy")
    num, seed = 40, 6
    expected = pyddpm_samples(run, tmp_path, num, seed, *plan_flags(sampler, 10))
    for model, batch in (("sampler.pt", 10000), ("denoiser.pt", 16)):
        result = run_cpp(cpp_sampler, out / model, "--num", num, "--seed", seed, "--out", tmp_path / "cpp.npy",
                         "--batch-size", batch, "--threads", 2, *plan_flags(sampler, 10))
        assert result.returncode == 0, result.stderr
        got = np.load(tmp_path / "cpp.npy")
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= PLAN_ATOL, model


def test_plan_flags_that_the_export_does_not_carry_are_refused(cpp_sampler, tmp_path_factory, tmp_path):
    out = exported(tmp_path_factory, "toy")
    default = json.loads((out / "manifest.json").read_text())["solvers"]["default_sampler"]
    cases = [
        (("--sampler", "euler", "--steps", 10), "unknown --sampler 'euler': this export carries"),
        (("--steps", 7), f"re-export the run with `pyddpm-export RUN --out DIR --sampler {default} --steps 7`"),
        (("--steps", 31), "--steps must be in [1, T = 30], got 31"),
        (("--steps", 0), "--steps must be an integer in [1, "),
    ]
    for args, message in cases:
        result = run_cpp(cpp_sampler, out / "sampler.pt", *args, "--out", tmp_path / "x.npy")
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.npy").exists()


def test_errors_name_the_problem(cpp_sampler, tmp_path_factory, tmp_path):
    out = exported(tmp_path_factory, "toy")
    # a TorchScript file that is not a pyddpm export, listed with its checksum in a copy of the export
    listed = tmp_path / "listed"
    shutil.copytree(out, listed)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(listed / "linear.pt"))
    manifest = json.loads((listed / "manifest.json").read_text())
    manifest["files"]["linear.pt"] = {"sha256": hashlib.sha256((listed / "linear.pt").read_bytes()).hexdigest()}
    (listed / "manifest.json").write_text(json.dumps(manifest, indent=1))
    # sampler.pt modified after the export (it still loads: only its checksum tells it apart)
    with open(listed / "sampler.pt", "ab") as f:
        f.write(b"\0")
    (tmp_path / "alone").mkdir()
    shutil.copy(out / "sampler.pt", tmp_path / "alone" / "sampler.pt")
    cases = [
        ((tmp_path / "missing.pt",), "does not exist"),
        ((out / "step.onnx",), "cannot be loaded as TorchScript"),
        ((listed / "linear.pt",), "is not a pyddpm export"),
        ((listed / "sampler.pt",), "sampler.pt does not match its SHA-256 in manifest.json"),
        ((tmp_path / "alone" / "sampler.pt",), "holds no manifest.json"),
        ((out / "manifest.json",), "manifest.json is not listed in"),
        ((out / "sampler.pt", "--out", "s.png"), "--out must end in .npy"),
        ((out / "sampler.pt", "--num", "x"), "--num must be an integer"),
        ((out / "sampler.pt", "--seed", "-1"), "--seed must be an integer"),
        ((out / "sampler.pt", "--colour", "1"), "unknown option --colour"),
        ((), "no model given"),
    ]
    for args, message in cases:
        result = run_cpp(cpp_sampler, *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    result = run_cpp(cpp_sampler, "--help")
    assert result.returncode == 0 and all(f in result.stdout for f in ("--num", "--seed", "--out"))
