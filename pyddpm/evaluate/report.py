"""The end of a training run: ``loss.png``, ``metrics.json`` and ``samples.png`` in the run directory, and the
sample grids drawn during training."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import math

import torch

from ..data import is_toy, load_images, to_data_space, toy_distribution
from ..diffusion import DDPM
from ..samplers import generate_samples, plan_for
from ..solvers import DEFAULT_STEPS, UNIPC_DEFAULT_ORDER, resolve_sampler
from ..step_tuning import tune_timesteps
from ..store import tuned_timesteps, write_json, write_tuned_timesteps
from .plots import describe_run, plot_forward_process, plot_loss, plot_toy_samples, save_image_grid
from .toy import toy_metrics

# what a baseline's training loss is (``loss.png``'s axis); the DDPM's is L_simple
BASELINE_OBJECTIVES = {"flow": "negative log-likelihood (nats)", "vae": "negative ELBO (nats)"}
FORWARD_POINTS = 2000  # toy points in forward.png (images: 16)


def sampler_label(model, plan=None) -> str:
    """How samples were drawn, for titles and reports: the sampler and its network calls (NFE), Algorithm 2 with
    sigma_t^2, or a baseline's one pass."""
    if not isinstance(model, DDPM):
        return f"{type(model).__name__}, one pass"
    if plan is None or plan.sampler == "ddpm":
        return f"Algorithm 2, {model.T} NFE, sigma_t^2 = {plan.variance if plan else model.variance}"
    spacing = "tuned steps" if plan.spacing == "model" else f"{plan.spacing} spacing"
    return f"{plan.label()}, {spacing}" + (", stochastic" if plan.stochastic else "")


def run_sampling_options(model, config: dict) -> dict:
    """How a run's own pictures and metrics sample a DDPM: the precision and fast network it trained with."""
    if not isinstance(model, DDPM):
        return {}
    train = config.get("train", {})
    return {"precision": train.get("precision", "fp32"), "fast": train.get("fast", True)}


def default_plan(model, steps: int = 0, run_dir: Path | None = None):
    """The plan a run's own pictures and metrics sample with: pyddpm's default sampler (``pyddpm.solvers``) with
    ``steps`` network calls (0: its default count), on the run's tuned time steps where it has them; None for a
    baseline."""
    if not isinstance(model, DDPM):
        return None
    sampler, calls = resolve_sampler(None, min(steps, model.T) or None, model.T)
    tuned = tuned_timesteps(run_dir).get((sampler, calls)) if run_dir is not None else None
    order = {"order": min(UNIPC_DEFAULT_ORDER, len(tuned or range(calls)))} if sampler == "unipc" else {}
    return plan_for(model, sampler, timesteps=tuned, **order) if tuned else plan_for(model, sampler, calls, **order)


def plan_options(plan) -> dict:
    """``generate_samples``' keywords that draw by ``plan`` ({} for a baseline's None)."""
    if plan is None:
        return {}
    order = {"order": plan.history} if plan.sampler == "unipc" else {}  # UniPC keeps one buffer per order
    if plan.spacing == "model":
        return {"sampler": plan.sampler, "timesteps": list(plan.timesteps), **order}
    return {"sampler": plan.sampler, "steps": plan.nfe, "spacing": plan.spacing, **order}


TUNING_SWEEPS = 2
TUNED_STEPS = (5, 10)  # a run's steps are tuned where fixed spacings fall short of Algorithm 2 (docs/solvers.md)


def worth_tuning(model) -> bool:
    """Whether the default sampler's steps leave room to choose: T at least 10 times its calls."""
    return model.T >= 10 * DEFAULT_STEPS


def tuning_samples(config: dict) -> int:
    """Samples a run's step tuning compares: 1,000 toy points or 256 images (on an MNIST U-Net, 64 images' energy
    distances ranked the fixed spacings against the classifier's Frechet distance)."""
    return 1000 if is_toy(config["data"]["name"]) else 256


def tune_run_steps(run_dir: Path, model, config: dict) -> list[dict] | None:
    """Choose the default sampler's time steps for the run's weights at each of ``TUNED_STEPS`` calls
    (``pyddpm.step_tuning``; 1,000 samples for toy data, 256 images) and store them in the run's steps.json; the
    tunings' records, or None for a baseline."""
    if not isinstance(model, DDPM):
        return None
    sampler, _ = resolve_sampler(None, None)
    records = []
    for steps in TUNED_STEPS:
        timesteps, record = tune_timesteps(model, sampler, min(steps, model.T), config["data"]["shape"],
                                           num=tuning_samples(config), sweeps=TUNING_SWEEPS, progress=True,
                                           **run_sampling_options(model, config))
        write_tuned_timesteps(run_dir, sampler, timesteps, record)
        records.append({"sampler": sampler, "timesteps": timesteps, **record})
    return records


def write_sample_grid(model, config: dict, path: Path, num: int, seed: int, steps: int = 0, when: str = "",
                      run_dir: Path | None = None) -> float:
    """A PNG grid of ``num`` images from ``model`` by ``default_plan(model, steps, run_dir)`` (a baseline samples in
    one pass), the same seed every time so grids are comparable, titled with the run, the sampler and ``when``;
    returns the seconds it took."""
    was_training = model.training
    start = time.perf_counter()
    model.eval()
    plan = default_plan(model, steps, run_dir)
    try:
        images = generate_samples(model, config["data"], num, seed=seed, **plan_options(plan),
                                  **run_sampling_options(model, config))
    finally:
        model.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = f"{describe_run(config)} — {sampler_label(model, plan)}, seed {seed}" + (f" — {when}" if when else "")
    save_image_grid(images.reshape(-1, *config["data"]["image_shape"]), path, title=title)
    return time.perf_counter() - start


