"""Where the time goes on the CPU, side by side in one process: sampling (ms per reverse step) and training
(images or points per second) for pyddpm's three networks, every pyddpm path beside the loops users compare with.

Sampling, per network and batch, each a loop of --steps reverse steps, medians over --repeats interleaved runs:

    network alone      the network's forward in eager float32 (what any loop costs at least)
    course loop        the exercise's Algorithm 2: eager network, torch.randn and the update formula
    diffusers          the eager network and diffusers' DDPMScheduler.step (when diffusers is installed)
    pyddpm --eager     pyddpm's samplers with the network as trained (DDPM.sample; short loops of the CLI)
    pyddpm fp32        the fused update around the network's fast copy (pyddpm.accel; the CLI's long loops)
    pyddpm bf16        pyddpm.accel.fast_network with --precision bf16
    pyddpm's network alone   the fast copy's forward; the loop's overhead over it is the median ratio of
                       --overhead-pairs adjacent pairs of runs (A B, B A, ...), with a ~95% interval
    onnxruntime        pyddpm's own step.onnx (network and update) in onnxruntime, numpy noise

Training, per network: optimizer steps of pyddpm's Trainer (data path, loss, backward, AdamW, EMA) with
--eager (the default until this benchmark), the default fast network, and --precision bf16.

    python benchmarks/bench_cpu.py [--threads 2] [--repeats 5] [--nets toy,unet,unet-ddpm] [--json out.json]

Levers (--levers): each pyddpm.accel lever's end-to-end gain, the time of the fast copy without that lever over the
time with every lever, for float32 sampling (network and fused update) and training (pyddpm's Trainer), side by
side in one run with the eager network; --write-docs puts the table, stamped with CPU, date and command, into
docs/performance.md between its bench_cpu:levers markers (without --levers, the tables of every path go
between its bench_cpu:paths markers). The table in pyddpm/accel/levers.py quotes these gains.

    python benchmarks/bench_cpu.py --levers --repeats 7 --write-docs

Trained runs (``pyddpm-train``) for the networks can be given with --toy-run/--unet-run/--ddpm-unet-run; otherwise
the benchmark trains short runs itself (cached in runs/bench_cpu). Pin the threads (--threads) and run nothing else.
Like pyddpm's command-line tools, the process keeps freed memory for reuse (``pyddpm.accel.memory``), for all candidates.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench_export import onnx_sampler_module
from gpu_check_parts import course_loop, ddpm_scheduler, diffusers_loop
from machine import cpu_model
from pyddpm import DDPM
from pyddpm.cli.train import main as train_main
from pyddpm.config import TrainConfig
from pyddpm.export import export_run
from pyddpm import ops
from pyddpm.accel import keep_freed_memory, levers_for, native_bf16, sampling_network, training_network
from pyddpm.accel.fast_network import fast_network
from pyddpm.accel.levers import CPU_CLASSES
from pyddpm.nets import build_network
from pyddpm.samplers import ddpm_sample
from pyddpm.store import load_model
from pyddpm.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"
NETS = {  # name: (label, pyddpm-train flags of the run trained when none is given, sampling batch, training batch)
    "toy": ("toy FcNetwork 256 x 4 (default)", ["--data", "cb", "--max-steps", "300"], 5000, 1000),
    "unet": ("exercise U-Net", ["--data", "mnist", "--net", "unet", "--max-steps", "100", "--batch-size", "64"], 64,
             128),
    "unet-ddpm": ("DDPM U-Net 32,64,64, 1 res. block", ["--data", "mnist", "--net", "unet-ddpm", "--channels",
                                                        "32,64,64", "--num-res-blocks", "1", "--max-steps", "30",
                                                        "--batch-size", "32"], 32, 64),
}


def trained_run(name: str, given: str | None) -> Path:
    if given:
        return Path(given)
    run = ROOT / "runs" / "bench_cpu" / name
    if not (run / "metrics.json").exists():
        flags = NETS[name][1] + (["--data-dir", str(MNIST_DIR)] if "mnist" in NETS[name][1] else [])
        assert train_main([*flags, "--grid-samples", "0", "--num-samples", "100", "--device", "cpu",
                           "--out", str(run)]) == 0
    return run


def with_steps(model: DDPM, steps: int) -> DDPM:
    """The model's network in a DDPM of T = ``steps`` (a loop of ``steps`` reverse steps costs what any ``steps``
    steps of the full schedule cost)."""
    return DDPM(model.network, beta_1=float(model.beta[0]), beta_T=float(model.beta[-1]), T=steps).eval()


def onnx_loop(run_dir: Path, shape, steps: int, threads: int, tmp: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_run(run_dir, tmp, formats=("onnx",))
    exported = onnx_sampler_module().ExportedModel(tmp / "step.onnx", threads=threads)
    rng = np.random.default_rng(0)

    def run():
        x = rng.standard_normal(shape, dtype=np.float32)
        for t in range(exported.T, exported.T - steps, -1):
            x = exported.step(x, t, rng.standard_normal(shape, dtype=np.float32))
        return x
    return run


SPIN_SECONDS = 0.3  # how long onnxruntime's threads spin on after a run, slowing what runs next on the cores
BF16 = native_bf16("cpu")  # the bf16 rows: pyddpm refuses bf16 on a CPU without bfloat16 arithmetic
SETTLE_SECONDS = 0.02  # the pause after each run (untimed)


def timed_rounds(candidates: dict, repeats: int, grad: bool = False, spinning=()) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` runs of each candidate after a warm-up (under torch.no_grad() unless
    ``grad``): the candidates run in turn, each round starting one candidate later, so that each is first in a
    round (where the threads wake up) equally often, with SETTLE_SECONDS between runs. After a candidate in
    ``spinning`` (those that run onnxruntime) the next first runs untimed for SPIN_SECONDS
    (0.3 s): onnxruntime's threads spin on after a run and slowed whichever candidate came next (the DDPM U-Net's
    torch forward 1.8x right after it, 1.3x 0.02 s after), and resting that long instead made every short loop
    after it ~7% slower (the toy network's 10 steps: its threads had gone to sleep)."""
    names = list(candidates)
    with torch.set_grad_enabled(grad):
        for f in candidates.values():
            f()
        times = {k: [] for k in names}
        previous = None
        for r in range(repeats):
            for k in names[r % len(names):] + names[:r % len(names)]:
                if previous in spinning:
                    until = time.perf_counter() + SPIN_SECONDS
                    while time.perf_counter() < until:
                        candidates[k]()
                start = time.perf_counter()
                candidates[k]()
                times[k].append(time.perf_counter() - start)
                time.sleep(SETTLE_SECONDS)
                previous = k
    return times


