"""Triton GEMM for a moderate number of rows of x (the op runs it for GEMV_MAX_M < M <=
fused_gemm_max_m(), dequant.py above): y[M, N] = x[M, K] @ dequant(W[N, K]).T.

Each program owns a BLOCK_M x BLOCK_N output tile and walks K in BLOCK_K steps: it loads the x
tile and the packed weight tile, dequantizes the weights in registers (fp32, then rounded to x's
dtype, the precision the tensor cores take), and accumulates tl.dot in fp32. Per-channel int8
(ROW_SCALE) goes into the dot as its exact codes and its scale multiplies the fp32 sums, as the
CUDA backend does. W is never written out dequantized. Programs are ordered in GROUP_M-row bands
so a band's weight tiles are reused from L2; split-K (reduced by common.store_output) fills the
SMs when M is small.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_wait

from .. import formats
from . import common
from .common import (dequantize_tile, four_bit_values, int8_codes_for_dot, load_group_scales,
                     load_int8_codes, load_packed, store_output)

# tl.dot needs every tile dimension >= 16; tile counters are sized for the smallest tiles.
MIN_BLOCK = 16
# The shortest K tile, also where every weight loads its own scale (see _adapt). On the H100
# (Triton 3.6) 16-deep tiles fitted to groups of 16 gave wrong sums (relative error 1.5 in
# test_nf4_double_quant_kernels_read_the_codes; the interpreter was right).
MIN_BLOCK_K = 32
MAX_M_BUCKET = 4096
# Split-K only pays below this M (above it the output tiles alone fill the GPU), so only here
# is the workspace allocated.
SPLIT_K_MAX_M = 256
# The split-K heuristic's target programs per SM and least K tiles per split, by default and by
# (format, BLOCK_M). nf4's tiles are 64 deep (its groups); it ran fastest split to 4 programs per
# SM while each split keeps 512 of K, the least int4's default keeps (calls j4, j6-j8 of 25 Nov,
# "GEMM at 64 rows" in bench/NOTES.md): on the four gpu-goals shapes 1.07-1.14x at M = 64, up to
# 1.22x at M = 8 and 16, level at worst.
SPLIT_RULE = (1, 4)
SPLIT_RULES = {(formats.FORMAT_IDS["nf4"], block_m): (4, 8) for block_m in (16, 32, 64)}


@triton.jit
def gemm_kernel(
    x_ptr,              # [M, K] fp16 / bf16 / fp32, strides (stride_xm, stride_xk)
    qweight_ptr,        # int8 [N, K] or uint8 [N, ceil(K/2)], row stride stride_qn, bytes dense
    scales_ptr,         # fp32 [N, G] contiguous (nf4: absmax)
    zeros_ptr,          # fp32 [N, G] contiguous (int4 with HAS_ZEROS; otherwise unused)
    absmax_scales_ptr,  # fp32 [ceil(N G / 256)] (ABSMAX_DQ, scales_ptr = absmax codes; else unused)
    absmax_offsets_ptr,  # fp32 [ceil(N G / 256)] (ABSMAX_DQ; otherwise unused)
    bias_ptr,           # [N] in x's dtype (HAS_BIAS; otherwise unused)
    y_ptr,              # [M, N] in x's dtype, row stride stride_ym
    partials_ptr,       # fp32 [M, N], zeroed and left so (SPLIT_K > 1; otherwise unused)
    tile_counters_ptr,  # int32 [>= output tiles], the same (SPLIT_K > 1; otherwise unused)
    M, N, K, row_bytes, group_size, num_groups,
    stride_xm, stride_xk, stride_qn, stride_ym,
    M_BUCKET,                      # autotune key only (next power of two >= M, capped)
    FORMAT: tl.constexpr,          # formats.FORMAT_IDS
    HAS_ZEROS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ABSMAX_DQ: tl.constexpr,       # nf4 absmax as 8-bit codes (common.py)
    DOT_IN_FP32: tl.constexpr,     # fp32 x (exact "ieee" dot), or bf16 under the interpreter
    PTX_DECODE: tl.constexpr,      # 4-bit decode by inline PTX (common.ptx_decode_enabled)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,         # row tiles per band of the L2-friendly program order
    SCALE_PER_TILE: tl.constexpr,  # common.scale_per_tile
    SCALES_AHEAD: tl.constexpr,    # scales_ahead
    ROW_SCALE: tl.constexpr,       # int8 with one scale per row: applied to the fp32 sums
    SPLIT_K: tl.constexpr,
    DEPENDENT_LAUNCH: tl.constexpr,  # launched with launch_pdl (common.dependent_launch)
):
    """Program (pid, pid_k): output tile pid in band order, over the pid_k-th of SPLIT_K equal
    runs of BLOCK_K tiles of K."""
    if DEPENDENT_LAUNCH:  # as the GEMV's: nothing is read before the kernel ahead has ended
        gdc_wait()
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    band_size = GROUP_M * num_pid_n
    first_pid_m = (pid // band_size) * GROUP_M
    band_rows = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % band_size) % band_rows
    pid_n = (pid % band_size) // band_rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)

    k_tiles = tl.cdiv(K, BLOCK_K)
    tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
    first_tile = pid_k * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, k_tiles)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if SCALES_AHEAD:  # (an empty split, first_tile >= k_tiles, reads the last tile's)
        scale, zero = load_group_scales(scales_ptr, zeros_ptr, absmax_scales_ptr,
                                        absmax_offsets_ptr, offs_n,
                                        tl.minimum(first_tile, k_tiles - 1) * BLOCK_K // group_size,
                                        N, num_groups, HAS_ZEROS, ABSMAX_DQ)
    for tile in range(first_tile, last_tile):
        k_start = tile * BLOCK_K
        offs_k = k_start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        if SCALES_AHEAD:
            # The next tile's scales (on the last tile, its own again), by plain loads that
            # the pipeliner leaves alone: see scales_ahead.
            next_tile = tl.minimum(tile + 1, last_tile - 1)
            next_scale, next_zero = load_group_scales(
                scales_ptr, zeros_ptr, absmax_scales_ptr, absmax_offsets_ptr, offs_n,
                next_tile * BLOCK_K // group_size, N, num_groups, HAS_ZEROS, ABSMAX_DQ)
            packed, _ = load_packed(qweight_ptr, offs_n, k_start, N, row_bytes, stride_qn,
                                    BLOCK_K)
            w = four_bit_values(packed, scale, zero, FORMAT, x_ptr.dtype.element_ty)
            scale, zero = next_scale, next_zero
        elif ROW_SCALE:
            codes = load_int8_codes(qweight_ptr, offs_n, offs_k, N, row_bytes, stride_qn)
            w = int8_codes_for_dot(codes, x_ptr.dtype.element_ty, PTX_DECODE)
        else:
            w = dequantize_tile(qweight_ptr, scales_ptr, zeros_ptr,
                                absmax_scales_ptr, absmax_offsets_ptr, offs_n, k_start,
                                N, K, row_bytes, group_size, num_groups, stride_qn,
                                FORMAT, HAS_ZEROS, SCALE_PER_TILE, ABSMAX_DQ, BLOCK_K,
                                x_ptr.dtype.element_ty, PTX_DECODE)
        if DOT_IN_FP32:
            acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc,
                         input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)

    if ROW_SCALE:  # exact in fp32, where a scale rounded to fp16 can be subnormal
        acc *= tl.load(scales_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
    store_output(acc, y_ptr, bias_ptr, partials_ptr, tile_counters_ptr, pid, offs_m, offs_n,
                 M, N, stride_ym, HAS_BIAS, SPLIT_K)


# --- configs ------------------------------------------------------------------------------------

def _config(block_m, block_n, block_k, num_warps, num_stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k,
                          "GROUP_M": 8}, num_warps=num_warps, num_stages=num_stages)


# M <= 64: one row tile of BLOCK_M = the M bucket; weights dominate, so wide K tiles.
SMALL_M_TILES = [(64, 64, 4, 4), (64, 128, 4, 4), (128, 64, 4, 4), (128, 128, 4, 3),
                 (128, 128, 8, 3), (256, 64, 8, 3)]
# M = 65 ... 256 (above fused_gemm_max_m() the op dequantizes and calls cuBLAS instead): the
# usual tensor-core tile shapes, none taller than 128 rows.
LARGE_M_CONFIGS = [_config(*c) for c in [
    (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (128, 128, 32, 4, 4), (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3), (64, 256, 64, 8, 3), (128, 128, 128, 8, 3),
]]
CONFIG_SPACE = [_config(bm, bn, bk, w, s)
                for bm in (16, 32, 64) for (bn, bk, w, s) in SMALL_M_TILES]
CONFIG_SPACE += LARGE_M_CONFIGS

class DefaultTile(NamedTuple):
    """A row of DEFAULT_CONFIGS: ``config`` serves up to ``max_m`` rows of x (None: any),
    weights of format ``fmt`` (None: any) with more than ``above_weight`` elements, N K (None:
    any size)."""
    max_m: Optional[int]
    fmt: Optional[str]
    above_weight: Optional[int]
    config: triton.Config


WIDE_TILE_WEIGHT = 4096 * 4096
HUGE_WEIGHT = 1 << 27  # Llama-70B's MLP weights are larger
# Without autotuning (the default, common.autotune_enabled): per compute-capability major, the
# first row that matches. sm_90's were measured on an H100 (cold L2, CUDA-graph replay; the
# calls named are in bench/NOTES.md, "Triton"); sm_80's are starting points.
DEFAULT_CONFIGS = {
    9: [
        # int8, decoded by inline PTX, at 3 stages: 1.03-1.07x at M = 16 (k12; 28672x8192
        # 97.9 -> 91.4 us).
        DefaultTile(16, "int8", None, _config(16, 128, 128, 4, 3)),
        # The tile the tuner's picks lost to by up to 1.26x at M = 4-16 (a11).
        DefaultTile(16, None, None, _config(16, 128, 128, 4, 4)),
        # 3 stages against 4 (k15, M = 32): int4 1.09-1.23x, nf4 0.99-1.03x, int8 1.00-1.06x.
        DefaultTile(32, None, None, _config(32, 128, 128, 4, 3)),
        # int8 at 64 rows, swept in j2, j3 (through the op in j4: 28672x8192 172.1 -> 134.5 us).
        DefaultTile(64, "int8", None, _config(64, 128, 128, 8, 3)),
        # 4-bit at 33-64 rows on the largest weights (m9, m10): 1.01-1.30x on 28672x8192,
        # 8192x28672 and 57344x8192; 0.72-1.10x on 8192x8192 and smaller.
        DefaultTile(64, None, HUGE_WEIGHT, _config(64, 128, 128, 4, 3)),
        # The tuner's choice for int4 on 14336x4096 and 4096x4096 (a11: 68.9 -> 46.4 us and
        # 24.0 -> 18.7 against 64 x 128 x 64).
        DefaultTile(64, None, None, _config(64, 64, 128, 4, 4)),
        # From 65 rows up to the fused GEMM's limit (fused_gemm_max_m, __init__.py): 1.04-1.32x
        # on the three large gpu-goals shapes, 1.00-1.12x on 6144x4096 (m2, m13); 128 x 256 x 64
        # was slower everywhere (m3).
        DefaultTile(None, None, WIDE_TILE_WEIGHT, _config(128, 128, 64, 8, 3)),
        # ... and on the smaller weights, 1.00-1.18x faster than the wider tile (m13).
        DefaultTile(None, None, None, _config(128, 64, 64, 4, 4)),
    ],
    8: [
        DefaultTile(16, None, None, _config(16, 128, 128, 4, 4)),
        DefaultTile(32, None, None, _config(32, 128, 64, 4, 4)),
        DefaultTile(64, None, None, _config(64, 128, 64, 4, 4)),
        DefaultTile(None, None, None, _config(128, 128, 64, 8, 3)),
    ],
}
# fp32 x (rare on GPUs): an exact fp32 dot runs on CUDA cores, not tensor cores, so it is a
# correctness path with one config, the largest that compiles without register spills on sm_80
# and sm_90 (ptxas: 64x64x32 with 4 warps spills ~400 bytes per thread, with 8 warps none).
FP32_CONFIG = _config(64, 64, 32, 8, 2)


def scales_ahead(fmt_id: int, ptx_decode: bool, scale_per_tile: bool, block_m: int,
                 device: torch.device) -> bool:
    """The kernel's SCALES_AHEAD: each tile's scales and zero points loaded by plain loads one
    tile ahead, for 4-bit weights decoded by inline PTX on sm_90 tiles of >= 64 rows (wgmma).
    Otherwise Triton's pipeliner copies them to shared memory with the weights: a 4-byte
    cp.async per row from each of the several threads that decode the row, each from its own
    sector of the row-major [N, G] scales. Plain loads hit L1 for the next groups of the
    sector. Measured (call l4 of 25 Nov, H100, 48-128 rows): int4 g128 1.04-1.25x, nf4 g64
    1.04-1.07x. At 16 and 32 rows (mma.sync) the loaded scales went through shared memory
    to reach the decode's layout (128 stores a loop in the SASS), so those tiles keep the
    copies."""
    return (ptx_decode and scale_per_tile and fmt_id != formats.FORMAT_IDS["int8"]
            and block_m >= 64 and device.type == "cuda" and common.capability(device)[0] >= 9)


def m_bucket(m: int) -> int:
    return min(max(triton.next_power_of_2(m), MIN_BLOCK), MAX_M_BUCKET)


def _adapt(config: triton.Config, group_size: int, num_groups: int) -> triton.Config:
    kwargs = dict(config.kwargs)
    kwargs["BLOCK_K"] = common.fit_block_k(kwargs["BLOCK_K"], group_size, num_groups, MIN_BLOCK_K)
    num_stages = config.num_stages
    if not common.scale_per_tile(group_size, num_groups, kwargs["BLOCK_K"]):
        # Group sizes no BLOCK_K divides (odd ones, 16) load a scale and a zero per weight: the
        # 16x128x128 tile at 4 stages asked for 233472 bytes of shared memory on the H100
        # (232448 there). A correctness path: the shortest K tile, two stages.
        kwargs["BLOCK_K"], num_stages = MIN_BLOCK_K, 2
    return triton.Config(kwargs, num_warps=config.num_warps, num_stages=num_stages)


def prune_configs(configs, named_args, **kwargs):
    """The tile shapes meant for this M bucket, fitted to the groups (fp32 x: FP32_CONFIG)."""
    group_size, num_groups = named_args["group_size"], named_args["num_groups"]
    if named_args["x_ptr"].dtype == torch.float32:
        return [_adapt(FP32_CONFIG, group_size, num_groups)]
    bucket = named_args["M_BUCKET"]
    kept = [_adapt(c, group_size, num_groups) for c in configs
            if (c.kwargs["BLOCK_M"] == bucket if bucket <= 64 else c.kwargs["BLOCK_M"] >= 64)]
    return common.unique_configs(kept)


def default_config(cap, m: int, fmt: str, dtype: torch.dtype, group_size: int,
                   num_groups: int, weight_size: int) -> triton.Config:
    """The untuned config for compute capability ``cap`` ((major, minor); None: interpreter)
    and a weight of ``weight_size`` (N K) elements."""
    if dtype == torch.float32:
        return _adapt(FP32_CONFIG, group_size, num_groups)
    table = DEFAULT_CONFIGS.get(cap[0], DEFAULT_CONFIGS[8]) if cap else DEFAULT_CONFIGS[8]
    tile = next(t for t in table
                if (t.max_m is None or m <= t.max_m) and t.fmt in (None, fmt)
                and (t.above_weight is None or weight_size > t.above_weight))
    return _adapt(tile.config, group_size, num_groups)


def _split_k(args) -> int:
    if args.get("SPLIT_K") is not None:
        return args["SPLIT_K"]  # chosen by the launcher (untuned launch, tests, benchmarks)
    if args["M"] > SPLIT_K_MAX_M:
        return 1
    tiles = triton.cdiv(args["M"], args["BLOCK_M"]) * triton.cdiv(args["N"], args["BLOCK_N"])
    programs_per_sm, min_k_tiles = SPLIT_RULES.get((args["FORMAT"], args["BLOCK_M"]), SPLIT_RULE)
    return common.choose_split_k(tiles, triton.cdiv(args["K"], args["BLOCK_K"]),
                                 args["y_ptr"].device, programs_per_sm, min_k_tiles)


_kernel = triton.heuristics({
    "SCALE_PER_TILE": lambda a: common.scale_per_tile(a["group_size"], a["num_groups"],
                                                      a["BLOCK_K"]),
    "SCALES_AHEAD": lambda a: scales_ahead(a["FORMAT"], a["PTX_DECODE"], a["SCALE_PER_TILE"],
                                           a["BLOCK_M"], a["y_ptr"].device),
    "ROW_SCALE": lambda a: a["FORMAT"] == formats.FORMAT_IDS["int8"] and a["num_groups"] == 1,
    "SPLIT_K": _split_k,
})(gemm_kernel)

_autotuned_kernel = triton.autotune(
    configs=CONFIG_SPACE,
    key=["M_BUCKET", "N", "K", "FORMAT", "HAS_ZEROS", "ABSMAX_DQ", "group_size"],
    prune_configs_by={"early_config_prune": prune_configs},
)(_kernel)


# --- launcher -----------------------------------------------------------------------------------

def matmul(x, fmt, qweight, scales, zeros, group_size, bias, y, config=None,
           split_k=None, absmax_dq=None):
    """y[M, N] = x[M, K] @ dequant(W).T (+ bias), x 2-D with M >= 1, y preallocated in x's
    dtype. ``config`` / ``split_k`` force a tile shape / split (tests, benchmarks); otherwise
    the autotuned or per-GPU default config and the split-K heuristic decide.
    ``absmax_dq``: (absmax_scales, absmax_offsets) of a double-quantized nf4 weight, whose
    ``scales`` are then the absmax codes."""
    m, k = x.shape
    n = qweight.shape[0]
    num_groups = formats.num_groups(k, group_size)
    tuned = config is None and split_k is None and common.autotune_enabled()
    if not tuned:
        config = config or default_config(common.capability(x.device), m, fmt, x.dtype,
                                         group_size, num_groups, n * k)
        split_k = split_k or _split_k({"M": m, "N": n, "K": k, "y_ptr": y,
                                       "FORMAT": formats.FORMAT_IDS[fmt], **config.kwargs})
    if split_k == 1 or (tuned and m > SPLIT_K_MAX_M):
        partials, tile_counters = y, y  # never touched by an unsplit kernel
    else:
        max_tiles = triton.cdiv(m, MIN_BLOCK) * triton.cdiv(n, MIN_BLOCK)
        partials, tile_counters = common.split_k_workspace(m, n, max_tiles, x.device)
    absmax_scales, absmax_offsets = absmax_dq if absmax_dq is not None else (scales, scales)
    args = (x, qweight, scales, zeros if zeros is not None else scales, absmax_scales,
            absmax_offsets, bias if bias is not None else y, y, partials,
            tile_counters, m, n, k, qweight.shape[1], group_size, num_groups,
            x.stride(0), x.stride(1), qweight.stride(0), y.stride(0), m_bucket(m))
    # The interpreter's tl.dot multiplies bf16 bit patterns as integers (numpy has no bf16):
    # there, bf16 tiles (exact in fp32) go through the fp32 dot.
    dot_in_fp32 = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and common.interpreting())
    meta = dict(FORMAT=formats.FORMAT_IDS[fmt], HAS_ZEROS=zeros is not None,
                HAS_BIAS=bias is not None, ABSMAX_DQ=absmax_dq is not None,
                DOT_IN_FP32=dot_in_fp32, PTX_DECODE=common.ptx_decode_enabled(x.dtype),
                DEPENDENT_LAUNCH=common.dependent_launch(x.device))

    def grid(meta):
        tiles = triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])
        return (tiles, meta["SPLIT_K"])

    if tuned:
        _autotuned_kernel[grid](*args, **meta, launch_pdl=meta["DEPENDENT_LAUNCH"])
    else:
        _kernel[grid](*args, **meta, **config.kwargs, SPLIT_K=split_k,
                      num_warps=config.num_warps, num_stages=config.num_stages,
                      launch_pdl=meta["DEPENDENT_LAUNCH"])
    return y
