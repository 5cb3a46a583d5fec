// NEON GEMV: y[i, n] = x[i, :] . dequant(W)[n, :] (+ bias) for the few rows of x of a decode
// step; the aarch64 twin of gemv_avx2.cpp, with the same plan:
//
//   per weight row n (the caller's column range):
//     per block of up to 4 rows of x:
//       per group of K:
//         decode 8 weights at a time into two fp32 registers,
//         FMA them into each x row's accumulators: dot = sum(x * code)
//         total += scale * dot;   int4: total -= scale * zero * sum(x over the group)
//       store total + bias
#include <arm_neon.h>

#include "kernel_common.h"
#include "kernels.h"
#include "neon_common.h"

namespace qk::cpu {
namespace {

// Rows of x sharing one decoded weight vector: 4 rows x 4 accumulators + 4 decoded vectors +
// constants stay within the 32 q registers.
constexpr int kRowBlock = 4;

struct Int4Decoder {
  Float8 operator()(const uint8_t* row, int64_t k) const { return decode_int4(row, k); }
};
struct NF4Decoder {
  NF4Table table;
  Float8 operator()(const uint8_t* row, int64_t k) const { return decode_nf4(table, row, k); }
};
struct Int8Decoder {
  Float8 operator()(const uint8_t* row, int64_t k) const { return decode_int8(row, k); }
};

// One weight row n against ROWS rows of x. out[r] = y[i0 + r, n] without bias.
// x_sums: [ROWS, groups] sums of x per group (int4 only, else unused).
template <class Decoder, int ROWS>
void dot_weight_row(const QMatmulParams& p, const Decoder& decode, const float* const* x_rows,
                    const float* x_sums, int64_t groups, int64_t n, float* out) {
  const auto* row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
  const float* row_scales = p.scales + n * p.scales_row_stride;
  float32x4_t total[ROWS];
  float correction[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    total[r] = vdupq_n_f32(0.0f);
    correction[r] = 0.0f;
  }
  for (int64_t group = 0; group < groups; ++group) {
    const int64_t k0 = group * p.group_size;
    const int64_t k1 = min_i64(p.k, k0 + p.group_size);
    // 4 independent chains per row (two 8-weight steps x two halves) hide the FMA latency.
    float32x4_t acc[ROWS][4];
    for (int r = 0; r < ROWS; ++r) {
      for (int c = 0; c < 4; ++c) acc[r][c] = vdupq_n_f32(0.0f);
    }
    int64_t k = k0;
    for (; k + 16 <= k1; k += 16) {
      const Float8 w0 = decode(row, k), w1 = decode(row, k + 8);
      for (int r = 0; r < ROWS; ++r) {
        const float* xr = x_rows[r] + k;
        acc[r][0] = vfmaq_f32(acc[r][0], w0.low, vld1q_f32(xr));
        acc[r][1] = vfmaq_f32(acc[r][1], w0.high, vld1q_f32(xr + 4));
        acc[r][2] = vfmaq_f32(acc[r][2], w1.low, vld1q_f32(xr + 8));
        acc[r][3] = vfmaq_f32(acc[r][3], w1.high, vld1q_f32(xr + 12));
      }
    }
    for (; k + 8 <= k1; k += 8) {
      const Float8 w = decode(row, k);
      for (int r = 0; r < ROWS; ++r) {
        acc[r][0] = vfmaq_f32(acc[r][0], w.low, vld1q_f32(x_rows[r] + k));
        acc[r][1] = vfmaq_f32(acc[r][1], w.high, vld1q_f32(x_rows[r] + k + 4));
      }
    }
    float tail_dot[ROWS] = {};
    for (; k < k1; ++k) {  // the last < 8 weights of a group: never read past the row
      const float code = decode_one(p.fmt, row, k);
      for (int r = 0; r < ROWS; ++r) tail_dot[r] += x_rows[r][k] * code;
    }
    const float scale = row_scales[group];
    const float zero = zero_point_of(p, n, group);
    for (int r = 0; r < ROWS; ++r) {
      const float32x4_t dot = vaddq_f32(vaddq_f32(acc[r][0], acc[r][1]), vaddq_f32(acc[r][2], acc[r][3]));
      total[r] = vfmaq_n_f32(total[r], dot, scale);
      // sum(x * (q - z)) = sum(x * q) - z * sum(x): one multiply per group for the zero point.
      const float x_sum = zero != 0.0f ? x_sums[r * groups + group] : 0.0f;
      correction[r] += scale * (tail_dot[r] - zero * x_sum);
    }
  }
  for (int r = 0; r < ROWS; ++r) out[r] = vaddvq_f32(total[r]) + correction[r];
}

// Per-group sums of x, [m, groups], for the int4 zero point.
const float* group_sums(const QMatmulParams& p, const F32Rows& x, int64_t groups) {
  float* sums = scratch_floats(ScratchSlot::kGroupSums, size_t(p.m * groups));
  for (int64_t i = 0; i < p.m; ++i) {
    const float* xr = x.row(i);
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t k0 = group * p.group_size;
      const int64_t k1 = min_i64(p.k, k0 + p.group_size);
      float32x4_t acc = vdupq_n_f32(0.0f);
      int64_t k = k0;
      for (; k + 4 <= k1; k += 4) acc = vaddq_f32(acc, vld1q_f32(xr + k));
      float sum = vaddvq_f32(acc);
      for (; k < k1; ++k) sum += xr[k];
      sums[i * groups + group] = sum;
    }
  }
  return sums;
}

template <class Decoder>
void gemv_columns(const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  const Decoder decode;
  const F32Rows x = activations_as_f32(p);
  const int64_t groups = num_groups(p.k, p.group_size);
  const float* sums = p.fmt == Format::kInt4 ? group_sums(p, x, groups) : nullptr;
  gemv_store_chunks(p, n_begin, n_end, kRowBlock, [&](int64_t n, int64_t i0, int rows, float* out) {
    const float* x_rows[kRowBlock];
    for (int r = 0; r < rows; ++r) x_rows[r] = x.row(i0 + r);
    const float* block_sums = sums ? sums + i0 * groups : nullptr;
    switch (rows) {
      case 1: dot_weight_row<Decoder, 1>(p, decode, x_rows, block_sums, groups, n, out); break;
      case 2: dot_weight_row<Decoder, 2>(p, decode, x_rows, block_sums, groups, n, out); break;
      case 3: dot_weight_row<Decoder, 3>(p, decode, x_rows, block_sums, groups, n, out); break;
      default: dot_weight_row<Decoder, 4>(p, decode, x_rows, block_sums, groups, n, out); break;
    }
  });
}

}  // namespace

Status gemv_neon(const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  if (Status status = validate(p); status != Status::kOk) return status;
  if (!groups_start_even(p)) return gemv_scalar(p, n_begin, n_end);  // odd groups of 4-bit codes
  switch (p.fmt) {
    case Format::kInt4: gemv_columns<Int4Decoder>(p, n_begin, n_end); break;
    case Format::kNF4: gemv_columns<NF4Decoder>(p, n_begin, n_end); break;
    case Format::kInt8: gemv_columns<Int8Decoder>(p, n_begin, n_end); break;
  }
  return Status::kOk;
}

}  // namespace qk::cpu
