"""torch.ops.qkernels.matmul_triton: the Triton GEMV and GEMM kernels against the fp64 oracle.

Where there is no GPU the kernels run in Triton's interpreter on CPU tensors. The interpreter
is chosen when a kernel is decorated, so TRITON_INTERPRET=1 is set here, before
qkernels.triton is imported, and only when CUDA is unavailable: on such a machine nothing else
in the session can use compiled Triton anyway (torch.compile on CPU generates C++), and on a GPU
machine the variable stays unset, so these same tests (and every other file) run compiled
kernels on CUDA tensors. Shapes are tiny because the interpreter runs each program in numpy.
"""

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import qkernels as qk  # noqa: E402
from qkernels import formats, ops  # noqa: E402
from qkernels import triton as qk_triton  # noqa: E402  (registers matmul_triton's impls)
from qkernels.triton import common, dequant, gemm, gemv  # noqa: E402
from qkernels.triton.common import nf4_value  # noqa: E402

from conftest import (GPU_FUZZ_DTYPES, GPU_FUZZ_GROUPS, GPU_FUZZ_K,  # noqa: E402
                      GPU_FUZZ_MODES, GPU_FUZZ_N, GPU_FUZZ_ROWS, GPU_FUZZ_X_LAYOUTS,
                      gpu_fuzz_examples, gpu_fuzz_weight, laid_out, normwise_rel_err)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS = {"gemv": gemv, "gemm": gemm}
FORMATS = [("int8", False), ("int4", False), ("int4", True), ("nf4", False)]
FORMAT_IDS = [f"{fmt}{'-sym' if sym else ''}" for fmt, sym in FORMATS]
# group_size as passed to the op: powers of two, per channel (-1 -> K), and an odd size whose
# groups straddle every K tile (the per-element scale path).
GROUP_SIZES = [32, 64, 128, -1, 17]

# Norm-wise relative error bounds against fp64 from the same rounded x. fp32: accumulation order
# only (the GEMM's dot is exact fp32 "ieee"). fp16 / bf16: the output is rounded once to the
# activation dtype (unit roundoff 2^-11 / 2^-8) and the GEMM also rounds each weight to it before
# the tensor-core dot; the two roundings give ~3e-4 (fp16) and ~2e-3 (bf16) on random data. The
# interpreter rounds fp32 -> bf16 by truncation (the GPU rounds to nearest), a bias of ~2^-8 per
# rounding, ~6e-3 in all: under the bound.
REL_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def capability_at_least(major: int) -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= major


@pytest.fixture(autouse=True)
def _untuned(monkeypatch):
    # Each test shape would be a new autotune key; tests run the default configs (the autotuned
    # path has its own test).
    monkeypatch.setenv(common.AUTOTUNE_ENV_VAR, "0")


def random_quantized(n, k, fmt, group_size, symmetric=False, device=DEVICE, seed=0):
    """A QuantizedWeight with uniformly random codes (every code, both nibbles), scales spread
    over two decades and float zero points: any group size, unlike qk.quantize."""
    gen = torch.Generator().manual_seed(seed)
    group_size = k if group_size == -1 else group_size
    groups = formats.num_groups(k, group_size)
    scales = torch.rand(n, groups, generator=gen) * 0.1 + 0.001
    if fmt == "int8":
        codes = torch.randint(-127, 128, (n, k), generator=gen)
    else:
        codes = torch.randint(0, 16, (n, k), generator=gen)
    zeros = None
    if fmt == "int4" and not symmetric:
        zeros = torch.rand(n, groups, generator=gen) * 15
    qw = formats.QuantizedWeight(
        fmt, (n, k), group_size, formats.pack_codes(codes, fmt),
        scales=None if fmt == "nf4" else scales, zeros=zeros,
        absmax=scales if fmt == "nf4" else None)
    return qw.to(device)


