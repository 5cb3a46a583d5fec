// NEON kernel for int8 activations (qmatmul_a8.h), the aarch64 twin of gemv_a8_avx2.cpp.
// Baseline armv8.0 (no SDOT): signed byte products widened by vmull_s8 / vmlal_high_s8 into
// int16 and summed pairwise into int32 (vpaddlq / vpadalq). int4 codes 0..15 are already valid
// signed bytes, so neither format needs AVX2's sign trick. nf4: its Q15 table as two byte
// planes looked up by vqtbl1q_u8, zipped to int16 and multiplied by int16 x codes (vmull_s16 /
// vmlal_s16 into int32).
//
//   per weight row n, per x row, per group, per block of 32:
//     int4: one 16-byte load; low nibbles x codes[64 p + 16 h ..], high nibbles x
//           codes[64 p + 32 + 16 h ..] (block b = 2 p + h: the quantizer's pair order)
//     nf4:  one 16-byte load; the entries of bytes 0-7 and 8-15 of the low nibbles x runs 0 and 1
//           at 8 h, of the high nibbles x runs 2 and 3 (QuantizedActivations)
//     int8: two 16-byte loads against codes[32 b ..]
//     group += x_scale * float(dot);  total += w_scale * group
//   int4: total -= sum over groups of w_scale * zero * zero_term; nf4: total /= 32767.
//
// Not measured on hardware yet: tested under qemu (tests/native).
#include <arm_neon.h>

#include <cstring>

#include "../core/qmatmul_a8.h"
#include "kernel_common.h"
#include "kernels.h"
#include "neon_common.h"

namespace qk::cpu {
namespace {

// int32 lanes summing to the dot of block b's 32 codes with its 32 int4 weights (16 bytes).
// A lane of the int16 sum adds four products of at most 15 * 127: no overflow.
inline int32x4_t int4_block_dot(uint8x16_t packed, const int8_t* pair_codes, int64_t half) {
  const int8x16_t low = vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f)));
  const int8x16_t high = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
  const int8x16_t even = vld1q_s8(pair_codes + 16 * half);
  const int8x16_t odd = vld1q_s8(pair_codes + kActivationBlock + 16 * half);
  int16x8_t sum = vmull_s8(vget_low_s8(low), vget_low_s8(even));
  sum = vmlal_high_s8(sum, low, even);
  sum = vmlal_s8(sum, vget_low_s8(high), vget_low_s8(odd));
  sum = vmlal_high_s8(sum, high, odd);
  return vpaddlq_s16(sum);
}

// kNF4TableQ15's byte planes in registers, for vqtbl1q_u8.
struct NF4Planes {
  uint8x16_t low = vld1q_u8(kNF4TableQ15Planes.low), high = vld1q_u8(kNF4TableQ15Planes.high);
  // The table entries of 16 nibbles: of nibbles 0-7 in first, 8-15 in second.
  void lookup(uint8x16_t nibbles, int16x8_t* first, int16x8_t* second) const {
    const uint8x16_t low_bytes = vqtbl1q_u8(low, nibbles), high_bytes = vqtbl1q_u8(high, nibbles);
    *first = vreinterpretq_s16_u8(vzip1q_u8(low_bytes, high_bytes));
    *second = vreinterpretq_s16_u8(vzip2q_u8(low_bytes, high_bytes));
  }
};

// int32 lanes summing to the dot of block b = 2 p + half's 32 codes with its 32 nf4 weights
// (16 bytes): 8 products of at most 32767 * 127 per lane, exact.
inline int32x4_t nf4_block_dot(const NF4Planes& table, uint8x16_t packed, const int16_t* pair_codes,
                               int64_t half) {
  int16x8_t runs[4];
  table.lookup(vandq_u8(packed, vdupq_n_u8(0x0f)), &runs[0], &runs[1]);
  table.lookup(vshrq_n_u8(packed, 4), &runs[2], &runs[3]);
  int32x4_t sum = vdupq_n_s32(0);
  for (int run = 0; run < 4; ++run) {
    const int16x8_t x = vld1q_s16(pair_codes + 16 * run + 8 * half);
    sum = vmlal_s16(sum, vget_low_s16(runs[run]), vget_low_s16(x));
    sum = vmlal_high_s16(sum, runs[run], x);
  }
  return sum;
}

