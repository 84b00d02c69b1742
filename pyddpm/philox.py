"""Counter-based N(0, 1) noise in plain torch: the reference of the fused kernel's generator.

Every random number pyddpm draws with a seed (x_T and the z of each reverse step) follows this rule,
implemented identically in ``csrc/philox.h`` (CPU and CUDA kernels) and here; a numpy port must follow
it operation by operation. All float steps are single IEEE-754 binary32 operations (+, -, *, sqrt,
round to nearest even) in the order given, with no fused multiply-add, so every implementation
produces the same bits. Integer steps are on unsigned 32-bit words (``u32``, arithmetic mod 2**32).

1. Counter and key. Seed ``s`` (0 <= s < 2**63), global sample index ``i`` (0 <= i < 2**63 here),
   step ``t`` (0 = x_T; 1..T = the z of the reverse step at t; t < 2**32), element ``e`` of the sample
   in row-major order (dim 0 of a tensor is the batch; e < 2**34)::

       key     = (k0, k1)         = (s & 0xffffffff, s >> 32)
       counter = (c0, c1, c2, c3) = (e // 4, i & 0xffffffff, i >> 32, t)

   Element e is lane ``e % 4`` of the four normals of ``philox4x32_10(counter, key)``. Sample i's
   noise depends only on (s, i, t): not on the batch size, the device or how samples are split.

2. Philox4x32-10 (Salmon et al. 2011; as in Random123 and cuRAND)::

       M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
       10 rounds, bumping the key between rounds (9 bumps):
           hi0, lo0 = (M0 * c0) >> 32, (M0 * c0) & 0xffffffff      # exact 64-bit product
           hi1, lo1 = (M1 * c2) >> 32, (M1 * c2) & 0xffffffff
           c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
           k0, k1 = (k0 + W0) mod 2**32, (k1 + W1) mod 2**32       # not after round 10
       (r0, r1, r2, r3) = (c0, c1, c2, c3)

   Known answers: counter 0, key 0 -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8; counter 243f6a88 85a308d3
   13198a2e 03707344, key a4093822 299f31d0 -> d16cfe09 94fdcceb 5001e420 24126ea1.

3. Box-Muller: lanes (0, 1) = normal_pair(r0, r1), lanes (2, 3) = normal_pair(r2, r3), with
   ``normal_pair(ra, rb) = (rho * cos, rho * sin)``, rho = sqrt(-2 ln u1),
   u1 = ((ra >> 8) + 1) * 2**-24 in (0, 1], angle 2 pi (rb >> 8) * 2**-24, computed as::

       # ln u1: exact reduction u1 = f * 2**e with f in [sqrt(2)/2, sqrt(2)], then a polynomial
       u1   = f32((ra >> 8) + 1) * 2**-24                       # exact
       bits = bit pattern of u1 as u32
       big  = (bits & 0x7fffff) > 0x3504f3
       f    = f32 with bits (bits & 0x7fffff) | (0x3f000000 if big else 0x3f800000)
       e    = f32((bits >> 23) - (126 if big else 127))
       x = f - 1;  z = x * x
       p = L7;  p = p * x + L6;  p = p * x + L5;  ...;  p = p * x + L0
       y = (x * z) * p;  y = y + e * LN2_LO;  y = y - 0.5 * z
       l = x + y;  l = l + e * LN2_HI                             # ln u1, < 1 ulp
       rho = sqrt(-2 * l)

       # cos and sin: exact reduction to the nearest quarter turn, then polynomials in x
       k = rb >> 8;  q = (k + 2**21) >> 22;  j = k - q * 2**22    # j in [-2**21, 2**21)
       x = f32(j) * 2**-22;  z = x * x                            # angle = pi/2 * (q + x)
       s = S3;  s = s * z + S2;  s = s * z + S1;  s = s * z + S0;  s = s * x       # sin(pi x / 2)
       c = C3;  c = c * z + C2;  c = c * z + C1;  c = c * z + C0;  c = c * z + 1   # cos(pi x / 2)
       (cos, sin) = (c, s), (-s, c), (-c, -s), (s, -c) for q % 4 = 0, 1, 2, 3   # '-' flips the sign

   Constants (binary32, exact as Python ``float.fromhex``): see ``LN2_HI``, ``LN2_LO``, ``LOG_POLY``
   (L0..L7), ``SIN_POLY`` (S0..S3) and ``COS_POLY`` (C0..C3) below. Checked exhaustively over all
   2**24 inputs: ln u1 within 0.86 ulp, rho relative error < 1e-7, cos/sin absolute error < 9e-8.

Here the u32 words live in int64 tensors; the 32 x 32-bit products are split into 16-bit halves so no
intermediate reaches 2**63. The functions are written so that ``torch.jit.script`` compiles them: the exported
TorchScript sampler (``pyddpm.export.noise``) runs this same code.
"""
from __future__ import annotations

