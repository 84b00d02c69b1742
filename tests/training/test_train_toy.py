"""pyddpm-train / pyddpm-sample on the toy data, as a user runs them, and their errors on bad input."""
import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyddpm.store import CHECKPOINT_FILE, CheckpointError, load_model
from pyddpm.data import toy_distribution
from pyddpm.evaluate import toy_metrics
from pyddpm.samplers import generate_samples
from pyddpm.cli.sample import main as sample_main
from pyddpm.cli.train import main as train_main

SMALL = ["--hidden", "64", "--depth", "3", "--batch-size", "500", "--num-train", "50000",
         "--num-samples", "2000", "--checkpoint-every", "200"]


def untrained_metrics(run_dir, data, seed=0):
    """Metrics of the run's architecture with its initial weights (same seed as the run)."""
    model, config = load_model(run_dir)
    torch.manual_seed(seed)  # the trainer seeds the initial weights with --seed
    fresh = type(model.network)(**config["network"]["kwargs"])
    model.network.load_state_dict(fresh.state_dict())
    samples = generate_samples(model, config["data"], 2000, seed=seed)
    return toy_metrics(toy_distribution(data), samples, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("data", ["cb", "tg"])
def test_short_training_improves_the_toy_metrics(tmp_path, data):
    out = tmp_path / "run"
    assert train_main(["--data", data, "--out", str(out), "--epochs", "8", *SMALL]) == 0
    for name in ("config.json", CHECKPOINT_FILE, "loss.png", "samples.png", "metrics.json", "metrics.csv"):
        assert (out / name).is_file(), name
    trained = json.loads((out / "metrics.json").read_text())
    before = untrained_metrics(out, data)
    assert trained["energy_distance"] < 0.5 * before["energy_distance"]
    assert trained["mean_log_prob"] > before["mean_log_prob"]
    if data == "cb":
        assert trained["support_fraction"] > before["support_fraction"] + 0.1
    else:
        assert abs(trained["mixture_weights"][0] - 0.2) < abs(before["mixture_weights"][0] - 0.2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    args = ["--out", str(out), "--max-steps", "30", "--hidden", "16", "--depth", "2", "--batch-size", "100",
            "--num-train", "1000", "--T", "20", "--num-samples", "200"]
    assert train_main(args) == 0
    return out


def test_sample_cli_writes_npy_and_png_and_is_batch_invariant(tiny_run, tmp_path):
    npy = tmp_path / "s.npy"
    assert sample_main([str(tiny_run), "--num", "50", "--seed", "7", "--out", str(npy), "--device", "cpu"]) == 0
    a = np.load(npy)
    assert a.shape == (50, 2) and np.isfinite(a).all()
    assert sample_main([str(tiny_run), "--num", "50", "--seed", "7", "--batch-size", "16", "--out", str(npy)]) == 0
    np.testing.assert_allclose(np.load(npy), a, rtol=0, atol=1e-5)  # sample i depends only on (seed, i)
    png = tmp_path / "s.png"
    assert sample_main([str(tiny_run), "--num", "100", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


CONSOLE_SCRIPTS = {"pyddpm-train": "train", "pyddpm-sample": "sample", "pyddpm-export": "export",
                   "pyddpm-eval": "eval", "pyddpm-classifier": "classifier"}


@pytest.mark.parametrize("script", CONSOLE_SCRIPTS)
def test_console_scripts_are_installed_and_explain_every_flag(script):
    """The installed script runs, and its --help names every option its parser has, each with a help text."""
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (script, result.stderr)
    module = importlib.import_module(f"pyddpm.cli.{CONSOLE_SCRIPTS[script]}")
    options = [a for a in module.build_parser()._actions if a.option_strings and a.dest != "help"]
    assert options, script
    for action in options:
        assert action.help, (script, action.option_strings)
        assert any(flag in result.stdout for flag in action.option_strings), (script, action.option_strings)


@pytest.mark.parametrize("args, message", [
    (["--data", "moons"], "unknown data set 'moons'"),
    (["--T", "-5"], "--T must be a positive integer"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
])
def test_bad_training_arguments_are_clear_errors(args, message, capsys, tmp_path):
    assert train_main(args + ["--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_existing_run_is_not_overwritten(tiny_run, capsys):
    before = (tiny_run / CHECKPOINT_FILE).read_bytes()
    assert train_main(["--out", str(tiny_run), "--max-steps", "5"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tiny_run / CHECKPOINT_FILE).read_bytes() == before


def test_missing_and_corrupted_run_directories_are_clear_errors(tiny_run, tmp_path, capsys):
    assert sample_main([str(tmp_path / "nope"), "--out", str(tmp_path / "a.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sample_main([str(empty), "--out", str(tmp_path / "a.npy")]) == 2
    assert "not a pyddpm run directory" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (tiny_run / CHECKPOINT_FILE).read_bytes()
    (broken / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])  # truncated mid-write
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_model(broken)
    assert sample_main([str(broken), "--out", str(tmp_path / "a.npy")]) == 2
    assert "corrupted or truncated" in capsys.readouterr().err
    (broken / CHECKPOINT_FILE).write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_model(broken)


def test_bad_sample_output_is_a_clear_error(tiny_run, tmp_path, capsys):
    assert sample_main([str(tiny_run), "--out", str(tmp_path / "s.txt")]) == 2
    assert ".npy or .png" in capsys.readouterr().err


def test_train_module_runs_as_a_script(tiny_run):
    result = subprocess.run([sys.executable, "-m", "pyddpm.cli.sample", str(tiny_run), "--num", "10", "--out",
                             str(tiny_run / "m.npy")], capture_output=True, text=True, timeout=300, cwd=tiny_run)
    assert result.returncode == 0, result.stderr
