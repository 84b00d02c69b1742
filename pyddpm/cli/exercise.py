"""`pyddpm-exercise {train,sample}`: the exercise as the course sets it up, with the course's command line.

The course's ``ddpm.py``: ``DDPM(FcNetwork(D, 64), T=1000)`` (beta 1e-4 .. 2e-2, sigma_t^2 = beta_t) or
``DDPM(Unet(), T=1000)`` for MNIST, data mapped to [-1, 1] by (x - 0.5) * 2, Adam at lr 1e-3 with no warm-up,
no EMA and no gradient clipping, batch 10,000 and 1 epoch of 10,000,000 freshly drawn toy points (the
script's own defaults), then ``torch.save(model.state_dict(), --model)``. ``sample`` loads that file and draws
10,000 points by Algorithm 2 over the true density (MNIST: a grid of 64). The model file is a plain state_dict
the course's code reads (the U-Net under the course's names ``_convs``/``_tconvs``); pyddpm reads such files
with ``torch.load(weights_only=True)`` only. ``pyddpm-train`` has pyddpm's better defaults; ``pyddpm-import``
turns a model file into a pyddpm run directory.

For MNIST (which the course script leaves to the student) this uses batch 128 unless --batch-size says
otherwise: 10,000 images of activations of the U-Net do not fit a laptop.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..course import (COURSE_DATA_SCALE, COURSE_NETWORKS, CourseFileError, check_network, course_model,
                      course_state_dict, import_config, load_course_weights, read_state_dict)
from ..data import DataTransform, canonical_name, is_toy, load_images, to_data_space, toy_distribution
from ..data.mnist import DataError
from ..accel import keep_freed_memory
from ..samplers import generate_samples
from ..schema import MAX_EPOCHS, MAX_NUM_TRAIN, MAX_SAMPLES, MAX_SEED
from .common import check_float, check_int, check_output_file, pick_device
from .sample import SUFFIXES as SAMPLE_SUFFIXES
from .sample import save_samples

COURSE_N_DATA = 10_000_000  # ddpm.py: n_data = 10000000
IMAGE_BATCH = 128


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyddpm-exercise", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The DDPM exercise as the course sets it up: the course's command line, network and "
                    "training (Adam, no EMA), writing a state_dict model file the course's ddpm.py reads.",
        epilog="example: pyddpm-exercise train --data cb && pyddpm-exercise sample --data cb")
    p.add_argument("mode", choices=["train", "sample"], help="what to do (train writes --model, sample reads it)")
    p.add_argument("--data", default="tg", choices=["tg", "cb", "mnist"],
                   help="tg: two Gaussians, cb: chequerboard, mnist (default: %(default)s)")
    p.add_argument("--network", default="fc", choices=list(COURSE_NETWORKS),
                   help="fc: FcNetwork(D, 64); unet: the course's MNIST U-Net (default: %(default)s)")
    p.add_argument("--model", default="model.pt", help="state_dict file to save to or load from (default: %(default)s)")
    p.add_argument("--samples", default="samples.png",
                   help="file to save samples in: .png, or .npy in data space (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, mps, auto (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help=f"batch size for training (default: 10000; {IMAGE_BATCH} for mnist)")
    p.add_argument("--epochs", type=int, default=1, metavar="N", help="number of epochs to train (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, metavar="V", help="learning rate of Adam (default: %(default)s)")
    p.add_argument("--n-data", type=int, default=COURSE_N_DATA, metavar="N",
                   help="toy data: training points drawn (default: %(default)s, the course's n_data)")
    p.add_argument("--num-samples", type=int, default=None, metavar="N",
                   help="samples drawn by `sample` (default: 10000; 64 for mnist)")
    p.add_argument("--data-dir", default=None, help="mnist: directory of the IDX files (default: as pyddpm-train)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of data, weights and noise (default: none, as the course: every run differs)")
    return p


def training_data(args) -> torch.Tensor:
    """The training set: toy points in data space (float32) or MNIST pixels (uint8, flat), as in the course."""
    if is_toy(args.data):
        return toy_distribution(args.data).sample((args.n_data,))
    images, _ = load_images(canonical_name(args.data), "train", args.data_dir)
    return images.reshape(len(images), -1)


def train(model, data: torch.Tensor, args, device: torch.device) -> None:
    """The course's loop: every epoch a fresh shuffle in batches (the last one may be smaller), Adam, the mean
    L_simple of Algorithm 1."""
    transform = DataTransform(0.5, COURSE_DATA_SCALE)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(data) / args.batch_size)
    model.train()
    bar = tqdm(total=args.epochs * steps_per_epoch, desc="training", unit="step", dynamic_ncols=True)
    for epoch in range(args.epochs):
        order = torch.randperm(len(data))
        for start in range(0, len(data), args.batch_size):
            x = transform.to_model(to_data_space(data[order[start:start + args.batch_size]].to(device)))
            optimizer.zero_grad()
            loss = model.loss(x)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", epoch=f"{epoch + 1}/{args.epochs}")
            bar.update()
    bar.close()


def check_args(args) -> None:
    """Every argument checked before any work, with pyddpm's shared checks and limits: sizes, ranges, and the
    file the command will write (--model for train, --samples for sample)."""
    check_network(args.network, args.data)
    if args.batch_size is None:
        args.batch_size = 10000 if is_toy(args.data) else IMAGE_BATCH
    check_int("--batch-size", args.batch_size, 1, MAX_NUM_TRAIN)
    check_int("--epochs", args.epochs, 1, MAX_EPOCHS)
    check_int("--n-data", args.n_data, 1, MAX_NUM_TRAIN)
    check_int("--num-samples", args.num_samples, 1, MAX_SAMPLES)
    check_int("--seed", args.seed, 0, MAX_SEED)
    check_float("--lr", args.lr, 0.0, math.inf, lo_open=True)
    if args.mode == "train":
        check_output_file(args.model, "--model")
    else:
        check_output_file(args.samples, "--samples", SAMPLE_SUFFIXES)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        device = pick_device(args.device)
        keep_freed_memory()
        if args.seed is not None:
            torch.manual_seed(args.seed)
        model = course_model(args.network, args.data).to(device)
        if args.mode == "train":
            data = training_data(args)
            where = ("drawn from the true distribution" if is_toy(args.data)
                     else "MNIST training images, dequantised afresh every batch")
            print(f"pyddpm-exercise: {len(data):,} training examples ({where}); {args.network} network, "
                  f"T = {model.T}, Adam lr {args.lr}, batch {args.batch_size}, {args.epochs} epoch(s) on {device}")
            train(model, data, args, device)
            Path(args.model).parent.mkdir(parents=True, exist_ok=True)
            torch.save(course_state_dict(model), args.model)
            print(f"wrote {args.model} (a state_dict: load it with model.load_state_dict(torch.load(FILE)))")
        else:
            load_course_weights(model, read_state_dict(args.model), args.model)
            num = args.num_samples or (10000 if is_toy(args.data) else 64)
            data_config = import_config(args.network, args.data, model, args.model)["data"]
            seed = args.seed if args.seed is not None else int(torch.randint(0, 2**62, (1,)))
            samples = generate_samples(model.eval(), data_config, num, seed=seed, progress=True)
            save_samples(samples, data_config, args.samples,
                         title=f"pyddpm-exercise: {args.data}, {args.network}, scale 2, Algorithm 2 (T = {model.T})")
            print(f"wrote {num} samples to {args.samples}")
    except (CourseFileError, DataError, ValueError) as err:
        print(f"pyddpm-exercise: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