def sample_inputs(m, n, k, fmt, symmetric=False, group_size=32, dtype=torch.float16, bias=False,
                  seed=0):
    qw = random_quantized(n, k, fmt, group_size, symmetric, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(m, k, generator=gen).to(dtype).to(DEVICE)
    b = torch.randn(n, generator=gen).to(dtype).to(DEVICE) if bias else None
    return x, qw, b


def fp64_reference(x, qw, bias=None):
    y = x.double() @ qk.dequantize(qw).double().T
    return y if bias is None else y + bias.double()


def rel_err(y, ref):
    diff, scale = (y.double() - ref).norm(), ref.norm()
    return float(diff / scale) if scale > 0 else float(diff)


def triton_op(x, qw, bias=None):
    return ops.matmul_triton_op(x, qw.fmt, qw.qweight, qw.scale_tensor, qw.zeros, qw.group_size,
                                bias)


def run_kernel(kernel, x, qw, bias=None, config=None, split_k=None):
    """One kernel, bypassing the GEMV/GEMM choice by M."""
    y = torch.empty(x.shape[0], qw.shape[0], dtype=x.dtype, device=x.device)
    return kernel.matmul(x, qw.fmt, qw.qweight, qw.scale_tensor, qw.zeros, qw.group_size, bias, y,
                         config=config, split_k=split_k)


def assert_close(y, x, qw, bias=None):
    assert y.shape == (x.shape[0], qw.shape[0]) and y.dtype == x.dtype and y.device == x.device
    err = rel_err(y, fp64_reference(x, qw, bias))
    assert err <= REL_TOL[x.dtype], f"relative error {err:.2e} > {REL_TOL[x.dtype]:.0e}"


# --- every format and group size, both kernels -----------------------------------------------

@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("fmt,symmetric", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("m,n,k", [(1, 17, 577), (3, 64, 129), (33, 5, 300)])
def test_formats_and_groups(fmt, symmetric, group_size, m, n, k):
    x, qw, _ = sample_inputs(m, n, k, fmt, symmetric, group_size)
    assert_close(triton_op(x, qw), x, qw)


@pytest.mark.parametrize("kernel,m", [("gemv", 1), ("gemm", 20)])
def test_int8_row_scales_below_fp16s_normal_range(kernel, m):
    # Per-channel int8 scales of 1e-6 to 2e-6 (subnormal in fp16, 2^-24 apart: up to 3% off
    # once rounded) multiply the fp32 sums, so fp16 x keeps fp16's accuracy while y (~1e-3)
    # is normal. Compiled, the GEMM rounded each scale to fp16 before (relative error 7.8e-2
    # on scales near 1e-7: H100 call n13 of 25 Nov, fifth session).
    x, qw, _ = sample_inputs(m, 40, 256, "int8", group_size=-1)
    qw.scales.copy_(torch.rand_like(qw.scales) * 1e-6 + 1e-6)
    assert_close(run_kernel(KERNELS[kernel], x, qw), x, qw)


# Odd sizes (1, prime, one past a multiple of 64): every M, N and K value at least twice, on
# both sides of the GEMV/GEMM threshold.
ODD_SHAPES = [(1, 1, 1), (1, 3, 17), (1, 64, 3), (3, 17, 1), (3, 1, 577), (3, 64, 64),
              (17, 3, 3), (17, 17, 577), (17, 1, 64), (33, 64, 17), (33, 1, 1), (33, 17, 64)]


@pytest.mark.parametrize("fmt,symmetric", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("m,n,k", ODD_SHAPES)
def test_odd_shapes(fmt, symmetric, m, n, k):
    x, qw, _ = sample_inputs(m, n, k, fmt, symmetric, group_size=64)
    assert_close(triton_op(x, qw), x, qw)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fmt,symmetric", FORMATS, ids=FORMAT_IDS)
def test_dtypes_with_bias(kernel, dtype, fmt, symmetric):
    # (Tests without bias are all the others.)
    m = 3 if kernel == "gemv" else 20
    x, qw, b = sample_inputs(m, 33, 577, fmt, symmetric, 64, dtype, bias=True)
    assert_close(run_kernel(KERNELS[kernel], x, qw, b), x, qw, b)


def test_real_weights_through_quantize():
    w = torch.randn(40, 200) * torch.rand(40, 1) * 0.1
    for fmt, symmetric in FORMATS:
        qw = qk.quantize(w, fmt, 64 if fmt != "int8" else None, symmetric=symmetric).to(DEVICE)
        for m in (2, 24):
            x = torch.randn(m, 200).half().to(DEVICE)
            assert_close(triton_op(x, qw), x, qw)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("fmt,symmetric", FORMATS, ids=FORMAT_IDS)
def test_identity_rows_recover_the_weights(kernel, fmt, symmetric):
    # x = I (fp32) picks out columns of W one at a time: each output is one product, so it
    # checks nibble order, group indexing, zero points and the NF4 constants element by element.
    # Exact, except that asymmetric int4 computes scale * (q - zero) as one FMA,
    # q * scale - zero * scale: within an ulp of zero * scale of the reference's rounding.
    k = 19
    qw = random_quantized(7, k, fmt, 4, symmetric)
    rows = torch.eye(k, device=DEVICE)[:4] if kernel == "gemv" else torch.eye(k, device=DEVICE)
    y = run_kernel(KERNELS[kernel], rows, qw)
    expected = qk.dequantize(qw).T[: rows.shape[0]]
    if qw.zeros is None:
        assert torch.equal(y, expected)
    else:
        ulp_of_shift = 2.0**-23 * (qw.zeros * qw.scales).max()
        assert (y - expected).abs().max() <= ulp_of_shift


# --- the nf4 decode and the dequantize kernel ---------------------------------------------------

@triton.jit
def _nf4_decode_kernel(codes_ptr, values_ptr):
    offsets = tl.arange(0, 16)
    tl.store(values_ptr + offsets, nf4_value(tl.load(codes_ptr + offsets)))


def test_nf4_decode_reproduces_the_table_bit_exactly():
    # The kernels' select tree against formats.NF4_TABLE, the one copy of the constants.
    values = torch.empty(16, dtype=torch.float32, device=DEVICE)
    _nf4_decode_kernel[(1,)](torch.arange(16, dtype=torch.int32, device=DEVICE), values)
    table = torch.tensor(formats.NF4_TABLE, dtype=torch.float32)
    assert torch.equal(values.cpu().view(torch.int32), table.view(torch.int32))


def ptx_decode_weights(qw, dtype):
    """W as the PTX decode makes it (common.dequantize_tile, PTX_DECODE), which rounds as the
    CUDA backend does. nf4: the table value and the absmax each rounded to ``dtype``,
    multiplied in ``dtype`` (one rounding: the product of two 16-bit values is exact in fp32).
    int4: q - round(z) exact, times the scale rounded to ``dtype``, plus -s (z - round(z))
    rounded to ``dtype``, rounded once (an fma; exact in fp64 before the last rounding). int8:
    q times the scale rounded to fp16, rounded once; in bf16, which keeps the fp32 decode, the
    fp32 product rounded."""
    n, k = qw.shape
    codes = formats.unpack_codes(qw.qweight, qw.fmt, k).long()

    def per_weight(t):
        return t.repeat_interleave(qw.group_size, dim=1)[:, :k]

    if qw.fmt == "int8":
        if dtype == torch.bfloat16:
            return (codes.float() * per_weight(qw.scales)).to(dtype)
        return round_once(codes.double() * per_weight(qw.scales.to(dtype).double()), dtype)

    if qw.fmt == "nf4":
        table = formats.nf4_table(qw.qweight.device).to(dtype).float()
        return (table[codes] * per_weight(qw.absmax.to(dtype).float())).to(dtype)
    zero = qw.zeros if qw.zeros is not None else torch.full_like(qw.scales,
                                                                  formats.INT4_SYMMETRIC_ZERO)
    zero_int = torch.floor(zero + 0.5)
    scale = qw.scales.to(dtype).double()
    rest = (-qw.scales * (zero - zero_int)).to(dtype).double()
    return round_once((codes - per_weight(zero_int)).double() * per_weight(scale)
                      + per_weight(rest), dtype)


def round_once(exact: torch.Tensor, dtype) -> torch.Tensor:
    """fp64 ``exact`` rounded to nearest (ties to even) in the 16-bit ``dtype``, once: torch goes
    through fp32 and can round twice. Of the fp32 path's result and its two neighbours (one bit
    pattern up and down), the nearest; ties take the even pattern."""
    first = exact.float().to(dtype)
    bits = first.view(torch.int16).int()
    candidates = torch.stack([bits - 1, bits, bits + 1]).to(torch.int16).view(dtype)
    error = (candidates.double() - exact).abs().nan_to_num(nan=torch.inf)
    nearest = error == error.min(0).values
    nearest_even = nearest & (candidates.view(torch.int16) % 2 == 0)
    best = torch.where(nearest_even.any(0), nearest_even.int().argmax(0), nearest.int().argmax(0))
    return candidates.gather(0, best[None]).squeeze(0)


def test_round_once_matches_numpy_half_rounding():
    # The emulation the PTX-decode tests compare with: fp64 -> fp16 in one rounding, as numpy
    # converts, on values with more bits than fp32 holds and on exact ties between fp16 values.
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(4096, generator=gen, dtype=torch.float64) * 3
    values += torch.randn(4096, generator=gen, dtype=torch.float64) * 1e-7
    halves = torch.randn(1024, generator=gen).half()
    above = (halves.view(torch.int16).int() + 1).to(torch.int16).view(torch.float16)
    ties = (halves.double() + above.double()) / 2
    for exact in (values, ties):
        expected = torch.from_numpy(exact.numpy().astype(np.float16))
        assert torch.equal(round_once(exact, torch.float16).view(torch.int16),
                           expected.view(torch.int16))


def ptx_decode_applies(fmt, dtype, group_size, num_groups, block_k) -> bool:
    return ((fmt in ("int4", "nf4") or (fmt == "int8" and dtype == torch.float16))
            and common.ptx_decode_enabled(dtype)
            and common.scale_per_tile(group_size, num_groups, block_k))


@pytest.mark.parametrize("group_size", [32, -1, 17])
@pytest.mark.parametrize("fmt,symmetric", FORMATS, ids=FORMAT_IDS)
def test_dequantize_kernel_recovers_the_weights(fmt, symmetric, group_size):
    # Rounded once from fp32, like the reference; asymmetric int4 within an ulp of zero * scale
    # (its FMA, see test_identity_rows_recover_the_weights). The 4-bit formats in fp16 on a GPU,
    # with groups a tile lies in: bit-exact to ptx_decode_weights.
    n, k = 37, 301
    qw = random_quantized(n, k, fmt, group_size, symmetric)
    expected = qk.dequantize(qw)
    w = dequant.dequantize(fmt, qw.qweight, qw.scale_tensor, qw.zeros, qw.group_size, k,
                           torch.float32)
    assert w.shape == (n, k) and w.dtype == torch.float32 and w.device == expected.device
    if qw.zeros is None:
        assert torch.equal(w, expected)
    else:
        assert (w - expected).abs().max() <= 2.0**-23 * (qw.zeros * qw.scales).max()
    w16 = dequant.dequantize(fmt, qw.qweight, qw.scale_tensor, qw.zeros, qw.group_size, k,
                             torch.float16)
    _, block_k = common.fit_tile(dequant.BLOCK_N, dequant.BLOCK_K, qw.group_size,
                                 formats.num_groups(k, qw.group_size), dequant.MIN_BLOCK_K,
                                 dequant.MAX_BLOCK_N)
    if ptx_decode_applies(fmt, torch.float16, qw.group_size,
                          formats.num_groups(k, qw.group_size), block_k):
        assert torch.equal(w16, ptx_decode_weights(qw, torch.float16))
    else:
        assert torch.equal(w16, w.half())


PTX_DECODE_MODES = [("nf4", False), ("int4", False), ("int4", True)]
PTX_DECODE_IDS = ["nf4", "int4", "int4sym"]
# The GEMM's and the dequantize kernel's decodes (int8 by PTX in fp16 only).
DECODE_MODES = PTX_DECODE_MODES + [("int8", False)]
DECODE_IDS = PTX_DECODE_IDS + ["int8"]


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k,group_size", [(17, 577, 64), (3, 1024, 128), (64, 300, -1),
                                            (37, 301, 32)])
@pytest.mark.parametrize("fmt,symmetric", DECODE_MODES, ids=DECODE_IDS)
def test_ptx_decode_is_the_cuda_rounding(fmt, symmetric, n, k, group_size, dtype):
    # The inline-PTX decode (nf4: prmt lookups of the table in dtype; int4: the magic-number
    # fma pair; int8 in fp16: the magic-number subtraction, then the scale) against torch, bit
    # for bit, through the dequantize kernel (its tile, 64 x 64, 32 x 128 or 128 x 32 here, sets
    # which elements share an asm block); ragged last tiles (577, 300, 301) and per channel
    # included. int8 in bf16 is its fp32 decode, rounded once.
    qw = random_quantized(n, k, fmt, group_size, symmetric)
    w = dequant.dequantize(fmt, qw.qweight, qw.scale_tensor, qw.zeros, qw.group_size, k, dtype)
    assert torch.equal(w.view(torch.int16), ptx_decode_weights(qw, dtype).view(torch.int16))


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [16, 40, 96])
@pytest.mark.parametrize("fmt,symmetric", DECODE_MODES, ids=DECODE_IDS)
def test_ptx_decode_gemm_sees_the_rounded_weights(fmt, symmetric, m, dtype):
    # Rows of the identity pick out W's columns, each output one exact product: the GEMM's
    # weights bit for bit, at 16-, 64- and 128-row tiles (the M buckets' default configs).
    k = 96
    qw = random_quantized(70, k, fmt, 32, symmetric)
    rows = torch.eye(k, dtype=dtype, device=DEVICE)[:m]
    y = run_kernel(gemm, rows, qw)
    assert torch.equal(y.view(torch.int16), ptx_decode_weights(qw, dtype).T[:m].view(torch.int16))


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt,symmetric", DECODE_MODES, ids=DECODE_IDS)
def test_ptx_decode_gemm_error(monkeypatch, fmt, symmetric, dtype):
    # The PTX decode rounds twice per weight (nf4: table value, product; int4: scale, fma; int8:
    # scale, product) where the fp32 decode rounds once: both GEMMs against fp64, on a shape the
    # bench runs at M = 16, to show the cost of the second rounding stays under the bound
    # (bench/NOTES.md, Triton).
    x, qw, _ = sample_inputs(16, 4096, 4096, fmt, symmetric, group_size=64, dtype=dtype)
    ref = fp64_reference(x, qw)
    errors = {}
    for ptx in (True, False):
        monkeypatch.setattr(common, "ptx_decode_enabled", lambda _dtype, on=ptx: on)
        errors[ptx] = rel_err(run_kernel(gemm, x, qw), ref)
    print(f"\n{fmt}{' sym' if symmetric else ''} g64 16x4096x4096 {dtype}: relative error against "
          f"fp64, PTX decode {errors[True]:.3e}, fp32 decode {errors[False]:.3e}")
    assert errors[True] <= REL_TOL[dtype] and errors[False] <= REL_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fmt,symmetric", FORMATS, ids=FORMAT_IDS)
