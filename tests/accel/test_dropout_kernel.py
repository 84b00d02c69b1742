"""The op pyddpm::dropout (pyddpm._C's dropout kernel) and FastDropout on it, against the mask computed in plain torch
from pyddpm.philox (the reference Philox4x32-10) on fresh random inputs: element e is kept when the 16-bit word e % 8
of philox((e // 8, 0, 0, 0), seed) is >= threshold. Kept elements are x * scale in one float32 rounding, as torch's
own multiply, so float32 results are bit-exact; bfloat16 ones are that product rounded once to bfloat16, also exact
against torch's x.float() * m rounded with .bfloat16()."""
import math

import pytest
import torch
from torch import nn

from pyddpm.accel import kernels
from pyddpm.accel.elementwise import FastDropout
from pyddpm.philox import philox4x32_10

SEED = 2**40 + 12345  # both key words non-zero
THRESHOLD = round(0.1 * 65536)
SCALE = 1.0 / (1.0 - THRESHOLD / 65536)


def reference_multipliers(n: int, seed: int = SEED, threshold: int = THRESHOLD, scale: float = SCALE) -> torch.Tensor:
    groups = torch.arange((n + 7) // 8, dtype=torch.int64)
    words = philox4x32_10(groups & 0xFFFFFFFF, groups >> 32, 0, 0, seed & 0xFFFFFFFF, seed >> 32)
    halves = torch.stack([h for w in words for h in (w & 0xFFFF, w >> 16)], dim=1).reshape(-1)[:n]
    return torch.where(halves >= threshold, torch.tensor(scale, dtype=torch.float32), torch.tensor(0.0))


def kernel(x: torch.Tensor, y: torch.Tensor, seed: int = SEED, threads: int = 2) -> None:
    """y = pyddpm::dropout(x) on ``threads`` threads (y may be x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y.copy_(kernels.dropout(x, seed, THRESHOLD, SCALE))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 13, 1024, 3001])  # inside one Philox word, one block, several blocks
def test_the_kernel_is_the_philox_mask_times_x(dtype, n):
    x = (torch.randn(n, generator=torch.Generator().manual_seed(n)) * 10).to(dtype)
    y = torch.empty_like(x)
    kernel(x, y)
    assert torch.equal(y, (x.float() * reference_multipliers(n)).to(dtype))


def test_the_mask_does_not_depend_on_threads():
    x = torch.randn(200_003, generator=torch.Generator().manual_seed(1))
    one, two = torch.empty_like(x), torch.empty_like(x)
    kernel(x, one, threads=1)
    kernel(x, two, threads=2)
    assert torch.equal(one, two)
    in_place = x.clone()
    kernel(in_place, in_place)
    assert torch.equal(in_place, one)
    other = torch.empty_like(x)
    kernel(x, other, seed=SEED + 1)
    assert not torch.equal((other == 0), (one == 0))  # another seed, another mask


def test_a_dropped_nan_or_infinity_gives_nan_as_torch():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0] * 64)
    y = torch.empty_like(x)
    kernel(x, y)
    assert torch.equal(y.isnan(), (x * reference_multipliers(x.numel())).isnan())


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_backward_applies_the_forwards_mask(layout, dtype):
    """The same seed under torch.manual_seed gives the same mask; dL/dx = dL/dy * (scale or 0) with the mask of
    the forward (redrawn from its seed), also for a gradient laid out otherwise than x."""
    drop = FastDropout(nn.Dropout(0.1))
    x = (torch.rand(8, 16, 9, 9) + 1.0).contiguous(memory_format=layout).to(dtype).requires_grad_(True)
    torch.manual_seed(3)
    y = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)
    assert y.dtype == dtype and y.is_contiguous(memory_format=layout)
    multiplier = torch.where(y != 0, torch.tensor(SCALE), torch.tensor(0.0))
    assert torch.equal(y, (x.detach().float() * multiplier).to(dtype))
    grad = torch.randn(8, 9, 9, 16).permute(0, 3, 1, 2).to(dtype)  # channels-last strides whatever x's are
    y.backward(grad)
    assert torch.equal(x.grad, (grad.float() * multiplier).to(dtype))


def test_fast_dropout_takes_torchs_dropout_where_the_kernel_does_not(monkeypatch):
    """A strided view or float64: F.dropout (p dropped within 5 binomial standard errors)."""
    drop = FastDropout(nn.Dropout(0.25))
    x = torch.ones(1000, 1000, dtype=torch.float64)
    calls = []
    monkeypatch.setattr(nn.functional, "dropout", lambda *a, f=nn.functional.dropout: calls.append(1) or f(*a))
    for value in (x, x.float()[:, ::2]):
        kept = drop(value) != 0
        assert abs(float(kept.double().mean()) - 0.75) <= 5 * math.sqrt(0.75 * 0.25 / kept.numel())
    assert len(calls) == 2


@pytest.mark.parametrize("args, message", [
    (dict(x=torch.ones(4, dtype=torch.float64)), "float32 or bfloat16"), (dict(seed=-1), "seed must be"),
    (dict(threshold=65537), "threshold must be"), (dict(x=torch.ones(4, 4)[:, ::2]), "contiguous")])
def test_the_op_refuses_bad_arguments_in_one_line(args, message):
    call = dict(x=torch.ones(4), seed=1, threshold=1, scale=1.0)
    with pytest.raises(ValueError, match=message):
        kernels.dropout(**{**call, **args})


def test_opcheck():
    """The registered op's schema, fake kernel and autograd agree with its real kernel."""
    for x in (torch.randn(3, 4, 5, 6).contiguous(memory_format=torch.channels_last), torch.randn(100).bfloat16()):
        torch.library.opcheck(torch.ops.pyddpm.dropout.default, (x.requires_grad_(True), SEED, THRESHOLD, SCALE))
