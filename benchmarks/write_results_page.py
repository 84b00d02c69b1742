"""Generate docs/RESULTS.md and its pictures (docs/results/): the exercise's questions answered by measurement.

    python benchmarks/write_results_page.py [--runs runs/results] [--docs docs] [--quick] [--sections toy-compare,...]

Every model is trained by `pyddpm-train` and measured by `pyddpm-eval`, each run as a subprocess with exactly
the flags the page lists, so every number on the page can be reproduced by a command. Run directories, eval
files and the classifier are reused when present: an interrupted script resumes where it stopped, and a
finished one re-renders the page in seconds. ``--quick`` shrinks every budget to smoke-test the script (write
its page somewhere else; it is not a result). ``--sections`` runs and renders only the named sections (of
``SECTIONS``) into RESULTS-<sections>.md, leaving the full page alone.

The comparisons with the baselines (sections 4-5) train each model for the same CPU wall-clock budget: a short
calibration run measures each model's seconds per optimizer step on this machine, and the real run gets as many
steps as fit in the budget, its learning-rate schedule ending there (``schedule_flags``).
The training seconds each run actually took (optimizer steps only) are printed beside its numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine import cpu_model  # noqa: E402
from pyddpm.baselines import default_kwargs  # noqa: E402
from pyddpm.cli.train import DDPM_SETTINGS  # noqa: E402
from pyddpm.config import TrainConfig  # noqa: E402
from pyddpm.data import is_toy, load_training_data, toy_distribution  # noqa: E402
from pyddpm.evaluate.classifier import default_classifier_path, load_classifier  # noqa: E402
from pyddpm.schema import MAX_NUM_TRAIN  # noqa: E402
from pyddpm.store import read_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


@dataclass
class Budget:
    """Every size the page depends on; ``quick`` is a smoke test of the script."""

    toy_train: list[str]  # pyddpm-train flags shared by all Chequerboard variants (the data scale aside)
    toy_samples: int
    mnist_train: list[str]  # pyddpm-train flags shared by all MNIST networks (equal budget)
    bound_images: int  # test images for the bound
    t_samples: int  # sampled t per image for the networks' bound
    quality_samples: int  # samples per network for (2)
    quality_steps: int  # DDIM steps for (2)
    sampler_studies: list[tuple[str, int, list[str]]]  # (3): (MNIST run, samples per sampler, bound flags)
    unet_long_seconds: float  # (2): CPU training seconds of the exercise U-Net's long run, and so of the FcNetwork's
    toy_scales: list[int] = field(default_factory=lambda: [2, 32])  # (1): the exercise's data scale, then pyddpm's
    ddim_steps: list[int] = field(default_factory=lambda: [100, 50])
    compare_toy_seconds: float = 120.0  # (4): CPU training seconds per model and toy set
    compare_toy_batch: int = 1000
    compare_toy_samples: int = 5000  # samples per model for the toy metrics
    compare_test_points: int = 2000  # fresh true points for the toy test NLL
    compare_calibration_steps: int = 100  # steps of the runs that time each model
    compare_iwae_k: int = 1000  # the VAE's larger IWAE K (toy); MNIST uses compare_mnist_iwae_k
    compare_mnist_seconds: float | None = None  # (5): None = the exercise U-Nets' training times in (2)
    compare_mnist_iwae_k: int = 100


FULL = Budget(
    toy_train=["--epochs", "2", "--num-train", "1000000", "--batch-size", "1000", "--T", "1000",
               "--num-samples", "500"],
    toy_samples=2000,
    mnist_train=["--epochs", "1", "--num-train", "19200", "--batch-size", "64", "--lr", "1e-3", "--warmup", "50",
                 "--T", "1000", "--grid-samples", "0", "--checkpoint-every", "100"],
    bound_images=200, t_samples=10, quality_samples=250, quality_steps=20,
    sampler_studies=[("fc-long", 300, ["--test-images", "100"]),
                     ("unet", 128, ["--test-images", "200", "--t-samples", "10"])],
    unet_long_seconds=600.0)
QUICK = Budget(
    toy_train=["--epochs", "1", "--num-train", "20000", "--batch-size", "1000", "--T", "100", "--num-samples", "100"],
    toy_samples=500,
    mnist_train=["--epochs", "1", "--num-train", "256", "--batch-size", "64", "--T", "100", "--grid-samples", "0"],
    bound_images=20, t_samples=3, quality_samples=30, quality_steps=5,
    sampler_studies=[("fc-long", 30, ["--test-images", "10"]),
                     ("unet", 8, ["--test-images", "10", "--t-samples", "3"])],
    unet_long_seconds=10.0, ddim_steps=[20, 10], compare_toy_seconds=5.0,
    compare_toy_batch=256, compare_toy_samples=500, compare_test_points=300, compare_calibration_steps=20,
    compare_iwae_k=20, compare_mnist_seconds=10.0, compare_mnist_iwae_k=5)

# (1) FcNetwork variants on the Chequerboard: (name, what changes, flags); data scale 32 in the budget
TOY_VARIANTS = [
    ("exercise", "the exercise's network", ["--hidden", "64", "--depth", "2", "--activation", "relu",
                                             "--time-embedding", "linear"]),
    ("wider", "width 64 -> 256", ["--hidden", "256", "--depth", "2", "--activation", "relu",
                                  "--time-embedding", "linear"]),
    ("deeper", "depth 2 -> 4", ["--hidden", "64", "--depth", "4", "--activation", "relu",
                                "--time-embedding", "linear"]),
    ("silu", "ReLU -> SiLU", ["--hidden", "64", "--depth", "2", "--activation", "silu", "--time-embedding", "linear"]),
    ("sinusoidal", "t -> sinusoidal embedding", ["--hidden", "64", "--depth", "2", "--activation", "relu",
                                                  "--time-embedding", "sinusoidal"]),
    ("all", "all four (the default network)", ["--hidden", "256", "--depth", "4", "--activation", "silu",
                                          "--time-embedding", "sinusoidal"]),
]
# (2) networks on MNIST
MNIST_NETS = [
    ("fc", "FcNetwork 1024 x 3, SiLU, sinusoidal t", ["--net", "fc", "--hidden", "1024", "--depth", "3",
                                                     "--activation", "silu", "--time-embedding", "sinusoidal"]),
    ("unet", "the exercise's U-Net", ["--net", "unet"]),
    ("unet-ddpm", "DDPM U-Net, reduced for CPU: channels 32,64,64, 1 res. block, attention at 7x7",
     ["--net", "unet-ddpm", "--channels", "32,64,64", "--num-res-blocks", "1"]),
]


SECTIONS = ("chequerboard", "mnist", "samplers", "toy-compare", "mnist-compare")
TOY_SETS = [("chequerboard", "Chequerboard"), ("two-gaussians", "Two Gaussians")]


def compare_models(dataset: str) -> list[tuple[str, str, list[str]]]:
    """(4)/(5): (model, label, pyddpm-train flags) of the DDPM and the two baselines, each at its defaults."""
    flow, vae = default_kwargs("flow", dataset), default_kwargs("vae", dataset)
    ddpm = (("ddpm", "DDPM, FcNetwork 256 x 4, SiLU, sinusoidal t, T = 1000 (the defaults)", []) if is_toy(dataset)
            else ("ddpm", MNIST_NETS[1][1], MNIST_NETS[1][2]))
    return [ddpm,
            ("flow", f"RealNVP flow, {flow['num_couplings']} affine couplings, MLP {flow['hidden']} x "
                     f"{flow['num_hidden_layers']}, actnorm" + (", logit pre-transform" if flow.get("pretransform")
                                                                == "logit" else ""), ["--model", "flow"]),
            ("vae", f"VAE, {vae['latent_dim']}-d latent, MLP {vae['hidden']} x {vae['num_hidden_layers']}, "
                    f"{vae['likelihood']} decoder", ["--model", "vae"])]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(module: str, args: list[str], logfile: Path) -> None:
    """``python -m module args`` with output to ``logfile``; raises with the log's tail on failure."""
    command = [sys.executable, "-m", module, *args]
    log("$ " + shlex.join(["python", "-m", module, *args]))
    with open(logfile, "a") as f:
        f.write("$ " + shlex.join(command) + "\n")
        f.flush()
        code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        tail = "".join(logfile.read_text().splitlines(keepends=True)[-20:])
        raise SystemExit(f"{module} failed (exit {code}); last lines of {logfile}:\n{tail}")


