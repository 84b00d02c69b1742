"""Time one reverse step: the fused op (noise drawn in the kernel) against the plain-torch reference.

For each size it prints the median microseconds per step and the effective bandwidth (GB/s counted as
the minimum traffic of a step: read x_t and eps_hat, write x_{t-1}, i.e. 3 tensors) of

    fused     pyddpm.ops.reverse_step(x, eps, coef, seed=..., step=t, out=x)   (in place, like the sampler)
    eager     pyddpm.ops.reverse_step_reference(x, eps, coef, noise=torch.randn_like(x))
    compiled  torch.compile of that reference (randn included; on CPU with inductor's fallback_random,
              i.e. aten's randn, which is faster than inductor's own CPU randn)

and the speed-ups eager/fused and compiled/fused. On CUDA it adds device-to-device copy bandwidth
(x.copy_(y): 2 tensors of traffic) and fused bandwidth as a fraction of it.

    python benchmarks/bench_op.py [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--threads N]
                                  [--repeats N] [--no-compile]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch._inductor.config

from pyddpm import ops

SIZES = [("5000x2", (5000, 2)), ("256x784", (256, 784)), ("2^20", (256, 4096)), ("2^24", (4096, 4096))]
COEF = ops.StepCoefficients(a=1.0001, b=-0.0123, sigma=0.0141)


def _timer(device: torch.device):
    if device.type == "cuda":
        def run(fn, repeats):
            times = []
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for _ in range(repeats):
                start.record()
                fn()
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop) * 1e3)
            return statistics.median(times)
    else:
        def run(fn, repeats):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e6)
            return statistics.median(times)
    return run


def _repeats(numel: int, base: int) -> int:
    return max(5, min(base, int(base * 2**20 / max(numel, 1))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="storage dtype (half types on CUDA only)")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per cell at <= 2^20 elements")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (torch.set_num_threads; 0: torch's default)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    time_it = _timer(device)
    cuda = device.type == "cuda"

    def eager_step(x, e):
        return ops.reverse_step_reference(x, e, COEF, noise=torch.randn_like(x))

    if not cuda:
        torch._inductor.config.fallback_random = True
    compiled_step = None if args.no_compile else torch.compile(eager_step)
    name = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()}"
    print(f"# {name}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"pyddpm._C {ops._C.__version__ if ops.extension_available() else 'missing'}, dtype {args.dtype}")
    header = f"{'size':>8} {'elements':>9} | {'fused us':>9} {'GB/s':>6} | {'eager us':>9} {'GB/s':>6} | " \
             f"{'compiled us':>11} {'GB/s':>6} | {'eager/fused':>11} {'compiled/fused':>14}"
    if cuda:
        header += f" | {'copy GB/s':>9} {'fused/copy':>10}"
    print(header)
    print("-" * len(header))
    for label, shape in SIZES:
        numel = shape[0] * shape[1]
        x = torch.randn(shape, device=device, dtype=dtype)
        e = torch.randn(shape, device=device, dtype=dtype)
        bytes_step = 3 * numel * x.element_size()
        repeats = _repeats(numel, args.repeats)
        t = [1]

        def fused():
            t[0] += 1
            ops.reverse_step(x, e, COEF, seed=1234, step=t[0] % 1000 + 1, out=x)

        cells = {}
        for key, fn in (("fused", fused), ("eager", lambda: eager_step(x, e)),
                        ("compiled", None if compiled_step is None else (lambda: compiled_step(x, e)))):
            if fn is None:
                cells[key] = float("nan")
                continue
            for _ in range(3):  # warm-up (and compilation)
                fn()
            cells[key] = time_it(fn, repeats)
        gbs = {k: bytes_step / (v * 1e-6) / 1e9 for k, v in cells.items()}
        line = (f"{label:>8} {numel:>9} | {cells['fused']:>9.1f} {gbs['fused']:>6.1f} | {cells['eager']:>9.1f} "
                f"{gbs['eager']:>6.1f} | {cells['compiled']:>11.1f} {gbs['compiled']:>6.1f} | "
                f"{cells['eager'] / cells['fused']:>10.2f}x {cells['compiled'] / cells['fused']:>13.2f}x")
        if cuda:
            y = torch.empty_like(x)
            copy_us = time_it(lambda: y.copy_(x), repeats)
            copy_gbs = 2 * numel * x.element_size() / (copy_us * 1e-6) / 1e9
            line += f" | {copy_gbs:>9.1f} {gbs['fused'] / copy_gbs:>9.0%}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
