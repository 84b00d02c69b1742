"""Train a DDPM (Algorithm 1) and write a run directory; `pyddpm-train --help` lists every setting.

One readable loop in the style of nanoGPT: set-up, then a ``while`` over optimizer steps with logging,
checkpoints and pictures at clear intervals. Under ``torchrun`` the same loop trains with DDP (rank 0 writes).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import (CHECKPOINT_FILE, CheckpointError, build_model, load_weights, read_checkpoint, save_checkpoint,
                         write_atomic, write_json)
from .data import (IMAGE_DATASETS, DataTransform, canonical_name, data_config_entries, is_toy, load_training_data,
                   to_data_space, toy_distribution)
from .ema import EMA
from .evaluate.toy import toy_metrics
from .nets.fc import ACTIVATIONS, TIME_EMBEDDINGS
from .plots import plot_loss, plot_toy_samples, save_image_grid
from .sample import generate_samples, pick_device
from .schedules import SCHEDULES

METRICS_CSV = "metrics.csv"


@dataclass
class TrainConfig:
    """Every setting of a training run; stored in the run's config so a run can be rebuilt and resumed."""

    data: str = "chequerboard"
    data_dir: str | None = None
    download: bool = False
    net: str = "fc"
    hidden: int = 256
    depth: int = 4
    activation: str = "silu"
    time_embedding: str = "sinusoidal"
    channels: list[int] | None = None
    num_res_blocks: int = 2
    dropout: float = 0.1
    attention: bool = True
    T: int = 1000
    schedule: str = "linear"
    beta_1: float = 1e-4
    beta_T: float = 2e-2
    variance: str = "beta"
    data_scale: float | None = None
    num_train: int = 1_000_000
    epochs: int = 8
    batch_size: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    ema: float = 0.999
    seed: int = 0
    checkpoint_every: int = 1000
    max_steps: int | None = None
    num_samples: int = 5000
    grid_samples: int = 64
    grid_steps: int = 50
    amp: bool | None = None
    compile: bool = False

    def resolved_scale(self) -> float:
        """The data scale: as given, else 64 for the toy sets (chosen by measurement, see README) and 2 for images."""
        if self.data_scale is not None:
            return self.data_scale
        return TOY_DATA_SCALE if is_toy(self.data) else 2.0


TOY_DATA_SCALE = 64.0


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------------------
NETWORK_CHOICES = ("fc", "unet", "unet-ddpm")
DEFAULT_CHANNELS = {"unet": [32, 64, 128, 256, 256], "unet-ddpm": [64, 128, 128]}


def network_settings(cfg: TrainConfig, data: dict) -> dict:
    """The ``{"name", "kwargs"}`` entry of the run config that rebuilds the network for the ``data`` config."""
    if cfg.net == "fc":
        kwargs = dict(input_dim=math.prod(data["shape"]), num_hidden=cfg.hidden, num_layers=cfg.depth,
                      activation=cfg.activation, time_embedding=cfg.time_embedding)
    elif cfg.net in DEFAULT_CHANNELS:
        if "image_shape" not in data:
            raise ValueError(f"--net {cfg.net} needs image data (--data {' or '.join(IMAGE_DATASETS)}), "
                             f"not {data['name']}")
        kwargs = dict(channels=list(cfg.channels or DEFAULT_CHANNELS[cfg.net]), image_shape=data["image_shape"])
        if cfg.net == "unet-ddpm":
            kwargs.update(num_res_blocks=cfg.num_res_blocks, dropout=cfg.dropout, attention=cfg.attention)
    else:
        raise ValueError(f"unknown network {cfg.net!r}; choose one of {', '.join(NETWORK_CHOICES)}")
    return {"name": cfg.net, "kwargs": kwargs}


def run_config(cfg: TrainConfig, train_data: torch.Tensor) -> dict:
    """The JSON config of a run: enough to rebuild the model and map samples back to data space."""
    data = {"name": canonical_name(cfg.data), "shape": list(train_data.shape[1:]), "center": 0.5,
            "scale": cfg.resolved_scale(), **data_config_entries(cfg.data)}
    return {
        "pyddpm_version": __version__,
        "diffusion": {"T": cfg.T, "schedule": cfg.schedule, "beta_1": cfg.beta_1, "beta_T": cfg.beta_T,
                      "variance": cfg.variance},
        "network": network_settings(cfg, data),
        "data": data,
        "train": dataclasses.asdict(cfg),
    }


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (for safetensors) and JSON-able settings."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], settings: dict) -> None:
    """Inverse of ``optimizer_tensors``."""
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(settings["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": settings["param_groups"]})


