"""MNIST / Fashion-MNIST from IDX files: the shared subset, dequantisation, errors, and downloads only when asked."""
import gzip
import shutil
from pathlib import Path

import pytest
import torch

from pyddpm.data import DataError, DataTransform, data_config_entries, load_images, load_training_data, to_data_space
from pyddpm.data import mnist
from pyddpm.cli.train import main as train_main
from helpers.export_runs import MNIST_DIR

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_shared = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"shared MNIST not found at {MNIST_DIR}")


@needs_shared
def test_shared_subset_shapes_and_labels():
    images, labels = load_images("mnist", "train", MNIST_DIR)
    assert images.shape == (22699, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (22699,) and labels.dtype == torch.int64
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the official first training labels
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() > 1800 and counts.sum() == 22699
    test_images, test_labels = load_images("mnist", "test", MNIST_DIR)
    assert test_images.shape == (10000, 28, 28) and test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert images.max() == 255 and images.min() == 0
    assert 0.12 < images.float().mean() / 255 < 0.14  # MNIST's mean intensity is 0.1307


@needs_shared
def test_dequantised_batches_cover_the_pixel_bins_and_map_to_minus_one_one():
    pixels = load_training_data("mnist", num_train=512, seed=0, data_dir=MNIST_DIR)
    assert pixels.shape == (512, 784) and pixels.dtype == torch.uint8
    torch.manual_seed(0)
    x = to_data_space(pixels)
    assert x.dtype == torch.float32
    u = x * 255 - pixels.float()  # x = (pixel + u) / 255, u ~ U(0, 1)
    assert u.min() >= -1e-4 and u.max() <= 1 + 1e-4
    assert 0.49 < u.mean() < 0.51 and 0.07 < u.var() < 0.097  # U(0, 1): mean 1/2, variance 1/12
    assert not torch.equal(x, to_data_space(pixels))  # fresh noise per batch
    model_space = DataTransform(0.5, 2.0).to_model(x)  # the run's transform: (x - 0.5) * 2
    assert model_space.min() >= -1 and model_space.max() < 1 + 2 / 255
    assert data_config_entries("mnist") == {"image_shape": [1, 28, 28], "value_range": [0.0, 1.0]}
    assert data_config_entries("cb") == {}


@needs_shared
def test_plain_and_gzipped_idx_files_read_the_same(tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((MNIST_DIR / f"{name}.gz").read_bytes()))
    plain = load_images("mnist", "test", tmp_path)
    packed = load_images("mnist", "test", MNIST_DIR)
    assert torch.equal(plain[0], packed[0]) and torch.equal(plain[1], packed[1])


def test_bad_idx_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # float elements: not an MNIST file
    with pytest.raises(DataError, match="not an IDX file of unsigned bytes"):
        mnist.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x01" * 100)
    with pytest.raises(DataError, match="truncated"):
        mnist.read_idx(short)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 1000)[:30])
    with pytest.raises(DataError, match="gzip"):
        mnist.read_idx(broken_gz)


def test_missing_data_is_a_clear_error_and_nothing_downloads_unasked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mnist, "download", lambda *a, **k: pytest.fail("downloaded without --download"))
    with pytest.raises(DataError, match="--download"):
        load_images("mnist", "train", tmp_path / "nowhere")
    assert train_main(["--data", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not found in" in err and "--data-dir" in err and "Traceback" not in err
    assert train_main(["--data", "fashion-mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_missing_test_split_names_its_own_files(tmp_path):
    with pytest.raises(DataError, match=r"mnist test files .* t10k-images-idx3-ubyte\[\.gz\] and "
                                        r"t10k-labels-idx1-ubyte"):
        load_images("mnist", "test", tmp_path)


@needs_shared
def test_download_fetches_through_torchvision_into_the_data_dir(tmp_path, monkeypatch):
    """--download uses torchvision's mirrors and checksums; the fake here copies the shared files instead."""
    utils = pytest.importorskip("torchvision.datasets.utils")
    fetched = []

    def fake_download_url(url, root, filename, md5):
        fetched.append((url, md5))
        shutil.copy(MNIST_DIR / filename, Path(root) / filename)

    monkeypatch.setattr(utils, "download_url", fake_download_url)
    target = tmp_path / "MNIST" / "raw"
    images, labels = load_images("mnist", "test", target, download_missing=True)
    assert len(fetched) == 4 and all(url.endswith(".gz") and len(md5) == 32 for url, md5 in fetched)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    load_images("mnist", "test", target, download_missing=True)  # present now: nothing fetched again
    assert len(fetched) == 4


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_reads_from_the_debian_package():
    images, labels = load_images("fashion-mnist", "test")
    assert images.shape == (10000, 28, 28) and labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert load_training_data("fmnist", num_train=100, seed=0).shape == (100, 784)
