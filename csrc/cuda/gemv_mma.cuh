// Tensor-core GEMV for few rows of x (decode): y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]),
// reading the canonical packed weights directly (no repack). Torch-free; instantiated per
// (format, activation dtype) in gemv_mma_<fmt>_<dtype>.cu.
//
// Why mma.sync and not FMAs: at M = 8 and 3 TB/s an int4 weight stream asks for ~48 T FMA/s in
// fp32, more than the H100's ~33 T of CUDA-core FMA; one m16n8k16 mma takes a 16x16 weight tile
// against all 8 rows of x at once, so the tensor cores do the arithmetic at any M <= 8 and the
// CUDA cores only unpack. The mma's n = 8 is the row count of x ("swap AB"): A = 16 weight rows,
// B = x^T, D = y^T.
//
// The mma sums over its 16 k-slots, so which physical k a slot holds is ours to choose, as long
// as the A lane and the B lane that meet in a slot agree. Lane (group = lane / 4, quad = lane % 4)
// of a warp holds A rows `group` and `group + 8`, B column (x row) `group`, and k-slots
// {2 quad, 2 quad + 1, 2 quad + 8, 2 quad + 9}. We give each quad a 16-byte chunk of every row it
// touches: quad q of step s owns chunk 4 s + q (32 k for 4-bit, 16 k for int8), and the slots of
// one mma are filled with whichever of the chunk's k the unpacking produces as a pair; x is
// permuted to match with byte_perm (int4, int8) or not at all (nf4).
#pragma once

#include <algorithm>
#include <cstdlib>

#include "common.cuh"
#include "gemv_mma.h"
#include "unpack.cuh"

namespace qk::cuda {

// Weights k per 16-byte chunk of a packed row, and per step (4 chunks: one per quad).
template <Format kFmt>
constexpr int kChunkK = kFmt == Format::kInt8 ? 16 : 32;
template <Format kFmt>
constexpr int kStepK = 4 * kChunkK<kFmt>;

constexpr int kMaxWarps = 8;

// Where the group scale is applied, by how many groups one step spans:
// kScaleInA (groups smaller than half a step): folded into the unpacked weights, as before v3.
// 1 (groups of whole steps, or one per row) and 2 (groups of half a step): the mma takes the bare
// codes (int4: q - 8, int8: q, nf4: NF4[q]; exact in fp16 / bf16 but for NF4's rounding) into a
// fresh fp32 accumulator per group, and the scale is applied once per group and row in fp32. With
// 2, each lane's 16 bytes of a row are two 8-byte pieces, one in each half of the step, so that
// words 0-1 and 2-3 of every lane belong to the step's two groups.
constexpr int kScaleInA = 0;

// An 8-byte weight load with the same cache policy as load_weights_16B.
__device__ __forceinline__ uint2 load_weights_8B(const void* ptr, uint64_t policy) {
  uint2 v;
  asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v2.u32 {%0, %1}, [%2], %3;"
      : "=r"(v.x), "=r"(v.y)
      : "l"(ptr), "l"(policy));
  return v;
}

// How the launcher splits the work: a tile is 16 weight rows x 8 rows of x over all of K;
// tile = weight tile * m_tiles + x tile. The warps of a block share each tile, warp w taking
// batches w, w + warps, ...; every warp walks items_per_tile items per tile (the last ones may
// be empty), so all warps reach each tile's reduction together. Blocks stride over the tiles.
struct GemvWork {
  int tiles;
  int m_tiles;
  int64_t batches;        // per tile: ceil(steps / kBatchSteps)
  int items_per_tile;     // ceil(batches / warps)
  int chunk_group_shift;  // group of chunk c = c >> shift (62: one group)
};

// One batch of weights for one lane: [step][row r = group + 8 r] (scales: [...][group of step]).
template <int kStepGroups, int kBatchSteps>
struct WeightBatch {
  static constexpr int kGroups = kStepGroups == kScaleInA ? 1 : kStepGroups;
  uint4 codes[kBatchSteps][2];
  float scale[kBatchSteps][2][kGroups];
  float zero[kBatchSteps][2][kGroups];  // int4 only
};

