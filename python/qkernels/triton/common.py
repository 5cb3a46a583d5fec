"""What the Triton GEMV (gemv.py) and GEMM (gemm.py) kernels share: dequantizing one weight tile
from the canonical tensors, the output epilogue (bias, rounding, split-K reduction), and the
launch-time choices both make (autotune switch, split-K factor, scale layout, workspace).

Canonical tensors (shared/DESIGN.md section 3), read as they are stored:
  qweight  int8 [N, K] (int8) or uint8 [N, ceil(K/2)] (int4, nf4: byte j = k 2j low nibble,
           k 2j+1 high nibble), rows contiguous
  scales   fp32 [N, G] (nf4: absmax), zeros fp32 [N, G] (int4 only; None = symmetric, zero 8)
  nf4 with double-quantized absmax (ABSMAX_DQ): scales is absmax_codes uint8 [N, G], decoded
           per load with absmax_scales / absmax_offsets fp32 [ceil(N G / 256)]
           (formats.decode_absmax)

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
DOUBLE_QUANT_BLOCK: tl.constexpr = tl.constexpr(formats.DOUBLE_QUANT_BLOCK)
FLOAT_2P23_BITS: tl.constexpr = tl.constexpr(0x4B000000)  # 2.0**23 as fp32 bits
FLOAT_2P23: tl.constexpr = tl.constexpr(8388608.0)
FLOAT_ONE_BITS: tl.constexpr = tl.constexpr(0x3F800000)  # 1.0 as fp32 bits
# The 16 NF4 values as compile-time constants, from formats.NF4_TABLE (each an fp32 value, so the
# kernels' fp32 constants are exact).
(NF4_0, NF4_1, NF4_2, NF4_3, NF4_4, NF4_5, NF4_6, NF4_7,
 NF4_8, NF4_9, NF4_10, NF4_11, NF4_12, NF4_13, NF4_14, NF4_15) = (
    tl.constexpr(value) for value in formats.NF4_TABLE)


def _nf4_byte_planes(dtype: torch.dtype) -> tuple:
    """formats.NF4_TABLE rounded to ``dtype`` (16-bit) as two byte planes, each four 32-bit
    words of four entries (entry i in byte i % 4 of word i // 4): the low bytes, the high
    bytes."""
    bits = torch.tensor(formats.NF4_TABLE, dtype=torch.float32).to(dtype).view(torch.int16)
    bits = [int(b) & 0xFFFF for b in bits]

    def plane(shift):
        return tuple(sum(((bits[4 * w + i] >> shift) & 0xFF) << (8 * i) for i in range(4))
                     for w in range(4))
    return plane(0), plane(8)


def nf4_lookup_lines(dtype: torch.dtype, high: bool, codes: str, out0: str,
                     out1: str) -> list:
    """PTX lines: ``codes`` holds four bytes b0..b3; ``out0`` / ``out1`` get NF4[nibble] of
    b0..b3 in ``dtype`` as pairs (bytes (0, 1) and (2, 3)), of the low nibbles, or of the high
    ones (``high``). Uses the registers t, s, m, a, b, lo, hi. Each element depends on its own
    byte only: which elements Triton packs into one asm block depends on the tensor's layout.

    The table lives in the instruction stream as byte planes: prmt picks 4 bytes out of 8 by
    3-bit selectors, so each plane is looked up for codes 0-7 and for 8-15, and the two merged
    on bit 3 of each code (lop3 with a byte mask made by prmt's sign replication)."""
    low_plane, high_plane = _nf4_byte_planes(dtype)
    # s: the 4 codes (as 3-bit indices) of bytes 0, 2, 1, 3 at bits 0, 4, 8, 12, where prmt
    # reads its selectors. m: byte j all ones where that code of byte (0, 2, 1, 3)[j] has bit 3
    # set (prmt replicates the sign bit of a byte, so bit 3 of the nibble is moved to bit 7).
    if high:
        lines = [f"and.b32 t, {codes}, 0x70707070;", "shr.u32 s, t, 16;", "shr.u32 t, t, 4;",
                 "or.b32 s, s, t;", f"prmt.b32 m, {codes}, 0, 0xB9A8;"]
    else:
        lines = [f"and.b32 t, {codes}, 0x07070707;", "shr.u32 s, t, 12;", "or.b32 s, s, t;",
                 f"shl.b32 t, {codes}, 4;", "prmt.b32 m, t, 0, 0xB9A8;"]
    for plane, name in ((low_plane, "lo"), (high_plane, "hi")):
        lines += [f"prmt.b32 a, {plane[0]:#010x}, {plane[1]:#010x}, s;",
                  f"prmt.b32 b, {plane[2]:#010x}, {plane[3]:#010x}, s;",
                  f"lop3.b32 {name}, a, b, m, 0xD8;"]  # m ? b : a, bit by bit
    # Byte j of lo / hi belongs to byte (0, 2, 1, 3)[j] of the codes: pairs (0, 1) and (2, 3).
    return lines + [f"prmt.b32 {out0}, lo, hi, 0x6240;", f"prmt.b32 {out1}, lo, hi, 0x7351;"]


def _nf4_permute_asm(dtype: torch.dtype, high: bool, pair_type: str = None) -> str:
    """PTX for _nf4_values_by_permute and nf4_table_values: $2 holds four code bytes; $0 / $1
    get NF4 of their low (or ``high``) nibbles in ``dtype`` as pairs (nf4_lookup_lines), with
    ``pair_type`` multiplied in that type by the absmax pairs in $3 / $4."""
    lines = ["{", ".reg .b32 t, s, m, a, b, lo, hi, nz;"]
    lines += nf4_lookup_lines(dtype, high, "$2", "$0", "$1")
    if pair_type:  # -0 pairs: fma(a, b, -0) is the product a * b, signed zeros kept
        lines += ["mov.b32 nz, 0x80008000;", f"fma.rn.{pair_type} $0, $0, $3, nz;",
                  f"fma.rn.{pair_type} $1, $1, $4, nz;"]
    return "\n".join(lines + ["}"])


def _nf4_word_asm() -> str:
    """PTX for nf4_word_values: $8 holds a 32-bit word of 8 nf4 codes (k = 8 w + j: byte j // 2,
    low nibble first); $0..$7 (16-bit registers) get NF4[code j] in fp16."""
    lines = ["{", ".reg .b32 t, s, m, a, b, lo, hi, p, q;"]
    lines += nf4_lookup_lines(torch.float16, False, "$8", "p", "q")  # codes 0, 2 | 4, 6
    lines += ["mov.b32 {$0, $2}, p;", "mov.b32 {$4, $6}, q;"]
    lines += nf4_lookup_lines(torch.float16, True, "$8", "p", "q")  # codes 1, 3 | 5, 7
    lines += ["mov.b32 {$1, $3}, p;", "mov.b32 {$5, $7}, q;"]
    return "\n".join(lines + ["}"])


def _int4_scaled_asm(dtype: torch.dtype, high: bool) -> str:
    """PTX for _int4_values_by_magic: $2 holds four code bytes; $0 / $1 get s (q - round(z)) + zs
    of their low (or ``high``) nibbles in ``dtype`` as pairs (bytes (0, 1) and (2, 3)), with the
    pairs of s in $3 / $4, of -(magic + round(z)) in $5 / $6 and of zs in $7 / $8. prmt moves
    bytes 0 and 1 (2 and 3) to bytes 0 and 2, one LOP3 ORs their nibbles under the magic
    exponent (magic + q exactly), an fma by one subtracts magic + round(z) exactly and a second
    applies the scale: 4 instructions per pair, as csrc/cuda/unpack.cuh's dequant_int4."""
    pair, magic, one = (("f16x2", 0x64006400, 0x3C003C00) if dtype == torch.float16
                        else ("bf16x2", 0x43004300, 0x3F803F80))
    codes = "c" if high else "$2"
    lines = ["{", ".reg .b32 c, v, magic, one;", f"mov.b32 magic, {magic:#010x};",
             f"mov.b32 one, {one:#010x};"]
    if high:
        lines.append("shr.u32 c, $2, 4;")
    for out, selector, scale, zero, rest in (("$0", "0x4140", "$3", "$5", "$7"),
                                             ("$1", "0x4342", "$4", "$6", "$8")):
        lines += [f"prmt.b32 v, {codes}, 0, {selector};",
                  "lop3.b32 v, v, 0x000f000f, magic, 0xea;",  # (v & 0x000f000f) | magic
                  f"fma.rn.{pair} v, v, one, {zero};", f"fma.rn.{pair} {out}, v, {scale}, {rest};"]
    return "\n".join(lines + ["}"])


def _int8_values_asm() -> str:
    """PTX for int8_values: $4 holds four int8 codes; $0..$3 get them as exact fp32 values. The
    sign bit flipped (u = q + 128 in 0..255), prmt puts each byte under the exponent of 2^23
    (2^23 + u exactly) and one subtraction takes 2^23 + 128 off: 2.25 instructions per code,
    where the sign extension, the integer add and the subtraction of _dequantize take 3.25."""
    lines = ["{", ".reg .b32 u;", "xor.b32 u, $4, 0x80808080;"]
    for j in range(4):  # byte j of u, then bytes 1-3 of 0x4B000000
        lines += [f"prmt.b32 ${j}, u, 0x4B000000, {0x7650 + j:#06x};",
                  f"sub.f32 ${j}, ${j}, 0f4B000080;"]
    return "\n".join(lines + ["}"])


def _int8_scaled_asm() -> str:
    """PTX for _int8_values_by_magic: $2 holds four int8 codes; $0 / $1 get s q of codes (0, 1)
    / (2, 3) in fp16 as pairs, with the pairs of s in $3 / $4: q exact, then one rounding of the
    product, as csrc/cuda/unpack.cuh's dequant_int8. Each byte of u = q + 128 goes under the
    0x64 exponent byte (1024 + u exactly), an fma by one takes 1152 off: 1.75 instructions per
    code. (bf16 keeps the fp32 decode: in the 64-row bf16 GEMM on the H100 an int8 decode by
    inline PTX, this one's bf16 variant or int8_values, ran up to 1.29x slower; bench/NOTES.md,
    Triton, "int8 by inline PTX".)"""
    lines = ["{", ".reg .b32 u, v, n, one, nz;", "mov.b32 nz, 0x80008000;",
             "xor.b32 u, $2, 0x80808080;", "mov.b32 one, 0x3C003C00;", "mov.b32 n, 0xE480E480;"]
    for out, selector, scale in (("$0", "0x4140", "$3"), ("$1", "0x4342", "$4")):
        # bytes 0, 1 (2, 3) of u to the low bytes of the two halves; -1152 added; times s
        lines += [f"prmt.b32 v, u, 0x64646464, {selector};", "fma.rn.f16x2 v, v, one, n;",
                  f"fma.rn.f16x2 {out}, v, {scale}, nz;"]
    return "\n".join(lines + ["}"])


INT8_VALUES_ASM: tl.constexpr = tl.constexpr(_int8_values_asm())
INT8_SCALED_ASM: tl.constexpr = tl.constexpr(_int8_scaled_asm())
INT4_SCALED_ASM_FP16_LOW: tl.constexpr = tl.constexpr(_int4_scaled_asm(torch.float16, False))
INT4_SCALED_ASM_FP16_HIGH: tl.constexpr = tl.constexpr(_int4_scaled_asm(torch.float16, True))
INT4_SCALED_ASM_BF16_LOW: tl.constexpr = tl.constexpr(_int4_scaled_asm(torch.bfloat16, False))
INT4_SCALED_ASM_BF16_HIGH: tl.constexpr = tl.constexpr(_int4_scaled_asm(torch.bfloat16, True))
NF4_SCALED_ASM_FP16_LOW: tl.constexpr = tl.constexpr(
    _nf4_permute_asm(torch.float16, high=False, pair_type="f16x2"))
NF4_SCALED_ASM_FP16_HIGH: tl.constexpr = tl.constexpr(
    _nf4_permute_asm(torch.float16, high=True, pair_type="f16x2"))
NF4_SCALED_ASM_BF16_LOW: tl.constexpr = tl.constexpr(
    _nf4_permute_asm(torch.bfloat16, high=False, pair_type="bf16x2"))
NF4_SCALED_ASM_BF16_HIGH: tl.constexpr = tl.constexpr(
    _nf4_permute_asm(torch.bfloat16, high=True, pair_type="bf16x2"))
NF4_TABLE_ASM_FP16_LOW: tl.constexpr = tl.constexpr(_nf4_permute_asm(torch.float16, high=False))
NF4_TABLE_ASM_FP16_HIGH: tl.constexpr = tl.constexpr(_nf4_permute_asm(torch.float16, high=True))
NF4_WORD_ASM: tl.constexpr = tl.constexpr(_nf4_word_asm())
# The output dtypes of NF4_WORD_ASM, read through .value: a tuple of dtypes written inside a jit
# function becomes a tuple of constexprs, which Triton 3.6's inline_asm_elementwise rejects.
NF4_WORD_DTYPES: tl.constexpr = tl.constexpr((tl.float16,) * 8)

# The interpreter has no SMs; a small count makes the split-K heuristic split small test shapes,
# so the tests run the split-K reduction without forcing it.
INTERPRETER_SM_COUNT = 4
MAX_SPLIT_K = 16


@triton.jit
def load_scale(scales_ptr, absmax_scales_ptr, absmax_offsets_ptr, offsets, mask,
               ABSMAX_DQ: tl.constexpr):
    """The fp32 group scale at ``offsets`` (flat [N, G] indices): stored, or decoded from its
    8-bit log2 code with one FMA and one exp2 (ABSMAX_DQ). Masked entries are 0.

    One return after an if/else: Triton 3.6 also type-checks a return that follows a taken
    constexpr branch, and there scales_ptr holds uint8 codes (the interpreter never noticed)."""
    if ABSMAX_DQ:
        code = tl.load(scales_ptr + offsets, mask=mask, other=0).to(tl.float32)
        block = offsets // DOUBLE_QUANT_BLOCK
        offset = tl.load(absmax_offsets_ptr + block, mask=mask, other=0.0)
        log_absmax = tl.fma(tl.load(absmax_scales_ptr + block, mask=mask, other=0.0), code,
                            offset)
        scale = tl.where(mask, tl.exp2(log_absmax), 0.0)
    else:
        scale = tl.load(scales_ptr + offsets, mask=mask, other=0.0)
    return scale


@triton.jit
def nf4_value(codes):
    """formats.NF4_TABLE[codes] in fp32, codes int32 in 0..15: a binary tree of selects on the
    4 bits with the table as immediates (10 FSEL per weight in sm_90 SASS), no memory access.
    The GEMM and the dequantize kernel decode with it: in the GEMM, Triton's pipeliner turned a
    table load into a 4-byte cp.async per weight through shared memory (nf4 at 0.22x fp16 for
    M = 16 on the H100, int4 at 1.21x). The GEMV loads from the table (gemv.NF4_FROM_TABLE)."""
    bit0 = (codes & 1) != 0
    bit1 = (codes & 2) != 0
    bit2 = (codes & 4) != 0
    low_half = tl.where(bit2,
                        tl.where(bit1, tl.where(bit0, NF4_7, NF4_6), tl.where(bit0, NF4_5, NF4_4)),
                        tl.where(bit1, tl.where(bit0, NF4_3, NF4_2), tl.where(bit0, NF4_1, NF4_0)))
    high_half = tl.where(bit2,
                         tl.where(bit1, tl.where(bit0, NF4_15, NF4_14),
                                  tl.where(bit0, NF4_13, NF4_12)),
                         tl.where(bit1, tl.where(bit0, NF4_11, NF4_10),
                                  tl.where(bit0, NF4_9, NF4_8)))
    return tl.where((codes & 8) != 0, high_half, low_half)


@triton.jit
def _dequantize(codes, scales_ptr, zeros_ptr, nf4_table_ptr, absmax_scales_ptr,
                absmax_offsets_ptr, offs_n, offs_k, k_start, N, K,
                group_size, num_groups, FORMAT: tl.constexpr, HAS_ZEROS: tl.constexpr,
                SCALE_PER_TILE: tl.constexpr, ABSMAX_DQ: tl.constexpr,
                NF4_FROM_TABLE: tl.constexpr):
    """W[offs_n, offs_k] in fp32 from its int32 codes [BLOCK_N, len(offs_k)] (int8: -127..127;
    4-bit: 0..15). Group parameters are loaded once per row when the tile lies in one group
    (SCALE_PER_TILE), else once per element. nf4 values come from nf4_value, or with
    NF4_FROM_TABLE from a load of nf4_table_ptr (fp32 [16], formats.NF4_TABLE).

    Integers become floats through the fp32 bit pattern of 2^23 (an integer 0 <= n < 2^23
    added into its mantissa reads as 2^23 + n): an integer op and an exact subtraction, where a
    cvt instruction runs at 16 per clock per SM, an eighth of the fp32 rate on sm_90, and would
    bound the GEMV.
    """
    row_ok = offs_n < N
    if SCALE_PER_TILE:
        offsets = (offs_n * num_groups + k_start // group_size)[:, None]
        mask = row_ok[:, None]
    else:
        offsets = offs_n[:, None] * num_groups + (offs_k // group_size)[None, :]
        mask = row_ok[:, None] & (offs_k[None, :] < K)
    scale = load_scale(scales_ptr, absmax_scales_ptr, absmax_offsets_ptr, offsets, mask,
                       ABSMAX_DQ)
    if FORMAT == FORMAT_NF4:
        if NF4_FROM_TABLE:
            return tl.load(nf4_table_ptr + codes) * scale  # 64-byte table: stays in L1
        return nf4_value(codes) * scale
    if FORMAT == FORMAT_INT8:
        biased = (codes + (FLOAT_2P23_BITS + 128)).to(tl.float32, bitcast=True)  # 2^23 + 128 + q
        return (biased - (FLOAT_2P23 + 128.0)) * scale
    values = (codes | FLOAT_2P23_BITS).to(tl.float32, bitcast=True) - FLOAT_2P23
    if HAS_ZEROS:
        zero = tl.load(zeros_ptr + offsets, mask=mask, other=0.0)
    else:
        zero = INT4_SYMMETRIC_ZERO
    # scale * (q - zero) as one FMA per weight: q * scale - zero * scale.
    return tl.fma(values, scale, -zero * scale)


@triton.jit
def load_packed(qweight_ptr, offs_n, k_start, N, row_bytes, stride_qn, BLOCK_K: tl.constexpr):
    """The bytes of W[offs_n, k_start : k_start + BLOCK_K] (4-bit codes), uint8
    [BLOCK_N, BLOCK_K // 2], 0 outside the rows; and their byte offsets in a row."""
    offs_byte = k_start // 2 + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(qweight_ptr + offs_n[:, None] * stride_qn + offs_byte[None, :],
                     mask=(offs_n < N)[:, None] & (offs_byte[None, :] < row_bytes), other=0)
    return packed, offs_byte


@triton.jit
def dequantize_nibble_pairs(qweight_ptr, scales_ptr, zeros_ptr, nf4_table_ptr,
                            absmax_scales_ptr, absmax_offsets_ptr, offs_n, k_start,
                            N, K, row_bytes, group_size, num_groups, stride_qn,
                            FORMAT: tl.constexpr, HAS_ZEROS: tl.constexpr,
                            SCALE_PER_TILE: tl.constexpr, ABSMAX_DQ: tl.constexpr,
                            NF4_FROM_TABLE: tl.constexpr, BLOCK_K: tl.constexpr):
    """4-bit formats: (W[offs_n, k_start + 2j], W[offs_n, k_start + 2j + 1]) for
    j < BLOCK_K / 2, in fp32, [BLOCK_N, BLOCK_K // 2] each: the low and high nibbles of one
    row-contiguous load of bytes, kept in the load's register layout.

    row_bytes is qweight's bytes per row, passed rather than computed from K so that Triton sees
    its divisibility by 16 and vectorizes the masked loads. Rows n >= N read scale 0 (so are 0);
    columns k >= K are finite junk that the caller cancels with zero activations.
    SCALE_PER_TILE (common.scale_per_tile): the tile lies in one group, so one scale per row.
    """
    packed, offs_byte = load_packed(qweight_ptr, offs_n, k_start, N, row_bytes, stride_qn,
                                    BLOCK_K)
    packed = packed.to(tl.int32)
    offs_even = 2 * offs_byte
    even = _dequantize(packed & 0xF, scales_ptr, zeros_ptr, nf4_table_ptr, absmax_scales_ptr,
                       absmax_offsets_ptr, offs_n, offs_even, k_start, N, K, group_size,
                       num_groups, FORMAT, HAS_ZEROS, SCALE_PER_TILE, ABSMAX_DQ, NF4_FROM_TABLE)
    odd = _dequantize(packed >> 4, scales_ptr, zeros_ptr, nf4_table_ptr, absmax_scales_ptr,
                      absmax_offsets_ptr, offs_n, offs_even + 1, k_start, N, K, group_size,
                      num_groups, FORMAT, HAS_ZEROS, SCALE_PER_TILE, ABSMAX_DQ, NF4_FROM_TABLE)
    return even, odd


@triton.jit
def _interleave_for_dot(even, odd, DTYPE: tl.constexpr):
    """tl.interleave(even, odd) of asm outputs, then an opaque copy (no instruction once ptxas
    is done): tl.dot on the join + reshape of asm outputs itself made Triton 3.6's
    TritonGPUOptimizeDotOperands fail ("Illegal shared layout") for 64-row tiles."""
    values = tl.interleave(even, odd)
    if DTYPE == tl.float16:
        values = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [values],
                                           dtype=tl.float16, is_pure=True, pack=2)
    else:
        values = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [values],
                                           dtype=tl.bfloat16, is_pure=True, pack=2)
    return values


@triton.jit
def _nf4_values_by_permute(packed, scale, DTYPE: tl.constexpr):
    """absmax * NF4[code] of every nibble of uint8 ``packed`` [R, C] in DTYPE (fp16 / bf16),
    [R, 2 C] in k order, by NF4_SCALED_ASM (15 instructions per 4 weights, where the select
    tree takes 10 FSEL and about 3 LOP3 per weight, then an FMUL and a conversion); scale
    fp32, broadcastable to [R, 1]."""
    scale = tl.broadcast_to(scale.to(DTYPE), packed.shape)
    if DTYPE == tl.float16:
        even = tl.inline_asm_elementwise(NF4_SCALED_ASM_FP16_LOW, "=r,=r,r,r,r", [packed, scale],
                                         dtype=tl.float16, is_pure=True, pack=4)
        odd = tl.inline_asm_elementwise(NF4_SCALED_ASM_FP16_HIGH, "=r,=r,r,r,r",
                                        [packed, scale], dtype=tl.float16, is_pure=True, pack=4)
    else:
        even = tl.inline_asm_elementwise(NF4_SCALED_ASM_BF16_LOW, "=r,=r,r,r,r", [packed, scale],
                                         dtype=tl.bfloat16, is_pure=True, pack=4)
        odd = tl.inline_asm_elementwise(NF4_SCALED_ASM_BF16_HIGH, "=r,=r,r,r,r",
                                        [packed, scale], dtype=tl.bfloat16, is_pure=True,
                                        pack=4)
    return _interleave_for_dot(even, odd, DTYPE)


@triton.jit
def int8_values(codes):
    """The int8 ``codes`` as exact fp32 values, by INT8_VALUES_ASM (compiled kernels only)."""
    return tl.inline_asm_elementwise(INT8_VALUES_ASM, "=r,=r,=r,=r,r", [codes],
                                     dtype=tl.float32, is_pure=True, pack=4)


@triton.jit
def _int8_values_by_magic(codes, scale):
    """s q of int8 ``codes`` [R, C] in fp16 by INT8_SCALED_ASM, q exact and the product rounded
    once, as the CUDA backend rounds; scale fp32, broadcastable to [R, 1]."""
    scale = tl.broadcast_to(scale.to(tl.float16), codes.shape)
    return tl.inline_asm_elementwise(INT8_SCALED_ASM, "=r,=r,r,r,r", [codes, scale],
                                     dtype=tl.float16, is_pure=True, pack=4)


@triton.jit
def int8_codes_for_dot(codes, DTYPE: tl.constexpr, PTX_DECODE: tl.constexpr):
    """The int8 ``codes`` [R, C] as their exact values in DTYPE (|q| <= 127 is exact in fp16 and
    bf16), for a dot whose sums the row's scale multiplies afterwards: fp16 by INT8_SCALED_ASM
    with a scale of one where PTX_DECODE, otherwise by conversion."""
    if PTX_DECODE and DTYPE == tl.float16:
        return _int8_values_by_magic(codes, tl.full([codes.shape[0], 1], 1.0, tl.float32))
    return codes.to(tl.float32).to(DTYPE)


@triton.jit
def _int4_values_by_magic(packed, scale, zero, DTYPE: tl.constexpr):
    """s (q - z) of every nibble of uint8 ``packed`` [R, C] in DTYPE (fp16 / bf16), [R, 2 C] in
    k order, by INT4_SCALED_ASM, rounded as the CUDA backend rounds: q - round(z) exact, then one
    fma by s and -s (z - round(z)), each rounded to DTYPE. scale and zero fp32, [R, 1]."""
    magic = 1024.0 if DTYPE == tl.float16 else 128.0
    zero_int = tl.floor(zero + 0.5)
    neg_magic_zero = tl.broadcast_to((-(magic + zero_int)).to(DTYPE), packed.shape)
    rest = tl.broadcast_to((-scale * (zero - zero_int)).to(DTYPE), packed.shape)
    scale = tl.broadcast_to(scale.to(DTYPE), packed.shape)
    args = [packed, scale, neg_magic_zero, rest]
    if DTYPE == tl.float16:
        even = tl.inline_asm_elementwise(INT4_SCALED_ASM_FP16_LOW, "=r,=r,r,r,r,r,r,r,r", args,
                                         dtype=tl.float16, is_pure=True, pack=4)
        odd = tl.inline_asm_elementwise(INT4_SCALED_ASM_FP16_HIGH, "=r,=r,r,r,r,r,r,r,r", args,
                                        dtype=tl.float16, is_pure=True, pack=4)
    else:
        even = tl.inline_asm_elementwise(INT4_SCALED_ASM_BF16_LOW, "=r,=r,r,r,r,r,r,r,r", args,
                                         dtype=tl.bfloat16, is_pure=True, pack=4)
        odd = tl.inline_asm_elementwise(INT4_SCALED_ASM_BF16_HIGH, "=r,=r,r,r,r,r,r,r,r", args,
                                        dtype=tl.bfloat16, is_pure=True, pack=4)
    return _interleave_for_dot(even, odd, DTYPE)


@triton.jit
def nf4_table_values(packed):
    """(NF4[low nibble], NF4[high nibble]) of uint8 ``packed`` in fp16 (within 2^-12 of the fp32
    table, whatever x's dtype), by the permute decode without the scaling: for the GEMV, which
    multiplies in fp32."""
    low = tl.inline_asm_elementwise(NF4_TABLE_ASM_FP16_LOW, "=r,=r,r", [packed],
                                    dtype=tl.float16, is_pure=True, pack=4)
    high = tl.inline_asm_elementwise(NF4_TABLE_ASM_FP16_HIGH, "=r,=r,r", [packed],
                                     dtype=tl.float16, is_pure=True, pack=4)
    return low, high


@triton.jit
def nf4_word_values(words):
    """NF4[code j] in fp16 (within 2^-12 of the fp32 table) for j = 0..7 of each int32 word of
    nf4 codes (k = 8 w + j), as a tuple of 8 tensors shaped like ``words``: the GEMV's word
    path."""
    return tl.inline_asm_elementwise(NF4_WORD_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r", [words],
                                     dtype=NF4_WORD_DTYPES.value, is_pure=True, pack=1)


@triton.jit
def load_int8_codes(qweight_ptr, offs_n, offs_k, N, row_bytes, stride_qn):
    """int8 W[offs_n, offs_k], [BLOCK_N, len(offs_k)], 0 outside the weight."""
    return tl.load(qweight_ptr + offs_n[:, None] * stride_qn + offs_k[None, :],
                   mask=(offs_n < N)[:, None] & (offs_k[None, :] < row_bytes), other=0)


@triton.jit
def load_group_scales(scales_ptr, zeros_ptr, absmax_scales_ptr, absmax_offsets_ptr, offs_n,
                      group, N, num_groups, HAS_ZEROS: tl.constexpr, ABSMAX_DQ: tl.constexpr):
    """(scale, zero point) of rows offs_n in one group, fp32 [BLOCK_N, 1] each, 0 past N; the
    zero point INT4_SYMMETRIC_ZERO without HAS_ZEROS (symmetric int4; nf4 ignores it)."""
    offsets = (offs_n * num_groups + group)[:, None]
    row_ok = (offs_n < N)[:, None]
    scale = load_scale(scales_ptr, absmax_scales_ptr, absmax_offsets_ptr, offsets, row_ok,
                       ABSMAX_DQ)
    if HAS_ZEROS:
        zero = tl.load(zeros_ptr + offsets, mask=row_ok, other=0.0)
    else:
        zero = tl.full(scale.shape, INT4_SYMMETRIC_ZERO, tl.float32)
    return scale, zero


@triton.jit
def four_bit_values(packed, scale, zero, FORMAT: tl.constexpr, DTYPE: tl.constexpr):
    """The 4-bit tile of uint8 ``packed`` [R, C] in one group, decoded by inline PTX:
    [R, 2 C] in DTYPE and k order (_nf4_values_by_permute, _int4_values_by_magic)."""
    if FORMAT == FORMAT_NF4:
        return _nf4_values_by_permute(packed, scale, DTYPE)
    return _int4_values_by_magic(packed, scale, zero, DTYPE)


@triton.jit
def dequantize_tile(qweight_ptr, scales_ptr, zeros_ptr, absmax_scales_ptr,
                    absmax_offsets_ptr, offs_n, k_start,
                    N, K, row_bytes, group_size, num_groups, stride_qn,
                    FORMAT: tl.constexpr, HAS_ZEROS: tl.constexpr, SCALE_PER_TILE: tl.constexpr,
                    ABSMAX_DQ: tl.constexpr, BLOCK_K: tl.constexpr, DTYPE: tl.constexpr,
                    PTX_DECODE: tl.constexpr):
    """W[offs_n, k_start : k_start + BLOCK_K] in DTYPE, [BLOCK_N, BLOCK_K] (edges as in
    dequantize_nibble_pairs): computed in fp32 and rounded once, except with PTX_DECODE
    (ptx_decode_enabled) on tiles in one group, decoded by inline PTX and rounded as the CUDA
    backend rounds: nf4's table value and absmax each rounded to DTYPE and multiplied in DTYPE
    (_nf4_values_by_permute), int4 by the magic-number fma pair (_int4_values_by_magic), int8
    in fp16 exact times the scale rounded to fp16 (_int8_values_by_magic). nf4 otherwise by the
    select tree (nf4_value)."""
    if FORMAT == FORMAT_INT8:
        offs_k = k_start + tl.arange(0, BLOCK_K)
        codes = load_int8_codes(qweight_ptr, offs_n, offs_k, N, row_bytes, stride_qn)
        if PTX_DECODE and SCALE_PER_TILE and DTYPE == tl.float16:
            scale, _ = load_group_scales(scales_ptr, zeros_ptr, absmax_scales_ptr,
                                         absmax_offsets_ptr, offs_n, k_start // group_size, N,
                                         num_groups, False, False)
            return _int8_values_by_magic(codes, scale)
        w = _dequantize(codes.to(tl.int32), scales_ptr, zeros_ptr, scales_ptr,
                        absmax_scales_ptr, absmax_offsets_ptr, offs_n, offs_k, k_start, N, K,
                        group_size, num_groups, FORMAT, HAS_ZEROS, SCALE_PER_TILE, ABSMAX_DQ,
                        False)
        return w.to(DTYPE)
    if FORMAT != FORMAT_INT8 and PTX_DECODE and SCALE_PER_TILE:
        packed, offs_byte = load_packed(qweight_ptr, offs_n, k_start, N, row_bytes, stride_qn,
                                        BLOCK_K)
        scale, zero = load_group_scales(scales_ptr, zeros_ptr, absmax_scales_ptr,
                                        absmax_offsets_ptr, offs_n, k_start // group_size, N,
                                        num_groups, HAS_ZEROS, ABSMAX_DQ)
        return four_bit_values(packed, scale, zero, FORMAT, DTYPE)
    even, odd = dequantize_nibble_pairs(qweight_ptr, scales_ptr, zeros_ptr, scales_ptr,
                                        absmax_scales_ptr, absmax_offsets_ptr, offs_n, k_start,
                                        N, K, row_bytes, group_size, num_groups, stride_qn,
                                        FORMAT, HAS_ZEROS, SCALE_PER_TILE, ABSMAX_DQ, False,
                                        BLOCK_K)
    return tl.interleave(even, odd).to(DTYPE)


@triton.jit
def load_x(x_ptr, offs_m, offs_k, M, K, stride_xm, stride_xk):
    """x[offs_m, offs_k] in fp32, zero outside [M, K]."""
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
    return x.to(tl.float32)


@triton.jit
def load_x_row(x_ptr, offs_k, K, stride_xk):
    """x[0, offs_k] in fp32, zero past K: 1-D, so its layout follows the weight tile's."""
    return tl.load(x_ptr + offs_k * stride_xk, mask=offs_k < K, other=0.0).to(tl.float32)


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
    into ``partials`` (fp32 [M, N]) and counts itself in ``tile_counters[tile_id]`` (int32);
    the last to arrive reads the total, writes y, and sets the tile's partials and counter back
    to zero: split_k_workspace hands the next launch the same, still zeroed, memory without a
    memset. One launch, no second pass over y, and the output is rounded once, like the
    unsplit kernel.
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
            # The zeros may be stored in another layout than the sums were loaded in (so by
            # other threads): every thread's loads come before any zero lands. Without this,
            # rows of y read 0 at times (sm_90, 128 x 128 tiles, 8 warps: bench/NOTES.md).
            tl.debug_barrier()
            tl.store(partial_ptrs, tl.zeros_like(total), mask=mask)
            tl.atomic_xchg(tile_counters_ptr + tile_id, 0, sem="relaxed")


# --- launch-time choices ------------------------------------------------------------------------

def interpreting() -> bool:
    return os.environ.get(INTERPRET_ENV_VAR, "0") == "1"


def ptx_decode_enabled(dtype: torch.dtype) -> bool:
    """The kernels' PTX_DECODE (4-bit decode by inline PTX): compiled kernels (the interpreter
    cannot run inline PTX) with fp16 or bf16 x (fp32 x keeps the exact fp32 decode)."""
    return not interpreting() and dtype in (torch.float16, torch.bfloat16)


def autotune_enabled() -> bool:
    """Autotune with QKERNELS_TRITON_AUTOTUNE=1; never under the interpreter, which has no timer
    to tune with. Off by default: Triton's tuner times each config alone with a warm launch, and
    its picks ran up to 1.38x slower than the default configs in cold-L2 graph replay, what a
    decode step is (H100, 14336x4096 int4 M = 1: 37.9 against 27.5 us; "Triton" in
    bench/NOTES.md), while the first call of every new (M bucket, shape, format) paid 5-17 s."""
    return os.environ.get(AUTOTUNE_ENV_VAR, "0") == "1" and not interpreting()


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SM_COUNT
    return _cuda_sm_count(_index(device))


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int) -> tuple:
    return torch.cuda.get_device_capability(index)


