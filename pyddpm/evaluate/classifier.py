"""The image classifier whose features define pyddpm's Frechet distance; trained once, cached with a checksum.

`pyddpm-classifier [--data mnist] [--out PATH]` trains it on the training split and writes
``PATH`` (safetensors: weights plus the architecture and test accuracy as metadata) and ``PATH.sha256`` (the
file's SHA-256, in ``sha256sum`` format). ``load_classifier`` reads the file only when its SHA-256 matches
the recorded one, and never unpickles anything.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..store import read_safetensors_metadata, write_atomic
from ..data import IMAGE_DATASETS, canonical_name, load_images

MIN_TEST_ACCURACY = {"mnist": 0.99, "fashion-mnist": 0.90}


class ClassifierError(RuntimeError):
    """A classifier file that is missing, fails its checksum or cannot be read."""


class ImageClassifier(nn.Module):
    """conv5x5(c1) - ReLU - maxpool - conv5x5(c2) - ReLU - maxpool - linear(features) - ReLU - linear(classes).

    ``features`` (the ReLU output of the penultimate layer) is the space of the Frechet distance. Input:
    images in [0, 1] of shape (n, 1, 28, 28) or flat (n, 784).
    """

    def __init__(self, channels: tuple[int, int] = (16, 32), features: int = 128, classes: int = 10):
        super().__init__()
        c1, c2 = channels
        self.settings = {"channels": [c1, c2], "features": features, "classes": classes}
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.fc = nn.Linear(c2 * 7 * 7, features)
        self.dropout = nn.Dropout(0.3)
        self.out = nn.Linear(features, classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features, shape (n, features)."""
        h = images.reshape(-1, 1, 28, 28).float()
        h = F.max_pool2d(F.relu(self.conv1(h)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (n, classes)."""
        return self.out(self.dropout(self.features(images)))


def default_classifier_path(data: str = "mnist") -> Path:
    """Where the classifier of ``data`` is cached: ``DATA-classifier.safetensors`` in ``$PYDDPM_CACHE``, else in
    ``$XDG_CACHE_HOME/pyddpm``, else in ``~/.cache/pyddpm``."""
    root = os.environ.get("PYDDPM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyddpm"
    return Path(root) / f"{canonical_name(data)}-classifier.safetensors"


def checksum_path(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of a classifier file is recorded: ``PATH.sha256``."""
    return Path(f"{path}.sha256")


def save_classifier(model: ImageClassifier, path: str | os.PathLike, info: dict) -> str:
    """Write the weights and ``info`` (JSON metadata) atomically, then their SHA-256 beside them; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"settings": json.dumps(model.settings), "info": json.dumps(info)}
    data = save_safetensors(tensors, metadata=metadata)
    digest = hashlib.sha256(data).hexdigest()
    write_atomic(path, data)
    write_atomic(checksum_path(path), f"{digest}  {path.name}\n".encode())
    return digest


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ImageClassifier, dict]:
    """The classifier at ``path`` in eval mode and its info, read only if its SHA-256 matches ``PATH.sha256``."""
    path = Path(path)
    retrain = f"train it with `pyddpm-classifier --out {path}`"
    if not path.is_file():
        raise ClassifierError(f"no classifier at {path}; {retrain} (once; a few minutes on a CPU)")
    recorded_file = checksum_path(path)
    if not recorded_file.is_file():
        raise ClassifierError(f"{path} has no recorded checksum ({recorded_file} is missing), so it is not "
                              f"loaded; {retrain}")
    data = path.read_bytes()
    recorded = recorded_file.read_text().split()[0].lower() if recorded_file.read_text().strip() else ""
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        raise ClassifierError(f"checksum mismatch for {path}: its SHA-256 is {actual}, {recorded_file} records "
                              f"{recorded or 'nothing'}; the file was modified or corrupted and is not loaded. "
                              f"Delete it and {retrain}")
    try:
        tensors = load_safetensors(data)
        metadata = read_safetensors_metadata(data)
        settings, info = json.loads(metadata["settings"]), json.loads(metadata["info"])
        model = ImageClassifier(tuple(settings["channels"]), settings["features"], settings["classes"])
        model.load_state_dict(tensors)
    except (SafetensorError, KeyError, ValueError, TypeError, RuntimeError) as err:
        raise ClassifierError(f"{path} is not a pyddpm classifier ({err}); {retrain}") from None
    return model.to(device).eval(), info


def pixels_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float images in [0, 1] (k / 255), the classifier's input."""
    return pixels.float() / 255.0


@torch.no_grad()
def classify(model: ImageClassifier, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, features), class probabilities (n, classes)) of images in [0, 1], float64 on the CPU."""
    device = next(model.parameters()).device
    feats, probs = [], []
    for start in range(0, len(images), batch_size):
        h = model.features(images[start:start + batch_size].to(device))
        feats.append(h.double().cpu())
        probs.append(torch.softmax(model.out(h).double(), 1).cpu())
    return torch.cat(feats), torch.cat(probs)


def _shift(images: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Each image translated by up to ``pad`` pixels in x and y (zero fill): the training augmentation."""
    n = images.shape[0]
    padded = F.pad(images, (pad, pad, pad, pad))
    dx, dy = (torch.randint(0, 2 * pad + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(28))[:, :, None]
    cols = (dx[:, None] + torch.arange(28))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def train_classifier(data: str = "mnist", data_dir: str | None = None, *, epochs: int = 8, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, device: str | torch.device = "cpu",
                     progress: bool = True) -> tuple[ImageClassifier, dict]:
    """An ImageClassifier trained on the training split (random shifts, AdamW, cosine LR) and its test metrics."""
    data = canonical_name(data)
    if data not in IMAGE_DATASETS:
        raise ValueError(f"the classifier is for image data ({', '.join(IMAGE_DATASETS)}), not {data}")
    train_x, train_y = load_images(data, "train", data_dir)
    test_x, test_y = load_images(data, "test", data_dir)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = ImageClassifier().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    images = pixels_to_unit(train_x).unsqueeze(1)
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc="classifier", unit="step", disable=not progress)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(_shift(images[idx], generator).to(device)), train_y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    _, probs = classify(model, pixels_to_unit(test_x))
    info = {"data": data, "test_accuracy": float((probs.argmax(1) == test_y).double().mean()),
            "train_images": len(train_x), "test_images": len(test_x), "epochs": epochs, "seed": seed,
            "train_seconds": round(time.perf_counter() - start, 1), "pyddpm_version": __version__}
    return model.cpu(), info
