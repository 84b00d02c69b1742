"""Pictures of a run: the loss curve, toy samples beside the true density, and image grids."""
from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def plot_loss(steps, losses, path: str | os.PathLike, title: str = "training loss",
              ylabel: str = "L_simple per example") -> None:
    """Per-step loss (faint) and its moving average against the optimizer step (log scale when all positive)."""
    steps, losses = np.asarray(steps), np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, alpha=0.3, lw=0.8, label="per step")
    window = max(1, len(losses) // 50)
    if len(losses) >= window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1.5, label=f"mean of {window}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    if np.all(losses > 0):  # a negative log-likelihood of continuous data can be negative
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_toy_samples(distribution, samples: torch.Tensor, path: str | os.PathLike, title: str = "") -> None:
    """The true density (left) beside a 2-D histogram of the samples (right), both in data space."""
    lo, hi = distribution.plot_range
    grid = torch.linspace(lo, hi, 300, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    density = distribution.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().reshape(300, 300)
    samples = samples.detach().cpu().double().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
    axes[0].imshow(density.numpy(), origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
    axes[0].set_title("true density")
    axes[1].hist2d(samples[:, 0], samples[:, 1], bins=150, range=[[lo, hi], [lo, hi]], cmap="viridis")
    axes[1].set_title(f"{len(samples)} samples" + (f" — {title}" if title else ""))
    for ax in axes:
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Save images of shape (n, H, W) or (n, C, H, W) with values in [0, 1] as one PNG grid."""
    images = images.detach().float().cpu().clamp(0, 1)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = torch.ones(c, rows * (h + 2) + 2, nrow * (w + 2) + 2)
    for k in range(n):
        r, col = divmod(k, nrow)
        canvas[:, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = images[k]
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    plt.imsave(path, array[..., 0] if c == 1 else array, cmap="gray" if c == 1 else None, vmin=0, vmax=255)
