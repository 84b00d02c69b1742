"""The measuring parts of benchmarks/gpu_check.py, each run in its own process (so a CUDA fault or a hang in one
cannot take the others down) and each writing its report to DIR/parts/PART.json after every cell (so a part
killed at its time budget keeps what it measured).

    op        one reverse step: the fused op (in-kernel Philox noise, in place) vs device-to-device copy bandwidth,
              the eager torch update and torch.compile of it
    sampling  ms per Algorithm 2 step at batch 256 of each network: the course's loop, diffusers' DDPMScheduler,
              pyddpm eager, pyddpm replaying one captured whole step from a CUDA graph
    training  images/s of one optimizer step of Algorithm 1 (eager, torch.compile, bf16 autocast, both), and the
              time that gives for 100 epochs of 60,000 images
    bf16      a short training run in bf16 autocast against the same run in float32 (same seed and batches)

and the script compute-sanitizer runs: ``exercise-kernels`` launches every fused kernel (reverse_step with given,
in-kernel and no noise, with and without the clipped-x0 term, new / out= / in place, aligned and misaligned,
the scheduled step, the Philox normals) in every dtype of the device and checks each against the reference.

    python benchmarks/gpu_check_parts.py PART --out DIR --mode cuda|dry --deadline UNIX_TIME
    python benchmarks/gpu_check_parts.py exercise-kernels --device cuda|cpu
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import itertools
import json
import math
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import pyddpm
from pyddpm import step_schedule
from pyddpm import DDPM, ops
from pyddpm.nets import build_network
from pyddpm.samplers import capture_step, ddpm_sample, plan_for, run_plan, step_runner

EPOCH_IMAGES = 60_000
EPOCHS = 100
NOISY = ops.StepCoefficients(a=1.0123, b=-0.0456, sigma=0.0789)
CLIP = ops.StepCoefficients(a=0.9, b=0.05, sigma=0.1, clip=True, c=0.3, p=1.5, q=-0.8, lo=-1.0, hi=1.0)
ULP = {torch.float16: (2.0**-10, 2.0**-24), torch.bfloat16: (2.0**-7, 1e-38)}  # one unit in the last place


@dataclass(frozen=True)
class Sizes:
    """What each part measures: the issue's sizes on CUDA, tiny ones for the CPU dry mode."""
    op_labels: tuple[str, ...]  # bench_op.SIZES labels
    op_half_label: str | None  # the size float16/bfloat16 are measured at (None: not at all)
    op_repeats: int
    nets: dict = field(default_factory=dict)  # name -> build_network kwargs
    sample_batch: int = 256
    sample_steps: int = 100  # T of the timed loops (ms/step does not depend on T)
    sample_repeats: int = 3
    train_batch: int = 256
    train_steps: int = 10  # timed optimizer steps per repeat
    train_repeats: int = 3
    train_warmup: int = 3
    bf16_net: str = "unet"
    bf16_batch: int = 128
    bf16_steps: int = 300


SIZES = {
    "cuda": Sizes(op_labels=("256x784", "2^24"), op_half_label="2^24", op_repeats=200,
                  nets={"unet": {}, "fc": dict(input_dim=784, num_hidden=256, num_layers=4, activation="silu",
                                               time_embedding="sinusoidal"), "unet-ddpm": {}}),
    "dry": Sizes(op_labels=("5000x2", "256x784"), op_half_label=None, op_repeats=10,
                 nets={"unet": dict(channels=[4, 8, 8]), "fc": dict(input_dim=784, num_hidden=32, num_layers=2),
                       "unet-ddpm": dict(channels=[4, 8], num_res_blocks=1)},
                 sample_batch=4, sample_steps=3, sample_repeats=1, train_batch=8, train_steps=1, train_repeats=1,
                 train_warmup=1, bf16_net="fc", bf16_batch=32, bf16_steps=40),
}
NET_TITLES = {"unet": "exercise U-Net", "fc": "FcNetwork", "unet-ddpm": "DDPM U-Net"}


# ----- the part's report ----------------------------------------------------------------------------------------
def _tail(text: str, chars: int = 3000) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


def _short(value: dict) -> str:
    """A progress line's summary of a cell's value."""
    if "skipped" in value or "failed" in value:
        return "skipped: " + value["skipped"] if "skipped" in value else "FAILED: " + value["failed"]
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
                     if not isinstance(v, (list, dict)))


