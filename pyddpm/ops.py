"""The fused reverse step: the Python face of pyddpm._C and the plain-torch reference beside it.

One step of every sampler (Algorithm 2, DDIM, DPM-Solver++ 2M/3M/SDE, UniPC; ``pyddpm.solvers``) is affine in
(x, eps_hat, z) and K <= 3 history buffers H_k of earlier data predictions, with per-step scalars:

    d = p x + q eps_hat  (clamped to [lo, hi] with clip)
    x_next = a x + b eps_hat [+ c d + sum_k h_k H_k] + sigma z,   then H <- (d, H_0, ..., H_{K-2})

(the c d term only with clip or history: without either it is Algorithm 2's and DDIM's step).
``reverse_step`` computes it in one kernel call (float32 on CPU; float32, float16, bfloat16 on CUDA;
float32 math and float32 history), with z either given or drawn inside the kernel from the counter-based
Philox rule of ``pyddpm.philox``. It is registered as the torch.library custom ops ``pyddpm::reverse_step`` (new
tensor), ``pyddpm::reverse_step_out`` (writes ``out``), ``pyddpm::reverse_step_`` (in place) and
``pyddpm::reverse_step_scheduled`` (``pyddpm.step_schedule``), so torch.compile(fullgraph=True), export and fake tensors see it; plain
eager calls on plain tensors launch the kernel directly (same kernel, no dispatcher overhead), which CUDA
graph capture records like any launch on the current stream. Every entry checks dtypes, devices, shapes,
contiguity and scalar ranges before a launch (the ops' implementations too, and their fake kernels with
torch._check), so no call reads or writes out of bounds. It has no autograd formula (sampling only).
``reverse_step_reference`` is the specification in plain torch; the two agree to the bit on CPU.
"""
from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from . import philox
from .schedules import MAX_HISTORY, StepCoefficients

try:
    from . import _C
except ImportError as exc:  # not built: every fused call says how to build it
    _C = None
    _IMPORT_ERROR: Optional[ImportError] = exc
else:
    _IMPORT_ERROR = None
_CUDA_BUILT = _C is not None and bool(_C.cuda_built())

_BUILD_HINT = ("pyddpm._C (the fused reverse-step extension) is not built: run `pip install .` in the pyddpm "
               "checkout (or `pip install -e .` / `python setup.py build_ext --inplace` for development); "
               "set PYDDPM_CUDA=1 to require the CUDA kernels")
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_FLOAT32_MAX = 3.4028234663852886e38


def extension_available() -> bool:
    """True if pyddpm._C imports."""
    return _C is not None


def cuda_built() -> bool:
    """True if pyddpm._C was compiled with the CUDA kernels."""
    return _CUDA_BUILT


def _require_extension(device: torch.device) -> None:
    if _C is None:
        raise RuntimeError(f"{_BUILD_HINT} (import error: {_IMPORT_ERROR})")
    if device.type == "cuda" and not _CUDA_BUILT:
        raise RuntimeError("pyddpm._C was built without CUDA, so it cannot run on "
                           f"{device}: rebuild with nvcc on PATH, e.g. `PYDDPM_CUDA=1 pip install .`")


def _f32(value: float) -> float:
    """Finite |value| <= float32 max rounded to binary32 (nearest even, as the kernels see it); plain math
    so torch.compile traces it."""
    if value == 0.0:
        return value
    exponent = max(math.frexp(value)[1] - 24, -149)  # 24 significant bits, or the subnormal spacing
    return math.ldexp(round(math.ldexp(value, -exponent)), exponent)


_COEF_FIELDS = ("a", "b", "sigma", "c", "p", "q", "lo", "hi", "h_0", "h_1", "h_2")
ROW_WIDTH = len(_COEF_FIELDS)  # csrc/reverse_step.h kRowWidth


