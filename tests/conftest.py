"""Fixtures shared by the test files: the MNIST directory and the tiny trained and exported runs of
``export_runs`` (trained once per session)."""
import pytest
from export_runs import MNIST_DIR, exported, trained_run


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
