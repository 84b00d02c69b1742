"""Sample quality against network calls (NFE) for every pyddpm sampler beside diffusers' schedulers on the same trained
network, the same x_T and the same seeds; writes docs/solvers.md (tables stamped with CPU, date and command) and
docs/solvers.png (quality against NFE, one line per sampler).

    python benchmarks/bench_solvers.py --toy RUN_DIR [--mnist RUN_DIR] [--num 20000] [--mnist-num 512]

Toy (the default Chequerboard run): the share of samples inside the five squares with its standard error, and the
worst square's deviation from 0.2 of that share. MNIST: the Frechet distance in pyddpm's classifier's features to
the test set (bootstrap s.d.) beside the real-data floor, and the label histogram's total variation from uniform.
Points: NFE 5, 8, 10, 20 and 50, and Algorithm 2 at T = 1000; ms per sample of each. Then the solver loop's cost
over the network alone, and the whole `pyddpm-sample` command's wall time by default against `--eager` at each NFE.
diffusers is a benchmark and test dependency only; its schedulers see pyddpm's network as an epsilon predictor of
the same linear schedule (0-based step s = t - 1, network time s / T), with trailing spacing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyddpm import ops  # noqa: E402
from pyddpm.accel import sampling_network  # noqa: E402
from pyddpm.data import load_images, toy_distribution  # noqa: E402
from pyddpm.evaluate.toy import toy_metrics  # noqa: E402
from pyddpm.samplers import model_to_data, plan_for, run_plan  # noqa: E402
from pyddpm.solvers import DEFAULT_SAMPLER, DEFAULT_STEPS  # noqa: E402
from pyddpm.store import load_model, tuned_timesteps  # noqa: E402

NFES = (5, 8, 10, 20, 50)
PYDDPM = {  # row -> plan options
    "pyddpm ddim": dict(sampler="ddim"),
    "pyddpm dpm++2m": dict(sampler="dpm++2m"),
    "pyddpm dpm++3m": dict(sampler="dpm++3m"),
    "pyddpm sde-dpm++2m": dict(sampler="sde-dpm++2m"),
    "pyddpm unipc": dict(sampler="unipc"),
}
DIFFUSERS = {  # row -> (scheduler class name, its options)
    "diffusers DDIM, trailing": ("DDIMScheduler", dict(set_alpha_to_one=True, clip_sample=False)),
    "diffusers DPM-Solver++ 2M": ("DPMSolverMultistepScheduler", dict(solver_order=2)),
    "diffusers DPM-Solver++ 3M": ("DPMSolverMultistepScheduler", dict(solver_order=3)),
    "diffusers SDE-DPM-Solver++ 2M": ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++")),
    "diffusers UniPC (bh2)": ("UniPCMultistepScheduler", dict(solver_type="bh2")),
}


def cpu_name() -> str:
    """The CPU's model name, family/model and widest vector extension, with the threads used."""
    info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = info.get("flags", "").split()
    vector = "AMX" if "amx_tile" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else \
        "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    name = info.get("model name", platform.processor())
    return f"{name} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, {vector}), " \
           f"{torch.get_num_threads()} threads"


def run_description(run: str) -> str:
    """What trained ``run``: its data, network, epochs and seed, from its config.json."""
    train = json.loads((Path(run) / "config.json").read_text())["train"]
    return (f"`pyddpm-train --data {train['data']} --net {train['net']} --epochs {train['epochs']} "
            f"--seed {train['seed']}`")


def diffusers_sample(model, network, name: str, nfe: int, x_T: torch.Tensor, seed: int) -> torch.Tensor:
    """x_0 from diffusers' scheduler ``name`` driving ``network`` from x_T (float32, as diffusers runs)."""
    import diffusers

    cls, options = DIFFUSERS[name]
    scheduler = getattr(diffusers, cls)(num_train_timesteps=model.T, beta_start=model.beta_1, beta_end=model.beta_T,
                                        beta_schedule="linear", timestep_spacing="trailing", **options)
    scheduler.set_timesteps(nfe)
    generator = torch.Generator().manual_seed(seed)
    x = x_T.clone()
    for s in scheduler.timesteps:
        eps = network(x, torch.full((len(x), 1), float(s) / model.T))
        x = scheduler.step(eps, s, x, generator=generator).prev_sample if "SDE" in name else \
            scheduler.step(eps, s, x).prev_sample
    return x