def _coefficient_list(coef) -> list[float]:
    """coef.row() (a, b, sigma, c, p, q, lo, hi, h_0, h_1, h_2) after checking they are finite numbers representable
    in float32. (The kernels round them to float32; the reference rounds them with _f32.)"""
    if not isinstance(coef, StepCoefficients):
        raise TypeError(f"coef must be a pyddpm.ops.StepCoefficients, got {type(coef).__name__}")
    if not isinstance(coef.clip, bool):
        raise TypeError(f"coef.clip must be a bool, got {type(coef.clip).__name__}")
    if not isinstance(coef.h, tuple) or len(coef.h) > MAX_HISTORY:
        raise ValueError(f"coef.h must be a tuple of at most {MAX_HISTORY} history coefficients, got {coef.h!r}")
    return _check_coefficient_values(coef.row(), coef.clip)


def _check_coefficient_values(values, clip) -> list[float]:
    """The 11 coefficients as floats after checking they are finite numbers representable in float32 (lo <= hi when
    clipping); the check every entry runs, the registered ops included."""
    if not isinstance(clip, bool):
        raise TypeError(f"clip must be a bool, got {type(clip).__name__}")
    if not isinstance(values, (list, tuple)) or len(values) != len(_COEF_FIELDS):
        raise ValueError(f"coef must hold the {len(_COEF_FIELDS)} numbers {', '.join(_COEF_FIELDS)}, "
                         f"got {values!r:.80}")
    for name, value in zip(_COEF_FIELDS, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"coef.{name} must be a Python float, got {type(value).__name__}")
        if not -_FLOAT32_MAX <= value <= _FLOAT32_MAX:  # also false for NaN
            raise ValueError(f"coef.{name} must be finite and representable in float32, got {value}")
    if clip and not values[6] <= values[7]:
        raise ValueError(f"coef.lo must be <= coef.hi, got lo={values[6]}, hi={values[7]}")
    return [float(v) for v in values]


def _check_tensor(name: str, t, like: Optional[Tensor]) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if like is None:
        return
    if t.device != like.device:
        raise ValueError(f"{name} must be on the device of x_t ({like.device}), got {t.device}")
    if t.dtype != like.dtype:
        raise ValueError(f"{name} must have the dtype of x_t ({like.dtype}), got {t.dtype}")
    if t.shape != like.shape:
        raise ValueError(f"{name} must have the shape of x_t {tuple(like.shape)}, got {tuple(t.shape)}")


def _check_history(history, x_t: Tensor, values) -> list:
    """The history buffers as a list after checking each is a float32 tensor shaped like x_t on its device, there
    are at most MAX_HISTORY of them and no coefficient h_k != 0 lacks its buffer."""
    if not isinstance(history, (list, tuple)) or len(history) > MAX_HISTORY:
        raise ValueError(f"history must be a list of at most {MAX_HISTORY} tensors, got {history!r:.80}")
    for k, h in enumerate(history):
        _check_tensor(f"history[{k}]", h, None)
        if h.device != x_t.device or h.dtype != torch.float32 or h.shape != x_t.shape:
            raise ValueError(f"history[{k}] must be a float32 tensor of x_t's shape {tuple(x_t.shape)} on "
                             f"{x_t.device}, got {h.dtype} {tuple(h.shape)} on {h.device}")
    unused = [name for name, v in zip(_COEF_FIELDS[8 + len(history):], values[8 + len(history):]) if v != 0.0]
    if unused:
        raise ValueError(f"coef.{unused[0]} != 0 needs history buffer {unused[0][2:]}: pass history=[...] with "
                         f"{int(unused[-1][2:]) + 1} tensors")
    return list(history)


def _check_step_args(x_t, eps_hat, coef, noise, seed, step, sample_offset, history=()):
    """Checks shared by the fused op and the reference; returns (coefficients, seed or -1, step, sample_offset)."""
    _check_tensor("x_t", x_t, None)
    if x_t.dim() < 1:
        raise ValueError("x_t must have a batch dimension (dim >= 1), got a 0-dim tensor")
    if not x_t.is_floating_point():
        raise ValueError(f"x_t must be a floating-point tensor, got {x_t.dtype}")
    _check_tensor("eps_hat", eps_hat, x_t)
    values = _coefficient_list(coef)
    _check_history(history, x_t, values)
    if noise is not None:
        _check_tensor("noise", noise, x_t)
        if seed is not None:
            raise ValueError("give either noise or seed, not both")
    elif seed is None and values[2] != 0.0:
        raise ValueError("coef.sigma != 0 needs noise: pass noise=<tensor like x_t> or seed=<int>")
    checked = philox.check_counter_args(0 if seed is None else seed, step, sample_offset, x_t.shape[0])
    return values, (-1 if seed is None else checked[0]), checked[1], checked[2]


