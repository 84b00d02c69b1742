"""What every console script shares: the device flag, output paths checked before any work, and range checks
whose one-line errors name the flag and its valid range."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from ..accel import PRECISIONS, RUNTIMES, check_precision_hardware, check_runtime_options
from ..diffusion import DDPM
from ..samplers import plan_for
from ..schedules import VARIANCES
from ..solvers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, SPACINGS, resolve_sampler
from ..store import tuned_timesteps

DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"


def pick_device(device: str, flag: str = "--device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise a CPU or CUDA device that exists (ValueError if not)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{flag}: unknown device {device!r}; use {DEVICE_HELP}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{flag}: pyddpm runs on cpu or cuda, not {device!r}; use {DEVICE_HELP}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag}: device {device!r} requested but CUDA is not available; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{flag}: device {device!r} does not exist: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return dev


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path``'s ancestors that exists (``path`` is created below it)."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def _check_writable_dir(directory: Path, path: Path, flag: str) -> None:
    """ValueError naming ``flag`` unless a file can be created in ``directory``, tried with a temporary file:
    ``os.access`` says yes to root, and to file systems such as /proc that refuse new files."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        where = "" if directory == path else f": the directory {str(directory)!r}"
        raise ValueError(f"{flag} {str(path)!r}{where} is not writable (a new file there: {e.strerror})") from None


def _check_creatable(path: Path, flag: str) -> None:
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise ValueError(f"{flag} {str(path)!r}: {str(ancestor)!r} is a file, not a directory")
    _check_writable_dir(ancestor, path, flag)


def check_output_file(path: str | os.PathLike, flag: str = "--out", suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` as a Path after checking, before any work, that a file can be written there: not a directory, with
    the right suffix, and missing parent directories creatable in a writable directory."""
    path = Path(path)
    if not str(path) or str(path).endswith(os.sep):
        raise ValueError(f"{flag} {str(path)!r}: need a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} must end in {' or '.join(suffixes)}, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {str(path)!r} is not writable")
    _check_creatable(path, flag)
    return path


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a Path after checking, before any work, that it is (or can be created as) a writable directory."""
    path = Path(path)
    if not str(path):
        raise ValueError(f"{flag}: need a directory name")
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag} {str(path)!r} is a file, not a directory")
        _check_writable_dir(path, path, flag)
        return path
    _check_creatable(path, flag)
    return path


def check_int(flag: str, value: int | None, lo: int, hi: int | None = None) -> None:
    """ValueError naming ``flag`` unless ``value`` (None: not given) is an integer in [lo, hi]."""
    if value is None:
        return
    if not (lo <= value and (hi is None or value <= hi)):
        most = "" if hi is None else f" and <= {hi}" if lo != 1 else f" (at most {hi})"
        bound = "a positive integer" if lo == 1 else f">= {lo}"
        raise ValueError(f"{flag} must be {bound}{most}, got {value}")


def check_float(flag: str, value: float | None, lo: float, hi: float, *, hi_open: bool = False,
                lo_open: bool = False) -> None:
    """ValueError naming ``flag`` unless ``value`` (None: not given) is finite and in the range
    (``lo_open``/``hi_open`` exclude that end)."""
    if value is None:
        return
    above = value > lo if lo_open else value >= lo
    below = value < hi if hi_open else value <= hi
    if not (math.isfinite(value) and above and below):
        if lo == 0 and hi == math.inf:
            bound = "a positive number" if lo_open else "a finite number >= 0"
        else:
            bound = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{flag} must be {bound}, got {value}")


def add_sampler_flags(p, variance: bool = True) -> None:
    """--sampler, --steps, --spacing, --order, --eta (and --variance): which sampler draws a DDPM's samples
    (``pyddpm.solvers``)."""
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help=f"ddpm (Algorithm 2, all T steps), ddim, dpm++2m, dpm++3m, sde-dpm++2m or unipc (default "
                        f"{DEFAULT_SAMPLER} with {DEFAULT_STEPS} network calls, measured to match Algorithm 2's "
                        "quality; docs/solvers.md)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"network calls (NFE) of the sampler; alone: the default sampler with that many "
                        f"(default {DEFAULT_STEPS}; --sampler ddpm: T)")
    p.add_argument("--spacing", choices=SPACINGS, default=None,
                   help="time steps of a few-step sampler: trailing (T, T - T/N, ...), uniform (T..1, DDIM's "
                        "original), leading, logsnr (uniform in log-SNR) (default: the run's tuned steps where "
                        "pyddpm-train stored them, else trailing)")
    p.add_argument("--order", type=int, default=None, help="UniPC's order, 1 to 3 (default 3)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM's eta in [0, 1]: 0 = deterministic, 1 = the DDPM posterior's variance (default 0)")
    if variance:
        p.add_argument("--variance", choices=VARIANCES, default=None,
                       help="Algorithm 2's reverse variance sigma_t^2 (default: the run's, normally beta)")


def sampler_options(args, model, variance_is_the_samplers: bool = True) -> dict:
    """``generate_samples``' sampler keywords for the flags of ``add_sampler_flags``, checked against ``model``
    (a one-line ValueError naming the flag; {} for a baseline, which refuses them itself). Without --spacing, the
    run's tuned time steps for that sampler and NFE are used where pyddpm-train stored them (``steps.json``). Where
    --variance also sets something else (pyddpm-eval's bound), it reaches only Algorithm 2."""
    check_float("--eta", args.eta, 0.0, 1.0)
    sampler, steps = resolve_sampler(args.sampler, args.steps, getattr(model, "T", None))
    if not isinstance(model, DDPM):
        given = [f for f, v in (("--sampler", args.sampler), ("--steps", args.steps), ("--spacing", args.spacing),
                                ("--order", args.order), ("--eta", args.eta),
                                ("--variance", args.variance if variance_is_the_samplers else None)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} set the DDPM's sampler; this run's {type(model).__name__} "
                             "samples in one pass: leave them out")
        return {}
    variance = args.variance if variance_is_the_samplers or sampler == "ddpm" else None
    options = dict(sampler=sampler, steps=steps, spacing=args.spacing, order=args.order, eta=args.eta or 0.0,
                   variance=variance, clip=getattr(args, "clip", False))
    plan_for(model, **options)  # every check, before any work
    tuned = tuned_timesteps(args.run_dir).get((sampler, steps))
    if tuned and args.spacing is None and args.order is None:
        options.update(steps=None, timesteps=tuned)
    return options


def add_sampling_network_flags(p) -> None:
    """--precision, --eager and --runtime: how the samplers evaluate a DDPM's network (``pyddpm.accel``)."""
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the network's precision while sampling: fp32, or bf16 (CPU bf16 autocast, float32 weights "
                        "and update; faster on CPUs with AVX512-BF16/AMX, refused on other CPUs; samples not "
                        "identical) (default fp32)")
    p.add_argument("--eager", action="store_true",
                   help="sample with the network exactly as trained, bit for bit, instead of its fast copy (oneDNN, "
                        "channels-last; equal within float32 rounding)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="torch: always the fast copy; auto: the fast copy only for loops long enough to repay "
                        "making it, as timed on the first batch, else the network as trained (default auto; the "
                        "same samples within float32 rounding)")


def sampling_network_options(args, device: torch.device) -> dict:
    """The samplers' keyword arguments for the flags of ``add_sampling_network_flags``, checked for ``device``."""
    options = {"precision": args.precision, "fast": not args.eager, "runtime": args.runtime}
    check_runtime_options(**options)
    check_precision_hardware(args.precision, device)
    return options
