"""MNIST and Fashion-MNIST read from IDX files (gzipped or not); downloads only when asked, through torchvision.

Images come back as uint8 pixels; ``dequantize`` turns a batch of them into the exercise's continuous data
x = (pixels + u) / 255 with u ~ U(0, 1), which the run's DataTransform maps to (x - 0.5) * 2.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import torch

SPLITS = {"train": "train", "test": "t10k"}
IMAGE_SHAPE = (1, 28, 28)
_IDX_DTYPES = {0x08: torch.uint8}  # the only element type MNIST-style files use


@dataclass(frozen=True)
class ImageDataset:
    """Where an IDX data set lives and how to get it."""

    name: str
    default_dirs: tuple[str, ...]
    how_to_get: str  # {prefix}: the missing split's file prefix (train, t10k)
    torchvision_class: str  # the torchvision.datasets class whose mirrors --download uses


MNIST = ImageDataset(
    "mnist", ("../shared/data/mnist", "./data/MNIST/raw"),
    "pass --data-dir DIR holding {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz], "
    "or add --download to fetch MNIST through torchvision (needs internet and `pip install torchvision`)",
    "MNIST")
FASHION_MNIST = ImageDataset(
    "fashion-mnist", ("/usr/share/datasets/fashion-mnist", "./data/FashionMNIST/raw"),
    "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), pass --data-dir DIR holding "
    "the IDX files, or add --download to fetch it through torchvision",
    "FashionMNIST")
IMAGE_DATASETS = {d.name: d for d in (MNIST, FASHION_MNIST)}


class DataError(ValueError):
    """An image data set that is missing or unreadable."""


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """The array stored in an IDX file (gzipped when it starts with the gzip magic), as a uint8 tensor."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path} is not a readable gzip file ({err}); download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    count = 1
    for s in shape:
        count *= s
    if len(raw) < header + count:
        raise DataError(f"{path} is truncated: its header promises {shape} values, it holds {len(raw) - header}")
    return torch.frombuffer(bytearray(raw[header:header + count]), dtype=_IDX_DTYPES[raw[2]]).reshape(shape)


def default_data_dir(name: str) -> Path:
    """The first of the data set's default directories that exists (else the last one, the download target)."""
    dirs = IMAGE_DATASETS[name].default_dirs
    return next((Path(d) for d in dirs if Path(d).is_dir()), Path(dirs[-1]))


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def download(name: str, directory: str | os.PathLike) -> None:
    """Fetch the four IDX files of ``name`` into ``directory`` with torchvision's mirrors and checksums."""
    try:
        import torchvision.datasets
        from torchvision.datasets.utils import download_url
    except ImportError:
        raise DataError("--download needs torchvision: `pip install torchvision` (or pyddpm[download])") from None
    source = getattr(torchvision.datasets, IMAGE_DATASETS[name].torchvision_class)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for filename, md5 in source.resources:
        if _find(directory, filename.removesuffix(".gz")):
            continue
        errors = []
        for mirror in source.mirrors:
            try:
                download_url(mirror + filename, root=str(directory), filename=filename, md5=md5)
                break
            except Exception as err:  # noqa: BLE001 - any network failure means: try the next mirror
                errors.append(f"{mirror}: {err}")
        else:
            raise DataError(f"could not download {filename} for {name}: " + "; ".join(errors))


def load_images(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                download_missing: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels uint8 of shape (N, 28, 28), labels int64 of shape (N,)) of one split of MNIST or Fashion-MNIST."""
    if name not in IMAGE_DATASETS:
        raise DataError(f"unknown image data set {name!r}; choose one of {', '.join(IMAGE_DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    directory = Path(data_dir) if data_dir is not None else default_data_dir(name)
    if download_missing:
        download(name, directory)
    prefix = SPLITS[split]
    images_path = _find(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        searched = [str(directory)] if data_dir is not None else list(IMAGE_DATASETS[name].default_dirs)
        raise DataError(f"{name} {split} files (IDX, gzipped or not) not found in {' or '.join(searched)}: "
                        + IMAGE_DATASETS[name].how_to_get.format(prefix=prefix))
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dim() != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE[1:]:
        raise DataError(f"{images_path} holds images of shape {tuple(images.shape[1:])}, expected 28 x 28")
    if labels.shape != images.shape[:1]:
        raise DataError(f"{labels_path} holds {labels.numel()} labels for {len(images)} images in {images_path}")
    return images, labels.long()


def dequantize(pixels: torch.Tensor) -> torch.Tensor:
    """Continuous data x = (pixels + u) / 255 with u ~ U(0, 1) from torch's generator, as the exercise does."""
    return (pixels.float() + torch.rand(pixels.shape, device=pixels.device)) / 255.0