def test_many_rows_dequantize_then_matmul(monkeypatch, fmt, symmetric, dtype):
    def fused_gemm(*args, **kwargs):
        raise AssertionError("the fused GEMM ran above FUSED_GEMM_MAX_M")

    monkeypatch.setattr(gemm, "matmul", fused_gemm)
    m = qk_triton.FUSED_GEMM_MAX_M + 1
    x, qw, b = sample_inputs(m, 33, 577, fmt, symmetric, 64, dtype, bias=True)
    assert_close(triton_op(x, qw, b), x, qw, b)


def test_fused_gemm_rows_by_weight():
    """The fused GEMM takes up to 128 rows of x, and up to 256 on weights larger than
    4096x4096 (H100 crossovers in python/qkernels/triton/__init__.py)."""
    assert qk_triton.fused_gemm_max_m(4096, 4096) == 128
    assert qk_triton.fused_gemm_max_m(14336, 4096) == 256
    assert qk_triton.fused_gemm_max_m(4096, 14336) == 256
    assert qk_triton.fused_gemm_max_m(28672, 8192) == 256
    # The bound is exclusive: 4096x8192 is LARGE_WEIGHT itself.
    assert qk_triton.fused_gemm_max_m(4096, 8192) == 128 < qk_triton.fused_gemm_max_m(4096, 8193)