def capability(device: torch.device):
    """(major, minor) of a CUDA device; None for the interpreter on CPU tensors."""
    if device.type != "cuda":
        return None
    return _cuda_capability(_index(device))


def dependent_launch(device: torch.device) -> bool:
    """Whether the GEMV and the GEMM are launched programmatically dependent on the kernel
    before them (launch_pdl; sm_90 and later, compiled): a launch and its set-up overlap the end
    of that kernel, and each program waits for it to end (gdc_wait) before its first load, so
    it reads whatever that kernel wrote, x and weights alike (the CUDA GEMV's v1.15)."""
    cap = capability(device)
    return cap is not None and cap[0] >= 9


def choose_split_k(output_tiles: int, k_tiles: int, device: torch.device, programs_per_sm: int,
                   min_k_tiles_per_split: int, idle_min_k_tiles_per_split: int = None) -> int:
    """Smallest power of two that gives every SM ``programs_per_sm`` programs, while each split
    keeps at least ``min_k_tiles_per_split`` tiles of K (fewer makes the reduction dominate),
    or ``idle_min_k_tiles_per_split`` while there are fewer programs than SMs (idle SMs cost
    more than the reduction)."""
    sms = sm_count(device)
    split = 1
    while output_tiles * split < programs_per_sm * sms and split * 2 <= MAX_SPLIT_K:
        idle = idle_min_k_tiles_per_split is not None and output_tiles * split < sms
        floor = idle_min_k_tiles_per_split if idle else min_k_tiles_per_split
        if k_tiles < 2 * split * floor:
            break
        split *= 2
    return split


