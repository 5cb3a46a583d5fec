// AVX2 GEMM: y = x @ dequant(W)^T (+ bias) for many rows of x (prefill). Compute-bound, so the
// plan is to decode each weight once per call and reuse it from cache for every row of x:
//
//   per tile of kTileN = 64 columns of y (weight rows n0..n0+63):
//     per block of kTileK = 256 of K:
//       dequantize W[n0:n0+64, k0:k0+256] into an fp32 tile (64 KiB, L2), stored as 4 panels
//         [256 k][16 columns] so that one k gives 16 columns in two aligned vectors
//       per panel (16 KiB, stays in L1), per 6 rows of x: the 6x16 register-blocked FMA
//         microkernel accumulates into acc[m, 64]
//     store acc + bias in y's dtype
//
// Only the tile and acc (m x 64 floats) exist as buffers; the dequantized weight never does.
// Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt).
#include <immintrin.h>

#include <cstring>

#include "avx2_common.h"
#include "kernel_common.h"
#include "kernels.h"

namespace qk::cpu {
namespace {

constexpr int kRows = 6;          // microkernel: 6 rows x 16 columns = 12 accumulators
constexpr int kPanelN = 16;       // + 2 weight vectors + 1 broadcast = 15 of 16 ymm registers
constexpr int64_t kTileN = 64;    // 4 panels
static_assert(kTileN <= kMaxStoreColumns, "store_columns takes one tile of columns");
constexpr int64_t kTileK = 256;   // a multiple of every power-of-two group size up to 256

// --- dequantize: 8 columns x a run of k, into a panel ---------------------------------------
// Column c of the 8 is weight row n0 + c. One 32-bit gather fetches the same 4 bytes of the 8
// rows; lane c then holds 8 nibbles (or 4 int8 codes) of its row in k order, so shifting every
// lane alike yields one k for 8 columns: exactly one row of the [k][16] panel, no transpose.

struct ColumnGroup {
  const uint8_t* codes;     // row n0's packed codes
  __m256i code_offsets;     // byte offset of row n0 + c from row n0 (clamped to real rows)
  __m256i scale_offsets;    // element offset of row n0 + c in scales / zeros
};

// w = scale * code + offset: offset is -scale * zero for int4, 0 otherwise.
struct GroupScale {
  __m256 scale;
  __m256 offset;
};

GroupScale load_group_scale(const QMatmulParams& p, const ColumnGroup& cols, int64_t n0, int64_t group) {
  const float* scales = p.scales + n0 * p.scales_row_stride + group;
  const __m256 scale = _mm256_i32gather_ps(scales, cols.scale_offsets, 4);
  if (p.fmt != Format::kInt4) return {scale, _mm256_setzero_ps()};
  const __m256 zero = p.zeros ? _mm256_i32gather_ps(p.zeros + n0 * p.scales_row_stride + group,
                                                    cols.scale_offsets, 4)
                              : _mm256_set1_ps(kInt4SymmetricZero);
  return {scale, _mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), scale), zero)};
}

inline __m256 nf4_lookup(__m256i codes, __m256 table_low, __m256 table_high) {
  // permutevar8x32 reads the low 3 bits of each index; bit 3, moved to the sign bit, picks the half.
  const __m256 low = _mm256_permutevar8x32_ps(table_low, codes);
  const __m256 high = _mm256_permutevar8x32_ps(table_high, codes);
  return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(codes, 28)));
}

// Weights k in [k, k_end) (one group) of the 8 columns into panel rows (k - k_tile) of dst,
// a [kTileK][kPanelN] panel offset to the group's first column.
void dequantize_run(const QMatmulParams& p, const ColumnGroup& cols, const GroupScale& gs,
                    int64_t k, int64_t k_end, int64_t k_tile, float* dst) {
  const __m256i low_nibble = _mm256_set1_epi32(0xf);
  if (p.fmt == Format::kInt8) {
    for (; k + 4 <= k_end; k += 4) {
      const __m256i words = _mm256_i32gather_epi32(reinterpret_cast<const int*>(cols.codes + k),
                                                   cols.code_offsets, 1);
      float* out = dst + (k - k_tile) * kPanelN;
      // Byte t of each word is code k + t: move it to the top, shift back arithmetically.
      const __m256i c0 = _mm256_srai_epi32(_mm256_slli_epi32(words, 24), 24);
      const __m256i c1 = _mm256_srai_epi32(_mm256_slli_epi32(words, 16), 24);
      const __m256i c2 = _mm256_srai_epi32(_mm256_slli_epi32(words, 8), 24);
      const __m256i c3 = _mm256_srai_epi32(words, 24);
      _mm256_store_ps(out + 0 * kPanelN, _mm256_mul_ps(_mm256_cvtepi32_ps(c0), gs.scale));
      _mm256_store_ps(out + 1 * kPanelN, _mm256_mul_ps(_mm256_cvtepi32_ps(c1), gs.scale));
      _mm256_store_ps(out + 2 * kPanelN, _mm256_mul_ps(_mm256_cvtepi32_ps(c2), gs.scale));
      _mm256_store_ps(out + 3 * kPanelN, _mm256_mul_ps(_mm256_cvtepi32_ps(c3), gs.scale));
    }
  } else if (k % 2 == 0) {  // 4-bit vector steps need k on a byte boundary
    const __m256 table_low = _mm256_loadu_ps(kNF4Table);
    const __m256 table_high = _mm256_loadu_ps(kNF4Table + 8);
    for (; k + 8 <= k_end; k += 8) {
      const __m256i words = _mm256_i32gather_epi32(
          reinterpret_cast<const int*>(cols.codes + k / 2), cols.code_offsets, 1);
      float* out = dst + (k - k_tile) * kPanelN;
      for (int t = 0; t < 8; ++t) {
        const __m256i shifted = _mm256_srli_epi32(words, 4 * t);
        const __m256 w = p.fmt == Format::kNF4
            ? _mm256_mul_ps(nf4_lookup(shifted, table_low, table_high), gs.scale)
            : _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(shifted, low_nibble)), gs.scale,
                              gs.offset);
        _mm256_store_ps(out + t * kPanelN, w);
      }
    }
  }
  // The last < 8 weights of a group (and odd-aligned runs): one at a time, never past a row.
  if (k < k_end) {
    alignas(32) float scale[8], offset[8];
    _mm256_store_ps(scale, gs.scale);
    _mm256_store_ps(offset, gs.offset);
    alignas(32) int32_t row_offset[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(row_offset), cols.code_offsets);
    for (; k < k_end; ++k) {
      float* out = dst + (k - k_tile) * kPanelN;
      for (int c = 0; c < 8; ++c) {
        out[c] = decode_one(p.fmt, cols.codes + row_offset[c], k) * scale[c] + offset[c];
      }
    }
  }
}

