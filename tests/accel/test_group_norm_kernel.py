"""The op pyddpm::group_norm_nhwc (pyddpm._C's channels-last GroupNorm (+ SiLU)) and FastGroupNorm on it, against
torch's F.group_norm and F.silu on fresh random maps, computed in float64: float32 within 2e-6 x max(1, |reference|)
(statistics in float64, then one multiply-add and the SiLU's ~1-ulp exp: a few float32 roundings of values up to ~10;
measured ~1e-6), bfloat16 within one bfloat16 spacing of the output, 2^-8 x max|reference| (the reference starts from
the same bfloat16 inputs; the kernel rounds once, at the end)."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pyddpm.accel import kernels, native_bf16
from pyddpm.accel.normalisation import FastGroupNorm

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
    """NCHW maps and float64 take F.group_norm (and F.silu) themselves."""
    norm, x = norm_and_input(2, 8, 5, 5, 4, seed=3)
    fast = FastGroupNorm(norm, silu=True)
    for given in (x.contiguous(), x.double()):
        with torch.no_grad():
            assert torch.equal(fast(given), F.silu(F.group_norm(given, 4, fast.weight.to(given.dtype),
                                                                fast.bias.to(given.dtype), norm.eps)))


def test_the_op_refuses_what_the_kernel_cannot_take_in_one_line():
    norm, x = norm_and_input(2, 8, 5, 5, 4, seed=4)
    w, b = norm.weight.detach(), norm.bias.detach()
    with pytest.raises(ValueError, match="group_norm_nhwc: x must be channels-last"):
        kernels.group_norm_nhwc(x.contiguous(), w, b, None, 4, 1e-5, False)
    with pytest.raises(ValueError, match="groups must divide the 8 channels"):
        kernels.group_norm_nhwc(x, w, b, None, 3, 1e-5, False)
    with pytest.raises(ValueError, match="add must be a contiguous float32 CPU tensor of shape"):
        kernels.group_norm_nhwc(x, w, b, torch.zeros(2, 7), 4, 1e-5, False)
    with pytest.raises(ValueError, match="weight must be"):
        kernels.group_norm_nhwc(x, w.double(), b, None, 4, 1e-5, False)


def test_opcheck():
    """The registered ops' schema, fake kernels and autograd agree with their real kernels."""
    for dtype in (torch.float32, torch.bfloat16):
        norm, x = norm_and_input(2, 8, 3, 5, 4, seed=5)
        x = x.to(dtype)
        w, b = (p.detach().clone().requires_grad_(True) for p in (norm.weight, norm.bias))
        torch.library.opcheck(torch.ops.pyddpm.group_norm_nhwc.default,
                              (x.clone().requires_grad_(True), w, b, None, 4, 1e-5, True))
        torch.library.opcheck(torch.ops.pyddpm.group_norm_nhwc.default,
                              (x, w.detach(), b.detach(), torch.randn(2, 8), 4, 1e-5, False))
        y, mean, rstd = kernels.group_norm_nhwc(x, w.detach(), b.detach(), None, 4, 1e-5, True)
        torch.library.opcheck(torch.ops.pyddpm.group_norm_nhwc_backward.default,
                              (torch.randn_like(y), x, w.detach(), b.detach(), mean, rstd, 4, True))


@pytest.mark.parametrize("shape", SHAPES[:4])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trainable_group_norm_has_the_float64_gradients(shape, silu, dtype):
    """FastGroupNorm's kernels both ways against F.group_norm (and F.silu) in float64 on the same inputs:
    float32 gradients within 2e-6 of the largest (sums of ~10^4 products in float blocks, then float64; measured
    ~3e-7), bfloat16 input gradients within 2^-7 of the largest (one bfloat16 rounding of each, ~2^-9, and of the
    saved input; measured 0.2%), weight and bias gradients (float32 sums) within 1e-5."""
    norm, x = norm_and_input(*shape, seed=21, mean=3.0)
    x = x.to(dtype).requires_grad_(True)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(22)).to(dtype)
    FastGroupNorm(norm, silu)(x).backward(grad)
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
    norm, x = norm_and_input(*shape, seed=23, mean=1.0)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(24)).bfloat16()
    grads = {}
    for dtype in (torch.bfloat16, torch.float32):
        norm.zero_grad()
        inputs = x.bfloat16().to(dtype).requires_grad_(True)
        FastGroupNorm(norm, silu)(inputs).backward(grad.to(dtype))
        grads[dtype] = inputs.grad, norm.weight.grad.clone(), norm.bias.grad.clone()
    (dx16, dw16, db16), (dx32, dw32, db32) = grads[torch.bfloat16], grads[torch.float32]
    assert dx16.dtype == torch.bfloat16 and torch.equal(dx16, dx32.bfloat16())
    assert torch.equal(dw16, dw32) and torch.equal(db16, db32)
