// How fast HBM delivers the GEMV's weight loads when nothing is done with them: the ceiling of
// csrc/cuda/gemv_mma.cuh's access pattern, against a plain linear read of the same bytes.
// 14336x4096 int4 codes (29.4 MB) and their g128 scales and zero points (3.7 MB) in 4 copies
// (133 MB, more than L2), each launch reading the next copy; a CUDA graph of 40 launches,
// replayed 15 times, the median printed per variant.
// bench/NOTES.md ("CUDA GEMV") has the H100 figures and what they say.
//
//   nvcc -std=c++17 -O3 -Icsrc -gencode=arch=compute_90a,code=sm_90a \
//        bench/gemv_stream.cu -o /tmp/gemv_stream && /tmp/gemv_stream
//
// Variants (the weight loads are load_weights_16B everywhere, the codes are XOR-folded):
//   linear      a grid-stride read, 4 loads of 16 bytes in flight per thread, 8 blocks per SM;
//   deep, wide  the GEMV's blocks (16 weight rows, 8 warps splitting K), lanes and addresses,
//               4 or 2 steps (2 rows x 16 bytes each) per batch, 2 or 3 blocks per SM (forced
//               by shared memory, as the GEMV's registers do), the partials reduced in shared
//               memory at the end;
//   deep+, wide+  as deep and wide, plus the GEMV's other loads: the g128 scale and zero point
//               of each row and step, and x (one row, fp16) through L1;
//   +s, +x      only the scales and zero points, or only x;
//   +sv         the scales and zero points of a batch's steps as one vector load per row;
//   +ss, +ssxs  the block's scales and zero points (and x) copied to shared memory first by
//               coalesced 16-byte loads, then read from there per step;
//   tiled       deep's blocks and batches, but each warp load reads 512 contiguous bytes (a
//               layout repacked so the block's 32 KiB are read lane-linearly); tiled3 at 3
//               blocks per SM.
//   inline      tiled's loads from a layout that stores each step's 16 rows of scale and zero
//               point (fp16 pairs, 64 bytes) right after the step's 1024 bytes of codes: one
//               8-byte load per lane gives its two rows' pairs, from the DRAM pages the codes
//               come from; inline+ adds x; tiled+ is tiled with deep+'s separate scales and x.
//               Suffix 3: 3 blocks per SM.
//   deep+u, deep+um  deep+'s loads, then the kernel's arithmetic on them: each step's group
//               constants and unpack (dequant_int4, fp16; x's loads are then dead code), then
//               also its mma against x (mma_16816): the real kernel but for its output; um2,
//               um4: the mma into 2 or 4 accumulators in turn; wide+u, wide+um... likewise.
//   tma, tma+   deep's blocks with the codes copied by TMA instead: one producer warp issues,
//               per consumer warp, two 2D boxes (128 bytes x 16 rows, 128-byte swizzle) of the
//               warp's 4 steps into shared memory, counted on the warp's mbarrier; each warp
//               reads its codes from there (rows mapped so the 8 lanes of a phase hit 8 bank
//               groups); tma+ adds deep+'s per-step scales, zero points and x. Suffix: blocks
//               per SM (2-4: the codes no longer live in registers).
//   inline+um   inline+'s loads with deep+um's arithmetic (the pairs converted to the fp32 scale
//               and zero point the kernel starts from); inline3+um at 3 blocks per SM; um4 /
//               um2: 4 or 2 accumulators.
// The real kernel takes about deep+'s time, but cheaper scale loads in it did not gain what
// deep+s against deep+ss promises: the loads alone are not a full model of it (NOTES, v1.13).
// The per-group constants stored beside the codes (inline) did gain in the kernel (NOTES, "The
// scale layouts in the real kernel").
#include <algorithm>
#include <cstdio>
#include <vector>

#include <cuda.h>

#include "cuda/common.cuh"
#include "cuda/tma.cuh"
#include "cuda/unpack.cuh"

