// Opt-in int8 activations (W8A8, W4A8): x is quantized per block of 32 along K, then each weight
// row is an integer dot per block, scaled in fp32 (nf4: against its table in Q15, as int16). The
// semantics are python/qkernels/activations.py (the reference backend computes exactly them);
// this header is the kernels' side of it.
// Torch-free.
#pragma once

#include <cstdint>

#include "qmatmul.h"

namespace qk {

// Activations are quantized per this many consecutive k (the last block of a row may be ragged):
// s = max|x_block| / 127, code = round-half-even(x / s) in [-127, 127], s = 0 gives code 0.
constexpr int64_t kActivationBlock = 32;
constexpr int kActivationMaxCode = 127;
// nf4 weights as integers: the NF4 table in Q15 fixed point, round(kNF4Table[q] * 32767), and
// w = absmax * kNF4TableQ15[q] / 32767 (python/qkernels/activations.py: NF4_TABLE_Q15; checked
// against it through format_constants()). Generated here from the one C++ copy of the table.
constexpr int kNF4Q15One = 32767;
struct NF4TableQ15 {
  int16_t values[16];
  constexpr NF4TableQ15() : values() {
    for (int q = 0; q < 16; ++q) {
      // Exact in double (24 x 15 bits); no value lies on a tie, so half-away rounding is Python's.
      const double scaled = double(kNF4Table[q]) * kNF4Q15One;
      values[q] = int16_t(scaled < 0 ? scaled - 0.5 : scaled + 0.5);
    }
  }
  constexpr int16_t operator[](int q) const { return values[q]; }
};
constexpr NF4TableQ15 kNF4TableQ15{};
// The same entries as two byte planes (low bytes, high bytes of each int16), the 16-byte tables
// the SIMD kernels look nibbles up in (vpshufb, vqtbl1q_u8) and zip back into int16.
struct NF4TableQ15Planes {
  alignas(16) uint8_t low[16];
  alignas(16) uint8_t high[16];
  constexpr NF4TableQ15Planes() : low(), high() {
    for (int q = 0; q < 16; ++q) {
      const auto entry = static_cast<uint16_t>(kNF4TableQ15[q]);
      low[q] = uint8_t(entry & 0xff);
      high[q] = uint8_t(entry >> 8);
    }
  }
};
inline constexpr NF4TableQ15Planes kNF4TableQ15Planes{};
// What an nf4 row's sum of absmax * (x . table entries) is multiplied by, once.
constexpr float kNF4Q15Step = 1.0f / kNF4Q15One;

// Codes are stored per pair of blocks (64 k), zero-padded to whole pairs, so that a SIMD step
// may read a whole pair past the end of K.
constexpr int64_t kActivationPair = 2 * kActivationBlock;

// One call's x, quantized. Row i of codes starts at code i * pairs * 64, of scales at
// i * pairs * 2 (entries past K are 0), of zero_terms at i * groups.
// Code order within a pair starting at k0 (what the kernels read against packed weights), and
// code type: int8_t, except nf4's int16_t (widened once here, not per weight row):
//   int8: k order, codes[j] is k0 + j.
//   int4: codes[j] (j < 32) is k0 + 2j and codes[32 + j] is k0 + 2j + 1: byte j of the 32 packed
//         bytes of the pair holds k0 + 2j in its low nibble and k0 + 2j + 1 in its high one, so
//         the low nibbles of a 32-byte load line up with codes[0:32], the high ones with [32:64].
//   nf4:  four runs of 16, the order AVX2's in-lane byte unpacks produce (unpacklo takes bytes
//         0-7 and 16-23 of a 32-byte load, unpackhi bytes 8-15 and 24-31): run 0 is the low
//         nibbles of bytes 0-7, 16-23; run 1 the low nibbles of bytes 8-15, 24-31; runs 2 and 3
//         the same for the high nibbles (nf4_code_slot). NEON reads the same runs in halves.
struct QuantizedActivations {
  const void* codes;        // int8_t, or int16_t for nf4
  const float* scales;      // per block
  // int4 only, per weight group: sum over its blocks of scale * (sum of the block's codes), so
  // that a weight row's zero points cost one multiply-add per group:
  // sum_k x_k (q_k - z) s_w = s_w (sum_b s_b (codes_b . q_b) - z zero_term).
  const float* zero_terms;
  int64_t pairs;   // per row
  int64_t groups;  // per row
  template <class Code>
  const Code* row_codes(int64_t i) const {
    return static_cast<const Code*>(codes) + i * pairs * kActivationPair;
  }
  const float* row_scales(int64_t i) const { return scales + i * pairs * 2; }
  const float* row_zero_terms(int64_t i) const { return zero_terms + i * groups; }
};

inline int64_t activation_pairs(int64_t k) { return (k + kActivationPair - 1) / kActivationPair; }

// Where the code of k0 + j (j < 64) goes within its pair's 64, for nf4 (QuantizedActivations).
inline int64_t nf4_code_slot(int64_t j) {
  const int64_t byte = j / 2, run = 2 * (j % 2) + (byte % 16) / 8;
  return 16 * run + 8 * (byte / 16) + byte % 8;
}

// validate(p), plus what int8 activations need: every block of 32 inside one weight group
// (group_size a multiple of 32, or >= k: per channel).
Status validate_a8(const QMatmulParams& p);

// Quantizes the m rows of p.x into codes [m, pairs * 64] (int16_t for nf4, else int8_t) and
// scales [m, pairs * 2] in the order of p.fmt, and (int4) zero_terms [m, groups]: see
// QuantizedActivations.
void quantize_activations(const QMatmulParams& p, void* codes, float* scales, float* zero_terms);

// Columns [n_begin, n_end) of y = dequant(xq) @ dequant(W)^T (+ bias), all m rows. The generic
// twin of the SIMD kernels of csrc/cpu (same signature, same contract).
Status gemv_a8_scalar(const QMatmulParams& p, const QuantizedActivations& xq, int64_t n_begin,
                      int64_t n_end);

}  // namespace qk
