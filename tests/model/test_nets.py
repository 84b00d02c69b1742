"""The noise-prediction networks on MNIST shapes, and short MNIST training runs that lower the loss."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pyddpm.store import load_model
from pyddpm.nets import DDPMUNet, ExerciseUNet, build_network
from pyddpm.cli.sample import main as sample_main
from pyddpm.cli.train import main as train_main
from pyddpm.samplers import plan_for
from pyddpm.solvers import DEFAULT_SAMPLER, DEFAULT_STEPS
from helpers.export_runs import MNIST_DIR

needs_shared = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"shared MNIST not found at {MNIST_DIR}")

NETS = {  # default sizes, as users get them
    "fc": dict(input_dim=784, num_hidden=256, num_layers=4, activation="silu", time_embedding="sinusoidal"),
    "unet": {},
    "unet-ddpm": {},
}
TINY = {  # sizes for the training runs, and the loss ratio (last / first) each must reach in 200 steps
    "fc": (["--hidden", "1024", "--depth", "2"], 0.85),  # an MLP learns MNIST's noise slowly (the exercise's point)
    "unet": (["--channels", "4,8,8,16,16"], 0.5),
    "unet-ddpm": (["--channels", "8,16", "--num-res-blocks", "1", "--dropout", "0"], 0.5),
}


@pytest.mark.parametrize("name", NETS)
def test_forward_and_backward_on_mnist_shapes(name):
    torch.manual_seed(0)
    net = build_network(name, **NETS[name])
    x, t = torch.randn(3, 784), torch.rand(3, 1)
    out = net(x, t)
    assert out.shape == (3, 784) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert sum(p.grad.abs().sum() > 0 for p in net.parameters()) == len(list(net.parameters()))
    with torch.no_grad():  # the network sees the time step
        assert not torch.allclose(net(x, t), net(x, (t + 0.5) % 1))


def test_exercise_unet_has_the_exercise_architecture():
    net = ExerciseUNet()
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 256, 256, 128, 64, 32, 32, 1]
    assert convs[0].in_channels == 2  # the image and the time channel
    assert sum(isinstance(m, nn.LogSigmoid) for m in net.modules()) == 10
    assert sum(p.numel() for p in net.parameters()) == 2_361_409
    sizes, h = [], torch.zeros(1, 2, 28, 28)
    for conv in net.convs:
        h = conv(h)
        sizes.append(h.shape[-1])
    assert sizes == [28, 14, 7, 4, 2]


def test_ddpm_unet_attends_at_7x7_and_handles_other_image_shapes():
    net = DDPMUNet(channels=(16, 32, 32), num_res_blocks=1)
    seen = []
    for module in net.modules():
        if type(module).__name__ == "SelfAttention":
            module.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    net(torch.randn(2, 784), torch.rand(2, 1))
    assert seen and set(seen) == {(7, 7)}
    for cls, kwargs in ((DDPMUNet, dict(channels=(8, 16), num_res_blocks=1)), (ExerciseUNet, dict(channels=(8, 16, 16)))):
        rgb = cls(image_shape=(3, 30, 30), **kwargs)
        assert rgb(torch.randn(2, 2700), torch.rand(2, 1)).shape == (2, 2700)


@pytest.mark.parametrize("net", [ExerciseUNet(channels=(4, 8)), DDPMUNet(channels=(8,), num_res_blocks=1)])
def test_wrong_input_shape_is_a_clear_error(net):
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 784\)"):
        net(torch.randn(2, 1, 28, 28), torch.rand(2, 1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(channels=[]), "non-empty list of positive integers"),
    (dict(channels=[8, 0]), "non-empty list of positive integers"),
    (dict(image_shape=(28, 28)), "image_shape must be"),
    (dict(channels=[4] * 7), "too many"),
])
def test_bad_unet_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExerciseUNet(**kwargs)


def read_losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@needs_shared
@pytest.mark.parametrize("name", TINY)
def test_a_few_hundred_cpu_steps_lower_the_loss(name, tmp_path):
    run = tmp_path / name
    sizes, ratio = TINY[name]
    args = ["--data", "mnist", "--data-dir", str(MNIST_DIR), "--net", name, *sizes, "--num-train", "1600",
            "--batch-size", "16", "--epochs", "2", "--out", str(run), "--device", "cpu",
            "--grid-samples", "4" if name == "unet" else "0", "--grid-steps", "3"]
    assert train_main(args) == 0
    losses = read_losses(run)
    assert len(losses) == 8  # 200 steps logged every 25
    assert np.mean(losses[-2:]) < ratio * losses[0], losses
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["image_shape"] == [1, 28, 28] and config["data"]["value_range"] == [0.0, 1.0]
    assert config["data"]["center"] == 0.5 and config["data"]["scale"] == 2.0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 200 and metrics["train_images_per_s"] > 0
    if name == "unet":  # a grid per epoch and the final one
        assert sorted(p.name for p in (run / "grids").iterdir()) == ["epoch_001.png", "epoch_002.png"]
        assert (run / "samples.png").read_bytes()[:4] == b"\x89PNG"
        model, _ = load_model(run)
        plan = plan_for(model, DEFAULT_SAMPLER, DEFAULT_STEPS)  # the grid's sampler, which metrics.json names
        assert metrics["sampler"].startswith(plan.label()) and metrics["nfe"] == plan.nfe == DEFAULT_STEPS
        npy = tmp_path / "s.npy"
        assert sample_main([str(run), "--num", "6", "--steps", "10", "--out", str(npy), "--device", "cpu"]) == 0
        samples = np.load(npy)
        assert samples.shape == (6, 784) and samples.min() >= 0 and samples.max() <= 1
        png = tmp_path / "ddim.png"
        assert sample_main([str(run), "--num", "6", "--steps", "10", "--out", str(png), "--no-graph"]) == 0
        assert png.read_bytes()[:4] == b"\x89PNG"