// Where a warp is in its sequence of items: the tile, its weight / x row bases, and j, the
// index of the warp's batch in the tile (batch warp + j * warps).
struct WorkItem {
  int tile;
  int j;
  int64_t n_base;
  int64_t m_base;
};

__device__ __forceinline__ WorkItem work_item(int tile, int j, const GemvWork& work) {
  return {tile, j, int64_t(tile / work.m_tiles) * 16, int64_t(tile % work.m_tiles) * 8};
}

__device__ __forceinline__ WorkItem next_item(const WorkItem& item, const GemvWork& work) {
  return item.j + 1 < work.items_per_tile
             ? WorkItem{item.tile, item.j + 1, item.n_base, item.m_base}
             : work_item(item.tile + int(gridDim.x), 0, work);
}

// --- the kernel ---------------------------------------------------------------------------------

template <Format kFmt, typename T, int kStepGroups, int kBatchSteps, int kMinBlocksPerSM,
          bool kPipelined>
__global__ void __launch_bounds__(kMaxWarps * 32, kMinBlocksPerSM)
    gemv_mma_kernel(const QMatmulParams p,  // x [m, k] T, qweight canonical, y [m, n] T
                    const GemvWork work) {
  using T2 = typename Pair<T>::T2;
  using Batch = WeightBatch<kStepGroups, kBatchSteps>;
  constexpr int kK = kChunkK<kFmt>;
  constexpr bool kScaleAfter = kStepGroups != kScaleInA;
  constexpr int kGroups = Batch::kGroups;
  constexpr int kWordsPerGroup = 4 / kGroups;
  constexpr int kXPerPiece = kK / 16;  // 16-byte x loads per 8-byte piece of codes
  extern __shared__ uint4 smem[];
  float4* partial = reinterpret_cast<float4*>(smem);                   // [warps][32] D fragments
  uint32_t* lut = reinterpret_cast<uint32_t*>(partial + blockDim.x);  // nf4: [256 bytes][32 lanes]

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int group = lane / 4, quad = lane % 4;
  const int64_t chunks = p.k / kK;
  const uint64_t policy = evict_first_policy();
  // int4 with its scale after the mma: the zero point needs sum(x) over the group.
  [[maybe_unused]] const bool x_sums = kFmt == Format::kInt4 && kScaleAfter && p.zeros;

  if constexpr (kFmt == Format::kNF4) {
    fill_nf4_pair_table<T>(lut, threadIdx.x, blockDim.x);
    __syncthreads();
  }

  // Byte offset in a row of this lane's 16 bytes of step s (kStepGroups == 2: of piece h of 8).
  auto code_offset = [&](int64_t s, int h) -> int64_t {
    return kStepGroups == 2 ? s * 64 + 32 * h + 8 * quad : (s * 4 + quad) * 16;
  };

  // Fetch: this lane's codes of its two rows and their scales (zero points) for one batch, all
  // loads issued before any use. Rows past the end are clamped to a real row (their output is
  // discarded) and codes past K to the row's last ones (their x is zeroed below), so every load
  // is in bounds and unconditional.
  auto fetch = [&](Batch& batch, const WorkItem& item) {
    const int64_t b = warp + int64_t(item.j) * warps;
    if (item.tile >= work.tiles || b >= work.batches) return;
    const int64_t row_bytes = chunks * 16;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t n = item.n_base + group + 8 * r;
      const int64_t row = n < p.n ? n : p.n - 1;
      const uint8_t* w_row = static_cast<const uint8_t*>(p.qweight) + row * p.qweight_row_stride;
      const float* s_row = p.scales + row * p.scales_row_stride;
#pragma unroll
      for (int u = 0; u < kBatchSteps; ++u) {
        const int64_t s = b * kBatchSteps + u;
#pragma unroll
        for (int h = 0; h < kGroups; ++h) {
          const int64_t offset = code_offset(s, h);
          const int64_t piece_bytes = kStepGroups == 2 ? 8 : 16;
          const int64_t offset_in = offset < row_bytes ? offset : row_bytes - piece_bytes;
          if constexpr (kStepGroups == 2) {
            const uint2 piece = load_weights_8B(w_row + offset_in, policy);
            (h == 0 ? batch.codes[u][r].x : batch.codes[u][r].z) = piece.x;
            (h == 0 ? batch.codes[u][r].y : batch.codes[u][r].w) = piece.y;
          } else {
            batch.codes[u][r] = load_weights_16B(w_row + offset_in, policy);
          }
          const int64_t g = (offset_in / 16) >> work.chunk_group_shift;
          batch.scale[u][r][h] = __ldg(s_row + g);
          if constexpr (kFmt == Format::kInt4) {
            batch.zero[u][r][h] =
                p.zeros ? __ldg(p.zeros + row * p.scales_row_stride + g) : kInt4SymmetricZero;
          }
        }
      }
    }
  };

  // Dequant + mma of one batch into acc (the D fragment of this tile: rows group, group + 8,
  // x rows 2 quad, 2 quad + 1).
  auto compute = [&](const Batch& batch, const WorkItem& item, float (&acc)[4]) {
    const int64_t b = warp + int64_t(item.j) * warps;
    if (b >= work.batches) return;
    const int64_t x_row = item.m_base + group < p.m ? item.m_base + group : p.m - 1;
    const T* x = static_cast<const T*>(p.x) + x_row * p.x_row_stride;
#pragma unroll
    for (int u = 0; u < kBatchSteps; ++u) {
      const int64_t s = b * kBatchSteps + u;
      // x fragment: the k of this lane's codes in its x row (L1 hits after the first block);
      // zero past K, which zeroes the products of the clamped codes.
      uint4 xv[kK / 8];
#pragma unroll
      for (int v = 0; v < kK / 8; ++v) {
        const int64_t k = kStepGroups == 2
                              ? code_offset(s, v / kXPerPiece) * (kK / 16) + 8 * (v % kXPerPiece)
                              : code_offset(s, 0) * (kK / 16) + 8 * v;
        xv[v] = k < p.k ? load_cached_16B(x + k) : make_uint4(0, 0, 0, 0);
      }
      [[maybe_unused]] T2 s2[2], magic_zero2[2], zs2[2];  // scale folded into A
      if constexpr (!kScaleAfter) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          s2[r] = Pair<T>::make(batch.scale[u][r][0], batch.scale[u][r][0]);
          if constexpr (kFmt == Format::kInt4) {
            int4_group_constants<T>(batch.scale[u][r][0], batch.zero[u][r][0], magic_zero2[r],
                                    zs2[r]);
          }
        }
      }
      float d[kGroups][4] = {};
      [[maybe_unused]] float x_sum[kGroups][4] = {};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float(&dg)[4] = d[j / kWordsPerGroup];
        if constexpr (kFmt == Format::kInt8) {
          uint32_t a0[2], a1[2];
          if constexpr (kScaleAfter) {
            int8_codes<T>(word(batch.codes[u][0], j), a0);
            int8_codes<T>(word(batch.codes[u][1], j), a1);
          } else {
            dequant_int8<T>(word(batch.codes[u][0], j), s2[0], batch.scale[u][0][0], a0);
            dequant_int8<T>(word(batch.codes[u][1], j), s2[1], batch.scale[u][1][0], a1);
          }
          const uint32_t x0 = word(xv[j / 2], 2 * (j % 2)), x1 = word(xv[j / 2], 2 * (j % 2) + 1);
          const uint32_t a[4] = {a0[0], a1[0], a0[1], a1[1]};
          const uint32_t bx[2] = {__byte_perm(x0, x1, 0x5410), __byte_perm(x0, x1, 0x7632)};
          mma_16816<T>(dg, a, bx);
        } else {
          uint32_t a0[4], a1[4];
          if constexpr (kFmt == Format::kInt4 && kScaleAfter) {
            int4_codes_minus_8<T>(word(batch.codes[u][0], j), a0);
            int4_codes_minus_8<T>(word(batch.codes[u][1], j), a1);
          } else if constexpr (kFmt == Format::kInt4) {
            dequant_int4<T>(word(batch.codes[u][0], j), magic_zero2[0], s2[0], zs2[0], a0);
            dequant_int4<T>(word(batch.codes[u][1], j), magic_zero2[1], s2[1], zs2[1], a1);
          } else if constexpr (kScaleAfter) {
            nf4_values(word(batch.codes[u][0], j), lut + lane, a0);
            nf4_values(word(batch.codes[u][1], j), lut + lane, a1);
          } else {
            dequant_nf4<T>(word(batch.codes[u][0], j), s2[0], lut + lane, a0);
            dequant_nf4<T>(word(batch.codes[u][1], j), s2[1], lut + lane, a1);
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t a[4] = {a0[2 * h], a1[2 * h], a0[2 * h + 1], a1[2 * h + 1]};
            uint32_t bx[2];
            if constexpr (kFmt == Format::kInt4) {  // slots hold (k_i, k_i+4): pair x to match
              const uint32_t lo = word(xv[j], h), hi = word(xv[j], h + 2);
              bx[0] = __byte_perm(lo, hi, 0x5410);
              bx[1] = __byte_perm(lo, hi, 0x7632);
            } else {  // nf4 slots hold (k_2i, k_2i+1): x in its natural order
              bx[0] = word(xv[j], 2 * h);
              bx[1] = word(xv[j], 2 * h + 1);
            }
            mma_16816<T>(dg, a, bx);
            if constexpr (kFmt == Format::kInt4 && kScaleAfter) {
              if (x_sums) {
                const uint32_t one2 = bits(Pair<T>::make(1.0f, 1.0f));
                const uint32_t ones[4] = {one2, one2, one2, one2};
                mma_16816<T>(x_sum[j / kWordsPerGroup], ones, bx);
              }
            }
          }
        }
      }
      // D element e belongs to row group + 8 (e / 2).
