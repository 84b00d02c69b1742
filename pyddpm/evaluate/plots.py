"""Pictures of a run: the loss curve, toy samples beside the true density, and image grids."""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data import DataTransform, is_toy, toy_distribution  # noqa: E402
from ..samplers import model_to_data  # noqa: E402


def describe_run(config: dict) -> str:
    """A run's data set, model (network, or baseline) and data scale for figure titles, from its config."""
    data = config["data"]
    net = config["network"]["name"] + " network" if "network" in config else config["model"]["name"]
    return f"{data['name']}, {net}, data scale {data['scale']:g}"


def plot_loss(steps, losses, path: str | os.PathLike, title: str = "training loss", dims: int | None = None,
              ylabel: str | None = None) -> None:
    """The logged loss (faint) and its moving average against the optimizer step (log scale when all positive).
    Each logged point is the mean loss of the steps since the previous one; by default the loss is the DDPM's
    L_simple, a sum over the ``dims`` dimensions (``ylabel`` names another objective)."""
    steps, losses = np.asarray(steps), np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(steps, losses, alpha=0.3, lw=0.8, label="logged: mean over the steps since the previous point")
    window = max(1, len(losses) // 50)
    if len(losses) >= window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1.5, label=f"moving average over {window} logged points")
    ax.set_xlabel("optimizer step")
    per = f", summed over D = {dims} dimensions" if dims else ""
    ax.set_ylabel(ylabel or f"L_simple = ||eps - eps_theta||^2{per}", fontsize=8)
    if dims and ylabel is None:
        ax.text(0.99, 0.97, f"predicting eps = 0 scores D = {dims}; per dimension: divide by {dims}",
                transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.3")
    if np.all(losses > 0):  # a negative log-likelihood of continuous data can be negative
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _density(distribution, lo: float, hi: float, n: int = 300) -> np.ndarray:
    grid = torch.linspace(lo, hi, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    return distribution.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().reshape(n, n).numpy()


def plot_toy_samples(distribution, samples: torch.Tensor, path: str | os.PathLike, title: str = "") -> None:
    """The true density (left, with a colour bar) beside a 2-D histogram of the samples (right), in data space;
    ``title`` (the run and sampler) heads the figure."""
    lo, hi = distribution.plot_range
    samples = samples.detach().cpu().double().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    image = axes[0].imshow(_density(distribution, lo, hi), origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
    fig.colorbar(image, ax=axes[0], fraction=0.046, pad=0.04, label="true density p(x)")
    axes[0].set_title("true density")
    *_, counts = axes[1].hist2d(samples[:, 0], samples[:, 1], bins=150, range=[[lo, hi], [lo, hi]], cmap="viridis")
    fig.colorbar(counts, ax=axes[1], fraction=0.046, pad=0.04, label="samples per bin")
    axes[1].set_title(f"{len(samples)} samples")
    for ax in axes:
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid(images: torch.Tensor, nrow: int | None = None, min_width: int = 480) -> np.ndarray:
    """Images of shape (n, H, W) or (n, C, H, W) in [0, 1] as one uint8 grid (H', W') or (H', W', C), upscaled by
    an integer factor (nearest neighbour) to at least ``min_width`` pixels so the digits can be read."""
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
    factor = max(1, math.ceil(min_width / canvas.shape[2]))
    canvas = canvas.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return array[..., 0] if c == 1 else array


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, title: str = "") -> None:
    """Save images of shape (n, H, W) or (n, C, H, W) with values in [0, 1] as one PNG grid (``image_grid``),
    with ``title`` (the run and sampler) above it when given."""
    grid = image_grid(images, nrow)
    if not title:
        plt.imsave(path, grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255)
        return
    fig = titled_grid_figure(grid, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def titled_grid_figure(grid: np.ndarray, title: str):
    """The grid at one pixel per pixel under ``title``, wrapped (as measured by the renderer) to lines that fit
    the grid's width: a narrow grid gets more lines, not a title cut off at its edges."""
    height, width = grid.shape[:2]
    fig = plt.figure(dpi=100)
    text = fig.text(0.5, 1.0, title, fontsize=8, ha="center", va="top", linespacing=1.1)
    renderer = fig.canvas.get_renderer()
    for chars in range(max(len(title), 1), 0, -1):
        text.set_text("\n".join(textwrap.wrap(title, width=chars, break_long_words=True)) or title)
        extent = text.get_window_extent(renderer)
        if extent.width <= width - 4:
            break
    header = math.ceil(extent.height) + 6
    fig.set_size_inches(width / 100, (height + header) / 100)
    text.set_y(1 - 3 / (height + header))
    ax = fig.add_axes([0, 0, 1, height / (height + header)])
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    return fig


# ----- the forward and the reverse process, frame by frame ----------------------------------------------------
def toy_view(distribution, scale: float) -> tuple[float, float]:
    """Axis limits in data space that show both the data and x_T ~ N(0, I) mapped back (0.5 +- 3.5 / scale)."""
    lo, hi = distribution.plot_range
    return min(lo, 0.5 - 3.5 / scale), max(hi, 0.5 + 3.5 / scale)


def _draw_frame(ax, x: torch.Tensor, data_config: dict, background, view) -> None:
    if background is not None:
        ax.imshow(background, origin="lower", extent=(*view, *view), cmap="YlOrRd")
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=2, c="black", alpha=0.5, linewidths=0)
        ax.set_xlim(*view)
        ax.set_ylim(*view)
        ax.set_aspect("equal")
    else:
        ax.imshow(image_grid(x[:16].reshape(-1, *data_config["image_shape"]), nrow=4, min_width=0), cmap="gray",
                  vmin=0, vmax=255, interpolation="nearest")
        ax.axis("off")


def plot_frames(frames: dict[int, torch.Tensor], data_config: dict, path: str | os.PathLike, title: str,
                label: str = "t = {t}") -> None:
    """Frames {t: samples in data space} in one row (``.png``) or as an animation (``.gif``): toy data as
    points over the true density (with its colour bar), images as 4 x 4 grids; ``label`` names each panel."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".gif"):
        raise ValueError(f"the trajectory file must end in .png or .gif, got {str(path)!r}")
    toy = is_toy(data_config["name"])
    background = view = None
    if toy:
        distribution = toy_distribution(data_config["name"])
        view = toy_view(distribution, data_config["scale"])
        background = _density(distribution, *view)
    items = list(frames.items())
    if path.suffix.lower() == ".gif":
        from matplotlib.animation import FuncAnimation, PillowWriter

        fig, ax = plt.subplots(figsize=(5.5, 5.2))

        def show(k: int):
            ax.clear()
            t, x = items[k]
            _draw_frame(ax, x, data_config, background, view)
            ax.set_title(f"{title}\n{label.format(t=t)}", fontsize=8)

        animation = FuncAnimation(fig, show, frames=len(items))
        animation.save(path, writer=PillowWriter(fps=max(2, len(items) // 5)))
        plt.close(fig)
        return
    fig, axes = plt.subplots(1, len(items), figsize=(2.6 * len(items) + (0.8 if toy else 0), 3.2), squeeze=False)
    for ax, (t, x) in zip(axes[0], items):
        _draw_frame(ax, x, data_config, background, view)
        ax.set_title(label.format(t=t), fontsize=9)
        ax.tick_params(labelsize=6)
    if toy:
        fig.colorbar(axes[0][-1].images[0], ax=list(axes[0]), fraction=0.02, pad=0.01, label="true density")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def forward_frames(model, x0: torch.Tensor, steps, seed: int = 0) -> dict[int, torch.Tensor]:
    """{t: x_t} of the forward process q(x_t | x_0) (eq. 4, ``DDPM.q_sample``) at each step t in ``steps`` (t = 0:
    x_0 itself), for model-space x0 of shape (n, *shape), with one noise draw eps ~ N(0, I) from ``seed`` shared by
    all t, so each point's path from x_0 to x_T can be followed."""
    x0 = x0.to(model.beta.device, torch.float32)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
    frames = {}
    for t in steps:
        if not 0 <= t <= model.T:
            raise ValueError(f"forward-process steps must lie in [0, T={model.T}], got {t}")
        tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        frames[t] = x0.clone() if t == 0 else model.q_sample(x0, tt, eps)
    return frames


def plot_forward_process(model, x0: torch.Tensor, config: dict, path: str | os.PathLike, steps=None,
                         seed: int = 0) -> dict[int, torch.Tensor]:
    """Draw x_0 -> x_t -> x_T of the forward process (``forward_frames``) for data-space ``x0`` of a run with
    ``config``; returns the frames drawn, {t: x_t in data space}. ``steps`` defaults to 0, T/16, T/8, T/4, T/2, T."""
    steps = steps if steps is not None else sorted({0, model.T // 16, model.T // 8, model.T // 4, model.T // 2,
                                                    model.T})
    data = config["data"]
    transform = DataTransform(data["center"], data["scale"])
    frames = {t: model_to_data(x, data) for t, x in forward_frames(model, transform.to_model(x0), steps, seed).items()}
    plot_frames(frames, data, path, f"forward process q(x_t | x_0) — {describe_run(config)}", label="x_t at t = {t}")
    return frames
