"""Checkpoints that hold up: truncated or wrong-architecture files fail clearly, writes are atomic, Ctrl-C saves a
loadable checkpoint, and a NaN loss stops the run keeping the last good one."""
import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyddpm import store as store_module
from pyddpm.store import CHECKPOINT_FILE, CheckpointError, load_model, read_checkpoint, save_checkpoint
from pyddpm.diffusion import DDPM
from pyddpm.cli.sample import main as sample_main
from pyddpm.cli.train import main as train_main
from helpers.export_runs import MNIST_DIR

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"shared MNIST not found at {MNIST_DIR}")
TINY = ["--data", "mnist", "--data-dir", str(MNIST_DIR), "--net", "unet", "--channels", "4,8", "--num-train", "320",
        "--batch-size", "16", "--T", "20", "--grid-samples", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert train_main(TINY + ["--out", str(out), "--max-steps", "4"]) == 0
    return out


def test_truncated_checkpoint_fails_clearly_everywhere(run, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (run / CHECKPOINT_FILE).read_bytes()
    for size in (len(data) // 2, len(data) - 1, 100, 7):  # cut mid-tensor, at the end, in the header
        (broken / CHECKPOINT_FILE).write_bytes(data[:size])
        with pytest.raises(CheckpointError, match="corrupted or truncated"):
            load_model(broken)
    assert sample_main([str(broken), "--out", str(tmp_path / "s.png")]) == 2
    assert train_main(["--resume", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("corrupted or truncated") == 2 and "Traceback" not in err


@pytest.mark.parametrize("network", [
    {"name": "unet", "kwargs": {"channels": [4, 16], "image_shape": [1, 28, 28]}},  # other widths
    {"name": "unet", "kwargs": {"channels": [4, 8, 8], "image_shape": [1, 28, 28]}},  # another level
    {"name": "unet-ddpm", "kwargs": {"channels": [4, 8], "image_shape": [1, 28, 28]}},  # another network
])
def test_wrong_architecture_fails_clearly(run, tmp_path, capsys, network):
    checkpoint = read_checkpoint(run)
    config = dict(checkpoint.config, network=network)
    wrong = tmp_path / "wrong"
    save_checkpoint(wrong, config, checkpoint.tensors, checkpoint.state)
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        load_model(wrong)
    assert sample_main([str(wrong), "--out", str(tmp_path / "s.png")]) == 2
    assert "does not match the architecture" in capsys.readouterr().err


def test_a_crash_while_writing_keeps_the_previous_checkpoint(run, monkeypatch):
    before = (run / CHECKPOINT_FILE).read_bytes()
    checkpoint = read_checkpoint(run)

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(store_module.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(run, checkpoint.config, checkpoint.tensors, dict(checkpoint.state, step=99))
    assert (run / CHECKPOINT_FILE).read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


def test_sigint_saves_a_loadable_checkpoint_and_the_run_resumes(tmp_path):
    out = tmp_path / "interrupted"
    args = TINY + ["--net", "fc", "--hidden", "32", "--depth", "1", "--epochs", "1000", "--checkpoint-every",
                   "100000", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pyddpm.cli.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.csv").exists():  # the loop is running (the first log is at step 20)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "checkpoint saved. Continue with: pyddpm-train --resume" in err
    model, _ = load_model(out)
    step = read_checkpoint(out).state["step"]
    assert 20 <= step < 20000 and all(torch.isfinite(p).all() for p in model.parameters())
    assert train_main(["--resume", str(out), "--max-steps", str(step + 3)]) == 0
    assert read_checkpoint(out).state["step"] == step + 3
    with open(out / "metrics.csv") as f:
        logged = [int(row["step"]) for row in csv.DictReader(f)]
    assert logged == sorted(set(logged)) and logged[-1] == step + 3


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    original = DDPM.loss  # what the Trainer's objective calls

    def nan_after_32_steps(self, x):
        calls["n"] += 1
        loss = original(self, x)
        return loss * math.nan if calls["n"] > 32 else loss

    monkeypatch.setattr(DDPM, "loss", nan_after_32_steps)
    out = tmp_path / "nan"
    assert train_main(TINY + ["--out", str(out), "--epochs", "10", "--checkpoint-every", "10"]) == 2
    err = capsys.readouterr().err
    assert "the loss became nan by step 40" in err and "last good checkpoint (step 30)" in err
    assert "Traceback" not in err
    checkpoint = read_checkpoint(out)
    assert checkpoint.state["step"] == 30
    assert all(torch.isfinite(v).all() for v in checkpoint.tensors.values() if v.is_floating_point())
    load_model(out)