# --- tile shapes, split-K, the GEMV/GEMM choice ------------------------------------------------

def _all_configs(kernel, m):
    if kernel is gemv:
        return [gemv._adapt(c, m, 64, 3, words=m == 1) for c in gemv.CONFIG_SPACE]
    return [gemm._adapt(c, 64, 3) for c in gemm.CONFIG_SPACE] + [gemm.FP32_CONFIG]


# The GEMV at M = 4 (byte path) and at M = 1 (K = 152: the word path), the GEMM at M = 37.
@pytest.mark.parametrize("kernel,m,config", [(k, m, c) for k, m in ((gemv, 4), (gemv, 1),
                                                                     (gemm, 37))
                                             for c in common.unique_configs(_all_configs(k, m))],
                         ids=lambda v: getattr(v, "__name__", None) or str(v).replace(" ", ""))
def test_every_config_in_the_tuning_space(kernel, m, config):
    # The autotuner may pick any of them on a GPU; each must be correct, edges included.
    k = 152 if m == 1 else 150
    x, qw, _ = sample_inputs(m, 70, k, "int4", group_size=64)
    assert_close(run_kernel(kernel, x, qw, config=config, split_k=1), x, qw)


def test_default_gemm_config_by_weight_size():
    # sm_90: 4-bit weights above gemm.HUGE_WEIGHT take BLOCK_N 128 at 33-64 rows (int8 keeps its
    # own tile whatever the size); above 64 rows, weights above gemm.WIDE_TILE_WEIGHT take it too.
    def block_n(fmt, n, k, m=64):
        config = gemm.default_config((9, 0), m, fmt, torch.float16, 128, k // 128, n * k)
        return config.kwargs["BLOCK_N"], config.num_warps

    assert block_n("int4", 28672, 8192) == (128, 4) and block_n("nf4", 8192, 28672) == (128, 4)
    assert block_n("int4", 14336, 4096) == (64, 4) and block_n("nf4", 8192, 8192) == (64, 4)
    assert block_n("int8", 28672, 8192) == block_n("int8", 4096, 4096) == (128, 8)
    assert block_n("int4", 14336, 4096, 128) == block_n("int8", 6144, 4096, 128) == (128, 8)
    assert block_n("int4", 4096, 4096, 128) == block_n("nf4", 2048, 2048, 128) == (64, 4)


# Each entry of the GEMM's untuned table, at the most rows it serves, with the formats it is for.
@pytest.mark.parametrize("tile",
                         [tile for table in gemm.DEFAULT_CONFIGS.values() for tile in table],
                         ids=lambda t: "-".join(str(v).replace(" ", "") for v in t))
def test_every_default_gemm_config(tile):
    m = tile.max_m or 100
    for fmt, symmetric in FORMATS:
        if tile.fmt in (None, fmt):
            x, qw, _ = sample_inputs(m, 150, 300, fmt, symmetric, group_size=64)
            adapted = gemm._adapt(tile.config, qw.group_size,
                                  formats.num_groups(300, qw.group_size))
            assert_close(run_kernel(gemm, x, qw, config=adapted, split_k=2), x, qw)


@pytest.mark.parametrize("kernel,m", [("gemv", 2), ("gemm", 20), ("gemm", 40)])
@pytest.mark.parametrize("split_k", [1, 2, 3, 16])
@pytest.mark.parametrize("fmt,symmetric", [("int4", False), ("nf4", False)])
def test_split_k(kernel, m, split_k, fmt, symmetric):
    # 16 splits of fewer K tiles: empty splits must still count themselves in. 40 rows take the
    # 64-row tile, whose scales sm_90 loads a tile ahead (gemm.scales_ahead).
    x, qw, b = sample_inputs(m, 40, 300, fmt, symmetric, 32, bias=True)
    assert_close(run_kernel(KERNELS[kernel], x, qw, b, split_k=split_k), x, qw, b)


def assert_workspaces_zeroed():
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    for key, buffers in common._WORKSPACES.items():
        assert all(not buffer.any() for buffer in buffers), key


@pytest.mark.parametrize("kernel", KERNELS)
def test_split_k_leaves_its_workspace_zeroed(kernel):
    # The last program of each output tile sets its partial sums and counter back to zero, so
    # the next launch, of any shape, takes the same buffer without a memset.
    m = 2 if kernel == "gemv" else 20
    for seed, (rows, n, k) in enumerate([(m, 40, 300), (1, 7, 600), (m + 1, 40, 300)]):
        x, qw, b = sample_inputs(rows, n, k, "int4", bias=True, seed=seed)
        assert_close(run_kernel(KERNELS[kernel], x, qw, b, split_k=3), x, qw, b)
        assert_workspaces_zeroed()


def test_split_k_workspace_grows_and_keeps_its_old_buffers(monkeypatch):
    # A larger M x N takes a new, zeroed buffer of at least twice the size; the old ones stay
    # allocated, since a captured graph may still point at them.
    monkeypatch.setattr(common, "_WORKSPACES", {})
    device = torch.device(DEVICE)
    partials, counters = common.split_k_workspace(2, 40, 5, device)
    assert partials.shape == (80,) and counters.shape == (5,) and counters.dtype == torch.int32
    first = partials.data_ptr()
    assert common.split_k_workspace(1, 40, 5, device)[0].data_ptr() == first  # fits: reused
    partials, counters = common.split_k_workspace(4, 40, 10, device)
    assert partials.data_ptr() != first and not partials.any() and not counters.any()
    for buffers in common._WORKSPACES.values():
        assert len(buffers) == 2 and buffers[1].numel() >= 2 * buffers[0].numel()


# The GEMV's word path (int4, and nf4 where its permute decode runs: compiled, fp16 / bf16 x;
# one row of x, codes read as 32-bit words): K a multiple of 8; K = 584 leaves a ragged last
# tile and, with g = 32 and 128, a ragged last group in it.
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("fmt,symmetric", [("int4", False), ("int4", True), ("nf4", False)],
                         ids=["int4", "int4-sym", "nf4"])
def test_gemv_word_path(fmt, symmetric, group_size, dtype):
    x, qw, b = sample_inputs(1, 19, 584, fmt, symmetric, group_size, dtype, bias=True)
    num_groups = formats.num_groups(584, qw.group_size)
    nf4_words = common.ptx_decode_enabled(dtype)
    assert gemv.words_supported(fmt, qw.qweight, 584, qw.group_size, num_groups, 1, nf4_words) \
        == (fmt == "int4" or nf4_words)
    for split_k in (1, 3):
        assert_close(run_kernel(gemv, x, qw, b, split_k=split_k), x, qw, b)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k,group_size", [(19, 640, -1), (300, 1024, 128), (64, 896, 256),
                                            (4096, 4096, 128), (37, 640, 64), (64, 1152, 32)])
