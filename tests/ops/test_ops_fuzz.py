"""Fuzz pyddpm.ops.reverse_step with random valid and invalid calls (CPU).

Every call is classified by an oracle written from the documented rules: a valid call must return the
reference result bit for bit (see test_ops.py), an invalid one must raise TypeError or ValueError
(never crash, never return). The raw pyddpm._C entry points are fuzzed for exceptions, too.
"""
import math
import random

import pytest
import torch

from pyddpm import ops
from pyddpm.ops import StepCoefficients

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
GOOD_NUMBERS = [0.0, 1.0, -0.5, 0.02, 3.0, 1e-3, -2, 1e-45, 1e30]
BAD_NUMBERS = [math.nan, math.inf, -math.inf, 1e39, -3.5e38, "1.0", None, True, torch.tensor(1.0)]
FIELDS = ("a", "b", "sigma", "c", "p", "q", "lo", "hi")


def f32(v):
    return torch.tensor(v, dtype=torch.float32).item()


def number_ok(v):
    return (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            and abs(v) <= FLOAT32_MAX)


def int_ok(v, lo, hi):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi


def make_tensor(rng, shape, dtype, layout):
    numel = math.prod(shape)
    if layout == "transposed" and len(shape) >= 2:
        t = torch.randn(*reversed(shape)).transpose(0, -1) if len(shape) == 2 else \
            torch.randn(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)
        return t.to(dtype)
    if layout == "offset":
        k = rng.randint(1, 5)
        return torch.randn(numel + k)[k:].view(shape).to(dtype)
    return torch.randn(shape).to(dtype) if shape else torch.randn(()).to(dtype)


def random_call(rng):
    ndim = rng.choice([0] + [1, 2, 2, 3, 4] * 3)
    shape = tuple(rng.choice([0, 1, 2, 3, 5, 7]) if rng.random() < 0.1 else rng.randint(1, 7) for _ in range(ndim))
    dtype = rng.choice([torch.float32] * 30 + [torch.float64, torch.float16, torch.bfloat16, torch.int64])
    layout = rng.choice(["contiguous"] * 8 + ["transposed", "offset", "offset"])
    x = make_tensor(rng, shape, dtype, layout) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)

    def like(p_bad=0.1):
        r = rng.random()
        if r < p_bad / 4:
            return "not a tensor"
        if r < p_bad / 2:
            return make_tensor(rng, shape + (2,), torch.float32, "contiguous")
        if r < 3 * p_bad / 4:
            return torch.randn(shape, device="meta") if shape else torch.randn((), device="meta")
        if r < p_bad:
            return make_tensor(rng, shape, rng.choice([torch.float64, torch.float16]), "contiguous")
        return make_tensor(rng, shape, dtype, rng.choice(["contiguous"] * 8 + ["transposed", "offset"])) \
            if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)

    eps = like()
    values = {f: rng.choice(BAD_NUMBERS) if rng.random() < 0.03 else rng.choice(GOOD_NUMBERS) for f in FIELDS}
    if rng.random() < 0.3:
        values["sigma"] = 0.0
    if rng.random() < 0.9 and all(number_ok(values[k]) for k in ("lo", "hi")):
        values["lo"], values["hi"] = sorted((values["lo"], values["hi"]))
    clip = rng.choice([False, True, True, 1]) if rng.random() < 0.05 else rng.random() < 0.4
    coef = StepCoefficients(clip=clip, **values) if rng.random() > 0.02 else tuple(values.values())
    noise = like() if rng.random() < 0.4 else None
    if rng.random() < 0.05:
        seed = rng.choice([-1, 2**63, 1.5, True, "1"])
    elif (noise is None) == (rng.random() < 0.9):
        seed = rng.choice([0, 7, 2**63 - 1, 2**62 + 3])
    else:
        seed = None
    step = rng.choice([0, 1, 999, 2**32 - 1]) if rng.random() > 0.05 else rng.choice([-1, 2**32, 2.0])
    offset = rng.choice([0, 0, 5, 2**40]) if rng.random() > 0.03 else rng.choice([-1, 2**63, 2**63 - 1])
    out_kind = rng.choice(["none", "none", "none", "x", "x", "fresh", "fresh", "bad"])
    if out_kind == "x":
        out = x
    elif out_kind == "fresh":
        out = like(0.2)
    elif out_kind == "bad" and isinstance(x, torch.Tensor) and x.numel() > 1 and x.is_contiguous():
        storage = torch.randn(x.numel() + 1).to(x.dtype)  # out partially overlapping x
        x = storage[1:].view(x.shape)
        out = storage[:-1].view(x.shape)
    else:
        out = None
    return dict(x_t=x, eps_hat=eps, coef=coef, noise=noise, seed=seed, step=step, sample_offset=offset, out=out)


