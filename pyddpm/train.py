"""Train a DDPM (Algorithm 1) and write a run directory; `pyddpm-train --help` lists every setting.

One readable loop in the style of nanoGPT: set-up, then a ``while`` over optimizer steps with logging,
checkpoints and pictures at clear intervals. Under ``torchrun`` the same loop trains with DDP (rank 0 writes).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import (CHECKPOINT_FILE, CheckpointError, build_model, load_weights, read_checkpoint, save_checkpoint,
                         write_json)
from .data import DataTransform, canonical_name, is_toy, load_training_data, toy_distribution
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
    net: str = "fc"
    hidden: int = 256
    depth: int = 4
    activation: str = "silu"
    time_embedding: str = "sinusoidal"
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
    amp: bool | None = None
    compile: bool = False

    def resolved_scale(self) -> float:
        """The data scale: as given, else 32 for the toy sets (chosen by measurement, see README) and 2 for images."""
        if self.data_scale is not None:
            return self.data_scale
        return TOY_DATA_SCALE if is_toy(self.data) else 2.0


TOY_DATA_SCALE = 32.0


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------------------
def network_settings(cfg: TrainConfig, sample_dim: int) -> dict:
    """The ``{"name", "kwargs"}`` entry of the run config that rebuilds the network."""
    if cfg.net == "fc":
        kwargs = dict(input_dim=sample_dim, num_hidden=cfg.hidden, num_layers=cfg.depth,
                      activation=cfg.activation, time_embedding=cfg.time_embedding)
    else:
        raise ValueError(f"unknown network {cfg.net!r}; choose one of fc")
    return {"name": cfg.net, "kwargs": kwargs}


def run_config(cfg: TrainConfig, train_data: torch.Tensor) -> dict:
    """The JSON config of a run: enough to rebuild the model and map samples back to data space."""
    shape = list(train_data.shape[1:])
    data = {"name": canonical_name(cfg.data), "shape": shape, "center": 0.5, "scale": cfg.resolved_scale()}
    return {
        "pyddpm_version": __version__,
        "diffusion": {"T": cfg.T, "schedule": cfg.schedule, "beta_1": cfg.beta_1, "beta_T": cfg.beta_T,
                      "variance": cfg.variance},
        "network": network_settings(cfg, int(torch.tensor(shape).prod())),
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
class Trainer:
    """Holds the state of one run; ``run()`` is the training loop."""

    def __init__(self, cfg: TrainConfig, out: Path, device: torch.device, resume: bool):
        self.cfg, self.out = cfg, out
        self.world, self.rank, self.local_rank = _distributed_setup()
        self.master = self.rank == 0
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device

        train = load_training_data(cfg.data, num_train=cfg.num_train, seed=cfg.seed)
        self.config = run_config(cfg, train)
        self.transform = DataTransform(0.5, cfg.resolved_scale())
        self.train = train.to(device)  # the data sets pyddpm trains on fit on any device
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
        self._order_epoch, self._order = -1, None
        if not resume and (out / CHECKPOINT_FILE).exists():
            raise ValueError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
        if resume:
            self._restore(read_checkpoint(out))

        self.amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
        wrapped = self.model
        if self.world > 1:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        self.loss_fn = torch.compile(wrapped) if cfg.compile else wrapped

    # ----- checkpoints ----------------------------------------------------------------------------------
    def sampling_model(self):
        return self.ema.shadow if self.ema is not None else self.model

    def _rng_states(self) -> list[torch.Tensor]:
        states = [torch.get_rng_state()]
        if self.device.type == "cuda":
            states.append(torch.cuda.get_rng_state(self.device))
        return states

    def save(self) -> None:
        """Write the checkpoint (all ranks take part in gathering RNG states; rank 0 writes)."""
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
                 "ema_updates": self.ema.updates if self.ema is not None else 0}
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

    # ----- the loop -------------------------------------------------------------------------------------
    def batch(self, step: int) -> torch.Tensor:
        """This rank's batch of ``step``: epochs are seeded permutations, so a resumed run sees the same order."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._order_epoch != epoch:
            generator = torch.Generator().manual_seed(self.cfg.seed + epoch)
            self._order = torch.randperm(len(self.train), generator=generator).to(self.device)
            self._order_epoch = epoch
        start = position * self.global_batch + self.rank * self.cfg.batch_size
        return self.transform.to_model(self.train[self._order[start:start + self.cfg.batch_size]])

    def train_step(self, step: int) -> torch.Tensor:
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

    def run(self, log_every: int = 25) -> None:
        """Train until ``total_steps``; checkpoint every ``checkpoint_every`` steps and at the end."""
        cfg = self.cfg
        if self.master:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "config.json", self.config)
            print(f"pyddpm-train: {cfg.data} with {cfg.net} on {self.device} x {self.world}; "
                  f"{self.total_steps} steps of batch {self.global_batch} (= {cfg.batch_size} x {self.world}), "
                  f"lr {cfg.lr}; writing {self.out}", flush=True)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", unit="step",
                   disable=not self.master, dynamic_ncols=True)
        self._pending: list[torch.Tensor] = []
        self._tick, self._tick_step = time.perf_counter(), self.step
        self._last_saved = self.step
        try:
            while self.step < self.total_steps:
                self._pending.append(self.train_step(self.step))
                self.step += 1
                bar.update(1)
                at_checkpoint = self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps
                if len(self._pending) == log_every or at_checkpoint:
                    self._flush(bar)
                if at_checkpoint:
                    self._save()
        except KeyboardInterrupt:
            bar.close()
            self._flush(bar)
            self._save()
            if self.master:
                print(f"\ninterrupted at step {self.step}; checkpoint saved. Continue with: "
                      f"pyddpm-train --resume {self.out}", file=sys.stderr)
            raise
        finally:
            bar.close()

    def _save(self) -> None:
        self.save()
        self._last_saved = self.step

    def _flush(self, bar) -> None:
        """Check and log the losses since the last flush; stop on a non-finite one before anything is saved."""
        if not self._pending:
            return
        losses = torch.stack(self._pending).float().cpu()
        self._pending.clear()
        if not torch.isfinite(losses).all():
            raise NonFiniteLoss(
                f"the loss became {losses[~torch.isfinite(losses)][0].item()} by step {self.step}; stopped. "
                f"The last good checkpoint (step {self._last_saved}) in {self.out} is kept: lower --lr or "
                "--grad-clip and resume from it")
        rate = (self.step - self._tick_step) * self.global_batch / (time.perf_counter() - self._tick)
        self._tick, self._tick_step = time.perf_counter(), self.step
        bar.set_postfix(loss=f"{losses.mean():.4f}", img_s=f"{rate:,.0f}")
        if self.master:
            self._log(losses, rate)
        bar.close()

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
    def report(self) -> dict:
        """Write ``loss.png`` and, for toy data, samples beside the true density and ``metrics.json``."""
        with open(self.out / METRICS_CSV) as f:
            rows = list(csv.DictReader(f))
        plot_loss([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], self.out / "loss.png",
                  title=f"{self.cfg.data}, {self.cfg.net}")
        model = self.sampling_model().eval()
        data_cfg = self.config["data"]
        if not is_toy(self.cfg.data):
            return {}
        start = time.perf_counter()
        samples = generate_samples(model, data_cfg, self.cfg.num_samples, seed=self.cfg.seed, progress=True)
        seconds = time.perf_counter() - start
        distribution = toy_distribution(self.cfg.data)
        metrics = toy_metrics(distribution, samples, seed=self.cfg.seed + 1)
        metrics.update(steps=self.step, sampling_seconds=round(seconds, 2))
        write_json(self.out / "metrics.json", metrics)
        plot_toy_samples(distribution, samples, self.out / "samples.png", title=f"step {self.step}")
        return metrics


