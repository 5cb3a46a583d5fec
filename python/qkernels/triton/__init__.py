"""The Triton backend: registers the impl of torch.ops.qkernels.matmul_triton.

Importing this module (ops.py does so on the first triton-backend call) registers the impl for
CUDA tensors, and for CPU tensors too when TRITON_INTERPRET=1 (Triton's interpreter: the tests'
way to run the kernels without a GPU). It queries no GPU: device properties are read at the
first launch.

    gemv.py     M <= GEMV_MAX_M: CUDA-core multiply-adds on weight tiles dequantized in
                registers; M <= MMA_GEMV_MAX_M where gemv.mma_applies: tensor cores
    gemm.py     M <= fused_gemm_max_m(): tl.dot on weight tiles dequantized in registers
    dequant.py  larger M: W dequantized once into a buffer of x's dtype, then torch.matmul
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from . import common, dequant, gemm, gemv

# Rows of x up to which the GEMV kernel beats the GEMM kernel. GEMV spends M fp32 FMAs per weight
# on CUDA cores; GEMM pads M to 16 on tensor cores but routes each weight tile through shared
# memory. To be measured on each GPU: `python bench/triton_dev.py --threshold` times both kernels
# at M = 1..16 on Llama shapes; set this to the largest M where GEMV is faster.
# H100 (llama3-8b and llama3-70b suites, commit c5f1c07): on all 10 shapes the GEMV at M = 2 and
# 4 took 2-6x the GEMM's time at M = 8 (14336x4096 int4: 99.5 / 178 us against 36.5 us; M = 1
# 32.8 us); the GEMM pads rows to 16, so M = 2 and 4 cost it about what M = 8 does (not timed
# separately). Hence GEMV at M = 1 only on CUDA cores.
GEMV_MAX_M = 1
# The GEMV by tensor cores (gemv.mma_applies: int4 and nf4 on sm_90) takes up to 8 rows; against
# the GEMM, on the four gpu-goals shapes (H100, call h14 of 24 Nov, tenth session; bench/NOTES.md
# "Triton", GEMV v3) it was faster at M = 2-4 on 7 of 8 cells (1.1-1.4x, int4 on 4096x4096 7%
# slower) but at M = 8 slower on 4 of 8 (its split-K reduction of 8 rows on N = 4096).
MMA_GEMV_MAX_M = 4

# Rows of x up to which the fused GEMM runs; above, dequant.py writes W out once and cuBLAS
# multiplies. H100, fp16, us fused / dequantize + cuBLAS, int4 / symmetric int4 / nf4 / int8, on
# the > 64-row tiles of gemm.DEFAULT_CONFIGS (calls m2, m3 of 25 Nov, fourth session;
# bench/NOTES.md "Triton"):
# - 4096x4096: fused at M = 96 and 128 on every format (int4 23.3 / 28.6 at 128); dequantize +
#   cuBLAS at 192 and 256 on the 4-bit formats (int4 36.2 / 31.2 at 192); int8 1.04-1.07x fused.
# - 14336x4096, 4096x14336, 28672x8192: fused on every cell up to M = 256, 1.12-1.45x faster at
#   256 (14336x4096 int4 97.7 / 113.6, int8 87.4 / 119.3); at 384 dequantize + cuBLAS on 11 of 12
#   cells (14336x4096 int4 192.3 / 125.3; 28672x8192 int8 fused 494.1 / 513.0, int4-sym level).
FUSED_GEMM_MAX_M = 128
FUSED_GEMM_MAX_M_LARGE = 256  # weights with N K > LARGE_WEIGHT
LARGE_WEIGHT = 1 << 25


def fused_gemm_max_m(n, k):
    """The most rows of x the fused GEMM takes for an N x K weight."""
    return FUSED_GEMM_MAX_M_LARGE if n * k > LARGE_WEIGHT else FUSED_GEMM_MAX_M


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def matmul_triton(x, fmt, qweight, scales, zeros, group_size, bias):
    """Impl of qkernels::matmul_triton (arguments already checked by ops.check_matmul_args)."""
    return _launch(x, fmt, qweight, scales, zeros, group_size, bias, None)


def matmul_nf4_dq_triton(x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size,
                         bias):
    """Impl of qkernels::matmul_nf4_dq_triton (arguments checked by ops.check_nf4_dq_args): the
    same kernels, which load the 8-bit absmax codes in place of fp32 absmax and decode them."""
    return _launch(x, "nf4", qweight, absmax_codes, None, group_size, bias,
                   (absmax_scales.contiguous(), absmax_offsets.contiguous()))


def _launch(x, fmt, qweight, scales, zeros, group_size, bias, absmax_dq):
    k = x.shape[-1]
    n = qweight.shape[0]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    qweight, scales = qweight.contiguous(), scales.contiguous()
    zeros = None if zeros is None else zeros.contiguous()
    bias = None if bias is None else bias.contiguous()
    with _device_guard(x.device):
        if m > fused_gemm_max_m(n, k):
            w = dequant.dequantize(fmt, qweight, scales, zeros, group_size, k, x.dtype, absmax_dq)
            y = F.linear(x2, w, bias)
        else:
            y = torch.empty((m, n), dtype=x.dtype, device=x.device)
            if m > 0:
                takes_rows = m <= GEMV_MAX_M or (
                    m <= MMA_GEMV_MAX_M
                    and gemv.mma_applies(x2, fmt, qweight, group_size, absmax_dq))
                kernel = gemv if takes_rows else gemm
                kernel.matmul(x2, fmt, qweight, scales, zeros, group_size, bias, y,
                              absmax_dq=absmax_dq)
    return y.reshape(*x.shape[:-1], n)


_DEVICE_TYPES = ("cuda", "cpu") if common.interpreting() else ("cuda",)
torch.library.register_kernel("qkernels::matmul_triton", _DEVICE_TYPES, matmul_triton)
torch.library.register_kernel("qkernels::matmul_nf4_dq_triton", _DEVICE_TYPES,
                              matmul_nf4_dq_triton)
