"""What the Triton GEMV (gemv.py) and GEMM (gemm.py) kernels share: dequantizing one weight tile
from the canonical tensors, the output epilogue (bias, rounding, split-K reduction), and the
launch-time choices both make (autotune switch, split-K factor, scale layout, workspace).

Canonical tensors (shared/DESIGN.md section 3), read as they are stored:
  qweight  int8 [N, K] (int8) or uint8 [N, ceil(K/2)] (int4, nf4: byte j = k 2j low nibble,
           k 2j+1 high nibble), rows contiguous
  scales   fp32 [N, G] (nf4: absmax), zeros fp32 [N, G] (int4 only; None = symmetric, zero 8)

Nothing here touches the GPU at import: device properties are read on first launch and cached.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .. import formats

AUTOTUNE_ENV_VAR = "QKERNELS_TRITON_AUTOTUNE"
INTERPRET_ENV_VAR = "TRITON_INTERPRET"

FORMAT_INT8: tl.constexpr = tl.constexpr(formats.FORMAT_IDS["int8"])
FORMAT_INT4: tl.constexpr = tl.constexpr(formats.FORMAT_IDS["int4"])
FORMAT_NF4: tl.constexpr = tl.constexpr(formats.FORMAT_IDS["nf4"])
INT4_SYMMETRIC_ZERO: tl.constexpr = tl.constexpr(formats.INT4_SYMMETRIC_ZERO)

# The interpreter has no SMs; a small count makes the split-K heuristic split small test shapes,
# so the tests run the split-K reduction without forcing it.
INTERPRETER_SM_COUNT = 4
MAX_SPLIT_K = 16


@triton.jit
def dequantize_tile(qweight_ptr, scales_ptr, zeros_ptr, nf4_table_ptr, offs_n, k_start,
                    N, K, group_size, num_groups, stride_qn,
                    FORMAT: tl.constexpr, HAS_ZEROS: tl.constexpr, SCALE_PER_TILE: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """W[offs_n, k_start : k_start + BLOCK_K] in fp32, shape [BLOCK_N, BLOCK_K].

    Rows n >= N read scale 0 (so are 0); columns k >= K are finite junk that the caller cancels
    with zero activations. SCALE_PER_TILE: the tile lies in one group (group_size % BLOCK_K == 0
    or one group per row), so one scale per row is loaded instead of one per element.
    """
    offs_k = k_start + tl.arange(0, BLOCK_K)
    row_ok = offs_n < N
    if FORMAT == FORMAT_INT8:
        codes = tl.load(qweight_ptr + offs_n[:, None] * stride_qn + offs_k[None, :],
                        mask=row_ok[:, None] & (offs_k[None, :] < K), other=0)
        values = codes.to(tl.float32)
    else:
        # Whole bytes along K (wide, vectorizable loads), then low/high nibbles interleaved so
        # column 2j is the low nibble of byte j.
        offs_byte = k_start // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(qweight_ptr + offs_n[:, None] * stride_qn + offs_byte[None, :],
                         mask=row_ok[:, None] & (offs_byte[None, :] < (K + 1) // 2), other=0)
        codes = tl.interleave(packed & 0xF, packed >> 4)
        if FORMAT == FORMAT_NF4:
            values = tl.load(nf4_table_ptr + codes)  # 64-byte table: stays in L1
        else:
            values = codes.to(tl.float32)

    if SCALE_PER_TILE:
        group_offsets = (offs_n * num_groups + k_start // group_size)[:, None]
        group_mask = row_ok[:, None]
    else:
        group_offsets = offs_n[:, None] * num_groups + (offs_k // group_size)[None, :]
        group_mask = row_ok[:, None] & (offs_k[None, :] < K)
    scale = tl.load(scales_ptr + group_offsets, mask=group_mask, other=0.0)
    if FORMAT == FORMAT_INT4:
        if HAS_ZEROS:
            values -= tl.load(zeros_ptr + group_offsets, mask=group_mask, other=0.0)
        else:
            values -= INT4_SYMMETRIC_ZERO
    return values * scale


@triton.jit
def _write_output(acc, y_ptr, bias_ptr, offs_m, offs_n, M, N, stride_ym, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def store_output(acc, y_ptr, bias_ptr, partials_ptr, tile_counters_ptr, tile_id, offs_m, offs_n,
                 M, N, stride_ym, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """y[offs_m, offs_n] = acc (+ bias), rounded once to y's dtype.

    With SPLIT_K > 1, each of the SPLIT_K programs of an output tile adds its fp32 partial sum
    into ``partials`` (fp32 [M, N], zeroed) and counts itself in ``tile_counters[tile_id]``
    (int32, zeroed); the last to arrive reads the total and writes y. One launch, no second
    pass over y, and the output is rounded once, like the unsplit kernel.
    """
    if SPLIT_K == 1:
        _write_output(acc, y_ptr, bias_ptr, offs_m, offs_n, M, N, stride_ym, HAS_BIAS)
    else:
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        partial_ptrs = partials_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.atomic_add(partial_ptrs, acc, mask=mask, sem="relaxed")
        # Every thread's adds are issued before the one counter update that releases them.
        tl.debug_barrier()
        arrived = tl.atomic_add(tile_counters_ptr + tile_id, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            # .cg: read the sums from L2, where the atomics landed, not a stale L1 line.
            total = tl.load(partial_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
            _write_output(total, y_ptr, bias_ptr, offs_m, offs_n, M, N, stride_ym, HAS_BIAS)


# --- launch-time choices ------------------------------------------------------------------------

def interpreting() -> bool:
    return os.environ.get(INTERPRET_ENV_VAR, "0") == "1"


def autotune_enabled() -> bool:
    """Autotune unless QKERNELS_TRITON_AUTOTUNE=0; never under the interpreter, which has no
    timer to tune with."""
    return os.environ.get(AUTOTUNE_ENV_VAR, "1") != "0" and not interpreting()


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SM_COUNT
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int) -> tuple:
    return torch.cuda.get_device_capability(index)


def capability(device: torch.device):
    """(major, minor) of a CUDA device; None for the interpreter on CPU tensors."""
    if device.type != "cuda":
        return None
    return _cuda_capability(device.index if device.index is not None else torch.cuda.current_device())


def choose_split_k(output_tiles: int, k_tiles: int, device: torch.device, programs_per_sm: int,
                   min_k_tiles_per_split: int) -> int:
    """Smallest power of two that gives every SM ``programs_per_sm`` programs, while each split
    keeps at least ``min_k_tiles_per_split`` tiles of K (fewer makes the reduction dominate)."""
    target = programs_per_sm * sm_count(device)
    split = 1
    while (output_tiles * split < target and split * 2 <= MAX_SPLIT_K
           and k_tiles >= 2 * split * min_k_tiles_per_split):
        split *= 2
    return split


def scale_per_tile(group_size: int, num_groups: int, block_k: int) -> bool:
    """True when every BLOCK_K tile (starting at a multiple of BLOCK_K) lies inside one group."""
    return num_groups == 1 or group_size % block_k == 0


def fit_block_k(block_k: int, group_size: int, num_groups: int, min_block_k: int) -> int:
    """BLOCK_K shrunk to a power-of-two group size below it, so scales load once per tile row;
    other group sizes keep BLOCK_K and load a scale per element (correct, slower)."""
    if scale_per_tile(group_size, num_groups, block_k):
        return block_k
    if group_size >= min_block_k and group_size & (group_size - 1) == 0 and group_size < block_k:
        return group_size
    return block_k


def split_k_workspace(m: int, n: int, max_tiles: int, device: torch.device):
    """Zeroed fp32 partial sums [M, N] and int32 tile counters [max_tiles], in one allocation
    (one memset)."""
    buffer = torch.zeros(m * n + max_tiles, dtype=torch.float32, device=device)
    return buffer[: m * n], buffer[m * n:].view(torch.int32)


def config_key(config: triton.Config) -> tuple:
    return tuple(sorted(config.kwargs.items())) + (config.num_warps, config.num_stages)


def unique_configs(configs) -> list:
    seen = {}
    for config in configs:
        seen.setdefault(config_key(config), config)
    return list(seen.values())
