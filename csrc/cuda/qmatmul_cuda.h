// The CUDA kernels' interface: y = x @ dequant(W)^T (+ bias) on device pointers, launched on a
// caller's stream. Torch-free (includes only the CUDA runtime API), so host C++ can include it.
// Callers run qk::validate(p) first; launchers return the launch's cudaError_t.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "../core/qmatmul.h"

namespace qk::cuda {

// Dispatch by the rows of x (M) between the GEMV, the tensor-core GEMM and dequantize + cuBLAS.
// Thresholds from bench/cuda_gemm.py on an H100 (fp16 x, cold L2, graph replay; every path forced
// at every M: bench/results/h100/gemm_dev.md; "CUDA GEMM" in bench/NOTES.md).

// Rows up to which the GEMV always runs. At M = 8 it takes 21.1 us on 14336x4096 int4 g128, the
// GEMM (v4) 28.3, as long as at M = 16.
constexpr int64_t kGemvMaxRows = 8;

// Above that, up to kGemvTallMaxRows, the GEMV runs where gemv_wins_above_8_rows() says so, with
// one 16-row tile of x per block (the tall shapes, gemv_mma.cuh). H100, fp16 x, us GEMV / the
// faster GEMM at M = 9 / 16 (bench/cuda_gemm.py, calls q11, q12 of 25 Nov; "GEMV v1.22" in
// bench/NOTES.md):
// - int8 per channel and int4 g128 on every shape: int4 6144x4096 10.9 / 15.6 and 12.4 / 15.3,
//   8192x8192 22.4 / 26.0 and 24.2 / 26.3, 28672x8192 73.6 / 79.3 and 76.2 / 80.7; the worst,
//   28672x4096 at M = 16, 45.2 / 44.0;
// - nf4 g64 where its grid has more than one wave of the tall shape and at most two (the tall
//   wide and paired shapes: 6144x4096 12.4 / 15.8 and 13.5 / 15.6, 8192x8192 23.0 / 26.1 and
//   24.5 / 25.9, 8192x28672 68.8 / 72.4 and 76.9 / 73.0, where the mma.sync GEMM is the faster
//   one and the dispatch would take wgmma's 77.9 and 80.6), or one with K <= 8192 (4096x4096
//   9.5 / 11.7 and 10.4 / 11.6); the GEMM on larger grids and on one wave of long rows
//   (14336x4096 25.4 / 24.1 and 27.0 / 24.5, 4096x14336 24.6 / 24.3 and 27.7 / 24.6; call q12).
// At M = 24-32 (two tall tiles) the GEMM wins on every large shape.
constexpr int64_t kGemvTallMaxRows = 16;
bool gemv_wins_above_8_rows(const QMatmulParams& p, int sm_count);

// The Hopper GEMM's block (gemm_mma.h's WgmmaTile): 64 weight rows per consumer warpgroup, one
// warpgroup for 64 rows of x (two blocks per SM), two for 128.
constexpr int wgmma_warpgroups(int x_rows_per_block) { return x_rows_per_block == 64 ? 1 : 2; }
constexpr int wgmma_block_w(int x_rows_per_block) {
  return 64 * wgmma_warpgroups(x_rows_per_block);
}
constexpr int wgmma_blocks_per_sm(int x_rows_per_block) {
  return 2 / wgmma_warpgroups(x_rows_per_block);
}

// Rows up to which the GEMM runs (where gemm_supported()); above, dequantize + cuBLAS.
// M = 128, int4: GEMM 97.4 us against 103.0 (14336x4096), 87.6 / 108.8 (4096x14336), 369 / 389
// (28672x8192), but 34.4 / 28.4 on 4096x4096; M = 256: dequantize + cuBLAS wins on every shape
// and format (14336x4096 int4: 110.5 against 191.5).
constexpr int64_t kGemmMaxRows = 128;

// Where the Hopper GEMM runs (gemm_wgmma_runs(): H100-class GPUs), it replaces the mma.sync GEMM
// above kGemmWgmmaMinRows and takes over from dequantize + cuBLAS up to kGemmWgmmaMaxRows.
// H100, fp16 x, us wgmma / mma.sync GEMM / dequantize + cuBLAS (bench/cuda_gemm.py, call b4 of
// 24 Nov, fourth session; "GEMM v6" in bench/NOTES.md):
// - M = 16: 14336x4096 int4 31.1 / 33.9, but 4096x14336 int4 30.8 / 28.6, int8 34.7 / 30.9,
//   28672x8192 nf4 104.1 / 90.1, 4096x4096 int4 15.0 / 13.5: the mma.sync GEMM stayed up to 16
//   (until GEMM v8, below);
// - M = 32: wgmma wins on 10 of the 12 (shape, format) cells (14336x4096 int4 28.7 / 38.4,
//   4096x14336 int4 30.3 / 36.3), loses 28672x8192 nf4 106.3 / 103.4 and 4096x4096 nf4 16.6 /
//   16.4;
// - M = 64-128: wgmma on every cell (14336x4096 int4 29.4 / 58.3 at 64, 39.3 / 75.8 at 128);
// - M = 256: wgmma against dequantize + cuBLAS on every cell (14336x4096 int4 74.2 / 110.9,
//   4096x4096 int4 32.5 / 34.6).
// - M = 320-512 (calls d8-d10 of 24 Nov, sixth session, after GEMM v6.1-v6.3; us wgmma /
//   dequantize + cuBLAS; M = 320, 384, 448, 512): on the three shapes larger than 4096x4096
//   wgmma is faster on 33 of 36 (M, shape, format) cells, by up to 1.7x (14336x4096 int4 114.3 /
//   125.2 at 384; 4096x14336 int8 111.7 / 143.5 at 384; 28672x8192 int4 520.6 / 821.7 at 448,
//   where cuBLAS's fp16 kernel is slow too), level on int4 14336x4096 at 512 (152.2 / 152.2),
//   and loses nf4 on 14336x4096 at 512 (165.4 / 156.0) and on 4096x14336 at 320 (1%). On
//   4096x4096 it loses 4-bit at 320-384 (int4 38.1 / 34.7, nf4 43.4 / 37.5 at 320: 96 blocks of
//   128 rows of x leave 36 SMs idle, and fixed costs weigh more on a 20 us matmul) and is level
//   at 512, so weights up to that size keep dequantize + cuBLAS above 256 rows.
// - From M = 513 a fifth 128-row tile of x makes a second wave on every shape: dequantize +
//   cuBLAS on 11 of 12 cells at 640 (14336x4096 int4 190.7 / 175.6; 4096x4096 78.0 / 46.2) and on
//   every cell at 1024.
// - After GEMM v8 (the TMA producer warpgroup; calls e2-e8 of 24 Nov, seventh session):
//   - M >= 256: wgmma 1.10-1.33x faster than before. 4096x4096 at M = 320 / 384 / 448 / 512,
//     int4: 33.2 / 33.6 / 34.5 / 35.1 against 35.0 / 36.7 / 45.0 / 41.2 (nf4 and int8 alike):
//     its 96-128 blocks are one wave. 6144x4096 at 320-512 runs 144-192 blocks, two waves: int4
//     61.0 / 63.2 / 61.4 / 64.0 against 59.2 / 55.3 / 60.0 / 60.2 (int8 wins from 448).
//     2048x4096 and 4096x2048 (half the SMs or fewer): level at 256-320, then mostly dequantize
//     + cuBLAS (2048x4096 int4 at 384: 23.9 / 21.8).
//   - M = 640-2048 on the three large shapes: int8 wgmma faster on 11 of 12 cells up to 1536
//     (14336x4096 at 1024 200.4 / 225.0; 4096x14336 at 1536 292.1 / 324.6; 28672x8192 at 640
//     531.1 / 719.1), losing 4096x14336 at 640 (177.9 / 172.1: 160 blocks, 1.2 waves), level at
//     2048. 4-bit is mixed past 512: 28672x8192 wins at 640-768 (int4 603.5 / 703.5), 4096x14336
//     loses there (int4 201.1 / 164.4), 14336x4096 int4 loses from 768.
//   - M = 9-16, where the GEMV does not take them (gemv_wins_above_8_rows): wgmma / mma.sync
//     GEMM at M = 16, 14336x4096 int4 24.3 / 28.3, nf4 25.6 / 28.1; 4096x14336 nf4 24.6 / 26.6;
//     4096x4096 nf4 12.0 / 13.6; 28672x8192 int4 81.3 / 85.6, but nf4 82.3 / 78.9.
// - 4-bit at M = 512-2048 once more (call p6 of 25 Nov, sixth session; us wgmma / dequantize +
//   cuBLAS at M = 640 / 768 / 1024): 28672x8192 (Llama-70B's MLP) int4 582 / 674, 687 / 752,
//   937 / 905; nf4 564 / 686, 686 / 771, 939 / 926. 14336x4096 int4 177 / 173 and 4096x14336
//   int4 218 / 157 already lose at 640, as before.
// So the Hopper GEMM from 9 rows on, up to 512 rows on large weights (768 for 4-bit on weights of
// more than 2^27, 1536 for int8) and on weights from 2^24 whose 128-row tiles of x fit the SMs
// in one wave, 256 elsewhere.
constexpr int64_t kGemmWgmmaMinRows = 9;
constexpr int64_t kGemmWgmmaMaxRows = 256;
constexpr int64_t kGemmWgmmaMaxRowsLargeWeight = 512;  // N K > kGemmWgmmaLargeWeight
constexpr int64_t kGemmWgmmaMaxRowsLargeWeightInt8 = 1536;
constexpr int64_t kGemmWgmmaMaxRowsHugeWeight = 768;  // 4-bit, N K > kGemmWgmmaHugeWeight
constexpr int64_t kGemmWgmmaLargeWeight = int64_t(1) << 25;
constexpr int64_t kGemmWgmmaHugeWeight = int64_t(1) << 27;
constexpr int64_t kGemmWgmmaOneWaveWeight = int64_t(1) << 24;  // N K >= this: by the grid

inline int64_t gemm_wgmma_max_rows(const QMatmulParams& p, int sm_count) {
  if (p.fmt == Format::kInt8 && p.n * p.k > kGemmWgmmaLargeWeight) {
    return kGemmWgmmaMaxRowsLargeWeightInt8;
  }
  if (p.n * p.k > kGemmWgmmaHugeWeight) return kGemmWgmmaMaxRowsHugeWeight;
  if (p.n * p.k > kGemmWgmmaLargeWeight) return kGemmWgmmaMaxRowsLargeWeight;
  if (p.n * p.k < kGemmWgmmaOneWaveWeight) return kGemmWgmmaMaxRows;
  const int64_t weight_tiles = (p.n + wgmma_block_w(128) - 1) / wgmma_block_w(128);
  const int64_t one_wave_rows = sm_count / weight_tiles * 128;
  return std::clamp(one_wave_rows, kGemmWgmmaMaxRows, kGemmWgmmaMaxRowsLargeWeight);
}

// Small weights (SmolLM2's 576x576, Llama's 1024x4096 k/v projections). The GEMM's tiles are
// 256 weight rows wide (128 from M = 65) and a K slice keeps >= 4 k-blocks of 128, so a small
// weight gets few blocks: 576x576 at M = 16 runs 3 blocks on 132 SMs, each walking all of K
// (ncu: grid 3, 0.01 waves, 12% achieved occupancy, 2.9% of memory throughput) and took 9.8 us
// against F.linear's 3.3. Where the GEMM's grid has fewer blocks than half the SMs
// (GemmPlan::few_blocks), small_weight_gemv() picks the GEMV (its grid is N / 16 x M / 8 blocks
// whatever K) or dequantize + cuBLAS: on every such shape measured the GEMM lost to one or the
// other at every M from 16 to 256 (bench/results/h100/small_layers.md). int4 g128, us, GEMM /
// GEMV / dequantize + cuBLAS: 576x576 M = 16 9.8 / 3.6 / 5.5, M = 128 17.1 / 5.3 / 5.6, M = 256
// 17.1 / 7.5 / 5.7; 1536x576 M = 64 13.1 / 5.4 / 5.9, M = 128 17.1 / 8.4 / 6.1; 1024x4096
// (32-64 blocks) M = 32 15.0 / 6.9 / 11.0, M = 64 15.4 / 12.3 / 11.8. The Llama-3 shapes' grids
// have >= 128 blocks from M = 16 and keep their paths.
//
// The GEMV unpacks the weights once per 8 rows of x, so it wins up to kGemvMaxRowsSmallGemm rows
// everywhere measured, and beyond while it unpacks at most kGemvSmallGemmMaxUnpacked weights
// (N K ceil(M / 8)): 192x576 up to M = 256 (3.5 M: int4 4.5 against 5.4 us), 576x576 to 128
// (5.3 M), 1536x576 and 576x1536 to 64 (7.1 M; at 128, 14 M, 1536x576 took 8.4 against 6.1),
// and 1024x4096 at 64 (34 M) already lost (12.3 against 11.8). Not for nf4: its GEMV fills a
// 32 KiB table per block, ~2.5 us on these shapes (192x576 M = 16: 6.0 us against int4's 3.5),
// and trails dequantize + cuBLAS past 32 rows (576x576 M = 64: 6.5 against 5.9).
constexpr int64_t kGemvMaxRowsSmallGemm = 32;
constexpr int64_t kGemvSmallGemmMaxUnpacked = int64_t(1) << 23;

// Where the GEMM's grid is small: true for the GEMV, false for dequantize + cuBLAS.
inline bool small_weight_gemv(const QMatmulParams& p) {
  if (p.m <= kGemvMaxRowsSmallGemm) return true;
  return p.fmt != Format::kNF4 && p.n * p.k * ((p.m + 7) / 8) <= kGemvSmallGemmMaxUnpacked;
}

// Where the GEMM does not apply (fp32 x, K not a multiple of 32, other group sizes): GEMV up to
// here, then dequantize + cuBLAS, which costs 102-110 us up to M = 128 on 14336x4096 int4 against
// the GEMV's 69 (M = 32) and 129 (M = 64); 4096x4096: 27 against 23 and 40.
constexpr int64_t kGemvMaxRowsWithoutGemm = 40;

// y[m, :] for all m < p.m: tensor-core GEMV (mma.sync, fp32 accumulation) when x is fp16/bf16
// and the shape and pointers meet gemv_mma_supported(); a scalar-load warp-per-row kernel
// otherwise (any shape, any dtype, fp32 x included). sm_count: the GPU's SMs (launch shape).
// dependent: launch the tensor-core GEMV by launch_dependent (sm_90+ only), so that its launch
// and prologue overlap the tail of the kernel before it; it reads nothing before that kernel ends.
cudaError_t launch_gemv(const QMatmulParams& p, int sm_count, bool dependent, cudaStream_t stream);

// The tensor-core GEMM (gemm_mma.cuh): fp16 / bf16 x, K a multiple of 32 (4-bit) or 16 (int8),
// groups a power of two >= 32 or one per row, 16-byte-aligned rows of x and W.
bool gemm_supported(const QMatmulParams& p);

// How launch_gemm runs a problem on a GPU with sm_count SMs and smem_per_block bytes of shared
// memory per block (opt-in maximum): with the mma.sync kernel, the tile height (x rows per warp:
// 16, 32 or 64) or, with the Hopper kernel (wgmma = true, where gemm_wgmma_runs()), the rows of x
// per block (64 or 128); 0 where no tile fits and the GEMM cannot run. Then the number of slices
// K is split into, and whether that leaves most SMs idle. split_k > 1 needs an fp32 workspace
// of gemm_workspace_floats(p, plan) (each slice's partial sums; nothing to zero); the Hopper
// kernel needs x_perm, gemm_x_perm_elements(p, plan) elements of x's dtype. few_blocks: the grid
// has fewer blocks than half the SMs (see kGemvMaxRowsSmallGemm).
struct GemmPlan {
  int x_rows_per_warp;
  int split_k;
  bool few_blocks;
  int wgmma_x_rows = 0;
  bool runs() const { return x_rows_per_warp > 0 || wgmma_x_rows > 0; }
};
GemmPlan plan_gemm(const QMatmulParams& p, int sm_count, int smem_per_block, bool wgmma);

// Whether the Hopper GEMM runs on a GPU of this compute capability: 9.0, with the extension built
// for sm_90a (TORCH_CUDA_ARCH_LIST with 9.0a; wgmma is not in plain sm_90 code).
bool gemm_wgmma_runs(int cc_major, int cc_minor);
int64_t gemm_workspace_floats(const QMatmulParams& p, const GemmPlan& plan);
int64_t gemm_x_perm_elements(const QMatmulParams& p, const GemmPlan& plan);

// y = x @ dequant(W)^T (+ bias) on the tensor cores, for p that gemm_supported() accepts.
cudaError_t launch_gemm(const QMatmulParams& p, const GemmPlan& plan, float* workspace,
                        void* x_perm, cudaStream_t stream);

// w_out [p.n, p.k] (row stride p.k, dtype out_dtype) = dequant(W), from the weight fields of p
// (fmt, n, k, group_size, qweight, scales, zeros); x, y and bias are not read.
cudaError_t launch_dequantize(const QMatmulParams& p, void* w_out, DType out_dtype,
                              cudaStream_t stream);

}  // namespace qk::cuda