// W[n0 : n0+columns, k0 : k0+depth] into tile = ceil(columns/16) panels of [kTileK][16].
// Columns past `columns` in the last panel repeat the last real row: computed, never stored.
void dequantize_tile(const QMatmulParams& p, int64_t n0, int64_t columns, int64_t k0, int64_t depth,
                     float* tile) {
  const int64_t column_groups = 2 * ((columns + kPanelN - 1) / kPanelN);
  for (int64_t cg = 0; cg < column_groups; ++cg) {
    alignas(32) int32_t code_offset[8], scale_offset[8];
    for (int c = 0; c < 8; ++c) {
      const int64_t column = min_i64(cg * 8 + c, columns - 1);
      code_offset[c] = int32_t(column * p.qweight_row_stride);
      scale_offset[c] = int32_t(column * p.scales_row_stride);
    }
    ColumnGroup cols{static_cast<const uint8_t*>(p.qweight) + n0 * p.qweight_row_stride,
                     _mm256_load_si256(reinterpret_cast<const __m256i*>(code_offset)),
                     _mm256_load_si256(reinterpret_cast<const __m256i*>(scale_offset))};
    float* panel = tile + (cg / 2) * kTileK * kPanelN + (cg % 2) * 8;
    // Runs of k inside one group share the 8 scales.
    for (int64_t k = k0; k < k0 + depth;) {
      const int64_t group = k / p.group_size;
      const int64_t run_end = min_i64(k0 + depth, (group + 1) * p.group_size);
      dequantize_run(p, cols, load_group_scale(p, cols, n0, group), k, run_end, k0, panel);
      k = run_end;
    }
  }
}

// --- microkernel: acc[ROWS, 16] (+)= x[ROWS, k0:k0+depth] @ panel[depth, 16] ----------------
// noinline: inlined into gemm_avx2, the dequantizer's constants kept two ymm registers busy and
// one of the 12 accumulators went to the stack, a store-to-load chain on every k. One thread,
// 4096x4096 int4, M=256, interleaved runs: 35-41 GFLOP/s inlined, 79-81 GFLOP/s noinline.
template <int ROWS>
__attribute__((noinline)) void microkernel(const float* const* x_rows, int64_t k0, const float* panel, int64_t depth,
                 float* acc, int64_t acc_stride, bool accumulate) {
  __m256 c[ROWS][2];
  for (int r = 0; r < ROWS; ++r) {
    c[r][0] = accumulate ? _mm256_loadu_ps(acc + r * acc_stride) : _mm256_setzero_ps();
    c[r][1] = accumulate ? _mm256_loadu_ps(acc + r * acc_stride + 8) : _mm256_setzero_ps();
  }
  const float* x_at[ROWS];
  for (int r = 0; r < ROWS; ++r) x_at[r] = x_rows[r] + k0;
  for (int64_t kk = 0; kk < depth; ++kk) {
    const __m256 w0 = _mm256_load_ps(panel + kk * kPanelN);
    const __m256 w1 = _mm256_load_ps(panel + kk * kPanelN + 8);
    for (int r = 0; r < ROWS; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x_at[r] + kk);
      c[r][0] = _mm256_fmadd_ps(xv, w0, c[r][0]);
      c[r][1] = _mm256_fmadd_ps(xv, w1, c[r][1]);
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    _mm256_storeu_ps(acc + r * acc_stride, c[r][0]);
    _mm256_storeu_ps(acc + r * acc_stride + 8, c[r][1]);
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

// Gathers take 32-bit offsets: rows of a tile must lie within 2 GiB of its first row.
bool offsets_fit_int32(const QMatmulParams& p) {
  const int64_t limit = int64_t(1) << 31;
  return p.qweight_row_stride * kTileN < limit && p.scales_row_stride * kTileN < limit;
}

}  // namespace

Status gemm_avx2(const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  if (Status status = validate(p); status != Status::kOk) return status;
  if (!offsets_fit_int32(p)) return gemm_scalar(p, n_begin, n_end);
  const F32Rows x = activations_as_f32(p);
  float* acc = scratch_floats(ScratchSlot::kAccumulators, size_t(p.m * kTileN));
  alignas(64) float tile[kTileN * kTileK];  // 64 KiB
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kTileN) {
    const int64_t columns = min_i64(kTileN, n_end - n0);
    const int64_t panels = (columns + kPanelN - 1) / kPanelN;
    for (int64_t k0 = 0; k0 < p.k; k0 += kTileK) {
      const int64_t depth = min_i64(kTileK, p.k - k0);
      dequantize_tile(p, n0, columns, k0, depth, tile);
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