def _check_fused(name: str, t: Tensor) -> None:
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on cpu or cuda, got {t.device}")
    allowed = (torch.float32,) if t.device.type == "cpu" else tuple(_DTYPE_CODES)
    if t.dtype not in allowed:
        names = " or ".join(str(d).replace("torch.", "") for d in allowed)
        raise ValueError(f"{name} must be {names} on {t.device.type}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous; call .contiguous() first")


def _overlaps(a: Tensor, b: Tensor) -> bool:
    a_lo, b_lo = a.data_ptr(), b.data_ptr()
    return a_lo < b_lo + b.numel() * b.element_size() and b_lo < a_lo + a.numel() * a.element_size()


def _check_no_partial_overlap(out: Tensor, inputs: dict, history=()) -> None:
    """out may coincide with an input (same first element), but must not partially overlap one; each history
    buffer overlaps nothing else (it is read and written per element after the others are read)."""
    for name, t in inputs.items():
        if t is not None and t.numel() and out.numel() and t.data_ptr() != out.data_ptr() and _overlaps(out, t):
            raise ValueError(f"out partially overlaps {name}; use out=x_t for in place or a separate tensor")
    others = [("out", out), *inputs.items()]
    for k, h in enumerate(history):
        for name, t in others + [(f"history[{j}]", history[j]) for j in range(k)]:
            if t is not None and t.numel() and _overlaps(h, t):
                raise ValueError(f"history[{k}] overlaps {name}; give each history buffer its own memory")


def _check_kernel_args(out, x_t, eps_hat, noise, history, coef, clip, seed, step, sample_offset) -> list[float]:
    """Everything the kernel relies on (seed -1: no seed), checked on every entry, the registered ops included, so
    a traced or exported graph re-run on new inputs never launches out of bounds; returns the coefficients."""
    _check_tensor("x_t", x_t, None)
    if x_t.dim() < 1:
        raise ValueError("x_t must have a batch dimension (dim >= 1), got a 0-dim tensor")
    _check_fused("x_t", x_t)
    for name, t in (("eps_hat", eps_hat), ("noise", noise), ("out", out)):
        if t is not None:
            _check_tensor(name, t, x_t)
            _check_fused(name, t)
    values = _check_coefficient_values(coef, clip)
    for k, h in enumerate(_check_history(history, x_t, values)):
        if not h.is_contiguous():
            raise ValueError(f"history[{k}] must be contiguous; call .contiguous() first")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    philox.check_counter_args(max(seed, 0), step, sample_offset, x_t.shape[0])
    if seed < -1:
        raise ValueError(f"seed must be in [0, 2**63) (or -1: none), got {seed}")
    if noise is not None and seed != -1:
        raise ValueError("give either noise or seed, not both")
    if noise is None and seed == -1 and values[2] != 0.0:
        raise ValueError("coef.sigma != 0 needs noise: pass noise=<tensor like x_t> or seed=<int>")
    return values


def _launch(out: Tensor, x_t: Tensor, eps_hat: Tensor, noise: Optional[Tensor], history: Sequence[Tensor],
            coef: Sequence[float], clip: bool, seed: int, step: int, sample_offset: int) -> None:
    """Runs the kernel after ``_check_kernel_args`` (seed -1: none); refuses an out that partially overlaps an
    input and history buffers that overlap anything."""
    values = _check_kernel_args(out, x_t, eps_hat, noise, history, coef, clip, seed, step, sample_offset)
    _require_extension(x_t.device)
    if out.numel() == 0:
        return
    _check_no_partial_overlap(out, {"x_t": x_t, "eps_hat": eps_hat, "noise": noise}, history)
    cuda = x_t.device.type == "cuda"
    with torch.cuda.device(x_t.device) if cuda else contextlib.nullcontext():
        _C.reverse_step(
            device=int(cuda), dtype=_DTYPE_CODES[x_t.dtype], out=out.data_ptr(), x_t=x_t.data_ptr(),
            eps_hat=eps_hat.data_ptr(), noise=0 if noise is None else noise.data_ptr(),
            batch=x_t.shape[0], numel_per_sample=math.prod(x_t.shape[1:]), coef=values, clip=clip,
            history=[h.data_ptr() for h in history], seed=max(seed, 0), step=step, sample_offset=sample_offset,
            stream=torch.cuda.current_stream().cuda_stream if cuda else 0, num_threads=torch.get_num_threads())


