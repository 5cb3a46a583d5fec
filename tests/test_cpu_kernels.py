"""Every CPU kernel path (QKERNELS_CPU_ISA in qkernels._C.cpu_isas()) against an fp64 reference:
all formats (int4 asymmetric and symmetric, nf4, int8, nf4 with double-quantized absmax), group
sizes, odd shapes on both sides of the GEMV/GEMM threshold, fp32 / bf16 / fp16 activations, with
and without bias."""

import dataclasses
import sys
import zlib
from pathlib import Path

import pytest
import torch

import qkernels as qk
from qkernels import _C, formats

ISAS = _C.cpu_isas()
ISA_ENV_VAR = "QKERNELS_CPU_ISA"

# (M, N, K): M on both sides of every path's GEMV/GEMM threshold; odd K (a half-filled last
# byte), K not a multiple of the group (a ragged last group), N not a multiple of any tile.
# K = 576 (SmolLM2) is whole groups of 32 and 96; 358 leaves an unpaired group of 32 or 96
# after the AVX2 block path and, at 96, a ragged last group off a 64-weight block boundary.
# M = 1 with N odd and tiny: the AVX2 GEMV's pairs of weight rows, an odd last row alone, a
# single row (N = 1), K below one block of 64. M = 1 with K = 1024: pairs whose block path
# covers every group, the zero points of 8 or 16 groups subtracted as vectors (576 at g = 64:
# 8 as a vector and one alone). M = 1 with K = 358: the pairs of weight rows leave an unpaired
# group of 32 or 96 and a ragged one to each row's generic tail.
SHAPES = [(1, 17, 577), (2, 33, 31), (3, 64, 1030), (5, 17, 256), (8, 19, 577), (17, 70, 130),
          (33, 17, 577), (1, 40, 576), (4, 9, 358), (1, 1, 1), (1, 3, 3), (1, 3, 17), (1, 5, 1030),
          (1, 6, 1024), (1, 7, 358)]
FORMATS = [("int4", False), ("int4", True), ("nf4", False), ("int8", False)]
GROUPS = [32, 64, 96, 128, -1]
# Norm-wise relative error allowed: fp32 accumulation for fp32 y; for 16-bit y the rounding of
# the output itself (2^-9 bf16, 2^-11 fp16 per element) on top.
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def relative_error(y, reference):
    return float((y.double() - reference).norm() / reference.norm())


def quantize_any_group(w, fmt, group_size, symmetric=False):
    """qk.quantize, and also group sizes it does not offer but a file may carry (96): the
    codes of group 32 with every (group_size / 32)-th group's scale and zero point, a valid
    canonical weight for the kernels to compare with its dequantization."""
    if group_size == -1 or group_size in formats.GROUP_SIZES:
        return qk.quantize(w, fmt, group_size, symmetric=symmetric)
    fine = qk.quantize(w, fmt, 32, symmetric=symmetric)
    every = group_size // 32
    coarse = {name: t[:, ::every].contiguous() for name, t in fine.tensors().items()
              if name != "qweight"}
    return dataclasses.replace(fine, group_size=group_size, **coarse)


@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("fmt,symmetric", FORMATS, ids=["int4", "int4-sym", "nf4", "int8"])
@pytest.mark.parametrize("isa", ISAS)
def test_cpu_path_matches_fp64(monkeypatch, isa, fmt, symmetric, group_size):
    monkeypatch.setenv(ISA_ENV_VAR, isa)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{isa}-{fmt}-{symmetric}-{group_size}".encode()))
    for m, n, k in SHAPES:
        if group_size != -1 and group_size > k:
            continue  # resolves to per channel: covered by -1
        w = torch.randn(n, k, generator=gen)
        qw = quantize_any_group(w, fmt, group_size, symmetric=symmetric)
        check_cpu_matmul(qw, m, (torch.float32, torch.bfloat16, torch.float16), gen,
                         f"{isa} {fmt}{'-sym' if symmetric else ''} g={group_size}")


