"""Draw samples from a trained run, in data space; `pyddpm-sample RUN_DIR --num N --seed S --out FILE`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, load_model
from .data import DataTransform, is_toy, toy_distribution
from .plots import plot_toy_samples, save_image_grid
from .samplers import BACKENDS, ddim_sample, ddpm_sample


def pick_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given, checked to exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def generate_samples(model, data_config: dict, num: int, *, seed: int, batch_size: int = 10000,
                     backend: str = "fused", steps: int | None = None, eta: float = 0.0,
                     variance: str | None = None, clip: bool = False, progress: bool = False,
                     graph: bool | None = None) -> torch.Tensor:
    """``num`` samples mapped back to data space (images clamped to their value range), on the CPU.

    Samples are drawn in batches with the counter-based noise, so sample i is the same whatever the batch size.
    ``steps`` switches to DDIM with that many steps; ``graph`` is the samplers' CUDA-graph option.
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"--num and --batch-size must be positive, got {num} and {batch_size}")
    transform = DataTransform(data_config["center"], data_config["scale"])
    shape = tuple(data_config["shape"])
    out = []
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        if steps is None:
            x = ddpm_sample(model, (b, *shape), seed=seed, backend=backend, variance=variance, clip=clip,
                            sample_offset=start, progress=progress, graph=graph)
        else:
            x = ddim_sample(model, (b, *shape), steps, eta=eta, seed=seed, backend=backend, clip=clip,
                            sample_offset=start, progress=progress, graph=graph)
        out.append(transform.from_model(x.float()).cpu())
    samples = torch.cat(out)
    if "value_range" in data_config and not is_toy(data_config["name"]):
        samples = samples.clamp(*data_config["value_range"])
    return samples


def save_samples(samples: torch.Tensor, data_config: dict, path: str | Path) -> None:
    """Write samples as ``.npy`` (data space) or ``.png`` (toy: beside the true density; images: a grid)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".png"):
        raise ValueError(f"--out must end in .npy or .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, samples.numpy())
    elif is_toy(data_config["name"]):
        plot_toy_samples(toy_distribution(data_config["name"]), samples, path)
    else:
        save_image_grid(samples.reshape(-1, *data_config["image_shape"]), path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyddpm-sample", description=__doc__.split(";")[0] + ".")
    p.add_argument("run_dir", help="run directory written by pyddpm-train")
    p.add_argument("--num", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; sample i depends only on (seed, i) (default 0)")
    p.add_argument("--out", default="samples.png", help="output file: .npy (data space) or .png (default samples.png)")
    p.add_argument("--batch-size", type=int, default=10000, help="samples per batch (default 10000)")
    p.add_argument("--steps", type=int, default=None, help="use DDIM with this many steps instead of all T")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic) (default 0)")
    p.add_argument("--variance", choices=["beta", "beta_tilde"], default=None,
                   help="reverse variance sigma_t^2 (default: the run's, normally beta)")
    p.add_argument("--clip", action="store_true", help="clamp the x0 estimate to [-1, 1] at every step")
    p.add_argument("--backend", choices=BACKENDS, default="fused",
                   help="fused C++/CUDA step or the plain-torch reference (default fused)")
    p.add_argument("--graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each whole step (network + fused update) from one CUDA graph (default: on for "
                        "the fused backend on CUDA; same samples as without)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ... (default auto)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = pick_device(args.device)
        model, config = load_model(args.run_dir, device)
        samples = generate_samples(model, config["data"], args.num, seed=args.seed, batch_size=args.batch_size,
                                   backend=args.backend, steps=args.steps, eta=args.eta,
                                   variance=args.variance, clip=args.clip, progress=True, graph=args.graph)
        save_samples(samples, config["data"], args.out)
    except (CheckpointError, ValueError, RuntimeError) as err:
        print(f"pyddpm-sample: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