def _reverse_step_new(x_t: Tensor, eps_hat: Tensor, noise: Optional[Tensor], coef: Sequence[float], clip: bool,
                      seed: int, step: int, sample_offset: int) -> Tensor:
    out = torch.empty_like(x_t)
    _launch(out, x_t, eps_hat, noise, [], coef, clip, seed, step, sample_offset)
    return out


def _reverse_step_into(x_t: Tensor, eps_hat: Tensor, noise: Optional[Tensor], history: list[Tensor], out: Tensor,
                       coef: Sequence[float], clip: bool, seed: int, step: int, sample_offset: int) -> None:
    _launch(out, x_t, eps_hat, noise, history, coef, clip, seed, step, sample_offset)


def _reverse_step_in_place(x_t: Tensor, eps_hat: Tensor, noise: Optional[Tensor], history: list[Tensor],
                           coef: Sequence[float], clip: bool, seed: int, step: int, sample_offset: int) -> None:
    _launch(x_t, x_t, eps_hat, noise, history, coef, clip, seed, step, sample_offset)


_reverse_step_op = torch.library.custom_op("pyddpm::reverse_step", _reverse_step_new, mutates_args=())
_reverse_step_out_op = torch.library.custom_op("pyddpm::reverse_step_out", _reverse_step_into,
                                               mutates_args=("out", "history"))
_reverse_step_inplace_op = torch.library.custom_op("pyddpm::reverse_step_", _reverse_step_in_place,
                                                   mutates_args=("x_t", "history"))


def _check_fake(x_t: Tensor, others: dict, coef=None, seed: int = -1, step: int = 0, sample_offset: int = 0,
                history=()) -> None:
    """The fake kernels' checks (torch._check, so symbolic shapes are checked as they are traced): the tensors of
    ``others`` match x_t in device, dtype and shape, the history buffers in device and shape (float32); x_t's dtype
    suits its device; the scalars are in range."""
    torch._check(len(history) <= MAX_HISTORY, lambda: f"at most {MAX_HISTORY} history buffers")
    for h in history:
        torch._check(h.device == x_t.device and h.dtype == torch.float32 and h.dim() == x_t.dim(),
                     lambda: "history buffers must be float32 tensors of x_t's shape on its device")
        for a, b in zip(h.shape, x_t.shape):
            torch._check(a == b, lambda: "history buffers must have the shape of x_t")
    torch._check(x_t.dim() >= 1, lambda: "x_t must have a batch dimension (dim >= 1)")
    allowed = (torch.float32,) if x_t.device.type == "cpu" else tuple(_DTYPE_CODES)
    torch._check(x_t.device.type in ("cpu", "cuda") and x_t.dtype in allowed,
                 lambda: f"x_t must be float32 on cpu (or float32/float16/bfloat16 on cuda), got {x_t.dtype} on "
                         f"{x_t.device}")
    for name, t in others.items():
        if t is None:
            continue
        torch._check(t.device == x_t.device,
                     lambda: f"{name} must be on the device of x_t ({x_t.device}), got {t.device}")
        torch._check(t.dtype == x_t.dtype, lambda: f"{name} must have the dtype of x_t ({x_t.dtype}), got {t.dtype}")
        torch._check(t.dim() == x_t.dim(), lambda: f"{name} must have the shape of x_t")
        for a, b in zip(t.shape, x_t.shape):
            torch._check(a == b, lambda: f"{name} must have the shape of x_t")
    if coef is not None:
        torch._check(len(coef) == len(_COEF_FIELDS), lambda: f"coef must hold {len(_COEF_FIELDS)} numbers")
        torch._check(all(-_FLOAT32_MAX <= v <= _FLOAT32_MAX for v in coef),
                     lambda: "coef must be finite and representable in float32")
    torch._check(-1 <= seed < 2**63, lambda: f"seed must be in [0, 2**63) (or -1: none), got {seed}")
    torch._check(0 <= step < 2**32, lambda: f"step must be in [0, 2**32), got {step}")
    torch._check(0 <= sample_offset < 2**63, lambda: f"sample_offset must be in [0, 2**63), got {sample_offset}")