namespace {

using namespace qk::cuda;

constexpr int kN = 14336, kK = 4096, kGroup = 128;
constexpr int64_t kRowBytes = kK / 2, kWeightBytes = int64_t(kN) * kRowBytes;
constexpr int kCopies = 4, kLaunchesPerGraph = 40, kReplays = 15, kWarps = 8;

__device__ __forceinline__ uint32_t fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

__device__ __forceinline__ void keep(uint32_t acc, uint32_t* sink) {
  if (acc == 0x9e3779b9u) sink[threadIdx.x] = acc;  // never true for these bytes; keeps the loads
}

__global__ void __launch_bounds__(256) linear_kernel(const uint4* w, int64_t pieces,
                                                     uint32_t* sink) {
  constexpr int kInFlight = 4;
  const uint64_t policy = evict_first_policy();
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  uint32_t acc = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < pieces;
       i += stride * kInFlight) {
    uint4 v[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int64_t j = i + u * stride;
      v[u] = j < pieces ? load_weights_16B(w + j, policy) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) acc ^= fold(v[u]);
  }
  keep(acc, sink);
}

enum class Scales { kNone, kPerStep, kVector, kShared, kInline };
enum class X { kNone, kGlobal, kShared };
enum class Math { kNone, kUnpack, kMma, kMma2, kMma4 };  // what is done with the loaded codes
// kMma: one fp32 accumulator, as the kernel (every mma of a warp's batch waits on the one before);
// kMma2, kMma4: two or four accumulators taken in turn, summed at the end.
// Shared rows padded to 4 mod 32 words: the 8 rows one load reads fall in distinct banks.
constexpr int kGroupsPerRow = kK / kGroup, kSharedRowStride = kGroupsPerRow + 4;
// The inline layout: per block of 16 rows, per step (one g128 group), the codes then the pairs.
constexpr int64_t kInlineStepBytes = 16 * 64 + 16 * 4;
constexpr int64_t kInlineBytes = int64_t(kN / 16) * (kK / kGroup) * kInlineStepBytes;

