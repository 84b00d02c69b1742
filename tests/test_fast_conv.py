"""FastConv (pyddpm.accel.fast_network) and pyddpm._C's 3 x 3 convolution against the convolution computed in float64
on the same fresh random inputs. Both fast ways sum the same products as the convolution in another order, so
each output is judged against the sum of the absolute values of its terms, |x| * |w| + |b|: within 16 x 2^-24
of it (oneDNN's own float32 convolution measured 4 x 2^-24 here, the dense product and the kernel 1.5-4 x 2^-24;
the bound of any order of a float32 sum grows with the terms, and these sum up to 2,304). Inputs the fast ways
do not take run the convolution itself, bit for bit."""
import copy

import pytest
import torch
from torch import nn

from activation_range import TARGET, all_but_the_output_layer, push_preactivations
from pyddpm import _C
from pyddpm.accel.fast_network import FastConv, FastUpsampleConv, PackedConv, fast_network, native_bf16, onednn_available
from pyddpm.nets.unet import ExerciseUNet
from pyddpm.nets.unet_ddpm import DDPMUNet, UpsampleConv

TOLERANCE = 16 * 2.0 ** -24


def random_map(seed: int, shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * 3).contiguous(memory_format=torch.channels_last)


def fresh(conv: nn.Module, seed: int) -> nn.Module:
    """``conv`` with fresh random weights (and bias) of a trained network's size, channels-last, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return conv.to(memory_format=torch.channels_last).eval()


def assert_is_the_convolution(conv: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
    double = {name: p.detach().double() for name, p in conv.named_parameters()}
    functional = nn.functional.conv2d if type(conv) is nn.Conv2d else nn.functional.conv_transpose2d
    settings = ((conv.stride, conv.padding, conv.dilation, conv.groups) if type(conv) is nn.Conv2d
                else (conv.stride, conv.padding, conv.output_padding, conv.groups, conv.dilation))
    bias = double.get("bias")
    ref = functional(x.double(), double["weight"], bias, *settings)
    magnitude = functional(x.double().abs(), double["weight"].abs(), None if bias is None else bias.abs(), *settings)
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = (out.double() - ref).abs()
    worst = float((err / magnitude.clamp_min(1e-30)).max())
    assert bool((err <= TOLERANCE * magnitude + 1e-30).all()), f"max error / magnitude {worst:.3g}"


def plan_of(fast: FastConv, x: torch.Tensor):
    plan = fast._plans[tuple(x.shape[1:])]
    return None if plan is None else plan[0]


SMALL_MAP_CONVS = {
    "3x3 at 2x2 (the exercise U-Net's bottom)": (lambda: nn.Conv2d(256, 256, 3, padding=1), (8, 256, 2, 2)),
    "3x3 stride 2, no bias": (lambda: nn.Conv2d(24, 40, 3, stride=2, padding=1, bias=False), (5, 24, 3, 3)),
    "grouped 3x3 at 1x1": (lambda: nn.Conv2d(32, 64, 3, padding=1, groups=4), (3, 32, 1, 1)),
    "transposed 2x2 -> 4x4 (the exercise U-Net's)": (
        lambda: nn.ConvTranspose2d(256, 256, 3, stride=2, padding=1, output_padding=1), (8, 256, 2, 2)),
    "transposed 1x2 -> 2x3": (lambda: nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=(1, 0)),
                              (4, 16, 1, 2)),
}


@pytest.mark.parametrize("name", SMALL_MAP_CONVS)
def test_small_maps_are_one_dense_product_equal_to_the_convolution(name):
    make, shape = SMALL_MAP_CONVS[name]
    conv = fresh(make(), seed=1)
    fast = FastConv(conv)
    x = random_map(2, shape)
    with torch.no_grad():
        out = fast(x)
        again = fast(random_map(3, shape))
    assert plan_of(fast, x) == "dense"
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_is_the_convolution(conv, x, out)
    assert_is_the_convolution(conv, random_map(3, shape), again)  # the matrix made once serves the next input


@pytest.mark.parametrize("channels, height, width", [(32, 28, 28), (20, 5, 7), (3, 9, 16), (64, 12, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_a_conv_into_one_channel_runs_the_kernel_and_equals_the_convolution(channels, height, width, bias):
    conv = fresh(nn.Conv2d(channels, 1, 3, padding=1, bias=bias), seed=4)
    fast = FastConv(conv)
    x = random_map(5, (6, channels, height, width))
    with torch.no_grad():
        out = fast(x)
    assert plan_of(fast, x) == "kernel"
    assert_is_the_convolution(conv, x, out)


def test_the_kernels_result_does_not_depend_on_the_thread_count():
    x, weight, bias = random_map(6, (4, 40, 11, 13)), torch.randn(1, 3, 3, 40), torch.randn(1)
    outs = []
    for threads in (1, 2, 3):
        y = torch.empty(4, 1, 11, 13).contiguous(memory_format=torch.channels_last)
        _C.conv3x3_nhwc(x=x.data_ptr(), weight=weight.data_ptr(), bias=bias.data_ptr(), y=y.data_ptr(), batch=4,
                        height=11, width=13, channels=40, out_channels=1, num_threads=threads)
        outs.append(y)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_other_inputs_run_the_convolution_itself():
    conv = fresh(nn.Conv2d(16, 16, 3, padding=1), seed=7)
    fast = FastConv(conv)
    large = random_map(8, (2, 16, 32, 32))  # its dense matrix would be 256 MiB
    with torch.no_grad():
        assert torch.equal(fast(large), conv(large)) and plan_of(fast, large) is None
        nchw = large[:, :, :2, :2].contiguous()
        assert torch.equal(fast(nchw), conv(nchw))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(fast(large[:, :, :2, :2]), conv(large[:, :, :2, :2]))
    small = random_map(9, (2, 16, 2, 2)).requires_grad_(True)
    out = fast(small)  # with gradients: the convolution, and autograd through it
    assert torch.equal(out, conv(small)) and out.requires_grad
    assert not fast._plans or all(key != (16, 2, 2) for key in fast._plans)
    wide = fresh(nn.Conv2d(16, 2, 3, padding=1), seed=10)  # two output channels: oneDNN
    fast_wide = FastConv(wide)
    with torch.no_grad():
        assert torch.equal(fast_wide(large), wide(large)) and plan_of(fast_wide, large) is None


def test_the_kernels_binding_refuses_bad_counts_and_null_pointers():
    x, weight, y = torch.randn(1, 2, 2, 4), torch.randn(1, 3, 3, 4), torch.empty(1, 2, 2, 1)
    good = dict(x=x.data_ptr(), weight=weight.data_ptr(), bias=0, y=y.data_ptr(), batch=1, height=2, width=2,
                channels=4, out_channels=1, num_threads=1)
    _C.conv3x3_nhwc(**good)
    for change in ({"batch": -1}, {"channels": 0}, {"out_channels": 0}, {"x": 0}, {"weight": 0}, {"y": 0}):
        with pytest.raises(ValueError, match="conv3x3_nhwc"):
            _C.conv3x3_nhwc(**{**good, **change})


def test_the_exercise_unets_fast_copy_at_trained_activation_ranges_takes_both_ways_and_equals_eager():
    """The exercise's own U-Net size (2 x 2 maps at the bottom, a last conv into one channel), its layers scaled so
    that every pre-activation reaches a trained network's range."""
    torch.manual_seed(11)
    network = ExerciseUNet()
    x, t = torch.randn(4, 784), torch.rand(4, 1)
    layers = all_but_the_output_layer(nn.Conv2d, nn.ConvTranspose2d)(network)
    assert push_preactivations(network, layers, x, t) >= 0.99 * TARGET
    fast = fast_network(network, "cpu")
    t = t[:1].expand_as(t).clone()
    with torch.no_grad():
        eager, out = network(x, t), fast(x, t)
    plans = [plan[0] for m in fast.modules() if type(m) is FastConv for plan in m._plans.values() if plan]
    assert sorted(plans) == ["dense", "dense", "kernel"]
    assert float((out - eager).abs().max()) <= 1e-5 * max(1.0, float(eager.abs().max()))


