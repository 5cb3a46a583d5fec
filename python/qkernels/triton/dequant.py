"""Triton dequantize for many rows of x (prefill above fused_gemm_max_m(), in __init__.py):
W[N, K] = dequant(packed W) written once in x's dtype, then one torch.matmul (cuBLAS).

Why: the fused GEMM (gemm.py) dequantizes every weight tile once per row tile of x, so its
unpack work grows with M while cuBLAS's fp16 GEMM runs near the tensor cores' peak. Past a few
hundred rows, writing W out once (packed bytes read + 2 bytes per weight written, ~147 MB and
~60 us for 14336 x 4096) and handing the matmul to cuBLAS costs less than unpacking W M/BLOCK_M
times; the CUDA backend does the same (csrc/cuda/dequantize.cu). The dequantized copy is
allocated on every call (N x K x 2 bytes: 117 MB for 14336 x 4096) and freed after it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import formats
from . import common
from .common import dequantize_tile

# One tile per program: 16 rows x 256 k = 2 KiB of packed 4-bit codes read, 8 KiB of fp16
# written, 32 weights per thread with 4 warps; BLOCK_K is fitted to the groups (BLOCK_N grown).
# A streaming kernel with no reuse: one config, not tuned.
BLOCK_N = 16
BLOCK_K = 256
MAX_BLOCK_N = 128
MIN_BLOCK_K = 32
NUM_WARPS = 4


@triton.jit
def dequantize_kernel(
    qweight_ptr,        # int8 [N, K] or uint8 [N, ceil(K/2)], row stride stride_qn, bytes dense
    scales_ptr,         # fp32 [N, G] contiguous (nf4: absmax)
    zeros_ptr,          # fp32 [N, G] contiguous (int4 with HAS_ZEROS; otherwise unused)
    absmax_scales_ptr,  # fp32 [ceil(N G / 256)] (ABSMAX_DQ, scales_ptr = absmax codes; else unused)
    absmax_offsets_ptr,  # fp32 [ceil(N G / 256)] (ABSMAX_DQ; otherwise unused)
    w_ptr,              # [N, K] out, fp16 / bf16 / fp32, rows contiguous, row stride K
    N, K, row_bytes, group_size, num_groups, stride_qn,
    FORMAT: tl.constexpr,          # formats.FORMAT_IDS
    HAS_ZEROS: tl.constexpr,
    ABSMAX_DQ: tl.constexpr,       # nf4 absmax as 8-bit codes (common.py)
    PTX_DECODE: tl.constexpr,      # 4-bit decode by inline PTX (common.ptx_decode_enabled)
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SCALE_PER_TILE: tl.constexpr,  # common.scale_per_tile
):
    """Program (pid_n, pid_k) writes W[pid_n*BLOCK_N : +BLOCK_N, pid_k*BLOCK_K : +BLOCK_K] in
    w's dtype (common.dequantize_tile)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = tl.program_id(1) * BLOCK_K
    w = dequantize_tile(qweight_ptr, scales_ptr, zeros_ptr, absmax_scales_ptr,
                        absmax_offsets_ptr, offs_n, k_start, N, K, row_bytes, group_size,
                        num_groups, stride_qn, FORMAT, HAS_ZEROS, SCALE_PER_TILE, ABSMAX_DQ,
                        BLOCK_K, w_ptr.dtype.element_ty, PTX_DECODE)
    offs_k = k_start + tl.arange(0, BLOCK_K)
    tl.store(w_ptr + offs_n[:, None] * K + offs_k[None, :], w,
             mask=(offs_n < N)[:, None] & (offs_k < K)[None, :])


def dequantize(fmt, qweight, scales, zeros, group_size, k, dtype, absmax_dq=None):
    """dequant(W) as a new [N, K] tensor of ``dtype`` on qweight's device. ``absmax_dq``:
    (absmax_scales, absmax_offsets) of a double-quantized nf4 weight, whose ``scales`` are then
    the absmax codes."""
    n = qweight.shape[0]
    num_groups = formats.num_groups(k, group_size)
    w = torch.empty((n, k), dtype=dtype, device=qweight.device)
    block_n, block_k = common.fit_tile(BLOCK_N, BLOCK_K, group_size, num_groups, MIN_BLOCK_K,
                                       MAX_BLOCK_N)
    absmax_scales, absmax_offsets = absmax_dq if absmax_dq is not None else (scales, scales)
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    dequantize_kernel[grid](
        qweight, scales, zeros if zeros is not None else scales, absmax_scales, absmax_offsets,
        w, n, k, qweight.shape[1], group_size, num_groups, qweight.stride(0),
        FORMAT=formats.FORMAT_IDS[fmt], HAS_ZEROS=zeros is not None,
        ABSMAX_DQ=absmax_dq is not None, PTX_DECODE=common.ptx_decode_enabled(dtype),
        BLOCK_N=block_n, BLOCK_K=block_k,
        SCALE_PER_TILE=common.scale_per_tile(group_size, num_groups, block_k),
        num_warps=NUM_WARPS)
    return w