// kScales, kX: how the scales and zero points, and x, are loaded (none: only the codes). kTiled:
// the batch's bytes read lane-linearly (lane l of warp w takes piece l of each 512-byte run).
template <int kUnroll, Scales kScales, X kX, bool kTiled, Math kMath>
__global__ void __launch_bounds__(256) gemv_pattern_kernel(const uint8_t* w, const float* scales,
                                                           const float* zeros, const uint4* x,
                                                           uint32_t* sink) {
  extern __shared__ uint32_t partial[];  // sized to force the blocks per SM
  float* scales_s = reinterpret_cast<float*>(partial + 256);  // [16][kSharedRowStride]
  float* zeros_s = scales_s + 16 * kSharedRowStride;
  uint4* x_s = reinterpret_cast<uint4*>(zeros_s + 16 * kSharedRowStride);  // [kK / 8]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int group = lane / 4, quad = lane % 4;
  const int64_t n_base = int64_t(blockIdx.x) * 16;
  const uint8_t* block_w =
      kScales == Scales::kInline ? w + blockIdx.x * (kK / kGroup) * kInlineStepBytes
                                 : w + n_base * kRowBytes;
  const uint64_t policy = evict_first_policy();
  constexpr int64_t kChunks = kRowBytes / 16, kSteps = kChunks / 4;
  if constexpr (kScales == Scales::kShared) {  // the block's 16 rows of scales are contiguous
    for (int i = threadIdx.x; i < 2 * 16 * kGroupsPerRow / 4; i += blockDim.x) {
      const int half = i / (16 * kGroupsPerRow / 4), j = i % (16 * kGroupsPerRow / 4);
      const float4 v = __ldg(reinterpret_cast<const float4*>((half ? zeros : scales) +
                                                             n_base * kGroupsPerRow) + j);
      const int row = 4 * j / kGroupsPerRow, g = 4 * j % kGroupsPerRow;
      *reinterpret_cast<float4*>((half ? zeros_s : scales_s) + row * kSharedRowStride + g) = v;
    }
  }
  if constexpr (kX == X::kShared) {
    for (int i = threadIdx.x; i < kK / 8; i += blockDim.x) x_s[i] = load_cached_16B(x + i);
  }
  if constexpr (kScales == Scales::kShared || kX == X::kShared) __syncthreads();
  uint32_t acc = 0;
  float facc = 0.0f;
  constexpr int kChains = kMath == Math::kMma4 ? 4 : kMath == Math::kMma2 ? 2 : 1;
  float dacc[kChains][4] = {};  // the mma's fp32 accumulators
  for (int64_t step0 = warp * kUnroll; step0 < kSteps; step0 += kWarps * kUnroll) {
    uint4 codes[kUnroll][2];
    float scale[kUnroll][2], zero[kUnroll][2];
    uint4 xv[kUnroll][4];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = (step0 + u) * 4 + quad;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t row = group + 8 * r;
        static_assert(kScales != Scales::kInline || kTiled, "the inline layout is tiled");
        const uint8_t* ptr =
            kScales == Scales::kInline ? block_w + (step0 + u) * kInlineStepBytes + r * 512 +
                                             lane * 16
            : kTiled ? block_w + ((step0 + u) * 2 + r) * 512 + lane * 16  // 16 rows x 64 B a step
                     : block_w + row * kRowBytes + c * 16;
        codes[u][r] = load_weights_16B(ptr, policy);
        const int g = c * 32 / kGroup;
        if constexpr (kScales == Scales::kInline) {
          if (r == 0) {  // rows group and group + 8: (scale, zero) fp16 pairs, 8 bytes
            uint2 pairs;
            asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];"
                : "=r"(pairs.x), "=r"(pairs.y)
                : "l"(block_w + (step0 + u) * kInlineStepBytes + 1024 + group * 8));
            if constexpr (kMath == Math::kNone) {
              scale[u][0] = __uint_as_float(pairs.x), zero[u][0] = 1.0f;
              scale[u][1] = __uint_as_float(pairs.y), zero[u][1] = 1.0f;
            } else {  // the pairs' values, for the kernel's arithmetic
              const uint32_t both[2] = {pairs.x, pairs.y};
#pragma unroll
              for (int rr = 0; rr < 2; ++rr) {
                const half2 pair = *reinterpret_cast<const half2*>(&both[rr]);
                scale[u][rr] = __low2float(pair), zero[u][rr] = __high2float(pair);
              }
            }
          }
        } else if constexpr (kScales == Scales::kPerStep) {
          scale[u][r] = __ldg(scales + (n_base + row) * kGroupsPerRow + g);
          zero[u][r] = __ldg(zeros + (n_base + row) * kGroupsPerRow + g);
        } else if constexpr (kScales == Scales::kShared) {
          scale[u][r] = scales_s[row * kSharedRowStride + g];
          zero[u][r] = zeros_s[row * kSharedRowStride + g];
        } else if constexpr (kScales == Scales::kVector) {
          static_assert(kUnroll == 4 || kUnroll == 2, "g128: a batch's groups in one vector");
          if (u == 0) {  // groups step0 .. step0 + kUnroll - 1, aligned
            const int64_t s = (n_base + row) * kGroupsPerRow + g;
            if constexpr (kUnroll == 4) {
              const float4 sv = __ldg(reinterpret_cast<const float4*>(scales + s));
              const float4 zv = __ldg(reinterpret_cast<const float4*>(zeros + s));
              scale[0][r] = sv.x, scale[1][r] = sv.y, scale[2][r] = sv.z, scale[3][r] = sv.w;
              zero[0][r] = zv.x, zero[1][r] = zv.y, zero[2][r] = zv.z, zero[3][r] = zv.w;
            } else {
              const float2 sv = __ldg(reinterpret_cast<const float2*>(scales + s));
              const float2 zv = __ldg(reinterpret_cast<const float2*>(zeros + s));
              scale[0][r] = sv.x, scale[1][r] = sv.y;
              zero[0][r] = zv.x, zero[1][r] = zv.y;
            }
          }
        }
      }
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        if constexpr (kX == X::kGlobal) xv[u][v] = load_cached_16B(x + c * 4 + v);
        if constexpr (kX == X::kShared) xv[u][v] = x_s[c * 4 + v];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if constexpr (kMath != Math::kNone) {  // as gemv_mma_kernel's int4 fp16 path
        static_assert(kScales != Scales::kNone && kX == X::kGlobal, "scales and x loaded");
        half2 magic_zero2[2], zs2[2], s2[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          s2[r] = __floats2half2_rn(scale[u][r], scale[u][r]);
          int4_group_constants<half>(scale[u][r], zero[u][r], magic_zero2[r], zs2[r]);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          uint32_t a0[4], a1[4];
          dequant_int4<half>(word(codes[u][0], j), magic_zero2[0], s2[0], zs2[0], a0);
          dequant_int4<half>(word(codes[u][1], j), magic_zero2[1], s2[1], zs2[1], a1);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t a[4] = {a0[2 * h], a1[2 * h], a0[2 * h + 1], a1[2 * h + 1]};
            if constexpr (kMath != Math::kUnpack) {
              const uint32_t lo = word(xv[u][j], h), hi = word(xv[u][j], h + 2);
              const uint32_t b[2] = {__byte_perm(lo, hi, 0x5410), __byte_perm(lo, hi, 0x7632)};
              mma_16816<half>(dacc[(2 * j + h) % kChains], a, b);
            } else {
              acc ^= a[0] ^ a[1] ^ a[2] ^ a[3];
            }
          }
        }
      } else {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          acc ^= fold(codes[u][r]);
          if constexpr (kScales != Scales::kNone) facc += scale[u][r] * zero[u][r];
        }
        if constexpr (kX != X::kNone) {
#pragma unroll
          for (int v = 0; v < 4; ++v) acc ^= fold(xv[u][v]);
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < kChains; ++c) facc += dacc[c][0] + dacc[c][1] + dacc[c][2] + dacc[c][3];
  acc ^= __float_as_uint(facc);
  partial[threadIdx.x] = acc;  // the GEMV's cross-warp reduction
  __syncthreads();
  if (warp == 0) {
    for (int i = 1; i < kWarps; ++i) acc ^= partial[i * 32 + lane];
    keep(acc, sink);
  }
}

