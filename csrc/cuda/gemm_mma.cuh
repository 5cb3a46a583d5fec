// Tensor-core GEMM for many rows of x (prefill, batched decode): y[m, n] = sum_k x[m, k] w[n, k]
// (+ bias[n]), reading the canonical packed weights (no repack) and unpacking them in registers
// between shared memory and the mma. Torch-free; instantiated per (format, activation dtype) in
// gemm_mma_<fmt>_<dtype>.cu.
//
// Structure (Marlin and CUTLASS's mixed-input GEMM, written for the canonical layout):
//   fetch   cp.async of 16-byte chunks of x and of the packed codes into a ring of kStages
//           shared-memory stages (128 k each); k past the end is zero-filled by the copy.
//   dequant each lane reads 16 bytes of codes per weight row and stage and unpacks them with the
//           GEMV's helpers (unpack.cuh) straight into mma A fragments.
//   mma     m16n8k16, fp32 accumulators. As in the GEMV, A = weights and B = x^T ("swap AB"):
//           the unpacking produces value pairs (k_i, k_i+4) for int4 and (k_i, k_i+2) for int8,
//           so the k-slots of an mma hold a permutation of k, and x is permuted to match with
//           byte_perm after a 16-byte shared-memory load (ldmatrix cannot permute within a row).
//           Quad q of a warp owns k [32 q, 32 q + 32) of each stage.
//   store   fp32 -> T with bias into y, or (split-K) the slice's fp32 partial sums into its slab
//           of a workspace, which gemm.cu's finalize kernel adds up into y.
#pragma once

#include <algorithm>

#include "common.cuh"
#include "gemm_mma.h"
#include "gemv_mma.h"
#include "unpack.cuh"

