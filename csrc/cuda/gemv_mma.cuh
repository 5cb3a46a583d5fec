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

#include "common.cuh"
#include "gemv_mma.h"
#include "unpack.cuh"

namespace qk::cuda {

// Weights k per 16-byte chunk of a packed row.
template <Format kFmt>
constexpr int kChunkK = kFmt == Format::kInt8 ? 16 : 32;

constexpr int kWarps = 8;  // per block, splitting K

// Launch shapes; a lane loads kUnroll steps (2 kWTiles rows x 16 bytes each) before unpacking
// them. launch_gemv_mma picks one by the grid (H100 measurements in bench/NOTES.md, "CUDA GEMV",
// v1.3, v1.10, v1.21, v1.22 and v1.23).
// Deep: 4 steps (4 KiB per warp in flight), up to 128 registers, 2 blocks (16 warps) per SM.
// Wide: 2 steps, at most 80 registers, 3 blocks (24 warps) per SM: more warps to hide each one's
// round trip, for grids of several waves.
// Paired (kWTiles = 2): each warp takes two 16-row weight tiles, 32 rows a block, so every x
// fragment it loads feeds twice the mmas and a block's fixed costs (nf4's 32 KiB table fill, the
// reduction) are spread over twice the rows; 1 step, 3 blocks per SM (80 registers) or 4 (64).
// Tall (kXTiles = 2): 16 rows of x per block, two mma n-tiles of 8 against each unpacked weight
// tile, for M > 8, where 8-row blocks unpack every weight once per 8 rows of x; 2 steps, 2
// blocks per SM (v1.5); on larger grids 1 step at 3 blocks per SM (tall wide) or paired at 2.
struct GemvDeep {
  static constexpr int kUnroll = 4, kMinBlocksPerSM = 2, kXTiles = 1, kWTiles = 1;
};
struct GemvWide {
  static constexpr int kUnroll = 2, kMinBlocksPerSM = 3, kXTiles = 1, kWTiles = 1;
};
struct GemvPaired3 {
  static constexpr int kUnroll = 1, kMinBlocksPerSM = 3, kXTiles = 1, kWTiles = 2;
};
struct GemvPaired4 {
  static constexpr int kUnroll = 1, kMinBlocksPerSM = 4, kXTiles = 1, kWTiles = 2;
};
struct GemvTall {
  static constexpr int kUnroll = 2, kMinBlocksPerSM = kGemvTallBlocksPerSM, kXTiles = 2,
                       kWTiles = 1;
};
struct GemvTallWide {
  static constexpr int kUnroll = 1, kMinBlocksPerSM = 3, kXTiles = 2, kWTiles = 1;
};
struct GemvTallPaired {
  static constexpr int kUnroll = 1, kMinBlocksPerSM = kGemvTallBlocksPerSM, kXTiles = 2,
                       kWTiles = 2;
};

// Blocks in one wave of a launch shape: its blocks per SM on every SM.
template <typename Shape>
int64_t wave_blocks(int sm_count) {
  return int64_t(Shape::kMinBlocksPerSM) * sm_count;
}

// Rows of x a block of a launch shape takes, and its grid for p: tiles of 16 kWTiles weight rows
// times tiles of x_tile_rows rows of x.
template <typename Shape>
constexpr int64_t x_tile_rows() {
  return 8 * Shape::kXTiles;
}
template <typename Shape>
int64_t grid_blocks(const QMatmulParams& p) {
  constexpr int64_t kWRows = 16 * Shape::kWTiles;
  return (p.n + kWRows - 1) / kWRows * ((p.m + x_tile_rows<Shape>() - 1) / x_tile_rows<Shape>());
}

// --- the kernel ---------------------------------------------------------------------------------

// One block = kWTiles tiles of 16 weight rows x one tile of 8 kXTiles rows of x, the warps
// splitting K in steps of 4 chunks; blockIdx.x = weight tile * m_tiles + x tile, so the x tiles
// of a weight tile run side by side and re-read its weights from L2. kDqAbsmax: nf4 with
// p.absmax_dq (load_scale). kRowScale: int8 with one scale per row, which multiplies the fp32
// sums once at the end instead of every weight (the mma takes the exact codes): as fast, and the
// error against fp64 40% lower, as the scale is no longer rounded to x's dtype (H100;
// bench/NOTES.md "CUDA GEMV", v1.11).
template <Format kFmt, typename T, bool kDqAbsmax, typename Shape, bool kRowScale>
__global__ void __launch_bounds__(kWarps * 32, Shape::kMinBlocksPerSM)
    gemv_mma_kernel(const QMatmulParams p,  // x [m, k] T, qweight canonical, y [m, n] T
                    int m_tiles,            // ceil(m / (8 kXTiles))
                    int chunk_group_shift)  // group of chunk c = c >> shift (62: one group)
{
  using T2 = typename Pair<T>::T2;
  constexpr int kK = kChunkK<kFmt>;
  constexpr int kXTiles = Shape::kXTiles;
  constexpr int kWTiles = Shape::kWTiles;
  constexpr int kRows = 2 * kWTiles;  // weight rows per lane: group + 8 r
  extern __shared__ uint4 smem[];
  float4* partial = reinterpret_cast<float4*>(smem);  // [w tiles][x tiles][warps][32] D fragments
  uint32_t* lut =
      reinterpret_cast<uint32_t*>(partial + kWTiles * kXTiles * blockDim.x);  // nf4: [256][32]

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int group = lane / 4, quad = lane % 4;
  const int64_t n_base = int64_t(blockIdx.x / m_tiles) * 16 * kWTiles;
  const int64_t m_base = int64_t(blockIdx.x % m_tiles) * 8 * kXTiles;

  // Started by launch_dependent (sm_90), the kernel may run while the one before it in the stream
  // still does, so nothing reads global memory before wait_for_previous_kernel below. The next
  // kernel, if started the same way, may be scheduled once every block of this one has begun.
  allow_next_kernel_to_start();
  if constexpr (kFmt == Format::kNF4) {
    fill_nf4_pair_table<T>(lut, threadIdx.x, blockDim.x);
    __syncthreads();
  }

  // This lane's A rows (weights) and B columns (an x row per x tile). Rows past the end are
  // clamped to a real row, so every load is in bounds and unconditional; their scale is zeroed
  // below (weights 0) or their output discarded (x rows).
  bool row_ok[kRows];
  const uint8_t* w_row[kRows];
  int64_t s_row[kRows];  // flat index of the row's first scale
  const float* z_row[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t n = n_base + group + 8 * r;
    row_ok[r] = n < p.n;
    const int64_t row = row_ok[r] ? n : p.n - 1;
    w_row[r] = static_cast<const uint8_t*>(p.qweight) + row * p.qweight_row_stride;
    s_row[r] = row * p.scales_row_stride;
    z_row[r] = p.zeros ? p.zeros + row * p.scales_row_stride : nullptr;
  }
  const T* x[kXTiles];
#pragma unroll
  for (int xt = 0; xt < kXTiles; ++xt) {
    const int64_t row = m_base + 8 * xt + group;
    x[xt] = static_cast<const T*>(p.x) + (row < p.m ? row : p.m - 1) * p.x_row_stride;
  }

  const int64_t chunks = p.k / kK;
  const uint64_t policy = evict_first_policy();
  const int64_t steps = (chunks + 3) / 4;
  constexpr int kUnroll = Shape::kUnroll;
  if constexpr (kFmt == Format::kInt8 && kXTiles == 1) {
    // The warp's first batch of codes asked into L2 while the kernel before may still run: a
    // hint, which reads nothing (the loads after the wait read L2, where that kernel's writes
    // are). int8 at M <= 8 only: 1.00-1.08x on the goal shapes, where the tall shape lost up to
    // 5% and int4 and nf4 up to 24% (H100; bench/NOTES.md "CUDA GEMV", v1.17).
    const int64_t first_chunk = int64_t(warp) * kUnroll * 4;
    if (quad == 0 && first_chunk < chunks) {
      const int64_t end_chunk = min(chunks, first_chunk + kUnroll * 4);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        prefetch_l2(w_row[r] + first_chunk * 16, uint32_t(end_chunk - first_chunk) * 16);
      }
    }
  }
  wait_for_previous_kernel();  // x, and the weights too if that kernel wrote them
  // int8 on 8-row tiles: the mma takes two accumulators in turn, so each waits on the one two
  // back, not the one before (H100, M = 1-8: 1.02-1.10x on 4096x4096, 4096x14336 and
  // 14336x4096, level on 28672x8192; 4-bit lost up to 1.16x with 2 or 4; bench/NOTES.md "CUDA
  // GEMV", v1.20).
  constexpr int kChains = kFmt == Format::kInt8 && kXTiles == 1 ? 2 : 1;
  float acc[kWTiles][kXTiles][kChains][4] = {};

