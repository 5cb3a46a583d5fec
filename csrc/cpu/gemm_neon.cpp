// NEON GEMM: y = x @ dequant(W)^T (+ bias) for many rows of x (prefill); the aarch64 twin of
// gemm_avx2.cpp, with the same plan:
//
//   per tile of kTileN = 64 columns of y (weight rows n0..n0+63):
//     per block of kTileK = 256 of K:
//       dequantize W[n0:n0+64, k0:k0+256] into an fp32 tile stored as 4 panels [256 k][16 columns]
//       per panel, per 6 rows of x: the 6x16 register-blocked FMA microkernel (24 accumulators
//         of the 32 q registers) accumulates into acc[m, 64]
//     store acc + bias in y's dtype
//
// NEON has no gather, so a tile is dequantized one weight row at a time (8 weights per step,
// in k order) and scattered into its panel column.
#include <arm_neon.h>

#include "kernel_common.h"
#include "kernels.h"
#include "neon_common.h"

namespace qk::cpu {
namespace {

constexpr int kRows = 6;
constexpr int kPanelN = 16;
constexpr int64_t kTileN = 64;
static_assert(kTileN <= kMaxStoreColumns, "store_columns takes one tile of columns");
constexpr int64_t kTileK = 256;  // a multiple of every power-of-two group size up to 256

// Weights [k, k_end) (one group) of one weight row into panel column dst: element k goes to
// dst[(k - k_tile) * kPanelN]. w = code * scale + offset (offset = -scale * zero for int4).
void dequantize_run(const QMatmulParams& p, const NF4Table& table, const uint8_t* row, int64_t k,
                    int64_t k_end, int64_t k_tile, float scale, float offset, float* dst) {
  const bool vector_steps = p.fmt == Format::kInt8 || k % 2 == 0;  // 4-bit: k on a byte boundary
  for (; vector_steps && k + 8 <= k_end; k += 8) {
    const Float8 codes = p.fmt == Format::kInt8 ? decode_int8(row, k)
                         : p.fmt == Format::kNF4 ? decode_nf4(table, row, k)
                                                 : decode_int4(row, k);
    const float32x4_t low = vfmaq_n_f32(vdupq_n_f32(offset), codes.low, scale);
    const float32x4_t high = vfmaq_n_f32(vdupq_n_f32(offset), codes.high, scale);
    float* out = dst + (k - k_tile) * kPanelN;
    vst1q_lane_f32(out + 0 * kPanelN, low, 0);
    vst1q_lane_f32(out + 1 * kPanelN, low, 1);
    vst1q_lane_f32(out + 2 * kPanelN, low, 2);
    vst1q_lane_f32(out + 3 * kPanelN, low, 3);
    vst1q_lane_f32(out + 4 * kPanelN, high, 0);
    vst1q_lane_f32(out + 5 * kPanelN, high, 1);
    vst1q_lane_f32(out + 6 * kPanelN, high, 2);
    vst1q_lane_f32(out + 7 * kPanelN, high, 3);
  }
  for (; k < k_end; ++k) {  // the last < 8 weights of a group: never read past the row
    dst[(k - k_tile) * kPanelN] = decode_one(p.fmt, row, k) * scale + offset;
  }
}

// W[n0 : n0+columns, k0 : k0+depth] into tile = ceil(columns/16) panels of [kTileK][16].
// Columns past `columns` in the last panel repeat the last real row: computed, never stored.
void dequantize_tile(const QMatmulParams& p, const NF4Table& table, int64_t n0, int64_t columns,
                     int64_t k0, int64_t depth, float* tile) {
  const int64_t padded = kPanelN * ((columns + kPanelN - 1) / kPanelN);
  for (int64_t c = 0; c < padded; ++c) {
    const int64_t n = n0 + min_i64(c, columns - 1);
    const auto* row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
    float* column = tile + (c / kPanelN) * kTileK * kPanelN + c % kPanelN;
    for (int64_t k = k0; k < k0 + depth;) {
      const int64_t group = k / p.group_size;
      const int64_t run_end = min_i64(k0 + depth, (group + 1) * p.group_size);
      const float scale = p.scales[n * p.scales_row_stride + group];
      const float offset = -scale * zero_point_of(p, n, group);
      dequantize_run(p, table, row, k, run_end, k0, scale, offset, column);
      k = run_end;
    }
  }
}

// acc[ROWS, 16] (+)= x[ROWS, k0:k0+depth] @ panel[depth, 16]
template <int ROWS>
void microkernel(const float* const* x_rows, int64_t k0, const float* panel, int64_t depth,
                 float* acc, int64_t acc_stride, bool accumulate) {
  float32x4_t c[ROWS][4];
  for (int r = 0; r < ROWS; ++r) {
    for (int j = 0; j < 4; ++j) {
      c[r][j] = accumulate ? vld1q_f32(acc + r * acc_stride + 4 * j) : vdupq_n_f32(0.0f);
    }
  }
  const float* x_at[ROWS];
  for (int r = 0; r < ROWS; ++r) x_at[r] = x_rows[r] + k0;
  for (int64_t kk = 0; kk < depth; ++kk) {
    const float* w = panel + kk * kPanelN;
    const float32x4_t w0 = vld1q_f32(w), w1 = vld1q_f32(w + 4), w2 = vld1q_f32(w + 8),
                      w3 = vld1q_f32(w + 12);
    for (int r = 0; r < ROWS; ++r) {
      const float xv = x_at[r][kk];
      c[r][0] = vfmaq_n_f32(c[r][0], w0, xv);
      c[r][1] = vfmaq_n_f32(c[r][1], w1, xv);
      c[r][2] = vfmaq_n_f32(c[r][2], w2, xv);
      c[r][3] = vfmaq_n_f32(c[r][3], w3, xv);
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    for (int j = 0; j < 4; ++j) vst1q_f32(acc + r * acc_stride + 4 * j, c[r][j]);
  }
}

void run_microkernel(int rows, const float* const* x_rows, int64_t k0, const float* panel,
                     int64_t depth, float* acc, int64_t acc_stride, bool accumulate) {
  switch (rows) {
    case 1: microkernel<1>(x_rows, k0, panel, depth, acc, acc_stride, accumulate); break;
    case 2: microkernel<2>(x_rows, k0, panel, depth, acc, acc_stride, accumulate); break;
    case 3: microkernel<3>(x_rows, k0, panel, depth, acc, acc_stride, accumulate); break;
    case 4: microkernel<4>(x_rows, k0, panel, depth, acc, acc_stride, accumulate); break;
    case 5: microkernel<5>(x_rows, k0, panel, depth, acc, acc_stride, accumulate); break;
    default: microkernel<6>(x_rows, k0, panel, depth, acc, acc_stride, accumulate); break;
  }
}

}  // namespace

Status gemm_neon(const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  if (Status status = validate(p); status != Status::kOk) return status;
  const NF4Table table;
  const F32Rows x = activations_as_f32(p);
  float* acc = scratch_floats(ScratchSlot::kAccumulators, size_t(p.m * kTileN));
  alignas(64) float tile[kTileN * kTileK];  // 64 KiB
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kTileN) {
    const int64_t columns = min_i64(kTileN, n_end - n0);
    const int64_t panels = (columns + kPanelN - 1) / kPanelN;
    for (int64_t k0 = 0; k0 < p.k; k0 += kTileK) {
      const int64_t depth = min_i64(kTileK, p.k - k0);
      dequantize_tile(p, table, n0, columns, k0, depth, tile);
      for (int64_t panel = 0; panel < panels; ++panel) {
        for (int64_t i0 = 0; i0 < p.m; i0 += kRows) {
          const int rows = int(min_i64(kRows, p.m - i0));
          const float* x_rows[kRows];
          for (int r = 0; r < rows; ++r) x_rows[r] = x.row(i0 + r);
          run_microkernel(rows, x_rows, k0, tile + panel * kTileK * kPanelN, depth,
                          acc + i0 * kTileN + panel * kPanelN, kTileN, k0 > 0);
        }
      }
    }
    store_columns(p, n0, columns, acc, kTileN);  // acc + bias, converted to y's dtype
  }
  return Status::kOk;
}

}  // namespace qk::cpu
