// Int8 activations: the quantizer every path shares, and the scalar kernel (the generic twin of
// csrc/cpu/gemv_a8_{avx2,neon}.cpp).
#include <algorithm>
#include <cmath>
#include <limits>

#include "dtype.h"
#include "qmatmul_a8.h"

namespace qk {

Status validate_a8(const QMatmulParams& p) {
  if (Status status = validate(p); status != Status::kOk) return status;
  if (p.group_size % kActivationBlock != 0 && p.group_size < p.k) return Status::kInt8Activations;
  return Status::kOk;
}

namespace {

// v rounded to the nearest integer, ties to even, for |v| <= 2^22: adding 1.5 * 2^23 leaves no
// fraction bits, so the FPU's default rounding does it. std::nearbyint is a libm call on x86-64
// without SSE4.1 (the baseline this file is built for), about a tenth of a small layer's time.
// |x / s| <= 127 here: x / s rounds to at most 127 when |x| = max|x_block|.
inline float round_half_even(float v) {
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23
  return (v + kShift) - kShift;
}

// Where code k0 + j of a pair goes (QuantizedActivations): int4 puts even k first.
inline int64_t code_slot(Format fmt, int64_t j) {
  if (fmt == Format::kNF4) return nf4_code_slot(j);
  return fmt == Format::kInt4 ? (j % 2) * kActivationBlock + j / 2 : j;
}

}  // namespace

void quantize_activations(const QMatmulParams& p, void* codes, float* scales, float* zero_terms) {
  const int64_t pairs = activation_pairs(p.k);
  const int64_t blocks = 2 * pairs;
  const int64_t groups = num_groups(p.k, p.group_size);
  float converted[kActivationBlock];
  int32_t block_codes[kActivationBlock];
  const bool wide = p.fmt == Format::kNF4;  // int16 codes
  for (int64_t i = 0; i < p.m; ++i) {
    int8_t* row_codes = static_cast<int8_t*>(codes) + i * pairs * kActivationPair;
    int16_t* row_wide_codes = static_cast<int16_t*>(codes) + i * pairs * kActivationPair;
    float* row_scales = scales + i * blocks;
    float* row_zero_terms = zero_terms + i * groups;
    if (p.fmt == Format::kInt4) std::fill(row_zero_terms, row_zero_terms + groups, 0.0f);
    if (wide) {
      std::fill(row_wide_codes, row_wide_codes + pairs * kActivationPair, int16_t(0));
    } else {
      std::fill(row_codes, row_codes + pairs * kActivationPair, int8_t(0));
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k0 = b * kActivationBlock;
      const int64_t count = std::max<int64_t>(0, std::min(kActivationBlock, p.k - k0));
      // Plain loops over a block that the compiler vectorises (SSE2 here): fp32 x is read in
      // place; the int4 order is applied afterwards.
      const float* values = converted;
      if (p.x_dtype == DType::kF32) {
        values = static_cast<const float*>(p.x) + i * p.x_row_stride + k0;
      } else {
        for (int64_t j = 0; j < count; ++j) {
          converted[j] = load_as_float(p.x, p.x_dtype, i * p.x_row_stride + k0 + j);
        }
      }
      // A NaN makes the block's scale NaN (as torch's amax does), and so y, rather than a code
      // of garbage. Two plain reductions, which vectorise; one NaN-sticky max did not (+8 us at
      // K = 4096).
      float amax = 0.0f;
      int has_nan = 0;
      for (int64_t j = 0; j < count; ++j) {
        const float magnitude = std::fabs(values[j]);
        amax = amax < magnitude ? magnitude : amax;
        has_nan |= magnitude != magnitude;
      }
      if (has_nan) amax = std::numeric_limits<float>::quiet_NaN();
      // Division, not a multiply by 127 / amax: the reference divides, and the codes must be
      // bit-identical to its codes for the tests' bound to be tight.
      const float scale = amax / float(kActivationMaxCode);
      int32_t sum = 0;
      // Only finite, nonzero scales give codes. Zero: codes 0. Inf or NaN (x not finite): codes
      // 0 too, and y = scale * 0 is NaN, as the reference gives.
      if (scale > 0.0f && scale <= std::numeric_limits<float>::max()) {
        for (int64_t j = 0; j < count; ++j) block_codes[j] = int32_t(round_half_even(values[j] / scale));
        const int64_t pair_start = (b / 2) * kActivationPair;
        const int64_t first = (b % 2) * kActivationBlock;  // of this block within its pair
        for (int64_t j = 0; j < count; ++j) {
          const int64_t slot = pair_start + code_slot(p.fmt, first + j);
          if (wide) {
            row_wide_codes[slot] = int16_t(block_codes[j]);
          } else {
            row_codes[slot] = int8_t(block_codes[j]);
          }
          sum += block_codes[j];
        }
      }
      row_scales[b] = scale;
      if (p.fmt == Format::kInt4 && count > 0) {
        row_zero_terms[k0 / std::min(p.group_size, p.k)] += scale * float(sum);
      }
    }
  }
}

Status gemv_a8_scalar(const QMatmulParams& p, const QuantizedActivations& xq, int64_t n_begin,
                      int64_t n_end) {
  if (Status status = validate_a8(p); status != Status::kOk) return status;
  const int64_t groups = num_groups(p.k, p.group_size);
  const int64_t blocks = num_groups(p.k, kActivationBlock);
  const int64_t blocks_per_group = p.group_size >= p.k ? blocks : p.group_size / kActivationBlock;
  const int64_t row_bytes = packed_row_bytes(p.fmt, p.k);
  for (int64_t n = n_begin; n < n_end; ++n) {
    const auto* row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
    const float* row_scales = p.scales + n * p.scales_row_stride;
    for (int64_t i = 0; i < p.m; ++i) {
      const int8_t* codes = p.fmt == Format::kNF4 ? nullptr : xq.row_codes<int8_t>(i);
      const int16_t* wide_codes = p.fmt == Format::kNF4 ? xq.row_codes<int16_t>(i) : nullptr;
      const float* x_scales = xq.row_scales(i);
      float total = 0.0f;
      for (int64_t group = 0; group < groups; ++group) {
        const int64_t b_end = std::min(blocks, (group + 1) * blocks_per_group);
        float dot = 0.0f;  // sum over the blocks of x_scale * (codes . weights)
        for (int64_t b = group * blocks_per_group; b < b_end; ++b) {
          const int64_t pair_start = (b / 2) * kActivationPair;
          // Exact: |dot| <= 32 * 127 * 127 (int8), 32 * 127 * 32767 < 2^31 (nf4).
          int32_t block_dot = 0;
          if (p.fmt == Format::kInt8) {
            const int64_t k0 = b * kActivationBlock, count = std::min(kActivationBlock, p.k - k0);
            const int8_t* block_codes = codes + pair_start + (b % 2) * kActivationBlock;
            for (int64_t j = 0; j < count; ++j) {
              block_dot += int32_t(block_codes[j]) * static_cast<int8_t>(row[k0 + j]);
            }
          } else {
            // Byte t of the pair's packed bytes holds k0 + 2t and k0 + 2t + 1 of the pair; int4
            // codes sit at [t] and [32 + t], nf4's where nf4_code_slot puts them.
            const int64_t byte0 = b * kActivationBlock / 2;
            const int64_t byte1 = std::min(row_bytes, byte0 + kActivationBlock / 2);
            for (int64_t byte = byte0; byte < byte1; ++byte) {
              const int64_t t = byte - (b / 2) * kActivationBlock;
              const int low = (row[byte] >> kNibbleBitsLow) & 0xf;
              const int high = row[byte] >> kNibbleBitsHigh;
              if (p.fmt == Format::kNF4) {
                const int16_t* pair_codes = wide_codes + pair_start;
                block_dot += int32_t(pair_codes[nf4_code_slot(2 * t)]) * kNF4TableQ15[low] +
                             int32_t(pair_codes[nf4_code_slot(2 * t + 1)]) * kNF4TableQ15[high];
              } else {
                block_dot += int32_t(codes[pair_start + t]) * low +
                             int32_t(codes[pair_start + kActivationBlock + t]) * high;
              }
            }
          }
          dot += x_scales[b] * float(block_dot);
        }
        if (p.fmt == Format::kInt4) {
          const float zero = p.zeros ? p.zeros[n * p.scales_row_stride + group] : kInt4SymmetricZero;
          dot -= zero * xq.row_zero_terms(i)[group];
        }
        total += row_scales[group] * dot;
      }
      if (p.fmt == Format::kNF4) total *= kNF4Q15Step;
      const float bias = p.bias ? load_as_float(p.bias, p.y_dtype, n) : 0.0f;
      store_from_float(p.y, p.y_dtype, i * p.y_row_stride + n, total + bias);
    }
  }
  return Status::kOk;
}

}  // namespace qk