  for (int64_t step0 = int64_t(warp) * kUnroll; step0 < steps; step0 += int64_t(warps) * kUnroll) {
    // Fetch: kUnroll steps of weights (2 rows) and their scales, all loads issued before any use.
    uint4 codes[kUnroll][kRows];
    [[maybe_unused]] float scale[kUnroll][kRows];  // all but kRowScale
    [[maybe_unused]] float zero[kUnroll][kRows];  // int4 only
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = (step0 + u) * 4 + quad;
      const int64_t c_in = c < chunks ? c : chunks - 1;
      const int64_t g = c_in >> chunk_group_shift;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        codes[u][r] = load_weights_16B(w_row[r] + c_in * 16, policy);
        if constexpr (!kRowScale) {
          const bool ok = row_ok[r] && c < chunks;
          scale[u][r] = ok ? load_scale<kDqAbsmax>(p, s_row[r] + g) : 0.0f;
        }
        if constexpr (kFmt == Format::kInt4) {
          zero[u][r] = z_row[r] ? __ldg(z_row[r] + g) : kInt4SymmetricZero;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = (step0 + u) * 4 + quad;
      const int64_t c_in = c < chunks ? c : chunks - 1;
      // x fragments: the same k range of this lane's x rows (L1 hits after the first block).
      // Chunks past K repeat the last one: a zero scale cancels them, or with kRowScale zero x.
      uint4 xv[kXTiles][kK / 8];
#pragma unroll
      for (int xt = 0; xt < kXTiles; ++xt) {
#pragma unroll
        for (int v = 0; v < kK / 8; ++v) {
          xv[xt][v] = !kRowScale || c < chunks ? load_cached_16B(x[xt] + c_in * kK + 8 * v)
                                               : make_uint4(0, 0, 0, 0);
        }
      }
      [[maybe_unused]] T2 s2[kRows];
      // int4: magic + round(z) and -s (z - round(z))
      [[maybe_unused]] T2 magic_zero2[kRows], zs2[kRows];
#pragma unroll
      for (int r = 0; r < kRows && !kRowScale; ++r) {
        s2[r] = Pair<T>::make(scale[u][r], scale[u][r]);
        if constexpr (kFmt == Format::kInt4) {
          int4_group_constants<T>(scale[u][r], zero[u][r], magic_zero2[r], zs2[r]);
        }
      }
      // Dequant + mma, one 32-bit word of codes per row at a time; each x fragment meets the
      // kWTiles weight tiles.
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if constexpr (kFmt == Format::kInt8) {
          uint32_t a[kRows][2];
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            if constexpr (kRowScale) {
              int8_values<T>(word(codes[u][r], j), a[r]);
            } else {
              dequant_int8<T>(word(codes[u][r], j), s2[r], a[r]);
            }
          }
#pragma unroll
          for (int xt = 0; xt < kXTiles; ++xt) {
            const uint32_t x0 = word(xv[xt][j / 2], 2 * (j % 2));
            const uint32_t x1 = word(xv[xt][j / 2], 2 * (j % 2) + 1);
            const uint32_t b[2] = {__byte_perm(x0, x1, 0x5410), __byte_perm(x0, x1, 0x7632)};
#pragma unroll
            for (int wt = 0; wt < kWTiles; ++wt) {
              const uint32_t at[4] = {a[2 * wt][0], a[2 * wt + 1][0], a[2 * wt][1],
                                      a[2 * wt + 1][1]};
              mma_16816<T>(acc[wt][xt][j % kChains], at, b);
            }
          }
        } else {
          uint32_t a[kRows][4];
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            if constexpr (kFmt == Format::kInt4) {
              dequant_int4<T>(word(codes[u][r], j), magic_zero2[r], s2[r], zs2[r], a[r]);
            } else {
              dequant_nf4<T>(word(codes[u][r], j), s2[r], lut, 4 * lane, a[r]);
            }
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int xt = 0; xt < kXTiles; ++xt) {
              uint32_t b[2];
              if constexpr (kFmt == Format::kInt4) {  // slots hold (k_i, k_i+4): pair x to match
                const uint32_t lo = word(xv[xt][j], h), hi = word(xv[xt][j], h + 2);
                b[0] = __byte_perm(lo, hi, 0x5410);
                b[1] = __byte_perm(lo, hi, 0x7632);
              } else {  // nf4 slots hold (k_2i, k_2i+1): x in its natural order
                b[0] = word(xv[xt][j], 2 * h);
                b[1] = word(xv[xt][j], 2 * h + 1);
              }
#pragma unroll
              for (int wt = 0; wt < kWTiles; ++wt) {
                const uint32_t at[4] = {a[2 * wt][2 * h], a[2 * wt + 1][2 * h],
                                        a[2 * wt][2 * h + 1], a[2 * wt + 1][2 * h + 1]};
                mma_16816<T>(acc[wt][xt][0], at, b);
              }
            }
          }
        }
      }
    }
  }

