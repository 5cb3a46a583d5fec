"""Triton GEMV for few rows of x (decode): y[M, N] = x[M, K] @ dequant(W[N, K]).T, M <= 16.

Memory-bound: every weight byte is read once, so the kernel streams W in wide row-contiguous
tiles, dequantizes in registers and does the M multiply-adds per weight on CUDA cores (tensor
cores would pad M to 16 and route W through shared memory). Split-K spreads short-and-wide
shapes (small N, long K) over all SMs; common.store_output reduces the splits in one launch.

Inner loops. The word path (_row_dot_words), for one row of x (the only GEMV the op runs:
GEMV_MAX_M in __init__.py) with whole 32-bit words of codes: int4 in three instructions per
weight, nf4 through the permute decode (common.nf4_word_values) where it runs (compiled, fp16 /
bf16 x), the group scale once per word. On sm_90 with K a multiple of 128, int4 (groups of
128 and more) and nf4 go to tensor cores instead, for up to 8 rows of x (_rows_dot_mma:
mma.sync by inline PTX on the tile as Triton lays it out, row m of x in column m of B;
bench/NOTES.md, Triton, "GEMV v3"). nf4
at one row on tiles in one group but not whole words: the byte path with the permute decode
(nf4_table_values). The byte path, for the rest: each code dequantized to fp32 in the load's
layout, then the multiply-adds; per-channel int8 with fp16 / bf16 x takes its exact codes by
inline PTX (common.int8_values) and its scale on the sums.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_wait

from .. import formats
from . import common
from .common import (FLOAT_ONE_BITS, FORMAT_INT8, FORMAT_NF4, INT4_SYMMETRIC_ZERO,
                     dequantize_nibble_pairs, dequantize_tile, int8_values, load_int8_codes,
                     load_packed, load_scale, load_x, load_x_row, nf4_table_values,
                     nf4_word_values, store_output)

# Output tiles are at least this wide, so cdiv(N, MIN_BLOCK_N) tile counters always suffice.
MIN_BLOCK_N = 8
MAX_BLOCK_N = 128
# Fp32 accumulator elements per thread (BLOCK_M * BLOCK_N * BLOCK_K / threads): beyond it the
# accumulator spills.
MAX_ACC_PER_THREAD = 64
# Split-K targets: enough programs per SM to keep loads in flight, and splits long enough that
# the atomic reduction stays a small part of the work, but down to one tile while SMs would
# sit idle: on the H100 that took SmolLM2-size layers at M = 1 from 4.9-7.7 to 3.8-4.0 us
# (576x1536 and 1536x576; bench/NOTES.md, Triton, "GEMV v3.2").
PROGRAMS_PER_SM = 4
MIN_K_TILES_PER_SPLIT = 4
IDLE_MIN_K_TILES_PER_SPLIT = 1
MIN_BLOCK_K = 32
# nf4 where the permute decode does not run (the interpreter, fp32 x): one load per weight from
# the 64-byte table (it stays in L1), not common.nf4_value's select tree: the GEMV's time tracks
# its instruction count, and per weight of its main loop on sm_90 the table costs 16.8 SASS
# instructions, the tree 27.2 (bench/triton_dev.py --sass, Triton 3.6; "Triton" in
# bench/NOTES.md). The GEMM cannot do the same: its software pipeliner turns the table load into
# a 4-byte cp.async per weight through shared memory (nf4 at 0.22x fp16 for M = 16).
NF4_FROM_TABLE = True
# 4-bit codes per 32-bit word, on the word path.
WORD_CODES: tl.constexpr = tl.constexpr(8)


@functools.lru_cache(maxsize=None)
def mma_asm(fmt: str, dtype: torch.dtype, has_zeros: bool, one_row: bool) -> tuple:
    """(PTX, constraints) for _rows_dot_mma, one asm block per 8 elements of a thread: rows
    i = 0, 1 (the thread's two rows of the tile) by words j = 0..3 (its four words of the
    tile), element 4 i + j. Operands: $0..$7 the fp32 accumulator out, $8..$15 in; $16..$23 the
    code words; then x: ``one_row``, the pairs (x0, x1), (x2, x3), (x4, x5), (x6, x7) of each
    word ($24, $32, $40, $48 + j); else the words' indices ($24 + j), x's address ($32), row
    stride in bytes ($40) and M ($48); $56 / $60 the rows' scales (int4) or, $56..$63, each
    word's absmax (nf4); $64 / $68 the rows' -s (z - 8) (int4 with ``has_zeros``; else unread).

    mma.m16n8k16 takes the thread's two rows as A's rows g and g + 8 (g = lane / 4) and row g
    of x as B's column g, which lane group g loads itself (16 bytes a word; zeros past M):
    D[row][m] is the row's dot with x row m over the 16 k its four lanes hold, and lane
    4 g + q holds columns 2 q and 2 q + 1, kept in its elements 4 i and 4 i + 1. One row of x
    comes in as operands instead (loaded by Triton early in the loop: 3-6% faster at M = 1
    than loads in the asm, which wait at once) and fills every column. All this holds because
    lanes 4 g .. 4 g + 3 hold the same rows and lanes with the same lane % 4 the same words
    (the [8, 4] threads of a 16-word tile; checked by _check_mma_layout).

    int4: each word's nibbles become exact (q - 8) pairs (k, k + 4) in x's dtype (one LOP3
    under the magic exponent, one fma); one tile's sums are scaled in fp32, and zero points
    take a second mma by ones that sums x. nf4: the permute decode (common.nf4_lookup_lines)
    gives pairs (k, k + 2) of the table rounded to x's dtype, times the word's absmax in that
    dtype (the CUDA backend's weights), accumulated in the mma across tiles."""
    nf4 = fmt == "nf4"
    half = dtype == torch.float16
    pair, mma_type, one = ("f16x2", "f16", 0x3C003C00) if half else ("bf16x2", "bf16", 0x3F803F80)
    mma = f"mma.sync.aligned.m16n8k16.row.col.f32.{mma_type}.{mma_type}.f32"
    lines = ["{", ".reg .pred live;", ".reg .b16 h;",
             ".reg .b32 g, hi, one, magic, minus, t, s, m, a, b, lo, p, q, nz, absmax;",
             ".reg .b32 x<4>, b<4>, r<8>;", ".reg .b64 row, address;", ".reg .f32 d<4>, e<4>;",
             f"mov.b32 one, {one:#010x};", "mov.b32 nz, 0x80008000;",  # fma(a, b, -0) = a b
             f"mov.b32 magic, {0x64006400 if half else 0x43004300:#010x};",
             # magic + q - (magic + 8) = q - 8, exact in either dtype
             f"mov.b32 minus, {0xE408E408 if half else 0xC308C308:#010x};"]
    if not one_row:
        lines += ["mov.u32 g, %laneid;", "shr.u32 g, g, 2;", "setp.lt.u32 live, g, $48;",
                  "mul.wide.u32 row, g, $40;", "add.s64 row, row, $32;"]
    if nf4:
        lines += ["mov.f32 d0, $8;", "mov.f32 d1, $9;", "mov.f32 d2, $12;", "mov.f32 d3, $13;"]
    else:
        lines += [f"mov.f32 d{c}, 0f00000000;" for c in range(4)]
        if has_zeros:
            lines += [f"mov.f32 e{c}, 0f00000000;" for c in range(4)]
    for j in range(4):
        if one_row:
            lines += [f"mov.b32 x{c}, ${24 + 8 * c + j};" for c in range(4)]
        else:
            lines += [f"mul.wide.u32 address, ${24 + j}, 16;", "add.s64 address, address, row;",
                      "mov.b32 x0, 0;", "mov.b32 x1, 0;", "mov.b32 x2, 0;", "mov.b32 x3, 0;",
                      "@live ld.global.nc.v4.b32 {x0, x1, x2, x3}, [address];"]
        if nf4:  # x as the decode pairs them: (0, 2), (4, 6), (1, 3), (5, 7)
            lines += ["prmt.b32 b0, x0, x1, 0x5410;", "prmt.b32 b1, x2, x3, 0x5410;",
                      "prmt.b32 b2, x0, x1, 0x7632;", "prmt.b32 b3, x2, x3, 0x7632;"]
        else:  # (0, 4), (1, 5), (2, 6), (3, 7)
            lines += ["prmt.b32 b0, x0, x2, 0x5410;", "prmt.b32 b1, x0, x2, 0x7632;",
                      "prmt.b32 b2, x1, x3, 0x5410;", "prmt.b32 b3, x1, x3, 0x7632;"]
        for i in range(2):
            word = f"${16 + 4 * i + j}"
            if nf4:
                lines += [f"cvt.rn.{mma_type}.f32 h, ${56 + 4 * i + j};",
                          "mov.b32 absmax, {h, h};"]
                for high, first in ((False, 0), (True, 2)):
                    lines += common.nf4_lookup_lines(dtype, high, word, "p", "q")
                    lines += [f"fma.rn.{pair} r{2 * first + i}, p, absmax, nz;",
                              f"fma.rn.{pair} r{2 * first + 2 + i}, q, absmax, nz;"]
            else:  # r[2 t + i]: nibbles t and t + 4 of the word
                for t in range(4):
                    source = word if t == 0 else "hi"
                    if t:
                        lines.append(f"shr.u32 hi, {word}, {4 * t};")
                    lines += [f"lop3.b32 r{2 * t + i}, {source}, 0x000f000f, magic, 0xea;",
                              f"fma.rn.{pair} r{2 * t + i}, r{2 * t + i}, one, minus;"]
        lines += [f"{mma} {{d0, d1, d2, d3}}, {{r0, r1, r2, r3}}, {{b0, b1}}, {{d0, d1, d2, d3}};",
                  f"{mma} {{d0, d1, d2, d3}}, {{r4, r5, r6, r7}}, {{b2, b3}}, {{d0, d1, d2, d3}};"]
        if has_zeros:
            lines += [f"{mma} {{e0, e1, e2, e3}}, {{one, one, one, one}}, {{b{c}, b{c + 1}}}, "
                      "{e0, e1, e2, e3};" for c in (0, 2)]
    # Outputs: element 4 i + c gets column 2 q + c of row i.
    for i in range(2):
        for c in range(2):
            out, acc, d = 4 * i + c, 8 + 4 * i + c, f"d{2 * i + c}"
            if nf4:
                lines.append(f"mov.f32 ${out}, {d};")
            else:
                lines.append(f"fma.rn.f32 ${out}, ${56 + 4 * i}, {d}, ${acc};")
                if has_zeros:
                    lines.append(f"fma.rn.f32 ${out}, ${64 + 4 * i}, e{c}, ${out};")
        lines += [f"mov.f32 ${4 * i + c}, ${8 + 4 * i + c};" for c in (2, 3)]
    x_operands = ["r"] * 32 if one_row else ["r"] * 8 + ["l"] * 8 + ["r"] * 16
    constraints = ["=f"] * 8 + ["f"] * 8 + ["r"] * 8 + x_operands + ["f"] * 16
    return "\n".join(lines + ["}"]), ",".join(constraints)


# Rows of x the tensor-core GEMV takes: B's 8 columns.
MMA_MAX_M = 8


# Traps unless the layout is the one mma_asm assumes: the four lanes of each group hold
# the same rows, lanes 4 apart the same words, and a thread's second row the same words as its
# first. $8..$15: the words (unread: an operand so that the check sees their layout), $16..$23
# their rows, $24..$31 their word indices (elements 4 i + j as in mma_asm); $0..$7: 0.
MMA_LAYOUT_CHECK_ASM: tl.constexpr = tl.constexpr("\n".join(
    ["{", ".reg .pred bad;", ".reg .b32 other;", "setp.ne.u32 bad, $16, $16;"]
    + [line for e in range(8) for mask, operand in ((1, 16), (2, 16), (4, 24), (8, 24), (16, 24))
       for line in (f"shfl.sync.bfly.b32 other, ${operand + e}, {mask}, 0x1f, 0xffffffff;",
                    f"setp.ne.or.u32 bad, other, ${operand + e}, bad;")]
    + [f"setp.ne.or.u32 bad, ${24 + 4 + j}, ${24 + j}, bad;" for j in range(4)]
    + [f"setp.ne.or.u32 bad, ${16 + 4 * i + j}, ${16 + 4 * i}, bad;" for i in range(2)
       for j in range(1, 4)]
    + ["@bad trap;"] + [f"mov.b32 ${e}, 0;" for e in range(8)] + ["}"]))
MMA_LAYOUT_CHECK_CONSTRAINTS: tl.constexpr = tl.constexpr(",".join(["=r"] * 8 + ["r"] * 24))


@triton.jit
def _check_mma_layout(words, offs_n, offs_w):
    """Zeros [BLOCK_N, 16] (to add to the accumulator), after trapping unless ``words`` has the
    layout mma_asm needs. Triton chooses it: 16-byte vectors and [8, 4] threads per warp
    for 16-word rows wherever mma_supported holds (and test_gemv_mma_layout checks the one
    this Triton gives). A version that chose otherwise must not pair the wrong rows and words:
    the launch fails instead."""
    rows = tl.zeros_like(words) + offs_n[:, None]
    cols = tl.zeros_like(words) + offs_w[None, :]
    return tl.inline_asm_elementwise(MMA_LAYOUT_CHECK_ASM, MMA_LAYOUT_CHECK_CONSTRAINTS,
                                     [words, rows, cols], dtype=tl.int32, is_pure=False, pack=8)


@triton.jit
def _mma_tile(acc, words, x_a, x_b, x_c, x_d, scale, zero_term, MMA_ASM: tl.constexpr,
              MMA_CONSTRAINTS: tl.constexpr):
    """acc + one tile by mma_asm's PTX: words [BLOCK_N, 16]; x as mma_asm takes it (four
    operands, broadcast); scale and zero_term [BLOCK_N, 1] (int4) or [BLOCK_N, 16] (nf4)."""
    return tl.inline_asm_elementwise(MMA_ASM, MMA_CONSTRAINTS,
                                     [acc, words, x_a, x_b, x_c, x_d, scale, zero_term],
                                     dtype=tl.float32, is_pure=True, pack=8)


@triton.jit
def _rows_dot_mma(x_ptr, words_ptr, scales_ptr, zeros_ptr, offs_m, offs_n, first_tile,
                  last_tile, M, N, row_words, group_size, num_groups, stride_xm, stride_qw,
                  HAS_ZEROS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, NF4: tl.constexpr, GROUPS_PER_TILE: tl.constexpr,
                  MMA_ASM: tl.constexpr, MMA_CONSTRAINTS: tl.constexpr):
    """x[offs_m] @ W[offs_n].T over K tiles [first_tile, last_tile), [BLOCK_M, BLOCK_N] fp32,
    by tensor cores (MMA_ASM: mma_asm's PTX), for up to 8 rows of x, contiguous fp16 / bf16 in
    16-byte aligned rows; 16-word tiles of int4 codes inside one group (the scales applied to
    the tile's sums) or of nf4 codes holding whole groups of 32 or 64 or inside one group (each
    word's absmax in its weights)."""
    BLOCK_W: tl.constexpr = BLOCK_K // WORD_CODES
    row_ok = offs_n < N
    word_range = tl.arange(0, BLOCK_W)
    word_end = tl.minimum(last_tile * BLOCK_W, row_words)
    if BLOCK_M > 1:  # the asm loads its rows of x: where they are, as tensors to broadcast
        x_address = tl.zeros([1, 1], tl.int64) + x_ptr.to(tl.int64, bitcast=True)
        x_row_bytes = tl.zeros([1, 1], tl.int32) + stride_xm * 2
        x_rows = tl.zeros([1, 1], tl.int32) + M
    else:
        x_pairs = x_ptr.to(tl.pointer_type(tl.int32), bitcast=True)

    offs_w = first_tile * BLOCK_W + word_range
    words = tl.load(words_ptr + offs_n[:, None] * stride_qw + offs_w[None, :],
                    mask=row_ok[:, None] & (offs_w < word_end)[None, :], other=0)
    acc = tl.zeros([BLOCK_N, BLOCK_W], tl.float32)
    acc += _check_mma_layout(words, offs_n, offs_w).to(tl.float32)
    # The tile's (first) group, counted rather than divided for in the loop (a division by
    # group_size was ~10% of the loop's instructions); nf4's groups of 32 or 64 add each
    # word's place in the tile.
    tiles_per_group = tl.cdiv(group_size, BLOCK_K)
    group = first_tile // tiles_per_group * GROUPS_PER_TILE
    tiles_left_in_group = tiles_per_group - first_tile % tiles_per_group
    for tile in range(first_tile, last_tile):
        offs_w = tile * BLOCK_W + word_range
        next_w = offs_w + BLOCK_W
        next_words = tl.load(words_ptr + offs_n[:, None] * stride_qw + next_w[None, :],
                             mask=row_ok[:, None] & (next_w < word_end)[None, :], other=0)
        offsets = offs_n * num_groups + group
        tiles_left_in_group -= 1
        if tiles_left_in_group == 0:
            group += GROUPS_PER_TILE
            tiles_left_in_group = tiles_per_group
        if BLOCK_M > 1:
            x_a, x_b, x_c, x_d = offs_w[None, :], x_address, x_row_bytes, x_rows
        else:  # (x0, x1), (x2, x3), (x4, x5), (x6, x7) of each word
            word_ok = offs_w < row_words
            x_a = tl.load(x_pairs + 4 * offs_w, mask=word_ok, other=0)[None, :]
            x_b = tl.load(x_pairs + 4 * offs_w + 1, mask=word_ok, other=0)[None, :]
            x_c = tl.load(x_pairs + 4 * offs_w + 2, mask=word_ok, other=0)[None, :]
            x_d = tl.load(x_pairs + 4 * offs_w + 3, mask=word_ok, other=0)[None, :]
        scale = tl.load(scales_ptr + offsets, mask=row_ok, other=0.0)
        if NF4:
            # Each word's absmax from [BLOCK_N] loads, one per group of the tile: a load of
            # [BLOCK_N, 16] would give the asm its own layout (Triton 3.6 did).
            absmax = tl.zeros([BLOCK_N, BLOCK_W], tl.float32) + scale[:, None]
            for g in tl.static_range(1, GROUPS_PER_TILE):
                group_absmax = tl.load(scales_ptr + offsets + g, mask=row_ok, other=0.0)
                in_group = (word_range // (BLOCK_W // GROUPS_PER_TILE) >= g)[None, :]
                absmax = tl.where(in_group, group_absmax[:, None], absmax)
            acc = _mma_tile(acc, words, x_a, x_b, x_c, x_d, absmax, absmax, MMA_ASM,
                            MMA_CONSTRAINTS)
        else:
            if HAS_ZEROS:
                zero = tl.load(zeros_ptr + offsets, mask=row_ok, other=0.0)
                zero_term = -scale * (zero - INT4_SYMMETRIC_ZERO)
            else:
                zero_term = scale  # unused
            acc = _mma_tile(acc, words, x_a, x_b, x_c, x_d, scale[:, None],
                            zero_term[:, None], MMA_ASM, MMA_CONSTRAINTS)
        words = next_words
    # Row m of x: lane q = m // 2 of each group, its element m % 2 (word column 4 q + m % 2).
    if BLOCK_M == 1:  # a sum across each group's lanes, by shuffles
        return tl.sum(tl.where(word_range[None, :] == 0, acc, 0.0), axis=1)[None, :]
    column = 4 * (offs_m // 2) + offs_m % 2
    return tl.sum(tl.where(word_range[None, None, :] == column[:, None, None], acc[None, :, :],
                           0.0), axis=2)


@triton.jit
def _word_nibbles(words, j: tl.constexpr):
    """Nibble j of each 32-bit word of int4 codes (k = WORD_CODES w + j) as the fp32 value
    1 + q / 16: the nibble shifted into the mantissa of 1.0, a shift and one LOP3, exact, no
    conversion (the 1 comes out after the sum, in _word_coefficients)."""
    if 4 * j <= 19:  # nibble j to bits 19-22 (the arithmetic shift's sign bits are masked)
        placed = words << (19 - 4 * j)
    else:
        placed = words >> (4 * j - 19)
    return ((placed & 0x780000) | FLOAT_ONE_BITS).to(tl.float32, bitcast=True)


@triton.jit
def _word_coefficients(scales_ptr, zeros_ptr, offs_n, k_start, offs_w, N, row_words, group_size,
                       num_groups, HAS_ZEROS: tl.constexpr, SCALE_PER_TILE: tl.constexpr,
                       NF4: tl.constexpr):
    """(a, b) such that a word's share of y is a * sum_j v_j x_j + b * sum_j x_j with v_j from
    _word_nibbles: s (q - z) = 16 s v - s (16 + z); for nf4 (v_j = NF4[q]) the absmax and 0.
    [BLOCK_N, 1] when the tile starting at k_start lies in one group, else per word."""
    row_ok = offs_n < N
    if SCALE_PER_TILE:
        # Loaded as [BLOCK_N], then expanded: a [BLOCK_N, 1] load took a layout of one row per
        # thread, and the whole tile's arithmetic with it.
        offsets = offs_n * num_groups + k_start // group_size
        mask = row_ok
    else:
        offsets = (offs_n[:, None] * num_groups
                   + (offs_w * WORD_CODES // group_size)[None, :])
        mask = row_ok[:, None] & (offs_w < row_words)[None, :]
    scale = tl.load(scales_ptr + offsets, mask=mask, other=0.0)
    if NF4:
        a, b = scale, tl.zeros_like(scale)  # nf4 values are NF4[q] themselves (_row_dot_words)
    else:
        if HAS_ZEROS:
            zero = tl.load(zeros_ptr + offsets, mask=mask, other=0.0)
        else:
            zero = INT4_SYMMETRIC_ZERO
        a, b = 16.0 * scale, -scale * (16.0 + zero)
    if SCALE_PER_TILE:
        a, b = a[:, None], b[:, None]
    return a, b


@triton.jit
def _row_dot_words(x_ptr, words_ptr, scales_ptr, zeros_ptr, offs_n, first_tile, last_tile, N,
                   row_words, group_size, num_groups, stride_xk, stride_qw,
                   HAS_ZEROS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   SCALE_PER_TILE: tl.constexpr, NF4: tl.constexpr):
    """sum_k x[0, k] W[offs_n, k] over K tiles [first_tile, last_tile), [BLOCK_N] fp32, for one
    row of x and int4 (or NF4: nf4) codes read as int32 words [N, row_words] (words_supported).
    nf4 words are decoded by common.nf4_word_values (the permute decode, fp16 table values),
    then multiplied into x and summed in fp32 like int4's.

    Per weight: a shift, a LOP3 (_word_nibbles) and one FMA with x; the group scale and zero
    point are applied once per word (_word_coefficients), and x is loaded once per tile for all
    the rows a thread holds. The next tile's words are loaded before this tile's arithmetic,
    so a program keeps a tile of loads in flight while it computes. Words past the row read 0
    and meet x = 0 past K.
    """
    BLOCK_W: tl.constexpr = BLOCK_K // WORD_CODES
    row_ok = offs_n < N
    word_range = tl.arange(0, BLOCK_W)
    word_end = tl.minimum(last_tile * BLOCK_W, row_words)  # this split's words: no loads past

    offs_w = first_tile * BLOCK_W + word_range
    words = tl.load(words_ptr + offs_n[:, None] * stride_qw + offs_w[None, :],
                    mask=row_ok[:, None] & (offs_w < word_end)[None, :], other=0)
    acc = tl.zeros([BLOCK_N, BLOCK_W], tl.float32)
    for tile in range(first_tile, last_tile):
        offs_w = tile * BLOCK_W + word_range
        next_w = offs_w + BLOCK_W
        next_words = tl.load(words_ptr + offs_n[:, None] * stride_qw + next_w[None, :],
                             mask=row_ok[:, None] & (next_w < word_end)[None, :], other=0)
        # Loaded here, used after the products: carried from the previous iteration instead,
        # they took their own layout and dragged the accumulator into it.
        a, b = _word_coefficients(scales_ptr, zeros_ptr, offs_n, tile * BLOCK_K, offs_w, N,
                                  row_words, group_size, num_groups, HAS_ZEROS, SCALE_PER_TILE,
                                  NF4)
        dot = tl.zeros([BLOCK_N, BLOCK_W], tl.float32)
        x_sum = tl.zeros([BLOCK_W], tl.float32)
        # x[k] for k = WORD_CODES w + j: one address and one mask per word for all j (K is a
        # multiple of WORD_CODES, so k < K exactly when the word is in the row).
        x_words = x_ptr + offs_w * (WORD_CODES * stride_xk)
        word_ok = offs_w < row_words
        if NF4:
            values = nf4_word_values(words)
        for j in tl.static_range(WORD_CODES):
            x = tl.load(x_words + j * stride_xk, mask=word_ok, other=0.0).to(tl.float32)
            if NF4:
                dot += values[j].to(tl.float32) * x[None, :]
            else:
                dot += _word_nibbles(words, j) * x[None, :]
                x_sum += x
        if NF4:
            acc += a * dot
        else:
            acc += a * dot + b * x_sum[None, :]
        words = next_words
    return tl.sum(acc, axis=1)


def words_supported(fmt, qweight, k, group_size, num_groups, m, nf4_words=False) -> bool:
    """The word path's conditions: int4, or nf4 where ``nf4_words`` (its permute decode runs:
    common.ptx_decode_enabled, and absmax stored in fp32; int8, and nf4 through a table load,
    measured slower than the byte path: bench/NOTES.md, Triton, "GEMV v2"), one row of x, whole
    32-bit words of codes per row (K a multiple of 8, 4-byte-aligned rows), each word inside
    one group."""
    return ((fmt == "int4" or (fmt == "nf4" and nf4_words))
            and m == 1 and k % WORD_CODES.value == 0
            and (num_groups == 1 or group_size % WORD_CODES.value == 0)
            and qweight.stride(1) == 1 and qweight.stride(0) % 4 == 0
            and qweight.storage_offset() % 4 == 0 and qweight.data_ptr() % 4 == 0)


@triton.jit
def gemv_kernel(
    x_ptr,              # [M, K] fp16 / bf16 / fp32, strides (stride_xm, stride_xk)
    qweight_ptr,        # int8 [N, K] or uint8 [N, ceil(K/2)], row stride stride_qn, bytes dense;
                        # WORDS: 4-bit rows as int32 words (row_bytes, stride_qn in words)
    scales_ptr,         # fp32 [N, G] contiguous (nf4: absmax)
    zeros_ptr,          # fp32 [N, G] contiguous (int4 with HAS_ZEROS; otherwise unused)
    nf4_table_ptr,      # fp32 [16], formats.NF4_TABLE (NF4_FROM_TABLE; otherwise unused)
    absmax_scales_ptr,  # fp32 [ceil(N G / 256)] (ABSMAX_DQ, scales_ptr = absmax codes; else unused)
    absmax_offsets_ptr,  # fp32 [ceil(N G / 256)] (ABSMAX_DQ; otherwise unused)
    bias_ptr,           # [N] in x's dtype (HAS_BIAS; otherwise unused)
    y_ptr,              # [M, N] in x's dtype, row stride stride_ym
    partials_ptr,       # fp32 [M, N], zeroed and left so (SPLIT_K > 1; otherwise unused)
    tile_counters_ptr,  # int32 [>= cdiv(N, BLOCK_N)], the same (SPLIT_K > 1; otherwise unused)
    M, N, K, row_bytes, group_size, num_groups,
    stride_xm, stride_xk, stride_qn, stride_ym,
    FORMAT: tl.constexpr,          # formats.FORMAT_IDS
    HAS_ZEROS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ABSMAX_DQ: tl.constexpr,       # nf4 absmax as 8-bit codes (common.py)
    NF4_FROM_TABLE: tl.constexpr,  # nf4 decoded by a load from nf4_table (see NF4_FROM_TABLE)
    PTX_DECODE: tl.constexpr,      # nf4 at M = 1, int8: inline PTX (common.ptx_decode_enabled)
    BLOCK_M: tl.constexpr,         # next power of two >= M; also the autotune M bucket
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SCALE_PER_TILE: tl.constexpr,  # common.scale_per_tile
    ROW_SCALE: tl.constexpr,       # one group per row (num_groups == 1)
    SPLIT_K: tl.constexpr,
    WORDS: tl.constexpr,           # 4-bit codes read as 32-bit words (words_supported), M = 1
    DEPENDENT_LAUNCH: tl.constexpr,  # launched with launch_pdl (common.dependent_launch)
    MMA: tl.constexpr = False,     # WORDS by tensor cores, M <= 8 (mma_supported)
    MMA_GROUPS_PER_TILE: tl.constexpr = 1,  # nf4 on MMA: groups in a BLOCK_K tile (1, 2, 4)
    MMA_ASM: tl.constexpr = "",            # with MMA: mma_asm's PTX and constraints
    MMA_CONSTRAINTS: tl.constexpr = "",
):
    """Program (pid_n, pid_k) computes y[:, pid_n*BLOCK_N : +BLOCK_N] over the pid_k-th of
    SPLIT_K equal runs of BLOCK_K tiles of K."""
    if DEPENDENT_LAUNCH:
        # Launched before the kernel ahead has ended: nothing is read before it has. The next
        # kernel is not let in early (gdc_launch_dependents): its programs, placed while these
        # run, made the tensor-core GEMV up to 1.37x slower (bench/NOTES.md, Triton, "GEMV v3.1").
        gdc_wait()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)

    k_tiles = tl.cdiv(K, BLOCK_K)
    tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
    first_tile = pid_k * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, k_tiles)
    if MMA:
        out = _rows_dot_mma(x_ptr, qweight_ptr, scales_ptr, zeros_ptr, offs_m, offs_n,
                            first_tile, last_tile, M, N, row_bytes, group_size, num_groups,
                            stride_xm, stride_qn, HAS_ZEROS, BLOCK_M, BLOCK_N, BLOCK_K,
                            FORMAT == FORMAT_NF4, MMA_GROUPS_PER_TILE, MMA_ASM,
                            MMA_CONSTRAINTS)
    elif WORDS:
        out = _row_dot_words(x_ptr, qweight_ptr, scales_ptr, zeros_ptr, offs_n, first_tile,
                             last_tile, N, row_bytes, group_size, num_groups, stride_xk, stride_qn,
                             HAS_ZEROS, BLOCK_N, BLOCK_K, SCALE_PER_TILE, FORMAT == FORMAT_NF4)
        out = out[None, :]
    else:
        # One row of x: products are summed over K once, after the loop, from a 2-D accumulator in
        # the weight tile's own register layout. Several rows: each tile's products are summed over
        # K at once into [BLOCK_M, BLOCK_N] (a 3-D accumulator would take a layout conversion of
        # every weight tile through shared memory). The 4-bit formats multiply even and odd columns
        # separately (x read at stride 2), so the unpacked nibbles stay where they were loaded.
        if BLOCK_M == 1:
            acc = tl.zeros([BLOCK_N, BLOCK_K if FORMAT == FORMAT_INT8 else BLOCK_K // 2],
                           tl.float32)
        else:
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for tile in range(first_tile, last_tile):
            k_start = tile * BLOCK_K
            if FORMAT == FORMAT_INT8:
                offs_k = k_start + tl.arange(0, BLOCK_K)
                if PTX_DECODE and ROW_SCALE:
                    # The exact codes by inline PTX, the row's scale on the sums after the loop.
                    # Groups keep the fp32 decode: their scales multiplied into each tile's
                    # codes ran up to 1.27x slower (bench/NOTES.md, Triton, "int8 by inline
                    # PTX").
                    w = int8_values(load_int8_codes(qweight_ptr, offs_n, offs_k, N, row_bytes,
                                                    stride_qn))
                else:
                    w = dequantize_tile(qweight_ptr, scales_ptr, zeros_ptr,
                                        absmax_scales_ptr, absmax_offsets_ptr, offs_n,
                                        k_start, N, K, row_bytes, group_size, num_groups,
                                        stride_qn, FORMAT, HAS_ZEROS, SCALE_PER_TILE, ABSMAX_DQ,
                                        BLOCK_K, tl.float32, False)
                if BLOCK_M == 1:
                    acc += w * load_x_row(x_ptr, offs_k, K, stride_xk)[None, :]
                else:
                    x = load_x(x_ptr, offs_m, offs_k, M, K, stride_xm, stride_xk)
                    acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
            elif FORMAT == FORMAT_NF4 and PTX_DECODE and BLOCK_M == 1 and SCALE_PER_TILE:
                # The table values in fp16 from the permute decode, products and sums in fp32,
                # the absmax applied once per byte pair.
                packed, offs_byte = load_packed(qweight_ptr, offs_n, k_start, N, row_bytes,
                                                stride_qn, BLOCK_K)
                value_even, value_odd = nf4_table_values(packed)
                absmax = load_scale(scales_ptr, absmax_scales_ptr, absmax_offsets_ptr,
                                    offs_n * num_groups + k_start // group_size, offs_n < N,
                                    ABSMAX_DQ)
                offs_even = 2 * offs_byte
                pair = value_even.to(tl.float32) * load_x_row(x_ptr, offs_even, K,
                                                              stride_xk)[None, :]
                pair += value_odd.to(tl.float32) * load_x_row(x_ptr, offs_even + 1, K,
                                                              stride_xk)[None, :]
                acc += absmax[:, None] * pair
            else:
                w_even, w_odd = dequantize_nibble_pairs(
                    qweight_ptr, scales_ptr, zeros_ptr, nf4_table_ptr, absmax_scales_ptr,
                    absmax_offsets_ptr, offs_n, k_start, N, K, row_bytes, group_size, num_groups,
                    stride_qn, FORMAT, HAS_ZEROS, SCALE_PER_TILE, ABSMAX_DQ, NF4_FROM_TABLE,
                    BLOCK_K)
                offs_even = k_start + 2 * tl.arange(0, BLOCK_K // 2)
                if BLOCK_M == 1:
                    # Two updates, two FMAs per byte (a sum of the products first would add one).
                    acc += w_even * load_x_row(x_ptr, offs_even, K, stride_xk)[None, :]
                    acc += w_odd * load_x_row(x_ptr, offs_even + 1, K, stride_xk)[None, :]
                else:
                    x_even = load_x(x_ptr, offs_m, offs_even, M, K, stride_xm, stride_xk)
                    x_odd = load_x(x_ptr, offs_m, offs_even + 1, M, K, stride_xm, stride_xk)
                    acc += tl.sum(x_even[:, None, :] * w_even[None, :, :]
                                  + x_odd[:, None, :] * w_odd[None, :, :], axis=2)

        if BLOCK_M == 1:
            out = tl.sum(acc, axis=1)[None, :]
        else:
            out = acc
        if FORMAT == FORMAT_INT8 and PTX_DECODE and ROW_SCALE:
            out *= tl.load(scales_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
    store_output(out, y_ptr, bias_ptr, partials_ptr, tile_counters_ptr, pid_n,
                 offs_m, offs_n, M, N, stride_ym, HAS_BIAS, SPLIT_K)


# --- configs ------------------------------------------------------------------------------------

CONFIG_SPACE = [
    triton.Config({"BLOCK_N": block_n, "BLOCK_K": block_k}, num_warps=num_warps, num_stages=2)
    for block_n in (32, 64, 128)
    for block_k in (128, 256)
    for num_warps in (4, 8)
]

# Without autotuning (the default, common.autotune_enabled): per compute-capability major; replace
# with the winners bench/triton_dev.py prints on each GPU. sm_90: 64 x 128, 4 warps. On the word
# path it measured level with or faster than 128 x 128 (fewer instructions per weight: 6.3 against
# 8.3 by bench/triton_dev.py --sass, each thread's 4 rows sharing its x loads) and 128 x 128 with
# 8 warps: 14336x4096 int4 g128 M = 1 27.7 / 27.0 / 26.5 us, 4096x4096 10.9 / 12.2 / 11.2, 576x576
# 5.3 / 6.7 / 6.1 (bench/results/h100/triton_gemv_dev.md): twice the programs keep more loads in
# flight. On the byte path it issued 32% fewer instructions per weight than 16 x 256 for int4 g128
# ("Triton" in bench/NOTES.md); _adapt fits it to nf4 g64 as 128 x 64.
DEFAULT_CONFIGS = {
    9: triton.Config({"BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=2),
    8: triton.Config({"BLOCK_N": 16, "BLOCK_K": 128}, num_warps=4, num_stages=2),
}
FALLBACK_CONFIG = DEFAULT_CONFIGS[8]
# The tensor-core GEMV's tile, whatever the group size (mma_supported): sm_90's default
# before _adapt. 128 x 128 and 32 x 128 (2 warps) measured level with it, split 8 level but for
# 28672x8192 (bench/NOTES.md, Triton, "GEMV v3").
MMA_CONFIG = triton.Config({"BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=2)


def _fits_registers(block_m: int, config: triton.Config, words: bool) -> bool:
    """The byte path's fp32 accumulator holds a value per code; on the word path four arrays
    (words, next words, products, accumulator) hold a value per word."""
    tile = block_m * config.kwargs["BLOCK_N"] * config.kwargs["BLOCK_K"]
    if words:
        tile = 4 * tile // WORD_CODES.value
    return tile <= MAX_ACC_PER_THREAD * 32 * config.num_warps


def _adapt(config: triton.Config, block_m: int, group_size: int, num_groups: int,
           words: bool = False) -> triton.Config:
    """The config with BLOCK_K fitted to the groups (BLOCK_N grown to keep the bytes loaded per
    step), then the tile shrunk to the register budget: the word path first gives up K (each
    thread's rows share its x loads), the byte path N."""
    kwargs = dict(config.kwargs)
    kwargs["BLOCK_N"], kwargs["BLOCK_K"] = common.fit_tile(
        kwargs["BLOCK_N"], kwargs["BLOCK_K"], group_size, num_groups, MIN_BLOCK_K, MAX_BLOCK_N)
    adapted = triton.Config(kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    order = ("BLOCK_K", "BLOCK_N") if words else ("BLOCK_N", "BLOCK_K")
    floor = {"BLOCK_N": MIN_BLOCK_N, "BLOCK_K": MIN_BLOCK_K}
    for name in order:
        while (not _fits_registers(block_m, adapted, words)
               and adapted.kwargs[name] > floor[name]):
            adapted.kwargs[name] //= 2
    return adapted


def prune_configs(configs, named_args, **kwargs):
    """Fit each config to the groups and registers; drop duplicates."""
    def meta(name):
        return kwargs.get(name, named_args.get(name))

    adapted = [_adapt(c, meta("BLOCK_M"), named_args["group_size"], named_args["num_groups"],
                      meta("WORDS")) for c in configs]
    return common.unique_configs(adapted)


def _split_k(args) -> int:
    if args.get("SPLIT_K") is not None:
        return args["SPLIT_K"]  # chosen by the launcher (untuned launch, tests, benchmarks)
    return common.choose_split_k(triton.cdiv(args["N"], args["BLOCK_N"]),
                                 triton.cdiv(args["K"], args["BLOCK_K"]), args["y_ptr"].device,
                                 PROGRAMS_PER_SM, MIN_K_TILES_PER_SPLIT,
                                 IDLE_MIN_K_TILES_PER_SPLIT)


_kernel = triton.heuristics({
    "SCALE_PER_TILE": lambda a: common.scale_per_tile(a["group_size"], a["num_groups"],
                                                      a["BLOCK_K"]),
    "ROW_SCALE": lambda a: a["num_groups"] == 1,
    "SPLIT_K": _split_k,
})(gemv_kernel)

_autotuned_kernel = triton.autotune(
    configs=CONFIG_SPACE,
    key=["BLOCK_M", "N", "K", "FORMAT", "HAS_ZEROS", "ABSMAX_DQ", "WORDS", "group_size"],
    prune_configs_by={"early_config_prune": prune_configs},
)(_kernel)


def default_config(cap, block_m: int, group_size: int, num_groups: int, words: bool = False):
    """The untuned config for compute capability ``cap`` ((major, minor); None: interpreter)."""
    config = DEFAULT_CONFIGS.get(cap[0], FALLBACK_CONFIG) if cap else FALLBACK_CONFIG
    return _adapt(config, block_m, group_size, num_groups, words)


# --- launcher -----------------------------------------------------------------------------------

def mma_supported(fmt, x, qweight, config, words, group_size, num_groups) -> bool:
    """The GEMV by tensor cores (_rows_dot_mma) on ``config``: int4 and nf4 on sm_90 (where it
    was measured; the PTX needs sm_80), 1 to 8 rows of fp16 / bf16 x contiguous along K in
    16-byte aligned rows, codes read as words (``words``: words_supported for one row), a
    16-word tile (BLOCK_K 128, MMA_CONFIG) inside one group or, for nf4, holding whole groups
    of 32 or 64, two or more rows per thread. The codes' rows 16-word multiples and 16-byte
    aligned: Triton then loads them as 16-byte vectors, the layout mma_asm relies on
    (elsewhere it loads words one by one)."""
    kwargs = config.kwargs
    block_k = kwargs["BLOCK_K"]
    m, k = x.shape
    groups_fit = (common.scale_per_tile(group_size, num_groups, block_k)
                  or (fmt == "nf4" and group_size in (32, 64)))
    return (words and fmt in ("int4", "nf4") and m <= MMA_MAX_M
            and common.ptx_decode_enabled(x.dtype) and common.capability(x.device) >= (9, 0)
            and x.stride(1) == 1 and x.data_ptr() % 16 == 0 and (m == 1 or x.stride(0) % 8 == 0)
            and block_k == 128 and kwargs["BLOCK_N"] % (16 * config.num_warps) == 0
            and groups_fit and k % 128 == 0 and qweight.stride(0) % 64 == 0
            and qweight.data_ptr() % 16 == 0)


def _reads_words(x, fmt, qweight, group_size, num_groups, absmax_dq) -> bool:
    """words_supported for a row of x, nf4 where its permute decode runs."""
    nf4_words = common.ptx_decode_enabled(x.dtype) and absmax_dq is None
    return words_supported(fmt, qweight, x.shape[1], group_size, num_groups, 1, nf4_words)


def mma_applies(x, fmt, qweight, group_size, absmax_dq=None) -> bool:
    """Whether matmul, untuned and left to choose, runs x on tensor cores (the op then sends it
    up to MMA_GEMV_MAX_M rows, in __init__.py)."""
    num_groups = formats.num_groups(x.shape[1], group_size)
    words = _reads_words(x, fmt, qweight, group_size, num_groups, absmax_dq)
    return not common.autotune_enabled() and mma_supported(fmt, x, qweight, MMA_CONFIG, words,
                                                           group_size, num_groups)


def matmul(x, fmt, qweight, scales, zeros, group_size, bias, y, config=None,
           split_k=None, absmax_dq=None, words=None, mma=None):
    """y[M, N] = x[M, K] @ dequant(W).T (+ bias), x 2-D with 1 <= M <= 16, y preallocated in
    x's dtype. ``config`` / ``split_k`` force a tile shape / split (tests, benchmarks);
    otherwise the autotuned or per-GPU default config and the split-K heuristic decide; the
    untuned launch takes int4 and nf4 to tensor cores where mma_supported (``mma=False``: not).
    ``absmax_dq``: (absmax_scales, absmax_offsets) of a double-quantized nf4 weight, whose
    ``scales`` are then the absmax codes. ``words=False`` forces the byte path where the word
    path applies (benchmarks)."""
    m, k = x.shape
    n = qweight.shape[0]
    num_groups = formats.num_groups(k, group_size)
    block_m = triton.next_power_of_2(m)
    words = words is not False and _reads_words(x, fmt, qweight, group_size, num_groups,
                                                absmax_dq)
    tuned = config is None and split_k is None and common.autotune_enabled()
    use_mma = False
    if not tuned:
        if mma is not False:
            use_mma = mma_supported(fmt, x, qweight, config or MMA_CONFIG, words, group_size,
                                    num_groups)
            config = config or (MMA_CONFIG if use_mma else None)
        words = words and (m == 1 or use_mma)  # on CUDA cores the word path takes one row
        config = config or default_config(common.capability(x.device), block_m, group_size,
                                         num_groups, words)
        split_k = split_k or _split_k({"N": n, "K": k, "y_ptr": y, **config.kwargs})
    else:
        words = words and m == 1
    if split_k == 1:
        partials, tile_counters = y, y  # never touched by an unsplit kernel
    else:  # also when tuning: the split depends on the tile shape being tried
        partials, tile_counters = common.split_k_workspace(m, n, triton.cdiv(n, MIN_BLOCK_N),
                                                           x.device)
    absmax_scales, absmax_offsets = absmax_dq if absmax_dq is not None else (scales, scales)
    codes = qweight.view(torch.int32) if words else qweight
    args = (x, codes, scales, zeros if zeros is not None else scales,
            formats.nf4_table(x.device), absmax_scales, absmax_offsets,
            bias if bias is not None else y, y, partials, tile_counters, m, n, k,
            codes.shape[1], group_size, num_groups, x.stride(0), x.stride(1), codes.stride(0),
            y.stride(0))
    meta = dict(FORMAT=formats.FORMAT_IDS[fmt], HAS_ZEROS=zeros is not None,
                HAS_BIAS=bias is not None, ABSMAX_DQ=absmax_dq is not None,
                NF4_FROM_TABLE=NF4_FROM_TABLE,
                PTX_DECODE=common.ptx_decode_enabled(x.dtype), BLOCK_M=block_m, WORDS=words,
                DEPENDENT_LAUNCH=common.dependent_launch(x.device))

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    if tuned:
        _autotuned_kernel[grid](*args, **meta, launch_pdl=meta["DEPENDENT_LAUNCH"])
    else:
        meta["MMA"] = use_mma
        if use_mma:
            meta["MMA_GROUPS_PER_TILE"] = max(config.kwargs["BLOCK_K"] // group_size, 1)
            meta["MMA_ASM"], meta["MMA_CONSTRAINTS"] = mma_asm(fmt, x.dtype, zeros is not None,
                                                               m == 1)
        _kernel[grid](*args, **meta, **config.kwargs, SPLIT_K=split_k,
                      num_warps=config.num_warps, num_stages=config.num_stages,
                      launch_pdl=meta["DEPENDENT_LAUNCH"])
    return y