def check_cpu_matmul(qw, m, dtypes, gen, label):
    """qk.matmul on the cpu backend against fp64, for each x dtype, with and without bias."""
    n, k = qw.shape
    w_exact = qk.dequantize(qw).double()
    for dtype in dtypes:
        x = torch.randn(m, k, generator=gen).to(dtype)
        for bias in (None, torch.randn(n, generator=gen).to(dtype)):
            y = qk.matmul(x, qw, bias, backend="cpu")
            assert y.shape == (m, n) and y.dtype == dtype and y.device == x.device
            reference = x.double() @ w_exact.T
            if bias is not None:
                reference += bias.double()
            error = relative_error(y, reference)
            assert error <= TOLERANCE[dtype], (
                f"{label} m={m} n={n} k={k} x={dtype} bias={bias is not None}: "
                f"rel err {error:.3g}")


def test_unavailable_isa_raises(monkeypatch):
    missing = next((isa for isa in ("avx2", "neon") if isa not in ISAS), None)
    if missing is None:
        pytest.skip("every ISA is available here")
    monkeypatch.setenv(ISA_ENV_VAR, missing)
    qw = qk.quantize(torch.randn(8, 64), "int4")
    with pytest.raises(ValueError, match=ISA_ENV_VAR):
        qk.matmul(torch.randn(2, 64), qw, backend="cpu")


def test_unknown_isa_raises(monkeypatch):
    monkeypatch.setenv(ISA_ENV_VAR, "avx512")
    qw = qk.quantize(torch.randn(8, 64), "nf4")
    with pytest.raises(ValueError, match=ISA_ENV_VAR):
        qk.matmul(torch.randn(2, 64), qw, backend="cpu")


def test_best_isa_is_default(monkeypatch):
    monkeypatch.delenv(ISA_ENV_VAR, raising=False)
    assert _C.cpu_best_isa() in ISAS
    qw = qk.quantize(torch.randn(17, 577), "int4")
    x = torch.randn(3, 577)
    monkeypatch.setenv(ISA_ENV_VAR, _C.cpu_best_isa())
    forced = qk.matmul(x, qw, backend="cpu")
    monkeypatch.delenv(ISA_ENV_VAR)
    assert torch.equal(qk.matmul(x, qw, backend="cpu"), forced)


