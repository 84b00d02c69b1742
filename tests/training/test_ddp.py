"""A 2-process torchrun run with DDP over gloo on CPU ends with identical parameters on both ranks."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pyddpm.store import read_checkpoint
from helpers.export_runs import MNIST_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"shared MNIST not found at {MNIST_DIR}")
def test_two_process_gloo_run_ends_with_identical_parameters(tmp_path):
    out = tmp_path / "ddp"
    args = ["--data", "mnist", "--data-dir", str(MNIST_DIR), "--net", "unet", "--channels", "4,8",
            "--num-train", "320", "--batch-size", "16", "--epochs", "2", "--T", "50", "--checkpoint-every", "15",
            "--grid-samples", "4", "--grid-steps", "2", "--device", "cpu", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # pyddpm as this test process imports it (installed in CI)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(ROOT / "tests" / "helpers" / "ddp_worker.py"), *args],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "cpu x 2; 20 steps of batch 32 (= 16 x 2)" in result.stdout  # the effective batch is reported
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    checkpoint = read_checkpoint(out)  # written by rank 0 alone, at the end
    assert checkpoint.state["step"] == 20 and checkpoint.state["world"] == 2
    for name, value in checkpoint.prefixed("train.raw").items():
        assert torch.equal(value, rank0[f"raw.{name}"]), name
    # each rank drew its own noise, and both RNG states are kept for --resume
    assert not torch.equal(checkpoint.tensors["train.rng.0.0"], checkpoint.tensors["train.rng.1.0"])
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["epoch_001.png", "epoch_002.png"]