#pragma unroll
  for (int wt = 0; wt < kWTiles; ++wt) {
#pragma unroll
    for (int xt = 0; xt < kXTiles; ++xt) {
#pragma unroll
      for (int c = 1; c < kChains; ++c) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[wt][xt][0][e] += acc[wt][xt][c][e];
      }
    }
  }
  if constexpr (kRowScale) {  // D elements 0, 1 are row group, 2, 3 row group + 8
#pragma unroll
    for (int wt = 0; wt < kWTiles; ++wt) {
      const float row_scale[2] = {
          row_ok[2 * wt] ? __ldg(p.scales + s_row[2 * wt]) : 0.0f,
          row_ok[2 * wt + 1] ? __ldg(p.scales + s_row[2 * wt + 1]) : 0.0f};
#pragma unroll
      for (int xt = 0; xt < kXTiles; ++xt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[wt][xt][0][e] *= row_scale[e / 2];
      }
    }
  }

  // Reduce the warps' D fragments through shared memory, add bias, store.
#pragma unroll
  for (int wt = 0; wt < kWTiles; ++wt) {
#pragma unroll
    for (int xt = 0; xt < kXTiles; ++xt) {
      const float* d = acc[wt][xt][0];
      partial[(wt * kXTiles + xt) * blockDim.x + threadIdx.x] = make_float4(d[0], d[1], d[2], d[3]);
    }
  }
  __syncthreads();
  const float* partial_f = reinterpret_cast<const float*>(partial);
