"""The op pyddpm::log_sigmoid (pyddpm._C's one-pass LogSigmoid, forward and backward) and FastLogSigmoid on it, against
log sigmoid and its derivative sigmoid(-x) computed in float64 on the same inputs. float32: within 3 ulps of the
reference, 3 x 2^-23 x |reference| (exp_nonpositive's ~1 ulp, a division and the log1p series' last rounding, the
final subtraction: measured 2.1-2.2 ulps forward, 1.9 backward over [-300, 300], with fused multiply-adds or
without), plus 1e-37 absolute for the values below float32's normal range (past x = 87 the kernel's exp(-|x|) is 0
and log sigmoid(x) is -1.6e-38 against the true -e^-x). bfloat16: within one bfloat16 spacing, 2^-8 x |reference|
(the reference starts from the same bfloat16 inputs; the kernel rounds once, at the end)."""
import pytest
import torch
from torch.nn import functional as F

from pyddpm import _C
from pyddpm.accel import kernels
from pyddpm.accel.elementwise import FastLogSigmoid

FLOAT32_ULPS = 3 * 2.0 ** -23


def inputs(seed: int, shape=(4, 8, 7, 7)) -> torch.Tensor:
    """A wide sweep (every pre-activation a trained network shows, and far beyond) and fresh random values."""
    generator = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    sweep = torch.linspace(-300, 300, n // 2)
    noise = torch.randn(n - n // 2, generator=generator) * 30
    values = torch.cat([sweep, noise])[torch.randperm(n, generator=generator)]
    return values.reshape(shape)


def assert_within(out: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> None:
    err = (out.double() - ref).abs()
    bound = rtol * ref.abs() + atol
    assert bool((err <= bound).all()), f"max error {float((err - bound).max()):+.3g} over the bound"


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_float32_forward_and_backward_are_log_sigmoid_to_3_ulps(layout):
    x = inputs(0).contiguous(memory_format=layout).requires_grad_(True)
    out = FastLogSigmoid()(x)
    assert out.is_contiguous(memory_format=layout)
    assert_within(out.detach(), F.logsigmoid(x.detach().double()), FLOAT32_ULPS, 1e-37)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad)
    assert_within(x.grad, grad.double() * torch.sigmoid(-x.detach().double()), FLOAT32_ULPS, 1e-37)


def test_bfloat16_forward_and_backward_are_log_sigmoid_to_bfloat16_rounding():
    x = inputs(2).contiguous(memory_format=torch.channels_last).bfloat16().requires_grad_(True)
    out = FastLogSigmoid()(x)
    assert out.dtype == torch.bfloat16
    assert_within(out.detach(), F.logsigmoid(x.detach().double()), 2.0 ** -8, 1e-37)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).bfloat16()
    out.backward(grad)
    assert_within(x.grad, grad.double() * torch.sigmoid(-x.detach().double()), 2.0 ** -8, 1e-37)


def test_special_values_are_log_sigmoids():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 87.0, -87.0, 1e-30])
    out = FastLogSigmoid()(x)
    ref = F.logsigmoid(x.double())
    assert torch.isnan(out[0]) and out[2] == -float("inf")
    assert_within(out[1:].double().nan_to_num(neginf=-1e300), ref[1:].nan_to_num(neginf=-1e300), FLOAT32_ULPS, 1e-37)


def test_a_gradient_in_another_layout_than_the_input():
    """The backward reads dL/dy in x's memory order: a gradient laid out otherwise (here NCHW for a channels-last
    x, and an expanded one) is copied into that order first."""
    x = inputs(4).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).contiguous()
    ref = grad.double() * torch.sigmoid(-x.detach().double())
    FastLogSigmoid()(x).backward(grad)
    assert_within(x.grad, ref, FLOAT32_ULPS, 1e-37)
    x.grad = None
    FastLogSigmoid()(x).sum().backward()  # dL/dy: ones expanded from a scalar (all strides 0)
    assert_within(x.grad, torch.sigmoid(-x.detach().double()), FLOAT32_ULPS, 1e-37)


def test_other_inputs_take_atens_log_sigmoid():
    """Strided views and float64 go to ATen's logsigmoid: the same function."""
    x = inputs(6)
    view = x.transpose(1, 2)
    assert not kernels.takes(view) and not kernels.takes(x.double()) and kernels.takes(x)
    assert_within(FastLogSigmoid()(view), F.logsigmoid(view.double()), FLOAT32_ULPS, 1e-6)
    assert_within(FastLogSigmoid()(x.double()), F.logsigmoid(x.double()), 1e-15, 1e-300)


def test_the_op_refuses_what_the_kernel_cannot_take_in_one_line():
    x = inputs(8)
    with pytest.raises(ValueError, match="log_sigmoid: x must be float32 or bfloat16"):
        kernels.log_sigmoid(x.double())
    with pytest.raises(ValueError, match="log_sigmoid: x must be contiguous or channels-last"):
        kernels.log_sigmoid(x.transpose(1, 2))
    with pytest.raises(ValueError, match="grad_y must have x's shape, dtype and strides"):
        kernels.log_sigmoid_backward(x, x.contiguous(memory_format=torch.channels_last))


def test_opcheck():
    """The registered ops' schema, fake kernels and autograd agree with their real kernels."""
    for x in (inputs(9, (2, 3, 4, 5)).contiguous(memory_format=torch.channels_last), inputs(10, (7, 11)).bfloat16()):
        torch.library.opcheck(torch.ops.pyddpm.log_sigmoid.default, (x.requires_grad_(True),))
        torch.library.opcheck(torch.ops.pyddpm.log_sigmoid_backward.default, (x.detach(), torch.randn_like(x)))


def test_in_place_as_the_header_allows():
    x = inputs(7, (3, 1000))
    ref = F.logsigmoid(x.double())
    y = x.clone()
    _C.log_sigmoid(dtype=0, x=y.data_ptr(), y=y.data_ptr(), n=y.numel(), num_threads=2)
    assert_within(y, ref, FLOAT32_ULPS, 1e-37)