@pytest.mark.parametrize("fmt,symmetric", PTX_DECODE_MODES, ids=PTX_DECODE_IDS)
@pytest.mark.parametrize("m", [1, 3, 8])
def test_gemv_mma_path(m, fmt, symmetric, n, k, group_size, dtype):
    # The GEMV by tensor cores (sm_90, K a multiple of 128, up to 8 rows of x): ragged rows, a
    # ragged last group (896 = 3.5 groups of 256), groups of 32 to 256 (int4 below 128: CUDA
    # cores) and per channel, split and unsplit, against fp64 and against the CUDA-core paths.
    # int4's products are exact (q - 8 and x in x's dtype, fp32 sums); nf4's weights are the
    # CUDA backend's (table and absmax rounded to x's dtype): the same bound as every kernel.
    x, qw, b = sample_inputs(m, n, k, fmt, symmetric, group_size, dtype, bias=True)
    num_groups = formats.num_groups(k, qw.group_size)
    supported = gemv.mma_supported(fmt, x, qw.qweight, gemv.MMA_CONFIG, True, qw.group_size,
                                   num_groups)
    if capability_at_least(9):
        assert supported == (fmt == "nf4" or qw.group_size % 128 == 0)
    if not supported:
        pytest.skip(f"no tensor-core GEMV for {fmt} g{qw.group_size} here")
    assert gemv.mma_applies(x, fmt, qw.qweight, qw.group_size)
    assert_close(triton_op(x, qw, b), x, qw, b)  # the GEMV up to MMA_GEMV_MAX_M rows
    for split_k in (1, 3):
        y = run_kernel(gemv, x, qw, b, split_k=split_k)
        assert_close(y, x, qw, b)
        y_cuda_cores = torch.empty_like(y)
        gemv.matmul(x, fmt, qw.qweight, qw.scale_tensor, qw.zeros, qw.group_size, b,
                    y_cuda_cores, split_k=split_k, mma=False)
        assert rel_err(y, y_cuda_cores.double()) <= REL_TOL[dtype]


# Compiles the tensor-core GEMV for sm_90 (Triton's own ptxas, no GPU) in a process without
# the interpreter and prints the layout of each 8-element asm block.
MMA_LAYOUT_PROBE = """
import re, sys, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qkernels import formats
from qkernels.triton import common, gemv
config = gemv.MMA_CONFIG
for x_type, dtype in (("*fp16", torch.float16), ("*bf16", torch.bfloat16)):
    for fmt, has_zeros, groups in (("int4", False, 1), ("int4", True, 1), ("nf4", False, 2),
                                   ("nf4", False, 4)):
        for block_m in (1, 8):
            asm, constraints = gemv.mma_asm(fmt, dtype, has_zeros, block_m == 1)
            constexprs = dict(FORMAT=formats.FORMAT_IDS[fmt], HAS_ZEROS=has_zeros,
                              MMA_GROUPS_PER_TILE=groups, MMA_ASM=asm,
                              MMA_CONSTRAINTS=constraints, HAS_BIAS=False, ABSMAX_DQ=False,
                              NF4_FROM_TABLE=True, PTX_DECODE=True, BLOCK_M=block_m,
                              DEPENDENT_LAUNCH=True,
                              SPLIT_K=1, WORDS=True, MMA=True, SCALE_PER_TILE=True,
                              ROW_SCALE=False, **config.kwargs)
            signature, attrs = {}, {}
            for index, name in enumerate(gemv.gemv_kernel.arg_names):
                if name in constexprs:
                    signature[name] = "constexpr"
                    continue
                signature[name] = {"x_ptr": x_type, "qweight_ptr": "*i32", "bias_ptr": x_type,
                                   "y_ptr": x_type, "tile_counters_ptr": "*i32"}.get(
                                       name, "*fp32" if name.endswith("_ptr") else "i32")
                attrs[(index,)] = [["tt.divisibility", 16]]
            compiled = triton.compile(ASTSource(gemv.gemv_kernel, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": config.num_warps, "num_stages": 2})
            ttgir = compiled.asm["ttgir"]
            layouts = dict(re.findall(r"^(#blocked\\d*) = #ttg.blocked<(.*)>$", ttgir, re.M))
            for encoding in re.findall(r"packed_element = 8 .*-> tensor<\\w+, (#blocked\\d*)>",
                                       ttgir):
                print(config.num_warps, layouts[encoding])
"""


@pytest.mark.skipif(DEVICE == "cuda", reason="the GPU runs test_gemv_mma_path itself")
def test_gemv_mma_layout():
    # _mma_word_asm pairs rows and words by the layout Triton gives the codes' tile: this
    # Triton must still give it (else the kernel traps at run time, by _check_mma_layout).
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != common.INTERPRET_ENV_VAR}
    package_root = os.path.dirname(os.path.dirname(qk.__file__))  # the qkernels under test
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", MMA_LAYOUT_PROBE], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")[:-1]
    assert len(lines) == 16 * 2  # each variant: the layout check and the mma
    for line in lines:
        warps, layout = line.split(" ", 1)
        assert layout == ("{sizePerThread = [1, 4], threadsPerWarp = [8, 4], "
                          f"warpsPerCTA = [{warps}, 1], order = [1, 0]}}"), line