// The same for 32 int8 weights; two products of at most 127 * 127 per int16 lane.
inline int32x4_t int8_block_dot(const int8_t* weights, const int8_t* codes) {
  int32x4_t sum = vdupq_n_s32(0);
  for (int half = 0; half < 2; ++half) {
    const int8x16_t w = vld1q_s8(weights + 16 * half), x = vld1q_s8(codes + 16 * half);
    sum = vpadalq_s16(sum, vmlal_high_s8(vmull_s8(vget_low_s8(w), vget_low_s8(x)), w, x));
  }
  return sum;
}

// One weight row against one x row, without bias.
float dot_weight_row(const QMatmulParams& p, const QuantizedActivations& xq, const NF4Planes& nf4_table,
                     int64_t i, int64_t n) {
  const auto* row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
  const float* w_scales = p.scales + n * p.scales_row_stride;
  const float* x_scales = xq.row_scales(i);
  const int64_t groups = num_groups(p.k, p.group_size);
  const int64_t blocks = num_groups(p.k, kActivationBlock);
  const int64_t group_blocks = p.group_size >= p.k ? blocks : p.group_size / kActivationBlock;
  const int64_t row_bytes = packed_row_bytes(p.fmt, p.k);
  const int64_t block_bytes = p.fmt == Format::kInt8 ? kActivationBlock : kActivationBlock / 2;
  const int64_t full_blocks = row_bytes / block_bytes;
  alignas(16) uint8_t staged[kActivationBlock] = {};  // the ragged last block, zero-padded
  if (full_blocks < blocks) {
    std::memcpy(staged, row + full_blocks * block_bytes, size_t(row_bytes - full_blocks * block_bytes));
  }
  float32x4_t total = vdupq_n_f32(0.0f);
  for (int64_t group = 0; group < groups; ++group) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    const int64_t b_end = min_i64(blocks, (group + 1) * group_blocks);
    for (int64_t b = group * group_blocks; b < b_end; ++b) {
      const uint8_t* weights = b < full_blocks ? row + b * block_bytes : staged;
      const int64_t pair_start = (b / 2) * kActivationPair;
      int32x4_t dot;
      if (p.fmt == Format::kInt8) {
        dot = int8_block_dot(reinterpret_cast<const int8_t*>(weights),
                             xq.row_codes<int8_t>(i) + b * kActivationBlock);
      } else if (p.fmt == Format::kInt4) {
        dot = int4_block_dot(vld1q_u8(weights), xq.row_codes<int8_t>(i) + pair_start, b % 2);
      } else {
        dot = nf4_block_dot(nf4_table, vld1q_u8(weights), xq.row_codes<int16_t>(i) + pair_start, b % 2);
      }
      acc = vfmaq_n_f32(acc, vcvtq_f32_s32(dot), x_scales[b]);
    }
    total = vfmaq_n_f32(total, acc, w_scales[group]);
  }
  float out = vaddvq_f32(total);
  if (p.fmt == Format::kNF4) out *= kNF4Q15Step;
  if (p.fmt == Format::kInt4) {
    const float* zeros = p.zeros ? p.zeros + n * p.scales_row_stride : nullptr;
    const float* zero_terms = xq.row_zero_terms(i);
    for (int64_t group = 0; group < groups; ++group) {
      out -= w_scales[group] * (zeros ? zeros[group] : kInt4SymmetricZero) * zero_terms[group];
    }
  }
  return out;
}

}  // namespace

Status gemv_a8_neon(const QMatmulParams& p, const QuantizedActivations& xq, int64_t n_begin,
                    int64_t n_end) {
  if (Status status = validate_a8(p); status != Status::kOk) return status;
  const NF4Planes nf4_table;  // read by nf4 weights only
  gemv_store_chunks(p, n_begin, n_end, 1, [&](int64_t n, int64_t i, int, float* out) {
    out[0] = dot_weight_row(p, xq, nf4_table, i, n);
  });
  return Status::kOk;
}

}  // namespace qk::cpu
