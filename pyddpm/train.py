"""The training loop of Algorithm 1 (``Trainer``): AMP, EMA, checkpoints, resume, torchrun/DDP and progress.

One readable loop in the style of nanoGPT: set-up, then a ``while`` over optimizer steps with logging and
checkpoints at clear intervals, and a hook at each epoch's end (the command line draws sample grids there).
Under ``torchrun`` the same loop trains with DDP (rank 0 writes). Settings come from ``pyddpm.config``.
"""
from __future__ import annotations

import csv
import io
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .config import TrainConfig, run_config
from .data import DataTransform, describe_training_data, load_training_data, to_data_space
from .diffusion import DDPM, low_t_timesteps
from .ema import EMA
from .accel import check_precision_hardware, training_network
from .store import (CHECKPOINT_FILE, CONFIG_FILE, CheckpointError, architecture, build_model, load_weights,
                    optimizer_tensors, read_checkpoint, remove_temporaries, restore_optimizer, save_checkpoint,
                    write_atomic, write_json)

METRICS_CSV = "metrics.csv"
# a rise of more than this many times |first loss| stops a run: blown-up weights give 1e24 on the Chequerboard at
# --lr 1e9, while the RealNVP flow on MNIST rises 28 times |first loss| in its first 25 steps at its default lr, and
# learns
DIVERGED_FACTOR = 1000.0


def loss_left_its_range(loss: float, start: float) -> bool:
    """Whether a mean training loss rose more than ``DIVERGED_FACTOR`` times ``|start|`` (at least that many units)
    above the session's first loss ``start``: the weights have diverged while still finite (a DDPM starts near D,
    the L_simple of eps_hat = 0, and a flow's or VAE's early spikes stay far below that)."""
    return loss > start + DIVERGED_FACTOR * max(abs(start), 1.0)