def test_gemv_word_path_conditions():
    # Elsewhere the byte path runs: other formats, several rows, K not whole words, a word
    # across two groups, rows that do not start on a 4-byte boundary.
    fmt = "int4"
    x, qw, _ = sample_inputs(1, 5, 96, fmt, group_size=32)
    groups = formats.num_groups(96, 32)
    assert gemv.words_supported(fmt, qw.qweight, 96, 32, groups, 1)
    for other in ("int8", "nf4"):
        other_qw = sample_inputs(1, 5, 96, other, group_size=32)[1]
        assert not gemv.words_supported(other, other_qw.qweight, 96, 32, groups, 1)
    assert gemv.words_supported("nf4", other_qw.qweight, 96, 32, groups, 1, nf4_words=True)
    assert not gemv.words_supported(fmt, qw.qweight, 96, 32, groups, 2)
    row_bytes = qw.qweight.shape[1]
    padded = torch.zeros(5, row_bytes + 2, dtype=qw.qweight.dtype, device=DEVICE)
    padded[:, :row_bytes] = qw.qweight
    assert not gemv.words_supported(fmt, padded[:, :row_bytes], 96, 32, groups, 1)
    x, qw, _ = sample_inputs(1, 5, 99, fmt, group_size=17)
    assert not gemv.words_supported(fmt, qw.qweight, 99, 17, formats.num_groups(99, 17), 1)
    x, qw, _ = sample_inputs(1, 5, 102, fmt, group_size=-1)
    assert not gemv.words_supported(fmt, qw.qweight, 102, 102, 1, 1)


def test_autotuning_is_opt_in(monkeypatch):
    # The fixed configs unless QKERNELS_TRITON_AUTOTUNE=1 (the tuner's warm single-launch timing
    # picked slower configs for cold decode: bench/NOTES.md, "Triton"); never interpreted.
    monkeypatch.setattr(common, "interpreting", lambda: False)
    monkeypatch.delenv(common.AUTOTUNE_ENV_VAR, raising=False)
    assert not common.autotune_enabled()
    for value, enabled in (("0", False), ("1", True)):
        monkeypatch.setenv(common.AUTOTUNE_ENV_VAR, value)
        assert common.autotune_enabled() == enabled
    monkeypatch.setattr(common, "interpreting", lambda: True)
    assert not common.autotune_enabled()


def test_split_k_heuristic_splits_long_thin_shapes():
    assert common.choose_split_k(1, 64, torch.device("cpu"), 4, 4) == 16
    assert common.choose_split_k(1, 8, torch.device("cpu"), 4, 4) == 2
    assert common.choose_split_k(1000, 64, torch.device("cpu"), 4, 4) == 1
    # While SMs would sit idle (the interpreter counts 4), splits go down to the idle floor.
    assert common.choose_split_k(1, 6, torch.device("cpu"), 4, 4) == 1
    assert common.choose_split_k(1, 6, torch.device("cpu"), 4, 4, 1) == 4
    assert common.choose_split_k(8, 6, torch.device("cpu"), 4, 4, 1) == 1  # no idle SM


@pytest.mark.parametrize("m", sorted({1, qk_triton.GEMV_MAX_M, qk_triton.GEMV_MAX_M + 1, 16}))
def test_both_kernels_agree_around_the_threshold(m):
    x, qw, _ = sample_inputs(m, 48, 256, "int4", group_size=128)
    assert_close(run_kernel(gemv, x, qw), x, qw)
    assert_close(run_kernel(gemm, x, qw), x, qw)


@pytest.mark.parametrize("kernel,m", [(gemv, 2), (gemm, 20)], ids=["gemv", "gemm"])
def test_autotuned_path_with_a_stub_timer(monkeypatch, kernel, m):
    # The tuning machinery (pruner, heuristics, grid, workspace reset) without a GPU timer: each
    # pruned config runs twice, as a benchmark would, dirtying the split-K workspace; the tuned
    # launch that follows must still start from zeros.
    tuner = kernel._autotuned_kernel
    timed = []

    def stub_bench(kernel_call, quantiles):
        kernel_call()
        kernel_call()
        timed.append(1)
        return [float(len(timed))] * 3  # the first config wins

    monkeypatch.setattr(common, "autotune_enabled", lambda: True)
    monkeypatch.setattr(tuner, "cache", {})
    # do_bench is an instance attribute or a cached_property, by Triton version: either way the
    # instance dict wins.
    monkeypatch.setitem(vars(tuner), "do_bench", stub_bench)
    x, qw, b = sample_inputs(m, 24, 256, "int4", group_size=64, bias=True)
    assert_close(run_kernel(kernel, x, qw, b), x, qw, b)
    assert len(timed) > 1 and len(tuner.cache) == 1
    assert_close(run_kernel(kernel, x, qw, b), x, qw, b)  # cached config, no tuning
    assert len(tuner.cache) == 1


def test_config_space_respects_the_workspace_bounds():
    # Tile counters are sized for the smallest tiles; the pruner keeps BLOCK_K >= the minimum.
    for config in gemv.CONFIG_SPACE:
        assert config.kwargs["BLOCK_N"] >= gemv.MIN_BLOCK_N
    for config in gemm.CONFIG_SPACE + [gemm.FP32_CONFIG]:
        assert min(config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]) >= gemm.MIN_BLOCK
    assert gemv._adapt(gemv.CONFIG_SPACE[-1], 16, 32, 4).kwargs["BLOCK_K"] == 32
    # BLOCK_K fitted to 64-wide groups: BLOCK_N grows so each step loads as many bytes.
    fitted = gemv._adapt(triton.Config({"BLOCK_N": 16, "BLOCK_K": 256}), 1, 64, 4)
    assert (fitted.kwargs["BLOCK_N"], fitted.kwargs["BLOCK_K"]) == (64, 64)
    # Groups no K tile fits (17, and 16 below the GEMM's shortest tile) take the per-element
    # scale path at its shortest tile and two stages (shared memory).
    for group_size in (17, 16):
        fitted = gemm._adapt(gemm.LARGE_M_CONFIGS[0], group_size, 4)
        assert (fitted.kwargs["BLOCK_K"], fitted.num_stages) == (gemm.MIN_BLOCK_K, 2)
    assert gemm._adapt(gemm.LARGE_M_CONFIGS[0], 32, 4).kwargs["BLOCK_K"] == 32