class Recorder:
    """One part's report: cells of results, rewritten to ``out/parts/NAME.json`` after every cell."""

    def __init__(self, out: Path, name: str, deadline: float, tabulate=None):
        self.path = out / "parts" / f"{name}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.name, self.deadline, self.tabulate = name, deadline, tabulate
        self.start = time.time()
        self.results: dict[str, dict] = {}
        self.notes: list[str] = []
        self.failed = False
        self.error: str | None = None
        self.pyddpm = {"file": pyddpm.__file__, "version": pyddpm.__version__, "cuda_built": ops.cuda_built(),
                       "build_info": ops._C.build_info() if ops.extension_available() else None}
        self.save("running")

    def time_left(self) -> float:
        return self.deadline - time.time()

    def cell(self, key: str, fn, *, need_s: float = 1.0, skip: str | None = None) -> dict:
        """results[key] = fn() (a dict of numbers), or {"skipped": reason} when ``skip`` is given or fewer than
        ``need_s`` seconds are left; an exception is recorded as {"failed": ...} and the part goes on."""
        if skip is not None:
            value = {"skipped": skip}
        elif self.time_left() < need_s:
            value = {"skipped": "out of time"}
        else:
            try:
                value = fn()
            except Exception as exc:  # recorded, and the part's status becomes failed
                self.failed = True
                value = {"failed": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                         "traceback": _tail(traceback.format_exc())}
        self.results[key] = value
        print(f"{key}: {_short(value)}", flush=True)
        self.save("running")
        return value

    def save(self, status: str) -> None:
        try:
            tables = self.tabulate(self.results) if self.tabulate else []
        except Exception as exc:  # the results are written all the same
            tables = [{"title": f"the tables could not be built: {type(exc).__name__}: {exc}", "columns": [],
                       "rows": []}]
        data = {"name": self.name, "status": status, "seconds": round(time.time() - self.start, 2),
                "pyddpm": self.pyddpm, "results": self.results, "notes": self.notes, "error": self.error,
                "tables": tables}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(self.path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    """The median wall-clock seconds of fn() over ``repeats`` calls, the device synchronised around each (for
    calls long enough that the clock's resolution and the synchronisation do not matter)."""
    def once() -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start
    return statistics.median(once() for _ in range(repeats))


def fmt(value: dict | None, key: str, digits: int = 1) -> str:
    """``value[key]`` for a table ("skipped: ..." / "failed" / "-" where there is no number)."""
    if not value:
        return "-"
    if "skipped" in value:
        return f"skipped: {value['skipped']}"
    if "failed" in value:
        return "failed"
    number = value.get(key)
    return "-" if number is None else f"{number:,.{digits}f}"


def ratio(num: dict | None, den: dict | None, key: str) -> str:
    """num[key] / den[key] as 'N.NNx' where both were measured."""
    a, b = (num or {}).get(key), (den or {}).get(key)
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) and b > 0 else "-"


# ----- op -------------------------------------------------------------------------------------------------------
def eager_step(x: torch.Tensor, e: torch.Tensor, coef: ops.StepCoefficients) -> torch.Tensor:
    """The plain-torch update with torch.randn noise (bench_op's "eager")."""
    return ops.reverse_step_reference(x, e, coef, noise=torch.randn_like(x))


def _timed_call(fn, time_it, repeats: int, bytes_moved: int) -> dict:
    """us per call of fn (bench_op's median, after 3 warm-up calls) and the GB/s of moving ``bytes_moved``."""
    for _ in range(3):
        fn()
    us = time_it(fn, repeats)
    return {"us": us, "GB/s": bytes_moved / (us * 1e-6) / 1e9, "repeats": repeats}


def _op_cells(rec: Recorder, key: str, tensors, coef, time_it, repeats: int, cuda: bool) -> None:
    x, e, z = tensors
    nbytes = x.numel() * x.element_size()
    steps = itertools.count(1)

    def fused() -> None:  # in place with in-kernel noise, a new Philox step per call, as the sampler runs it
        ops.reverse_step(x, e, coef, seed=1234, step=next(steps) % 1000 + 1, out=x)

    def check() -> dict:
        got, want = ops.reverse_step(x, e, coef, noise=z), ops.reverse_step_reference(x, e, coef, noise=z)
        return {"max_abs_diff": (got.float() - want.float()).abs().max().item(), "bit_equal": torch.equal(got, want)}

    def copy() -> dict:
        y = torch.empty_like(x)
        return _timed_call(lambda: y.copy_(x), time_it, repeats, 2 * nbytes)

    rec.cell(f"{key}/check", check)
    rec.cell(f"{key}/fused", lambda: _timed_call(fused, time_it, repeats, 3 * nbytes))
    rec.cell(f"{key}/fused again", lambda: _timed_call(fused, time_it, repeats, 3 * nbytes))  # the spread
    rec.cell(f"{key}/copy", copy, skip=None if cuda else "device copy bandwidth is measured on CUDA")
    rec.cell(f"{key}/eager", lambda: _timed_call(lambda: eager_step(x, e, coef), time_it, repeats, 3 * nbytes),
             skip=None if x.dtype == torch.float32 else "float32 only")


