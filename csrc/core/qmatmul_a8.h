// Opt-in int8 activations (W8A8, W4A8): x is quantized per block of 32 along K, then each weight
// row is an integer dot per block, scaled in fp32. The semantics are python/qkernels/activations.py
// (the reference backend computes exactly them); this header is the kernels' side of it.
// Torch-free.
#pragma once

#include <cstdint>

#include "qmatmul.h"

namespace qk {

// Activations are quantized per this many consecutive k (the last block of a row may be ragged):
// s = max|x_block| / 127, code = round-half-even(x / s) in [-127, 127], s = 0 gives code 0.
constexpr int64_t kActivationBlock = 32;
constexpr int kActivationMaxCode = 127;
// Codes are stored per pair of blocks (64 k), zero-padded to whole pairs, so that a SIMD step
// may read a whole pair past the end of K.
constexpr int64_t kActivationPair = 2 * kActivationBlock;

// One call's x, quantized. Row i of codes starts at codes + i * pairs * 64, of scales at
// i * pairs * 2 (entries past K are 0), of zero_terms at i * groups.
// Code order within a pair starting at k0 (what the kernels read against packed weights):
//   int8: k order, codes[j] is k0 + j.
//   int4: codes[j] (j < 32) is k0 + 2j and codes[32 + j] is k0 + 2j + 1: byte j of the 32 packed
//         bytes of the pair holds k0 + 2j in its low nibble and k0 + 2j + 1 in its high one, so
//         the low nibbles of a 32-byte load line up with codes[0:32], the high ones with [32:64].
struct QuantizedActivations {
  const int8_t* codes;
  const float* scales;      // per block
  // int4 only, per weight group: sum over its blocks of scale * (sum of the block's codes), so
  // that a weight row's zero points cost one multiply-add per group:
  // sum_k x_k (q_k - z) s_w = s_w (sum_b s_b (codes_b . q_b) - z zero_term).
  const float* zero_terms;
  int64_t pairs;   // per row
  int64_t groups;  // per row
  const int8_t* row_codes(int64_t i) const { return codes + i * pairs * kActivationPair; }
  const float* row_scales(int64_t i) const { return scales + i * pairs * 2; }
  const float* row_zero_terms(int64_t i) const { return zero_terms + i * groups; }
};

inline int64_t activation_pairs(int64_t k) { return (k + kActivationPair - 1) / kActivationPair; }

// validate(p), plus what int8 activations need: fmt int8 or int4, and every block of 32 inside
// one weight group (group_size a multiple of 32, or >= k: per channel).
Status validate_a8(const QMatmulParams& p);

// Quantizes the m rows of p.x into codes [m, pairs * 64] and scales [m, pairs * 2] in the order
// of p.fmt, and (int4) zero_terms [m, groups]: see QuantizedActivations.
void quantize_activations(const QMatmulParams& p, int8_t* codes, float* scales, float* zero_terms);

// Columns [n_begin, n_end) of y = dequant(xq) @ dequant(W)^T (+ bias), all m rows. The generic
// twin of the SIMD kernels of csrc/cpu (same signature, same contract).
Status gemv_a8_scalar(const QMatmulParams& p, const QuantizedActivations& xq, int64_t n_begin,
                      int64_t n_end);

}  // namespace qk
