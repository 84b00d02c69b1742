"""Fixtures shared by the test files: the MNIST directory, the tiny trained and exported runs of ``export_runs``
and a trained Chequerboard DDPM (each made once per session)."""
import pytest
import torch
from helpers.export_runs import MNIST_DIR, exported, trained_run

from pyddpm import DDPM
from pyddpm.data import toy_distribution
from pyddpm.nets import FcNetwork


@pytest.fixture(scope="session")
def mnist_dir():
    """The shared MNIST directory (../shared/data/mnist beside the checkout, as CI has it)."""
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST is not in {MNIST_DIR}")
    return MNIST_DIR


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_run(name)``: the run directory of the tiny training run ``name`` of ``export_runs.RUNS``."""
    return lambda name: trained_run(tmp_path_factory, name)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """``tiny_export(name, variance=None)``: the ONNX and TorchScript export of the tiny run ``name``."""
    return lambda name, variance=None: exported(tmp_path_factory, name, variance)


@pytest.fixture(scope="session")
def chequerboard_model():
    """A DDPM trained for 1500 steps on the Chequerboard (data scale 8): realistic weights, trained once per session."""
    torch.manual_seed(0)
    model = DDPM(FcNetwork(2, 128, num_layers=3, activation="silu", time_embedding="sinusoidal"), T=200)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = toy_distribution("chequerboard").sample(200_000, generator=torch.Generator().manual_seed(0)) * 8
    for step in range(1500):
        batch = data[torch.randint(0, len(data), (512,))]
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    return model.eval()
