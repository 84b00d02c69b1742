"""pyddpm-exercise (the course's command line) and pyddpm-import (course model files -> run directories)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pyddpm import DDPM
from pyddpm.cli.exercise import main as exercise_main
from pyddpm.cli.import_run import main as import_main
from pyddpm.cli.sample import main as sample_main
from pyddpm.nets import ExerciseUNet
from pyddpm.nets.unet import from_course_keys, to_course_keys


class CourseFcNetwork(nn.Module):
    """The course's FcNetwork as its ddpm.py defines it: [x, t] -> Linear -> ReLU -> Linear -> ReLU -> Linear."""

    def __init__(self, input_dim, num_hidden):
        super().__init__()
        self.network = nn.Sequential(nn.Linear(input_dim + 1, num_hidden), nn.ReLU(), nn.Linear(num_hidden, num_hidden),
                                     nn.ReLU(), nn.Linear(num_hidden, input_dim))

    def forward(self, x, t):
        return self.network(torch.cat([x, t], dim=1))


class CourseDDPM(nn.Module):
    """The course's DDPM as far as its state_dict goes: the schedule as non-trainable Parameters."""

    def __init__(self, network, beta_1=1e-4, beta_T=2e-2, T=100):
        super().__init__()
        self.network = network
        self.beta = nn.Parameter(torch.linspace(beta_1, beta_T, T), requires_grad=False)
        self.alpha = nn.Parameter(1 - self.beta, requires_grad=False)
        self.alpha_cumprod = nn.Parameter(self.alpha.cumprod(dim=0), requires_grad=False)


def test_exercise_train_then_sample_with_the_course_flags(tmp_path, capsys):
    model_file, samples = tmp_path / "model.pt", tmp_path / "samples.png"
    flags = ["--data", "tg", "--network", "fc", "--model", str(model_file), "--samples", str(samples),
             "--device", "cpu", "--batch-size", "500", "--epochs", "2", "--lr", "1e-3"]
    assert exercise_main(["train", *flags, "--n-data", "2000", "--seed", "0"]) == 0
    assert "2,000 training examples" in capsys.readouterr().out
    state = torch.load(model_file, weights_only=True)
    assert all(torch.is_tensor(v) for v in state.values())
    course = CourseDDPM(CourseFcNetwork(2, 64), T=1000)
    before = course.network.network[0].weight.clone()
    course.load_state_dict(state, strict=True)  # the course's own classes read the file
    assert not torch.equal(course.network.network[0].weight, before)
    torch.testing.assert_close(course.alpha_cumprod, state["alpha_cumprod"])
    # the file is the trained model: pyddpm's DDPM with these weights predicts what the course's network does
    ours = DDPM(__import__("pyddpm").FcNetwork(2, 64), T=1000)
    ours.load_state_dict(state, strict=True)
    x, t = torch.randn(64, 2), torch.rand(64, 1)
    torch.testing.assert_close(ours.network(x, t), course.network(x, t))
    assert exercise_main(["sample", *flags, "--num-samples", "300", "--seed", "1"]) == 0
    assert samples.stat().st_size > 10_000


def test_exercise_rejects_a_unet_on_toy_data(capsys):
    assert exercise_main(["train", "--data", "cb", "--network", "unet"]) == 2
    assert "--network unet needs image data" in capsys.readouterr().err


