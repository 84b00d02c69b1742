"""pyddpm._C's one-pass LogSigmoid (forward and backward) and FastLogSigmoid on it, against log sigmoid and its
derivative sigmoid(-x) computed in float64 on the same inputs. float32: within 3 ulps of the reference, 3 x 2^-23
x |reference| (exp_nonpositive's ~1 ulp, a division and the log1p series' last rounding, the final subtraction:
measured 2.1-2.2 ulps forward, 1.9 backward over [-300, 300], with fused multiply-adds or without), plus 1e-37 absolute for the values below float32's
normal range (past x = 87 the kernel's exp(-|x|) is 0 and log sigmoid(x) is -1.6e-38 against the true -e^-x).
bfloat16: within one bfloat16 spacing, 2^-8 x |reference| (the reference starts from the same bfloat16 inputs; the
kernel rounds once, at the end)."""
import pytest
import torch
from torch.nn import functional as F

import pyddpm.accel.fast_network as fast_module
from pyddpm import _C
from pyddpm.accel.fast_network import FastLogSigmoid

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


def test_other_inputs_and_a_build_without_the_kernel_take_log_of_sigmoid(monkeypatch):
    """Strided views and float64 go to the torch formula; so does everything when pyddpm._C is missing: the same
    function either way."""
    x = inputs(6)
    view = x.transpose(1, 2)
    assert not fast_module._elementwise_kernel_takes(view, "log_sigmoid")
    assert not fast_module._elementwise_kernel_takes(x.double(), "log_sigmoid")
    assert_within(FastLogSigmoid()(view), F.logsigmoid(view.double()), FLOAT32_ULPS, 1e-6)
    with_kernel = FastLogSigmoid()(x)
    monkeypatch.setattr(fast_module, "_C", None)
    assert not fast_module._elementwise_kernel_takes(x, "log_sigmoid")
    leaf = x.clone().requires_grad_(True)
    without = FastLogSigmoid()(leaf)
    without.sum().backward()
    # the torch formula: log(sigmoid(x)) rounds 1 - e^-x to 1 for x > 17 (absolute error up to 6e-8 there)
    assert_within(without.detach(), with_kernel.double(), 1e-6, 1e-6)
    assert_within(leaf.grad, torch.sigmoid(-x.double()), 1e-6, 1e-6)


def test_the_binding_refuses_what_the_integers_show():
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="dtype"):
        _C.log_sigmoid(dtype=1, x=x.data_ptr(), y=x.data_ptr(), n=4, num_threads=1)
    with pytest.raises(ValueError, match="n must be"):
        _C.log_sigmoid(dtype=0, x=x.data_ptr(), y=x.data_ptr(), n=-1, num_threads=1)
    with pytest.raises(ValueError, match="null"):
        _C.log_sigmoid_backward(dtype=0, x=x.data_ptr(), grad_y=0, grad_x=x.data_ptr(), n=4, num_threads=1)


def test_in_place_as_the_header_allows():
    x = inputs(7, (3, 1000))
    ref = F.logsigmoid(x.double())
    y = x.clone()
    _C.log_sigmoid(dtype=0, x=y.data_ptr(), y=y.data_ptr(), n=y.numel(), num_threads=2)
    assert_within(y, ref, FLOAT32_ULPS, 1e-37)
