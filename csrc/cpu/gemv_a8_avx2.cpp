// AVX2 kernel for int8 activations (qmatmul_a8.h): y[i, n] = sum over weight groups of
// w_scale * (sum over blocks of 32 of x_scale * (codes . weights) - zero * zero_term).
//
// The dot of a block is integer (vpmaddubsw: u8 x s8 -> pairs summed in int16; vpmaddwd against
// ones -> int32), exact, then converted once per block. Per 64 int4 weights and x row: 2 maddubs,
// 1 add, 1 madd, 1 convert, 1 multiply, 1 FMA (with ~6 shared instructions to split the nibbles
// and fetch the weight scales), against ~33 instructions for the fp32 decode-and-FMA of
// gemv_avx2.cpp. nf4 looks its Q15 table up as two byte planes (vpshufb) and multiplies int16 by
// int16 (vpmaddwd): per 64 weights 4 vpshufb + 4 unpacks shared by the x rows, then 4 madd + 3
// add per row, against the 24 shuffles of gemv_avx2.cpp's nf4 decode.
//
//   per weight row n, per block of up to 4 x rows:
//     int4, nf4: per pair of blocks (one 32-byte load = 64 weights): low nibbles x codes[0:32],
//           high nibbles x codes[32:64] (nf4: the table entries, in the runs of
//           QuantizedActivations); int32 lanes 0-3 hold block 0, lanes 4-7 block 1, scaled by
//           the two blocks' x scales times their weight scales (per channel: the weight scale
//           once, at the end);
//     int8: per group, per block (one 32-byte load): |w| x sign(w) * x (maddubs needs one
//           unsigned side), scaled by its x scale; total += w_scale * group sum;
//     int4: total -= sum over groups of w_scale * zero * zero_term (one FMA per 8 groups);
//     nf4: total /= 32767 (the table's Q15 unit).
//
// Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt).
#include <immintrin.h>

#include <cstring>

#include "../core/qmatmul_a8.h"
#include "avx2_common.h"
#include "kernel_common.h"
#include "kernels.h"

namespace qk::cpu {
namespace {

// Rows of x per pass over a weight row: 4 accumulators and 4 x loads per step fit the 16 ymm
// registers with the weights and constants.
constexpr int kRowBlock = 4;

inline __m256i load32(const void* bytes) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(bytes));
}

// Bytes [first, end) of a row, zero-padded to a full 32-byte step: the tail of K, never read past.
inline __m256i load_tail(const uint8_t* row, int64_t first, int64_t end) {
  alignas(32) uint8_t staged[32] = {};
  std::memcpy(staged, row + first, size_t(end - first));
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(staged));
}

// int32 lanes: partial dots of codes against 64 int4 weights (low / high nibbles of `packed`);
// lanes 0-3 sum to block 0 of the pair, lanes 4-7 to block 1. Products are at most 15 * 127, so
// the int16 sums of four (maddubs, then the add) cannot saturate.
inline __m256i int4_pair_dot(__m256i low, __m256i high, const int8_t* codes) {
  const __m256i products = _mm256_add_epi16(_mm256_maddubs_epi16(low, load32(codes)),
                                            _mm256_maddubs_epi16(high, load32(codes + 32)));
  return _mm256_madd_epi16(products, _mm256_set1_epi16(1));
}

// The two 4-bit formats, as what the pair loops below need of them: `decode` a 32-byte load of
// 64 weights once per weight row, `dot` it with one x row's codes of that pair (int32 lanes 0-3
// block 0, 4-7 block 1).
struct Int4Pairs {
  struct Weights {
    __m256i low, high;  // nibbles as bytes 0..15
  };
  __m256i low_mask = _mm256_set1_epi8(0x0f);
  Weights decode(__m256i packed) const {
    return {_mm256_and_si256(packed, low_mask), _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_mask)};
  }
  __m256i dot(const Weights& w, const void* codes, int64_t pair) const {
    return int4_pair_dot(w.low, w.high, static_cast<const int8_t*>(codes) + pair * kActivationPair);
  }
};