#pragma unroll
  for (int wt = 0; wt < kWTiles; ++wt) {
#pragma unroll
    for (int xt = 0; xt < kXTiles; ++xt) {
      for (int t = threadIdx.x; t < 128; t += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < warps; ++w) {
          sum += partial_f[((wt * kXTiles + xt) * warps + w) * 128 + t];
        }
        // D element t % 4 of lane t / 4: row (lane / 4) + 8 * (element >= 2), column 2 (lane % 4)
        // + element % 2.
        const int l = t / 4, e = t % 4;
        const int64_t n = n_base + 16 * wt + l / 4 + 8 * (e / 2);
        const int64_t m = m_base + 8 * xt + 2 * (l % 4) + e % 2;
        if (n < p.n && m < p.m) {
          if (p.bias) sum += to_float(static_cast<const T*>(p.bias)[n]);
          static_cast<T*>(p.y)[m * p.y_row_stride + n] = from_float<T>(sum);
        }
      }
    }
  }
}

template <Format kFmt, typename T, bool kDqAbsmax, typename Shape>
cudaError_t launch_gemv_shape(const QMatmulParams& p, bool dependent, cudaStream_t stream) {
  constexpr int kK = kChunkK<kFmt>;
  const int64_t steps = (p.k / kK + 3) / 4;
  // Warps split K by batches, but nf4 blocks take all 8: each fills a 32 KiB table first, and on
  // short rows the 2-3 warps of the split made that fill outweigh the dot (H100, fp16, SmolLM2's
  // 192-1536 x 576-1536 layers: 1.20-1.37x faster at M = 1-8; K = 4096 and up unchanged).
  const int warps = kFmt == Format::kNF4
                        ? kWarps
                        : int(std::min<int64_t>(kWarps, (steps + Shape::kUnroll - 1) / Shape::kUnroll));
  const int64_t m_tiles = (p.m + x_tile_rows<Shape>() - 1) / x_tile_rows<Shape>();
  const int64_t blocks = grid_blocks<Shape>(p);
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  constexpr size_t kTableBytes = kFmt == Format::kNF4 ? kNF4TableWords * sizeof(uint32_t) : 0;
  static_assert(Shape::kWTiles * Shape::kXTiles * kWarps * 32 * sizeof(float4) + kTableBytes <=
                    48 * 1024,
                "the partials and the nf4 table must fit the 48 KiB a kernel gets without opt-in "
                "(nf4 on the tall paired shape takes all of it)");
  const size_t smem =
      size_t(Shape::kWTiles) * Shape::kXTiles * warps * 32 * sizeof(float4) + kTableBytes;
  const int shift = p.group_size >= p.k ? 62 : log2_exact(p.group_size / kK);
  return with_row_scale<kFmt>(p, [&](auto row_scale) {
    const auto kernel = gemv_mma_kernel<kFmt, T, kDqAbsmax, Shape, decltype(row_scale)::value>;
    static PerDeviceFlag kernel_waits;
    if (dependent && kernel_waits.get([&] { return waits_for_previous_kernel(kernel); })) {
      return launch_dependent(kernel, unsigned(blocks), warps * 32, smem, stream, p,
                              int(m_tiles), shift);
    }
    kernel<<<unsigned(blocks), warps * 32, smem, stream>>>(p, int(m_tiles), shift);
    return cudaGetLastError();
  });
}

