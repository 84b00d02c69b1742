"""pyddpm.philox (the torch reference of the noise generator) against known answers, float64 math and
the kernel's generator in pyddpm._C, which must agree to the bit (csrc/philox.h, same spec)."""
import math
import random

import pytest
import torch

from pyddpm import ops, philox

# Random123's known-answer vectors for philox4x32_10: (counter, key) -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# The first 8 normals of sample `offset` at (seed, step): pins the whole rule (key split, counter
# layout, lanes, transform) for any re-implementation (e.g. the numpy sampler in export/).
GOLDEN = {
    (42, 0, 0): ["-0x1.f0bcb4p-1", "0x1.8d59d8p-3", "-0x1.3c519ap+0", "0x1.ec867cp+0",
                 "-0x1.2bc028p-4", "0x1.1cf3fcp-3", "-0x1.1b4e64p+0", "0x1.4e8614p-2"],
    (2**40 + 5, 7, 3): ["-0x1.73c3fp-1", "0x1.83e4eap+0", "-0x1.c3584cp+0", "0x1.5b785cp-1",
                        "-0x1.68985ap+0", "-0x1.e54af8p+0", "0x1.821fc8p-1", "0x1.43e0aap-1"],
}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers_torch_and_kernel(counter, key, expected):
    got = tuple(int(w) for w in philox.philox4x32_10(*counter, *key))
    assert got == expected
    assert tuple(ops._C.philox4x32_10(*counter, *key)) == expected


def test_mulhilo_matches_exact_integer_product():
    rng = random.Random(0)
    words = [0, 1, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x80000000] + [rng.getrandbits(32) for _ in range(5000)]
    c = torch.tensor(words, dtype=torch.int64)
    for m in (philox.PHILOX_M0, philox.PHILOX_M1, 0xFFFFFFFF):
        hi, lo = philox._mulhilo(m, c)
        assert hi.tolist() == [(m * w) >> 32 for w in words]
        assert lo.tolist() == [(m * w) & 0xFFFFFFFF for w in words]


def test_log_uniform_accuracy():
    # Every 7th of the 2**24 inputs plus both ends; the spec promises < 1 ulp (exhaustively 0.86 ulp).
    m = torch.cat([torch.arange(1, 2**24 + 1, 7), torch.tensor([1, 2, 2**23, 2**24 - 1, 2**24])])
    got = philox.log_uniform((m - 1) << 8).double()
    exact = torch.log(m.double() * 2.0**-24)
    ulp = torch.finfo(torch.float32).eps * torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(1e-30))))
    err = ((got - exact).abs() / ulp)[exact != 0]
    assert err.max() < 1.0
    assert got[-1] == 0.0  # u1 = 1 -> ln u1 = 0 exactly, so rho = 0


def test_sin_cos_accuracy():
    k = torch.cat([torch.arange(0, 2**24, 5), torch.tensor([2**21 - 1, 2**21, 2**22, 3 * 2**22, 2**24 - 1])])
    n_cos, n_sin = philox.normal_pair(torch.full_like(k, 0x7FFFFF00), k << 8)
    rho = math.sqrt(-2 * math.log((0x7FFFFF + 1) * 2.0**-24))
    angle = 2 * math.pi * k.double() * 2.0**-24
    # absolute error of cos/sin < 9e-8 (exhaustive), times rho ~ 1.18, plus the final rounding
    assert (n_cos.double() / rho - torch.cos(angle)).abs().max() < 2e-7
    assert (n_sin.double() / rho - torch.sin(angle)).abs().max() < 2e-7


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_golden_values(key):
    seed, step, offset = key
    expected = torch.tensor([float.fromhex(h) for h in GOLDEN[key]], dtype=torch.float32)
    assert torch.equal(bits(philox.philox_normal((1, 8), seed, step, offset)[0]), bits(expected))
    assert torch.equal(bits(ops.normal_noise((1, 8), seed=seed, step=step, sample_offset=offset)[0]), bits(expected))


def test_counter_layout_by_hand():
    # element e of sample i: lane e % 4 of philox((e // 4, i lo, i hi, step), (seed lo, seed hi))
    seed, step, offset = 0x1234_5678_9ABC_DEF0 & (2**63 - 1), 99, 2**32 - 2
    z = philox.philox_normal((4, 3, 3), seed, step, offset).flatten(1)
    for i in range(4):
        gi = offset + i
        for e in range(9):
            r = philox.philox4x32_10(e // 4, gi & 0xFFFFFFFF, gi >> 32, step, seed & 0xFFFFFFFF, seed >> 32)
            pair = philox.normal_pair(r[0], r[1]) if e % 4 < 2 else philox.normal_pair(r[2], r[3])
            assert pair[e % 2].item() == z[i, e].item()


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (7, 1023), (1, 4097), (3000, 2), (300, 9), (70, 40)])
@pytest.mark.parametrize("seed,step,offset", [(0, 0, 0), (123456789012345, 17, 5), (2**63 - 1, 2**32 - 1, 2**32 - 100)])
def test_kernel_noise_bit_identical_to_torch(shape, seed, step, offset):
    # Covers the kernel's per-sample blocks (>= 256 elements), its batched small-sample blocks
    # (offset crossing 2**32 exercises the carry into counter word 2) and partial last groups.
    fused = ops.normal_noise(shape, seed=seed, step=step, sample_offset=offset)
    assert torch.equal(bits(fused), bits(philox.philox_normal(shape, seed, step, offset)))


def test_kernel_noise_bit_identical_to_torch_large():
    shape, seed = (2, 2**20 + 5), 2**62 + 12345
    fused = ops.normal_noise(shape, seed=seed, step=1000)
    assert torch.equal(bits(fused), bits(philox.philox_normal(shape, seed, 1000)))


@pytest.mark.parametrize("kwargs,error", [
    (dict(seed=-1), "seed"), (dict(seed=2**63), "seed"), (dict(seed=1.0), "seed"), (dict(seed=True), "seed"),
    (dict(seed=1, step=-1), "step"), (dict(seed=1, step=2**32), "step"),
    (dict(seed=1, sample_offset=-3), "sample_offset"), (dict(seed=1, sample_offset=2**63 - 1), "sample_offset"),
])
def test_counter_argument_errors(kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        philox.philox_normal((2, 3), **kwargs)
