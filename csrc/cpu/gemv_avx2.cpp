// AVX2 GEMV: y[i, n] = x[i, :] . dequant(W)[n, :] (+ bias) for the few rows of x of a decode
// step. Memory-bound, so the plan is to touch each packed weight once:
//
//   per weight row n (the caller's column range):
//     per block of up to 4 rows of x:
//       per group of K:
//         decode 8 weights at a time into an fp32 register (no dequantized copy anywhere),
//         FMA it into one accumulator per x row: dot = sum(x * code)
//         total += scale * dot;   int4: total -= scale * zero * sum(x over the group)
//       store total + bias
//
// The weight row (<= 8 KiB for K = 16k int4) is read from memory for the first block of x rows
// and from L1 for the others. Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt).
#include <immintrin.h>

#include <cstring>

#include "avx2_common.h"
#include "kernel_common.h"
#include "kernels.h"

namespace qk::cpu {
namespace {

// Rows of x sharing one decoded weight vector. 4 rows x 2 accumulators + 4 decoded vectors +
// constants fill the 16 ymm registers; more rows would spill.
constexpr int kRowBlock = 4;

// --- decoders: 8 consecutive codes as fp32, from the first byte holding them ---------------
// kBytesPer8: how far the byte pointer moves per 8 weights. The kernel advances a pointer
// rather than computing row + k / 2 per step: the signed halving cost 3 scalar instructions per
// 8 weights, a third of the loop.

// int4: broadcast the 4 bytes holding 8 codes, shift lane t right by 4t, keep the low nibble.
// Nibble t of the little-endian word is weight k+t, so the lanes come out in k order.
struct Int4Decoder {
  static constexpr int kBytesPer8 = 4;
  __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  __m256i low_nibble = _mm256_set1_epi32(0xf);
  __m256 operator()(const uint8_t* codes) const {
    int32_t word;
    std::memcpy(&word, codes, sizeof word);
    const __m256i nibbles = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(word), shifts), low_nibble);
    return _mm256_cvtepi32_ps(nibbles);
  }
};

// nf4: the same nibbles index the 16-entry table held in two registers. permutevar8x32 reads
// only the low 3 bits of each index, so no mask is needed; bit 3 (moved to the sign bit)
// picks the upper half of the table.
struct NF4Decoder {
  static constexpr int kBytesPer8 = 4;
  __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  __m256 table_low = _mm256_loadu_ps(kNF4Table);
  __m256 table_high = _mm256_loadu_ps(kNF4Table + 8);
  __m256 operator()(const uint8_t* codes) const {
    int32_t word;
    std::memcpy(&word, codes, sizeof word);
    const __m256i nibbles = _mm256_srlv_epi32(_mm256_set1_epi32(word), shifts);
    const __m256 low = _mm256_permutevar8x32_ps(table_low, nibbles);
    const __m256 high = _mm256_permutevar8x32_ps(table_high, nibbles);
    return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(nibbles, 28)));
  }
};

// int8: sign-extend 8 bytes.
struct Int8Decoder {
  static constexpr int kBytesPer8 = 8;
  __m256 operator()(const uint8_t* codes) const {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  }
};