def interleaved(candidates: dict, repeats: int, per: int, grad: bool = False, spinning=()) -> dict[str, float]:
    """Median seconds / ``per`` of each candidate over ``timed_rounds``."""
    return {k: statistics.median(v) / per for k, v in timed_rounds(candidates, repeats, grad, spinning).items()}


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """The median of ``values`` and a distribution-free ~95% interval for it (the order statistics k and n + 1 - k
    with k = floor(n / 2 - 0.98 sqrt(n)), at least the smallest and the largest value)."""
    v, n = sorted(values), len(values)
    k = max(0, math.floor(n / 2 - 0.98 * math.sqrt(n)))
    return statistics.median(v), v[k], v[n - 1 - k]


def loop_overhead(fast_alone, loop, repeats: int) -> dict:
    """The sampling loop's time over its network's forward alone, as the median and ~95% interval of the ratios
    of ``repeats`` adjacent pairs of runs (A B, then B A, ...: drift and round order cancel in each pair)."""
    ratios = []
    with torch.no_grad():
        fast_alone(), loop()
        for r in range(repeats):
            pair = {}
            for k, f in (("alone", fast_alone), ("loop", loop))[::1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                f()
                pair[k] = time.perf_counter() - start
                time.sleep(SETTLE_SECONDS)
            ratios.append(pair["loop"] / pair["alone"] - 1)
    median, low, high = median_interval(ratios)
    return {"pairs": repeats, "median": median, "low": low, "high": high}


def sampling_row(name: str, run_dir: Path, args, tmp: Path) -> dict:
    model, config = load_model(run_dir, "cpu")
    model.eval()
    batch, steps = NETS[name][2], args.steps
    shape = (batch, *config["data"]["shape"])
    short, scheduler = with_steps(model, steps), ddpm_scheduler(steps)
    x, t_in = torch.randn(shape), torch.full((batch, 1), 0.5)
    start = time.perf_counter()
    with torch.no_grad():
        chosen = sampling_network(short)  # the fast copy, as the console scripts' long loops get it
        chosen(x, t_in)
    copy_seconds = time.perf_counter() - start  # making the copy and its first call

    def network_alone():
        for _ in range(steps):
            model.network(x, t_in)

    def fast_alone():
        for _ in range(steps):
            chosen(x, t_in)
    candidates = {
        "network alone": network_alone,
        "course loop": lambda: course_loop(short, shape),
        "diffusers": None if scheduler is None else lambda: diffusers_loop(short, shape, scheduler),
        "pyddpm --eager": lambda: ddpm_sample(short, shape, seed=0, fast=False),
        "pyddpm fp32": lambda: ddpm_sample(short, shape, seed=0, fast=True, runtime="torch"),
        "pyddpm bf16": (lambda: ddpm_sample(short, shape, seed=0, precision="bf16", fast=True)) if BF16 else None,
        "pyddpm's network alone": fast_alone,
        "onnxruntime": onnx_loop(run_dir, shape, steps, args.threads, tmp / name),
    }
    candidates = {k: f for k, f in candidates.items() if f is not None}
    ms = {k: 1e3 * v for k, v in interleaved(candidates, args.repeats, steps, spinning={"onnxruntime"}).items()}
    overhead = loop_overhead(fast_alone, candidates["pyddpm fp32"], args.overhead_pairs)
    return {"net": name, "label": NETS[name][0], "batch": batch, "ms_per_step": ms, "loop_overhead": overhead,
            "copy_seconds": copy_seconds}


def training_seconds(trainers: dict, args) -> dict[str, float]:
    """Median seconds per optimizer step of each Trainer, --train-steps steps a run, interleaved."""
    steps = max(1, args.train_steps)
    counter = {k: 0 for k in trainers}

    def stepper(key):
        def run():
            for _ in range(steps):
                trainers[key].train_step(counter[key])
                counter[key] += 1
        return run
    return interleaved({k: stepper(k) for k in trainers}, args.repeats, steps, grad=True)


def training_row(name: str, args, tmp: Path) -> dict:
    label, flags, _, batch = NETS[name]
    settings = {"eager (until now)": dict(fast=False), "fast (default)": {},
                **({"fast + bf16": dict(precision="bf16")} if BF16 else {})}
    base = dict(net="fc") if name == "toy" else dict(
        data="mnist", data_dir=str(MNIST_DIR), net=name, grid_samples=0,
        **(dict(channels=[32, 64, 64], num_res_blocks=1) if name == "unet-ddpm" else {}))
    trainers = {}
    for key, extra in settings.items():
        cfg = TrainConfig(**{**base, "batch_size": batch, **extra})
        trainers[key] = Trainer(cfg, tmp / f"train-{name}-{len(trainers)}", torch.device("cpu"), resume=False)
    seconds = training_seconds(trainers, args)
    return {"net": name, "label": label, "batch": batch,
            "examples_per_second": {k: batch / s for k, s in seconds.items()}}


LEVER_NETS = {  # name: (network as bench_cpu trains it, sampling batch, training config)
    "toy": (lambda: build_network("fc", input_dim=2, num_hidden=256, num_layers=4, activation="silu",
                                  time_embedding="sinusoidal", input_embedding="fourier"), 5000, dict(net="fc")),
    "unet": (lambda: build_network("unet"), 64, dict(data="mnist", net="unet")),
    "unet-ddpm": (lambda: build_network("unet-ddpm", channels=[32, 64, 64], num_res_blocks=1), 32,
                  dict(data="mnist", net="unet-ddpm", channels=[32, 64, 64], num_res_blocks=1)),
}


def sampling_loop(model: DDPM, network, shape, steps: int):
    """``steps`` reverse steps of Algorithm 2 with ``network``: eps_theta, then pyddpm's fused update."""
    coefs = model.step_coefficients()

    def run():
        x = torch.randn(shape)
        for t in range(steps, 0, -1):
            eps = network(x, model.time_input(t, 1).expand(shape[0], 1))  # as the samplers pass it
            ops.reverse_step(x, eps.contiguous(), coefs[t - 1], seed=0, step=t, out=x)
    return run


def lever_rows(args, tmp: Path) -> list[dict]:
    """Each lever's end-to-end gain: the time of the fast copy without it over the time with every lever, for
    sampling (a loop of --steps steps, network and fused update) and training (pyddpm's Trainer steps: data path,
    loss, backward, AdamW, EMA), float32, interleaved with the eager network. Untrained networks of the benched
    shapes (the time does not depend on the weights)."""
    rows = []
    for name in args.nets:
        factory, batch, train_cfg = LEVER_NETS[name]
        torch.manual_seed(0)
        network = factory().eval()
        model = DDPM(network, T=args.steps).eval()
        shape = (batch, *((2,) if name == "toy" else (784,)))
        names = list(dict.fromkeys(lv.name for lv in levers_for(network, "fp32", "sample")))
        copies = {"eager": network, "all levers": fast_network(network, "cpu"),
                  **{f"without {n}": fast_network(network, "cpu", exclude=(n,)) for n in names}}
        seconds = interleaved({k: sampling_loop(model, net, shape, args.steps) for k, net in copies.items()},
                              args.repeats, args.steps)
        rows.append({"net": name, "purpose": "sampling", "batch": batch, "ms": {k: 1e3 * v for k, v in
                                                                               seconds.items()}})
        print(json.dumps(rows[-1]), flush=True)
        if args.no_training:
            continue
        _, _, _, train_batch = NETS[name]
        names = list(dict.fromkeys(lv.name for lv in levers_for(network, "fp32", "train")))
        trainers = {}
        for key, exclude in {"eager": None, "all levers": (), **{f"without {n}": (n,) for n in names}}.items():
            cfg = TrainConfig(**{**train_cfg, "batch_size": train_batch, "fast": False,
                                 **({"data_dir": str(MNIST_DIR), "grid_samples": 0} if "data" in train_cfg else {})})
            trainer = Trainer(cfg, tmp / f"levers-{name}-{len(trainers)}", torch.device("cpu"), resume=False)
            if exclude is not None:
                trainer.model.network = training_network(trainer.model.network, "cpu", "fp32", exclude)
                trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=cfg.lr,
                                                      weight_decay=cfg.weight_decay)
            trainers[key] = trainer
        seconds = training_seconds(trainers, args)
        rows.append({"net": name, "purpose": "training", "batch": train_batch,
                     "ms": {k: 1e3 * v for k, v in seconds.items()}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def lever_table(rows: list[dict]) -> str:
    """The levers' gains as a markdown table: per network and purpose, ms per step with every lever, and each lever's
    gain (time without it / time with all), the eager network's for comparison."""
    lines = ["| network, batch | purpose | ms per step, all levers | eager | lever: gain (without it / all) |",
             "|---|---|---:|---:|---|"]
    for r in rows:
        ms, label = r["ms"], NETS[r["net"]][0]
        gains = ", ".join(f"{k[len('without '):]} {ms[k] / ms['all levers']:.3f}x" for k in ms
                          if k.startswith("without "))
        lines.append(f"| {label}, {r['batch']} | {r['purpose']} | {ms['all levers']:.2f} | "
                     f"{ms['eager'] / ms['all levers']:.2f}x slower | {gains or '(none)'} |")
    return "\n".join(lines)


def write_docs(section: str, text: str, args) -> None:
    """``text`` stamped with CPU, date and command, between docs/performance.md's ``bench_cpu:SECTION`` markers
    (``paths`` or ``levers``; the page's prose, which holds no figures, is written by hand)."""
    page = ROOT / "docs" / "performance.md"
    begin, end = f"<!-- bench_cpu:{section}:begin -->", f"<!-- bench_cpu:{section}:end -->"
    old = page.read_text() if page.exists() else "# Performance on the CPU\n"
    if begin not in old or end not in old:
        old = old.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    runs = {args.toy_run: "TOY_RUN", args.unet_run: "UNET_RUN", args.ddpm_unet_run: "DDPM_UNET_RUN"}
    argv = " ".join(runs.get(a, a) for a in sys.argv[1:])  # run paths are this machine's
    stamp = (f"Generated by `python benchmarks/bench_cpu.py {argv}` on {time.strftime('%Y-%m-%d')}: "
             f"{cpu_name()}, torch {torch.__version__}, {args.threads} threads, {args.steps}-step loops, medians of "
             f"{args.repeats} interleaved repeats.")
    head, rest = old.split(begin, 1)
    page.write_text(f"{head}{begin}\n{stamp}\n\n{text}\n{end}{rest.split(end, 1)[1]}")
    print(f"wrote {page}")


def cpu_name() -> str:
    """The CPU (machine.cpu_model) and the lever classes it falls in."""
    flags = [name for name, (_, test) in CPU_CLASSES.items() if test() and name != "any"]
    return f"{cpu_model()} ({', '.join(flags) or 'no class'})"


def paths_tables(sampling: list[dict], training: list[dict], args) -> str:
    """The sampling (ms per step) and training (examples/s) tables as markdown."""
    out = []
    if not BF16:
        out.append("No bf16 rows: this CPU has no AVX512-BF16 or AMX.\n")
    if sampling:
        keys = list(dict.fromkeys(k for row in sampling for k in row["ms_per_step"]))
        out.append("| ms per sampling step | " + " | ".join(f"{r['label']}, batch {r['batch']}" for r in sampling) + " |")
        out.append("|---|" + "---:|" * len(sampling))
        for k in keys:
            out.append(f"| {k} | " + " | ".join(f"{r['ms_per_step'][k]:.2f}" if k in r["ms_per_step"] else "n/a"
                                          for r in sampling) + " |")
        out.append("\n| ratio (higher is faster) | " + " | ".join(r["net"] for r in sampling) + " |")
        out.append("|---|" + "---:|" * len(sampling))
        ratios = [("pyddpm fp32 / pyddpm --eager", "pyddpm --eager", "pyddpm fp32"),
                  ("pyddpm fp32 / onnxruntime", "onnxruntime", "pyddpm fp32"),
                  ("pyddpm bf16 / onnxruntime", "onnxruntime", "pyddpm bf16"),
                  ("pyddpm fp32 / course loop", "course loop", "pyddpm fp32"),
                  ("pyddpm fp32 / diffusers", "diffusers", "pyddpm fp32"),
                  ("pyddpm bf16 / course loop", "course loop", "pyddpm bf16")]
        for label, slow, fast in ratios:
            out.append(f"| {label} | " + " | ".join(f"{r['ms_per_step'][slow] / r['ms_per_step'][fast]:.2f}x"
                                               if {slow, fast} <= r["ms_per_step"].keys() else "n/a"
                                               for r in sampling) + " |")
        out.append("| the fast copy's one-time cost | " + " | ".join(f"{r['copy_seconds']:.2f} s" for r in sampling)
              + " |")
        out.append(f"| loop overhead over the chosen network's forward: median of {args.overhead_pairs} paired runs "
              "(~95% interval) | " + " | ".join(
                  "{median:+.1%} ({low:+.1%} to {high:+.1%})".format(**r["loop_overhead"]) for r in sampling) + " |")
    if training:
        keys = list(training[0]["examples_per_second"])
        out.append("\n| training examples / s | " + " | ".join(f"{r['label']}, batch {r['batch']}" for r in training)
              + " |")
        out.append("|---|" + "---:|" * len(training))
        for k in keys:
            base = keys[0]
            out.append(f"| {k} | " + " | ".join(
                f"{r['examples_per_second'][k]:.0f} ({r['examples_per_second'][k] / r['examples_per_second'][base]:.2f}x)"
                for r in training) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians are shown (default 5)")
    p.add_argument("--steps", type=int, default=10, help="reverse steps per timed sampling loop (default 10)")
    p.add_argument("--overhead-pairs", type=int, default=20,
                   help="adjacent pairs of runs (fast network alone, pyddpm fp32) for the loop's overhead (default 20)")
    p.add_argument("--train-steps", type=int, default=3, help="optimizer steps per timed training run (default 3)")
    p.add_argument("--nets", default="toy,unet,unet-ddpm", help="comma-separated of toy, unet, unet-ddpm")
    p.add_argument("--no-training", action="store_true", help="sampling only")
    p.add_argument("--toy-run", default=None)
    p.add_argument("--unet-run", default=None)
    p.add_argument("--ddpm-unet-run", default=None)
    p.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    p.add_argument("--levers", action="store_true",
                   help="instead: each pyddpm.accel lever's end-to-end gain (the fast copy without it, side by side)")
    p.add_argument("--write-docs", action="store_true",
                   help="write the tables into docs/performance.md, stamped (between its bench_cpu:paths or, with "
                        "--levers, bench_cpu:levers markers)")
    args = p.parse_args()
    nets = args.nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown or not nets:
        p.error(f"--nets: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(NETS)}")
    if min(args.threads, args.repeats, args.steps, args.overhead_pairs) < 1:
        p.error("--threads, --repeats, --steps and --overhead-pairs must be positive")
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # as pyddpm's command-line tools do (pyddpm.accel.memory), for every candidate alike
    print(f"glibc malloc keeps freed memory (pyddpm.accel.memory): {kept}", flush=True)
    if args.levers:
        with tempfile.TemporaryDirectory() as tmp:
            table = lever_table(lever_rows(args, Path(tmp)))
        print(f"\nCPU: {cpu_name()}, torch {torch.__version__}, {args.threads} threads, {args.steps}-step loops, "
              f"medians of {args.repeats} interleaved repeats\n\n{table}")
        if args.write_docs:
            write_docs("levers", table, args)
        return
    given = {"toy": args.toy_run, "unet": args.unet_run, "unet-ddpm": args.ddpm_unet_run}
    runs = {n: trained_run(n, given[n]) for n in nets}
    sampling, training = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in nets:
            sampling.append(sampling_row(n, runs[n], args, Path(tmp)))
            print(json.dumps(sampling[-1]), flush=True)
        if not args.no_training:
            for n in nets:
                training.append(training_row(n, args, Path(tmp)))
                print(json.dumps(training[-1]), flush=True)
    tables = paths_tables(sampling, training, args)
    print(f"\nCPU: {cpu_name()}, torch {torch.__version__}, {args.threads} threads, {args.steps}-step loops, "
          f"medians of {args.repeats} interleaved repeats\n\n{tables}")
    if args.write_docs:
        write_docs("paths", tables, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "repeats": args.repeats, "steps": args.steps,
                                               "sampling": sampling, "training": training}, indent=2) + "\n")
    if any(math.isnan(v) for r in sampling for v in r["ms_per_step"].values()):
        raise SystemExit("a measurement is NaN")


if __name__ == "__main__":
    main()