@pytest.mark.parametrize("group_size", [32, 64, 96, -1])
@pytest.mark.parametrize("fmt", ["int4", "nf4", "int8"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("x_scale", [1e-36, 1e30])
def test_extreme_activation_magnitudes(monkeypatch, isa, fmt, x_scale, group_size):
    # The AVX2 GEMV scales a permuted copy of x by up to 16^-6 (int4) or 2^-24 (int8); x near the
    # bottom of the fp32 range must not lose bits to subnormals (it takes the unscaled path), nor
    # x near the top.
    monkeypatch.setenv(ISA_ENV_VAR, isa)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{isa}-{fmt}-{x_scale}-{group_size}".encode()))
    w = torch.randn(19, 577, generator=gen)
    qw = quantize_any_group(w, fmt, group_size)
    x = torch.randn(3, 577, generator=gen) * x_scale
    x[1, 5] = 1.0  # one normal value in a row of tiny ones: the row must still be exact
    y = qk.matmul(x, qw, backend="cpu")
    reference = x.double() @ qk.dequantize(qw).double().T
    for row in range(3):
        error = relative_error(y[row], reference[row])
        assert error <= TOLERANCE[torch.float32], f"{isa} {fmt} x*{x_scale:g} row {row}: rel err {error:.3g}"
        # The same row alone: the M = 1 paths (int4's pairs of weight rows).
        error = relative_error(qk.matmul(x[row:row + 1], qw, backend="cpu")[0], reference[row])
        assert error <= TOLERANCE[torch.float32], f"{isa} {fmt} x*{x_scale:g} row {row} alone: rel err {error:.3g}"


@pytest.mark.skipif(sys.platform != "linux", reason="checks the ELF dependencies of the extension")
def test_extension_parallelises_with_torch_openmp():
    # at::parallel_for is a header template: with torch's OpenMP backend the binding must be
    # built with OpenMP, or every CPU matmul silently runs on one thread.
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch is not built with the OpenMP parallel backend")
    assert b"libgomp.so" in Path(_C.__file__).read_bytes(), "qkernels._C was built without OpenMP"


# --- nf4 with double-quantized absmax (cpu::qmatmul decodes it per tile of weight rows) -------

def random_double_quantized(n, k, group_size, gen):
    """nf4 with random codes and absmax (spanning 2^-4 to 2^4), double-quantized; any group size
    >= 1, as canonical tensors from a file may carry (quantize() takes a fixed list)."""
    qweight = torch.randint(0, 256, (n, (k + 1) // 2), generator=gen, dtype=torch.uint8)
    if k % 2:
        qweight[:, -1] &= 0xF  # odd K: the last high nibble is 0
    absmax = torch.exp2(torch.rand(n, -(-k // group_size), generator=gen) * 8 - 4)
    dq = dict(zip(formats.DOUBLE_QUANT_NAMES, formats.double_quantize_absmax(absmax)))
    return qk.QuantizedWeight("nf4", (n, k), group_size, qweight, **dq)


# (M, N, K, group): blocks of 256 codes that straddle rows (N * G not a multiple of 256, G not a
# divisor of 256), ragged last groups, odd K, odd groups (the GEMV's scalar fallback), and N * G
# large enough that a call decodes several tiles of rows (kDecodedAbsmaxFloats = 65536: group 2
# at K = 1030 is 515 codes a row, 127 rows a tile).
DQ_SHAPES = [(1, 1, 1, 64), (3, 3, 17, 16), (1, 17, 577, 64), (9, 17, 577, 32), (2, 64, 576, 5),
             (17, 19, 577, 1), (1, 300, 1030, 2), (12, 300, 1030, 2)]


@pytest.mark.parametrize("isa", ISAS)
def test_cpu_path_double_quant_matches_fp64(monkeypatch, isa):
    monkeypatch.setenv(ISA_ENV_VAR, isa)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{isa}-nf4-dq".encode()))
    for m, n, k, group_size in DQ_SHAPES:
        qw = random_double_quantized(n, k, group_size, gen)
        check_cpu_matmul(qw, m, (torch.float32, torch.bfloat16), gen,
                         f"{isa} nf4-dq g={group_size}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m_extra", [0, 20], ids=["gemv", "gemm"])
def test_cpu_decoded_absmax_matches_formats(monkeypatch, isa, m_extra):
    # Every code 15 (NF4 1.0) and x one-hot at the first column of group g: y[g, n] is
    # absmax[n, g] exactly as the kernels decoded it (the other products are exact zeros).
    # Against formats.decode_absmax: both round log2(absmax) once; torch.exp2 is within 1 ulp,
    # the C++ exp2 within ~1.5 (measured: 89% bit-equal, at most 1.2e-7 apart, i.e. 1 ulp).
    monkeypatch.setenv(ISA_ENV_VAR, isa)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{isa}-absmax-{m_extra}".encode()))
    n, k, group_size = 37, 640, 16
    groups = k // group_size
    absmax = torch.exp2(torch.rand(n, groups, generator=gen) * 40 - 20)
    dq = dict(zip(formats.DOUBLE_QUANT_NAMES, formats.double_quantize_absmax(absmax)))
    qw = qk.QuantizedWeight("nf4", (n, k), group_size,
                            torch.full((n, k // 2), 0xFF, dtype=torch.uint8), **dq)
    x = torch.zeros(groups + m_extra, k)
    x[torch.arange(groups), torch.arange(groups) * group_size] = 1.0
    decoded = qk.matmul(x, qw, backend="cpu")[:groups].T
    expected = formats.decode_absmax(qw.absmax_codes, qw.absmax_scales, qw.absmax_offsets)
    assert float(((decoded - expected) / expected).abs().max()) < 3e-7
