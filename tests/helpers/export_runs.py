"""What the tests share: the repository and MNIST paths, tiny trained and exported runs (trained once per test
session), pyddpm-sample's output to compare against, and an environment in which torch and pyddpm cannot be
imported."""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from pyddpm.export import export_run
from pyddpm.export.plans import ALGORITHM_2
from pyddpm.solvers import SAMPLERS
from pyddpm.cli.sample import main as sample_main
from pyddpm.cli.train import main as train_main

ROOT = Path(__file__).resolve().parents[2]
ONNX_SAMPLER = ROOT / "export" / "onnx_sampler.py"
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"
PYTHON = sys.executable
FEW_STEP = [s for s in SAMPLERS if s != ALGORITHM_2]  # every shipped few-step sampler


def unet_available(name: str = "unet") -> tuple[bool, str]:
    """Whether MNIST is there to train a tiny run of the U-Net ``name`` on (and why not)."""
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        return False, f"MNIST is not in {MNIST_DIR}"
    return True, ""


# the tiny runs the export tests parametrise over: the toy network and, where MNIST is there, the exercise U-Net
EXPORT_NETS = ["toy", pytest.param("unet", marks=pytest.mark.skipif(not unet_available()[0], reason=unet_available()[1]))]

RUNS = {
    "toy": ["--data", "cb", "--hidden", "16", "--depth", "2", "--T", "30"],
    "unet": ["--data", "mnist", "--data-dir", str(MNIST_DIR), "--net", "unet", "--channels", "8,16,16",
             "--T", "8", "--grid-samples", "4", "--grid-steps", "2"],
    "unet-ddpm": ["--data", "mnist", "--data-dir", str(MNIST_DIR), "--net", "unet-ddpm", "--channels", "16,32",
                  "--num-res-blocks", "1", "--T", "6", "--grid-samples", "0", "--max-steps", "1", "--batch-size", "8"],
}
COMMON = ["--max-steps", "4", "--batch-size", "32", "--num-train", "256", "--num-samples", "8", "--seed", "3",
          "--device", "cpu"]
_cache: dict = {}


def trained_run(factory, name: str) -> Path:
    """A tiny run directory trained with the settings RUNS[name], once per session."""
    if ("run", name) not in _cache:
        out = factory.mktemp(f"run-{name}") / "run"
        assert train_main(["--out", str(out), *COMMON, *RUNS[name]]) == 0
        _cache["run", name] = out
    return _cache["run", name]


def exported(factory, name: str, variance: str | None = None) -> Path:
    """The export directory (ONNX and TorchScript) of the run ``name``, once per session and variance."""
    key = ("export", name, variance)
    if key not in _cache:
        out = factory.mktemp(f"export-{name}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*falling back to the deprecated TorchScript-based exporter")
            export_run(trained_run(factory, name), out, variance=variance)
        _cache[key] = out
    return _cache[key]


def pyddpm_samples(run: Path, tmp_path: Path, num: int, seed: int, *extra: str) -> np.ndarray:
    """What ``pyddpm-sample RUN --num --seed --out x.npy`` writes: Algorithm 2 (--sampler ddpm) unless ``extra``
    names a sampler or steps (``plan_flags``)."""
    out = tmp_path / f"pyddpm-{seed}-{num}.npy"
    plan = [] if {"--sampler", "--steps"} & set(extra) else ["--sampler", "ddpm"]
    assert sample_main([str(run), "--num", str(num), "--seed", str(seed), "--out", str(out), "--device", "cpu",
                        *plan, *extra]) == 0
    return np.load(out)


def plan_flags(sampler: str, steps: int) -> list[str]:
    """pyddpm-sample's flags for the plan (sampler, steps); the standalone samplers take the same."""
    return ["--sampler", sampler, "--steps", str(steps)]


def torchless_env(tmp_path: Path) -> dict:
    """Environment variables for a Python in which ``import torch`` and ``import pyddpm`` raise ImportError."""
    blocker = tmp_path / "blocked-imports"
    for package in ("torch", "pyddpm"):
        (blocker / package).mkdir(parents=True, exist_ok=True)
        (blocker / package / "__init__.py").write_text(
            f"raise ImportError('{package} must not be imported by the standalone sampler')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(blocker)
    return env