#pragma unroll
      for (int e = 0; e < 4; ++e) {
#pragma unroll
        for (int h = 0; h < kGroups; ++h) {
          if constexpr (kScaleAfter) {
            float t = d[h][e];
            if constexpr (kFmt == Format::kInt4) {
              t = fmaf(8.0f - batch.zero[u][e / 2][h], x_sum[h][e], t);
            }
            acc[e] = fmaf(batch.scale[u][e / 2][h], t, acc[e]);
          } else {
            acc[e] += d[h][e];
          }
        }
      }
    }
  };

  // Reduce the warps' D fragments of a tile through shared memory, add bias, store.
  auto store = [&](const WorkItem& item, const float (&acc)[4]) {
    partial[threadIdx.x] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    __syncthreads();
    const float* partial_f = reinterpret_cast<const float*>(partial);
    for (int t = threadIdx.x; t < 128; t += blockDim.x) {
      float sum = 0.0f;
      for (int w = 0; w < warps; ++w) sum += partial_f[w * 128 + t];
      // D element t % 4 of lane t / 4: row (lane / 4) + 8 * (element >= 2), column 2 (lane % 4)
      // + element % 2.
      const int l = t / 4, e = t % 4;
      const int64_t n = item.n_base + l / 4 + 8 * (e / 2);
      const int64_t m = item.m_base + 2 * (l % 4) + e % 2;
      if (n < p.n && m < p.m) {
        if (p.bias) sum += to_float(static_cast<const T*>(p.bias)[n]);
        static_cast<T*>(p.y)[m * p.y_row_stride + n] = from_float<T>(sum);
      }
    }
    __syncthreads();  // partial is rewritten by the next tile
  };

  // Consume an item: compute, and at the tile's last item reduce, store and restart acc.
  auto consume = [&](const Batch& batch, const WorkItem& item, float (&acc)[4]) {
    compute(batch, item, acc);
    if (item.j + 1 == work.items_per_tile) {
      store(item, acc);
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[e] = 0.0f;
    }
  };

  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if constexpr (!kPipelined) {
    const WorkItem tile = work_item(blockIdx.x, 0, work);
    for (int j = 0; j < work.items_per_tile; ++j) {
      Batch batch;
      const WorkItem item{tile.tile, j, tile.n_base, tile.m_base};
      fetch(batch, item);
      compute(batch, item, acc);
    }
    store(tile, acc);
    return;
  }
  // Software pipeline over the warp's items with two register buffers in fixed roles (a copy
  // between them would wait on the loads in flight): fetch item i + 1, consume item i.
  Batch buffer0, buffer1;
  WorkItem use = work_item(blockIdx.x, 0, work);
  WorkItem load = next_item(use, work);
  fetch(buffer0, use);
  while (true) {
    fetch(buffer1, load);
    load = next_item(load, work);
    consume(buffer0, use, acc);
    use = next_item(use, work);
    if (use.tile >= work.tiles) break;
    fetch(buffer0, load);
    load = next_item(load, work);
    consume(buffer1, use, acc);
    use = next_item(use, work);
    if (use.tile >= work.tiles) break;
  }
}