// nf4: kNF4TableQ15's byte planes (kNF4TableQ15Planes), one 16-byte table per plane in each lane.
// A nibble's two bytes come from two vpshufb; the byte unpacks join them into int16 in-lane
// (hence x's run order, QuantizedActivations). vpmaddwd sums two products of at most
// 32767 * 127 per int32 lane and the pair dot four of those: 8 * 32767 * 127 < 2^25, exact, and
// rounded once (to 24 bits) by the conversion to fp32 that every block's dot goes through.
struct NF4Pairs {
  struct Weights {
    __m256i runs[4];  // int16 table entries in the order of the four runs of 16 x codes
  };
  __m256i low_mask = _mm256_set1_epi8(0x0f);
  __m256i low_bytes = broadcast_plane(kNF4TableQ15Planes.low);
  __m256i high_bytes = broadcast_plane(kNF4TableQ15Planes.high);
  static __m256i broadcast_plane(const uint8_t* plane) {
    return _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(plane)));
  }
  Weights decode(__m256i packed) const {
    Weights w;
    const __m256i nibbles[2] = {_mm256_and_si256(packed, low_mask),
                                _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_mask)};
    for (int h = 0; h < 2; ++h) {
      const __m256i low = _mm256_shuffle_epi8(low_bytes, nibbles[h]);
      const __m256i high = _mm256_shuffle_epi8(high_bytes, nibbles[h]);
      w.runs[2 * h] = _mm256_unpacklo_epi8(low, high);
      w.runs[2 * h + 1] = _mm256_unpackhi_epi8(low, high);
    }
    return w;
  }
  __m256i dot(const Weights& w, const void* codes, int64_t pair) const {
    const auto* x = static_cast<const int16_t*>(codes) + pair * kActivationPair;
    const __m256i first = _mm256_add_epi32(_mm256_madd_epi16(w.runs[0], load32(x)),
                                           _mm256_madd_epi16(w.runs[1], load32(x + 16)));
    const __m256i second = _mm256_add_epi32(_mm256_madd_epi16(w.runs[2], load32(x + 32)),
                                            _mm256_madd_epi16(w.runs[3], load32(x + 48)));
    return _mm256_add_epi32(first, second);
  }
};

// int32 lanes summing to the dot of 32 codes with 32 int8 weights. maddubs multiplies unsigned
// by signed bytes: |w| times x with w's sign; codes and weights are within +-127, so a pair of
// products stays below 2^15.
inline __m256i int8_block_dot(__m256i weights, const int8_t* codes) {
  const __m256i products = _mm256_maddubs_epi16(_mm256_sign_epi8(weights, weights),
                                                _mm256_sign_epi8(load32(codes), weights));
  return _mm256_madd_epi16(products, _mm256_set1_epi16(1));
}

// The x side of one call for a block of rows, computed once per row per call.
template <int ROWS>
struct XRows {
  const void* codes[ROWS];  // int8_t, nf4 int16_t
  const float* pair_scales[ROWS];  // per pair: x scale of block 0 in lanes 0-3, of block 1 in 4-7
  const float* block_scales[ROWS];
  const float* zero_terms[ROWS];
};

// Per channel (one group per row): the sum of x_scale * 4-bit pair dot over the pairs of one
// weight row; total[r] += w_scale * that sum.
template <int ROWS, class Pairs>
__attribute__((always_inline)) inline void four_bit_per_channel(const Pairs& format,
                                                                const uint8_t* row, int64_t pairs,
                                                                int64_t full_pairs, int64_t row_bytes,
                                                                const XRows<ROWS>& x, float w_scale,
                                                                __m256 (&total)[ROWS]) {
  // Two chains per row, alternate pairs: one FMA a pair would otherwise wait on the last one.
  __m256 acc[2][ROWS];
  for (int r = 0; r < ROWS; ++r) acc[0][r] = acc[1][r] = _mm256_setzero_ps();
  auto step = [&](__m256i packed, int64_t pair, __m256 (&chain)[ROWS]) {
    const typename Pairs::Weights weights = format.decode(packed);
    for (int r = 0; r < ROWS; ++r) {
      const __m256i dot = format.dot(weights, x.codes[r], pair);
      chain[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_load_ps(x.pair_scales[r] + 8 * pair), chain[r]);
    }
  };
  int64_t pair = 0;
  for (; pair + 2 <= full_pairs; pair += 2) {
    step(load32(row + pair * 32), pair, acc[0]);
    step(load32(row + (pair + 1) * 32), pair + 1, acc[1]);
  }
  if (pair < full_pairs) step(load32(row + pair * 32), pair, acc[0]);
  if (pairs > full_pairs) step(load_tail(row, full_pairs * 32, row_bytes), full_pairs, acc[1]);
  const __m256 scale = _mm256_set1_ps(w_scale);
  for (int r = 0; r < ROWS; ++r) {
    total[r] = _mm256_fmadd_ps(_mm256_add_ps(acc[0][r], acc[1][r]), scale, total[r]);
  }
}

