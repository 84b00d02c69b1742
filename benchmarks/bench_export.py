"""Time sampling on CPU: PyTorch eager against the exported models, side by side, for the toy FcNetwork and the
MNIST U-Nets (random weights: speed does not depend on training).

Each backend runs a whole loop with seeded Philox noise and reports the median over --repeats runs: Algorithm 2
over a short schedule (T = --steps, default 10; per-step cost does not depend on T), then the export's few-step
plan of --sampler (default: the export's default sampler) with --steps network calls against pyddpm's own
sampling of the same plan. Columns:

    ms/call     loop time / network calls
    ms/sample   loop time per sample: Algorithm 2 scaled to the usual T = 1000 calls, a plan at its --steps calls
    vs eager    eager's time over the backend's, each against its own kind (Algorithm 2 or the plan)

Backends (a plan's rows end in "-plan"):
    eager       pyddpm.samplers as pyddpm-sample runs them (the network's fast copy in PyTorch + the fused C++
                step, noise in the kernel)
    onnx        export/onnx_sampler.py with step.onnx (solver_step.onnx for a plan) under onnxruntime (numpy
                Philox noise included)
    onnx-step   the step.onnx session.run calls alone (noise precomputed), to separate onnxruntime's share
    torchscript sampler.pt's sample() (sample_plan() for a plan: loop, step and Philox noise all in TorchScript)
    cpp         export's pyddpm-sampler-cpp on sampler.pt (with --cpp PATH), from the loop time it reports: a run of
                4 batches minus a run of 1 batch, i.e. 3 batches in steady state (no process start, model loading or
                TorchScript's warm-up, which a fresh process pays in its first steps)

    python benchmarks/bench_export.py [--nets fc,unet,unet-ddpm] [--threads N] [--repeats N] [--steps N]
                                      [--sampler NAME] [--batch-fc 1000] [--batch-image 64]
                                      [--cpp build/cpp/pyddpm-sampler-cpp]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime as ort
import torch

from pyddpm.store import build_model, load_model, save_checkpoint
from pyddpm.export import export_run
from pyddpm.samplers import ddpm_sample, sample
from pyddpm.config import TrainConfig, run_config

ROOT = Path(__file__).resolve().parents[1]
NETS = {"fc": ("chequerboard", 2), "unet": ("mnist", 784), "unet-ddpm": ("mnist", 784)}
T_REPORT = 1000


def onnx_sampler_module():
    spec = importlib.util.spec_from_file_location("onnx_sampler", ROOT / "export" / "onnx_sampler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_run(net: str, steps: int, directory: Path) -> Path:
    """A run directory holding a freshly initialised model (the trainer's defaults for ``net``) with T = steps."""
    data, dim = NETS[net]
    config = run_config(TrainConfig(data=data, net=net, T=steps), torch.zeros(1, dim))
    torch.manual_seed(0)
    model = build_model(config)
    save_checkpoint(directory, config, {f"model.{k}": v for k, v in model.state_dict().items()}, state={})
    return directory


def median_seconds(fn, repeats: int, timed_by_fn: bool = False) -> float:
    """Median wall time of fn() (or of the seconds fn returns) after two warm-up calls (allocations, oneDNN
    primitives, TorchScript's profiling runs)."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        seconds = fn()
        times.append(seconds if timed_by_fn else time.perf_counter() - start)
    return statistics.median(times)


def cpp_seconds(command: list[str]) -> float:
    """The loop time pyddpm-sampler-cpp reports ("... (sampling X s)")."""
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(re.search(r"\(sampling ([0-9.e+-]+) s\)", out).group(1))


def pyddpm_plan(model, shape, sampler: str, steps: int):
    """pyddpm's own sampling of the plan (sampler, steps), seed 0, as pyddpm-sample runs it: the fast copy of the
    network in torch, then the fused step with the plan's row and history buffers."""
    return sample(model, shape, sampler, steps, seed=0, fast=True)


def bench_net(net: str, batch: int, args, onnx_sampler) -> list[tuple[str, float]]:
    """(backend, median seconds of one full loop of args.steps calls) for ``net``: Algorithm 2's rows, then the
    plan's ("-plan")."""
    with tempfile.TemporaryDirectory() as tmp:
        run = random_run(net, args.steps, Path(tmp) / "run")
        out = Path(tmp) / "export"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_run(run, out, sampler=args.sampler, steps=args.steps)
            sampler = torch.jit.load(str(out / "sampler.pt"))
        plan = json.loads((out / "manifest.json").read_text())["solvers"]["default"]
        name = f"{plan['sampler']}:{plan['steps']}"
        model, config = load_model(run)
        shape = (batch, *config["data"]["shape"])
        exported = onnx_sampler.ExportedModel(out, threads=args.threads, sampler="ddpm")
        planned = onnx_sampler.ExportedModel(out, threads=args.threads, sampler=plan["sampler"], steps=plan["steps"])
        noise = [onnx_sampler.philox_normal(shape, 0, t) for t in range(args.steps + 1)]

        def onnx_steps():
            x = noise[0]
            for t in range(args.steps, 0, -1):
                x = exported.step(x, t, noise[t])

        results = []
        with torch.no_grad():
            results.append(("eager", median_seconds(lambda: ddpm_sample(model, shape, seed=0, fast=True),
                                                    args.repeats)))
            results.append(("onnx", median_seconds(lambda: onnx_sampler.sample(exported, batch, 0, batch),
                                                   args.repeats)))
            results.append(("onnx-step", median_seconds(onnx_steps, args.repeats)))
            results.append(("torchscript", median_seconds(lambda: sampler.sample(batch, 0, 0), args.repeats)))
            results.append(("eager-plan", median_seconds(
                lambda: pyddpm_plan(model, shape, plan["sampler"], plan["steps"]), args.repeats)))
            results.append(("onnx-plan", median_seconds(lambda: onnx_sampler.sample(planned, batch, 0, batch),
                                                        args.repeats)))
            results.append(("torchscript-plan", median_seconds(lambda: sampler.sample_plan(batch, 0, 0, name),
                                                               args.repeats)))
        if args.cpp:
            def cpp_steady_state(*flags):
                command = [args.cpp, str(out / "sampler.pt"), "--batch-size", str(batch), "--out",
                           str(Path(tmp) / "c.npy"), "--threads", str(args.threads), *flags, "--num"]
                return (cpp_seconds(command + [str(4 * batch)]) - cpp_seconds(command + [str(batch)])) / 3

            results.insert(4, ("cpp", median_seconds(lambda: cpp_steady_state("--sampler", "ddpm"), args.repeats,
                                                     timed_by_fn=True)))
            results.append(("cpp-plan", median_seconds(
                lambda: cpp_steady_state("--sampler", plan["sampler"], "--steps", str(plan["steps"])), args.repeats,
                timed_by_fn=True)))
        return results, name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="fc,unet", help="comma-separated: fc, unet, unet-ddpm (default fc,unet)")
    p.add_argument("--batch-fc", type=int, default=1000, help="batch of the toy FcNetwork (default 1000)")
    p.add_argument("--batch-image", type=int, default=64, help="batch of the MNIST U-Nets (default 64)")
    p.add_argument("--steps", type=int, default=10,
                   help="network calls of the timed loops: T of Algorithm 2, the plan's NFE (default 10)")
    p.add_argument("--sampler", default=None, help="the few-step sampler timed (default: the export's default)")
    p.add_argument("--repeats", type=int, default=5, help="timed loops per backend; the median is shown (default 5)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="threads for torch and onnxruntime (default torch's)")
    p.add_argument("--cpp", default=None, help="path of a built pyddpm-sampler-cpp to time as well")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    onnx_sampler = onnx_sampler_module()
    print(f"CPU: {platform.processor() or platform.machine()}, {args.threads} threads; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; {args.steps}-step loops, median of {args.repeats}")
    print(f"{'network':<10} {'batch':>6} {'backend':<22} {'calls':>6} {'ms/call':>10} {'ms/sample':>10} {'vs eager':>9}")
    for net in [n.strip() for n in args.nets.split(",") if n.strip()]:
        if net not in NETS:
            raise SystemExit(f"unknown network {net!r}; choose from {', '.join(NETS)}")
        batch = args.batch_fc if net == "fc" else args.batch_image
        results, name = bench_net(net, batch, args, onnx_sampler)
        eager = dict(results)
        for backend, seconds in results:
            plan = backend.endswith("-plan")
            per_call = seconds / args.steps
            calls = args.steps if plan else T_REPORT
            label = f"{backend} ({name})" if backend == "eager-plan" else backend
            print(f"{net:<10} {batch:>6} {label:<22} {calls:>6} {per_call * 1e3:>10.3f} "
                  f"{per_call * calls / batch * 1e3:>10.4f} {eager['eager-plan' if plan else 'eager'] / seconds:>8.2f}x")


if __name__ == "__main__":
    main()