def draw(model, config, row: str, nfe: int | None, num: int, batch: int, tuned: dict) -> tuple[torch.Tensor, float]:
    """``num`` samples (data space) of ``row`` with ``nfe`` calls, in batches of ``batch``; and ms per sample."""
    network = sampling_network(model)
    shape = tuple(config["data"]["shape"])
    out, start = [], time.perf_counter()
    with torch.no_grad():
        for lo in range(0, num, batch):
            b = min(batch, num - lo)
            if row.startswith("diffusers"):
                x_T = ops.normal_noise((b, *shape), seed=0, sample_offset=lo)
                x = diffusers_sample(model, network, row, nfe, x_T, seed=lo)
            else:
                plan = plan_for(model, "ddpm") if row == "Algorithm 2" else \
                    plan_for(model, **tuned[row]) if row in tuned else plan_for(model, steps=nfe, **PYDDPM[row])
                x = run_plan(model, (b, *shape), plan, seed=0, sample_offset=lo, fast=True, runtime="torch")
            out.append(model_to_data(x, config["data"]))
    return torch.cat(out), 1000 * (time.perf_counter() - start) / num


def toy_quality(samples: torch.Tensor) -> dict:
    """Support fraction (with its s.e.), the worst square's deviation from 0.2 of it, and the energy distance of the
    first 4,000 samples to 4,000 true ones (``pyddpm.evaluate.toy``; its floor is in the page)."""
    board = toy_distribution("chequerboard")
    index = board.square_index(samples.double())
    inside = float((index >= 0).float().mean())
    shares = [float((index == k).float().mean()) / max(inside, 1e-12) for k in range(5)]
    metrics = toy_metrics(board, samples, seed=1)
    return {"support": inside, "se": math.sqrt(inside * (1 - inside) / len(samples)),
            "worst": max(abs(s - 0.2) for s in shares), "energy": metrics["energy_distance"],
            "energy_floor": metrics["energy_distance_floor"]}


class MnistScore:
    """Frechet distance (with a bootstrap s.d.) and label TV of sample pixels in pyddpm's classifier's features."""

    def __init__(self, device="cpu"):
        from pyddpm.evaluate.classifier import classify, default_classifier_path, load_classifier
        from pyddpm.evaluate.frechet import gaussian_statistics

        self.classify = classify
        self.classifier, _ = load_classifier(default_classifier_path("mnist"), device)
        test, _ = load_images("mnist", "test")
        self.reference = gaussian_statistics(classify(self.classifier, test.float() / 255)[0])

    def __call__(self, samples: torch.Tensor, boot: int = 20) -> dict:
        from pyddpm.evaluate.frechet import frechet_distance, gaussian_statistics, quality_metrics

        images = (samples * 255).floor().clamp(0, 255).reshape(-1, 1, 28, 28) / 255
        features, probabilities = self.classify(self.classifier, images)
        metrics = quality_metrics(features, probabilities, self.reference)
        gen = torch.Generator().manual_seed(0)
        draws = [frechet_distance(*gaussian_statistics(features[torch.randint(0, len(features), (len(features),),
                                                                              generator=gen)]), *self.reference)
                 for _ in range(boot)]
        return {"fd": metrics["frechet_distance"], "fd_sd": float(torch.tensor(draws).std()),
                "tv": metrics["label_tv_from_uniform"]}


def quality_table(model, config, score, cell, num: int, batch: int, nfes, tuned: dict, rows) -> tuple[str, dict]:
    """A Markdown table (row x NFE, ms per sample at NFE 10) and the raw results."""
    results = {}
    for row in rows:
        for nfe in nfes:
            try:
                samples, ms = draw(model, config, row, nfe, num, batch, tuned)
            except ValueError as err:  # e.g. a third-order sampler at too few steps
                print(f"{row} NFE {nfe}: {err}", flush=True)
                continue
            results[row, nfe] = {**score(samples), "ms": ms}
            print(f"{row:32s} NFE {nfe:4d}: {cell(results[row, nfe])}  {ms:.3f} ms/sample", flush=True)
    samples, ms = draw(model, config, "Algorithm 2", None, num, batch, tuned)
    results["Algorithm 2", model.T] = {**score(samples), "ms": ms}
    print(f"Algorithm 2 NFE {model.T}: {cell(results['Algorithm 2', model.T])}  {ms:.3f} ms/sample", flush=True)
    header = "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " | ms/sample at NFE 10 |\n|---|" + \
        "---:|" * (len(nfes) + 1) + "\n"
    lines = []
    for row in rows:
        cells = [cell(results[row, n]) if (row, n) in results else "" for n in nfes]
        ms = results.get((row, 10), {}).get("ms")
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {'' if ms is None else f'{ms:.3f}'} |")
    a2 = results["Algorithm 2", model.T]
    lines.append(f"| Algorithm 2, NFE {model.T} | {cell(a2)} |" + " |" * (len(nfes) - 1) + f" {a2['ms']:.3f} |")
    return header + "\n".join(lines) + "\n", results