def write_forward_figure(run_dir: Path, model, config: dict, seed: int) -> None:
    """``forward.png``: training data x_0 on its way to x_T under q(x_t | x_0) (toy: points over the density)."""
    data = config["data"]
    if is_toy(data["name"]):
        x0 = toy_distribution(data["name"]).sample((FORWARD_POINTS,), generator=torch.Generator().manual_seed(seed))
    else:
        images, _ = load_images(data["name"], "train", config["train"].get("data_dir"))
        x0 = to_data_space(images[:16].reshape(16, -1))
    plot_forward_process(model, x0, config, run_dir / "forward.png", seed=seed)


INTERPRETATION = {
    "support_fraction": ("1", "share of samples inside the five squares: the sharper the edges, the nearer 1"),
    "square_mass": ("0.200 each", "share in each square: a fit spreads its samples evenly"),
    "mixture_weights": ("0.200 / 0.800", "mean responsibility of each Gaussian: are the modes weighted right?"),
    "mean_log_prob": (None, "mean true log-density of the samples (floored at log 1e-4); true samples score the truth"),
    "energy_distance": (None, "distance to true samples; at or below the floor = indistinguishable at this size"),
    "non_finite_samples": ("0", "samples that became NaN or infinite"),
}


def metrics_table(metrics: dict, config: dict) -> str:
    """The run's metrics beside the truth or their floor, one line of interpretation each, as printed text."""
    def show(value) -> str:
        if isinstance(value, list):
            return " / ".join(f"{v:.3f}" for v in value) if len(value) <= 2 else f"{min(value):.3f} .. {max(value):.3f}"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    rows = []
    for key, (truth, meaning) in INTERPRETATION.items():
        if key not in metrics:
            continue
        if key == "mean_log_prob":
            truth = show(metrics["true_mean_log_prob"])
        elif key == "energy_distance":
            truth = f"floor {show(metrics['energy_distance_floor'])}"
        rows.append((key, show(metrics[key]), truth, meaning))
    head = f"{describe_run(config)}: {metrics.get('num_samples', '')} samples".rstrip(": ")
    if "sampler" in metrics:
        head += f" by {metrics['sampler']}"
    if not rows:  # images: the bound and the Frechet distance need pyddpm-eval
        lines = [f"{describe_run(config)}: trained {metrics['steps']} steps in {metrics['train_seconds']:.0f} s"]
        if "sampling_seconds" in metrics:
            lines.append(f"samples.png: {metrics['sampled_images']} images by {metrics['sampler']} in "
                         f"{metrics['sampling_seconds']:.0f} s")
        lines.append("for bits/dim and the Frechet distance beside their floors run: pyddpm-eval RUN")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows + [("metric", "run", "truth", "")]) for i in range(3)]
    lines = [head, "  ".join(h.ljust(w) for h, w in zip(("metric", "run", "truth"), widths)) + "  meaning"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    return "\n".join(lines)


def write_run_report(run_dir: Path, model, config: dict, timing: dict, metrics_csv: Path) -> dict:
    """Write ``loss.png``, ``metrics.json`` and ``samples.png`` for a finished run and return the metrics: toy data
    beside its true density (with the toy metrics of ``num_samples`` samples), images as a grid; both drawn by
    ``default_plan``, whose sampler and calls metrics.json names. ``model`` is the sampling model, ``timing`` the training's steps and seconds."""
    train = config["train"]
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    objective = BASELINE_OBJECTIVES[config["model"]["name"]] if "model" in config else None  # None: L_simple
    low_t = config.get("train", {}).get("low_t_share") or 0.0
    if objective is None and low_t > 0:  # L_simple's terms, a share of them at small t (TrainConfig.low_t_share)
        low_range = config["train"].get("low_t_range", 0.2)
        objective = f"||eps - eps_theta||^2 ({low_t:g} of the batch at t <= {low_range:g} T)"
    plot_loss([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], run_dir / "loss.png",
              title=f"training loss — {describe_run(config)}", dims=math.prod(config["data"]["shape"]),
              ylabel=objective and f"{objective} per example")
    if isinstance(model, DDPM):
        write_forward_figure(run_dir, model, config, train["seed"])
        if train.get("tune_steps", False) and worth_tuning(model):
            tune_run_steps(run_dir, model, config)
    if not is_toy(config["data"]["name"]):
        metrics = dict(timing)
        if train["grid_samples"] > 0:
            seconds = write_sample_grid(model, config, run_dir / "samples.png", train["grid_samples"], train["seed"],
                                        when=f"after step {timing['steps']}", run_dir=run_dir)
            plan = default_plan(model, run_dir=run_dir)
            metrics.update(sampling_seconds=round(seconds, 2), sampled_images=train["grid_samples"],
                           sampler=sampler_label(model, plan), nfe=plan.nfe if plan else 1)
        write_json(run_dir / "metrics.json", metrics)
        return metrics
    model.eval()
    start = time.perf_counter()
    plan = default_plan(model, run_dir=run_dir)
    samples = generate_samples(model, config["data"], train["num_samples"], seed=train["seed"], progress=True,
                               **plan_options(plan), **run_sampling_options(model, config))
    seconds = time.perf_counter() - start
    distribution = toy_distribution(config["data"]["name"])
    metrics = toy_metrics(distribution, samples, seed=train["seed"] + 1)
    metrics.update(steps=timing["steps"], sampling_seconds=round(seconds, 2), sampler=sampler_label(model, plan),
                   nfe=plan.nfe if plan else 1)
    write_json(run_dir / "metrics.json", metrics)
    plot_toy_samples(distribution, samples, run_dir / "samples.png",
                     title=f"{describe_run(config)} — {sampler_label(model, plan)}, seed {train['seed']}, "
                           f"after step {timing['steps']}")
    return metrics