namespace qk::cuda {

// 16 bytes global -> shared without a register round trip; valid = false writes 16 zero bytes
// (src is not read), which is how k past the end of a row contributes nothing.
__device__ __forceinline__ void cp_async_16B(void* smem_dst, const void* src, bool valid) {
  const auto dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
// cp_async_16B for the weights: a miss fills the whole 128-byte line, whose other 64 bytes (4-bit
// codes) the next stage copies (H100, mma.sync GEMM at M = 16: 28672x8192 int4 1.09x, nf4 1.14x,
// 14336x4096 1.01-1.04x; no gain in the wgmma GEMM; bench/NOTES.md "CUDA GEMM", v6.2).
__device__ __forceinline__ void cp_async_16B_fill_line(void* smem_dst, const void* src,
                                                       bool valid) {
  const auto dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
// Waits until at most kPending committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// The 128-k blocks of this block's split-K slice (blockIdx.z; gemm_k_slices): the first and
// how many, none for a slice past the end of K.
struct KSlice {
  int64_t first;
  int count;
};
__device__ __forceinline__ KSlice this_k_slice(int64_t k, int k_blocks_per_split) {
  const int64_t k_blocks = gemm_k_blocks(k);
  const int64_t first = int64_t(blockIdx.z) * k_blocks_per_split;
  return {first, int(min64(k_blocks - first, k_blocks_per_split))};
}

// Where 16-byte chunk c of row r of a stage lives. x: lanes (group, quad) read chunk 4 quad + cc
// of rows 8 i + group, so the 8 lanes of one shared-memory phase (groups 2p, 2p+1) would hit the
// same 4 bank groups; flipping bit 1 by bit 3 and bit 0 by the row's parity spreads them over all
// 8. int8 codes: quads read chunks 2 quad + e, conflict-free once odd rows flip bit 0. 4-bit
// codes: the 8 lanes of a phase read 128 contiguous bytes already.
__device__ __forceinline__ int x_chunk_slot(int c, int row) {
  return c ^ (((c >> 3) << 1) | (row & 1));
}
template <Format kFmt>
__device__ __forceinline__ int w_chunk_slot(int c, int row) {
  return kFmt == Format::kInt8 ? c ^ (row & 1) : c;
}

// kDqAbsmax: nf4 whose absmax is decoded from p.absmax_dq where it is loaded (load_scale).
// kRowScale: int8 with one scale per row, applied to the fp32 sums at the store (the mma takes
// the exact codes): error against fp64 40% lower, as fast or faster (H100; bench/NOTES.md "CUDA
// GEMM", v6.3).
template <Format kFmt, typename T, int kWarpRowsX, bool kDqAbsmax, bool kRowScale>
__global__ void __launch_bounds__(GemmTile<kFmt, kWarpRowsX>::kThreads,
                                  GemmTile<kFmt, kWarpRowsX>::kMinBlocksPerSM)
    gemm_mma_kernel(const QMatmulParams p,  // x [m, k] T, qweight canonical, y [m, n] T
                    int group_shift,        // group of k = k >> shift (62: one group per row)
                    int k_blocks_per_split,  // 128-k blocks per gridDim.z slice
                    float* workspace)  // split-K: fp32 [gridDim.z][m, n] partial sums, else null
{
  using Tile = GemmTile<kFmt, kWarpRowsX>;
  using T2 = typename Pair<T>::T2;
  constexpr int kStages = Tile::kStages;
  extern __shared__ uint4 smem[];
  uint8_t* x_smem = reinterpret_cast<uint8_t*>(smem);              // [stages][kBlockX][256 B]
  uint8_t* w_smem = x_smem + kStages * Tile::kXStageBytes;         // [stages][128][kWRowBytes]
  uint32_t* lut = reinterpret_cast<uint32_t*>(w_smem + kStages * Tile::kWStageBytes);  // nf4

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int group = lane / 4, quad = lane % 4;
  const int warp_w = warp % Tile::kWarpsW, warp_x = warp / Tile::kWarpsW;
  const int64_t m_block = int64_t(blockIdx.x) * Tile::kBlockX;
  const int64_t n_block = int64_t(blockIdx.y) * Tile::kBlockW;
  const KSlice slice = this_k_slice(p.k, k_blocks_per_split);
  if (slice.count <= 0) return;

  if constexpr (kFmt == Format::kNF4) fill_nf4_pair_table<T>(lut, tid, Tile::kThreads);

  // --- fetch: one stage of x (kBlockX rows x 16 chunks) and codes (kBlockW rows). Copy j of a
  // thread takes the same chunk column of row row0 + j * rows_per_pass, so one test against K
  // per stage serves all of a thread's copies, and each copy is one address add. Rows past the
  // end are zero-filled (their results are never stored).
  const T* x = static_cast<const T*>(p.x);
  const auto* qweight = static_cast<const uint8_t*>(p.qweight);
  const int64_t row_bytes = packed_row_bytes(kFmt, p.k);
  constexpr int kXChunks = Tile::kXRowBytes / 16;
  constexpr int kXRowsPerPass = Tile::kThreads / kXChunks;
  constexpr int kXCopies = Tile::kBlockX / kXRowsPerPass;
  constexpr int kWRowsPerPass = Tile::kThreads / Tile::kWRowChunks;
  constexpr int kWCopies = Tile::kBlockW / kWRowsPerPass;
  static_assert(kXCopies >= 1 && kWCopies >= 1, "a stage is at least one copy per thread");
  const int x_col = tid % kXChunks, x_row0 = tid / kXChunks;
  const int w_col = tid % Tile::kWRowChunks, w_row0 = tid / Tile::kWRowChunks;
  // Rows past the end share the row parity the swizzles read, so one slot per thread.
  const int x_dst = x_row0 * Tile::kXRowBytes + x_chunk_slot(x_col, x_row0) * 16;
  const int w_dst = w_row0 * Tile::kWRowBytes + w_chunk_slot<kFmt>(w_col, w_row0) * 16;
  const int64_t x_rows = p.m - m_block - x_row0, w_rows = p.n - n_block - w_row0;
  const T* x_src = x + (x_rows > 0 ? (m_block + x_row0) * p.x_row_stride + x_col * 8 : 0);
  const uint8_t* w_src =
      qweight + (w_rows > 0 ? (n_block + w_row0) * p.qweight_row_stride + w_col * 16 : 0);
  auto fetch = [&](int stage, int64_t kb) {
    uint8_t* xs = x_smem + stage * Tile::kXStageBytes + x_dst;
    const bool x_k_ok = kb * kGemmBlockK + x_col * 8 < p.k;
#pragma unroll
    for (int j = 0; j < kXCopies; ++j) {
      const bool valid = x_k_ok && j * kXRowsPerPass < x_rows;
      cp_async_16B(xs + j * kXRowsPerPass * Tile::kXRowBytes,
                   valid ? x_src + kb * kGemmBlockK + j * kXRowsPerPass * p.x_row_stride : x,
                   valid);
    }
    uint8_t* ws = w_smem + stage * Tile::kWStageBytes + w_dst;
    const bool w_k_ok = kb * Tile::kWRowBytes + w_col * 16 < row_bytes;
#pragma unroll
    for (int j = 0; j < kWCopies; ++j) {
      const bool valid = w_k_ok && j * kWRowsPerPass < w_rows;
      cp_async_16B_fill_line(
          ws + j * kWRowsPerPass * Tile::kWRowBytes,
          valid ? w_src + kb * Tile::kWRowBytes + j * kWRowsPerPass * p.qweight_row_stride
                : qweight,
          valid);
    }
  };

  // Scales (and int4 zero points) of this lane's 4 weight rows for the 32 k its quad owns in
  // 128-k block kb; k past the end takes the last group (its codes and x are zeros).
  // Rows are recomputed at each load rather than kept as 8 pointers: registers are the limit.
  const int64_t groups = num_groups(p.k, p.group_size);
  const int64_t lane_row = n_block + warp_w * Tile::kWarpRowsW + group;
  float scale[2][2], zero[2][2];
  auto load_scales = [&](int64_t kb, float (&s)[2][2], float (&z)[2][2]) {
    if constexpr (kRowScale) return;
    const int64_t g = min64((kb * kGemmBlockK + 32 * quad) >> group_shift, groups - 1);
#pragma unroll
    for (int t = 0; t < 2; ++t) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t index = min64(lane_row + 16 * t + 8 * r, p.n - 1) * p.scales_row_stride + g;
        s[t][r] = load_scale<kDqAbsmax>(p, index);
        z[t][r] = p.zeros ? __ldg(p.zeros + index) : kInt4SymmetricZero;
      }
    }
  };

  float acc[2][Tile::kXTiles][4] = {};

  // --- one stage: dequant each 8-k (4-bit) or 2 x 4-k (int8) slice of the lane's codes into A
  // fragments of both weight tiles, then run them against every x tile of the warp.
  auto compute = [&](int stage) {
    const uint8_t* xs = x_smem + stage * Tile::kXStageBytes;
    const uint8_t* ws = w_smem + stage * Tile::kWStageBytes;
    constexpr int kCodeChunks = kFmt == Format::kInt8 ? 2 : 1;  // 16-byte chunks per row and quad
    uint4 codes[2][2][kCodeChunks];
    [[maybe_unused]] T2 s2[2][2];  // all but kRowScale
    [[maybe_unused]] T2 magic_zero2[2][2], zs2[2][2];  // int4
#pragma unroll
    for (int t = 0; t < 2; ++t) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = warp_w * Tile::kWarpRowsW + 16 * t + group + 8 * r;
#pragma unroll
        for (int e = 0; e < kCodeChunks; ++e) {
          const int slot = w_chunk_slot<kFmt>(kCodeChunks * quad + e, row);
          codes[t][r][e] = *reinterpret_cast<const uint4*>(ws + row * Tile::kWRowBytes + slot * 16);
        }
        if constexpr (!kRowScale) s2[t][r] = Pair<T>::make(scale[t][r], scale[t][r]);
        if constexpr (kFmt == Format::kInt4) {
          int4_group_constants<T>(scale[t][r], zero[t][r], magic_zero2[t][r], zs2[t][r]);
        }
      }
    }
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) {  // x chunk 4 quad + cc: k = 32 quad + 8 cc ... + 7
      uint32_t a[2][2][4];            // [tile][row half][value pairs]
#pragma unroll
      for (int t = 0; t < 2; ++t) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if constexpr (kFmt == Format::kInt4) {
            dequant_int4<T>(word(codes[t][r][0], cc), magic_zero2[t][r], s2[t][r], zs2[t][r],
                            a[t][r]);
          } else if constexpr (kFmt == Format::kNF4) {
            dequant_nf4<T>(word(codes[t][r][0], cc), s2[t][r], lut, 4 * lane, a[t][r]);
          } else {
#pragma unroll
            for (int e = 0; e < 2; ++e) {  // words 2 cc + e of the lane's 32 bytes
              uint32_t q[2];
              const uint32_t w = word(codes[t][r][cc / 2], 2 * (cc % 2) + e);
              if constexpr (kRowScale) {
                int8_values<T>(w, q);
              } else {
                dequant_int8<T>(w, s2[t][r], q);
              }
              a[t][r][2 * e] = q[0];
              a[t][r][2 * e + 1] = q[1];
            }
          }
        }
      }
