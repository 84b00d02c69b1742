"""CUDA: the build check (runs everywhere) and the CUDA kernels against the reference (skipped without a GPU).

Tolerances: float32 as in test_ops.py (<= 1e-6 of the terms; the kernel is built with --fmad=false and
torch's CUDA elementwise ops round once each, so bit-identical results are expected and checked).
float16/bfloat16: kernel and reference round the same float32 value once to the storage type, so at
most one unit in the last place of that type apart (2**-10 resp. 2**-7 relative; 2**-24 absolute for
float16 subnormals) if the float32 values ever differed by an ulp across a rounding boundary.
"""
import os
import shutil

import pytest
import torch

from pyddpm import ops, philox
from pyddpm.ops import StepCoefficients

COEF = StepCoefficients(a=1.0123, b=-0.0456, sigma=0.0789)
CLIP = StepCoefficients(a=0.9, b=0.05, sigma=0.1, clip=True, c=0.3, p=1.5, q=-0.8, lo=-1.0, hi=1.0)
ULP = {torch.float16: (2.0**-10, 2.0**-24), torch.bfloat16: (2.0**-7, 1e-38)}  # (relative, absolute)


def test_cuda_kernels_built_when_nvcc_is_available():
    """CI has nvcc: an extension built there without CUDA means the build silently lost the kernels."""
    if os.environ.get("PYDDPM_CUDA", "").strip().lower() in ("0", "off", "false", "no"):
        pytest.skip("PYDDPM_CUDA=0: a CPU-only build was requested")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    assert ops.extension_available(), "pyddpm._C is not built: pip install ."
    info = ops._C.build_info()
    if info["cuda_request"] == "OFF":
        pytest.skip("pyddpm._C was built with PYDDPM_CUDA=0")
    assert ops.cuda_built(), (f"nvcc is on PATH ({nvcc}) but pyddpm._C was built without CUDA ({info}); "
                              "rebuild with `PYDDPM_CUDA=1 pip install .` to see why")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rand(shape, seed, dtype=torch.float32, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn(shape, generator=g)).to(device=device, dtype=dtype)


def assert_matches(got, want, dtype):
    if dtype == torch.float32:
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    else:
        rtol, atol = ULP[dtype]
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1,), (3,), (1023,), (4097,), (2**20 + 5,), (8, 4096), (5000, 2), (3, 7, 5)])
def test_cuda_matches_reference(shape, dtype):
    x, e, z = rand(shape, 1, dtype), rand(shape, 2, dtype), rand(shape, 3, dtype)
    for coef in (COEF, CLIP):
        assert_matches(ops.reverse_step(x, e, coef, noise=z), ops.reverse_step_reference(x, e, coef, noise=z), dtype)
        # seeded: the reference draws z with pyddpm.philox on the CPU, so this is also CPU == CUDA noise
        want = ops.reverse_step_reference(x.cpu(), e.cpu(), coef, seed=11, step=42, sample_offset=3)
        got = ops.reverse_step(x, e, coef, seed=11, step=42, sample_offset=3)
        assert_matches(got.cpu(), want, dtype)


@cuda
@pytest.mark.parametrize("shape", [(64, 4096), (3000, 2), (7, 1023)])
def test_cuda_noise_equals_cpu_noise(shape):
    cpu = ops.normal_noise(shape, seed=2**40 + 1, step=7, sample_offset=5)
    for backend in ("fused", "torch"):
        got = ops.normal_noise(shape, seed=2**40 + 1, step=7, sample_offset=5, device="cuda", backend=backend)
        assert torch.equal(got.cpu().view(torch.int32), cpu.view(torch.int32)), backend
    half = ops.normal_noise(shape, seed=2**40 + 1, step=7, sample_offset=5, device="cuda", dtype=torch.float16)
    assert torch.equal(half.cpu(), cpu.half())


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_in_place_and_unaligned_views(dtype):
    for offset in (0, 1, 3):  # offset 0: 16-byte aligned vector path; others: scalar path
        base_x, base_e = rand(4 * 1028 + offset, 4, dtype), rand(4 * 1028 + offset, 5, dtype)
        x, e = base_x[offset:].view(4, 1028), base_e[offset:].view(4, 1028)
        for kwargs in (dict(noise=rand((4, 1028), 6, dtype)), dict(seed=9, step=1)):
            want = ops.reverse_step_reference(x, e, CLIP, **kwargs)
            y = x.clone()
            ops.reverse_step(y, e, CLIP, out=y, **kwargs)
            assert_matches(y, want, dtype)
            ops.reverse_step(x, e, CLIP, out=x, **kwargs)
            assert_matches(x, want, dtype)


@cuda
def test_cuda_runs_on_the_current_stream():
    x, e = rand((256, 784), 7), rand((256, 784), 8)
    want = ops.reverse_step(x, e, COEF, seed=1, step=2)
    out = torch.zeros_like(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # keeps `side` busy for tens of milliseconds
        ops.reverse_step(x, e, COEF, seed=1, step=2, out=out)
    early = out.clone()  # on the default stream, which does not wait for `side`
    side.synchronize()
    assert torch.equal(early, torch.zeros_like(x)), "the kernel did not wait for work queued on its stream"
    assert torch.equal(out, want)


@cuda
def test_cuda_graph_replay_equals_eager():
    x, e = rand((64, 784), 9), rand((64, 784), 10)
    eager = x.clone()
    for _ in range(3):
        ops.reverse_step(eager, e, COEF, seed=5, step=17, out=eager)
    static = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside capture
        ops.reverse_step(static.clone(), e, COEF, seed=5, step=17)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.reverse_step(static, e, COEF, seed=5, step=17, out=static)
    static.copy_(x)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static, eager)


@cuda
def test_cuda_torch_compile_and_opcheck():
    x, e = rand((4, 100), 11), rand((4, 100), 12)
    want = ops.reverse_step(x, e, CLIP, seed=3, step=4)
    compiled = torch.compile(lambda x, e: ops.reverse_step(x, e, CLIP, seed=3, step=4), fullgraph=True)
    assert torch.equal(compiled(x, e), want)
    coefs = ops._coefficient_list(CLIP)
    torch.library.opcheck(torch.ops.pyddpm.reverse_step.default, (x, e, None, coefs, True, 3, 4, 0))
    torch.library.opcheck(torch.ops.pyddpm.reverse_step_.default, (x.clone(), e, e, coefs, True, -1, 4, 0))
    torch.library.opcheck(torch.ops.pyddpm.normal_noise.default,
                          ([4, 5], 3, 1, 0, torch.device("cuda"), torch.bfloat16))


@cuda
def test_cuda_errors():
    x = rand((4, 6), 13)
    with pytest.raises(ValueError, match="eps_hat must be on the device"):
        ops.reverse_step(x, x.cpu(), COEF, seed=1)
    with pytest.raises(ValueError, match="x_t must be float32 or float16 or bfloat16"):
        ops.reverse_step(x.double(), x.double(), COEF, seed=1)


@cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_second_device():
    x, e = rand((8, 300), 14, device="cuda:1"), rand((8, 300), 15, device="cuda:1")
    with torch.cuda.device(0):
        got = ops.reverse_step(x, e, COEF, seed=1, step=1)
    assert got.device == x.device
    assert torch.equal(got.cpu(), ops.reverse_step_reference(x.cpu(), e.cpu(), COEF, seed=1, step=1))
    assert torch.equal(philox.philox_normal((8, 300), 1, 1, device="cuda:1").cpu(), philox.philox_normal((8, 300), 1, 1))