// The weight scales of a pair's two blocks as one vector (block 0's in lanes 0-3, block 1's in
// 4-7), for the whole pairs of a row, asked for in pair order. Three ways, for the scalar
// bookkeeping of a walk over blocks (two counters and branches per pair) was as many
// instructions as the pair's arithmetic at K = 576:
// groups of 2^s pairs (64, 128, 256, ... weights): one scale, group = pair >> s.
struct PowerOfTwoPairGroups {
  const float* w_scales;
  int shift;
  __m256 operator()(int64_t pair) const { return _mm256_broadcast_ss(w_scales + (pair >> shift)); }
};
// groups of 32: the pair's blocks are groups 2 pair and 2 pair + 1.
struct BlockGroups {
  const float* w_scales;
  __m256 operator()(int64_t pair) const {
    const __m128 two = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(w_scales + 2 * pair)));
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
  }
};
// any other whole number of blocks (96, 192, ...): walk the blocks.
struct WalkedGroups {
  GroupScaleCursor blocks;
  __m256 operator()(int64_t) {
    const float* first = blocks.next();
    const float* second = blocks.next();
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(first)),
                                _mm_broadcast_ss(second), 1);
  }
};

// Groups of more than one per row: each pair is scaled as it is accumulated, by its x scales
// times its weight scales (PairScales, above). Measured against closing a group of 128 every two
// pairs with one FMA (one thread, 2048x4096 in cache, noisy): 2.3 against 2.9 ns per pair; the
// short group loop cost more than the extra multiply.
template <int ROWS, class Pairs, class PairScales>
void four_bit_scaled_pairs(const Pairs& format, const uint8_t* row, const float* w_scales,
                           int64_t blocks, int64_t full_pairs, int64_t row_bytes,
                           int64_t blocks_per_group, PairScales pair_scales, const XRows<ROWS>& x,
                           __m256 (&total)[ROWS]) {
  // Two chains per row (the second is total), alternate pairs: FMA latency, as in
  // four_bit_per_channel.
  __m256 odd[ROWS];
  for (int r = 0; r < ROWS; ++r) odd[r] = _mm256_setzero_ps();
  auto step = [&](__m256i packed, int64_t pair, __m256 w_scale, __m256 (&chain)[ROWS]) {
    const typename Pairs::Weights weights = format.decode(packed);
    for (int r = 0; r < ROWS; ++r) {
      const __m256i dot = format.dot(weights, x.codes[r], pair);
      const __m256 scale = _mm256_mul_ps(_mm256_load_ps(x.pair_scales[r] + 8 * pair), w_scale);
      chain[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, chain[r]);
    }
  };
  int64_t pair = 0;
  for (; pair + 2 <= full_pairs; pair += 2) {
    step(load32(row + pair * 32), pair, pair_scales(pair), total);
    step(load32(row + (pair + 1) * 32), pair + 1, pair_scales(pair + 1), odd);
  }
  if (pair < full_pairs) step(load32(row + pair * 32), pair, pair_scales(pair), total);
  if (full_pairs * 2 < blocks) {  // the ragged last pair; a padding block past K has no group
    const int64_t first = 2 * full_pairs, second = min_i64(first + 1, blocks - 1);
    const __m256 w_scale = _mm256_insertf128_ps(
        _mm256_castps128_ps256(_mm_broadcast_ss(w_scales + first / blocks_per_group)),
        _mm_broadcast_ss(w_scales + second / blocks_per_group), 1);
    step(load_tail(row, full_pairs * 32, row_bytes), full_pairs, w_scale, odd);
  }
  for (int r = 0; r < ROWS; ++r) total[r] = _mm256_add_ps(total[r], odd[r]);
}