#pragma unroll
      for (int i = 0; i < Tile::kXTiles; ++i) {
        const int row = warp_x * kWarpRowsX + 8 * i + group;
        const uint4 xv = *reinterpret_cast<const uint4*>(
            xs + row * Tile::kXRowBytes + x_chunk_slot(4 * quad + cc, row) * 16);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t b[2];
          if constexpr (kFmt == Format::kInt4) {  // slots hold (k_j, k_j+4), j = 2h, 2h + 1
            b[0] = __byte_perm(word(xv, h), word(xv, h + 2), 0x5410);
            b[1] = __byte_perm(word(xv, h), word(xv, h + 2), 0x7632);
          } else if constexpr (kFmt == Format::kNF4) {  // natural order
            b[0] = word(xv, 2 * h);
            b[1] = word(xv, 2 * h + 1);
          } else {  // int8 word h: slots hold (k_0, k_2), (k_1, k_3) of k = 8 cc + 4 h ...
            b[0] = __byte_perm(word(xv, 2 * h), word(xv, 2 * h + 1), 0x5410);
            b[1] = __byte_perm(word(xv, 2 * h), word(xv, 2 * h + 1), 0x7632);
          }
#pragma unroll
          for (int t = 0; t < 2; ++t) {
            const uint32_t af[4] = {a[t][0][2 * h], a[t][1][2 * h], a[t][0][2 * h + 1],
                                    a[t][1][2 * h + 1]};
            mma_16816<T>(acc[t][i], af, b);
          }
        }
      }
    }
  };

  // --- main loop: kStages - 1 stages in flight while one is computed.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < slice.count) fetch(s, slice.first + s);
    cp_async_commit();
  }
  load_scales(slice.first, scale, zero);
  for (int it = 0; it < slice.count; ++it) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage `it` visible to all; stage it - 1 free to refill
    const int next = it + kStages - 1;
    if (next < slice.count) fetch(next % kStages, slice.first + next);
    cp_async_commit();
    float next_scale[2][2], next_zero[2][2];
    if (it + 1 < slice.count) load_scales(slice.first + it + 1, next_scale, next_zero);
    compute(it % kStages);
    if (it + 1 < slice.count) {
#pragma unroll
      for (int t = 0; t < 2; ++t) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          scale[t][r] = next_scale[t][r];
          zero[t][r] = next_zero[t][r];
        }
      }
    }
  }
  cp_async_wait<0>();

  [[maybe_unused]] float row_scale[2][2];  // kRowScale: the lane's four weight rows
  if constexpr (kRowScale) {
#pragma unroll
    for (int t = 0; t < 2; ++t) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t n = min64(lane_row + 16 * t + 8 * r, p.n - 1);
        row_scale[t][r] = __ldg(p.scales + n * p.scales_row_stride);
      }
    }
  }
  // --- store: D element e of tile (t, i) is weight row group + 8 (e / 2), x row 2 quad + e % 2.