def upsampled_reference(conv: nn.Module, x: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-neighbour upsampling to ``size`` and ``conv`` in float64, and the same of |x|, |w|, |b| (each output's
    sum of the absolute values of its terms)."""
    up = nn.functional.interpolate(x.double(), size=size, mode="nearest")
    w, b = conv.weight.detach().double(), conv.bias.detach().double()
    return (nn.functional.conv2d(up, w, b, padding=1), nn.functional.conv2d(up.abs(), w.abs(), b.abs(), padding=1))


@pytest.mark.parametrize("channels, height, width", [(64, 14, 14), (16, 7, 7), (8, 5, 9)])
def test_an_upsample_conv_is_one_transposed_convolution_equal_to_upsampling_and_the_convolution(
        channels, height, width, monkeypatch):
    """Doubling the map, the fast copy never upsamples (nn.functional.interpolate is not called) and its one
    transposed convolution is the upsampling and the convolution within TOLERANCE of each output's magnitude in
    float32 (its weights are the 3x3 weights' sums rounded once, each product's error stays below 2^-23 of its
    term's). In bfloat16 (under autocast, as the bf16 copy runs) x, the summed weights and the output are each
    rounded to 8 significant bits (2^-9 relative at most), so each output is within 4 x 2^-9 of its magnitude,
    and, on a CPU with bfloat16 arithmetic (the only ones pyddpm runs bf16 on), its largest error is within 1.25x
    autocast's own on the network's UpsampleConv (measured 0.97-1.0x; elsewhere torch emulates the two
    convolutions differently: 2.4x on an AVX2-only AMD EPYC, still inside the 4 x 2^-9 bound)."""
    conv = fresh(UpsampleConv(channels), seed=11)
    x = random_map(12, (6, channels, height, width))
    size = (2 * height, 2 * width)
    ref, magnitude = upsampled_reference(conv, x, size)
    with torch.no_grad():
        autocast_error = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_error = float((conv(x, size).double() - ref).abs().max())
        monkeypatch.setattr(nn.functional, "interpolate", lambda *args, **kwargs: pytest.fail("upsampled"))
        out = FastUpsampleConv(conv)(x, size)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = FastUpsampleConv(conv, torch.bfloat16)(x, size)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    err = (out.double() - ref).abs()
    assert bool((err <= TOLERANCE * magnitude + 1e-30).all()), float((err / magnitude).max())
    assert out_bf16.dtype == torch.bfloat16 and out_bf16.shape == ref.shape
    err_bf16 = (out_bf16.double() - ref).abs()
    assert bool((err_bf16 <= 4 * 2.0 ** -9 * magnitude).all()), float((err_bf16 / magnitude).max())
    if native_bf16("cpu"):
        assert float(err_bf16.max()) <= 1.25 * autocast_error, (float(err_bf16.max()), autocast_error)


def test_an_upsample_conv_to_any_other_size_or_with_gradients_is_the_network_s_own():
    conv = fresh(UpsampleConv(8), seed=13)
    fast = FastUpsampleConv(conv)
    x = random_map(14, (3, 8, 4, 4))
    with torch.no_grad():
        assert torch.equal(fast(x, (7, 7)), conv(x, (7, 7)))  # 4 -> 7 (an odd map's way back up)
    x.requires_grad_(True)
    out = fast(x, (8, 8))
    assert out.requires_grad and torch.equal(out, conv(x, (8, 8)))


def test_the_ddpm_unets_fast_copies_upsample_by_transposed_convolutions():
    network = DDPMUNet(channels=(8, 16, 16), num_res_blocks=1).eval()
    for precision in ("fp32", "bf16") if native_bf16("cpu") else ("fp32",):
        fast = fast_network(network, "cpu", precision)
        ups = [m for m in fast.modules() if type(m) is FastUpsampleConv]
        assert len(ups) == len(network.upsample) == 2
        assert all(m.weight.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32) for m in ups)
    assert all(type(m) is UpsampleConv for m in network.upsample)  # the network itself is untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_packed_conv_gives_the_convolutions_bits_for_each_input_shape(dtype):
    """PackedConv reorders the weight into oneDNN's layout once per input shape; oneDNN then runs the same
    primitive as F.conv2d, so the result is the convolution's, bit for bit (a second batch size included). Where
    oneDNN has no bfloat16 (a CPU without AVX-512) a bfloat16 PackedConv runs the convolution itself."""
    packs = onednn_available(dtype)
    for seed, (conv, shapes) in enumerate([
            (nn.Conv2d(64, 64, 3, padding=1), [(32, 64, 7, 7), (3, 64, 7, 7)]),
            (nn.Conv2d(32, 64, 3, stride=2, padding=1), [(5, 32, 28, 28)]),
            (nn.Conv2d(96, 32, 1), [(4, 96, 14, 14), (1, 96, 14, 14)]),
            (nn.Conv2d(16, 8, 3, padding=1, bias=False), [(2, 16, 9, 5)])]):
        conv = fresh(conv, seed=20 + seed).to(dtype)
        packed = PackedConv(conv)
        with torch.no_grad():
            for i, shape in enumerate(shapes):
                x = random_map(30 + 10 * seed + i, shape).to(dtype)
                assert packed.takes(x) == packs
                out = packed(x)
                assert out.dtype == dtype and torch.equal(out, conv(x)), (shape, dtype)
        assert len(packed._packed) == (len(shapes) if packs else 0)
    packed.MAX_SHAPES = 1  # past it, other shapes take the weight as it is: the same bits
    x = random_map(60, (2, 16, 4, 4)).to(dtype)
    with torch.no_grad():
        assert torch.equal(packed(x), conv(x)) and len(packed._packed) == (1 if packs else 0)


def test_a_packed_conv_runs_the_convolution_for_other_inputs_and_copies_without_its_packed_weights():
    conv = fresh(nn.Conv2d(8, 8, 3, padding=1), seed=40)
    packed = PackedConv(conv)
    x = random_map(41, (2, 8, 6, 6))
    with torch.no_grad():
        packed(x)
        nchw = x.contiguous()
        assert not packed.takes(nchw) and torch.equal(packed(nchw), conv(nchw))
        assert not packed.takes(x.bfloat16())  # another dtype than the weight's
        with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 under autocast: autocast's bfloat16 conv
            assert not packed.takes(x) and torch.equal(packed(x), conv(x))
    out = packed(x.requires_grad_(True))
    assert out.requires_grad and torch.equal(out, conv(x))
    twin = copy.deepcopy(packed)  # oneDNN's opaque tensors cannot be copied: the copy packs its own
    assert packed._packed and not twin._packed
    with torch.no_grad():
        assert torch.equal(twin(x), conv(x))


def test_the_fast_copies_pack_their_convolutions_and_the_residual_sum_keeps_the_eager_result():
    network = DDPMUNet(channels=(8, 16, 16), num_res_blocks=1).eval()
    x, t = torch.randn(4, 784), torch.rand(4, 1)
    for precision in ("fp32", "bf16") if native_bf16("cpu") else ("fp32",):
        fast = fast_network(network, "cpu", precision)
        convs = [m for m in fast.modules() if isinstance(m, PackedConv)]
        blocks = [m for m in fast.modules() if type(m).__name__ == "FastResidualBlock"]
        assert blocks and all(type(b.conv1) is PackedConv and type(b.conv2) is PackedConv for b in blocks)
        assert len(convs) >= 3 * len(blocks)
        with torch.no_grad():
            out = fast(x, t)
        assert all(m._packed for m in convs if type(m) is PackedConv and m.conv.in_channels > 1)
        if precision == "fp32":
            with torch.no_grad():
                eager = network(x, t)
            assert float((out - eager).abs().max()) <= 1e-5 * max(1.0, float(eager.abs().max()))
