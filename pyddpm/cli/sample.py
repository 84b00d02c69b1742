"""`pyddpm-sample RUN_DIR --num N --seed S --out FILE`: draw samples from a trained run, in data space."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ..data import is_toy, toy_distribution
from ..diffusion import DDPM
from ..evaluate.report import sampler_label
from ..evaluate.plots import describe_run, plot_frames, plot_toy_samples, save_image_grid
from ..accel import keep_freed_memory
from ..samplers import BACKENDS, generate_samples, plan_for, sample_trajectory, trajectory_steps
from ..schema import MAX_SAMPLES, MAX_SEED, MAX_T
from ..store import CheckpointError, load_model
from .common import (add_sampler_flags, add_sampling_network_flags, check_int, check_output_file, pick_device,
                     sampler_options, sampling_network_options)

SUFFIXES = (".npy", ".png")


def save_samples(samples: torch.Tensor, data_config: dict, path: str | Path, title: str = "") -> None:
    """Write samples as ``.npy`` (data space) or ``.png`` (toy: beside the true density; images: a grid), the
    picture headed by ``title``."""
    path = check_output_file(path, "--out", SUFFIXES)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, samples.numpy())
    elif is_toy(data_config["name"]):
        plot_toy_samples(toy_distribution(data_config["name"]), samples, path, title=title)
    else:
        save_image_grid(samples.reshape(-1, *data_config["image_shape"]), path, title=title)


def write_trajectory(model, config: dict, path: str | Path, args, sampler: dict, network_options: dict) -> None:
    """The reverse process from x_T to x_0 of ``args.num`` samples (at most 16 drawn for images), at ``args.frames``
    of the sampler's steps, as one row of panels (.png) or an animation (.gif), the sampler and network as
    ``sampler`` and ``network_options`` say (``sampler_options``, ``sampling_network_options``)."""
    num = args.num if is_toy(config["data"]["name"]) else min(args.num, 16)
    frames = args.frames or (8 if str(path).lower().endswith(".png") else 40)
    plan = plan_for(model, **sampler)
    trajectory = sample_trajectory(model, config["data"], num, trajectory_steps(plan, frames), seed=args.seed,
                                   plan=plan, backend=args.backend, graph=args.graph, **network_options)
    title = f"reverse process, {num} samples — {describe_run(config)} — {sampler_label(model, plan)}, seed {args.seed}"
    plot_frames(trajectory, config["data"], path, title)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyddpm-sample", description=__doc__.split(": ", 1)[1])
    p.add_argument("run_dir", help="run directory written by pyddpm-train")
    p.add_argument("--num", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; sample i depends only on (seed, i) (default 0)")
    p.add_argument("--out", default="samples.png", help="output file: .npy (data space) or .png (default samples.png)")
    p.add_argument("--batch-size", type=int, default=10000, help="samples per batch (default 10000)")
    add_sampler_flags(p)
    p.add_argument("--clip", action="store_true", help="clamp the x0 estimate to [-1, 1] at every step")
    p.add_argument("--backend", choices=BACKENDS, default="fused",
                   help="fused C++/CUDA step or the plain-torch reference (default fused)")
    p.add_argument("--graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each whole step (network + fused update) from one CUDA graph (default: on for "
                        "the fused backend on CUDA; same samples as without)")
    add_sampling_network_flags(p)
    p.add_argument("--trajectory", metavar="FILE", default=None,
                   help="also draw the denoising trajectory x_T -> x_0 (same seed): .png (one row of panels) or "
                        ".gif (an animation); toy data over the true density, images as 4x4 grids")
    p.add_argument("--frames", type=int, default=None,
                   help="steps shown in the trajectory, evenly spaced from T to 0 (default 8 for .png, 40 for .gif)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ... (default auto)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_int("--num", args.num, 1, MAX_SAMPLES)
        check_int("--seed", args.seed, 0, MAX_SEED)
        check_int("--batch-size", args.batch_size, 1)
        check_int("--steps", args.steps, 1, MAX_T)
        check_output_file(args.out, "--out", SUFFIXES)
        if args.trajectory:
            check_output_file(args.trajectory, "--trajectory", (".png", ".gif"))
        device = pick_device(args.device)
        network_options = sampling_network_options(args, device)
        keep_freed_memory()
        model, config = load_model(args.run_dir, device)
        sampler = sampler_options(args, model)
        plan = plan_for(model, **sampler) if isinstance(model, DDPM) else None
        samples = generate_samples(model, config["data"], args.num, seed=args.seed, batch_size=args.batch_size,
                                   backend=args.backend, progress=True, graph=args.graph, **sampler,
                                   **network_options)
        save_samples(samples, config["data"], args.out,
                     title=f"{describe_run(config)} — {sampler_label(model, plan)}, seed {args.seed}")
        if args.trajectory:
            write_trajectory(model, config, args.trajectory, args, sampler, network_options)
            print(f"wrote the trajectory to {args.trajectory}")
    except (CheckpointError, ValueError, RuntimeError) as err:
        print(f"pyddpm-sample: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
