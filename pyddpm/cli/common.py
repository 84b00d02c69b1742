"""What every console script shares: the device flag."""
from __future__ import annotations

import torch


def pick_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given, checked to exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev
