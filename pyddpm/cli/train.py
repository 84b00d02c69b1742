"""`pyddpm-train`: train a DDPM (Algorithm 1) and write a run directory; `pyddpm-train --help` lists every setting.

Parses the command line into a ``TrainConfig`` (whose defaults it reads, never restates), runs the ``Trainer``
with per-epoch sample grids for images, then writes the end-of-run report."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..baselines import BASELINES, DATA_SCALE, build_baseline, default_kwargs
from ..config import (IMAGE_DEFAULTS, LEGACY_SETTINGS, LR_SCHEDULES, NET_DEFAULT_LR, TOY_DEFAULTS, TrainConfig,
                      network_settings)
from ..data import canonical_name, data_config_entries, is_toy
from ..diffusion import DDPM
from ..evaluate.report import (TUNED_STEPS, TUNING_SWEEPS, metrics_table, tuning_samples, worth_tuning,
                               write_run_report, write_sample_grid)
from ..solvers import DEFAULT_SAMPLER, DEFAULT_STEPS
from ..step_tuning import most_calls
from ..accel import PRECISIONS, keep_freed_memory
from ..nets import NETWORKS
from ..nets.fc import ACTIVATIONS, INPUT_EMBEDDINGS, MAX_INPUT_FREQUENCIES, TIME_EMBEDDINGS
from ..schedules import SCHEDULES, VARIANCES
from ..schema import (MAX_DEPTH, MAX_LEVELS, MAX_NUM_TRAIN, MAX_PARAMETERS, MAX_RES_BLOCKS, MAX_SAMPLES, MAX_T,
                      MAX_WIDTH, count_parameters)
from ..store import CHECKPOINT_FILE, CONFIG_FILE, CheckpointError, read_checkpoint
from ..train import METRICS_CSV, Trainer, TrainingDiverged
from .common import check_float, check_int, check_output_dir, pick_device

# what --resume may change (the rest of a run's settings are fixed by its checkpoint); runtime flags beside them
RESUME_SETTINGS = ("lr", "grad_clip", "epochs", "max_steps", "data_dir")
RUNTIME_FLAGS = ("resume", "device", "out", "model", "model_kwargs")  # a resumed run keeps its stored model
MAX_SEED = 2**62  # the trainer offsets the seed per rank and epoch; Philox seeds are < 2**63


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
                   help="the model sees (x - 0.5) * scale; default 64 for toy data (measured, see docs/course.md), "
                        "2 for images (the exercise's [-1, 1])")
    g.add_argument("--num-train", type=int, default=d.num_train,
                   help="toy data: training set size; images: use at most the first N training images")
    g = p.add_argument_group("network")
    g.add_argument("--net", "--network", dest="net", default=d.net, choices=list(NETWORKS),
                   help="fc: FcNetwork, by default 4 x 256 SiLU with a sinusoidal t and, on toy data, Fourier features "
                        "of x (the exercise's MLP is --hidden 64 --depth 2 --activation relu --time-embedding linear "
                        "--input-embedding none; pyddpm-exercise runs the exercise as "
                        "the course sets it up); unet: the exercise's MNIST U-Net; unet-ddpm: Ho et al.'s U-Net "
                        "(residual blocks, GroupNorm, attention at 7x7)")
    g.add_argument("--hidden", "--num-hidden", dest="hidden", type=int, default=d.hidden,
                   help="units per hidden layer (fc; the exercise uses 64)")
    g.add_argument("--depth", "--num-layers", dest="depth", type=int, default=d.depth,
                   help="hidden layers (fc; the exercise uses 2)")
    g.add_argument("--activation", choices=list(ACTIVATIONS), default=d.activation,
                   help="activation (fc; the exercise uses relu)")
    g.add_argument("--time-embedding", choices=list(TIME_EMBEDDINGS), default=d.time_embedding,
                   help="how the network sees t (fc; the exercise uses linear)")
    g.add_argument("--input-embedding", choices=list(INPUT_EMBEDDINGS), default=None,
                   help="how the network sees x (fc): none feeds x as it is (the exercise); fourier adds sin/cos of "
                        "each coordinate at --input-frequencies octaves (Tancik et al. 2020), which resolve sharp "
                        f"edges better (default {TOY_DEFAULTS['input_embedding']} for toy data, none for images)")
    g.add_argument("--input-frequencies", type=int, default=d.input_frequencies,
                   help="fc, --input-embedding fourier: number of octaves of the Fourier features")
    g.add_argument("--input-max-period", type=float, default=d.input_max_period,
                   help="fc, --input-embedding fourier: the features' longest period in model-space units (data "
                        "times --data-scale; the toy data span 64)")
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
    g.add_argument("--variance", choices=VARIANCES, default=d.variance,
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
    g.add_argument("--low-t-share", type=float, default=None,
                   help="share of each batch whose t is drawn from 1..--low-t-range x T instead of 1..T: more "
                        "training on the last reverse steps, which place sharp edges (L_simple's terms reweighted "
                        f"over t; default {TOY_DEFAULTS['low_t_share']} for toy data, 0 for images: Algorithm 1's "
                        "uniform t)")
    g.add_argument("--low-t-range", type=float, default=d.low_t_range,
                   help="with --low-t-share: the low steps' upper end as a fraction of T")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear learning-rate warm-up steps")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="after warm-up: cosine decay to 0 over the run, or constant")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0 disables)")
    g.add_argument("--ema", type=float, default=d.ema, help="EMA decay of the sampling weights (0 disables)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA, off on CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="bf16: train under bf16 autocast (float32 master weights; --no-amp keeps float32 training) "
                        "and sample the run's pictures in bf16; faster on CPUs with AVX512-BF16/AMX, refused on "
                        "other CPUs (default fp32)")
    g.add_argument("--eager", dest="fast", action="store_false", default=d.fast,
                   help="train and sample the network exactly as built instead of its fast copy "
                        "(pyddpm.accel's levers for this CPU: `python -m pyddpm.accel RUN_DIR` lists them)")
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
                   help="images: network calls of the default sampler for the per-epoch grids (0: its default, "
                        "as samples.png and the toy metrics use)")
    g.add_argument("--tune-steps", action=argparse.BooleanOptionalAction, default=d.tune_steps,
                   help="after training, choose the default sampler's time steps at 5 and 10 calls for the "
                        "trained weights by measurement (pyddpm.step_tuning: closest to Algorithm 2's samples) and "
                        "store them in steps.json, which pyddpm-sample uses (default off: it costs more network "
                        "calls than the run's sampling, and measured worse than trailing spacing on the default "
                        "Chequerboard run at 5 calls; docs/solvers.md)")
    add_model_arguments(p)
    return p


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"hidden\": 64}}', got {text!r}")
    return value


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model and --model-kwargs: train the DDPM or one of the course's baselines (``pyddpm.baselines``)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["ddpm", *BASELINES], default="ddpm",
                   help="ddpm (network and diffusion settings above), or a baseline trained by the same loop: flow "
                        "(RealNVP, exact likelihood) or vae (Gaussian-latent VAE, ELBO); the baselines ignore the "
                        "network and diffusion flags and default to --data-scale 2")
    g.add_argument("--model-kwargs", type=_json_object, default=None, metavar="JSON",
                   help="flow / vae: constructor settings over the data set's defaults "
                        "(pyddpm.baselines.default_kwargs), e.g. '{\"hidden\": 64, \"num_couplings\": 4}'")


# the settings of the DDPM's network and diffusion, which a baseline run (--model flow|vae) has no use for
DDPM_SETTINGS = ("net", "hidden", "depth", "activation", "time_embedding", "input_embedding", "input_frequencies",
                 "input_max_period", "low_t_share", "low_t_range", "channels", "num_res_blocks", "dropout",
                 "attention", "T", "schedule", "beta_1", "beta_T", "variance")


def model_entry(args: argparse.Namespace, cfg: TrainConfig, given: dict[str, str] | None = None) -> dict | None:
    """The baseline's ``{"name", "kwargs"}`` run-config entry (None: a DDPM run); with --resume the stored one.
    A baseline run without --data-scale gets ``baselines.DATA_SCALE`` (set in ``cfg``); ``given`` (the flags on the
    command line) must then hold none of the DDPM's settings."""
    if args.resume:
        return read_checkpoint(args.resume).config.get("model")
    if args.model == "ddpm":
        if args.model_kwargs is not None:
            raise ValueError("--model-kwargs applies to --model flow or vae; the DDPM takes the network flags")
        return None
    ddpm_flags = [flag for dest, flag in (given or {}).items() if dest in DDPM_SETTINGS]
    if ddpm_flags:
        raise ValueError(f"{ddpm_flags[0]} sets the DDPM's network or diffusion; --model {args.model} has neither: "
                         "give its settings with --model-kwargs")
    if cfg.data_scale is None:
        cfg.data_scale = DATA_SCALE
    model = build_baseline(args.model, **{**default_kwargs(args.model, cfg.data), **(args.model_kwargs or {})})
    return {"name": args.model, "kwargs": model.config}  # every setting, so later defaults never change the run


def given_flags(argv) -> dict[str, str]:
    """{dest: flag} of the options given on the command line ``argv`` (not those left at their defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    return {dest: flags.get(dest, dest) for dest in given}


def _refuse_resume_changes(args: argparse.Namespace, cfg: TrainConfig, given: dict[str, str]) -> None:
    """ValueError naming the first flag given with --resume that would change a setting the run fixes."""
    allowed = ", ".join(f"--{name.replace('_', '-')}" for name in RESUME_SETTINGS + ("device",))
    for dest, flag in given.items():
        if dest in RESUME_SETTINGS + RUNTIME_FLAGS:
            continue
        value, stored = getattr(args, dest), getattr(cfg, dest, None)
        if dest == "data":
            value = canonical_name(value)
        if value != stored:
            raise ValueError(f"{flag} cannot change on --resume (the run has {stored!r}, got {value!r}): "
                             f"a resumed run may change only {allowed}; start a new run with --out to change {flag}")
    if "out" in given and Path(args.out) != Path(args.resume):
        raise ValueError("--out cannot be used with --resume: the resumed run is written back into its directory")


def config_from_args(args: argparse.Namespace, given: dict[str, str] | None = None) -> TrainConfig:
    """A validated TrainConfig from parsed arguments (or, with --resume, from the run being resumed: ``given``, the
    flags on the command line, may change only ``RESUME_SETTINGS``; other changed flags are refused by name)."""
    given = {} if given is None else given
    if args.resume:
        stored = read_checkpoint(args.resume).config.get("train")
        if stored is None:
            raise ValueError(f"cannot resume {args.resume}: its config has no train entry (it was not written by "
                             "pyddpm-train, e.g. imported); sample or export it, or train a new run")
        cfg = TrainConfig(**{**LEGACY_SETTINGS,
                             **{k: v for k, v in stored.items() if k in TrainConfig.__dataclass_fields__}})
        cfg.max_steps = None  # a resumed run goes on to the end of its schedule unless --max-steps says otherwise
        _refuse_resume_changes(args, cfg, given)
        for name in ("lr", "grad_clip", "data_dir"):
            if name in given:
                setattr(cfg, name, getattr(args, name))
    else:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
        if not is_toy(cfg.data):
            for name, value in IMAGE_DEFAULTS.items():
                if getattr(args, name) is None:
                    setattr(cfg, name, value)
        if args.lr is None:
            cfg.lr = NET_DEFAULT_LR.get(cfg.net, cfg.lr)
        cfg.resolve_defaults()
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    cfg.data = canonical_name(cfg.data)
    check_settings(cfg)
    return cfg


def check_settings(cfg: TrainConfig) -> None:
    """ValueError naming the flag of the first setting out of its range, before any data is loaded; includes the
    network's size (at most ``MAX_PARAMETERS`` parameters)."""
    bounds = {"T": MAX_T, "batch_size": MAX_NUM_TRAIN, "num_train": MAX_NUM_TRAIN, "epochs": None,
              "checkpoint_every": None, "hidden": MAX_WIDTH, "depth": MAX_DEPTH, "num_res_blocks": MAX_RES_BLOCKS,
              "max_steps": None, "num_samples": MAX_SAMPLES}
    for name, hi in bounds.items():
        check_int(f"--{name.replace('_', '-')}", getattr(cfg, name), 1, hi)
    check_int("--grid-samples", cfg.grid_samples, 0, MAX_SAMPLES)
    check_int("--input-frequencies", cfg.input_frequencies, 1, MAX_INPUT_FREQUENCIES)
    check_float("--input-max-period", cfg.input_max_period, 0.0, math.inf, lo_open=True, hi_open=True)
    embedding = cfg.resolved_input_embedding()
    if embedding not in INPUT_EMBEDDINGS:
        raise ValueError(f"--input-embedding must be one of {', '.join(INPUT_EMBEDDINGS)}, got {embedding!r}")
    if embedding != "none" and cfg.net != "fc":
        raise ValueError(f"--input-embedding {embedding} applies to --net fc, not --net {cfg.net}")
    check_float("--low-t-share", cfg.low_t_share, 0.0, 1.0)
    check_float("--low-t-range", cfg.low_t_range, 0.0, 1.0, lo_open=True)
    check_int("--grid-steps", cfg.grid_steps, 0, MAX_T)
    check_int("--warmup", cfg.warmup, 0)
    check_int("--seed", cfg.seed, 0, MAX_SEED)
    if cfg.channels is not None and (len(cfg.channels) > MAX_LEVELS or max(cfg.channels) > MAX_WIDTH):
        raise ValueError(f"--channels: at most {MAX_LEVELS} levels of at most {MAX_WIDTH} channels, got "
                         f"{','.join(map(str, cfg.channels))}")
    check_float("--lr", cfg.lr, 0.0, math.inf, lo_open=True, hi_open=True)
    check_float("--grad-clip", cfg.grad_clip, 0.0, math.inf, hi_open=True)
    check_float("--ema", cfg.ema, 0.0, 1.0, hi_open=True)
    check_float("--weight-decay", cfg.weight_decay, 0.0, math.inf, hi_open=True)
    check_float("--dropout", cfg.dropout, 0.0, 1.0, hi_open=True)
    check_float("--data-scale", cfg.data_scale, 0.0, math.inf, lo_open=True, hi_open=True)
    check_float("--beta-1", cfg.beta_1, 0.0, 1.0, lo_open=True, hi_open=True)
    check_float("--beta-T", cfg.beta_T, 0.0, 1.0, lo_open=True, hi_open=True)
    if cfg.schedule == "linear" and cfg.beta_1 > cfg.beta_T:
        raise ValueError(f"--beta-1 must be <= --beta-T, got {cfg.beta_1} > {cfg.beta_T}")
    entries = data_config_entries(cfg.data)
    data = {"name": cfg.data, "shape": [math.prod(entries["image_shape"])] if "image_shape" in entries else [2],
            **entries}
    network = network_settings(cfg, data)
    n = count_parameters(network["name"], network["kwargs"])
    if n > MAX_PARAMETERS:
        raise ValueError(f"--hidden/--depth/--channels: the network would have {n:,} parameters, more than the "
                         f"limit of {MAX_PARAMETERS:,}")


def check_run_dir(out: Path, flag: str, resume: bool) -> None:
    """ValueError, before any work, unless ``out`` can hold this run: a writable directory (or creatable) without a
    run in it (unless resuming) and without a directory in place of a file the run writes."""
    check_output_dir(out, flag)
    if not resume and (out / CHECKPOINT_FILE).exists():
        raise ValueError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    for name in (CHECKPOINT_FILE, CONFIG_FILE, METRICS_CSV, "metrics.json", "samples.png", "loss.png"):
        if (out / name).is_dir():
            raise ValueError(f"{flag} {str(out)!r}: {name} there is a directory; pyddpm-train writes a file of "
                             "that name")


def epoch_grid_writer(cfg: TrainConfig):
    """The Trainer's end-of-epoch hook for image runs: ``grids/epoch_NNN.png`` of ``grid_samples`` EMA samples by the
    default sampler with ``grid_steps`` calls, the same seed every epoch; None when the run draws no grids."""
    if is_toy(cfg.data) or cfg.grid_samples < 1:
        return None

    def write(trainer: Trainer) -> None:
        path = trainer.out / "grids" / f"epoch_{trainer.step // trainer.steps_per_epoch:03d}.png"
        write_sample_grid(trainer.sampling_model(), trainer.config, path, cfg.grid_samples, cfg.seed, cfg.grid_steps,
                          when=f"EMA weights after epoch {trainer.step // trainer.steps_per_epoch}")

    return write