# --- the op's contract -------------------------------------------------------------------------

@pytest.mark.parametrize("batch_shape", [(), (2, 3), (1, 1, 4)])
def test_leading_dimensions_are_kept(batch_shape):
    qw = random_quantized(5, 40, "int4", 32)
    x = torch.randn(*batch_shape, 40).half().to(DEVICE)
    y = triton_op(x, qw)
    assert y.shape == (*batch_shape, 5)
    assert rel_err(y.reshape(-1, 5), fp64_reference(x.reshape(-1, 40), qw)) <= 2e-3


def test_empty_batch():
    qw = random_quantized(5, 40, "nf4", 32)
    assert triton_op(torch.randn(0, 40, device=DEVICE).half(), qw).shape == (0, 5)


@pytest.mark.parametrize("m", [3, 20])
def test_non_contiguous_inputs(m):
    qw = random_quantized(6, 64, "int8", 16)
    x = torch.randn(64, m, device=DEVICE).half().T  # [m, 64], stride (1, m)
    assert_close(triton_op(x, qw), x, qw)
    strided = qw.qweight.T.contiguous().T  # same bytes, column-major
    assert_close(ops.matmul_triton_op(x, "int8", strided, qw.scales, None, 16, None), x, qw)


@pytest.mark.parametrize("m", [2, 20])
def test_opcheck(m):
    x, qw, b = sample_inputs(m, 24, 96, "int4", group_size=32, bias=True)
    torch.library.opcheck(torch.ops.qkernels.matmul_triton.default,
                          (x, "int4", qw.qweight, qw.scales, qw.zeros, 32, b))