def _compiled_cell(x, e, coef, time_it, repeats: int) -> dict:
    """us per call of torch.compile(eager_step), its compilation timed apart."""
    step = torch.compile(eager_step, dynamic=False)
    start = time.perf_counter()
    step(x, e, coef)
    compile_s = time.perf_counter() - start
    return {**_timed_call(lambda: step(x, e, coef), time_it, repeats, 3 * x.numel() * x.element_size()),
            "compile_s": compile_s}


def part_op(rec: Recorder, sizes: Sizes, device: torch.device) -> None:
    """Fused reverse step vs copy bandwidth, the eager torch update and torch.compile (float32; half types at one size)."""
    import bench_op  # its sizes, coefficients and timer (imported here, where it is needed: it imports torch._inductor)

    cuda = device.type == "cuda"
    time_it, shapes = bench_op._timer(device), dict(bench_op.SIZES)
    cases = [(label, torch.float32) for label in sizes.op_labels]
    if sizes.op_half_label:
        cases += [(sizes.op_half_label, d) for d in (torch.float16, torch.bfloat16)]
    inputs = {}
    for label, dtype in cases:
        g = torch.Generator().manual_seed(len(inputs))
        inputs[label, dtype] = tuple(torch.randn(shapes[label], generator=g).to(device, dtype) for _ in range(3))
        _op_cells(rec, f"{label}/{str(dtype).replace('torch.', '')}", inputs[label, dtype], bench_op.COEF, time_it,
                  bench_op._repeats(math.prod(shapes[label]), sizes.op_repeats), cuda)
    for label in sizes.op_labels:  # last: compiling takes the longest
        x, e, _ = inputs[label, torch.float32]
        rec.cell(f"{label}/float32/compiled",
                 lambda x=x, e=e: _compiled_cell(x, e, bench_op.COEF, time_it,
                                                 bench_op._repeats(x.numel(), sizes.op_repeats)),
                 need_s=20, skip=None if cuda else "dry mode: torch.compile is timed on CUDA")


def tabulate_op(results: dict) -> list[dict]:
    rows = []
    for key in dict.fromkeys(k.rsplit("/", 1)[0] for k in results if k.count("/") == 2):  # size/dtype/cell
        r = {name: results.get(f"{key}/{name}") for name in ("check", "fused", "fused again", "copy", "eager",
                                                              "compiled")}
        label, dtype = key.split("/")
        fused, copy = r["fused"] or {}, r["copy"] or {}
        fraction = (f"{fused['GB/s'] / copy['GB/s']:.0%}" if isinstance(fused.get("GB/s"), float)
                    and isinstance(copy.get("GB/s"), float) else "-")
        check = r["check"] or {}
        rows.append([label, dtype, fmt(r["fused"], "us", 2), fmt(r["fused again"], "us", 2), fmt(r["fused"], "GB/s"),
                     fmt(r["copy"], "GB/s"), fraction, fmt(r["eager"], "us", 2), fmt(r["compiled"], "us", 2),
                     ratio(r["eager"], r["fused"], "us"), ratio(r["compiled"], r["fused"], "us"),
                     "yes" if check.get("bit_equal") else fmt(check, "max_abs_diff", 8)])
    return [{"title": "One reverse step (median us per call; GB/s counts x_t, eps_hat read and x_{t-1} written, "
                      "copy counts one read and one write)",
             "columns": ["size", "dtype", "fused us", "fused us (again)", "fused GB/s", "copy GB/s", "fused/copy",
                         "eager us", "compiled us", "eager/fused", "compiled/fused", "fused == reference"],
             "rows": rows}]


# ----- sampling -------------------------------------------------------------------------------------------------
def course_loop(model: DDPM, shape) -> torch.Tensor:
    """Algorithm 2 as the course's exercise writes it: torch.randn for x_T and every z, the update in plain torch."""
    device = model.beta.device
    x = torch.randn(shape, device=device)
    for t in range(model.T, 0, -1):
        eps_hat = model.network(x, torch.full((shape[0], 1), (t - 1) / model.T, device=device))
        z = torch.randn_like(x) if t > 1 else torch.zeros_like(x)
        beta, alpha, abar = model.beta[t - 1], model.alpha[t - 1], model.alpha_cumprod[t - 1]
        x = 1 / alpha.sqrt() * (x - beta / (1 - abar).sqrt() * eps_hat) + beta.sqrt() * z
    return x