def _distributed_setup() -> tuple[int, int, int]:
    """(world size, rank, local rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


# ----------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="pyddpm-train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a DDPM (Ho et al. 2020, Algorithm 1) and write a run directory with the weights "
                    "(safetensors), config.json, metrics.csv, loss.png and, for the toy data, samples.png "
                    "beside the true density and metrics.json.")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="chequerboard (cb) or two-gaussians (tg)")
    g.add_argument("--data-scale", type=float, default=None,
                   help="the model sees (x - 0.5) * scale; default 32 for toy data (measured, see README), "
                        "2 for images (the exercise's [-1, 1])")
    g.add_argument("--num-train", type=int, default=d.num_train, help="toy training set size")
    g = p.add_argument_group("network")
    g.add_argument("--net", "--network", dest="net", default=d.net, help="network architecture: fc")
    g.add_argument("--hidden", "--num-hidden", dest="hidden", type=int, default=d.hidden,
                   help="units per hidden layer (fc; the exercise uses 64)")
    g.add_argument("--depth", "--num-layers", dest="depth", type=int, default=d.depth,
                   help="hidden layers (fc; the exercise uses 2)")
    g.add_argument("--activation", choices=list(ACTIVATIONS), default=d.activation,
                   help="activation (fc; the exercise uses relu)")
    g.add_argument("--time-embedding", choices=list(TIME_EMBEDDINGS), default=d.time_embedding,
                   help="how the network sees t (fc; the exercise uses linear)")
    g = p.add_argument_group("diffusion")
    g.add_argument("--T", type=int, default=d.T, help="number of diffusion steps")
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="beta schedule")
    g.add_argument("--beta-1", type=float, default=d.beta_1, help="first beta of the linear schedule")
    g.add_argument("--beta-T", type=float, default=d.beta_T, help="last beta of the linear schedule")
    g.add_argument("--variance", choices=["beta", "beta_tilde"], default=d.variance,
                   help="reverse-process variance sigma_t^2 used when sampling")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help=f"passes over the training set (default {d.epochs})")
    g.add_argument("--max-steps", type=int, default=None, help="stop after at most this many optimizer steps (for smoke runs; the "
                        "learning-rate schedule still follows --epochs, so a resumed run continues it exactly)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per step and process")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
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
                        "--epochs and --max-steps may extend it)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    g.add_argument("--num-samples", type=int, default=d.num_samples, help="samples for the final picture and metrics")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A validated TrainConfig from parsed arguments (or, with --resume, from the run being resumed)."""
    if args.resume:
        stored = read_checkpoint(args.resume).config["train"]
        cfg = TrainConfig(**{k: v for k, v in stored.items() if k in TrainConfig.__dataclass_fields__})
    else:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    cfg.data = canonical_name(cfg.data)
    for name in ("T", "batch_size", "num_train", "epochs", "checkpoint_every", "hidden", "depth"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(cfg, name)}")
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
        trainer.run()
        if trainer.master:
            metrics = trainer.report()
            if metrics:
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