@_reverse_step_op.register_fake
def _(x_t, eps_hat, noise, coef, clip, seed, step, sample_offset):
    _check_fake(x_t, {"eps_hat": eps_hat, "noise": noise}, coef, seed, step, sample_offset)
    return torch.empty_like(x_t)


@_reverse_step_out_op.register_fake
def _(x_t, eps_hat, noise, history, out, coef, clip, seed, step, sample_offset):
    _check_fake(x_t, {"eps_hat": eps_hat, "noise": noise, "out": out}, coef, seed, step, sample_offset, history)
    return None


@_reverse_step_inplace_op.register_fake
def _(x_t, eps_hat, noise, history, coef, clip, seed, step, sample_offset):
    _check_fake(x_t, {"eps_hat": eps_hat, "noise": noise}, coef, seed, step, sample_offset, history)
    return None


def _plain_eager(*tensors: Optional[Tensor]) -> bool:
    """True for an eager call on plain tensors that needs no autograd: then the kernel is launched directly,
    skipping ~30 us of dispatcher per call. Tracing (torch.compile, export, fake tensors), tensor subclasses,
    torch function/dispatch modes, functorch transforms and autograd all go through the custom ops."""
    if torch.compiler.is_compiling():
        return False
    if (torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack()
            or torch._C._functorch.peek_interpreter_stack() is not None):
        return False
    grad = torch.is_grad_enabled()
    return all(t is None or (type(t) is Tensor and not (grad and t.requires_grad)) for t in tensors)


def reverse_step(x_t: Tensor, eps_hat: Tensor, coef: StepCoefficients, *, noise: Optional[Tensor] = None,
                 seed: Optional[int] = None, step: int = 0, sample_offset: int = 0,
                 out: Optional[Tensor] = None, history: Sequence[Tensor] = ()) -> Tensor:
    """x_next = a x_t + b eps_hat [+ c d + sum_k h_k H_k] + sigma z in one fused kernel call (module docstring),
    the history buffers ``history`` (float32, shaped like x_t; H_0 the latest data prediction) shifted in place.

    Dim 0 of x_t is the batch. If coef.sigma != 0, give exactly one of ``noise`` (a tensor like x_t) or
    ``seed`` (0 <= seed < 2**63): z is then drawn in the kernel from Philox for global sample index
    sample_offset + i at ``step`` (pyddpm.philox). ``out`` may be x_t (in place). All tensors must be
    contiguous, on one device, of one dtype (float32 on CPU; float32/float16/bfloat16 on CUDA).
    """
    coefs = _coefficient_list(coef)
    if isinstance(seed, int) and not isinstance(seed, bool) and seed < 0:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    seed = -1 if seed is None else seed
    history = list(history) if isinstance(history, (list, tuple)) else history
    _check_kernel_args(x_t if out is None else out, x_t, eps_hat, noise, history, coefs, coef.clip, seed, step,
                       sample_offset)
    _require_extension(x_t.device)
    args = (coefs, coef.clip, seed, int(step), int(sample_offset))
    if out is None and history:
        out = torch.empty_like(x_t)
    if _plain_eager(x_t, eps_hat, noise, out, *history):
        if out is None:
            return _reverse_step_new(x_t, eps_hat, noise, *args)
        _launch(out, x_t, eps_hat, noise, history, *args)
        for t in (out, *history):
            torch.autograd.graph.increment_version(t)
        return out
    if out is None:
        return _reverse_step_op(x_t, eps_hat, noise, *args)
    if out is x_t:
        _reverse_step_inplace_op(x_t, eps_hat, noise, history, *args)
    else:
        _reverse_step_out_op(x_t, eps_hat, noise, history, out, *args)
    return out