// One weight row n against ROWS rows of x (x_rows rows i0.., fp32). out[r] = y[i0 + r, n]
// without bias. x_sums: [ROWS, groups] sums of x per group (int4 only, else unused).
template <class Decoder, int ROWS>
void dot_weight_row(const QMatmulParams& p, const Decoder& decode, const float* const* x_rows,
                    const float* x_sums, int64_t groups, int64_t n, float* out) {
  // One accumulator chain per x row would wait on FMA latency (4 cycles) when ROWS is 1:
  // give a single row 4 independent chains, more rows 2 each.
  constexpr int kChains = ROWS == 1 ? 4 : 2;
  const auto* row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
  const float* row_scales = p.scales + n * p.scales_row_stride;
  __m256 total[ROWS];
  float correction[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    total[r] = _mm256_setzero_ps();
    correction[r] = 0.0f;
  }
  for (int64_t group = 0; group < groups; ++group) {
    const int64_t k0 = group * p.group_size;
    const int64_t k1 = min_i64(p.k, k0 + p.group_size);
    __m256 acc[ROWS][kChains];
    for (int r = 0; r < ROWS; ++r) {
      for (int c = 0; c < kChains; ++c) acc[r][c] = _mm256_setzero_ps();
    }
    int64_t k = k0;
    // Group starts are even (gemv_avx2 checks), so k0 of 4-bit codes starts on a byte.
    const uint8_t* codes = row + k0 * Decoder::kBytesPer8 / 8;
    constexpr int step = Decoder::kBytesPer8;
    for (; k + 32 <= k1; k += 32, codes += 4 * step) {
      const __m256 w[4] = {decode(codes), decode(codes + step), decode(codes + 2 * step),
                           decode(codes + 3 * step)};
      for (int j = 0; j < 4; ++j) {
        for (int r = 0; r < ROWS; ++r) {
          acc[r][j % kChains] =
              _mm256_fmadd_ps(w[j], _mm256_loadu_ps(x_rows[r] + k + 8 * j), acc[r][j % kChains]);
        }
      }
    }
    for (; k + 8 <= k1; k += 8, codes += step) {
      const __m256 w = decode(codes);
      for (int r = 0; r < ROWS; ++r) {
        acc[r][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x_rows[r] + k), acc[r][0]);
      }
    }
    float tail_dot[ROWS] = {};
    for (; k < k1; ++k) {  // the last < 8 weights of a group: never read past the row
      const float code = decode_one(p.fmt, row, k);
      for (int r = 0; r < ROWS; ++r) tail_dot[r] += x_rows[r][k] * code;
    }
    const float scale = row_scales[group];
    const float zero = zero_point_of(p, n, group);
    const __m256 scale_vec = _mm256_set1_ps(scale);
    for (int r = 0; r < ROWS; ++r) {
      __m256 dot = acc[r][0];
      for (int c = 1; c < kChains; ++c) dot = _mm256_add_ps(dot, acc[r][c]);
      total[r] = _mm256_fmadd_ps(dot, scale_vec, total[r]);
      // sum(x * (q - z)) = sum(x * q) - z * sum(x): one multiply per group for the zero point.
      const float x_sum = zero != 0.0f ? x_sums[r * groups + group] : 0.0f;
      correction[r] += scale * (tail_dot[r] - zero * x_sum);
    }
  }
  for (int r = 0; r < ROWS; ++r) out[r] = hsum(total[r]) + correction[r];
}

// Per-group sums of x, [m, groups], for the int4 zero point.
const float* group_sums(const QMatmulParams& p, const F32Rows& x, int64_t groups) {
  float* sums = scratch_floats(ScratchSlot::kGroupSums, size_t(p.m * groups));
  for (int64_t i = 0; i < p.m; ++i) {
    const float* xr = x.row(i);
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t k0 = group * p.group_size;
      const int64_t k1 = min_i64(p.k, k0 + p.group_size);
      __m256 acc = _mm256_setzero_ps();
      int64_t k = k0;
      for (; k + 8 <= k1; k += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(xr + k));
      float sum = hsum(acc);
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
  const int64_t y_bytes = dtype_bytes(p.y_dtype);
  for (int64_t n = n_begin; n < n_end; ++n) {
    float bias = 0.0f;
    if (p.bias) load_as_f32(p.bias, p.y_dtype, n, 1, &bias);
    for (int64_t i0 = 0; i0 < p.m; i0 += kRowBlock) {
      const int rows = int(min_i64(kRowBlock, p.m - i0));
      const float* x_rows[kRowBlock];
      for (int r = 0; r < rows; ++r) x_rows[r] = x.row(i0 + r);
      const float* block_sums = sums ? sums + i0 * groups : nullptr;
      float out[kRowBlock];
      switch (rows) {
        case 1: dot_weight_row<Decoder, 1>(p, decode, x_rows, block_sums, groups, n, out); break;
        case 2: dot_weight_row<Decoder, 2>(p, decode, x_rows, block_sums, groups, n, out); break;
        case 3: dot_weight_row<Decoder, 3>(p, decode, x_rows, block_sums, groups, n, out); break;
        default: dot_weight_row<Decoder, 4>(p, decode, x_rows, block_sums, groups, n, out); break;
      }
      for (int r = 0; r < rows; ++r) {
        const float value = out[r] + bias;
        auto* y = static_cast<uint8_t*>(p.y) + ((i0 + r) * p.y_row_stride) * y_bytes;
        store_from_f32(y, p.y_dtype, n, 1, &value);
      }
    }
  }
}

}  // namespace

Status gemv_avx2(const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
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