def diffusers_loop(model: DDPM, shape, scheduler) -> torch.Tensor:
    """Algorithm 2 through diffusers' DDPMScheduler (0-based timesteps T-1..0; sigma_t^2 = beta_t)."""
    device = model.beta.device
    x = torch.randn(shape, device=device)
    for t in scheduler.timesteps:
        eps_hat = model.network(x, torch.full((shape[0], 1), int(t) / model.T, device=device))
        x = scheduler.step(eps_hat, t, x).prev_sample
    return x


def ddpm_scheduler(T: int):
    """diffusers' DDPMScheduler with pyddpm's linear schedule and sigma_t^2 = beta_t, or None if not installed."""
    if importlib.util.find_spec("diffusers") is None:
        return None
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear",
                              variance_type="fixed_large", clip_sample=False, prediction_type="epsilon")
    scheduler.set_timesteps(T)
    return scheduler


def _graph_replay(model: DDPM, shape, repeats: int, plan=None) -> dict:
    """ms per replay of one captured whole call of ``plan`` (default Algorithm 2; pyddpm.samplers.step_runner, history
    buffers included) and ms per capture; on the CPU (dry mode) the same step function runs uncaptured, so its
    arithmetic and the schedule's advance are checked against the eager loop."""
    plan = plan or plan_for(model)
    captures, replays = [], []
    cuda = model.beta.device.type == "cuda"
    with torch.no_grad():
        for _ in range(repeats):
            x = ops.normal_noise(shape, seed=0, device=model.beta.device)
            history = [torch.zeros(shape, device=x.device) for _ in range(plan.history)]
            step = step_runner(model, x, plan, seed=0, history=history)
            _sync(x.device)
            t0 = time.perf_counter()
            call = capture_step(step).replay if cuda else step
            _sync(x.device)
            t1 = time.perf_counter()
            for _ in plan.timesteps:  # exactly one replay per call: the schedule has that many rows
                call()
            _sync(x.device)
            captures.append(t1 - t0)
            replays.append((time.perf_counter() - t1) / plan.nfe)
        if not torch.isfinite(x).all():
            raise RuntimeError("CUDA-graph sampling produced non-finite samples")
        eager = run_plan(model, shape, plan, seed=0, graph=False)  # the same samples, call by call
    return {"ms_per_step": statistics.median(replays) * 1e3, "capture_ms": statistics.median(captures) * 1e3,
            "max_diff_vs_eager": (x - eager).abs().max().item(), "sampler": plan.label()}


def part_sampling(rec: Recorder, sizes: Sizes, device: torch.device) -> None:
    """ms/step of the course loop, diffusers, pyddpm eager and pyddpm CUDA graph for each network at one batch."""
    rec.notes.append(f"batch {sizes.sample_batch}, timed loops of T = {sizes.sample_steps} steps (the cost of a step "
                     f"does not depend on T), median of {sizes.sample_repeats}; fresh weights; graph: ms per replay of "
                     "one captured whole step (network + scheduled fused update), its capture timed apart; "
                     "graph end to end: ddpm_sample(graph=True) including the capture")
    for net in sizes.nets:
        _sample_network(rec, net, sizes, device)


def _agreement(first, second) -> float:
    """max |difference| of two sampling loops run from the same torch seed."""
    with torch.no_grad():
        torch.manual_seed(1)
        a = first()
        torch.manual_seed(1)
        b = second()
    return (a - b).abs().max().item()