// int8 weights, blocks [b0, b1) of one group: total[r] += w_scale * sum of x_scale * dot.
template <int ROWS>
__attribute__((always_inline)) inline void int8_group(const uint8_t* row, int64_t b0, int64_t b1,
                                                      int64_t full_blocks, int64_t k,
                                                      const XRows<ROWS>& x, float w_scale,
                                                      __m256 (&total)[ROWS]) {
  // Two chains per row, alternate blocks, as in four_bit_per_channel.
  __m256 acc[2][ROWS];
  for (int r = 0; r < ROWS; ++r) acc[0][r] = acc[1][r] = _mm256_setzero_ps();
  auto step = [&](__m256i weights, int64_t block, __m256 (&chain)[ROWS]) {
    for (int r = 0; r < ROWS; ++r) {
      const __m256i dot =
          int8_block_dot(weights, static_cast<const int8_t*>(x.codes[r]) + block * kActivationBlock);
      chain[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_broadcast_ss(x.block_scales[r] + block), chain[r]);
    }
  };
  const int64_t whole_end = min_i64(b1, full_blocks);
  int64_t block = b0;
  for (; block + 2 <= whole_end; block += 2) {
    step(load32(row + block * kActivationBlock), block, acc[0]);
    step(load32(row + (block + 1) * kActivationBlock), block + 1, acc[1]);
  }
  if (block < whole_end) step(load32(row + block * kActivationBlock), block, acc[0]);
  if (b1 > full_blocks) step(load_tail(row, full_blocks * kActivationBlock, k), full_blocks, acc[1]);
  const __m256 scale = _mm256_set1_ps(w_scale);
  for (int r = 0; r < ROWS; ++r) {
    total[r] = _mm256_fmadd_ps(_mm256_add_ps(acc[0][r], acc[1][r]), scale, total[r]);
  }
}

// The pairs of a 4-bit row into total, by the way its groups are laid out.
template <int ROWS, class Pairs>
__attribute__((always_inline)) inline void four_bit_row(const QMatmulParams& p, const Pairs& format,
                                                        const uint8_t* row, const float* w_scales,
                                                        const XRows<ROWS>& x, __m256 (&total)[ROWS]) {
  const int64_t groups = num_groups(p.k, p.group_size);
  const int64_t blocks = num_groups(p.k, kActivationBlock);
  const int64_t row_bytes = packed_row_bytes(p.fmt, p.k);
  const int64_t full_pairs = p.k / kActivationPair;
  if (groups == 1) {
    four_bit_per_channel<ROWS>(format, row, activation_pairs(p.k), full_pairs, row_bytes, x,
                               w_scales[0], total);
    return;
  }
  const int64_t group_blocks = p.group_size / kActivationBlock;
  const int64_t group_pairs = group_blocks / 2;
  if (group_blocks == 1) {
    four_bit_scaled_pairs<ROWS>(format, row, w_scales, blocks, full_pairs, row_bytes, group_blocks,
                                BlockGroups{w_scales}, x, total);
  } else if (group_blocks % 2 == 0 && (group_pairs & (group_pairs - 1)) == 0) {
    four_bit_scaled_pairs<ROWS>(format, row, w_scales, blocks, full_pairs, row_bytes, group_blocks,
                                PowerOfTwoPairGroups{w_scales, __builtin_ctzll(uint64_t(group_pairs))},
                                x, total);
  } else {
    four_bit_scaled_pairs<ROWS>(format, row, w_scales, blocks, full_pairs, row_bytes, group_blocks,
                                WalkedGroups{GroupScaleCursor(w_scales, group_blocks)}, x, total);
  }
}