def course_unet_file(path: Path, T: int = 6) -> DDPM:
    """A course-format U-Net checkpoint (keys _convs.*, _tconvs.*) of a randomly initialised model; returns it."""
    torch.manual_seed(5)
    model = DDPM(ExerciseUNet(), T=T)
    state = to_course_keys(model.state_dict())
    assert any(k.startswith("network._tconvs.4.2.") for k in state) and not any(".head." in k for k in state)
    torch.save(state, path)
    return model


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "afile/m.pt"], "--model 'afile/m.pt': "),
    (["train", "--epochs", "0"], "--epochs must be a positive integer"),
    (["train", "--n-data", str(10**11)], "--n-data must be a positive integer (at most"),
    (["train", "--seed", "-1"], "--seed must be >= 0"),
    (["train", "--lr", "nan"], "--lr must be a positive number"),
    (["sample", "--samples", "s.txt"], "--samples must end in .npy or .png"),
])
def test_exercise_refuses_bad_arguments_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    """One line naming the flag, before training: an unwritable --model no longer fails after the whole run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file, not a directory")
    assert exercise_main([*argv, "--data", "cb"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing written


def test_course_key_mapping_is_the_issues_and_round_trips():
    state = DDPM(ExerciseUNet()).state_dict()
    course = to_course_keys(state)
    renamed = {k for k in course if k.startswith("network.")}
    assert {k.split(".")[1] for k in renamed} == {"_convs", "_tconvs"}
    assert {k for k in renamed if k.startswith("network._tconvs.4.")} == {
        f"network._tconvs.4.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert from_course_keys(course).keys() == state.keys()


def test_import_course_unet_samples_equal_the_weights_loaded_by_hand(tmp_path):
    file = tmp_path / "unet.pt"
    course_unet_file(file)
    run = tmp_path / "run"
    assert import_main([str(file), "--network", "unet", "--out", str(run)]) == 0
    out = tmp_path / "s.npy"
    assert sample_main([str(run), "--num", "3", "--seed", "4", "--out", str(out), "--device", "cpu", "--eager"]) == 0
    by_hand = DDPM(ExerciseUNet(), T=6)  # DDPM.sample runs the network as it is: --eager gives the same bits
    by_hand.load_state_dict(from_course_keys(torch.load(file, weights_only=True)), strict=True)
    x0 = by_hand.eval().sample((3, 784), seed=4)
    expected = (x0 / 2 + 0.5).clamp(0, 1)
    np.testing.assert_array_equal(np.load(out), expected.numpy())


def test_import_fc_reads_T_and_needs_data_for_2d_models(tmp_path, capsys):
    file = tmp_path / "fc.pt"
    torch.save(CourseDDPM(CourseFcNetwork(2, 32), T=40).state_dict(), file)
    assert import_main([str(file), "--network", "fc", "--out", str(tmp_path / "a")]) == 2
    assert "--data tg or --data cb is needed" in capsys.readouterr().err
    assert import_main([str(file), "--network", "fc", "--data", "cb", "--T", "41", "--out", str(tmp_path / "b")]) == 2
    assert "--T 41 does not match" in capsys.readouterr().err
    assert import_main([str(file), "--network", "unet", "--out", str(tmp_path / "c")]) == 2
    assert "does not fit ExerciseUNet" in capsys.readouterr().err
    assert import_main([str(file), "--network", "fc", "--data", "cb", "--out", str(tmp_path / "d")]) == 0
    config = __import__("json").loads((tmp_path / "d" / "config.json").read_text())
    assert config["diffusion"]["T"] == 40 and config["network"]["kwargs"]["num_hidden"] == 32
    assert math.isclose(config["diffusion"]["beta_1"], 1e-4) and math.isclose(config["diffusion"]["beta_T"], 2e-2)


@pytest.mark.parametrize("damage, message", [
    (lambda w: w.round().to(torch.int64), "network.network.0.weight is torch.int64"),
    (lambda w: w * math.nan, "holds NaN or infinite weights (network.network.0.weight)"),
])
def test_import_refuses_integer_or_non_finite_weights(damage, message, tmp_path, capsys):
    """The same checks as a pyddpm checkpoint's: an integer or NaN weight tensor is refused, naming it."""
    state = CourseDDPM(CourseFcNetwork(2, 32), T=40).state_dict()
    state["network.network.0.weight"] = damage(state["network.network.0.weight"])
    torch.save(state, tmp_path / "fc.pt")
    assert import_main([str(tmp_path / "fc.pt"), "--network", "fc", "--data", "cb", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


class Payload:
    """Unpickling this would create ``marker``: a stand-in for code a pickle runs when loaded unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("content", ["object", "number"])
def test_a_file_holding_anything_but_tensors_is_refused(tmp_path, capsys, content):
    marker = tmp_path / "unpickled"
    file = tmp_path / "model.pt"
    extra = Payload(marker) if content == "object" else 3
    torch.save({**CourseDDPM(CourseFcNetwork(2, 8), T=5).state_dict(), "extra": extra}, file)
    assert import_main([str(file), "--network", "fc", "--data", "tg", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert ("holds objects other than tensors" if content == "object" else "entries that are not tensors") in err
    assert exercise_main(["sample", "--model", str(file), "--samples", str(tmp_path / "s.png")]) == 2
    assert not marker.exists() and not (tmp_path / "run").exists()