def _sample_network(rec: Recorder, net: str, sizes: Sizes, device: torch.device) -> None:
    shape = (sizes.sample_batch, 784)
    torch.manual_seed(0)
    network = build_network(net, **sizes.nets[net]).to(device).eval()
    model = DDPM(network, T=sizes.sample_steps).to(device)
    warm = DDPM(network, T=3).to(device)  # warm-ups and the agreement checks run 3 steps
    scheduler, warm_scheduler = ddpm_scheduler(sizes.sample_steps), ddpm_scheduler(3)

    def timed(loop, warm_up) -> dict:
        with torch.no_grad():
            warm_up()
            seconds = median_seconds(loop, sizes.sample_repeats, device)
        return {"ms_per_step": seconds * 1e3 / sizes.sample_steps}

    def course() -> dict:
        diff = _agreement(lambda: course_loop(warm, shape),
                          lambda: ddpm_sample(warm, shape, backend="torch", graph=False))
        if not diff < 1e-3:
            raise RuntimeError(f"the course loop disagrees with pyddpm's torch backend by {diff}")
        return {**timed(lambda: course_loop(model, shape), lambda: course_loop(warm, shape)),
                "max_diff_vs_pyddpm_torch_backend": diff}

    def with_diffusers() -> dict:
        diff = _agreement(lambda: course_loop(warm, shape), lambda: diffusers_loop(warm, shape, warm_scheduler))
        if not diff < 1e-3:
            raise RuntimeError(f"the diffusers loop disagrees with the course loop by {diff}")
        return {**timed(lambda: diffusers_loop(model, shape, scheduler),
                        lambda: diffusers_loop(warm, shape, warm_scheduler)), "max_diff_vs_course_loop": diff}

    def pyddpm_loop(graph: bool) -> dict:
        return timed(lambda: ddpm_sample(model, shape, seed=0, graph=graph),
                     lambda: ddpm_sample(warm, shape, seed=0, graph=graph))

    no_graph = None if device.type == "cuda" else "CUDA graphs need CUDA"
    rec.cell(f"{net}/course", course, need_s=3)
    rec.cell(f"{net}/diffusers", with_diffusers, need_s=3, skip="diffusers not installed" if scheduler is None else None)
    rec.cell(f"{net}/pyddpm eager", lambda: pyddpm_loop(False), need_s=3)
    rec.cell(f"{net}/pyddpm graph", lambda: _graph_replay(model, shape, sizes.sample_repeats), need_s=3, skip=no_graph)
    # a few-step solver's call (UniPC-3: three history buffers) captured whole; on the CPU its step function uncaptured
    solver = plan_for(model, "unipc", min(10, model.T), order=3)
    rec.cell(f"{net}/pyddpm solver graph", lambda: _graph_replay(model, shape, sizes.sample_repeats, solver), need_s=3)
    rec.cell(f"{net}/pyddpm graph end to end", lambda: pyddpm_loop(True), need_s=3, skip=no_graph)


def tabulate_sampling(results: dict) -> list[dict]:
    rows = []
    for net in dict.fromkeys(k.split("/")[0] for k in results if "/" in k):  # network/sampler
        r = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(net + "/")}
        graph = r.get("pyddpm graph")
        rows.append([NET_TITLES.get(net, net)] + [fmt(r.get(s), "ms_per_step", 3) for s in
                                                  ("course", "diffusers", "pyddpm eager", "pyddpm graph",
                                                   "pyddpm graph end to end")]
                    + [fmt(graph, "capture_ms", 1), fmt(graph, "max_diff_vs_eager", 7),
                       ratio(r.get("course"), r.get("pyddpm eager"), "ms_per_step"),
                       ratio(r.get("course"), graph, "ms_per_step"), ratio(r.get("diffusers"), graph, "ms_per_step")])
    return [{"title": "Sampling (Algorithm 2), ms per step; speed-ups are ratios of ms/step",
             "columns": ["network", "course loop", "diffusers", "pyddpm eager", "pyddpm graph (replay)",
                         "graph end to end", "capture ms", "graph vs eager max abs diff", "eager vs course",
                         "graph vs course", "graph vs diffusers"], "rows": rows}]