class TrainingDiverged(RuntimeError):
    """The training loss or the weights became NaN or infinite."""


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up over ``cfg.warmup`` steps (Ho et al. sec. 4), then constant or a cosine decay to 0."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.lr_schedule == "constant" or step < cfg.warmup:
        return cfg.lr * warm
    progress = (step - cfg.warmup) / max(1, total_steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


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


class Objective(torch.nn.Module):
    """``model.loss(x)`` as a module's forward, so DDP and torch.compile wrap the training objective of any model
    with a ``loss`` (the DDPM's L_simple, a flow's negative log-likelihood, a VAE's negative ELBO). A DDPM with
    ``low_t_share`` > 0 trains on L_simple's terms with t drawn from ``diffusion.low_t_timesteps`` instead."""

    def __init__(self, model: torch.nn.Module, low_t_share: float = 0.0, low_t_range: float = 0.2):
        super().__init__()
        self.model, self.low_t_share, self.low_t_range = model, low_t_share, low_t_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.low_t_share > 0 and isinstance(self.model, DDPM):
            t = low_t_timesteps(x.shape[0], self.model.T, self.low_t_share, self.low_t_range, x.device)
            return self.model.negative_elbo(x, t).mean()
        return self.model.loss(x)


class Trainer:
    """Holds the state of one run; ``run()`` is the training loop. ``model``: None trains the DDPM of ``cfg``,
    a ``{"name", "kwargs"}`` entry the ``pyddpm.baselines`` model it names (``config.run_config``)."""

    def __init__(self, cfg: TrainConfig, out: Path, device: torch.device, resume: bool, model: dict | None = None):
        self.cfg, self.out = cfg, out
        self.world, self.rank, self.local_rank = _distributed_setup(device)
        self.master = self.rank == 0
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device

        self.amp = cfg.amp if cfg.amp is not None else (device.type == "cuda" or cfg.precision == "bf16")
        if self.amp or cfg.precision == "bf16":  # before any data is loaded
            check_precision_hardware("bf16", device, "--precision bf16" if cfg.precision == "bf16" else "--amp")
        if cfg.download and self.world > 1 and not self.master:
            dist.barrier()  # rank 0 downloads first
        train = load_training_data(cfg.data, num_train=cfg.num_train, seed=cfg.seed, data_dir=cfg.data_dir,
                                   download=cfg.download and self.master)
        if cfg.download and self.world > 1 and self.master:
            dist.barrier()
        self.config = run_config(cfg, train, model)
        self.transform = DataTransform(0.5, cfg.resolved_scale())
        self.train = train.to(device)  # the data sets pyddpm trains on fit on any device (MNIST: 47 MB of uint8)
        self.global_batch = cfg.batch_size * self.world
        self.steps_per_epoch = len(train) // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch size {cfg.batch_size} x {self.world} processes exceeds the {len(train)} "
                             "training examples; lower --batch-size")
        self.schedule_steps = cfg.epochs * self.steps_per_epoch  # the learning-rate schedule's horizon
        self.total_steps = min(cfg.max_steps or self.schedule_steps, self.schedule_steps)

        self._order_epoch, self._order = -1, None
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = build_model(self.config).to(device)
        if not resume:
            self._initialise_from_data()
        # the average holds the network as built (samplers make their own fast copies of it, and can export it)
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        if cfg.fast and isinstance(self.model, DDPM):
            self.model.network = training_network(self.model.network, device, "bf16" if self.amp else "fp32")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        torch.manual_seed(cfg.seed + 1000 * self.rank)  # distinct noise per rank
        self.step = 0
        self.train_seconds = 0.0  # time spent in optimizer steps (not checkpoints or pictures), over all sessions
        self._saved_step: int | None = None  # the step of the checkpoint on disk (None: none written yet)
        self._loss_start: float | None = None  # this session's first loss, the reference of loss_left_its_range
        if self.master and out.is_dir():  # left by a process killed while writing
            remove_temporaries(out, (CHECKPOINT_FILE, CONFIG_FILE, METRICS_CSV))
        if not resume and (out / CHECKPOINT_FILE).exists():
            raise ValueError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
        if resume:
            try:
                self._restore(read_checkpoint(out))
            except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
                if isinstance(err, CheckpointError):
                    raise
                raise CheckpointError(f"cannot resume {out}: its training state is incomplete or corrupted "
                                      f"({type(err).__name__}: {err})") from None
            self._saved_step = self.step
            if self.master:
                self._truncate_log()

        wrapped = Objective(self.model, cfg.resolved_low_t_share(), cfg.low_t_range)
        if self.world > 1:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                wrapped, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        self.loss_fn = torch.compile(wrapped) if cfg.compile else wrapped

    def _initialise_from_data(self) -> None:
        """Run the data-dependent initialisation of layers that have one (a flow's actnorm: ``needs_init()``) on the
        first batch, before the EMA copies the model and DDP broadcasts rank 0's weights."""
        if any(getattr(m, "needs_init", lambda: False)() for m in self.model.modules()):
            with torch.no_grad():
                self.model.train().loss(self.batch(0))

    # ----- checkpoints ----------------------------------------------------------------------------------
    def model_name(self) -> str:
        """The baseline's name, or the DDPM's network."""
        return self.config["model"]["name"] if "model" in self.config else self.cfg.net

    def sampling_model(self):
        """The model samples come from: the EMA weights when training keeps them."""
        return self.ema.shadow if self.ema is not None else self.model

    def _rng_states(self) -> list[torch.Tensor]:
        states = [torch.get_rng_state()]
        if self.device.type == "cuda":
            states.append(torch.cuda.get_rng_state(self.device))
        return states

    def kept_checkpoint(self) -> str:
        """What a stopped run leaves on disk and how to go on, for the divergence messages."""
        if self._saved_step is None:
            return (f"No checkpoint was written (the first was due at step "
                    f"{min(self.cfg.checkpoint_every, self.total_steps)}), so there is nothing to resume: start again "
                    "with a lower --lr or --grad-clip")
        return (f"The last good checkpoint (step {self._saved_step}) in {self.out} is kept: resume it with "
                f"`pyddpm-train --resume {self.out} --lr <lower>` (or --grad-clip <lower>)")

    def _finite_state(self) -> bool:
        """Whether every weight (raw and EMA), buffer and optimizer moment that a checkpoint would hold is finite."""
        tensors = list(self.model.state_dict().values())
        if self.ema is not None:
            tensors += list(self.ema.shadow.state_dict().values())
        tensors += list(optimizer_tensors(self.optimizer)[0].values())
        return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())

    def save(self) -> None:
        """Write the checkpoint (all ranks take part in gathering RNG states; rank 0 writes); never one holding a
        NaN or infinite number (TrainingDiverged instead)."""
        if not self._finite_state():
            raise TrainingDiverged(f"the weights became NaN or infinite by step {self.step}; stopped. "
                                   f"{self.kept_checkpoint()}")
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
        if architecture(checkpoint.config) != architecture(self.config):
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

    def run(self, on_epoch_end: Callable[["Trainer"], None] | None = None,
            other_work: Callable[["Trainer"], float] | None = None, log_every: int = 25) -> bool:
        """Train until ``total_steps``, checkpointing every ``checkpoint_every`` steps and at the end, calling
        ``on_epoch_end(self)`` on rank 0 after each full epoch (its time is not training time). ``other_work(self)``
        estimates the seconds of the run's work still to come besides optimizer steps (grids, final sampling): the
        bar's ``run_eta`` then covers the whole run. Returns False when a signal (Ctrl-C) stopped it early, after
        saving."""
        cfg = self.cfg
        self._other_work = other_work
        self._session_steps, self._session_seconds = 0, 0.0  # optimizer steps and their time, this session
        if self.master:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "config.json", self.config)
            print(f"pyddpm-train: {cfg.data} with {self.model_name()} on {self.device} x {self.world}; "
                  f"{self.total_steps} steps of batch {self.global_batch} (= {cfg.batch_size} x {self.world}), "
                  f"lr {cfg.lr}; writing {self.out}", flush=True)
            print(f"pyddpm-train: {describe_training_data(cfg.data, len(self.train), seed=cfg.seed, data_dir=cfg.data_dir)}"
                  f"; {self.steps_per_epoch} steps per epoch, {cfg.epochs} epochs", flush=True)
        self._pending: list[torch.Tensor] = []
        self._restart_clock()
        stopping = False
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self._epoch_label(), unit="step",
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
                    if at_epoch_end and not stopping and on_epoch_end is not None and self.master:
                        on_epoch_end(self)
                        self._restart_clock()
        except KeyboardInterrupt:
            if self.master:
                kept = ("no checkpoint was written" if self._saved_step is None else
                        f"the checkpoint of step {self._saved_step} in {self.out} is kept")
                print(f"\ninterrupted twice: stopped without saving; {kept}", file=sys.stderr)
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

    def timing(self) -> dict:
        """Steps, epochs and training seconds (optimizer steps only, over all sessions) of the run so far."""
        return {"steps": self.step, "epochs": round(self.step / self.steps_per_epoch, 3),
                "train_seconds": round(self.train_seconds, 2),
                "train_images_per_s": round(self.step * self.global_batch / max(self.train_seconds, 1e-9), 1)}

    def _epoch_label(self) -> str:
        """The progress bar's label: the epoch being trained (the bar itself counts steps)."""
        epoch = min(self.step // self.steps_per_epoch + 1, self.cfg.epochs)
        return f"epoch {epoch}/{self.cfg.epochs}, step"

    def _restart_clock(self) -> None:
        self._tick, self._tick_step = time.perf_counter(), self.step

    def _save(self) -> None:
        self.save()
        self._saved_step = self.step
        self._restart_clock()

    def _flush(self, bar, stop_requested: bool) -> bool:
        """Check and log the losses since the last flush; stop on a non-finite one, or a mean that left its range
        (``loss_left_its_range``), before anything is saved.
        Returns whether to stop because a signal reached this process (under DDP: any process)."""
        losses = torch.stack(self._pending).float().cpu()
        self._pending.clear()
        finite = bool(torch.isfinite(losses).all())
        if self._loss_start is None and finite:
            self._loss_start = losses[0].item()
        left = finite and loss_left_its_range(losses.mean().item(), self._loss_start)
        flags = torch.tensor([float(not finite), float(stop_requested), float(left)])
        if self.world > 1:  # every rank flushes at the same steps, so all agree on stopping
            flags = flags.to(self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            flags = flags.cpu()
        if flags[0]:
            bad = losses[~torch.isfinite(losses)]
            value = f"{bad[0].item()}" if len(bad) else "non-finite on another process"
            raise TrainingDiverged(f"the loss became {value} by step {self.step}; stopped. {self.kept_checkpoint()}")
        if flags[2]:  # before the checkpoint of this step: the one on disk predates the rise
            value = f"{losses.mean().item():.4g}" if left else "out of its range on another process"
            raise TrainingDiverged(f"the loss rose to {value} by step {self.step}, from {self._loss_start:.4g} at "
                                   f"this session's first step: the weights diverged; stopped. "
                                   f"{self.kept_checkpoint()}")
        elapsed = time.perf_counter() - self._tick
        self.train_seconds += elapsed
        self._session_seconds += elapsed
        self._session_steps += self.step - self._tick_step
        rate = (self.step - self._tick_step) * self.global_batch / elapsed
        self._restart_clock()
        bar.set_description(self._epoch_label(), refresh=False)
        postfix = {"loss": f"{losses.mean():.4f}", "img_s": f"{rate:,.0f}"}
        if self._other_work is not None and self.master:
            training_left = (self.total_steps - self.step) * self._session_seconds / max(self._session_steps, 1)
            postfix["run_eta"] = tqdm.format_interval(training_left + self._other_work(self))
        bar.set_postfix(postfix)
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


def _distributed_setup(device: torch.device) -> tuple[int, int, int]:
    """(world size, rank, local rank); under torchrun initialises the process group (NCCL for CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