def is_valid(call):
    x, coef, noise, seed, out = call["x_t"], call["coef"], call["noise"], call["seed"], call["out"]

    def tensor_ok(t):
        return (isinstance(t, torch.Tensor) and t.device == x.device and t.dtype == x.dtype and t.shape == x.shape
                and t.is_contiguous())

    if not (isinstance(x, torch.Tensor) and x.dim() >= 1 and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.is_contiguous()):
        return False
    if not tensor_ok(call["eps_hat"]) or (noise is not None and not tensor_ok(noise)):
        return False
    if not isinstance(coef, StepCoefficients) or not isinstance(coef.clip, bool):
        return False
    if not all(number_ok(getattr(coef, f)) for f in FIELDS):
        return False
    if coef.clip and f32(coef.lo) > f32(coef.hi):
        return False
    if noise is not None and seed is not None:
        return False
    if noise is None and seed is None and f32(coef.sigma) != 0:
        return False
    if seed is not None and not int_ok(seed, 0, 2**63):
        return False
    if not int_ok(call["step"], 0, 2**32) or not int_ok(call["sample_offset"], 0, 2**63 - x.shape[0] + 1):
        return False
    if out is not None and out is not x:
        if not tensor_ok(out) or (out.numel() > 0 and out.data_ptr() != x.data_ptr()
                                  and abs(out.data_ptr() - x.data_ptr()) < x.numel() * 4):
            return False
    return True


def test_fuzz_reverse_step():
    rng = random.Random(20240601)
    counts = {"valid": 0, "invalid": 0}
    for i in range(4000):
        call = random_call(rng)
        valid = is_valid(call)
        counts["valid" if valid else "invalid"] += 1
        x_before = call["x_t"].clone() if isinstance(call["x_t"], torch.Tensor) else None
        try:
            got = ops.reverse_step(call["x_t"], call["eps_hat"], call["coef"], noise=call["noise"], seed=call["seed"],
                                   step=call["step"], sample_offset=call["sample_offset"], out=call["out"])
        except (TypeError, ValueError) as exc:
            assert not valid, f"call {i} is valid but raised {exc!r}: {call}"
            continue
        assert valid, f"call {i} is invalid but returned: {call}"
        want = ops.reverse_step_reference(x_before, call["eps_hat"], call["coef"], noise=call["noise"],
                                          seed=call["seed"], step=call["step"], sample_offset=call["sample_offset"])
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), f"call {i}: {call}"
    assert counts["valid"] > 1000 and counts["invalid"] > 1000, counts


@pytest.mark.parametrize("kwargs", [
    dict(device=2), dict(device=-1), dict(dtype=3), dict(dtype=1), dict(batch=-1), dict(numel_per_sample=-5),
    dict(out=0), dict(x_t=0), dict(eps_hat=0), dict(batch=2**62, numel_per_sample=4), dict(seed=2**63),
    dict(numel_per_sample=2**35), dict(step=2**32), dict(seed=-1), dict(coef=[1.0] * 8), dict(coef=["x"] * 11),
    dict(history=[0]), dict(history=[1] * 4),
])
def test_raw_binding_rejects_bad_arguments(kwargs):
    x = torch.randn(4, 3)
    args = dict(device=0, dtype=0, out=x.data_ptr(), x_t=x.data_ptr(), eps_hat=x.data_ptr(), noise=0, batch=4,
                numel_per_sample=3, coef=[1.0, 0.5, 1.0, 0.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0], clip=False,
                history=[], seed=1, step=1, sample_offset=0, stream=0, num_threads=1)
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        ops._C.reverse_step(**args)