# ----- training -------------------------------------------------------------------------------------------------
def synthetic_images(n: int, seed: int, device: torch.device) -> torch.Tensor:
    """n smooth 28x28 images in [-1, 1], flattened (blurred noise through tanh): structure for the loss to learn
    (MNIST itself is not on the device machine; the speed of a step does not depend on the pixels)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, 28, 28, generator=g)
    for _ in range(3):
        z = F.avg_pool2d(z, 3, stride=1, padding=1)
    z = z / z.std(dim=(1, 2, 3), keepdim=True)
    return torch.tanh(1.5 * z).flatten(1).to(device)


def train_step_fn(net: str, kwargs: dict, batch: int, device: torch.device, *, bf16: bool, compile: bool, seed: int = 0):
    """A function taking one optimizer step of Algorithm 1 (AdamW, gradient clipping at 1, as pyddpm-train) on a
    random batch of synthetic images; it returns the step's loss (a device tensor)."""
    torch.manual_seed(seed)
    model = DDPM(build_network(net, **kwargs), T=1000).to(device).train()
    if compile:
        torch._dynamo.reset()  # a fresh compile per cell (the cache limit would otherwise fall back to eager)
        model.network = torch.compile(model.network)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    data = synthetic_images(4096, seed, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> torch.Tensor:
        x = data[torch.randint(0, len(data), (batch,), device=device)]
        with autocast:
            loss = model.loss(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach()

    return step


TRAIN_MODES = {"eager": dict(bf16=False, compile=False), "bf16": dict(bf16=True, compile=False),
               "compile+bf16": dict(bf16=True, compile=True), "compile": dict(bf16=False, compile=True)}


def part_training(rec: Recorder, sizes: Sizes, device: torch.device) -> None:
    """images/s per network and mode, and the extrapolated time of 100 epochs of 60,000 images."""
    cuda = device.type == "cuda"
    rec.notes.append(f"batch {sizes.train_batch}, median of {sizes.train_repeats} x {sizes.train_steps} steps after "
                     f"{sizes.train_warmup} warm-up steps; the step is pyddpm-train's without EMA: Algorithm 1 loss, "
                     "AdamW, gradient clipping; torch.compile compiles the network; fresh weights, synthetic images")

    def measure(net: str, mode: str) -> dict:
        step = train_step_fn(net, sizes.nets[net], sizes.train_batch, device, **TRAIN_MODES[mode])
        start = time.perf_counter()
        for _ in range(sizes.train_warmup):
            loss = step()
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite training loss {loss.item()}")
        warmup_s = time.perf_counter() - start
        seconds = median_seconds(lambda: [step() for _ in range(sizes.train_steps)], sizes.train_repeats, device)
        images_per_s = sizes.train_steps * sizes.train_batch / seconds
        return {"images_per_s": images_per_s, "warmup_s": warmup_s,
                "minutes_100_epochs": EPOCHS * EPOCH_IMAGES / images_per_s / 60}

    order = [(net, mode) for mode in ("eager", "bf16") for net in sizes.nets]
    order += [(net, mode) for net in sizes.nets for mode in ("compile+bf16", "compile")]
    for net, mode in order:
        skip = None if cuda or not TRAIN_MODES[mode]["compile"] else "dry mode: torch.compile is timed on CUDA"
        rec.cell(f"{net}/{mode}", lambda net=net, mode=mode: measure(net, mode),
                 need_s=45 if TRAIN_MODES[mode]["compile"] else 5, skip=skip)


def _best_mode(results: dict, net: str) -> tuple[str, dict] | None:
    measured = [(mode, results[f"{net}/{mode}"]) for mode in TRAIN_MODES
                if isinstance(results.get(f"{net}/{mode}", {}).get("images_per_s"), float)]
    return max(measured, key=lambda m: m[1]["images_per_s"]) if measured else None


def tabulate_training(results: dict) -> list[dict]:
    rows = []
    for net in dict.fromkeys(k.split("/")[0] for k in results if "/" in k):  # network/mode
        best = _best_mode(results, net)
        rows.append([NET_TITLES.get(net, net)] + [fmt(results.get(f"{net}/{mode}"), "images_per_s", 0)
                                                  for mode in ("eager", "compile", "bf16", "compile+bf16")]
                    + ([best[0], f"{best[1]['minutes_100_epochs']:.1f}"] if best else ["-", "-"]))
    return [{"title": f"Training, images/s (100 epochs = {EPOCHS} x {EPOCH_IMAGES:,} images, at the best mode)",
             "columns": ["network", "eager", "torch.compile", "bf16 autocast", "compile + bf16", "best",
                         "100 epochs (min)"], "rows": rows}]


# ----- bf16 vs fp32 ---------------------------------------------------------------------------------------------
def smoothed(values: list[float], window: int) -> list[float]:
    """The trailing moving average of ``values`` over ``window`` steps (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def part_bf16(rec: Recorder, sizes: Sizes, device: torch.device) -> None:
    """The same short run (seed, initial weights, batches, t and noise) in float32 and in bf16 autocast."""
    if device.type == "cuda":  # float32 means float32: no TF32 matrix products in the reference run
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    window = max(5, sizes.bf16_steps // 10)
    rec.notes.append(f"{NET_TITLES[sizes.bf16_net]}, batch {sizes.bf16_batch}, {sizes.bf16_steps} steps, lr 5e-4, "
                     f"seed 0 for both; loss per dimension smoothed over {window} steps; TF32 off")
    losses = {}

    def run(mode: str) -> dict:
        step = train_step_fn(sizes.bf16_net, sizes.nets[sizes.bf16_net], sizes.bf16_batch, device,
                             bf16=mode == "bf16", compile=False)
        torch.manual_seed(1)  # the same batches, t and noise in both runs
        start = time.perf_counter()
        curve = torch.stack([step() for _ in range(sizes.bf16_steps)]).float().cpu() / 784
        if not torch.isfinite(curve).all():
            raise RuntimeError(f"non-finite {mode} loss")
        losses[mode] = curve.tolist()
        return {"first": losses[mode][0], "last_smoothed": smoothed(losses[mode], window)[-1],
                "seconds": time.perf_counter() - start}

    rec.cell("fp32", lambda: run("fp32"), need_s=5)
    rec.cell("bf16", lambda: run("bf16"), need_s=5)

    def compare() -> dict:
        s32, s16 = smoothed(losses["fp32"], window), smoothed(losses["bf16"], window)
        rel = [abs(b - a) / a for a, b in zip(s32, s16)]
        half = len(rel) // 2
        return {"first_step_rel_diff": abs(losses["bf16"][0] - losses["fp32"][0]) / losses["fp32"][0],
                "final_rel_diff": rel[-1], "max_rel_diff_second_half": max(rel[half:]),
                "fp32_decrease": 1 - s32[-1] / s32[window - 1], "bf16_decrease": 1 - s16[-1] / s16[window - 1],
                "fp32_curve": s32[::max(1, len(s32) // 30)], "bf16_curve": s16[::max(1, len(s16) // 30)]}

    rec.cell("comparison", compare, need_s=0, skip=None if len(losses) == 2 else "a run did not finish")


def tabulate_bf16(results: dict) -> list[dict]:
    c = results.get("comparison", {})

    def pct(key: str) -> str:
        return f"{c[key]:.2%}" if isinstance(c.get(key), float) else fmt(c, key)

    rows = [[mode, fmt(results.get(mode), "first", 4), fmt(results.get(mode), "last_smoothed", 4),
             pct(f"{mode}_decrease"), fmt(results.get(mode), "seconds", 1)] for mode in ("fp32", "bf16")]
    return [{"title": "bf16 autocast vs float32 training, loss per dimension",
             "columns": ["run", "first loss", "last smoothed loss", "smoothed decrease", "seconds"], "rows": rows},
            {"title": "Relative difference of the smoothed losses",
             "columns": ["first step", "max over the second half", "at the end"],
             "rows": [[pct("first_step_rel_diff"), pct("max_rel_diff_second_half"), pct("final_rel_diff")]]}]


# ----- the kernel exercise (run under compute-sanitizer) --------------------------------------------------------
def _assert_matches(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """float32 to the bit (the kernels round like the reference), half types within one unit in the last place."""
    got = got.cpu()
    if want.dtype == torch.float32:
        if not torch.equal(got.view(torch.int32), want.view(torch.int32)):
            raise AssertionError(f"{what}: max |diff| {(got - want).abs().max().item()} (float32 must be bit-equal)")
    else:
        rtol, atol = ULP[want.dtype]
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _placed(src: torch.Tensor, offset: int, device: torch.device) -> torch.Tensor:
    """A copy of ``src`` on ``device``, ``offset`` elements into an allocation of its own that it ends."""
    buffer = torch.empty(src.numel() + offset, dtype=src.dtype, device=device)
    return buffer[offset:].view(src.shape).copy_(src)


def exercise_kernels(device: str) -> int:
    """Launches every fused kernel on ``device`` in every dtype it supports and checks each result against the
    reference computed on the CPU; returns the number of checks (AssertionError on the first mismatch)."""
    dev = torch.device(device)
    dtypes = (torch.float32, torch.float16, torch.bfloat16) if dev.type == "cuda" else (torch.float32,)
    coefs = {"noise": NOISY, "clipped x0": CLIP, "no noise": NOISY._replace(sigma=0.0)}
    # (shape, offset): offset > 0 makes a misaligned view (scalar paths); n % 4 != 0 the Philox tail; the large
    # shapes make the grid-stride loops go round more than once
    layouts = [((1,), 0), ((3, 1023), 0), ((5, 4096), 0), ((7, 333), 1), ((257, 784), 3)]
    if dev.type == "cuda":  # more elements than one pass of the grid covers (on the CPU: only slower)
        layouts += [((4, 2**18 + 3), 1), ((1024, 2048), 0)]
    g = torch.Generator().manual_seed(0)
    checks = 0
    for dtype in dtypes:
        name = str(dtype).replace("torch.", "")
        for shape, offset in layouts:
            placed = functools.partial(_placed, offset=offset, device=dev)
            # drawn on the CPU in the storage dtype and copied over: on the device only pyddpm's kernels run
            x_cpu, e_cpu, z_cpu = ((1.5 * torch.randn(shape, generator=g)).to(dtype) for _ in range(3))
            x, e, z = placed(x_cpu), placed(e_cpu), placed(z_cpu)
            nan = torch.full(shape, float("nan"), dtype=dtype)  # poisoned outputs: every element must be written
            for label, coef in coefs.items():
                what = f"{name} {shape}+{offset} {label}"
                want = ops.reverse_step_reference(x_cpu, e_cpu, coef, noise=z_cpu)
                _assert_matches(ops.reverse_step(x, e, coef, noise=z), want, f"{what}, given noise, new tensor")
                _assert_matches(ops.reverse_step(x, e, coef, noise=z, out=placed(nan)), want, f"{what}, given noise, out=")
                y = placed(x_cpu)
                _assert_matches(ops.reverse_step(y, e, coef, noise=z, out=y), want, f"{what}, given noise, in place")
                seeded = dict(seed=7, step=5, sample_offset=2)
                want = ops.reverse_step_reference(x_cpu, e_cpu, coef, **seeded)
                _assert_matches(ops.reverse_step(x, e, coef, **seeded), want, f"{what}, in-kernel noise")
                y = placed(x_cpu)
                _assert_matches(ops.reverse_step(y, e, coef, out=y, **seeded), want, f"{what}, in-kernel noise, in place")
                checks += 5
            for clip in (False, True):  # the scheduled step: rows read on the device, then one row out of range
                rows = [CLIP, CLIP._replace(sigma=0.0)] if clip else [NOISY, coefs["no noise"]]
                schedule = step_schedule.step_schedule(rows, [9, 1], device=dev)
                for coef, t in zip(rows, [9, 1]):
                    want = ops.reverse_step_reference(x_cpu, e_cpu, coef, seed=7 if coef.sigma else None, step=t,
                                                      sample_offset=2)
                    got = step_schedule.reverse_step_scheduled(placed(x_cpu), e, schedule, seed=7, sample_offset=2)
                    _assert_matches(got, want, f"{name} {shape}+{offset} scheduled row {t} clip={clip}")
                    schedule.index.add_(1)
                _assert_matches(step_schedule.reverse_step_scheduled(placed(x_cpu), e, schedule, seed=7), x_cpu,
                                f"{name} {shape}+{offset} scheduled, row out of range")
                checks += 3
            noise = ops.normal_noise(shape, seed=3, step=4, sample_offset=1, device=dev, dtype=dtype)
            want = ops.normal_noise(shape, seed=3, step=4, sample_offset=1, backend="torch").to(dtype)
            _assert_matches(noise, want, f"{name} {shape} Philox normals")
            checks += 1
    _sync(dev)
    return checks


# ----- the command ----------------------------------------------------------------------------------------------
PARTS = {"op": (part_op, tabulate_op), "sampling": (part_sampling, tabulate_sampling),
         "training": (part_training, tabulate_training), "bf16": (part_bf16, tabulate_bf16)}


def _injected_failure() -> dict:
    raise RuntimeError("injected failure (--inject-failure)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=[*PARTS, "exercise-kernels"])
    p.add_argument("--out", type=Path, help="the report folder (parts write out/parts/PART.json)")
    p.add_argument("--mode", choices=list(SIZES), default="cuda", help="cuda: the issue's sizes; dry: tiny, on CPU")
    p.add_argument("--deadline", type=float, default=math.inf, help="UNIX time by which the part must end")
    p.add_argument("--device", default="cuda", help="exercise-kernels: the device to launch on")
    p.add_argument("--inject-failure", action="store_true", help="end with a failing cell (tests the harness)")
    args = p.parse_args()
    if args.part == "exercise-kernels":
        checks = exercise_kernels(args.device)
        print(f"kernel exercise: {checks} checks passed on {args.device}", flush=True)
        return 0
    if args.out is None:
        p.error("--out is required for a part")
    run, tabulate = PARTS[args.part]
    rec = Recorder(args.out, args.part, args.deadline, tabulate)
    device = torch.device("cuda" if args.mode == "cuda" else "cpu")
    try:
        if device.type == "cuda" and not ops.cuda_built():
            raise RuntimeError(f"pyddpm._C at {pyddpm.__file__} has no CUDA kernels (build info "
                               f"{rec.pyddpm['build_info']}); see the install part")
        run(rec, SIZES[args.mode], device)
        if args.inject_failure:
            rec.cell("injected failure", _injected_failure)
    except Exception:
        rec.failed = True
        rec.error = _tail(traceback.format_exc())
        print(rec.error, file=sys.stderr, flush=True)
    rec.save("failed" if rec.failed else "ok")
    return 1 if rec.failed else 0


if __name__ == "__main__":
    sys.exit(main())