def train(run_dir: Path, flags: list[str]) -> dict:
    """Train ``run_dir`` (or resume it, or reuse it when finished); returns its metrics.json with the training
    command's wall time (``wall_seconds``, kept in RUN.train.json, summed over resumptions)."""
    record_file = run_dir.parent / f"{run_dir.name}.train.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else {"wall_seconds": 0.0}
    if not (run_dir / "metrics.json").exists():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        resume = (run_dir / "checkpoint.safetensors").exists()
        run("pyddpm.cli.train", ["--resume", str(run_dir)] if resume else [*flags, "--out", str(run_dir)],
            run_dir.parent / f"{run_dir.name}.log")
        record = {"command": shlex.join(["pyddpm-train", *flags, "--out", str(run_dir)]),
                  "wall_seconds": record["wall_seconds"] + time.perf_counter() - start,
                  "cpu_threads": torch_threads()}
        record_file.write_text(json.dumps(record, indent=2) + "\n")
    return {**json.loads((run_dir / "metrics.json").read_text()), **record}


def torch_threads() -> int:
    """The threads a pyddpm subprocess of this script gets: OMP_NUM_THREADS, else the CPUs it may run on."""
    return int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))


def evaluate(run_dir: Path, tag: str, flags: list[str]) -> dict:
    """``pyddpm-eval run_dir flags`` into eval-TAG.json (+ .png, .npy), reused when present."""
    out = run_dir / f"eval-{tag}.json"
    if not out.exists():
        run("pyddpm.cli.eval", [str(run_dir), *flags, "--device", "cpu", "--out", str(out), "--save-samples",
                                    str(out.with_suffix(".npy"))], run_dir.parent / f"{run_dir.name}.log")
    return json.loads(out.read_text())


def ensure_classifier() -> dict:
    """The cached MNIST classifier's info, training it first (once) when it is missing."""
    path = default_classifier_path("mnist")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        run("pyddpm.cli.classifier", ["--data-dir", str(MNIST_DIR)], path.parent / "mnist-classifier.log")
    return load_classifier(path)[1]


