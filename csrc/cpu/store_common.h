// Output and activation helpers shared by the AVX2 and NEON kernel files: biased stores of
// column ranges of y and fp32 views of x, written once over each ISA's load_as_f32 and
// store_from_f32. Included at the end of avx2_common.h and neon_common.h, after those two are
// declared; like them, internal linkage (see kernel_common.h for why).
#pragma once

#include <cstdint>

#include "../core/qmatmul.h"
#include "scratch.h"

namespace qk::cpu {
namespace {

// Widest column range store_columns takes: the GEMM tile and the GEMV output chunk.
constexpr int64_t kMaxStoreColumns = 64;

// y[i, n0 : n0 + columns] = out[i, :columns] + bias[n0 : n0 + columns] for every row i, in y's
// dtype. out: [m, out_stride] fp32, biased in place; columns <= kMaxStoreColumns.
inline void store_columns(const QMatmulParams& p, int64_t n0, int64_t columns, float* out,
                          int64_t out_stride) {
  alignas(32) float bias[kMaxStoreColumns];
  if (p.bias) load_as_f32(p.bias, p.y_dtype, n0, columns, bias);
  const int64_t y_bytes = dtype_bytes(p.y_dtype);
  for (int64_t i = 0; i < p.m; ++i) {
    float* out_row = out + i * out_stride;
    if (p.bias) {
      for (int64_t j = 0; j < columns; ++j) out_row[j] += bias[j];
    }
    auto* y = static_cast<uint8_t*>(p.y) + i * p.y_row_stride * y_bytes;
    store_from_f32(y, p.y_dtype, n0, columns, out_row);
  }
}

// The GEMVs' outer loops over columns [n_begin, n_end) of y: dot_block(n, columns, i0, rows, out)
// writes y[i0 .. i0 + rows, n .. n + columns] without bias into out[c * row_block + r]
// (rows <= row_block, columns <= column_block), for every block of weight rows and of x rows;
// the outputs of kMaxStoreColumns weight rows are collected, then biased and stored as vectors:
// a staged store_from_f32 per output was ~5% of the time of an int4 row at K = 4096 (int8: 8%).
// row_block * column_block <= kMaxStoreColumns.
template <class DotBlock>
inline void gemv_store_column_blocks(const QMatmulParams& p, int64_t n_begin, int64_t n_end,
                                     int64_t row_block, int64_t column_block, DotBlock&& dot_block) {
  constexpr int64_t kColumnChunk = kMaxStoreColumns;
  float* outputs = scratch_floats(ScratchSlot::kAccumulators, size_t(p.m * kColumnChunk));
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kColumnChunk) {
    const int64_t columns = n_end - n0 < kColumnChunk ? n_end - n0 : kColumnChunk;
    for (int64_t n = n0; n < n0 + columns;) {
      const int64_t block_columns = n0 + columns - n < column_block ? n0 + columns - n : column_block;
      for (int64_t i0 = 0; i0 < p.m; i0 += row_block) {
        const int rows = int(p.m - i0 < row_block ? p.m - i0 : row_block);
        float out[kMaxStoreColumns];
        dot_block(n, block_columns, i0, rows, out);
        for (int64_t c = 0; c < block_columns; ++c) {
          for (int r = 0; r < rows; ++r) outputs[(i0 + r) * kColumnChunk + (n + c - n0)] = out[c * row_block + r];
        }
      }
      n += block_columns;
    }
    store_columns(p, n0, columns, outputs, kColumnChunk);
  }
}

// The same, one weight row n per call: dot_rows(n, i0, rows, out) writes y[i0 + r, n] into out[r].
template <class DotRows>
inline void gemv_store_chunks(const QMatmulParams& p, int64_t n_begin, int64_t n_end,
                              int64_t row_block, DotRows&& dot_rows) {
  gemv_store_column_blocks(p, n_begin, n_end, row_block, 1,
                           [&](int64_t n, int64_t, int64_t i0, int rows, float* out) { dot_rows(n, i0, rows, out); });
}

// x as fp32 rows: x itself when it is fp32, else a converted copy in per-thread scratch.
struct F32Rows {
  const float* base;
  int64_t stride;  // elements
  const float* row(int64_t i) const { return base + i * stride; }
};

inline F32Rows activations_as_f32(const QMatmulParams& p) {
  if (p.x_dtype == DType::kF32) return {static_cast<const float*>(p.x), p.x_row_stride};
  float* converted = scratch_floats(ScratchSlot::kActivations, size_t(p.m * p.k));
  for (int64_t i = 0; i < p.m; ++i) {
    load_as_f32(p.x, p.x_dtype, i * p.x_row_stride, p.k, converted + i * p.k);
  }
  return {converted, p.k};
}

}  // namespace
}  // namespace qk::cpu