class OtherWork:
    """The Trainer's estimate of the run's work besides optimizer steps: the per-epoch grids still to draw, the
    end-of-run step tuning and sampling (the default sampler's calls), priced by one timed forward pass of the
    sampling network at the sampling batch, measured once."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.batch = cfg.num_samples if is_toy(cfg.data) else cfg.grid_samples
        self._forward_seconds: float | None = None
        self._end_calls = 0.0  # the final sampling's and tuning's calls at the sampling batch, priced once with it

    def __call__(self, trainer: Trainer) -> float:
        model = trainer.sampling_model()
        if not isinstance(model, DDPM) or self.batch < 1:
            return 0.0  # a baseline samples in one pass
        if self._forward_seconds is None:
            self._forward_seconds = forward_seconds(model, self.batch, trainer.config["data"]["shape"])
            tuning = sum(most_calls(model, DEFAULT_SAMPLER, s, TUNING_SWEEPS) for s in TUNED_STEPS) \
                * tuning_samples(trainer.config) / self.batch if self.cfg.tune_steps and worth_tuning(model) else 0
            self._end_calls = DEFAULT_STEPS + tuning
        grids = 0
        if not is_toy(self.cfg.data):
            epochs_left = trainer.total_steps // trainer.steps_per_epoch - trainer.step // trainer.steps_per_epoch
            grids = max(epochs_left, 0) * min(self.cfg.grid_steps or DEFAULT_STEPS, model.T)
        return self._forward_seconds * (grids + self._end_calls)


def forward_seconds(model: DDPM, batch: int, shape) -> float:
    """Seconds of one eps_theta evaluation on ``batch`` samples, as sampling runs it: the median of three timed
    passes after a warm-up (one pass alone can be far off on a busy CPU). Its input comes from a private
    generator: the training's random stream (restored exactly on --resume) is not touched."""
    generator = torch.Generator(model.beta.device).manual_seed(0)
    x = torch.randn(batch, *shape, device=model.beta.device, generator=generator)
    t = model.time_input(model.T, batch)
    was_training = model.training
    model.eval()
    seconds = []
    with torch.no_grad():
        model.network(x, t)
        for _ in range(3):
            start = time.perf_counter()
            model.network(x, t)
            seconds.append(time.perf_counter() - start)
    model.train(was_training)
    return sorted(seconds)[1]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = pick_device(args.device)
        keep_freed_memory()
        given = given_flags(argv)
        cfg = config_from_args(args, given)
        model = model_entry(args, cfg, given)
        name = model["name"] if model else cfg.net
        out = Path(args.resume or args.out or f"runs/{cfg.data}-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        check_run_dir(out, "--resume" if args.resume else "--out", resume=bool(args.resume))
        trainer = Trainer(cfg, out, device, resume=bool(args.resume), model=model)
        if not trainer.run(on_epoch_end=epoch_grid_writer(cfg), other_work=OtherWork(cfg)):
            return 130
        if trainer.master:
            metrics = write_run_report(out, trainer.sampling_model(), trainer.config, trainer.timing(),
                                       out / METRICS_CSV)
            print(metrics_table(metrics, trainer.config))
            print("metrics.json holds these for programs; pictures: samples.png, forward.png, loss.png")
            print(f"done: {out}")
    except KeyboardInterrupt:
        return 130
    except (CheckpointError, TrainingDiverged, ValueError) as err:
        print(f"pyddpm-train: error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