template <Format kFmt, typename T, int kStepGroups, int kBatchSteps, int kMinBlocksPerSM,
          bool kPipelined>
cudaError_t launch_gemv_mma_kernel(const QMatmulParams& p, cudaStream_t stream) {
  constexpr int kK = kChunkK<kFmt>;
  const int64_t steps = (p.k / kK + 3) / 4;
  const int64_t batches = (steps + kBatchSteps - 1) / kBatchSteps;
  const int warps = int(std::min<int64_t>(kMaxWarps, batches));
  const int64_t m_tiles = (p.m + 7) / 8;
  const int64_t tiles = (p.n + 15) / 16 * m_tiles;
  if (tiles > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const size_t smem = size_t(warps) * 32 * sizeof(float4) +
                      (kFmt == Format::kNF4 ? kNF4TableWords * sizeof(uint32_t) : 0);
  const GemvWork work{int(tiles), int(m_tiles), batches, int((batches + warps - 1) / warps),
                      p.group_size >= p.k ? 62 : log2_exact(p.group_size / kK)};
  const auto kernel =
      gemv_mma_kernel<kFmt, T, kStepGroups, kBatchSteps, kMinBlocksPerSM, kPipelined>;
  // As many blocks as fit on the GPU at once, each looping over tiles, so that no SM idles
  // through a partial last wave and every warp's next loads overlap its current unpacking.
  int device = 0, sm_count = 0, blocks_per_sm = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device);
  }
  if (error == cudaSuccess) {
    error = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, warps * 32, smem);
  }
  if (error != cudaSuccess) return error;
  const int64_t blocks = kPipelined ? std::min<int64_t>(tiles, int64_t(std::max(blocks_per_sm, 1)) * sm_count) : tiles;
  kernel<<<unsigned(blocks), warps * 32, smem, stream>>>(p, work);
  return cudaGetLastError();
}