def reverse_step_reference(x_t: Tensor, eps_hat: Tensor, coef: StepCoefficients, *, noise: Optional[Tensor] = None,
                           seed: Optional[int] = None, step: int = 0, sample_offset: int = 0,
                           history: Sequence[Tensor] = ()) -> Tensor:
    """x_next of ``reverse_step`` in plain torch (the specification): float32 math, any device/layout, no out; the
    history buffers shifted in place as the kernel does."""
    values, seed, step, sample_offset = _check_step_args(x_t, eps_hat, coef, noise, seed, step, sample_offset,
                                                        history)
    a, b, sigma, c, p, q, lo, hi, *h = (_f32(v) for v in values)
    x, e = x_t.float(), eps_hat.float()
    v = a * x + b * e
    if coef.clip or history:
        d = p * x + q * e
        if coef.clip:
            d = d.clamp(lo, hi)
        v = v + c * d
        for h_k, buffer in zip(h, history):
            v = v + h_k * buffer
        for k in range(len(history) - 1, 0, -1):
            history[k].copy_(history[k - 1])
        if history:
            history[0].copy_(d)
    if sigma != 0.0:
        if noise is not None:
            z = noise.float()
        else:
            z = philox.philox_normal(x_t.shape, seed, step, sample_offset, device=x_t.device)
        v = v + sigma * z
    return v.to(x_t.dtype)


def _normal_new(shape: Sequence[int], seed: int, step: int, sample_offset: int, device: torch.device,
                dtype: torch.dtype) -> Tensor:
    out = torch.empty(shape, device=device, dtype=dtype)
    _require_extension(out.device)
    if out.numel() == 0:
        return out
    cuda = out.device.type == "cuda"
    with torch.cuda.device(out.device) if cuda else contextlib.nullcontext():
        _C.normal(device=int(cuda), dtype=_DTYPE_CODES[dtype], out=out.data_ptr(), batch=shape[0],
                  numel_per_sample=math.prod(shape[1:]), seed=seed, step=step, sample_offset=sample_offset,
                  stream=torch.cuda.current_stream().cuda_stream if cuda else 0,
                  num_threads=torch.get_num_threads())
    return out


_normal_op = torch.library.custom_op("pyddpm::normal_noise", _normal_new, mutates_args=())


@_normal_op.register_fake
def _(shape, seed, step, sample_offset, device, dtype):
    return torch.empty(shape, device=device, dtype=dtype)


def normal_noise(shape, *, seed: int, step: int = 0, sample_offset: int = 0, device="cpu",
                 dtype: torch.dtype = torch.float32, backend: str = "fused") -> Tensor:
    """z ~ N(0, I) of ``shape`` (dim 0 = batch) by the counter-based Philox rule; step=0 gives x_T (Alg. 2 line 1).

    backend "fused" runs the kernel, "torch" pyddpm.philox; both give the same values. Other floating
    dtypes than the kernel's (float32 on CPU) are drawn in float32 and rounded.
    """
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    if not shape or min(shape) < 0:
        raise ValueError(f"shape must be (batch, *sample_shape) with sizes >= 0, got {shape}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype}")
    device = torch.device(device)
    seed, step, sample_offset = philox.check_counter_args(seed, step, sample_offset, shape[0])
    if backend == "torch":
        return philox.philox_normal(shape, seed, step, sample_offset, device=device, dtype=dtype)
    if backend != "fused":
        raise ValueError(f"backend must be 'fused' or 'torch', got {backend!r}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda for the fused backend, got {device}")
    _require_extension(device)
    native = dtype if device.type == "cuda" and dtype in _DTYPE_CODES else torch.float32
    draw = _normal_new if _plain_eager() else _normal_op
    return draw(shape, seed, step, sample_offset, device, native).to(dtype)
