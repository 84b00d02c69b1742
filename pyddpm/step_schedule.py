"""The reverse step that reads its coefficients from a schedule on the device (the registered op
``pyddpm::reverse_step_scheduled``): one CUDA graph holding the network, this step and the schedule's advance replays
every call of a sampling loop, since nothing waits for the host. The same call with the row's coefficients to
``ops.reverse_step`` gives the same bits.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import ops, philox
from .ops import (ROW_WIDTH, _check_fake, _check_fused, _check_history, _check_no_partial_overlap, _check_tensor,
                  _coefficient_list, _DTYPE_CODES, _plain_eager, _require_extension)
from .schedules import StepCoefficients


class StepSchedule(NamedTuple):
    """The steps of one sampling loop on a device, for ``reverse_step_scheduled``: row s of ``table`` holds the
    coefficient row (``StepCoefficients.row``) of the s-th step taken and ``steps[s]`` its Philox step (the t of
    Alg. 2); ``index`` (0-dim int64) is the row the next call uses."""
    table: Tensor
    steps: Tensor
    index: Tensor
    clip: bool


def step_schedule(coefs: Sequence[StepCoefficients], steps: Sequence[int], device="cpu") -> StepSchedule:
    """The schedule of taking ``coefs[s]`` at Philox step ``steps[s]`` for s = 0, 1, ..., starting at row 0."""
    if len(coefs) != len(steps) or not coefs:
        raise ValueError(f"need one Philox step per coefficient row, got {len(coefs)} rows and {len(steps)} steps")
    if len({c.clip for c in coefs}) != 1:
        raise ValueError("every step of a schedule must have the same coef.clip")
    for step in steps:
        philox.check_counter_args(0, step, 0, 1)
    table = torch.tensor([_coefficient_list(c) for c in coefs], dtype=torch.float32, device=device)
    table = table.reshape(len(coefs), ROW_WIDTH)
    return StepSchedule(table, torch.tensor(list(steps), dtype=torch.int64, device=device),
                        torch.zeros((), dtype=torch.int64, device=device), coefs[0].clip)


def _check_schedule_args(x_t, eps_hat, history, table, steps, index, clip, seed, sample_offset) -> None:
    """Everything the scheduled kernel relies on. The rows' Philox steps must be in [0, 2**32) and their
    coefficients finite: read from the device, except while a CUDA graph is being captured (no host read is
    allowed then; ``step_schedule`` checked every row when the schedule was built)."""
    _check_tensor("x_t", x_t, None)
    if x_t.dim() < 1:
        raise ValueError("x_t must have a batch dimension (dim >= 1), got a 0-dim tensor")
    _check_tensor("eps_hat", eps_hat, x_t)
    for name, t in (("x_t", x_t), ("eps_hat", eps_hat)):
        _check_fused(name, t)
    for name, t, dtype in (("table", table, torch.float32), ("steps", steps, torch.int64),
                           ("index", index, torch.int64)):
        if not isinstance(t, Tensor) or t.device != x_t.device or t.dtype != dtype or not t.is_contiguous():
            raise ValueError(f"schedule.{name} must be a contiguous {dtype} tensor on {x_t.device}")
    if table.dim() != 2 or table.shape[1] != ROW_WIDTH or table.shape[0] < 1 or steps.shape != table.shape[:1]:
        raise ValueError(f"schedule.table must have shape (K, {ROW_WIDTH}) with K >= 1 and schedule.steps shape (K,)")
    if index.dim() != 0:
        raise ValueError("schedule.index must be a 0-dim tensor")
    if not isinstance(clip, bool):
        raise TypeError(f"schedule.clip must be a bool, got {type(clip).__name__}")
    philox.check_counter_args(seed, 0, sample_offset, x_t.shape[0])
    for k, h in enumerate(_check_history(history, x_t, [0.0] * ROW_WIDTH)):
        if not h.is_contiguous():
            raise ValueError(f"history[{k}] must be contiguous; call .contiguous() first")
    if x_t.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    lo, hi = int(steps.min()), int(steps.max())
    if not (0 <= lo and hi < 2**32):
        raise ValueError(f"schedule.steps must be Philox steps in [0, 2**32), got values from {lo} to {hi}")
    if not bool(torch.isfinite(table).all()):
        raise ValueError("schedule.table must hold finite coefficients")
    if clip and not bool((table[:, 6] <= table[:, 7]).all()):
        raise ValueError("schedule.table: lo must be <= hi in every row")
    if bool((table[:, 8 + len(history):] != 0).any()):
        raise ValueError(f"schedule.table has history coefficients beyond its {len(history)} history buffers")


def _reverse_step_scheduled_impl(x_t: Tensor, eps_hat: Tensor, history: list[Tensor], table: Tensor, steps: Tensor,
                                 index: Tensor, clip: bool, seed: int, sample_offset: int) -> None:
    _check_schedule_args(x_t, eps_hat, history, table, steps, index, clip, seed, sample_offset)
    _require_extension(x_t.device)
    if x_t.numel() == 0:
        return
    _check_no_partial_overlap(x_t, {"eps_hat": eps_hat}, history)
    cuda = x_t.device.type == "cuda"
    with torch.cuda.device(x_t.device) if cuda else contextlib.nullcontext():
        ops._C.reverse_step_scheduled(
            device=int(cuda), dtype=_DTYPE_CODES[x_t.dtype], x_t=x_t.data_ptr(), eps_hat=eps_hat.data_ptr(),
            batch=x_t.shape[0], numel_per_sample=math.prod(x_t.shape[1:]), table=table.data_ptr(),
            steps=steps.data_ptr(), index=index.data_ptr(), rows=table.shape[0], clip=clip,
            history=[h.data_ptr() for h in history], seed=seed,
            sample_offset=sample_offset, stream=torch.cuda.current_stream().cuda_stream if cuda else 0,
            num_threads=torch.get_num_threads())


_reverse_step_scheduled_op = torch.library.custom_op("pyddpm::reverse_step_scheduled", _reverse_step_scheduled_impl,
                                                     mutates_args=("x_t", "history"))


@_reverse_step_scheduled_op.register_fake
def _(x_t, eps_hat, history, table, steps, index, clip, seed, sample_offset):
    _check_fake(x_t, {"eps_hat": eps_hat}, None, seed, 0, sample_offset, history)
    for name, t, dtype in (("table", table, torch.float32), ("steps", steps, torch.int64),
                           ("index", index, torch.int64)):
        torch._check(t.device == x_t.device and t.dtype == dtype,
                     lambda: f"schedule.{name} must be a {dtype} tensor on {x_t.device}")
    torch._check(table.dim() == 2 and steps.dim() == 1 and index.dim() == 0,
                 lambda: f"schedule.table must have shape (K, {ROW_WIDTH}), schedule.steps (K,), schedule.index ()")
    torch._check(table.shape[1] == ROW_WIDTH, lambda: f"schedule.table must have shape (K, {ROW_WIDTH})")
    torch._check(table.shape[0] == steps.shape[0], lambda: "schedule.steps must have one step per table row")
    return None


def reverse_step_scheduled(x_t: Tensor, eps_hat: Tensor, schedule: StepSchedule, *, seed: int,
                           sample_offset: int = 0, history: Sequence[Tensor] = ()) -> Tensor:
    """x_t <- the reverse step of row ``schedule.index`` of the schedule, in place, with in-kernel Philox noise and
    the history buffers shifted in place (the registered op ``pyddpm::reverse_step_scheduled``; an index outside
    the rows leaves x_t and the history as they are).

    The row is read where the kernel runs and nothing waits for the host, so one CUDA graph holding the
    network, this call and ``schedule.index.add_(1)`` replays every step of a sampling loop. The same call
    with the row's coefficients to ``reverse_step`` gives the same bits.
    """
    history = list(history)
    args = (x_t, eps_hat, history, schedule.table, schedule.steps, schedule.index, schedule.clip, seed,
            sample_offset)
    _check_schedule_args(*args)
    if _plain_eager(x_t, eps_hat, schedule.table, schedule.steps, schedule.index, *history):
        _reverse_step_scheduled_impl(*args)
        for t in (x_t, *history):
            torch.autograd.graph.increment_version(t)
    else:
        _reverse_step_scheduled_op(*args)
    return x_t