# ----- pictures -----------------------------------------------------------------------------------------
def chequerboard_figure(entries: list[tuple[str, np.ndarray]], path: Path, data: str = "chequerboard") -> None:
    """True density, then one 2-D histogram of samples per variant (or model) of the toy set ``data``."""
    dist = toy_distribution(data)
    lo, hi = dist.plot_range
    grid = torch.linspace(lo, hi, 200, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    density = dist.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().reshape(200, 200)
    fig, axes = plt.subplots(1, len(entries) + 1, figsize=(2.6 * (len(entries) + 1), 2.9))
    axes[0].imshow(density.numpy(), origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
    axes[0].set_title("true density", fontsize=9)
    for ax, (title, samples) in zip(axes[1:], entries):
        ax.hist2d(samples[:, 0], samples[:, 1], bins=100, range=[[lo, hi], [lo, hi]], cmap="viridis")
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def per_t_figure(curves: list[tuple[str, list[float]]], path: Path) -> None:
    """Mean L_{t-1} (bits/dim) against t: where the bound's bits are spent."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, per_t in curves:
        ax.plot(np.arange(1, len(per_t) + 1), per_t, lw=1.2, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("mean L_{t-1} (bits/dim); t = 1: L_0")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def histogram_figure(rows: list[tuple[str, list[float]]], path: Path) -> None:
    """The classifier's label histogram of each sample set (mode coverage)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(rows)
    for i, (label, hist) in enumerate(rows):
        ax.bar(np.arange(10) + (i - (len(rows) - 1) / 2) * width, hist, width, label=label)
    ax.axhline(0.1, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(10))
    ax.set_xlabel("class predicted by the classifier")
    ax.set_ylabel("fraction of samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def copy_picture(source: Path, target: Path) -> str:
    target.write_bytes(source.read_bytes())
    return f"results/{target.name}"


# ----- the records the page is rendered from ----------------------------------------------------------
@dataclass
class ToyVariant:
    """(1): one FcNetwork variant on the Chequerboard."""

    name: str
    change: str
    flags: list[str]
    train: dict  # metrics.json + wall_seconds (``train``)
    eval: dict  # its eval-ddpm.json

    def setting(self, flag: str) -> str:
        return self.flags[self.flags.index(flag) + 1]


@dataclass
class MnistNet:
    """(2): one network on MNIST: its bound and its sample quality."""

    name: str
    what: str
    flags: list[str]
    train: dict
    bound_eval: dict
    quality_eval: dict
    grid: str  # the samples' picture, relative to docs/

    @property
    def bound(self) -> dict:
        return self.bound_eval["bound"]

    @property
    def samples(self) -> dict:
        return self.quality_eval["samples"]


@dataclass
class SamplerRow:
    """(3): one sampler (and sigma_t^2) on one network."""

    label: str
    calls: int  # network calls per sample
    eval: dict
    grid: str


@dataclass
class SamplerStudy:
    net: str
    num: int
    bound_flags: list[str]
    rows: list[SamplerRow]


@dataclass
class CompareRun:
    """(4), (5): one model trained for the comparison's wall-clock budget and its evaluation."""

    model: str  # ddpm, flow or vae
    label: str
    command: str
    train: dict
    train_seconds: float  # optimizer steps only (the Trainer's clock)
    likelihood: dict  # eval's "likelihood" (toy, baselines) or "bound" (DDPM on MNIST) entry
    samples: dict
    eval_seconds: float
    grid: str = ""
    ode: dict | None = None  # the DDPM's eval "ode" entry: its likelihood under the probability-flow ODE


@dataclass
class Page:
    budget: Budget
    runs_arg: str
    runs: Path
    classifier: dict | None = None
    chequerboard: dict[int, list[ToyVariant]] | None = None  # per data scale
    mnist: list[MnistNet] | None = None
    samplers: list[SamplerStudy] | None = None
    toy_compare: dict[str, list[CompareRun]] | None = None  # per toy set
    mnist_compare: dict[str, list[CompareRun]] | None = None  # per DDPM run of (2)
    compare_seconds: dict[str, float] = field(default_factory=dict)  # the budget per data set
    flags: list[str] = field(default_factory=list)  # the script's own flags beyond --sections, for "Reproduce"


# ----- running the sections ---------------------------------------------------------------------------
def mnist_flags() -> list[str]:
    return ["--data", "mnist", "--data-dir", str(MNIST_DIR)]


def collect_chequerboard(budget: Budget, runs: Path, pictures: Path) -> dict[int, list[ToyVariant]]:
    """(1) at each data scale of the budget: the variants' runs are cb-NAME (scale 32) and cb-sSCALE-NAME."""
    by_scale = {}
    for scale in budget.toy_scales:
        prefix = "cb" if scale == 32 else f"cb-s{scale}"
        variants = []
        for name, change, flags in TOY_VARIANTS:
            run_dir = runs / f"{prefix}-{name}"
            train_metrics = train(run_dir, ["--data", "cb", *flags, *budget.toy_train, "--data-scale", str(scale)])
            record = evaluate(run_dir, "ddpm", ["--num", str(budget.toy_samples)])
            variants.append(ToyVariant(name, change, flags, train_metrics, record))
        chequerboard_figure([(v.name, np.load(runs / f"{prefix}-{v.name}" / "eval-ddpm.npy")) for v in variants],
                            pictures / chequerboard_picture(scale))
        by_scale[scale] = variants
    return by_scale


def chequerboard_picture(scale: int) -> str:
    return "chequerboard.png" if scale == 32 else f"chequerboard-scale{scale}.png"


def mnist_images() -> int:
    """How many MNIST training images pyddpm-train finds in MNIST_DIR."""
    return len(load_training_data("mnist", num_train=MAX_NUM_TRAIN, seed=0, data_dir=str(MNIST_DIR)))


def collect_mnist(budget: Budget, runs: Path, pictures: Path) -> list[MnistNet]:
    """(2): the networks at the equal step budget, then the exercise U-Net and the FcNetwork each trained for the
    same CPU seconds (``unet_long_seconds``; the FcNetwork gets the seconds the U-Net's run really took)."""
    nets = []
    for name, what, flags in MNIST_NETS:
        run_dir = runs / f"mnist-{name}"
        train_metrics = train(run_dir, [*mnist_flags(), *budget.mnist_train, *flags])  # later flags override
        nets.append(measure_mnist(budget, run_dir, name, what, flags, train_metrics, pictures))
    batch = int(budget.mnist_train[budget.mnist_train.index("--batch-size") + 1])
    seconds = budget.unet_long_seconds
    for name, (_, what, flags) in (("unet-long", MNIST_NETS[1]), ("fc-long", MNIST_NETS[0])):
        run_dir = runs / f"mnist-{name}"
        metrics, seconds = budget_run(run_dir, [*mnist_flags(), *budget.mnist_train, *flags], seconds,
                                      budget.compare_calibration_steps, batch, mnist_images())
        nets.append(measure_mnist(budget, run_dir, name, f"{what}, {seconds / 60:.0f} min", flags, metrics,
                                  pictures))
    histogram_figure([(n.name, n.samples["label_histogram"]) for n in nets]
                     + [("real (train)", nets[0].samples["floor"]["label_histogram"])], pictures / "mnist-labels.png")
    return nets


def measure_mnist(budget: Budget, run_dir: Path, name: str, what: str, flags: list[str], train_metrics: dict,
                  pictures: Path) -> MnistNet:
    """(2): one MNIST run's bound and sample quality, its grid copied to the pictures."""
    bound = evaluate(run_dir, "bound", ["--no-samples", "--test-images", str(budget.bound_images),
                                        "--t-samples", str(budget.t_samples)])
    quality = evaluate(run_dir, f"ddim{budget.quality_steps}", [
        "--no-bound", "--num", str(budget.quality_samples), "--steps", str(budget.quality_steps)])
    grid = copy_picture(run_dir / f"eval-ddim{budget.quality_steps}.png", pictures / f"mnist-{name}.png")
    train_metrics = {**train_metrics, "train_seconds": read_checkpoint(run_dir).state["train_seconds"]}
    return MnistNet(name, what, flags, train_metrics, bound, quality, grid)


def collect_samplers(budget: Budget, runs: Path, pictures: Path) -> list[SamplerStudy]:
    """(3) on networks trained by (2) (trained here first when missing)."""
    studies = []
    for net, num, bound_flags in budget.sampler_studies:
        run_dir = runs / f"mnist-{net}"
        if not (run_dir / "metrics.json").exists():
            raise SystemExit("section samplers needs the MNIST runs of section mnist: run --sections mnist first")
        rows = []
        for variance in ("beta", "beta_tilde"):
            tag = f"ddpm-{variance}-n{num}"
            record = evaluate(run_dir, tag, ["--num", str(num), "--variance", variance, *bound_flags])
            grid = copy_picture(run_dir / f"eval-{tag}.png", pictures / f"sampler-{net}-ddpm-{variance}.png")
            rows.append(SamplerRow(f"DDPM (Alg. 2), {record['diffusion']['T']} steps, sigma_t^2 = {variance}",
                                   record["diffusion"]["T"], record, grid))
        for steps in budget.ddim_steps:
            tag = f"ddim{steps}-n{num}"
            record = evaluate(run_dir, tag, ["--no-bound", "--num", str(num), "--steps", str(steps)])
            grid = copy_picture(run_dir / f"eval-{tag}.png", pictures / f"sampler-{net}-ddim{steps}.png")
            rows.append(SamplerRow(f"DDIM, {steps} steps (eta = 0)", steps, record, grid))
        studies.append(SamplerStudy(net, num, bound_flags, rows))
    per_t_figure([(f"{st.net}, sigma_t^2 = {v}", st.rows[i].eval["bound"]["per_t"]) for st in studies
                  for i, v in enumerate(("beta", "beta_tilde")) if st.rows[i].eval["bound"]["per_t"]],
                 pictures / "bound-per-t.png")
    return studies


def schedule_flags(steps: int, batch: int, available: int = MAX_NUM_TRAIN) -> list[str]:
    """Flags for a run of ``steps`` steps of ``batch`` whose learning-rate schedule ends there: one epoch of
    steps x batch examples, or as few epochs as keep --num-train within ``available`` (pyddpm's limit for toy
    points, the training images for an image set; the schedule then ends within epochs - 1 steps of the last one)."""
    epochs = math.ceil(steps * batch / available)
    per_epoch = math.ceil(steps / epochs)
    return ["--max-steps", str(steps), "--epochs", str(epochs), "--num-train", str(per_epoch * batch)]


def seconds_per_step(run_dir: Path, flags: list[str], steps: int, batch: int, available: int) -> float:
    """The Trainer's seconds per optimizer step of a ``steps``-step run with ``flags`` (trained once, cached)."""
    train(run_dir, [*flags, *schedule_flags(steps, batch, available)])
    state = read_checkpoint(run_dir).state
    return state["train_seconds"] / state["step"]


def budget_run(run_dir: Path, flags: list[str], seconds: float, calibration: int, batch: int,
               available: int = MAX_NUM_TRAIN) -> tuple[dict, float]:
    """Train ``flags`` for about ``seconds`` of optimizer time: the step count from a calibration run, the
    learning-rate schedule ending at the last step. Returns the metrics (with the command) and the seconds taken."""
    per_step = seconds_per_step(run_dir.parent / f"calibrate-{run_dir.name}", flags, calibration, batch, available)
    steps = max(1, int(seconds / per_step))
    metrics = train(run_dir, [*flags, *schedule_flags(steps, batch, available)])
    return metrics, read_checkpoint(run_dir).state["train_seconds"]


def collect_toy_compare(budget: Budget, runs: Path, pictures: Path) -> dict[str, list[CompareRun]]:
    compared = {}
    for data, _ in TOY_SETS:
        rows = []
        for model, label, flags in compare_models(data):
            run_dir = runs / f"compare-{data}-{model}"
            common = ["--data", data, "--batch-size", str(budget.compare_toy_batch), "--num-samples", "500", *flags]
            metrics, seconds = budget_run(run_dir, common, budget.compare_toy_seconds,
                                          budget.compare_calibration_steps, budget.compare_toy_batch)
            eval_flags = ["--num", str(budget.compare_toy_samples), "--test-points", str(budget.compare_test_points)]
            if model == "vae":
                eval_flags += ["--iwae-k", str(budget.compare_iwae_k)]
            if model == "ddpm":
                eval_flags += ["--likelihood", "both"]
            record = evaluate(run_dir, "compare", eval_flags)
            rows.append(CompareRun(model, label, metrics["command"], metrics, seconds, record["likelihood"],
                                   record["samples"], record["eval_seconds"], ode=record.get("ode")))
        chequerboard_figure([(r.model, np.load(runs / f"compare-{data}-{r.model}" / "eval-compare.npy"))
                             for r in rows], pictures / f"compare-{data}.png", data)
        compared[data] = rows
    return compared


def without_ddpm_flags(flags: list[str]) -> list[str]:
    """``flags`` less the DDPM's own settings (--T, ...), which pyddpm-train refuses for a baseline."""
    out, i = [], 0
    while i < len(flags):
        if flags[i].lstrip("-").replace("-", "_") in DDPM_SETTINGS:
            i += 2
            continue
        out.append(flags[i])
        i += 1
    return out


MNIST_COMPARE_DDPM = ("unet", "unet-long")  # (5): the DDPM runs of (2) the baselines are trained beside


def collect_mnist_compare(budget: Budget, runs: Path, pictures: Path, ddpm: str, seconds: float) -> list[CompareRun]:
    """The exercise U-Net run ``mnist-DDPM`` of (2) beside a flow and a VAE trained for its CPU time (``seconds``)."""
    unet = runs / f"mnist-{ddpm}"
    if not (unet / "metrics.json").exists():
        raise SystemExit(f"section mnist-compare needs the run mnist-{ddpm} of section mnist: run --sections mnist "
                         "first")
    tag = "" if ddpm == "unet" else f"-{ddpm.split('-', 1)[1]}"  # compare-mnist-flow, compare-mnist-long-flow
    rows = []
    for model, label, flags in compare_models("mnist"):
        if model == "ddpm":
            metrics = train(unet, [])  # finished: its metrics and command
            bound = evaluate(unet, "bound", ["--no-samples", "--test-images", str(budget.bound_images),
                                             "--t-samples", str(budget.t_samples)])
            ode = evaluate(unet, "ode", ["--no-samples", "--test-images", str(budget.bound_images),
                                         "--likelihood", "ode"])
            quality = evaluate(unet, f"ddim{budget.quality_steps}", [
                "--no-bound", "--num", str(budget.quality_samples), "--steps", str(budget.quality_steps)])
            grid = copy_picture(unet / f"eval-ddim{budget.quality_steps}.png",
                                pictures / f"compare-mnist{tag}-ddpm.png")
            rows.append(CompareRun(model, label, metrics["command"], metrics,
                                   read_checkpoint(unet).state["train_seconds"], bound["bound"], quality["samples"],
                                   bound["eval_seconds"] + quality["eval_seconds"], grid, ode["ode"]))
            continue
        run_dir = runs / f"compare-mnist{tag}-{model}"
        batch = int(budget.mnist_train[budget.mnist_train.index("--batch-size") + 1])
        common = [*mnist_flags(), *without_ddpm_flags(budget.mnist_train), *flags]
        metrics, took = budget_run(run_dir, common, seconds, budget.compare_calibration_steps, batch, mnist_images())
        record = evaluate(run_dir, "compare", ["--num", str(budget.quality_samples), "--test-images",
                                               str(budget.bound_images), "--iwae-k", str(budget.compare_mnist_iwae_k)])
        grid = copy_picture(run_dir / "eval-compare.png", pictures / f"compare-mnist{tag}-{model}.png")
        rows.append(CompareRun(model, label, metrics["command"], metrics, took, record["likelihood"],
                               record["samples"], record["eval_seconds"], grid))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/results", help="where the run directories go (reused when present)")
    p.add_argument("--docs", default="docs", help="where RESULTS.md and results/*.png go")
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of this script, not results")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run and render, of {', '.join(SECTIONS)} (default: all, into "
                        "RESULTS.md; a subset goes to RESULTS-<sections>.md)")
    p.add_argument("--splice", action="store_true",
                   help="with --sections: replace those sections in the existing RESULTS.md, each stamped with its "
                        "own machine, date and command, and keep the rest of the page")
    p.add_argument("--toy-seconds", type=float, default=None,
                   help="toy-compare: CPU training seconds per model and toy set (default: the budget's, 120)")
    args = p.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        p.error(f"--sections: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SECTIONS)}")
    if args.splice and (sections == list(SECTIONS) or not (ROOT / args.docs / "RESULTS.md").is_file()):
        p.error("--splice: needs --sections naming a subset, and an existing RESULTS.md in --docs")
    budget = QUICK if args.quick else FULL
    if args.toy_seconds is not None:
        if not args.toy_seconds > 0:
            p.error(f"--toy-seconds must be > 0, got {args.toy_seconds}")
        budget = dataclasses.replace(budget, compare_toy_seconds=args.toy_seconds)
    runs, docs = (ROOT / args.runs).resolve(), (ROOT / args.docs).resolve()
    pictures = docs / "results"
    pictures.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch_threads())

    page = Page(budget, args.runs, runs, flags=(["--quick"] if args.quick else [])
                + ([f"--toy-seconds {args.toy_seconds:g}"] if args.toy_seconds is not None else []))
    if "chequerboard" in sections:
        page.chequerboard = collect_chequerboard(budget, runs, pictures)
    if {"mnist", "samplers", "mnist-compare"} & set(sections):
        page.classifier = ensure_classifier()
    if "mnist" in sections:
        page.mnist = collect_mnist(budget, runs, pictures)
    if "samplers" in sections:
        page.samplers = collect_samplers(budget, runs, pictures)
    if "toy-compare" in sections:
        page.toy_compare = collect_toy_compare(budget, runs, pictures)
        page.compare_seconds["toy"] = budget.compare_toy_seconds
    if "mnist-compare" in sections:
        page.mnist_compare = {}
        for ddpm in MNIST_COMPARE_DDPM:
            seconds = (budget.compare_mnist_seconds if ddpm == "unet" and budget.compare_mnist_seconds is not None
                       else read_checkpoint(runs / f"mnist-{ddpm}").state["train_seconds"])
            page.mnist_compare[ddpm] = collect_mnist_compare(budget, runs, pictures, ddpm, seconds)
            page.compare_seconds[f"mnist-{ddpm}"] = seconds

    name = "RESULTS.md" if sections == list(SECTIONS) or args.splice else f"RESULTS-{'-'.join(sections)}.md"
    text = render(page)
    if args.splice:
        stamp = (f"*This section was regenerated alone on {datetime.date.today()} by `python "
                 f"benchmarks/write_results_page.py {' '.join(sys.argv[1:])}` on {machine_phrase(page)}; the page's "
                 "header describes the other sections' runs.*")
        text = splice(docs.joinpath(name).read_text(), text, stamp)
    (docs / name).write_text(text)
    log(f"wrote {docs / name}")


def splice(old: str, new: str, stamp: str) -> str:
    """``old`` with each numbered section ("## N. ...") that ``new`` holds replaced by ``new``'s, ``stamp`` under
    its heading; every other part of ``old`` is kept as it is."""
    def parts(text: str) -> list[str]:
        return re.split(r"(?m)^(?=## )", text)

    fresh = {part.split(".", 1)[0]: part for part in parts(new) if re.match(r"## \d+\.", part)}
    out = []
    for part in parts(old):
        key = part.split(".", 1)[0]
        if key in fresh:
            heading, body = fresh[key].split("\n", 1)
            part = f"{heading}\n\n{stamp}\n{body}"
        out.append(part)
    return "".join(out)


# ----- the page -----------------------------------------------------------------------------------------
def render(page: Page) -> str:
    """The page: the header, then each section whose runs the page holds, then how to reproduce it."""
    lines = render_header(page)
    for records, section in ((page.chequerboard, render_chequerboard), (page.mnist, render_mnist),
                             (page.samplers, render_samplers), (page.toy_compare, render_toy_compare),
                             (page.mnist_compare, render_mnist_compare)):
        if records is not None:
            lines += section(page)
    lines += render_reproduce(page)
    return "\n".join(lines) + "\n"


def _flags(f: list[str]) -> str:
    return "`" + " ".join(f) + "`"


def _threads_phrase(page: Page) -> str:
    """How many threads the page's training runs had (recorded with each run)."""
    records = [v.train for toy in (page.chequerboard or {}).values() for v in toy]
    records += [n.train for n in page.mnist or []]
    records += [r.train for rows in [*(page.toy_compare or {}).values(), *(page.mnist_compare or {}).values()]
                for r in rows]
    threads = sorted({r["cpu_threads"] for r in records if "cpu_threads" in r})
    if not threads:
        return "threads not recorded"
    return " or ".join(map(str, threads)) + f" thread{'s' if threads != [1] else ''} per training process"


def machine_phrase(page: Page) -> str:
    """This CPU (machine.cpu_model), its cores, torch and the runs' threads."""
    return f"the CPU ({cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {_threads_phrase(page)})"


def render_header(page: Page) -> list[str]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    L = ["# pyddpm results: the exercise's questions, answered by measurement\n",
         "*This page is generated by `python benchmarks/write_results_page.py`; do not edit it by hand. Every number comes "
         "from a `pyddpm-train` run measured by `pyddpm-eval`; the flags are listed beside each table, and the run "
         "directories are cached, so rerunning the script resumes or re-renders.*\n",
         f"**Machine.** Everything below ran on {machine_phrase(page)}; "
         f"{'no GPU was used' if gpu is None else 'a GPU was present but unused'}. "
         "Training budgets are therefore small and are stated with every table: the numbers compare settings at "
         "equal budget, they are not converged results. Times are wall-clock and carry the machine's load.\n"]
    if page.classifier is None:
        return L
    beta_1 = page.mnist[0].bound_eval["diffusion"]["beta_1"] if page.mnist else TrainConfig().beta_1
    classifier = page.classifier
    L.append(
        f"**Metrics.** *Bits/dim*: the full variational bound L = L_T + sum_(t>=2) L_(t-1) + L_0 of Ho et al. "
        "(eq. 5) with their discretised Gaussian decoder (eq. 13), on MNIST test images, +- the standard error over "
        "images. Pixels k are evaluated undequantised at x0 = 2k/255 - 1 with bins of width 2/255 (outer bins "
        "to +-inf), so it is a discrete negative log-likelihood comparable with published numbers. "
        "(pyddpm trains on pixels dequantised to (k + u)/255, i.e. on [x0, x0 + 2/255], half a bin above the "
        "evaluation bin; the bound is an upper bound on -log2 P(pixels) / 784 under either convention.) "
        f"L_0 has a floor set by the decoder's variance sigma_1^2 = beta_1: its standard deviation "
        f"{math.sqrt(beta_1):.3f} is {math.sqrt(beta_1) * 255 / 2:.1f} bins wide, so an inner pixel costs at least "
        f"-log2(2 Phi(1 / (255 sqrt(beta_1))) - 1) = {-math.log2(math.erf(1 / (255 * math.sqrt(2 * beta_1)))):.2f} "
        "bits even with a perfect mean (the outer bins, MNIST's background, can cost ~0). "
        "With `--t-samples K` each image gets K distinct t drawn uniformly from 2..T and the sum is estimated as "
        "(T-1)/K times theirs (unbiased; L_T and L_0 exact), so its standard error includes that sampling noise. "
        f"*Frechet distance*: between Gaussians fitted to the 128 penultimate-layer features of pyddpm's MNIST "
        f"classifier (test accuracy {classifier['test_accuracy']:.2%}, trained once by "
        f"`pyddpm-classifier` on the {classifier['train_images']} training images, cached with "
        "its SHA-256), for the samples vs all 10,000 test images. Its **floor** is the same statistic for as many "
        "real training images as there are samples (the Frechet distance is biased upwards at small sample sizes, "
        "so only a value near the floor means 'indistinguishable'). Samples are mapped to 8-bit pixels "
        "floor(255 x) before classification. *Label histogram*: the classifier's predicted classes of the samples "
        "(mode coverage), summarised by its total-variation distance from uniform; *confidence*: the mean max "
        "class probability.\n")
    return L


def support_se(fraction: float, n: int) -> float:
    """The binomial standard error of a support fraction measured on ``n`` samples."""
    return math.sqrt(fraction * (1 - fraction) / n)


def _chequerboard_answer(page: Page) -> str:
    """(1)'s opening sentence: does some change beat the exercise's network at every data scale?"""
    n = page.budget.toy_samples
    parts, improved = [], []
    for scale, toy in page.chequerboard.items():
        base = toy[0].eval["samples"]["support_fraction"]
        best = max(toy[1:], key=lambda v: v.eval["samples"]["support_fraction"])
        top = best.eval["samples"]["support_fraction"]
        z = (top - base) / math.hypot(support_se(top, n), support_se(base, n))
        improved.append(z > 3)
        parts.append(f"at data scale {scale} {best.change.split(' (')[0]} puts {top:.1%} of the samples inside the "
                     f"squares against the exercise network's {base:.1%} ({z:.0f} standard errors apart)")
    head = "Yes" if all(improved) else ("Only in part" if any(improved) else "No")
    combined = "; ".join(f"{next(v for v in toy if v.name == 'all').eval['samples']['support_fraction']:.1%} at "
                         f"scale {scale}" for scale, toy in page.chequerboard.items())
    return (f"{head}: with the same optimizer steps, " + "; ".join(parts) + ". The default network (all four "
            f"changes) gives {combined}: which change helps depends on the data scale.")


def render_chequerboard(page: Page) -> list[str]:
    budget = page.budget
    first = next(iter(page.chequerboard.values()))
    L = ["## 1. Can the Chequerboard fit be improved by the architecture?\n",
         _chequerboard_answer(page) + "\n",
         f"Six FcNetwork variants trained with the same budget {_flags(budget.toy_train)} (seed 0) at each data "
         f"scale (`--data-scale`: the toy points are multiplied by it for training, and samples divided by it; the "
         f"exercise uses 2, pyddpm's default is 64), each measured on {budget.toy_samples} samples from Algorithm 2 "
         f"with all T = {first[0].eval['diffusion']['T']} steps (`pyddpm-eval RUN --num N`). Support fraction: "
         f"samples inside the five squares (truth: 100%; binomial s.e. at most "
         f"{support_se(0.5, budget.toy_samples):.1%}). Energy distance to fresh true samples, beside its floor (two "
         "true samples of the same size).\n"]
    for scale, toy in page.chequerboard.items():
        L += [f"### Data scale {scale}" + (" (the exercise's)" if scale == 2 else "") + "\n",
              "| variant | change | hidden x depth, activation, t | parameters | support fraction | energy distance "
              "(floor) | min / max square mass (truth 0.200) | training time |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
        for v in toy:
            s = v.eval["samples"]
            L.append(f"| {v.name} | {v.change} | {v.setting('--hidden')} x {v.setting('--depth')}, "
                     f"{v.setting('--activation')}, {v.setting('--time-embedding')} | {v.eval['parameters']:,} | "
                     f"{s['support_fraction']:.1%} | {s['energy_distance']:.2e} ({s['energy_distance_floor']:.1e}) | "
                     f"{min(s['square_mass']):.3f} / {max(s['square_mass']):.3f} | "
                     f"{v.train['wall_seconds'] / 60:.1f} min |")
        base = toy[0].eval["samples"]
        changes = sorted(toy[1:], key=lambda v: -v.eval["samples"]["support_fraction"])
        L.append(f"\n![Chequerboard samples per variant, data scale {scale}](results/{chequerboard_picture(scale)})\n")
        L.append(f"With {toy[0].train['steps']} optimizer steps, the exercise's network puts "
                 f"{base['support_fraction']:.1%} of its samples inside the squares (energy distance "
                 f"{base['energy_distance']:.1e}). Support fraction (energy distance) per change, best first: "
                 + "; ".join(f"{v.change}: {v.eval['samples']['support_fraction']:.1%} "
                             f"({v.eval['samples']['energy_distance']:.1e})" for v in changes) + ".\n")
    return L


def _mnist_answer(nets: dict[str, MnistNet]) -> str:
    """(2)'s opening sentence (question 3.5a): the FcNetwork against the exercise U-Net at equal CPU time, judged
    by the Frechet distance and the label histogram."""
    fc, unet = nets["fc-long"], nets["unet-long"]
    fd_fc, fd_unet = fc.samples["frechet_distance"], unet.samples["frechet_distance"]
    tv_fc, tv_unet = fc.samples["label_tv_from_uniform"], unet.samples["label_tv_from_uniform"]
    floor = fc.samples["floor"]
    as_well = fd_fc <= fd_unet and tv_fc <= tv_unet
    head = ("Yes: trained for the same" if as_well else "No, not as well as the U-Net: trained for the same")
    return (f"{head} {fc.train['train_seconds'] / 60:.0f} min of CPU as the exercise's U-Net "
            f"({fc.train['steps']} steps against the U-Net's {unet.train['steps']}), the FcNetwork's samples have a "
            f"Frechet distance of {fd_fc:.0f} against the U-Net's {fd_unet:.0f} (real images: "
            f"{floor['frechet_distance']:.0f}) and their labels are {tv_fc:.2f} in total variation from uniform "
            f"against the U-Net's {tv_unet:.2f} (real images: {floor['label_tv_from_uniform']:.2f}; 0.90 = every "
            "sample in one class).")


def render_mnist(page: Page) -> list[str]:
    budget, nets = page.budget, page.mnist
    by_name = {n.name: n for n in nets}
    L = ["## 2. Can a fully connected network learn MNIST?\n",
         _mnist_answer(by_name) + "\n",
         f"Three networks with the same training budget {_flags(budget.mnist_train)} (seed 0, EMA 0.999 weights) on "
         "the shared MNIST training images; then the exercise U-Net trained for "
         f"{budget.unet_long_seconds / 60:.0f} min of CPU optimizer time and the FcNetwork for the seconds that run "
         f"took (each: the steps that fit, from a {budget.compare_calibration_steps}-step calibration run, the "
         "learning-rate schedule ending at the last step; `--max-steps/--epochs/--num-train` in the run's config). "
         f"Bits/dim on the first {budget.bound_images} test images with `--t-samples {budget.t_samples}`; sample "
         f"quality on {budget.quality_samples} samples drawn by DDIM with {budget.quality_steps} steps "
         f"(`pyddpm-eval RUN --steps {budget.quality_steps} --num {budget.quality_samples}`; Algorithm 2's 1000 "
         "steps are too slow for the U-Nets on this CPU).\n",
         "| network | parameters | training: steps x batch (CPU optimizer time) | bits/dim (+- s.e.) | Frechet "
         "distance (floor) | label TV from uniform (floor) | confidence (floor) | sampling time / sample |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
    batch = budget.mnist_train[budget.mnist_train.index("--batch-size") + 1]
    for n in nets:
        bb, s = n.bound, n.samples
        fl = s["floor"]
        L.append(f"| {n.what} | {n.bound_eval['parameters']:,} | {n.train['steps']} x {batch} "
                 f"({n.train['train_seconds'] / 60:.1f} min) | "
                 f"{bb['bits_per_dim']:.3f} +- {bb['standard_error']:.3f} | {s['frechet_distance']:.2f} "
                 f"({fl['frechet_distance']:.2f}) | {s['label_tv_from_uniform']:.3f} "
                 f"({fl['label_tv_from_uniform']:.3f}) | "
                 f"{s['mean_confidence']:.3f} ({fl['mean_confidence']:.3f}) | "
                 f"{1000 * s['seconds_per_sample']:.1f} ms |")
    L.append("\nSamples (the first 100 of each set):\n")
    L.append("| " + " | ".join(n.what for n in nets) + " |")
    L.append("|" + "---|" * len(nets))
    L.append("| " + " | ".join(f"![{n.name}]({n.grid})" for n in nets) + " |")
    L.append("\n![label histograms](results/mnist-labels.png)\n")
    L.append("Bound parts (bits/dim, mean over images): L_T / sum L_(t-1) / L_0: " + "; ".join(
        f"{n.name}: {n.bound['prior_L_T']:.1e} / {n.bound['diffusion_sum_L_t']:.3f} / {n.bound['decoder_L_0']:.3f}"
        for n in nets) + ".\n")

    def summary(name: str) -> str:
        n = by_name[name]
        return (f"{n.bound['bits_per_dim']:.2f} +- {n.bound['standard_error']:.2f} bits/dim, Frechet distance "
                f"{n.samples['frechet_distance']:.0f}")

    def versus(a: MnistNet, b: MnistNet) -> str:
        """a's bound against b's, in combined standard errors."""
        x, y = a.bound, b.bound
        z = (x["bits_per_dim"] - y["bits_per_dim"]) / math.hypot(x["standard_error"], y["standard_error"])
        where = "level with" if abs(z) < 2 else ("behind" if z > 0 else "ahead of")
        return f"{where} the U-Net's ({summary(b.name)}; {abs(z):.1f} combined standard errors apart)"

    ranked = sorted((name for name, *_ in MNIST_NETS), key=lambda name: by_name[name].bound["bits_per_dim"])
    one_class = [n.name for n in nets if n.samples["label_tv_from_uniform"] > 0.89]  # 0.9 = all in one class
    ratio = min(n.samples["frechet_distance"] / n.samples["floor"]["frechet_distance"] for n in nets)
    L.append(f"At the equal budget of {by_name['fc'].train['steps']} steps the ranking by bits/dim is "
             + " < ".join(f"{by_name[name].what} ({summary(name)})" for name in ranked)
             + f". At equal CPU time the FcNetwork reaches {summary('fc-long')}, "
             + versus(by_name["fc-long"], by_name["unet-long"])
             + (f"; the classifier puts every sample of {', '.join(one_class)} into one class" if one_class else "")
             + f". The best Frechet distance here is {ratio:.0f}x its real-data floor: these are CPU-minute budgets "
               "(the 46-minute U-Net run in course.md reaches 163 against a floor of 16).\n")
    return L


def render_samplers(page: Page) -> list[str]:
    studies = page.samplers
    names = {name: what for name, what, _ in MNIST_NETS}
    names.update({n.name: n.what for n in page.mnist or []})
    L = ["## 3. sigma_t^2 = beta_t vs beta_tilde_t, and DDPM (1000 steps) vs DDIM (50 / 100 steps)\n",
         "Two of the trained MNIST networks of section 2, each sampled by Algorithm 2 with both variances and by "
         "DDIM (seed 0; Algorithm 2's T network calls per sample limit the sample counts on this CPU). The bound "
         "depends on sigma_t^2 only, so it is given for both variances. Time: sampling wall-clock per sample on "
         "this shared CPU (the fused reverse-step op; noisy, so the machine-independent cost, network calls per "
         "sample, is given beside it).\n"]
    for st in studies:
        L.append(f"### {names[st.net]}: {st.num} samples per sampler; bound `{' '.join(st.bound_flags)}`\n")
        L.append("| sampler | bits/dim (+- s.e.) | Frechet distance (floor) | label TV (floor) | confidence (floor) | "
                 "network calls / sample | time / sample |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for row in st.rows:
            rec = row.eval
            s, fl = rec["samples"], rec["samples"]["floor"]
            bound = (f"{rec['bound']['bits_per_dim']:.3f} +- {rec['bound']['standard_error']:.3f}" if "bound" in rec
                     else "-")
            L.append(f"| {row.label} | {bound} | {s['frechet_distance']:.1f} ({fl['frechet_distance']:.1f}) | "
                     f"{s['label_tv_from_uniform']:.3f} ({fl['label_tv_from_uniform']:.3f}) | "
                     f"{s['mean_confidence']:.3f} ({fl['mean_confidence']:.3f}) | {row.calls} | "
                     f"{s['seconds_per_sample']:.3f} s |")
        L.append("\n| " + " | ".join(row.label for row in st.rows) + " |")
        L.append("|" + "---|" * len(st.rows))
        L.append("| " + " | ".join(f"![{row.label}]({row.grid})" for row in st.rows) + " |\n")
        beta_rec, tilde_rec = st.rows[0].eval, st.rows[1].eval
        b1, b2 = beta_rec["bound"]["bits_per_dim"], tilde_rec["bound"]["bits_per_dim"]
        fds = [row.eval["samples"]["frechet_distance"] for row in st.rows]
        run_dir = page.runs / f"mnist-{st.net}"
        x_beta, x_tilde = (np.load(run_dir / f"eval-ddpm-{v}-n{st.num}.npy") for v in ("beta", "beta_tilde"))
        L.append(f"With the same seed the two variances' samples differ by {np.abs(x_beta - x_tilde).mean():.1e} per "
                 f"pixel on average (pixels in [0, 1]; two different samples differ by "
                 f"{np.abs(x_beta - x_beta[::-1]).mean():.2f}): sigma_t^2 = beta_t and beta_tilde_t differ only at "
                 "small t, where beta_tilde_t < beta_t, so the two samplers draw nearly the same images.")
        L.append(f"For this network sigma_t^2 = beta_t gives {b1:.2f} bits/dim and beta_tilde_t {b2:.2f}: the "
                 f"{'larger' if b1 < b2 else 'smaller'} variance is the tighter bound. The Frechet distances of the "
                 f"four samplers span {min(fds):.0f} to {max(fds):.0f} against a floor of "
                 f"{st.rows[0].eval['samples']['floor']['frechet_distance']:.0f}.\n")
    fd = lambda row: row.eval["samples"]["frechet_distance"]  # noqa: E731
    same = max(abs(fd(st.rows[0]) - fd(st.rows[1])) for st in studies)
    tighter = all(st.rows[0].eval["bound"]["bits_per_dim"] < st.rows[1].eval["bound"]["bits_per_dim"]
                  for st in studies)
    ddim_better = [names[st.net] for st in studies if max(map(fd, st.rows[2:])) < min(map(fd, st.rows[:2]))]
    first = studies[0].rows
    L.append("**Answer.** "
             + (f"sigma_t^2 = beta_t gives the tighter bound on "
                f"{'both networks' if len(studies) == 2 else 'every network'}"
                if tighter else "Neither variance gives the tighter bound on every network")
             + "; with shared noise the two variances draw almost the same images, so their Frechet distances agree "
               f"within {same:.1f}. DDIM needs "
             + " and ".join(f"{first[0].calls // row.calls}x" for row in first[2:])
             + " fewer network calls than Algorithm 2 ("
             + ", ".join(f"{row.label.split(',')[1].strip()}" for row in first[2:]) + ")"
             + (f", and at this training budget it even gives the lower Frechet distance for {', '.join(ddim_better)}"
                if ddim_better else "")
             + ". Measured at these budgets, the few-step sampler is the better use of CPU time.\n")
    curves = [st.net for st in studies if st.rows[0].eval["bound"]["per_t"]]
    if curves:
        L.append("![per-t terms of the bound](results/bound-per-t.png)\n")
        L.append(f"Where the bits go ({', '.join(curves)}, all T terms): the mean of each term L_(t-1) against t for "
                 "the two variances.\n")
    return L


MODEL_NAMES = {"ddpm": "DDPM", "flow": "flow", "vae": "VAE"}


def _escaped(ode: dict) -> str:
    """On images: which images the mean is over, and the median over all of them, counting as +inf those whose ODE
    trajectories escaped (``pyddpm.evaluate.ode_likelihood`` stops them with no value)."""
    if "ode_bits_per_dim_median" not in ode:
        return ""
    n, escaped, median = ode["test_images"], ode["images_escaped"], ode["ode_bits_per_dim_median"]
    if not escaped:
        return f"; median {median:.3f}, no image escaped"
    return (f"; the mean of the {n - escaped} of {n} images that did not escape, median {median:.3f} with the "
            "escaped ones as +inf")


def _ode_estimate(ode: dict) -> str:
    """The DDPM's probability-flow ODE likelihood as a table line: value +- s.e. (how)."""
    value, error = ((ode["ode_nll_nats"], ode["ode_nll_se"]) if "ode_nll_nats" in ode
                    else (ode["ode_bits_per_dim"], ode["ode_bits_per_dim_se"]))
    return (f"{value:.3f} +- {error:.3f} (probability-flow ODE, {ode['divergence'].split(',')[0].lower()} "
            f"divergence, {ode['mean_network_calls']:.0f} calls{_escaped(ode)})")


def _nll_cell(run: CompareRun, unit: str) -> str:
    """Each likelihood estimate of a run: value +- s.e. (estimator), the DDPM's ODE likelihood first."""
    ode = [_ode_estimate(run.ode)] if run.ode else []
    if "estimates" not in run.likelihood:  # the DDPM's image bound
        b = run.likelihood
        return "<br>".join(ode + [f"{b['bits_per_dim']:.3f} +- {b['standard_error']:.3f} (bound, {b['t_samples']} "
                                  "sampled t)"])
    return "<br>".join(ode + [f"{e[unit]:.3f} +- {e['standard_error']:.3f} ({e['estimator']})"
                              for e in run.likelihood["estimates"]])


def _steps_cell(run: CompareRun) -> str:
    return f"{run.train['steps']} ({run.train_seconds:.0f} s)"


def _toy_answer(page: Page) -> str:
    """The section's one-sentence answer from the energy distances and test NLLs of (4)."""
    seconds = page.compare_seconds["toy"]
    parts, best = [], {}
    for data, title in TOY_SETS:
        rows = {r.model: r for r in page.toy_compare[data]}
        ed = {m: r.samples["energy_distance"] for m, r in rows.items()}
        best[data] = min(ed, key=ed.get)
        parts.append(f"{ed['ddpm']:.1e} against the flow's {ed['flow']:.1e} and the VAE's {ed['vae']:.1e} on the "
                     f"{title}")
    if all(m == "ddpm" for m in best.values()):
        head = (f"Yes: at {seconds:.0f} s of CPU training each, the DDPM's samples are the closest to the truth on "
                "both toy sets")
    else:
        where = " and ".join(f"the {MODEL_NAMES[m]}'s on the {title}" for (data, title), m
                             in zip(TOY_SETS, best.values()))
        head = f"No: at {seconds:.0f} s of CPU training each, the samples closest to the truth are {where}"
    return head + " (the DDPM's energy distance " + "; ".join(parts) + ")."


def _toy_nll_sentence(page: Page) -> str:
    if all(r.ode for rows in page.toy_compare.values() for r in rows if r.model == "ddpm"):
        return _toy_ode_sentence(page)
    out = []
    for data, title in TOY_SETS:
        rows = {r.model: r for r in page.toy_compare[data]}
        ddpm, flow = rows["ddpm"].likelihood["nats"], rows["flow"].likelihood["nats"]
        relation = ("below even the flow's exact value, so the DDPM's likelihood is the higher" if ddpm < flow else
                    "an upper bound above the flow's exact value, which by itself does not show that the DDPM's "
                    "likelihood is the lower")
        out.append(f"on the {title} the DDPM's bound is {ddpm:.3f} nats against the flow's {flow:.3f} (VAE "
                   f"{rows['vae'].likelihood['nats']:.3f}, truth {rows['ddpm'].likelihood['true_nats']:.3f}): "
                   f"{relation}")
    return "By test NLL, " + "; ".join(out) + "."


def _toy_ode_sentence(page: Page) -> str:
    """The answer in likelihood: the models ranked by test NLL, the DDPM's the exact one of its probability-flow ODE."""
    out = []
    for data, title in TOY_SETS:
        rows = {r.model: r for r in page.toy_compare[data]}
        ode = rows["ddpm"].ode
        nll = {"DDPM": ode["ode_nll_nats"], "flow": rows["flow"].likelihood["nats"],
               "VAE": rows["vae"].likelihood["nats"]}
        ranking = " < ".join(f"{name} {value:.3f}" for name, value in sorted(nll.items(), key=lambda kv: kv[1]))
        out.append(f"on the {title}, {ranking} (truth {ode['true_nats']:.3f}; the DDPM {ode['paired_gap_nats']:.3f} "
                   f"+- {ode['paired_gap_se']:.3f} above it point by point; its bound "
                   f"{rows['ddpm'].likelihood['nats']:.3f})")
    return ("By test NLL in nats (lower is better; the DDPM's is its exact likelihood under the probability-flow ODE, "
            "the flow's exact, the VAE's its IWAE bound), " + "; ".join(out) + ".")


def render_toy_compare(page: Page) -> list[str]:
    budget = page.budget
    L = ["## 4. Does the DDPM fit the toy sets better than the Flow and the VAE at equal CPU time?\n",
         _toy_answer(page) + " " + _toy_nll_sentence(page) + "\n",
         f"Each model trained by `pyddpm-train` for about {page.compare_seconds['toy']:.0f} s of CPU optimizer time "
         f"(the steps that fit, from a {budget.compare_calibration_steps}-step calibration run of the same model; "
         f"batch {budget.compare_toy_batch}, seed 0, otherwise each model's defaults; the seconds each run took "
         "are in the table), then measured by `pyddpm-eval RUN "
         f"--num {budget.compare_toy_samples} --test-points {budget.compare_test_points}` (the VAE with "
         f"`--iwae-k {budget.compare_iwae_k}`), the same seed 0 for every model. *Test NLL*: -log p(x) in nats of "
         f"data space, mean +- s.e. over {budget.compare_test_points} fresh true points: the flow's exact change of "
         "variables, the VAE's importance-weighted bound (Burda et al.) for K = 1 (the ELBO) and the larger K, the "
         "DDPM's variational bound (Ho et al. eq. 5) with a continuous Gaussian decoder L_0 = -log N(x0; "
         "mu_theta(x_1, 1), sigma_1^2); each is computed in the model's own space and mapped to data space by "
         "-D log(scale). Bounds are upper bounds on the NLL; the truth column is the true density's own value "
         "on the same points (no model's expected NLL is below it). The DDPM's bound with sigma_t^2 = beta_t is "
         "loose on continuous data: its small-t terms L_(t-1) stay near a nat each even for the exact noise "
         "predictor (pyddpm's Gaussian test model: about 14 nats above the entropy in 3-d at T = 1000), so a DDPM "
         "bound above the flow's exact NLL does not rank the two densities. The DDPM's own density does: "
         "`--likelihood both` adds its exact log-likelihood under the probability-flow ODE (Song et al. 2021, sec. "
         "4.3), integrated by dopri5 from step 1 to T at the default rtol = atol = 1e-5 with the exact divergence "
         "(`pyddpm.evaluate.ode_likelihood`), on the same points and in the same units. The bound and the ODE value "
         "differ because they measure different things: the bound is the negative ELBO of the stochastic reverse "
         "chain with sigma_t^2 = beta_t, whose slack is the KL between the reverse chain's and the forward "
         "process's paths; the ODE value is the exact density of the deterministic flow defined by the same "
         "network. *Mean true log-density*: of the samples, "
         "floored at log 1e-4 off the support.\n",
         "Models: " + "; ".join(f"**{MODEL_NAMES[m]}**: {label}" for m, label, _ in compare_models("chequerboard"))
         + ".\n"]
    for data, title in TOY_SETS:
        rows = page.toy_compare[data]
        s0 = rows[0].samples
        L.append(f"### {title}\n")
        L.append("| metric | " + " | ".join(MODEL_NAMES[r.model] for r in rows) + " | truth / floor |")
        L.append("|---|" + "---:|" * (len(rows) + 1))
        L.append("| training steps (CPU seconds) | " + " | ".join(_steps_cell(r) for r in rows) + " | |")
        if "support_fraction" in s0:
            L.append("| support fraction | " + " | ".join(f"{r.samples['support_fraction']:.1%}" for r in rows)
                     + " | 100% |")
            L.append("| mass per square | " + " | ".join(" ".join(f"{m:.3f}" for m in r.samples["square_mass"])
                                                         for r in rows)
                     + " | " + " ".join("0.200" for _ in s0["square_mass"]) + " |")
        if "mixture_weights" in s0:
            L.append("| mixture weights | " + " | ".join(" / ".join(f"{w:.3f}" for w in r.samples["mixture_weights"])
                                                         for r in rows) + " | 0.200 / 0.800 |")
        L.append("| energy distance | " + " | ".join(f"{r.samples['energy_distance']:.2e}" for r in rows)
                 + f" | {s0['energy_distance_floor']:.2e} |")
        L.append("| mean true log-density of the samples | " + " | ".join(f"{r.samples['mean_log_prob']:.3f}"
                                                                         for r in rows)
                 + f" | {s0['true_mean_log_prob']:.3f} |")
        L.append("| test NLL (nats, +- s.e.) | " + " | ".join(_nll_cell(r, "nats") for r in rows)
                 + f" | {rows[0].likelihood['true_nats']:.3f} |")
        L.append("| sampling time per 1000 samples | " + " | ".join(
            f"{1000 * r.samples['seconds_per_sample']:.2f} s ({r.samples['sampler']})" for r in rows) + " | |")
        L.append(f"\n![{title}: truth, DDPM, flow, VAE](results/compare-{data}.png)\n")
    return L


def _mnist_compare_sentence(rows: list[CompareRun], seconds: float) -> tuple[bool, str]:
    """Whether the DDPM's samples are the closest to real images (Frechet distance), and the figures saying so."""
    by = {r.model: r for r in rows}
    fd = {m: r.samples["frechet_distance"] for m, r in by.items()}
    tv = {m: r.samples["label_tv_from_uniform"] for m, r in by.items()}
    floor = by["ddpm"].samples["floor"]
    return fd["ddpm"] < min(fd["flow"], fd["vae"]), (
        f"with {seconds / 60:.1f} min of CPU training each, the DDPM's samples have a Frechet distance of "
        f"{fd['ddpm']:.0f} against the flow's {fd['flow']:.0f} and the VAE's {fd['vae']:.0f} (real images: "
        f"{floor['frechet_distance']:.0f}), their labels {tv['ddpm']:.2f} in total variation from uniform (flow "
        f"{tv['flow']:.2f}, VAE {tv['vae']:.2f}; real images {floor['label_tv_from_uniform']:.2f})")


def _mnist_likelihood_sentence(rows: list[CompareRun], seconds: float) -> str:
    """The models ranked by bits/dim: the DDPM's under its probability-flow ODE, the flow's exact, the VAE's IWAE."""
    by = {r.model: r for r in rows}
    bpd = {"DDPM": by["ddpm"].ode["ode_bits_per_dim"], "flow": by["flow"].likelihood["bits_per_dim"],
           "VAE": by["vae"].likelihood["bits_per_dim"]}
    ranking = " < ".join(f"{name} {value:.2f}" for name, value in sorted(bpd.items(), key=lambda kv: kv[1]))
    return (f"at {seconds / 60:.1f} min, {ranking} bits/dim (the DDPM's ODE{_escaped(by['ddpm'].ode)}; its bound: "
            f"{by['ddpm'].likelihood['bits_per_dim']:.2f})")


def render_mnist_compare(page: Page) -> list[str]:
    budget = page.budget
    sentences = [_mnist_compare_sentence(rows, page.compare_seconds[f"mnist-{ddpm}"])
                 for ddpm, rows in page.mnist_compare.items()]
    longest_better = sentences[-1][0]
    answer = (("Yes: " if longest_better else "No: ") + sentences[-1][1]
              + "".join(f"; {text}" for _, text in sentences[:-1]) + ".")
    if all(r.ode for rows in page.mnist_compare.values() for r in rows if r.model == "ddpm"):
        answer += (" In likelihood (lower is better; the DDPM's exact under its probability-flow ODE, the flow's exact, "
                   "the VAE's IWAE bound, all in bits/dim of the same test pixels): " + "; ".join(
                       _mnist_likelihood_sentence(rows, page.compare_seconds[f"mnist-{ddpm}"])
                       for ddpm, rows in reversed(page.mnist_compare.items())) + ".")
        ddpms = [r for rows in page.mnist_compare.values() for r in rows if r.model == "ddpm"]
        if any(r.ode["ode_bits_per_dim"] > r.likelihood["bits_per_dim"] for r in ddpms):
            answer += (" The DDPM's ODE value lies above its own bound here, unlike on the toy sets, for two reasons. "
                       "The ODE starts at step 1, so it prices the images blurred by step 1's noise (sigma_1 = "
                       "sqrt(beta_1), about a pixel level), where the bound's discretised decoder gives a background "
                       "pixel its whole outer bin for almost nothing. And a network trained for minutes is not yet a "
                       "flow between the images and N(0, I): its ODE carries some images far out, where the prior's "
                       "density carries their value, and a few escape altogether ([course.md](course.md)).")
    hist = lambda h: " ".join(f"{100 * v:.0f}" for v in h)  # noqa: E731
    L = ["## 5. Are the DDPM's MNIST samples better than the Flow's and the VAE's at equal CPU time?\n",
         answer + "\n",
         "Each exercise-U-Net DDPM of section 2 beside a flow and a VAE trained for the same CPU optimizer time "
         f"(steps from a {budget.compare_calibration_steps}-step calibration run) with the same flags "
         f"{_flags(without_ddpm_flags(budget.mnist_train))} otherwise. Bits/dim on the first {budget.bound_images} "
         "test images: the DDPM's bound as in section 2, and its exact log-density under the probability-flow ODE "
         "(`--likelihood ode`: dopri5 at rtol = atol = 1e-5, Hutchinson's divergence with one Rademacher probe per "
         "image, its noise inside the s.e.) of the images dequantised exactly as the flow's; the flow's exact "
         "log-density of the images dequantised once "
         "(x = 2(k + u)/255 - 1), an upper bound on -log2 P(pixels)/784 by the dequantisation gap; the VAE's "
         "discretised decoder gives P(pixels | z) on the DDPM's own bins of width 2/255, so its IWAE bound "
         f"(K = 1 and K = {budget.compare_mnist_iwae_k}) bounds -log2 P(pixels)/784 directly: all three are upper "
         "bounds on the same quantity, in the same units. Sample quality on "
         f"{budget.quality_samples} samples (DDPM: DDIM {budget.quality_steps} steps; the baselines in one pass; "
         "VAE samples are the decoder means), seed 0 for all.\n"]
    first = next(iter(page.mnist_compare.values()))
    L.append("Models: " + "; ".join(f"**{MODEL_NAMES[r.model]}**: {r.label}" for r in first) + ".\n")
    for ddpm, rows in page.mnist_compare.items():
        by = {r.model: r for r in rows}
        floor = by["ddpm"].samples["floor"]
        L += [f"### {page.compare_seconds[f'mnist-{ddpm}'] / 60:.1f} min of CPU training each (DDPM: mnist-{ddpm})\n",
              "| metric | " + " | ".join(MODEL_NAMES[r.model] for r in rows) + " | real data |",
              "|---|" + "---:|" * (len(rows) + 1),
              "| training steps (CPU seconds) | " + " | ".join(_steps_cell(r) for r in rows) + " | |",
              "| bits/dim (+- s.e.) | " + " | ".join(_nll_cell(r, "bits_per_dim") for r in rows) + " | |",
              "| Frechet distance | " + " | ".join(f"{r.samples['frechet_distance']:.1f}" for r in rows)
              + f" | {floor['frechet_distance']:.1f} (floor) |",
              "| label histogram 0-9 (%) | " + " | ".join(hist(r.samples["label_histogram"]) for r in rows)
              + f" | {hist(floor['label_histogram'])} |",
              "| label TV from uniform | " + " | ".join(f"{r.samples['label_tv_from_uniform']:.3f}" for r in rows)
              + f" | {floor['label_tv_from_uniform']:.3f} |",
              "| mean classifier confidence | " + " | ".join(f"{r.samples['mean_confidence']:.3f}" for r in rows)
              + f" | {floor['mean_confidence']:.3f} |",
              "| samples per second | " + " | ".join(f"{1 / r.samples['seconds_per_sample']:.1f}" for r in rows)
              + " | |",
              "\nSamples (the first 100 of each set, the same seed):\n",
              "| " + " | ".join(MODEL_NAMES[r.model] for r in rows) + " |",
              "|" + "---|" * len(rows),
              "| " + " | ".join(f"![{r.model}]({r.grid})" for r in rows) + " |\n"]
    return L


def _section_seconds(page: Page) -> float:
    """Wall-clock of all training and evaluation behind the page's sections."""
    total = 0.0
    if page.chequerboard:
        total += sum(v.train["wall_seconds"] + v.eval["eval_seconds"] for toy in page.chequerboard.values()
                     for v in toy)
    if page.mnist:
        total += sum(n.train["wall_seconds"] + n.bound_eval["eval_seconds"] + n.quality_eval["eval_seconds"]
                     for n in page.mnist)
    if page.samplers:
        total += sum(row.eval["eval_seconds"] for st in page.samplers for row in st.rows)
    for rows in (page.toy_compare or {}).values():
        total += sum(r.train["wall_seconds"] + r.eval_seconds for r in rows)
    for rows in (page.mnist_compare or {}).values():  # the DDPM rows are section 2's runs
        total += sum(r.train["wall_seconds"] + r.eval_seconds for r in rows if not (page.mnist and r.model == "ddpm"))
    return total


def render_reproduce(page: Page) -> list[str]:
    sections = [name for name, records in zip(SECTIONS, (page.chequerboard, page.mnist, page.samplers,
                                                         page.toy_compare, page.mnist_compare)) if records is not None]
    command = " ".join(["python benchmarks/write_results_page.py", *page.flags]
                       + ([] if sections == list(SECTIONS) else [f"--sections {','.join(sections)}"]))
    L = ["## Reproduce\n",
         ("```\npyddpm-classifier          # once: the MNIST classifier (cached)\n" if page.classifier else "```\n")
         + f"{command:<45} # everything on this page (cached run dirs in {page.runs_arg})\n```\n"]
    classifier = (f", plus {page.classifier['train_seconds'] / 60:.0f} min for the classifier" if page.classifier
                  else "")
    L.append(f"All training and evaluation above took {_section_seconds(page) / 60:.0f} min of wall-clock time on "
             f"this machine{classifier}.\n")
    return L


if __name__ == "__main__":
    main()
