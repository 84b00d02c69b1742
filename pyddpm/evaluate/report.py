"""The end of a training run: ``loss.png``, ``metrics.json`` and ``samples.png`` in the run directory, and the
sample grids drawn during training."""
from __future__ import annotations

import csv
import time
from pathlib import Path

from ..data import is_toy, toy_distribution
from ..diffusion import DDPM
from ..samplers import generate_samples
from ..store import write_json
from .plots import plot_loss, plot_toy_samples, save_image_grid
from .toy import toy_metrics

# what a baseline's training loss is (``loss.png``'s axis); the DDPM's is L_simple
BASELINE_OBJECTIVES = {"flow": "negative log-likelihood (nats)", "vae": "negative ELBO (nats)"}


def write_sample_grid(model, config: dict, path: Path, num: int, seed: int, steps: int = 0) -> float:
    """A PNG grid of ``num`` images from ``model`` by DDIM with ``steps`` steps (0: all T steps of Algorithm 2; a
    baseline samples in one pass), the same seed every time so grids are comparable; returns the seconds it took."""
    was_training = model.training
    start = time.perf_counter()
    model.eval()
    try:
        steps = min(steps, model.T) if isinstance(model, DDPM) else 0
        images = generate_samples(model, config["data"], num, seed=seed, steps=steps or None, progress=steps == 0)
    finally:
        model.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(images.reshape(-1, *config["data"]["image_shape"]), path)
    return time.perf_counter() - start


def write_run_report(run_dir: Path, model, config: dict, timing: dict, metrics_csv: Path) -> dict:
    """Write ``loss.png``, ``metrics.json`` and ``samples.png`` for a finished run and return the metrics: toy data
    beside its true density (with the toy metrics of ``num_samples`` samples), images as a grid drawn by Algorithm 2
    with all T steps. ``model`` is the sampling model, ``timing`` the training's steps and seconds."""
    train = config["train"]
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    name, objective = ((config["model"]["name"], BASELINE_OBJECTIVES[config["model"]["name"]]) if "model" in config
                       else (train["net"], "L_simple"))
    plot_loss([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], run_dir / "loss.png",
              title=f"{train['data']}, {name}", ylabel=f"{objective} per example")
    if not is_toy(config["data"]["name"]):
        metrics = dict(timing)
        if train["grid_samples"] > 0:
            seconds = write_sample_grid(model, config, run_dir / "samples.png", train["grid_samples"], train["seed"])
            metrics.update(sampling_seconds=round(seconds, 2), sampled_images=train["grid_samples"])
        write_json(run_dir / "metrics.json", metrics)
        return metrics
    model.eval()
    start = time.perf_counter()
    samples = generate_samples(model, config["data"], train["num_samples"], seed=train["seed"], progress=True)
    seconds = time.perf_counter() - start
    distribution = toy_distribution(config["data"]["name"])
    metrics = toy_metrics(distribution, samples, seed=train["seed"] + 1)
    metrics.update(steps=timing["steps"], sampling_seconds=round(seconds, 2))
    write_json(run_dir / "metrics.json", metrics)
    plot_toy_samples(distribution, samples, run_dir / "samples.png", title=f"step {timing['steps']}")
    return metrics