LR_SCHEDULES = ("cosine", "constant")


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up over ``cfg.warmup`` steps (Ho et al. sec. 4), then constant or a cosine decay to 0."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.lr_schedule == "constant" or step < cfg.warmup:
        return cfg.lr * warm
    progress = (step - cfg.warmup) / max(1, total_steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------------------------------------
class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request to stop at the next step boundary, so the run saves a
    consistent checkpoint; a second signal interrupts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class Trainer:
    """Holds the state of one run; ``run()`` is the training loop."""

    def __init__(self, cfg: TrainConfig, out: Path, device: torch.device, resume: bool):
        self.cfg, self.out = cfg, out
        self.world, self.rank, self.local_rank = _distributed_setup(device)
        self.master = self.rank == 0
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device

        if cfg.download and self.world > 1 and not self.master:
            dist.barrier()  # rank 0 downloads first
        train = load_training_data(cfg.data, num_train=cfg.num_train, seed=cfg.seed, data_dir=cfg.data_dir,
                                   download=cfg.download and self.master)
        if cfg.download and self.world > 1 and self.master:
            dist.barrier()
        self.config = run_config(cfg, train)
        self.images = not is_toy(cfg.data)
        self.transform = DataTransform(0.5, cfg.resolved_scale())
        self.train = train.to(device)  # the data sets pyddpm trains on fit on any device (MNIST: 47 MB of uint8)
        self.global_batch = cfg.batch_size * self.world
        self.steps_per_epoch = len(train) // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch size {cfg.batch_size} x {self.world} processes exceeds the {len(train)} "
                             "training examples; lower --batch-size")
        self.schedule_steps = cfg.epochs * self.steps_per_epoch  # the learning-rate schedule's horizon
        self.total_steps = min(cfg.max_steps or self.schedule_steps, self.schedule_steps)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = build_model(self.config).to(device)
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        torch.manual_seed(cfg.seed + 1000 * self.rank)  # distinct noise per rank
        self.step = 0
        self.train_seconds = 0.0  # time spent in optimizer steps (not checkpoints or pictures), over all sessions
        self._order_epoch, self._order = -1, None
        if not resume and (out / CHECKPOINT_FILE).exists():
            raise ValueError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
        if resume:
            self._restore(read_checkpoint(out))
            if self.master:
                self._truncate_log()

        self.amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
        wrapped = self.model
        if self.world > 1:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        self.loss_fn = torch.compile(wrapped) if cfg.compile else wrapped

    # ----- checkpoints ----------------------------------------------------------------------------------
    def sampling_model(self):
        """The model samples come from: the EMA weights when training keeps them."""
        return self.ema.shadow if self.ema is not None else self.model

    def _rng_states(self) -> list[torch.Tensor]:
        states = [torch.get_rng_state()]
        if self.device.type == "cuda":
            states.append(torch.cuda.get_rng_state(self.device))
        return states

    def save(self) -> None:
        """Write the checkpoint (all ranks take part in gathering RNG states; rank 0 writes)."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise NonFiniteLoss(f"the weights became NaN or infinite by step {self.step}; stopped. The last good "
                                f"checkpoint (step {self._last_saved}) in {self.out} is kept: lower --lr or "
                                "--grad-clip and resume from it")
        rng = self._rng_states()
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, [s.cpu() for s in rng])
        else:
            gathered = [rng]
        if not self.master:
            return
        tensors = {f"model.{k}": v for k, v in self.sampling_model().state_dict().items()}
        if self.ema is not None:
            tensors.update({f"train.raw.{k}": v for k, v in self.model.state_dict().items()})
        opt_tensors, opt_settings = optimizer_tensors(self.optimizer)
        tensors.update({f"train.optim.{k}": v for k, v in opt_tensors.items()})
        for rank, states in enumerate(gathered):
            for i, s in enumerate(states):
                tensors[f"train.rng.{rank}.{i}"] = s
        state = {"step": self.step, "world": self.world, "optimizer": opt_settings,
                 "ema_updates": self.ema.updates if self.ema is not None else 0,
                 "train_seconds": self.train_seconds}
        save_checkpoint(self.out, self.config, tensors, state)

    def _restore(self, checkpoint) -> None:
        if checkpoint.config["network"] != self.config["network"]:
            raise CheckpointError(f"cannot resume {self.out}: its network settings differ from this run's")
        state = checkpoint.state
        if state["world"] != self.world:
            raise CheckpointError(f"cannot resume {self.out}: it was trained by {state['world']} processes, "
                                  f"this run has {self.world}")
        raw = checkpoint.prefixed("train.raw") if self.ema is not None else checkpoint.prefixed("model")
        load_weights(self.model, raw, f"checkpoint in {self.out}")
        if self.ema is not None:
            load_weights(self.ema.shadow, checkpoint.prefixed("model"), f"EMA weights in {self.out}")
            self.ema.updates = state["ema_updates"]
        restore_optimizer(self.optimizer, checkpoint.prefixed("train.optim"), state["optimizer"])
        rng = [checkpoint.tensors[f"train.rng.{self.rank}.{i}"] for i in range(len(self._rng_states()))]
        torch.set_rng_state(rng[0])
        if len(rng) > 1:
            torch.cuda.set_rng_state(rng[1], self.device)
        self.step = state["step"]
        self.train_seconds = state.get("train_seconds", 0.0)

    def _truncate_log(self) -> None:
        """Drop rows of metrics.csv logged after the checkpoint being resumed (they will be logged again)."""
        path = self.out / METRICS_CSV
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if int(r[0]) <= self.step]
        if len(kept) < len(rows):
            text = io.StringIO()
            csv.writer(text).writerows(kept)
            write_atomic(path, text.getvalue().encode())

    # ----- the loop -------------------------------------------------------------------------------------
    def batch(self, step: int) -> torch.Tensor:
        """This rank's batch of ``step`` in model space: epochs are seeded permutations, so a resumed run sees the
        same order; image pixels are dequantised afresh for every batch."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._order_epoch != epoch:
            generator = torch.Generator().manual_seed(self.cfg.seed + epoch)
            self._order = torch.randperm(len(self.train), generator=generator).to(self.device)
            self._order_epoch = epoch
        start = position * self.global_batch + self.rank * self.cfg.batch_size
        return self.transform.to_model(to_data_space(self.train[self._order[start:start + self.cfg.batch_size]]))

    def train_step(self, step: int) -> torch.Tensor:
        """One optimizer step of Algorithm 1 on this rank's batch; returns the (unsynchronised) mean loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, step, self.schedule_steps)
        x = self.batch(step)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        with autocast:
            loss = self.loss_fn(x).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach()

    def run(self, log_every: int = 25) -> bool:
        """Train until ``total_steps``, checkpointing every ``checkpoint_every`` steps and at the end, with a sample
        grid per epoch for images. Returns False when a signal (Ctrl-C) stopped it early, after saving."""
        cfg = self.cfg
        if self.master:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "config.json", self.config)
            print(f"pyddpm-train: {cfg.data} with {cfg.net} on {self.device} x {self.world}; "
                  f"{self.total_steps} steps of batch {self.global_batch} (= {cfg.batch_size} x {self.world}), "
                  f"lr {cfg.lr}; writing {self.out}", flush=True)
        self._pending: list[torch.Tensor] = []
        self._last_saved = self.step
        self._restart_clock()
        stopping = False
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", unit="step",
                   disable=not self.master, dynamic_ncols=True)
        try:
            with StopRequest() as stop:
                while self.step < self.total_steps and not stopping:
                    self._pending.append(self.train_step(self.step))
                    self.step += 1
                    bar.update(1)
                    at_checkpoint = self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps
                    at_epoch_end = self.step % self.steps_per_epoch == 0
                    if (len(self._pending) == log_every or at_checkpoint or at_epoch_end
                            or (self.world == 1 and stop.requested)):
                        stopping = self._flush(bar, stop.requested)
                    if at_checkpoint or stopping:
                        self._save()
                    if at_epoch_end and not stopping and self.images and cfg.grid_samples > 0 and self.master:
                        self.write_grid(self.out / "grids" / f"epoch_{self.step // self.steps_per_epoch:03d}.png")
                        self._restart_clock()
        except KeyboardInterrupt:
            if self.master:
                print(f"\ninterrupted twice: stopped without saving; the checkpoint of step {self._last_saved} in "
                      f"{self.out} is kept", file=sys.stderr)
            raise
        finally:
            bar.close()
        if self.world > 1:
            # Leave together: a gloo rank that tears its process group down while a peer's last messages are
            # still in flight can abort ("terminate called without an active exception").
            dist.barrier()
        if stopping and self.master:
            print(f"stopped at step {self.step}; checkpoint saved. Continue with: pyddpm-train --resume {self.out}",
                  file=sys.stderr)
        return not stopping

    def _restart_clock(self) -> None:
        self._tick, self._tick_step = time.perf_counter(), self.step

    def _save(self) -> None:
        self.save()
        self._last_saved = self.step
        self._restart_clock()

    def _flush(self, bar, stop_requested: bool) -> bool:
        """Check and log the losses since the last flush; stop on a non-finite one before anything is saved.
        Returns whether to stop because a signal reached this process (under DDP: any process)."""
        losses = torch.stack(self._pending).float().cpu()
        self._pending.clear()
        flags = torch.tensor([float(not torch.isfinite(losses).all()), float(stop_requested)])
        if self.world > 1:  # every rank flushes at the same steps, so all agree on stopping
            flags = flags.to(self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            flags = flags.cpu()
        if flags[0]:
            bad = losses[~torch.isfinite(losses)]
            value = f"{bad[0].item()}" if len(bad) else "non-finite on another process"
            raise NonFiniteLoss(
                f"the loss became {value} by step {self.step}; stopped. The last good checkpoint "
                f"(step {self._last_saved}) in {self.out} is kept: lower --lr or --grad-clip and resume from it")
        elapsed = time.perf_counter() - self._tick
        self.train_seconds += elapsed
        rate = (self.step - self._tick_step) * self.global_batch / elapsed
        self._restart_clock()
        bar.set_postfix(loss=f"{losses.mean():.4f}", img_s=f"{rate:,.0f}")
        if self.master:
            self._log(losses, rate)
        return bool(flags[1])

    def _log(self, losses: torch.Tensor, rate: float) -> None:
        path = self.out / METRICS_CSV
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "epoch", "loss", "lr", "images_per_s"])
            writer.writerow([self.step, self.step / self.steps_per_epoch, f"{losses.mean().item():.6g}",
                             f"{self.optimizer.param_groups[0]['lr']:.6g}", f"{rate:.1f}"])

    # ----- results ----------------------------------------------------------------------------------------
    def write_grid(self, path: Path, steps: int | None = None) -> float:
        """A PNG grid of ``grid_samples`` images from the sampling (EMA) weights, by DDIM with ``grid_steps`` steps
        (``steps``=0: all T steps of Algorithm 2); the same seed every time, so grids are comparable. Returns seconds."""
        steps = self.cfg.grid_steps if steps is None else steps
        model = self.sampling_model()
        was_training = model.training
        start = time.perf_counter()
        model.eval()
        try:
            images = generate_samples(model, self.config["data"], self.cfg.grid_samples, seed=self.cfg.seed,
                                      steps=min(steps, self.cfg.T) or None, progress=steps == 0)
        finally:
            model.train(was_training)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image_grid(images.reshape(-1, *self.config["data"]["image_shape"]), path)
        return time.perf_counter() - start

    def report(self) -> dict:
        """Write ``loss.png``, ``metrics.json`` and ``samples.png``: toy data beside its true density (with the toy
        metrics), images as a grid drawn by Algorithm 2 with all T steps."""
        with open(self.out / METRICS_CSV) as f:
            rows = list(csv.DictReader(f))
        plot_loss([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], self.out / "loss.png",
                  title=f"{self.cfg.data}, {self.cfg.net}")
        timing = {"steps": self.step, "epochs": round(self.step / self.steps_per_epoch, 3),
                  "train_seconds": round(self.train_seconds, 2),
                  "train_images_per_s": round(self.step * self.global_batch / max(self.train_seconds, 1e-9), 1)}
        if self.images:
            metrics = dict(timing)
            if self.cfg.grid_samples > 0:
                metrics.update(sampling_seconds=round(self.write_grid(self.out / "samples.png", steps=0), 2),
                               sampled_images=self.cfg.grid_samples)
            write_json(self.out / "metrics.json", metrics)
            return metrics
        model = self.sampling_model().eval()
        start = time.perf_counter()
        samples = generate_samples(model, self.config["data"], self.cfg.num_samples, seed=self.cfg.seed,
                                   progress=True)
        seconds = time.perf_counter() - start
        distribution = toy_distribution(self.cfg.data)
        metrics = toy_metrics(distribution, samples, seed=self.cfg.seed + 1)
        metrics.update(steps=self.step, sampling_seconds=round(seconds, 2))
        write_json(self.out / "metrics.json", metrics)
        plot_toy_samples(distribution, samples, self.out / "samples.png", title=f"step {self.step}")
        return metrics


def _distributed_setup(device: torch.device) -> tuple[int, int, int]:
    """(world size, rank, local rank); under torchrun initialises the process group (NCCL for CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


# ----------------------------------------------------------------------------------------------------------
IMAGE_DEFAULTS = {"batch_size": 128, "epochs": 20}  # toy defaults are TrainConfig's
NET_DEFAULT_LR = {"unet-ddpm": 2e-4}  # Ho et al.'s rate for their U-Net; 1e-3 (TrainConfig's) otherwise


def _channel_list(text: str) -> list[int]:
    try:
        channels = [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 32,64,128, got {text!r}") from None
    if not channels or min(channels) < 1:
        raise argparse.ArgumentTypeError(f"channels must be positive, got {text!r}")
    return channels


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each flag's default, except None: those flags state their default in words."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="pyddpm-train", formatter_class=_HelpFormatter,
        description="Train a DDPM (Ho et al. 2020, Algorithm 1) and write a run directory with the weights "
                    "(safetensors), config.json, metrics.csv, loss.png, metrics.json and samples.png (toy data: "
                    "beside the true density; images: a grid, plus grids/epoch_NNN.png after every epoch). "
                    "Under torchrun it trains with DDP.")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data,
                   help="chequerboard (cb), two-gaussians (tg), mnist or fashion-mnist")
    g.add_argument("--data-dir", default=None,
                   help="directory with the IDX files (gzipped or not) of mnist / fashion-mnist (default: mnist "
                        "../shared/data/mnist when it exists, else ./data/MNIST/raw; fashion-mnist "
                        "/usr/share/datasets/fashion-mnist from `apt-get install dataset-fashion-mnist`, else "
                        "./data/FashionMNIST/raw)")
    g.add_argument("--download", action="store_true",
                   help="fetch missing image files through torchvision into the data directory (nothing is "
                        "downloaded without this flag)")
    g.add_argument("--data-scale", type=float, default=None,
                   help="the model sees (x - 0.5) * scale; default 64 for toy data (measured, see README), "
                        "2 for images (the exercise's [-1, 1])")
    g.add_argument("--num-train", type=int, default=d.num_train,
                   help="toy data: training set size; images: use at most the first N training images")
    g = p.add_argument_group("network")
    g.add_argument("--net", "--network", dest="net", default=d.net, choices=NETWORK_CHOICES,
                   help="fc: the exercise's MLP; unet: the exercise's MNIST U-Net; unet-ddpm: Ho et al.'s U-Net "
                        "(residual blocks, GroupNorm, attention at 7x7)")
    g.add_argument("--hidden", "--num-hidden", dest="hidden", type=int, default=d.hidden,
                   help="units per hidden layer (fc; the exercise uses 64)")
    g.add_argument("--depth", "--num-layers", dest="depth", type=int, default=d.depth,
                   help="hidden layers (fc; the exercise uses 2)")
    g.add_argument("--activation", choices=list(ACTIVATIONS), default=d.activation,
                   help="activation (fc; the exercise uses relu)")
    g.add_argument("--time-embedding", choices=list(TIME_EMBEDDINGS), default=d.time_embedding,
                   help="how the network sees t (fc; the exercise uses linear)")
    g.add_argument("--channels", type=_channel_list, default=None,
                   help="feature channels per resolution level, comma-separated (unet: 5 levels, default "
                        "32,64,128,256,256 as the exercise; unet-ddpm: default 64,128,128 for 28, 14, 7)")
    g.add_argument("--num-res-blocks", type=int, default=d.num_res_blocks, help="residual blocks per level (unet-ddpm)")
    g.add_argument("--dropout", type=float, default=d.dropout, help="dropout in the residual blocks (unet-ddpm)")
    g.add_argument("--attention", action=argparse.BooleanOptionalAction, default=d.attention,
                   help="self-attention at the lowest resolution and in the middle (unet-ddpm)")
    g = p.add_argument_group("diffusion")
    g.add_argument("--T", type=int, default=d.T, help="number of diffusion steps")
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="beta schedule")
    g.add_argument("--beta-1", type=float, default=d.beta_1, help="first beta of the linear schedule")
    g.add_argument("--beta-T", type=float, default=d.beta_T, help="last beta of the linear schedule")
    g.add_argument("--variance", choices=["beta", "beta_tilde"], default=d.variance,
                   help="reverse-process variance sigma_t^2 used when sampling")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None,
                   help=f"passes over the training set (default {d.epochs} for toy data, "
                        f"{IMAGE_DEFAULTS['epochs']} for images)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after at most this many optimizer steps (for smoke runs; the "
                        "learning-rate schedule still follows --epochs, so a resumed run continues it exactly)")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"examples per step and process (default {d.batch_size} for toy data, "
                        f"{IMAGE_DEFAULTS['batch_size']} for images)")
    g.add_argument("--lr", type=float, default=None,
                   help=f"AdamW learning rate (default {d.lr}; {NET_DEFAULT_LR['unet-ddpm']} for unet-ddpm)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear learning-rate warm-up steps")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="after warm-up: cosine decay to 0 over the run, or constant")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0 disables)")
    g.add_argument("--ema", type=float, default=d.ema, help="EMA decay of the sampling weights (0 disables)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA, off on CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of data, initial weights and noise")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    g.add_argument("--out", default=None, help="run directory (default runs/DATA-NET-TIMESTAMP)")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR exactly where it stopped (its settings are used; "
                        "--epochs and --max-steps may extend it, --data-dir may point to moved data)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    g.add_argument("--num-samples", type=int, default=d.num_samples,
                   help="toy data: samples for the final picture and metrics")
    g.add_argument("--grid-samples", type=int, default=d.grid_samples,
                   help="images: samples in each epoch's grid and in the final samples.png (0: no grids)")
    g.add_argument("--grid-steps", type=int, default=d.grid_steps,
                   help="images: DDIM steps for the per-epoch grids (0: all T steps); samples.png always uses "
                        "Algorithm 2 with all T steps")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A validated TrainConfig from parsed arguments (or, with --resume, from the run being resumed)."""
    if args.resume:
        stored = read_checkpoint(args.resume).config["train"]
        cfg = TrainConfig(**{k: v for k, v in stored.items() if k in TrainConfig.__dataclass_fields__})
        cfg.max_steps = None  # a resumed run goes on to the end of its schedule unless --max-steps says otherwise
        if args.data_dir is not None:
            cfg.data_dir = args.data_dir
    else:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
        if not is_toy(cfg.data):
            for name, value in IMAGE_DEFAULTS.items():
                if getattr(args, name) is None:
                    setattr(cfg, name, value)
        if args.lr is None:
            cfg.lr = NET_DEFAULT_LR.get(cfg.net, cfg.lr)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    cfg.data = canonical_name(cfg.data)
    for name in ("T", "batch_size", "num_train", "epochs", "checkpoint_every", "hidden", "depth", "num_res_blocks"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(cfg, name)}")
    for name in ("grid_samples", "grid_steps"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"--max-steps must be a positive integer, got {cfg.max_steps}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {cfg.lr}")
    return cfg


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        device = pick_device(args.device)
        out = Path(args.resume or args.out or f"runs/{cfg.data}-{cfg.net}-{time.strftime('%Y%m%d-%H%M%S')}")
        trainer = Trainer(cfg, out, device, resume=bool(args.resume))
        if not trainer.run():
            return 130
        if trainer.master:
            metrics = trainer.report()
            print(json.dumps(metrics, indent=2))
            print(f"done: {out}")
    except KeyboardInterrupt:
        return 130
    except (CheckpointError, NonFiniteLoss, ValueError) as err:
        print(f"pyddpm-train: error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
