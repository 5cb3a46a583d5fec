// Scalar helpers shared by the SIMD kernel files: decoding one weight, group bounds, the
// zero point. Everything here has internal linkage (anonymous namespace) on purpose: each
// -mavx2 file gets its own private copy, so the linker can never substitute an AVX2-compiled
// body for a call made on the scalar path of a CPU without AVX2.
#pragma once

#include <cstdint>

#include "../core/formats.h"
#include "../core/qmatmul.h"

namespace qk::cpu {
namespace {

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// The value the group scale multiplies for weight k of a packed row: the int8 code, the int4
// code (zero point not yet subtracted) or the NF4 table entry.
inline float decode_one(Format fmt, const uint8_t* row, int64_t k) {
  if (fmt == Format::kInt8) return float(static_cast<int8_t>(row[k]));
  const int nibble = (row[k >> 1] >> ((k & 1) ? kNibbleBitsHigh : kNibbleBitsLow)) & 0xf;
  return fmt == Format::kNF4 ? kNF4Table[nibble] : float(nibble);
}

// Zero point of (row n, group) in code units; 0 for formats without one.
inline float zero_point_of(const QMatmulParams& p, int64_t n, int64_t group) {
  if (p.fmt != Format::kInt4) return 0.0f;
  return p.zeros ? p.zeros[n * p.scales_row_stride + group] : kInt4SymmetricZero;
}

// SIMD decoding reads 4-bit codes from byte k/2 on, so every vector step must start at an even
// k. Steps start at group starts; those are all even unless an odd group size splits a row.
inline bool groups_start_even(const QMatmulParams& p) {
  return p.fmt == Format::kInt8 || p.group_size % 2 == 0 || p.group_size >= p.k;
}

// Walks a row's group scales one sub-block at a time (half blocks of gemv_avx2.cpp, blocks of 32
// of gemv_a8_avx2.cpp), for groups of a whole number of sub-blocks.
struct GroupScaleCursor {
  const float* scale;  // of the group of the next sub-block
  int64_t per_group;   // sub-blocks per group
  int64_t left;        // sub-blocks of the current group not yet taken
  GroupScaleCursor(const float* row_scales, int64_t sub_blocks_per_group)
      : scale(row_scales), per_group(sub_blocks_per_group), left(sub_blocks_per_group) {}
  // The scale of the next sub-block.
  const float* next() {
    const float* current = scale;
    if (--left == 0) {
      ++scale;
      left = per_group;
    }
    return current;
  }
};

}  // namespace
}  // namespace qk::cpu