// deep's block with the codes by TMA: warps 0-7 consume, warp 8's first lane produces. Warp w
// takes steps 4 w .. 4 w + 3 (K = 4096: one batch a warp), 256 bytes of each of the 16 rows.
template <bool kOtherLoads>
__global__ void __launch_bounds__(288) gemv_tma_kernel(const __grid_constant__ CUtensorMap codes,
                                                       int copy, const float* scales,
                                                       const float* zeros, const uint4* x,
                                                       uint32_t* sink) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) uint8_t smem[];  // 8 warps x 4 KiB, then 8 mbarriers
  static_assert(kRowBytes / 16 / 4 == kWarps * 4, "one batch of 4 steps a warp");
  constexpr int kWarpBytes = 16 * 256;
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t bars = base + kWarps * kWarpBytes;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t n_base = int64_t(blockIdx.x) * 16;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) mbarrier_init(bars + 8 * w, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  if (warp == kWarps) {
    if (lane == 0) {
      const int row0 = int(copy * kN + n_base);
      for (int w = 0; w < kWarps; ++w) {
        mbarrier_expect_tx(bars + 8 * w, kWarpBytes);
        for (int box = 0; box < 2; ++box) {
          tma_load_2d(base + w * kWarpBytes + box * 2048, &codes, w * 256 + box * 128, row0,
                      bars + 8 * w);
        }
      }
    }
    return;
  }
  const int group = lane / 4, quad = lane % 4;
  uint32_t acc = 0;
  float facc = 0.0f;
  float scale[4][2], zero[4][2];
  uint4 xv[4][4];
#pragma unroll
  for (int u = 0; u < 4; ++u) {  // the other loads first, as the GEMV issues them with the codes
    const int64_t c = (warp * 4 + u) * 4 + quad;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = (group % 2) * 4 + group / 2 + 8 * r;
      if constexpr (kOtherLoads) {
        scale[u][r] = __ldg(scales + (n_base + row) * kGroupsPerRow + c * 32 / kGroup);
        zero[u][r] = __ldg(zeros + (n_base + row) * kGroupsPerRow + c * 32 / kGroup);
      }
    }
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      if constexpr (kOtherLoads) xv[u][v] = load_cached_16B(x + c * 4 + v);
    }
  }
  mbarrier_wait(bars + 8 * warp, 0);
#pragma unroll
  for (int u = 0; u < 4; ++u) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = (group % 2) * 4 + group / 2 + 8 * r;
      const int local = u * 4 + quad, box = local / 8, j = local % 8;
      acc ^= fold(*reinterpret_cast<const uint4*>(smem + warp * kWarpBytes + box * 2048 +
                                                  row * 128 + (j ^ row % 8) * 16));
      if constexpr (kOtherLoads) facc += scale[u][r] * zero[u][r];
    }
    if constexpr (kOtherLoads) {
#pragma unroll
      for (int v = 0; v < 4; ++v) acc ^= fold(xv[u][v]);
    }
  }
  acc ^= __float_as_uint(facc);
  uint32_t* partial = reinterpret_cast<uint32_t*>(smem);  // the codes are read: reuse
  __syncwarp();
  asm volatile("bar.sync 1, 256;" ::: "memory");  // the consumer warps only
  partial[threadIdx.x] = acc;
  asm volatile("bar.sync 1, 256;" ::: "memory");
  if (warp == 0) {
    for (int i = 1; i < kWarps; ++i) acc ^= partial[i * 32 + lane];
    keep(acc, sink);
  }