def scale_per_tile(group_size: int, num_groups: int, block_k: int) -> bool:
    """True when every BLOCK_K tile (starting at a multiple of BLOCK_K) lies inside one group."""
    return num_groups == 1 or group_size % block_k == 0


def fit_block_k(block_k: int, group_size: int, num_groups: int, min_block_k: int) -> int:
    """BLOCK_K halved until it divides the group size (so scales load once per tile row), but
    not below min_block_k; group sizes with no such divisor (odd ones) keep BLOCK_K and load a
    scale per element (correct, slower)."""
    fitted = block_k
    while not scale_per_tile(group_size, num_groups, fitted) and fitted // 2 >= min_block_k:
        fitted //= 2
    return fitted if scale_per_tile(group_size, num_groups, fitted) else block_k


def fit_tile(block_n: int, block_k: int, group_size: int, num_groups: int, min_block_k: int,
             max_block_n: int) -> tuple:
    """(BLOCK_N, BLOCK_K) with BLOCK_K fitted to the groups (fit_block_k) and BLOCK_N grown, up
    to max_block_n, so that a tile still loads as many bytes."""
    fitted_k = fit_block_k(block_k, group_size, num_groups, min_block_k)
    return min(max_block_n, block_n * block_k // fitted_k), fitted_k


# Split-K workspaces that the kernels leave zeroed (store_output), by (device, stream), and by
# (device, GRAPHS) the one that CUDA-graph captures use. Each list keeps its earlier, smaller
# buffers: a captured graph may still use them.
_WORKSPACES: dict = {}
GRAPHS = "graphs"


def split_k_workspace(m: int, n: int, max_tiles: int, device: torch.device):
    """Zeroed fp32 partial sums [M, N] and int32 tile counters [max_tiles], from one buffer
    that the kernels set back to zero (store_output), so only its first launch pays a memset.
    Eager launches take their stream's buffer, so launches on two streams may run at once. A
    CUDA-graph capture takes the GRAPHS buffer, which an eager launch (the usual warm-up) has
    zeroed; without one, a fresh buffer whose memset the graph replays."""
    size = m * n + max_tiles  # zero bits read 0.0 and 0 alike: the two parts may move
    if device.type != "cuda":
        buffer = _zeroed_buffer((str(device), None), size, device)
    elif torch.cuda.is_current_stream_capturing():
        buffer = _zeroed_buffer((_index(device), GRAPHS), size, device, grow=False)
        if buffer is None:  # nothing can zero a new buffer before the graph runs but the graph
            buffer = torch.zeros(size, dtype=torch.float32, device=device)
    else:
        _zeroed_buffer((_index(device), GRAPHS), size, device)  # for a capture after this call
        stream = torch.cuda.current_stream(device).cuda_stream
        buffer = _zeroed_buffer((_index(device), stream), size, device)
    return buffer[: m * n], buffer[m * n: size].view(torch.int32)


def _zeroed_buffer(key, size: int, device: torch.device, grow: bool = True):
    """_WORKSPACES[key]'s buffer if it holds ``size`` elements; else a new zeroed one of at
    least twice the size (so a growing M x N leaves few behind), or None if not ``grow``."""
    buffers = _WORKSPACES.setdefault(key, [])
    if not buffers or buffers[-1].numel() < size:
        if not grow:
            return None
        grown = max(size, 2 * buffers[-1].numel()) if buffers else size
        buffers.append(torch.zeros(grown, dtype=torch.float32, device=device))
    return buffers[-1]


def config_key(config: triton.Config) -> tuple:
    return tuple(sorted(config.kwargs.items())) + (config.num_warps, config.num_stages)


def unique_configs(configs) -> list:
    seen = {}
    for config in configs:
        seen.setdefault(config_key(config), config)
    return list(seen.values())