import operator
from typing import List, Tuple

import torch

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
LN2_HI = float.fromhex("0x1.63p-1")
LN2_LO = float.fromhex("-0x1.bd0106p-13")
LOG_POLY = tuple(float.fromhex(h) for h in (
    "0x1.555554p-2", "-0x1.000226p-2", "0x1.99a008p-3", "-0x1.547244p-3",
    "0x1.22da1cp-3", "-0x1.0d8544p-3", "0x1.055b72p-3", "-0x1.38b582p-4"))
SIN_POLY = tuple(float.fromhex(h) for h in ("0x1.921fb6p+0", "-0x1.4abbbap-1", "0x1.465ec6p-4", "-0x1.2d9bb6p-8"))
COS_POLY = tuple(float.fromhex(h) for h in ("-0x1.3bd3ccp+0", "0x1.03c1dep-2", "-0x1.55c5ep-6", "0x1.d9d57ep-11"))
_SQRT2_BITS = float.fromhex("0x1.6a09e6p+0")  # binary32 0x3fb504f3, the f > sqrt(2)/2 split of ln u1
# TorchScript reads no globals: the functions below take the constants as default arguments, polynomials in
# Horner order (highest coefficient first)
_LOG_DESC, _SIN_DESC, _COS_DESC = (tuple(reversed(p)) for p in (LOG_POLY, SIN_POLY, COS_POLY))
_F8 = Tuple[float, float, float, float, float, float, float, float]
_F4 = Tuple[float, float, float, float]

_MASK32 = 0xFFFFFFFF
_CHUNK_GROUPS = 1 << 19  # Philox calls evaluated at once (int64 temporaries of 4 MB each)


def check_counter_args(seed, step, sample_offset, batch: int) -> tuple[int, int, int]:
    """(seed, step, sample_offset) as ints after checking the ranges of the counter rule; ValueError names the argument."""
    values = []
    for name, value in (("seed", seed), ("step", step), ("sample_offset", sample_offset)):
        if isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got bool")
        try:
            values.append(operator.index(value))
        except TypeError:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    seed, step, sample_offset = values
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    if not 0 <= step < 2**32:
        raise ValueError(f"step must be in [0, 2**32), got {step}")
    if not 0 <= sample_offset <= 2**63 - batch:
        raise ValueError(f"sample_offset must be >= 0 with sample_offset + batch <= 2**63, got {sample_offset}")
    return seed, step, sample_offset


def _mulhilo(m: int, c: torch.Tensor, mask: int = _MASK32) -> Tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of m * c for a u32 constant m and u32 words c (int64), without overflow."""
    m_hi, m_lo = m >> 16, m & 0xFFFF
    c_hi, c_lo = c >> 16, c & 0xFFFF
    mid = c_hi * m_lo + c_lo * m_hi                     # < 2**33
    low = c_lo * m_lo + ((mid & 0xFFFF) << 16)          # < 2**33
    return c_hi * m_hi + (mid >> 16) + (low >> 32), low & mask


def _philox_rounds(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int,
                   m0: int = PHILOX_M0, m1: int = PHILOX_M1, w0: int = PHILOX_W0, w1: int = PHILOX_W1,
                   mask: int = _MASK32) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    for r in range(10):
        if r > 0:
            k0, k1 = (k0 + w0) & mask, (k1 + w1) & mask
        hi0, lo0 = _mulhilo(m0, c0)
        hi1, lo1 = _mulhilo(m1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of counters (c0, c1, c2, c3) (int64 tensors of u32 words, broadcast) and key (k0, k1)."""
    c0, c1, c2, c3 = torch.broadcast_tensors(*(torch.as_tensor(c, dtype=torch.int64) for c in (c0, c1, c2, c3)))
    return _philox_rounds(c0, c1, c2, c3, k0, k1)


