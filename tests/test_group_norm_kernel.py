"""pyddpm._C's channels-last GroupNorm (+ SiLU), FastGroupNorm, against torch's F.group_norm and F.silu on fresh
random maps, computed in float64: float32 within 2e-6 x max(1, |reference|) (statistics in float64, then one
multiply-add and the SiLU's ~1-ulp exp: a few float32 roundings of values up to ~10; measured ~1e-6), bfloat16
within one bfloat16 spacing of the output, 2^-8 x max|reference| (the reference starts from the same bfloat16
inputs; the kernel rounds once, at the end)."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pyddpm import _C
from pyddpm.accel.fast_network import FastGroupNorm, native_bf16

SHAPES = [(32, 32, 28, 28, 32), (4, 96, 14, 14, 32), (3, 6, 5, 7, 3), (1, 128, 7, 7, 32), (2, 8, 1, 1, 4)]


def norm_and_input(n, c, h, w, groups, seed, mean=0.0):
    generator = torch.Generator().manual_seed(seed)
    norm = nn.GroupNorm(groups, c)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(c, generator=generator))
        norm.bias.copy_(torch.randn(c, generator=generator))
    x = torch.randn(n, c, h, w, generator=generator) * torch.rand(1, c, 1, 1, generator=generator).mul(4) + mean
    return norm.eval(), x.contiguous(memory_format=torch.channels_last)


def reference(norm, x, silu):
    """F.group_norm (and F.silu) in float64 on the same inputs: the function itself, free of float32's
    cancellation at large means (ATen's float32 GroupNorm is off by ~1e-4 at mean 300)."""
    y = F.group_norm(x.double().contiguous(), norm.num_groups, norm.weight.double(), norm.bias.double(), norm.eps)
    return (F.silu(y) if silu else y).float()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("mean", [0.0, 300.0])
def test_float32_kernel_equals_group_norm(shape, silu, mean):
    """Also with every channel's mean at 300 (100x its spread): the shifted sums lose nothing to cancellation."""
    norm, x = norm_and_input(*shape, seed=hash((shape, silu)) % 1000, mean=mean)
    fast = FastGroupNorm(norm, silu)
    assert fast._kernel_takes(x)
    with torch.no_grad():
        out, ref = fast(x), reference(norm, x, silu)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float32
    assert float((out - ref).abs().max()) <= 2e-6 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("silu", [False, True])
def test_bfloat16_kernel_equals_group_norm_to_bfloat16_rounding(shape, silu):
    norm, x = norm_and_input(*shape, seed=7)
    x = x.bfloat16()
    with torch.no_grad():
        out, ref = FastGroupNorm(norm, silu)(x), reference(norm, x, silu)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert float((out.float() - ref).abs().max()) <= 2.0 ** -8 * float(ref.abs().max())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("silu", [False, True])
def test_the_bfloat16_kernel_is_the_float32_kernel_rounded_by_torch(shape, silu):
    """On the same (bfloat16) values the two kernels compute the same floats, and the bfloat16 one rounds them as
    torch's .bfloat16() does: bit for bit, on AVX512-BF16 CPUs through the conversion instruction, elsewhere
    through pyddpm's own rounding (channel counts of 6 and 8 take the instruction's masked tail). With the SiLU,
    AVX512-BF16 CPUs compute it to 1e-4 relative (float_math.h's silu16, for bfloat16 results) instead of float32's
    few ulps, so a value within 1e-4 of a rounding boundary may round to the neighbour: at most one bfloat16
    spacing (2^-7 relative) apart, in under 1% of the values (measured 0.26-0.28%)."""
    norm, x = norm_and_input(*shape, seed=11)
    x = x.bfloat16()
    fast = FastGroupNorm(norm, silu)
    with torch.no_grad():
        out, rounded = fast(x), fast(x.float()).bfloat16()
    assert out.dtype == torch.bfloat16
    if not (silu and native_bf16("cpu")):
        assert torch.equal(out, rounded)
        return
    assert float((out != rounded).float().mean()) < 0.01
    assert bool(((out.float() - rounded.float()).abs() <= 2.0 ** -7 * rounded.float().abs()).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_addend_per_sample_and_channel_is_norm_of_the_sum(dtype):
    """norm(x, add) = norm(x + add[:, :, None, None]): the time embedding's projection of a DDPM U-Net block,
    folded into the statistics (tolerances as above; bf16: the sum rounded to bfloat16 in the reference)."""
    norm, x = norm_and_input(4, 64, 14, 14, 32, seed=11)
    add = torch.randn(4, 64, generator=torch.Generator().manual_seed(12)) * 5
    x = x.to(dtype)
    with torch.no_grad():
        out = FastGroupNorm(norm, silu=True)(x, add)
        summed = (x.double() + add.double()[:, :, None, None]).to(dtype)
        ref = reference(norm, summed, silu=True)
    tolerance = 2e-6 * max(1.0, float(ref.abs().max())) if dtype == torch.float32 else 2.0 ** -7 * float(
        ref.abs().max())
    assert float((out.float() - ref).abs().max()) <= tolerance


def test_silu_is_exact_to_float_rounding_from_minus_300_to_300():
    z = torch.linspace(-300, 300, 600_001)
    x = torch.cat([z, -z]).reshape(1, 2, -1, 1).contiguous(memory_format=torch.channels_last)
    # with a per-channel (mean, std) of (0, 173.2) both channels are normalized to z / 173.2; undo it with gamma
    norm = nn.GroupNorm(2, 2, affine=True, eps=0.0)
    with torch.no_grad():
        std = x.float().reshape(2, -1).std(dim=1, correction=0)
        norm.weight.copy_(std)
        norm.bias.zero_()
        out, ref = FastGroupNorm(norm, silu=True)(x), reference(norm, x, silu=True)
    assert torch.isfinite(out).all()
    assert float((out - ref).abs().max()) <= 2e-6 * 300


def test_other_inputs_go_to_torch():
    """NCHW maps, float64, and inputs that need gradients take F.group_norm (and F.silu) themselves."""
    norm, x = norm_and_input(2, 8, 5, 5, 4, seed=3)
    fast = FastGroupNorm(norm, silu=True)
    nchw = x.contiguous()
    grad = x.clone().requires_grad_(True)
    for given in (nchw, x.double()):
        assert not fast._kernel_takes(given)
        with torch.no_grad():
            assert torch.equal(fast(given), F.silu(F.group_norm(given, 4, fast.weight.to(given.dtype),
                                                                fast.bias.to(given.dtype), norm.eps)))
    assert not fast._kernel_takes(grad)
    fast(grad).sum().backward()
    assert grad.grad is not None and torch.isfinite(grad.grad).all()


def test_the_binding_refuses_what_the_integers_show():
    x = torch.zeros(1, 6, 2, 2).contiguous(memory_format=torch.channels_last)
    common = dict(x=x.data_ptr(), add=0, y=x.data_ptr(), gamma=0, beta=0, batch=1, hw=4, eps=1e-5, silu=False,
                  mean=0, rstd=0, num_threads=1)
    with pytest.raises(ValueError, match="dtype"):
        _C.group_norm_nhwc(dtype=1, channels=6, groups=3, **common)
    with pytest.raises(ValueError, match="multiple of groups"):
        _C.group_norm_nhwc(dtype=0, channels=6, groups=4, **common)
    with pytest.raises(ValueError, match="null"):
        _C.group_norm_nhwc(**{**common, "x": 0}, dtype=0, channels=6, groups=3)
    with pytest.raises(ValueError, match="both mean and rstd"):
        _C.group_norm_nhwc(**{**common, "mean": x.data_ptr()}, dtype=0, channels=6, groups=3)
    with pytest.raises(ValueError, match="null"):
        _C.group_norm_backward_nhwc(dtype=0, x=x.data_ptr(), grad_y=x.data_ptr(), grad_x=x.data_ptr(), mean=0,
                                    rstd=0, gamma=0, beta=0, batch=1, hw=4, channels=6, groups=3, silu=True,
                                    grad_gamma=0, grad_beta=0, num_threads=1)


@pytest.mark.parametrize("shape", SHAPES[:4])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trainable_group_norm_has_the_float64_gradients(shape, silu, dtype):
    """TrainableGroupNorm's kernels both ways against F.group_norm (and F.silu) in float64 on the same inputs:
    float32 gradients within 2e-6 of the largest (sums of ~10^4 products in float blocks, then float64; measured
    ~3e-7), bfloat16 input gradients within 2^-7 of the largest (one bfloat16 rounding of each, ~2^-9, and of the
    saved input; measured 0.2%), weight and bias gradients (float32 sums) within 1e-5."""
    from pyddpm.accel.fast_network import TrainableGroupNorm

    norm, x = norm_and_input(*shape, seed=21, mean=3.0)
    x = x.to(dtype).requires_grad_(True)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(22)).to(dtype)
    TrainableGroupNorm(norm, silu)(x).backward(grad)
    ours = x.grad.double(), norm.weight.grad.double(), norm.bias.grad.double()
    x64 = x.detach().double().requires_grad_(True)
    w64, b64 = (p.detach().double().requires_grad_(True) for p in (norm.weight, norm.bias))
    y = F.group_norm(x64, norm.num_groups, w64, b64, norm.eps)
    (F.silu(y) if silu else y).backward(grad.double())
    for mine, exact, tolerance in zip(ours, (x64.grad, w64.grad, b64.grad),
                                      (2e-6 if dtype == torch.float32 else 2.0 ** -7, 1e-5, 1e-5)):
        assert float((mine - exact).abs().max()) <= tolerance * float(exact.abs().max())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("silu", [False, True])
def test_the_bfloat16_backward_is_the_float32_backward_rounded_by_torch(shape, silu):
    """As the forward: on the same (bfloat16) values of x and dL/dy the two backwards compute the same floats, and
    the bfloat16 one rounds dL/dx as torch's .bfloat16() does, bit for bit (the weight and bias gradients are
    float32 sums either way)."""
    from pyddpm.accel.fast_network import TrainableGroupNorm

    norm, x = norm_and_input(*shape, seed=23, mean=1.0)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(24)).bfloat16()
    grads = {}
    for dtype in (torch.bfloat16, torch.float32):
        norm.zero_grad()
        inputs = x.bfloat16().to(dtype).requires_grad_(True)
        TrainableGroupNorm(norm, silu)(inputs).backward(grad.to(dtype))
        grads[dtype] = inputs.grad, norm.weight.grad.clone(), norm.bias.grad.clone()
    (dx16, dw16, db16), (dx32, dw32, db32) = grads[torch.bfloat16], grads[torch.float32]
    assert dx16.dtype == torch.bfloat16 and torch.equal(dx16, dx32.bfloat16())
    assert torch.equal(dw16, dw32) and torch.equal(db16, db32)