def plot(results: dict, rows, nfes, key: str, label: str, path: Path, title: str, reference: float) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in rows:
        xs = [n for n in nfes if (row, n) in results]
        ax.plot(xs, [results[row, n][key] * (100 if key == "support" else 1) for n in xs], marker="o",
                linestyle="--" if row.startswith("diffusers") else "-", label=row)
    ax.axhline(reference * (100 if key == "support" else 1), color="k", linewidth=0.8, label="Algorithm 2, NFE 1000")
    ax.set_xscale("log")
    ax.set_xticks(list(nfes), [str(n) for n in nfes])
    ax.set_xlabel("network calls (NFE)")
    ax.set_ylabel(label)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def loop_cost(model, config, batch: int, reps: int = 5) -> str:
    """Median ms per call of the default sampler's loop against the same network's forward alone, interleaved."""
    network = sampling_network(model)
    shape = (batch, *config["data"]["shape"])
    plan = plan_for(model, DEFAULT_SAMPLER, DEFAULT_STEPS)
    x = torch.randn(shape)
    t_in = model.time_input(plan.timesteps[0], batch)
    loop, alone = [], []
    with torch.no_grad():
        for _ in range(reps):
            start = time.perf_counter()
            run_plan(model, shape, plan, seed=0, fast=True, runtime="torch")
            loop.append((time.perf_counter() - start) / plan.nfe)
            start = time.perf_counter()
            for _ in range(plan.nfe):
                network(x, t_in)
            alone.append((time.perf_counter() - start) / plan.nfe)
    a, b = sorted(loop)[reps // 2] * 1000, sorted(alone)[reps // 2] * 1000
    return f"| {config['data']['name']}, batch {batch} | {a:.3f} | {b:.3f} | {a / b:.3f} |"


def command_cost(run: str, nfes, num: int, reps: int = 3) -> str:
    """Median wall seconds of `pyddpm-sample RUN --num N --steps K` by default and with --eager, interleaved."""
    lines = []
    for nfe in nfes:
        times = {"default": [], "--eager": []}
        for _ in range(reps):
            for name, extra in (("default", []), ("--eager", ["--eager"])):
                cmd = [sys.executable, "-m", "pyddpm.cli.sample", run, "--num", str(num), "--steps", str(nfe),
                       "--out", "/tmp/bench_solvers.npy", *extra]
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
        d, e = (sorted(v)[reps // 2] for v in times.values())
        lines.append(f"| {nfe} | {d:.2f} | {e:.2f} | {d / e:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", required=True, help="the default Chequerboard run (pyddpm-train)")
    p.add_argument("--mnist", default=None, help="a trained exercise U-Net on MNIST (optional)")
    p.add_argument("--num", type=int, default=20000, help="toy samples per cell (default 20000)")
    p.add_argument("--mnist-num", type=int, default=512, help="MNIST samples per cell (default 512)")
    p.add_argument("--mnist-nfe", default="5,10,20", help="MNIST NFEs (default 5,10,20)")
    p.add_argument("--docs", default="docs", help="where solvers.md and the plots go (default docs)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    argv = [{args.toy: "TOY_RUN", args.mnist: "MNIST_RUN"}.get(a, a) for a in sys.argv[1:]]
    runs = "; ".join(f"{name}: {run_description(run)}"
                     for name, run in (("TOY_RUN", args.toy), ("MNIST_RUN", args.mnist)) if run)
    stamp = (f"{cpu_name()}, torch {torch.__version__}, {datetime.date.today()}; command: "
             f"`python benchmarks/bench_solvers.py {shlex.join(argv)}` ({runs})")
    docs = Path(args.docs)
    rows = list(PYDDPM) + list(DIFFUSERS)
    model, config = load_model(args.toy, "cpu")
    tuned = {f"pyddpm {s}, tuned steps": dict(sampler=s, timesteps=ts) for (s, n), ts in tuned_timesteps(args.toy).items()}
    toy_rows = rows[:len(PYDDPM)] + list(tuned) + rows[len(PYDDPM):]
    page = ["# Few-step samplers: quality against network calls", "",
            "Generated by `benchmarks/bench_solvers.py`; every number below is from one run of it.", "",
            f"## The default Chequerboard run ({args.num:,} samples a cell)", "", f"Measured on {stamp}.", "",
            "Each cell: the share inside the five squares, then (in brackets) the worst square's deviation from "
            "0.2 of that share, then the energy distance to true samples (x 1e-4). pyddpm rows use trailing "
            "spacing unless they say tuned.", ""]
    cell = lambda r: f"{100 * r['support']:.2f}% ({r['worst']:.4f}) {1e4 * r['energy']:.1f}"  # noqa: E731
    table, toy = quality_table(model, config, toy_quality, cell, args.num, args.num, NFES, tuned, toy_rows)
    a2 = toy["Algorithm 2", model.T]
    page += [table, f"Algorithm 2's standard error: {100 * a2['se']:.2f} points. The energy distance's floor (two "
             f"true samples of 4,000): {1e4 * a2['energy_floor']:.1f} x 1e-4.", "",
             "![support against NFE](solvers.png)", ""]
    plot(toy, toy_rows, NFES, "support", "share inside the squares (%)", docs / "solvers.png",
         f"default Chequerboard run, {args.num} samples — {cpu_name()}", a2["support"])
    page += ["## The solver loop's cost over the network alone", "", f"Measured on {stamp}.", "",
             "| workload | ms per call, loop | ms per call, network alone | ratio |", "|---|---:|---:|---:|",
             loop_cost(model, config, 5000)]
    whole_run = args.toy
    if args.mnist:
        mnist, mconfig = load_model(args.mnist, "cpu")
        score = MnistScore()
        nfes = tuple(int(v) for v in args.mnist_nfe.split(","))
        cell = lambda r: f"{r['fd']:.1f} ± {r['fd_sd']:.1f} (TV {r['tv']:.3f})"  # noqa: E731
        mtuned = {f"pyddpm {s}, tuned steps": dict(sampler=s, timesteps=ts)
                  for (s, n), ts in tuned_timesteps(args.mnist).items()}
        mrows = rows[:len(PYDDPM)] + list(mtuned) + rows[len(PYDDPM):]
        table, mres = quality_table(mnist, mconfig, score, cell, args.mnist_num, 128, nfes, mtuned, mrows)
        test, _ = load_images("mnist", "train")
        floor = score(test[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.mnist_num]]
                      .reshape(-1, 784).float() / 255)
        page += ["", f"## An exercise U-Net on MNIST ({args.mnist_num} samples a cell)", "", f"Measured on {stamp}.",
                 "", "Each cell: the Frechet distance in pyddpm's classifier's features to the test set ± its "
                 "bootstrap s.d., then the label histogram's total variation from uniform. Real-data floor "
                 f"({args.mnist_num} training images): {floor['fd']:.1f} ± {floor['fd_sd']:.1f} (TV {floor['tv']:.3f}).",
                 "", table, "", "| workload | ms per call, loop | ms per call, network alone | ratio |",
                 "|---|---:|---:|---:|", loop_cost(mnist, mconfig, 64)]
        whole_run = args.mnist
    whole = "MNIST_RUN" if args.mnist else "TOY_RUN"
    page += ["", f"## The whole command: `pyddpm-sample {whole} --num 64 --steps N`", "",
             f"Measured on {stamp}. Median wall seconds of three runs each, interleaved, the process included.", "",
             "| NFE | default | --eager | ratio |", "|---:|---:|---:|---:|",
             command_cost(whole_run, NFES[:4], 64)]
    (docs / "solvers.md").write_text("\n".join(page) + "\n")
    print(f"wrote {docs / 'solvers.md'} and {docs / 'solvers.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