def log_uniform(ra: torch.Tensor, log_desc: _F8 = _LOG_DESC, ln2_hi: float = LN2_HI, ln2_lo: float = LN2_LO,
                sqrt2_bits: float = _SQRT2_BITS) -> torch.Tensor:
    """ln u1 (float32) for u1 = ((ra >> 8) + 1) * 2**-24, by the reduction and polynomial of the spec.

    The spec's bit manipulation is done without reinterpreting bits (so TorchScript compiles it): u1 = m 2**(k-1)
    with m in [1, 2) (frexp is exact); big <=> m's mantissa field > 0x3504f3 <=> m > binary32 0x3fb504f3."""
    u1 = ((ra >> 8) + 1).to(torch.float32) * 2.0**-24
    mantissa, exponent = torch.frexp(u1)
    m = mantissa * 2.0
    big = m > sqrt2_bits
    f = torch.where(big, mantissa, m)
    e = (exponent - 1 + big.to(torch.int32)).to(torch.float32)
    x = f - 1.0
    z = x * x
    p = torch.full_like(x, log_desc[0])
    for c in log_desc[1:]:
        p = p * x + c
    y = (x * z) * p
    y = y + e * ln2_lo
    y = y - 0.5 * z
    return (x + y) + e * ln2_hi


def normal_pair(ra: torch.Tensor, rb: torch.Tensor, sin_desc: _F4 = _SIN_DESC,
                cos_desc: _F4 = _COS_DESC) -> Tuple[torch.Tensor, torch.Tensor]:
    """Box-Muller (rho cos, rho sin) in float32 from two u32 words, exactly as csrc/philox.h computes it."""
    # torch's float32 CPU sqrt is not always correctly rounded; the float64 root rounded to float32 is.
    rho = torch.sqrt((-2.0 * log_uniform(ra)).to(torch.float64)).to(torch.float32)
    k = rb >> 8
    q = (k + 0x200000) >> 22
    x = (k - (q << 22)).to(torch.float32) * 2.0**-22
    z = x * x
    s = torch.full_like(z, sin_desc[0])
    for c in sin_desc[1:]:
        s = s * z + c
    s = s * x
    c = torch.full_like(z, cos_desc[0])
    for coefficient in cos_desc[1:]:
        c = c * z + coefficient
    c = c * z + 1.0
    odd = (q & 1).to(torch.bool)
    cos_mag, sin_mag = torch.where(odd, s, c), torch.where(odd, c, s)
    cos = torch.where(((q ^ (q >> 1)) & 1).to(torch.bool), -cos_mag, cos_mag)
    sin = torch.where((q & 2).to(torch.bool), -sin_mag, sin_mag)
    return rho * cos, rho * sin


def normal_unchecked(shape: List[int], seed: int, step: int, sample_offset: int, device: torch.device,
                     chunk_groups: int = _CHUNK_GROUPS, mask: int = _MASK32) -> torch.Tensor:
    """``philox_normal`` without the argument checks, in the subset of Python that TorchScript compiles (the
    exported sampler scripts it)."""
    batch = shape[0]
    n = 1
    for size in shape[1:]:
        n *= size
    groups = (n + 3) // 4
    total = batch * groups  # Philox calls, flat: h = i * groups + g
    out = torch.empty([total, 4], dtype=torch.float32, device=device)
    for h0 in range(0, total, chunk_groups):
        h = torch.arange(h0, min(total, h0 + chunk_groups), dtype=torch.int64, device=device)
        i = sample_offset + torch.div(h, groups, rounding_mode="floor")
        r0, r1, r2, r3 = _philox_rounds(h % groups, i & mask, i >> 32, torch.full_like(h, step), seed & mask,
                                        seed >> 32)
        n0, n1 = normal_pair(r0, r1)
        n2, n3 = normal_pair(r2, r3)
        out[h0:h0 + h.numel()] = torch.stack([n0, n1, n2, n3], -1)
    return out.view(batch, 4 * groups)[:, :n].reshape(shape)


def philox_normal(shape, seed: int, step: int = 0, sample_offset: int = 0, *, device="cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """z ~ N(0, I) of ``shape`` (dim 0 = batch, sample i = global index sample_offset + i) by the rule above."""
    shape = [operator.index(s) for s in shape]
    if not shape or min(shape) < 0:
        raise ValueError(f"shape must be (batch, *sample_shape) with sizes >= 0, got {tuple(shape)}")
    seed, step, sample_offset = check_counter_args(seed, step, sample_offset, shape[0])
    return normal_unchecked(shape, seed, step, sample_offset, torch.device(device)).to(dtype)