#else
  (void)codes, (void)copy, (void)scales, (void)zeros, (void)x, (void)sink;
#endif
}

struct Buffers {
  uint8_t *w, *inline_w;
  float *scales, *zeros;
  uint4* x;
  uint32_t* sink;
};

template <typename Launch>
float time_us(Launch launch) {
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
  for (int i = 0; i < kLaunchesPerGraph; ++i) launch(i % kCopies, stream);
  cudaStreamEndCapture(stream, &graph);
  cudaGraphInstantiate(&exec, graph, 0);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> us;
  for (int rep = 0; rep < kReplays + 1; ++rep) {
    cudaEventRecord(start, stream);
    cudaGraphLaunch(exec, stream);
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    if (rep > 0) us.push_back(1000.0f * ms / kLaunchesPerGraph);  // the first replay warms up
  }
  std::sort(us.begin(), us.end());
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  return us[us.size() / 2];
}

void report(const char* name, float us) {
  std::printf("%-10s %8.2f us  %6.0f GB/s (codes)\n", name, us, kWeightBytes / us / 1e3);
}

template <int kUnroll, Scales kScales, X kX, bool kTiled = false, Math kMath = Math::kNone>
void run_pattern(const char* name, const Buffers& b, int blocks_per_sm) {
  auto kernel = gemv_pattern_kernel<kUnroll, kScales, kX, kTiled, kMath>;
  const int smem = (227 * 1024) / blocks_per_sm - 2048;  // the next block would not fit
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  report(name, time_us([&](int copy, cudaStream_t stream) {
           const int64_t scales = copy * int64_t(kN) * kGroupsPerRow;
           const uint8_t* w = kScales == Scales::kInline ? b.inline_w + copy * kInlineBytes
                                                         : b.w + copy * kWeightBytes;
           kernel<<<kN / 16, 256, smem, stream>>>(w, b.scales + scales,
                                                  b.zeros + scales, b.x, b.sink);
         }));
}

template <bool kOtherLoads>
void run_tma(const char* name, const Buffers& b, int blocks_per_sm) {
  CUtensorMap map;  // the 4 copies' codes as one array of 2048-byte rows
  encode_tensor_map_2d(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, b.w, kRowBytes, int64_t(kCopies) * kN,
                       kRowBytes, 128, 16, CU_TENSOR_MAP_SWIZZLE_128B);
  auto kernel = gemv_tma_kernel<kOtherLoads>;
  const int smem = (227 * 1024) / blocks_per_sm - 2048;  // >= 32 KiB + the mbarriers
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  report(name, time_us([&](int copy, cudaStream_t stream) {
           const int64_t scales = copy * int64_t(kN) * kGroupsPerRow;
           kernel<<<kN / 16, 288, smem, stream>>>(map, copy, b.scales + scales, b.zeros + scales,
                                                  b.x, b.sink);
         }));
}

}  // namespace