#pragma unroll
  for (int t = 0; t < 2; ++t) {
#pragma unroll
    for (int i = 0; i < Tile::kXTiles; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t n = n_block + warp_w * Tile::kWarpRowsW + 16 * t + group + 8 * (e / 2);
        const int64_t m = m_block + warp_x * kWarpRowsX + 8 * i + 2 * quad + e % 2;
        if (n >= p.n || m >= p.m) continue;
        float v = acc[t][i][e];
        if constexpr (kRowScale) v *= row_scale[t][e / 2];
        if (workspace) {
          workspace[(int64_t(blockIdx.z) * p.m + m) * p.n + n] = v;
        } else {
          if (p.bias) v += to_float(static_cast<const T*>(p.bias)[n]);
          static_cast<T*>(p.y)[m * p.y_row_stride + n] = from_float<T>(v);
        }
      }
    }
  }
}

template <Format kFmt, typename T, bool kDqAbsmax, int kWarpRowsX>
cudaError_t launch_gemm_tile(const QMatmulParams& p, int split_k, float* workspace,
                             cudaStream_t stream) {
  using Tile = GemmTile<kFmt, kWarpRowsX>;
  const int64_t m_tiles = (p.m + Tile::kBlockX - 1) / Tile::kBlockX;
  const int64_t n_tiles = (p.n + Tile::kBlockW - 1) / Tile::kBlockW;
  const int64_t k_blocks = gemm_k_blocks(p.k);
  const int64_t per_split = gemm_k_blocks_per_slice(k_blocks, split_k);
  if (m_tiles > 0x7fffffff || n_tiles > 65535) return cudaErrorInvalidConfiguration;
  const int group_shift = p.group_size >= p.k ? 62 : log2_exact(p.group_size);
  const int64_t splits = gemm_k_slices(k_blocks, split_k);
  const dim3 grid{unsigned(m_tiles), unsigned(n_tiles), unsigned(splits)};
  return with_row_scale<kFmt>(p, [&](auto row_scale) {
    constexpr bool kRowScale = decltype(row_scale)::value;
    constexpr auto kKernel = gemm_mma_kernel<kFmt, T, kWarpRowsX, kDqAbsmax, kRowScale>;
    const cudaError_t error = allow_dynamic_smem<kKernel, Tile::kSmemBytes>();
    if (error != cudaSuccess) return error;
    kKernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(
        p, group_shift, int(per_split), split_k > 1 ? workspace : nullptr);
    return cudaGetLastError();
  });
}

template <Format kFmt, typename T, bool kDqAbsmax>
cudaError_t launch_gemm_mma(const QMatmulParams& p, int x_rows_per_warp, int split_k,
                            float* workspace, cudaStream_t stream) {
  switch (x_rows_per_warp) {
    case 16: return launch_gemm_tile<kFmt, T, kDqAbsmax, 16>(p, split_k, workspace, stream);
    case 32: return launch_gemm_tile<kFmt, T, kDqAbsmax, 32>(p, split_k, workspace, stream);
    default: return launch_gemm_tile<kFmt, T, kDqAbsmax, 64>(p, split_k, workspace, stream);
  }
}

}  // namespace qk::cuda