template <Format kFmt, typename T, int kBatchSteps, int kMinBlocksPerSM, bool kPipelined>
cudaError_t launch_gemv_mma_variant(const QMatmulParams& p, cudaStream_t stream) {
  const char* in_a = std::getenv("QKERNELS_GEMV_SCALE_IN_A");
  if (in_a && *in_a == '1') return launch_gemv_mma_kernel<kFmt, T, kScaleInA, kBatchSteps, kMinBlocksPerSM, kPipelined>(p, stream);
  if (p.group_size >= p.k || p.group_size % kStepK<kFmt> == 0) {
    return launch_gemv_mma_kernel<kFmt, T, 1, kBatchSteps, kMinBlocksPerSM, kPipelined>(p, stream);
  }
  if (p.group_size == kStepK<kFmt> / 2) return launch_gemv_mma_kernel<kFmt, T, 2, kBatchSteps, kMinBlocksPerSM, kPipelined>(p, stream);
  return launch_gemv_mma_kernel<kFmt, T, kScaleInA, kBatchSteps, kMinBlocksPerSM, kPipelined>(p, stream);
}

// EXPERIMENT (temporary): QKERNELS_GEMV_VARIANT 0 = v1 loop (4 steps, no pipeline), 1 = pipelined 2 steps,
// 2 = pipelined 4 steps 1 block/SM.
template <Format kFmt, typename T>
cudaError_t launch_gemv_mma(const QMatmulParams& p, cudaStream_t stream) {
  const char* v = std::getenv("QKERNELS_GEMV_VARIANT");
  const int variant = v ? std::atoi(v) : 0;
  if (variant == 1) return launch_gemv_mma_variant<kFmt, T, 2, 2, true>(p, stream);
  if (variant == 2) return launch_gemv_mma_variant<kFmt, T, 4, 1, true>(p, stream);
  return launch_gemv_mma_variant<kFmt, T, 4, 2, false>(p, stream);
}

}  // namespace qk::cuda