template <Format kFmt, typename T, bool kDqAbsmax>
cudaError_t launch_gemv_mma(const QMatmulParams& p, int sm_count, bool dependent,
                            cudaStream_t stream) {
  if (p.m > 8) {
    // 16-row tiles of x where they still give every SM a block; on smaller grids the 8-row tiles'
    // extra blocks are worth unpacking twice (H100 fp16 M = 16, us tall / 8-row: 4096x4096 int4
    // 10.2 / 13.7, 1024x4096 int4 6.1 / 5.1, 576x1536 int8 4.2 / 3.2). nf4 on short rows takes
    // them anyway: each block fills a 32 KiB table, and halving the blocks saved 8-16% on
    // SmolLM2's 192-1536 x 576-1536 layers (576x576 M = 16: 4.9 / 5.6), where K = 4096 lost
    // (1024x4096: 7.7 / 5.7); measured before the fill took all 8 warps. bench/NOTES.md, "CUDA
    // GEMV", v1.5.
    const int64_t tall_blocks = grid_blocks<GemvTall>(p);
    if (tall_blocks >= sm_count || (kFmt == Format::kNF4 && p.k <= 2048)) {
      // Past one wave of the tall shape: one step at 3 blocks per SM while that fits one wave,
      // the paired shape beyond for 4-bit (H100, M = 9-16, fp16: 6144x4096 1.16-1.41x;
      // 4-bit 1.13-1.42x on 8192-28672 rows; int8 there level or worse but 14336x4096, 1.05x;
      // v1.22).
      const int64_t tall_wide_wave = wave_blocks<GemvTallWide>(sm_count);
      if (tall_blocks > wave_blocks<GemvTall>(sm_count) && tall_blocks <= tall_wide_wave) {
        return launch_gemv_shape<kFmt, T, kDqAbsmax, GemvTallWide>(p, dependent, stream);
      }
      if constexpr (kFmt != Format::kInt8) {
        if (tall_blocks > tall_wide_wave) {
          return launch_gemv_shape<kFmt, T, kDqAbsmax, GemvTallPaired>(p, dependent, stream);
        }
      }
      return launch_gemv_shape<kFmt, T, kDqAbsmax, GemvTall>(p, dependent, stream);
    }
  }
  const int64_t blocks = grid_blocks<GemvDeep>(p);
  const int64_t paired_blocks = grid_blocks<GemvPaired3>(p);  // GemvPaired4's alike
  const int64_t deep_wave = wave_blocks<GemvDeep>(sm_count);
  // Deep where its grid fits in one wave. v1.12 also gave int4 with bf16 x the wide shape on
  // one-wave grids of at least a block per SM; by the ninth session of 24 Nov that cost it
  // 1.21-1.28x (H100 us wide / deep at M = 1: 4096x4096 8.07 / 6.65, 4096x14336 21.28 / 16.65;
  // v1.18).
  if (blocks <= deep_wave) {
    return launch_gemv_shape<kFmt, T, kDqAbsmax, GemvDeep>(p, dependent, stream);
  }
  // Paired on grids of at least 16/3 blocks per SM: nf4 at every M, int4 from 6 rows of x (at 1-4
  // it lost up to 10%). Paired's grid, half as many blocks, takes 3 per SM while it fits in one
  // wave and 4 beyond (H100, M = 1 / 8, nf4 fp16: 12288x4096 1.09 / 1.23x, 14336x4096 1.07 /
  // 1.10x, 28672x8192 1.08 / 1.20x; int4 at M = 8: 1.05-1.18x; v1.21).
  if constexpr (kFmt != Format::kInt8) {
    const bool paired = kFmt == Format::kNF4 || p.m >= 6;
    if (paired && 3 * blocks >= 16 * int64_t(sm_count)) {
      if constexpr (kFmt == Format::kNF4) {  // int4 spills at 64 registers
        if (paired_blocks > wave_blocks<GemvPaired3>(sm_count)) {
          return launch_gemv_shape<kFmt, T, kDqAbsmax, GemvPaired4>(p, dependent, stream);
        }
      }
      return launch_gemv_shape<kFmt, T, kDqAbsmax, GemvPaired3>(p, dependent, stream);
    }
  }
  // Deep also where its grid needs a second wave but no third, once it fills enough of the second
  // that wide's 3 blocks per SM would leave their own second wave nearly empty (H100, M = 1 / 8,
  // fp16 unless said):
  // - nf4, and int4 on rows of 12288 or more: two thirds of deep's second wave (nf4 8192x8192
  //   1.09 / 1.14x, int4 8192x28672 1.12 / 1.20x; but 6144x4096, 1.45 deep waves and one wide,
  //   0.75-0.80x; on shorter rows wide kept int4 up to 8% at M = 1; v1.21);
  // - int8: any grid past one wide wave (8192x8192 1.20 / 1.23x, 7168x4096 1.09 / 1.08x, v1.21;
  //   6400-7024 x 4096 1.04-1.09x fp16 and bf16, v1.23), and per channel on rows of 8192 or more
  //   up to four deep waves (fp16 and bf16: 9216x8192 and 14336-16384 x 8192 1.03-1.11x,
  //   12288-16384 x 14336 1.03-1.06x, 10240x8192 0.99-1.08x, 12288x8192 level; with groups deep
  //   lost up to 14%, 12288x8192 bf16; v1.23).
  const int64_t wide_wave = wave_blocks<GemvWide>(sm_count);
  const bool deep_second_wave = kFmt == Format::kInt8
                                    ? blocks > wide_wave
                                    : (kFmt == Format::kNF4 || p.k >= 12288) &&
                                          3 * blocks >= 5 * deep_wave;
  const bool long_rows_per_channel = kFmt == Format::kInt8 && p.group_size >= p.k && p.k >= 8192;
  if (deep_second_wave && blocks <= (long_rows_per_channel ? 4 : 2) * deep_wave) {
    return launch_gemv_shape<kFmt, T, kDqAbsmax, GemvDeep>(p, dependent, stream);
  }
  // Past deep's two waves, int8 paired while its grid fits in one wave, of 3 blocks per SM or
  // else of 4, on rows shorter than 8192 (H100, M = 1-8, per channel and g128, fp16 and bf16:
  // 9216-12288 x 4096 and 10240x5120 1.01-1.09x at 3 per SM, 13312-16384 x 4096 and 13824x5120
  // 1.01-1.07x at 4; K = 8192 lost up to 3%, 12288x8192; v1.23).
  if constexpr (kFmt == Format::kInt8) {
    if (p.k < 8192) {
      if (paired_blocks <= wave_blocks<GemvPaired3>(sm_count)) {
        return launch_gemv_shape<kFmt, T, kDqAbsmax, GemvPaired3>(p, dependent, stream);
      }
      if (paired_blocks <= wave_blocks<GemvPaired4>(sm_count)) {
        return launch_gemv_shape<kFmt, T, kDqAbsmax, GemvPaired4>(p, dependent, stream);
      }
    }
  }
  return launch_gemv_shape<kFmt, T, kDqAbsmax, GemvWide>(p, dependent, stream);
}

}  // namespace qk::cuda
