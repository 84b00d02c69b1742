"""--resume continues a run exactly: N steps straight equal N/2 steps, a resume, and N/2 more, bit for bit on CPU."""
import csv
from pathlib import Path

import pytest
import torch

from pyddpm.store import read_checkpoint
from pyddpm.cli.train import main as train_main
from helpers.export_runs import MNIST_DIR

pytestmark = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"shared MNIST not found at {MNIST_DIR}")

# A tiny DDPM U-Net with dropout (so the RNG state matters), EMA, warm-up and cosine decay over 3 epochs of
# 10 steps; 24 steps cross two epoch boundaries, and the halves meet mid-epoch (step 12).
RUN = ["--data", "mnist", "--data-dir", str(MNIST_DIR), "--net", "unet-ddpm", "--channels", "4,8",
       "--num-res-blocks", "1", "--dropout", "0.2", "--num-train", "160", "--batch-size", "16", "--epochs", "3",
       "--T", "50", "--warmup", "5", "--ema", "0.9", "--checkpoint-every", "1000", "--grid-samples", "0",
       "--device", "cpu"]


def steps_logged(run: Path) -> list[int]:
    with open(run / "metrics.csv") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def test_resumed_run_equals_the_straight_run_bitwise(tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert train_main(RUN + ["--out", str(straight), "--max-steps", "24"]) == 0
    assert train_main(RUN + ["--out", str(halves), "--max-steps", "12"]) == 0
    assert read_checkpoint(halves).state["step"] == 12
    assert train_main(["--resume", str(halves), "--max-steps", "24"]) == 0
    a, b = read_checkpoint(straight), read_checkpoint(halves)
    assert a.state["step"] == b.state["step"] == 24
    assert a.tensors.keys() == b.tensors.keys()
    # weights, EMA weights, AdamW moments and every RNG state
    assert any(k.startswith("train.raw.") for k in a.tensors) and any(k.startswith("train.optim.") for k in a.tensors)
    for name in a.tensors:
        assert torch.equal(a.tensors[name], b.tensors[name]), name
    assert a.state["optimizer"] == b.state["optimizer"] and a.state["ema_updates"] == b.state["ema_updates"]
    assert steps_logged(straight) == [10, 20, 24]  # every epoch end and the last step
    assert steps_logged(halves) == [10, 12, 20, 24]


def test_resume_without_max_steps_runs_to_the_end_of_the_schedule(tmp_path):
    run = tmp_path / "run"
    assert train_main(RUN + ["--out", str(run), "--max-steps", "5", "--epochs", "1"]) == 0
    assert train_main(["--resume", str(run)]) == 0  # the first run's --max-steps does not stick
    assert read_checkpoint(run).state["step"] == 10
    assert steps_logged(run) == [5, 10]


def test_resume_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert train_main(["--resume", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
