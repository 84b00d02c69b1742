"""Training and sampling throughput on MNIST for each network, measured side by side in one run.

Training: images/s of pyddpm-train's own optimizer step (``Trainer.train_step``: dequantised batch from the
on-device data set, Algorithm 1 loss, AdamW, gradient clipping, EMA; bf16 autocast on CUDA) at each batch size.
Sampling: images/s of Algorithm 2 with T steps at one batch size for

    exercise  the exercise-style loop: torch.randn per step and the plain-torch reference update
    fused     pyddpm eager: the network, then the fused C++/CUDA step drawing its noise in the kernel
    graph     pyddpm replaying one captured whole step (network + scheduled fused update) from a CUDA graph
              (CUDA only; the capture is inside the timed call)

Every figure is the median over --repeats timed runs after a warm-up; ratios are against the exercise loop.
Weights are freshly initialised (speed does not depend on them).

    python benchmarks/bench_train_sample.py                       # GPU: batches 64, 256; T = 1000
    python benchmarks/bench_train_sample.py --device cpu --sample-T 20 --train-steps 3 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pyddpm import ops
from pyddpm.store import build_model
from pyddpm.cli.common import pick_device
from pyddpm.samplers import ddim_sample, ddpm_sample
from pyddpm.config import TrainConfig, network_settings
from pyddpm.train import Trainer

NETS = ("fc", "unet", "unet-ddpm")
SAMPLERS = {  # name -> keyword arguments of ddpm_sample
    "exercise": dict(seed=None, backend="torch", graph=False),
    "fused": dict(seed=0, backend="fused", graph=False),
    "graph": dict(seed=0, backend="fused", graph=True),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_images_per_s(net: str, batch: int, args, device: torch.device) -> float:
    """Median images/s of Trainer.train_step for ``net`` at ``batch``."""
    cfg = TrainConfig(data="mnist", data_dir=args.data_dir, net=net, batch_size=batch, epochs=1, T=1000,
                      grid_samples=0, compile=args.compile)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, Path(out) / "run", device, resume=False)
        step = 0

        def steps(n: int) -> None:
            nonlocal step
            for _ in range(n):
                trainer.train_step(step % trainer.steps_per_epoch)
                step += 1

        steps(args.warmup)
        seconds = _median_seconds(lambda: steps(args.train_steps), args.repeats, device)
    return args.train_steps * batch / seconds


def sample_images_per_s(net: str, args, device: torch.device) -> dict[str, float | None]:
    """Median images/s of T-step sampling at ``--sample-batch`` per sampler (None where it cannot run)."""
    torch.manual_seed(0)
    data = {"name": "mnist", "shape": [784], "center": 0.5, "scale": 2.0, "image_shape": [1, 28, 28],
            "value_range": [0.0, 1.0]}
    cfg = TrainConfig(data="mnist", net=net)  # the network as pyddpm-train builds it, with its default sizes
    model = build_model({"network": network_settings(cfg, data),
                         "diffusion": {"T": args.sample_T, "schedule": "linear", "beta_1": 1e-4, "beta_T": 2e-2,
                                       "variance": "beta"}}).to(device).eval()
    shape = (args.sample_batch, 784)
    result = {}
    for name, kwargs in SAMPLERS.items():
        if kwargs["graph"] and device.type != "cuda":
            result[name] = None
            continue
        ddim_sample(model, shape, min(3, args.sample_T), **kwargs)  # warm-up: same code path, 3 steps
        seconds = _median_seconds(lambda: ddpm_sample(model, shape, **kwargs), args.sample_repeats, device)
        result[name] = args.sample_batch / seconds
    return result


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    p.add_argument("--nets", default=",".join(NETS), help="comma-separated networks (default all)")
    p.add_argument("--batches", default="64,256", help="training batch sizes (default 64,256)")
    p.add_argument("--train-steps", type=int, default=None, help="timed optimizer steps per repeat (default 50 "
                   "on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 on CUDA, 1 on CPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of training (median)")
    p.add_argument("--sample-T", type=int, default=None, help="sampling steps T (default 1000; use ~20 on CPU)")
    p.add_argument("--sample-batch", type=int, default=256, help="sampling batch size")
    p.add_argument("--sample-repeats", type=int, default=3, help="timed repeats of sampling (median)")
    p.add_argument("--data-dir", default=None, help="MNIST directory (default as pyddpm-train)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    args = p.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    args.train_steps = args.train_steps or (50 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    args.sample_T = args.sample_T or 1000
    nets = [n for n in args.nets.split(",") if n]
    batches = [int(b) for b in args.batches.split(",")]

    name = torch.cuda.get_device_name(device) if cuda else f"{platform.machine()}, {os.cpu_count()} cores"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"fused extension {'with' if ops.cuda_built() else 'without'} CUDA")
    print(f"training: median of {args.repeats} x {args.train_steps} steps"
          f"{' (bf16 autocast)' if cuda else ''}{' (compiled)' if args.compile else ''}; "
          f"sampling: T = {args.sample_T}, batch {args.sample_batch}, median of {args.sample_repeats}\n")
    header = ([f"train b{b} img/s" for b in batches] + ["100 ep x 60k (min)"]
              + [f"sample {s} img/s" for s in SAMPLERS] + ["fused/exercise", "graph/exercise"])
    print(f"{'network':<10}" + "".join(f"{h:>23}" for h in header))
    for net in nets:
        train = [train_images_per_s(net, b, args, device) for b in batches]
        sample = sample_images_per_s(net, args, device)
        minutes = 100 * 60_000 / max(train) / 60
        ratios = [None if sample[s] is None else sample[s] / sample["exercise"] for s in ("fused", "graph")]
        cells = ([_fmt(v) for v in train] + [_fmt(minutes)] + [_fmt(sample[s], 2) for s in SAMPLERS]
                 + [_fmt(r, 2) for r in ratios])
        print(f"{net:<10}" + "".join(f"{c:>23}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
