// Declarations of the tensor-core GEMM (gemm_mma.cuh) for the dispatcher in gemm.cu: its tile
// shapes, and one launcher per (format, activation dtype), each instantiated in its own .cu file.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../core/qmatmul.h"
#include "qmatmul_cuda.h"
#include "unpack.cuh"

namespace qk::cuda {

// Every block is 8 warps; a warp computes 32 weight rows (two mma tiles of 16) x x_rows_per_warp
// rows of x (16, 32 or 64) over its share of K, in steps of 128 k.
constexpr int kGemmWarpRowsW = 32;
constexpr int kGemmBlockK = 128;
constexpr int kGemmWarps = 8;

// Short tiles put all 8 warps along N (256 weight rows x x_rows_per_warp rows of x), so each
// weight is unpacked once per block: with 2 warps along M both unpacked the same weights, and at
// M <= 32 the unpacking is what the GEMM spends its time on (v2 in bench/NOTES.md). The tallest
// tile keeps 4 x 2 warps (128 x 128), where the unpack is amortised over 64 rows of x per warp.
constexpr int gemm_warps_x(int x_rows_per_warp) { return x_rows_per_warp <= 32 ? 1 : 2; }
constexpr int gemm_block_w(int x_rows_per_warp) {
  return kGemmWarpRowsW * kGemmWarps / gemm_warps_x(x_rows_per_warp);
}
constexpr int gemm_block_x(int x_rows_per_warp) {
  return x_rows_per_warp * gemm_warps_x(x_rows_per_warp);
}
// Blocks per SM the GEMM is compiled for (__launch_bounds__), by tile height: see GemmTile.
constexpr int gemm_blocks_per_sm(int x_rows_per_warp) { return x_rows_per_warp <= 32 ? 2 : 1; }

// The 128-k blocks that cover K (the last may be partial).
__host__ __device__ constexpr int64_t gemm_k_blocks(int64_t k) {
  return (k + kGemmBlockK - 1) / kGemmBlockK;
}
// K split into split_k slices of whole 128-k blocks: blocks per slice, and the slices that makes
// (fewer than split_k when the blocks do not divide evenly).
constexpr int64_t gemm_k_blocks_per_slice(int64_t k_blocks, int split_k) {
  return (k_blocks + split_k - 1) / split_k;
}
constexpr int64_t gemm_k_slices(int64_t k_blocks, int split_k) {
  return (k_blocks + gemm_k_blocks_per_slice(k_blocks, split_k) - 1) /
         gemm_k_blocks_per_slice(k_blocks, split_k);
}

// The block's shape for x_rows_per_warp = kWarpRowsX and its shared memory.
template <Format kFmt, int kWarpRowsX>
struct GemmTile {
  static constexpr int kWarpsX = gemm_warps_x(kWarpRowsX), kWarpsW = kGemmWarps / kWarpsX;
  static constexpr int kThreads = 32 * kGemmWarps;
  static constexpr int kWarpRowsW = kGemmWarpRowsW;
  static constexpr int kBlockW = gemm_block_w(kWarpRowsX);
  static constexpr int kBlockX = gemm_block_x(kWarpRowsX);
  static constexpr int kXTiles = kWarpRowsX / 8;  // mma n = 8 rows of x each
  // Short tiles are latency-bound (8 warps per SM measured 0.5 TB/s of weights at M = 32): two
  // blocks per SM for them, which caps registers at 128 per thread and shared memory at ~113 KiB
  // per block (int8 with 32 rows of x needs 120 KiB: one block). Three stages: four of the tallest
  // tile would not fit an A100's 164 KiB with nf4's table.
  static constexpr int kMinBlocksPerSM = gemm_blocks_per_sm(kWarpRowsX);
  static constexpr int kStages = 3;
  static constexpr int kXRowBytes = kGemmBlockK * 2;                         // 16 chunks
  static constexpr int kWRowBytes = kFmt == Format::kInt8 ? kGemmBlockK : kGemmBlockK / 2;
  static constexpr int kWRowChunks = kWRowBytes / 16;                        // 8 or 4
  static constexpr int kXStageBytes = kBlockX * kXRowBytes;
  static constexpr int kWStageBytes = kBlockW * kWRowBytes;
  static constexpr int kTableBytes = kFmt == Format::kNF4 ? kNF4TableWords * 4 : 0;
  static constexpr int kSmemBytes = kStages * (kXStageBytes + kWStageBytes) + kTableBytes;
};

// Dynamic shared memory of launch_gemm_mma's kernel for this format and tile height.
inline int gemm_smem_bytes(Format fmt, int x_rows_per_warp) {
  auto bytes = [&](auto fmt_tag) {
    constexpr Format kFmt = decltype(fmt_tag)::value;
    return x_rows_per_warp == 16   ? GemmTile<kFmt, 16>::kSmemBytes
           : x_rows_per_warp == 32 ? GemmTile<kFmt, 32>::kSmemBytes
                                   : GemmTile<kFmt, 64>::kSmemBytes;
  };
  switch (fmt) {
    case Format::kInt8: return bytes(std::integral_constant<Format, Format::kInt8>{});
    case Format::kInt4: return bytes(std::integral_constant<Format, Format::kInt4>{});
    default: return bytes(std::integral_constant<Format, Format::kNF4>{});
  }
}

// Rows of the permuted x: K rounded up to whole 128-k blocks.
__host__ __device__ constexpr int64_t gemm_x_perm_row(int64_t k) {
  return gemm_k_blocks(k) * kGemmBlockK;
}

// The Hopper GEMM's block: 64 weight rows per consumer warpgroup (each warp 16) x kBlockX rows of
// x (64 or 128), and one producer warpgroup whose single thread copies each stage by TMA into a
// ring of 4 stages. Per k-step, two wgmmas of kN rows of x each (m64n32k16 or m64n64k16): with
// one wgmma per fragment (m64n64k16 for 64 rows), ptxas unpacked each fragment right before its
// wgmma, into the registers of the one still running, and serialised them all (C7513).
// 64 rows of x: one consumer warpgroup per block and two blocks per SM, so that the SM's two
// consumer warpgroups do not wait on each other's stages; 128 rows: two consumer warpgroups
// (two such blocks would not fit the shared memory).
// (wgmma_warpgroups, wgmma_block_w, wgmma_blocks_per_sm: qmatmul_cuda.h, for the dispatch.)
template <Format kFmt, int kBlockX>
struct WgmmaTile {
  static constexpr int kConsumers = 128 * wgmma_warpgroups(kBlockX);  // threads
  static constexpr int kThreads = kConsumers + 128, kStages = 4;
  static constexpr int kBlockW = wgmma_block_w(kBlockX);
  static constexpr int kBlocksPerSM = wgmma_blocks_per_sm(kBlockX);
  // Registers per thread after setmaxnreg: the producer's few, and the consumers' share of what
  // the block was given at launch (65536 / (kThreads x kBlocksPerSM), rounded down to 8).
  static constexpr int kProducerRegisters = 40;
  static constexpr int kConsumerRegisters =
      (65536 / (kThreads * kBlocksPerSM) / 8 * 8 * kThreads - 128 * kProducerRegisters) /
      kConsumers / 8 * 8;
  static constexpr int kN = kBlockX / 2, kXTiles = 2;
  // x: per stage two 128-byte-swizzled regions of 64 k-slots each ([kBlockX rows][128 B]).
  static constexpr int kXRegionBytes = kBlockX * 128;
  static constexpr int kXStageBytes = 2 * kXRegionBytes;
  static constexpr int kWRowBytes = kFmt == Format::kInt8 ? kGemmBlockK : kGemmBlockK / 2;
  static constexpr int kWStageBytes = kBlockW * kWRowBytes;
  static constexpr int kTableBytes = kFmt == Format::kNF4 ? kNF4TableWords * 4 : 0;
  // + 1 KiB to align the stages to the 1024 bytes the swizzle pattern repeats over, which also
  // holds two 8-byte mbarriers per stage (full, empty).
  static constexpr int kBarrierBytes = 16 * kStages;
  static constexpr int kSmemBytes = 1024 + kStages * (kXStageBytes + kWStageBytes) + kTableBytes;
};

// Dynamic shared memory of launch_gemm_wgmma's kernel for this format and rows of x per block.
inline int gemm_wgmma_smem_bytes(Format fmt, int x_rows_per_block) {
  auto bytes = [&](auto fmt_tag) {
    constexpr Format kFmt = decltype(fmt_tag)::value;
    return x_rows_per_block == 64 ? WgmmaTile<kFmt, 64>::kSmemBytes
                                  : WgmmaTile<kFmt, 128>::kSmemBytes;
  };
  switch (fmt) {
    case Format::kInt8: return bytes(std::integral_constant<Format, Format::kInt8>{});
    case Format::kInt4: return bytes(std::integral_constant<Format, Format::kInt4>{});
    default: return bytes(std::integral_constant<Format, Format::kNF4>{});
  }
}

// T = half or __nv_bfloat16. x_rows_per_warp (16, 32 or 64) picks the tile (GemmTile);
// split_k > 1 splits K over gridDim.z = gemm_k_slices(k blocks, split_k) slices, each storing
// its partial sums to its own slab of `workspace` (fp32 [slices][m, n]) instead of writing y.
// kDqAbsmax: nf4 whose absmax is p.absmax_dq.
template <Format kFmt, typename T, bool kDqAbsmax = false>
cudaError_t launch_gemm_mma(const QMatmulParams& p, int x_rows_per_warp, int split_k,
                            float* workspace, cudaStream_t stream);

// The Hopper GEMM (gemm_wgmma.cuh): x_rows_per_block 64 or 128; x_perm is a workspace of p.m
// rounded up to x_rows_per_block x gemm_x_perm_row(p.k) elements of T that it fills with the
// permuted x first. Split-K as launch_gemm_mma.
template <Format kFmt, typename T, bool kDqAbsmax = false>
cudaError_t launch_gemm_wgmma(const QMatmulParams& p, int x_rows_per_block, int split_k,
                              float* workspace, void* x_perm, cudaStream_t stream);

}  // namespace qk::cuda