// y[i0 + r, n] without bias for ROWS rows of x: out[r].
template <int ROWS>
void dot_weight_row(const QMatmulParams& p, const XRows<ROWS>& x, int64_t n, float* out) {
  const auto* row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
  const float* w_scales = p.scales + n * p.scales_row_stride;
  const int64_t groups = num_groups(p.k, p.group_size);
  const int64_t blocks = num_groups(p.k, kActivationBlock);
  // Per channel: one group of every block.
  const int64_t group_blocks = p.group_size >= p.k ? blocks : p.group_size / kActivationBlock;
  __m256 total[ROWS];
  for (int r = 0; r < ROWS; ++r) total[r] = _mm256_setzero_ps();
  if (p.fmt == Format::kInt8) {
    for (int64_t group = 0; group < groups; ++group) {
      int8_group<ROWS>(row, group * group_blocks, min_i64(blocks, (group + 1) * group_blocks),
                       p.k / kActivationBlock, p.k, x, w_scales[group], total);
    }
  } else if (p.fmt == Format::kInt4) {
    four_bit_row<ROWS>(p, Int4Pairs{}, row, w_scales, x, total);
  } else {
    four_bit_row<ROWS>(p, NF4Pairs{}, row, w_scales, x, total);
  }
  for (int r = 0; r < ROWS; ++r) out[r] = hsum(total[r]);
  if (p.fmt == Format::kNF4) {
    for (int r = 0; r < ROWS; ++r) out[r] *= kNF4Q15Step;
  }
  if (p.fmt == Format::kInt4) {  // the zero points: one multiply-add per group
    // (A masked last step instead of the scalar loop measured the same at K = 576, 5 groups.)
    const float* zeros = p.zeros ? p.zeros + n * p.scales_row_stride : nullptr;
    for (int r = 0; r < ROWS; ++r) {
      __m256 acc = _mm256_setzero_ps();
      int64_t group = 0;
      for (; group + 8 <= groups; group += 8) {
        const __m256 zero = zeros ? _mm256_loadu_ps(zeros + group) : _mm256_set1_ps(kInt4SymmetricZero);
        acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(w_scales + group), zero),
                              _mm256_loadu_ps(x.zero_terms[r] + group), acc);
      }
      float correction = groups >= 8 ? hsum(acc) : 0.0f;
      for (; group < groups; ++group) {
        const float zero = zeros ? zeros[group] : kInt4SymmetricZero;
        correction += w_scales[group] * zero * x.zero_terms[r][group];
      }
      out[r] -= correction;
    }
  }
}

template <int ROWS>
void dot_weight_row_block(const QMatmulParams& p, const QuantizedActivations& xq,
                          const float* pair_scales, int64_t i0, int64_t n, float* out) {
  XRows<ROWS> x;
  for (int r = 0; r < ROWS; ++r) {
    x.codes[r] = p.fmt == Format::kNF4 ? static_cast<const void*>(xq.row_codes<int16_t>(i0 + r))
                                       : xq.row_codes<int8_t>(i0 + r);
    x.pair_scales[r] = pair_scales + (i0 + r) * xq.pairs * 8;
    x.block_scales[r] = xq.row_scales(i0 + r);
    x.zero_terms[r] = p.fmt == Format::kInt4 ? xq.row_zero_terms(i0 + r) : nullptr;
  }
  dot_weight_row<ROWS>(p, x, n, out);
}

}  // namespace

Status gemv_a8_avx2(const QMatmulParams& p, const QuantizedActivations& xq, int64_t n_begin,
                    int64_t n_end) {
  if (Status status = validate_a8(p); status != Status::kOk) return status;
  // x scales per pair as the vectors int4 scales its pair dots by: [s0 x 4, s1 x 4].
  float* pair_scales = scratch_floats(ScratchSlot::kActivationPairScales, size_t(p.m * xq.pairs * 8));
  for (int64_t i = 0; i < p.m; ++i) {
    const float* scales = xq.row_scales(i);
    for (int64_t pair = 0; pair < xq.pairs; ++pair) {
      for (int lane = 0; lane < 8; ++lane) {
        pair_scales[(i * xq.pairs + pair) * 8 + lane] = scales[2 * pair + lane / 4];
      }
    }
  }
  gemv_store_chunks(p, n_begin, n_end, kRowBlock, [&](int64_t n, int64_t i0, int rows, float* out) {
    switch (rows) {
      case 1: dot_weight_row_block<1>(p, xq, pair_scales, i0, n, out); break;
      case 2: dot_weight_row_block<2>(p, xq, pair_scales, i0, n, out); break;
      case 3: dot_weight_row_block<3>(p, xq, pair_scales, i0, n, out); break;
      default: dot_weight_row_block<4>(p, xq, pair_scales, i0, n, out); break;
    }
  });
  return Status::kOk;
}

}  // namespace qk::cpu