int main() {
  Buffers b;
  const int64_t n_scales = kCopies * int64_t(kN) * kGroupsPerRow;
  cudaMalloc(&b.w, kCopies * kWeightBytes);
  cudaMalloc(&b.inline_w, kCopies * kInlineBytes);
  cudaMemset(b.inline_w, 0x5a, kCopies * kInlineBytes);
  cudaMalloc(&b.scales, n_scales * sizeof(float));
  cudaMalloc(&b.zeros, n_scales * sizeof(float));
  cudaMalloc(&b.x, kK * 2);
  cudaMalloc(&b.sink, 1024 * sizeof(uint32_t));
  cudaMemset(b.w, 0x5a, kCopies * kWeightBytes);
  cudaMemset(b.scales, 0x3c, n_scales * sizeof(float));
  cudaMemset(b.zeros, 0x3c, n_scales * sizeof(float));
  cudaMemset(b.x, 0x3c, kK * 2);
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  std::printf("%d x %d int4 codes, %.1f MB per launch, %d SMs\n", kN, kK, kWeightBytes / 1e6, sms);

  report("linear", time_us([&](int copy, cudaStream_t stream) {
           linear_kernel<<<sms * 8, 256, 0, stream>>>(
               reinterpret_cast<const uint4*>(b.w + copy * kWeightBytes), kWeightBytes / 16,
               b.sink);
         }));
  using S = Scales;
  run_pattern<4, S::kNone, X::kNone>("deep", b, 2);
  run_pattern<2, S::kNone, X::kNone>("wide", b, 3);
  run_pattern<4, S::kPerStep, X::kGlobal>("deep+", b, 2);
  run_pattern<2, S::kPerStep, X::kGlobal>("wide+", b, 3);
  run_pattern<4, S::kPerStep, X::kNone>("deep+s", b, 2);
  run_pattern<2, S::kPerStep, X::kNone>("wide+s", b, 3);
  run_pattern<4, S::kNone, X::kGlobal>("deep+x", b, 2);
  run_pattern<2, S::kNone, X::kGlobal>("wide+x", b, 3);
  run_pattern<4, S::kVector, X::kGlobal>("deep+sv", b, 2);
  run_pattern<2, S::kVector, X::kGlobal>("wide+sv", b, 3);
  run_pattern<4, S::kShared, X::kGlobal>("deep+ss", b, 2);
  run_pattern<2, S::kShared, X::kGlobal>("wide+ss", b, 3);
  run_pattern<4, S::kShared, X::kShared>("deep+ssxs", b, 2);
  run_pattern<2, S::kShared, X::kShared>("wide+ssxs", b, 3);
  run_pattern<4, S::kNone, X::kNone, true>("tiled", b, 2);
  run_pattern<2, S::kNone, X::kNone, true>("tiled3", b, 3);
  run_pattern<4, S::kPerStep, X::kGlobal, true>("tiled+", b, 2);
  run_pattern<2, S::kPerStep, X::kGlobal, true>("tiled3+", b, 3);
  run_pattern<4, S::kInline, X::kNone, true>("inline", b, 2);
  run_pattern<2, S::kInline, X::kNone, true>("inline3", b, 3);
  run_pattern<4, S::kInline, X::kGlobal, true>("inline+", b, 2);
  run_pattern<2, S::kInline, X::kGlobal, true>("inline3+", b, 3);
  run_pattern<4, S::kPerStep, X::kGlobal, false, Math::kUnpack>("deep+u", b, 2);
  run_pattern<4, S::kPerStep, X::kGlobal, false, Math::kMma>("deep+um", b, 2);
  run_pattern<2, S::kPerStep, X::kGlobal, false, Math::kUnpack>("wide+u", b, 3);
  run_pattern<2, S::kPerStep, X::kGlobal, false, Math::kMma>("wide+um", b, 3);
  run_pattern<4, S::kPerStep, X::kGlobal, false, Math::kMma2>("deep+um2", b, 2);
  run_pattern<4, S::kPerStep, X::kGlobal, false, Math::kMma4>("deep+um4", b, 2);
  run_pattern<2, S::kPerStep, X::kGlobal, false, Math::kMma2>("wide+um2", b, 3);
  run_pattern<2, S::kPerStep, X::kGlobal, false, Math::kMma4>("wide+um4", b, 3);
  run_pattern<4, S::kVector, X::kGlobal, false, Math::kMma>("deep+svum", b, 2);
  run_pattern<2, S::kVector, X::kGlobal, false, Math::kMma>("wide+svum", b, 3);
  run_pattern<4, S::kShared, X::kGlobal, false, Math::kMma>("deep+ssum", b, 2);
  run_pattern<2, S::kShared, X::kGlobal, false, Math::kMma>("wide+ssum", b, 3);
  run_pattern<4, S::kPerStep, X::kGlobal, true, Math::kMma>("tiled+um", b, 2);
  run_pattern<2, S::kPerStep, X::kGlobal, true, Math::kMma>("tiled3+um", b, 3);
  run_pattern<4, S::kInline, X::kGlobal, true, Math::kMma>("inline+um", b, 2);
  run_pattern<2, S::kInline, X::kGlobal, true, Math::kMma>("inline3+um", b, 3);
  run_pattern<4, S::kInline, X::kGlobal, true, Math::kMma4>("inline+um4", b, 2);
  run_pattern<2, S::kInline, X::kGlobal, true, Math::kMma2>("inline3+um2", b, 3);
  run_tma<false>("tma2", b, 2);
  run_tma<false>("tma3", b, 3);
  run_tma<false>("tma4", b, 4);
  run_tma<true>("tma+2", b, 2);
  run_tma<true>("tma+3", b, 3);
  run_tma<true>("tma+4", b, 4);
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    std::printf("CUDA error: %s\n", cudaGetErrorString(err));
    return 1;
  }
  return 0;
}
