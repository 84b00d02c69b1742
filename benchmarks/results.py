"""Generate docs/RESULTS.md and its pictures (docs/results/): the exercise's questions answered by measurement.

    python benchmarks/results.py [--runs runs/results] [--docs docs] [--quick]

Every model is trained by `pyddpm-train` and measured by `pyddpm-eval`, each run as a subprocess with exactly
the flags the page lists, so every number on the page can be reproduced by a command. Run directories, eval
files and the classifier are reused when present: an interrupted script resumes where it stopped, and a
finished one re-renders the page in seconds. ``--quick`` shrinks every budget to smoke-test the script (write
its page somewhere else; it is not a result).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
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

from pyddpm.data import toy_distribution  # noqa: E402
from pyddpm.evaluate.classifier import default_classifier_path, load_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


@dataclass
class Budget:
    """Every size the page depends on; ``quick`` is a smoke test of the script."""

    toy_train: list[str]  # pyddpm-train flags shared by all Chequerboard variants
    toy_samples: int
    mnist_train: list[str]  # pyddpm-train flags shared by all MNIST networks (equal budget)
    bound_images: int  # test images for the bound
    t_samples: int  # sampled t per image for the networks' bound
    quality_samples: int  # samples per network for (2)
    quality_steps: int  # DDIM steps for (2)
    sampler_studies: list[tuple[str, int, list[str]]]  # (3): (MNIST run, samples per sampler, bound flags)
    long_fc: list[str]  # the FcNetwork's longer run: more steps, no more wall time than the exercise U-Net's
    ddim_steps: list[int] = field(default_factory=lambda: [100, 50])


FULL = Budget(
    toy_train=["--epochs", "2", "--num-train", "1000000", "--batch-size", "1000", "--T", "1000",
               "--data-scale", "32", "--num-samples", "500"],
    toy_samples=2000,
    mnist_train=["--epochs", "1", "--num-train", "19200", "--batch-size", "64", "--lr", "1e-3", "--warmup", "50",
                 "--T", "1000", "--grid-samples", "0", "--checkpoint-every", "100"],
    bound_images=200, t_samples=10, quality_samples=250, quality_steps=20,
    sampler_studies=[("fc-long", 300, ["--test-images", "100"]),
                     ("unet", 128, ["--test-images", "200", "--t-samples", "10"])],
    long_fc=["--num-train", "22699", "--epochs", "8"])
QUICK = Budget(
    toy_train=["--epochs", "1", "--num-train", "20000", "--batch-size", "1000", "--T", "100", "--num-samples", "100"],
    toy_samples=500,
    mnist_train=["--epochs", "1", "--num-train", "256", "--batch-size", "64", "--T", "100", "--grid-samples", "0"],
    bound_images=20, t_samples=3, quality_samples=30, quality_steps=5,
    sampler_studies=[("fc-long", 30, ["--test-images", "10"]),
                     ("unet", 8, ["--test-images", "10", "--t-samples", "3"])],
    long_fc=["--num-train", "256", "--epochs", "2"], ddim_steps=[20, 10])

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
                  "wall_seconds": record["wall_seconds"] + time.perf_counter() - start}
        record_file.write_text(json.dumps(record, indent=2) + "\n")
    return {**json.loads((run_dir / "metrics.json").read_text()), **record}


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
def chequerboard_figure(entries: list[tuple[str, np.ndarray]], path: Path) -> None:
    """True density, then one 2-D histogram of samples per variant."""
    dist = toy_distribution("chequerboard")
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


# ----- the page -----------------------------------------------------------------------------------------
def fmt_hist(h: list[float]) -> str:
    return " ".join(f"{100 * v:.0f}" for v in h)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/results", help="where the run directories go (reused when present)")
    p.add_argument("--docs", default="docs", help="where RESULTS.md and results/*.png go")
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of this script, not results")
    args = p.parse_args()
    budget = QUICK if args.quick else FULL
    runs, docs = (ROOT / args.runs).resolve(), (ROOT / args.docs).resolve()
    pictures = docs / "results"
    pictures.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    mnist = ["--data", "mnist", "--data-dir", str(MNIST_DIR)]

    # (1) Chequerboard ---------------------------------------------------------------------------------
    toy_rows, toy_pictures = [], []
    for name, change, flags in TOY_VARIANTS:
        run_dir = runs / f"cb-{name}"
        train_metrics = train(run_dir, ["--data", "cb", *flags, *budget.toy_train])
        record = evaluate(run_dir, "ddpm", ["--num", str(budget.toy_samples)])
        toy_rows.append((name, change, flags, train_metrics, record))
        toy_pictures.append((name, np.load(run_dir / "eval-ddpm.npy")))
    chequerboard_figure(toy_pictures, pictures / "chequerboard.png")

    # (2) MNIST networks -------------------------------------------------------------------------------
    classifier = ensure_classifier()
    mnist_rows = []
    networks = [*MNIST_NETS, ("fc-long", f"FcNetwork as above, `{' '.join(budget.long_fc)}`",
                              [*MNIST_NETS[0][2], *budget.long_fc])]
    for name, what, flags in networks:
        run_dir = runs / f"mnist-{name}"
        train_metrics = train(run_dir, [*mnist, *budget.mnist_train, *flags])  # later flags override
        bound = evaluate(run_dir, "bound", ["--no-samples", "--test-images", str(budget.bound_images),
                                            "--t-samples", str(budget.t_samples)])
        quality = evaluate(run_dir, f"ddim{budget.quality_steps}", [
            "--no-bound", "--num", str(budget.quality_samples), "--steps", str(budget.quality_steps)])
        grid = copy_picture(run_dir / f"eval-ddim{budget.quality_steps}.png", pictures / f"mnist-{name}.png")
        mnist_rows.append((name, what, flags, train_metrics, bound, quality, grid))

    # (3) samplers and sigma_t^2 ------------------------------------------------------------------------
    studies = []
    for net, num, bound_flags in budget.sampler_studies:
        run_dir = runs / f"mnist-{net}"
        rows = []
        for variance in ("beta", "beta_tilde"):
            tag = f"ddpm-{variance}-n{num}"
            record = evaluate(run_dir, tag, ["--num", str(num), "--variance", variance, *bound_flags])
            grid = copy_picture(run_dir / f"eval-{tag}.png", pictures / f"sampler-{net}-ddpm-{variance}.png")
            rows.append((f"DDPM (Alg. 2), {record['diffusion']['T']} steps, sigma_t^2 = {variance}",
                         record["diffusion"]["T"], record, grid))
        for steps in budget.ddim_steps:
            tag = f"ddim{steps}-n{num}"
            record = evaluate(run_dir, tag, ["--no-bound", "--num", str(num), "--steps", str(steps)])
            grid = copy_picture(run_dir / f"eval-{tag}.png", pictures / f"sampler-{net}-ddim{steps}.png")
            rows.append((f"DDIM, {steps} steps (eta = 0)", steps, record, grid))
        studies.append((net, num, bound_flags, rows))
    per_t_figure([(f"{net}, sigma_t^2 = {v}", rows[i][2]["bound"]["per_t"]) for net, _, _, rows in studies
                  for i, v in enumerate(("beta", "beta_tilde")) if rows[i][2]["bound"]["per_t"]],
                 pictures / "bound-per-t.png")
    histogram_figure([(n, q["samples"]["label_histogram"]) for n, _, _, _, _, q, _ in mnist_rows]
                     + [("real (train)", mnist_rows[0][5]["samples"]["floor"]["label_histogram"])],
                     pictures / "mnist-labels.png")

    page = render(budget, classifier, toy_rows, mnist_rows, studies, args, runs)
    (docs / "RESULTS.md").write_text(page)
    log(f"wrote {docs / 'RESULTS.md'}")


def render(budget: Budget, classifier: dict, toy_rows, mnist_rows, studies, args, runs: Path) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model_name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("model name"))
    except (OSError, StopIteration):
        model_name = cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    beta_1 = mnist_rows[0][4]["diffusion"]["beta_1"]
    flags = lambda f: "`" + " ".join(f) + "`"  # noqa: E731
    L = []
    add = L.append
    add("# pyddpm results: the exercise's questions, answered by measurement\n")
    add("*This page is generated by `python benchmarks/results.py`; do not edit it by hand. Every number comes "
        "from a `pyddpm-train` run measured by `pyddpm-eval`; the flags are listed beside each table, and the run "
        "directories are cached, so rerunning the script resumes or re-renders.*\n")
    add(f"**Machine.** Everything below ran on the **CPU** ({model_name}, {os.cpu_count()} cores shared with other "
        f"work, torch {torch.__version__}); {'no GPU was used' if gpu is None else 'a GPU was present but unused'}. "
        "Training budgets are therefore small and are stated with every table: the numbers compare settings at "
        "equal budget, they are not converged results. Times are wall-clock on a shared machine and carry its load.\n")
    add(f"**Metrics.** *Bits/dim*: the full variational bound L = L_T + sum_(t>=2) L_(t-1) + L_0 of Ho et al. "
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

    # (1)
    add("## 1. Can the Chequerboard fit be improved by the architecture?\n")
    add(f"Six FcNetwork variants trained with the same budget {flags(budget.toy_train)} (seed 0), each measured on {budget.toy_samples} samples from Algorithm 2 with all "
        f"T = {toy_rows[0][4]['diffusion']['T']} steps "
        "(`pyddpm-eval RUN --num N`). Support fraction: samples inside the five squares (truth: 100%). Energy "
        "distance to fresh true samples, beside its floor (two true samples of the same size).\n")
    add("| variant | change | hidden x depth, activation, t | parameters | support fraction | energy distance "
        "(floor) | min / max square mass (truth 0.200) | training time |")
    add("|---|---|---|---:|---:|---:|---:|---:|")
    for name, change, f, tm, rec in toy_rows:
        s = rec["samples"]
        add(f"| {name} | {change} | {f[1]} x {f[3]}, {f[5]}, {f[7]} | {rec['parameters']:,} | "
            f"{s['support_fraction']:.1%} | {s['energy_distance']:.2e} ({s['energy_distance_floor']:.1e}) | "
            f"{min(s['square_mass']):.3f} / {max(s['square_mass']):.3f} | {tm['wall_seconds'] / 60:.1f} min |")
    base = toy_rows[0][4]["samples"]
    changes = sorted(toy_rows[1:], key=lambda r: -r[4]["samples"]["support_fraction"])
    add("\n![Chequerboard samples per variant](results/chequerboard.png)\n")
    add(f"**Answer: yes.** With the same {toy_rows[0][3]['steps']} optimizer steps, the exercise's network puts "
        f"{base['support_fraction']:.1%} of its samples inside the squares (energy distance "
        f"{base['energy_distance']:.1e}). "
        "Support fraction (energy distance) per change, best first: " + "; ".join(
            f"{r[1]}: {r[4]['samples']['support_fraction']:.1%} ({r[4]['samples']['energy_distance']:.1e})"
            for r in changes)
        + ". In the picture the exercise's network draws a blurred X through the gaps between the squares; single "
          "changes sharpen it only in part, and all four together give five separate squares.\n")

    # (2)
    add("## 2. Can a fully connected network learn MNIST?\n")
    add(f"Three networks with the same training budget {flags(budget.mnist_train)} (seed 0, EMA 0.999 weights), "
        f"on the shared MNIST training images, and the FcNetwork once more with `{' '.join(budget.long_fc)}` "
        "(~10x the steps, in no more wall time than the exercise U-Net). "
        f"Bits/dim on the first {budget.bound_images} test images with "
        f"`--t-samples {budget.t_samples}`; sample quality on {budget.quality_samples} samples drawn by DDIM with "
        f"{budget.quality_steps} steps (`pyddpm-eval RUN --steps {budget.quality_steps} --num "
        f"{budget.quality_samples}`; Algorithm 2's 1000 steps are too slow for the U-Nets on this CPU).\n")
    add("| network | parameters | training: steps x batch (time) | bits/dim (+- s.e.) | Frechet distance "
        "(floor) | label TV from uniform (floor) | confidence (floor) | sampling time / sample |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|")
    batch = budget.mnist_train[budget.mnist_train.index("--batch-size") + 1]
    for name, what, f, tm, b, q, _ in mnist_rows:
        bb, s = b["bound"], q["samples"]
        fl = s["floor"]
        add(f"| {what} | {b['parameters']:,} | {tm['steps']} x {batch} ({tm['wall_seconds'] / 60:.1f} min) | "
            f"{bb['bits_per_dim']:.3f} +- {bb['standard_error']:.3f} | {s['frechet_distance']:.2f} "
            f"({fl['frechet_distance']:.2f}) | {s['label_tv_from_uniform']:.3f} ({fl['label_tv_from_uniform']:.3f}) | "
            f"{s['mean_confidence']:.3f} ({fl['mean_confidence']:.3f}) | {s['seconds_per_sample']:.2f} s |")
    add("\nSamples (the first 100 of each set):\n")
    add("| " + " | ".join(what for _, what, *_ in mnist_rows) + " |")
    add("|" + "---|" * len(mnist_rows))
    add("| " + " | ".join(f"![{n}]({g})" for n, *_, g in mnist_rows) + " |")
    add("\n![label histograms](results/mnist-labels.png)\n")
    add("Bound parts (bits/dim, mean over images): L_T / sum L_(t-1) / L_0: " + "; ".join(
        f"{n}: {b['bound']['prior_L_T']:.1e} / {b['bound']['diffusion_sum_L_t']:.3f} / {b['bound']['decoder_L_0']:.3f}"
        for n, _, _, _, b, _, _ in mnist_rows) + ".\n")
    by_name = {n: (what, tm, b["bound"], q["samples"]) for n, what, _, tm, b, q, _ in mnist_rows}

    def summary(name: str) -> str:
        _, tm, bb, ss = by_name[name]
        return (f"{bb['bits_per_dim']:.2f} +- {bb['standard_error']:.2f} bits/dim, Frechet distance "
                f"{ss['frechet_distance']:.0f}")

    equal = [n for n, *_ in MNIST_NETS]
    ranked = sorted(equal, key=lambda n: by_name[n][2]["bits_per_dim"])
    floor = by_name["fc"][3]["floor"]["frechet_distance"]
    add(f"**Answer.** At the equal budget of {by_name['fc'][1]['steps']} steps the ranking by bits/dim is "
        + " < ".join(f"{by_name[n][0]} ({summary(n)})" for n in ranked)
        + f"; the real-data floor of the Frechet distance is {floor:.0f}. Given {by_name['fc-long'][1]['steps']} "
          f"steps ({by_name['fc-long'][1]['wall_seconds'] / 60:.0f} min; the exercise U-Net's "
          f"{by_name['unet'][1]['steps']} took {by_name['unet'][1]['wall_seconds'] / 60:.0f} min), the FcNetwork "
          f"reaches {summary('fc-long')}, "
          f"with its samples' labels {by_name['fc-long'][3]['label_tv_from_uniform']:.2f} in total variation from "
          f"uniform (real images: {by_name['fc-long'][3]['floor']['label_tv_from_uniform']:.2f}).")

    def versus(name: str) -> str:
        """fc-long's bound against ``name``'s, in combined standard errors."""
        a, b = by_name["fc-long"][2], by_name[name][2]
        z = (a["bits_per_dim"] - b["bits_per_dim"]) / math.hypot(a["standard_error"], b["standard_error"])
        where = "level with" if abs(z) < 2 else ("behind" if z > 0 else "ahead of")
        return (f"{where} {by_name[name][0]} after {by_name[name][1]['steps']} ({b['bits_per_dim']:.2f} +- "
                f"{b['standard_error']:.2f}; {abs(z):.1f} combined standard errors apart)")

    one_class = [n for n in by_name if by_name[n][3]["label_tv_from_uniform"] > 0.89]  # 0.9 = all in one class
    ratio = min(v[3]["frechet_distance"] / v[3]["floor"]["frechet_distance"] for v in by_name.values())
    add(f"So after {by_name['fc-long'][1]['steps']} steps the FcNetwork's bound is {versus('unet')} and "
        f"{versus('unet-ddpm')}"
        + (f"; the classifier puts every sample of {', '.join(one_class)} into one class" if one_class else "")
        + f". No model is close to real digits yet (every Frechet distance is at least {ratio:.0f}x its floor): "
          "these are CPU-minute budgets, and the ranking, not the level, is the result.\n")

    # (3)
    add("## 3. sigma_t^2 = beta_t vs beta_tilde_t, and DDPM (1000 steps) vs DDIM (50 / 100 steps)\n")
    add("Two of the trained MNIST networks of section 2, each sampled by Algorithm 2 with both variances and by DDIM "
        "(seed 0; Algorithm 2's T network calls per sample limit the sample counts on this CPU). The bound depends "
        "on sigma_t^2 only, so it is given for both variances. Time: sampling wall-clock per sample on this shared "
        "CPU (the fused reverse-step op; noisy, so the machine-independent cost, network calls per sample, is "
        "given beside it).\n")
    for net, num, bound_flags, rows in studies:
        what = next(w for n, w, *_ in mnist_rows if n == net)
        add(f"### {what}: {num} samples per sampler; bound `{' '.join(bound_flags)}`\n")
        add("| sampler | bits/dim (+- s.e.) | Frechet distance (floor) | label TV (floor) | confidence (floor) | "
            "network calls / sample | time / sample |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        for label, calls, rec, _ in rows:
            s, fl = rec["samples"], rec["samples"]["floor"]
            bound = (f"{rec['bound']['bits_per_dim']:.3f} +- {rec['bound']['standard_error']:.3f}" if "bound" in rec
                     else "-")
            add(f"| {label} | {bound} | {s['frechet_distance']:.1f} ({fl['frechet_distance']:.1f}) | "
                f"{s['label_tv_from_uniform']:.3f} ({fl['label_tv_from_uniform']:.3f}) | {s['mean_confidence']:.3f} "
                f"({fl['mean_confidence']:.3f}) | {calls} | {s['seconds_per_sample']:.3f} s |")
        add("\n| " + " | ".join(label for label, *_ in rows) + " |")
        add("|" + "---|" * len(rows))
        add("| " + " | ".join(f"![{label}]({g})" for label, _, _, g in rows) + " |\n")
        (_, _, beta_rec, _), (_, _, tilde_rec, _) = rows[:2]
        b1, b2 = beta_rec["bound"]["bits_per_dim"], tilde_rec["bound"]["bits_per_dim"]
        fds = [r[2]["samples"]["frechet_distance"] for r in rows]
        run_dir = runs / f"mnist-{net}"
        x_beta, x_tilde = (np.load(run_dir / f"eval-ddpm-{v}-n{num}.npy") for v in ("beta", "beta_tilde"))
        add(f"With the same seed the two variances' samples differ by {np.abs(x_beta - x_tilde).mean():.1e} per "
            f"pixel on average (pixels in [0, 1]; two different samples differ by "
            f"{np.abs(x_beta - x_beta[::-1]).mean():.2f}): sigma_t^2 = beta_t and beta_tilde_t differ only at small t, "
            "where beta_tilde_t < beta_t, so the two samplers draw nearly the same images.")
        add(f"For this network sigma_t^2 = beta_t gives {b1:.2f} bits/dim and beta_tilde_t {b2:.2f}: the "
            f"{'larger' if b1 < b2 else 'smaller'} variance is the tighter bound. The Frechet distances of the four "
            f"samplers span {min(fds):.0f} to {max(fds):.0f} against a floor of "
            f"{rows[0][2]['samples']['floor']['frechet_distance']:.0f}.\n")
    same = max(abs(rows[0][2]["samples"]["frechet_distance"] - rows[1][2]["samples"]["frechet_distance"])
               for *_, rows in studies)
    tighter = all(rows[0][2]["bound"]["bits_per_dim"] < rows[1][2]["bound"]["bits_per_dim"] for *_, rows in studies)
    names = {n: w for n, w, *_ in mnist_rows}
    fd = lambda row: row[2]["samples"]["frechet_distance"]  # noqa: E731
    ddim_better = [names[net] for net, _, _, rows in studies if max(map(fd, rows[2:])) < min(map(fd, rows[:2]))]
    add("**Answer.** "
        + (f"sigma_t^2 = beta_t gives the tighter bound on {'both networks' if len(studies) == 2 else 'every network'}"
           if tighter else "Neither variance gives the tighter bound on every network")
        + "; with shared noise the two variances draw almost the same images, so their Frechet distances agree "
          f"within {same:.1f}. DDIM needs "
        + " and ".join(f"{studies[0][3][0][1] // r[1]}x" for r in studies[0][3][2:])
        + " fewer network calls than Algorithm 2 ("
        + ", ".join(f"{r[0].split(',')[1].strip()}" for r in studies[0][3][2:]) + ")"
        + (f", and at this training budget it even gives the lower Frechet distance for {', '.join(ddim_better)}"
           if ddim_better else "")
        + ". Measured at these budgets, the few-step sampler is the better use of CPU time.\n")
    curves = [net for net, _, _, rows in studies if rows[0][2]["bound"]["per_t"]]
    if curves:
        add("![per-t terms of the bound](results/bound-per-t.png)\n")
        add(f"Where the bits go ({', '.join(curves)}, all T terms): the mean of each term L_(t-1) against t for the "
            "two variances.\n")

    add("## Reproduce\n")
    add("```\npyddpm-classifier          # once: the MNIST classifier (cached)\n"
        f"python benchmarks/results.py                  # everything on this page (cached run dirs in {args.runs})\n"
        "```\n")
    total = (sum(r[3]["wall_seconds"] for r in toy_rows) + sum(r[3]["wall_seconds"] for r in mnist_rows)
             + sum(r[4]["eval_seconds"] for r in toy_rows)
             + sum(r[4]["eval_seconds"] + r[5]["eval_seconds"] for r in mnist_rows)
             + sum(r[2]["eval_seconds"] for *_, rows in studies for r in rows))
    add(f"All training and evaluation above took {total / 60:.0f} min of wall-clock time on this machine, plus "
        f"{classifier['train_seconds'] / 60:.0f} min for the classifier.\n")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