def test_gradient_reaches_x_and_bias():
    x, qw, b = sample_inputs(3, 24, 96, "nf4", group_size=32, dtype=torch.float32, bias=True)
    x.requires_grad_(True)
    b.requires_grad_(True)
    triton_op(x, qw, b).sum().backward()
    w = qk.dequantize(qw)
    assert torch.allclose(x.grad, w.sum(0).expand_as(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(b.grad, torch.full_like(b, 3.0))


# --- nf4 with double-quantized absmax -----------------------------------------------------------

def double_quantized(n, k, group_size, seed=0):
    """A random nf4 weight with its absmax (spread over two decades, so the 8-bit codes are
    not exact) double-quantized."""
    qw = random_quantized(n, k, "nf4", group_size, seed=seed, device="cpu")
    codes, scales, offsets = formats.double_quantize_absmax(qw.absmax)
    return formats.QuantizedWeight("nf4", qw.shape, qw.group_size, qw.qweight,
                                   absmax_codes=codes, absmax_scales=scales,
                                   absmax_offsets=offsets).to(DEVICE)


def nf4_dq_op(x, qw, bias=None):
    return ops.matmul_nf4_dq_triton_op(x, qw.qweight, qw.absmax_codes, qw.absmax_scales,
                                       qw.absmax_offsets, qw.group_size, bias)


# N * G spans several 256-blocks, with a partial last one, in every case.
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("group_size", [16, 64, -1, 17])
@pytest.mark.parametrize("m,n,k", [(1, 67, 577), (3, 300, 64), (17, 257, 96)])
def test_nf4_double_quant_kernels_read_the_codes(kernel, group_size, m, n, k):
    qw = double_quantized(n, k, group_size)
    x = torch.randn(m, k, device=DEVICE).half()
    y = torch.empty(m, n, dtype=x.dtype, device=DEVICE)
    KERNELS[kernel].matmul(x, "nf4", qw.qweight, qw.absmax_codes, None, qw.group_size, None, y,
                           absmax_dq=(qw.absmax_scales, qw.absmax_offsets))
    assert_close(y, x, qw)   # fp64_reference dequantizes with the decoded absmax


@pytest.mark.parametrize("m", [2, 20, 40, qk_triton.FUSED_GEMM_MAX_M + 1])
def test_nf4_double_quant_op(m):
    qw = double_quantized(40, 96, 32)
    x = torch.randn(m, 96, device=DEVICE).half()
    b = torch.randn(40, device=DEVICE).half()
    assert_close(nf4_dq_op(x, qw, b), x, qw, b)
    if DEVICE == "cuda":   # the triton backend serves CUDA tensors only
        assert_close(qk.matmul(x, qw, b, backend="triton"), x, qw, b)
    torch.library.opcheck(torch.ops.qkernels.matmul_nf4_dq_triton.default,
                          (x, qw.qweight, qw.absmax_codes, qw.absmax_scales, qw.absmax_offsets,
                           32, b))


# --- GPU only ----------------------------------------------------------------------------------

@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("m", [1, 64])
def test_autotuned_launch(monkeypatch, m):
    monkeypatch.setenv(common.AUTOTUNE_ENV_VAR, "1")
    x, qw, b = sample_inputs(m, 256, 512, "int4", group_size=128, bias=True)
    for _ in range(2):  # tuning run, then the cached config
        assert_close(triton_op(x, qw, b), x, qw, b)


def assert_right_every_call(call, x, qw, calls=20):
    """A race shows in some calls only: each of ``calls`` outputs against the fp64 oracle."""
    ref = fp64_reference(x, qw)
    errors = [rel_err(call(), ref) for _ in range(calls)]
    assert max(errors) <= REL_TOL[x.dtype], errors


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("split_k", [2, 4])
def test_split_k_reduction_repeats_on_a_large_weight(split_k):
    # The last program of an output tile loads the partial sums in one layout and zeroes them
    # in another, so by other threads. Without the barrier between (common.store_output), rows
    # of y read 0 in this case in 18 of 40 calls (H100, call m1 of 25 Nov, fourth session).
    x, qw, _ = sample_inputs(128, 14336, 4096, "int4", group_size=128)
    config = gemm._adapt(gemm._config(128, 128, 64, 8, 3), 128, formats.num_groups(4096, 128))
    assert_right_every_call(lambda: run_kernel(gemm, x, qw, config=config, split_k=split_k),
                            x, qw)


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("fmt,group_size,m,n,k", [("int4", 128, 128, 14336, 4096),
                                                  ("int8", -1, 128, 14336, 4096),
                                                  ("int4", 128, 96, 4096, 14336),
                                                  ("int8", -1, 64, 4096, 14336)])
def test_default_gemm_repeats_on_large_weights(fmt, group_size, m, n, k):
    # The split-K race above showed only on large weights, never on the small shapes above.
    # Every call of the default tiles there (the last: int8's 64-row tile) must be right.
    x, qw, _ = sample_inputs(m, n, k, fmt, group_size=group_size)
    assert_right_every_call(lambda: triton_op(x, qw), x, qw)


@pytest.mark.cuda
@cuda_only
@settings(max_examples=gpu_fuzz_examples(100), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=GPU_FUZZ_ROWS, n=GPU_FUZZ_N, k=GPU_FUZZ_K, mode=GPU_FUZZ_MODES,
       group_size=GPU_FUZZ_GROUPS, dtype=GPU_FUZZ_DTYPES, with_bias=st.booleans(),
       layout=GPU_FUZZ_X_LAYOUTS)
def test_fuzz_through_the_dispatch(m, n, k, mode, group_size, dtype, with_bias, layout):
    """Random shapes, formats and layouts of x, compiled, on every path the op picks by M
    and by the weight's size: the GEMV, the fused GEMM and dequantize + cuBLAS."""
    fmt, options = mode
    qw = qk.quantize(gpu_fuzz_weight(n, k, DEVICE), fmt, group_size, **options)
    x = laid_out(torch.randn(m, k, device=DEVICE, dtype=dtype), layout)
    bias = torch.randn(n, device=DEVICE, dtype=dtype) if with_bias else None
    y = qk.matmul(x, qw, bias, backend="triton")
    assert y.shape == (m, n) and y.dtype == dtype and bool(torch.isfinite(y).all())
    # Norm-wise: a single output (N = M = 1) may cancel to near zero, which ||ref|| would not
    # survive.
    err = normwise_rel_err(y, fp64_reference(x, qw, bias), x, qk.dequantize(qw), bias)
    assert err <= REL_TOL[dtype], f"relative error {err:.2e} > {REL_TOL[dtype]:.0e}"


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("fmt,symmetric", FORMATS, ids=FORMAT_IDS)
def test_torch_compile_fullgraph(fmt, symmetric):
    qw = random_quantized(64, 256, fmt, 64, symmetric)

    @torch.compile(fullgraph=True)
    def f(x):
        return torch.relu(ops.matmul_triton_op(x, qw.fmt, qw.qweight, qw.scale_tensor, qw.zeros,
                                               qw.group_size, None))

    for m in (1, 3, 40, qk_triton.FUSED_GEMM_MAX_M + 1):
        x = torch.randn(m, 256, device="cuda", dtype=torch.float16)
        y = f(x)
        assert rel_err(y, fp64_reference(x, qw).relu()) <= REL_TOL[torch.float16]


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("warm_workspace", [True, False], ids=["warm", "cold"])
@pytest.mark.parametrize("m", [2, 16, qk_triton.FUSED_GEMM_MAX_M + 1])
def test_cuda_graph_capture(m, warm_workspace, monkeypatch):
    # Many rows: the dequantized weight's buffer is allocated inside the capture. Few rows
    # (split-K): the graph takes the workspace its warm-up left zeroed ("warm"), or ("cold",
    # none left) a new one that it zeroes itself; replays and eager calls take turns on them.
    x, qw, b = sample_inputs(m, 512, 1024, "nf4", group_size=64, bias=True)
    y = triton_op(x, qw, b)  # warm-up: compiles
    if not warm_workspace:
        monkeypatch.setattr(common, "_WORKSPACES", {})
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = triton_op(x, qw, b)
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(y, x, qw, b)
        assert_close(triton_op(x, qw, b), x, qw, b)
    assert_workspaces_zeroed()


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("m", [1, 4, 16])
@pytest.mark.parametrize("fmt,group_size", [("int4", 128), ("nf4", 64), ("int8", None)])
def test_each_matmul_reads_what_the_kernel_before_it_wrote(fmt, group_size, m):
    # On sm_90 the GEMV and the GEMM start before the kernel ahead of them ends
    # (common.dependent_launch) and wait for it before their first load: a chain of matmuls,
    # each reading the output of the one before, then one reading the weights a copy has just
    # written; eager, then as a graph.
    n = k = 2048
    weights = [qk.quantize(torch.randn(n, k, device=DEVICE) / k ** 0.5, fmt, group_size)
               for _ in range(4)]
    new_codes = weights[3].qweight.clone()

    def chain(x):
        outputs = [x]
        for qw in weights[:3]:
            outputs.append(triton_op(outputs[-1], qw))
        weights[3].qweight.copy_(new_codes)
        outputs.append(triton_op(outputs[-1], weights[3]))
        return outputs

    x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
    for graphed in (False, True):
        weights[3].qweight.zero_()
        if graphed:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = chain(x)
            x.copy_(torch.randn_like(x))
            weights[3].qweight.zero_()
            graph.replay()
        else:
            outputs = chain(x)
        torch.cuda.synchronize()
        for qw, x_in, y in zip(weights, outputs, outputs[1:]):
            assert_close(y, x_in, qw)


@pytest.mark.cuda
@cuda_only
def test_cuda_graph_survives_the_workspace_growing():
    # The graph keeps the workspace it was captured with after a larger call grows it.
    x, qw, b = sample_inputs(1, 512, 1024, "int4", group_size=128, bias=True)
    triton_op(x, qw, b)  # warm-up: compiles, zeroes the workspaces
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = triton_op(x, qw, b)
    x_large, qw_large, b_large = sample_inputs(1, 4096, 4096, "int4", group_size=128, bias=True,
                                               seed=1)
    assert_close(triton_op(x_large, qw_large, b_large), x_large, qw_large, b_large)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(y, x, qw, b)
    assert_workspaces_zeroed()


@pytest.mark.cuda
@cuda_only
def test_split_k_workspace_per_stream():
    # Eager launches on two streams may run at once: each stream has its own workspace.
    x, qw, b = sample_inputs(1, 512, 1024, "int4", group_size=128, bias=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y_side = run_kernel(gemv, x, qw, b, split_k=4)
    y = run_kernel(gemv, x, qw, b, split_k=4)
    torch.cuda.current_stream().wait_stream(side)
    assert_close(y, x, qw, b)
    assert_close(y_side, x, qw, b)
    streams = {key[1] for key in common._WORKSPACES if key[1] != common.GRAPHS}
    assert {side.cuda_stream, torch.cuda.current_stream().cuda_stream} <= streams
    assert_workspaces_zeroed()


@pytest.mark.cuda
@cuda_only
def test_qk_matmul_triton_backend():
    x, qw, _ = sample_inputs(5, 64, 256, "int4", group_size=64)
    assert_close(qk.matmul(x, qw, backend="triton"), x, qw)
