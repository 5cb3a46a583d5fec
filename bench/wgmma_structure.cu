// What the Hopper GEMM's main loop (csrc/cuda/gemm_wgmma.cuh, 128 weight rows x 128 rows of x
// per block) costs piece by piece, without its epilogue or real data: 132 blocks of 2
// warpgroups run 2000 stages of 128 k each, and the time per stage is printed for each variant.
// bench/NOTES.md ("GEMM v6", "GEMM v8") has the H100 figures and what they say.
//
//   nvcc -std=c++17 -O3 -Icsrc -gencode=arch=compute_90a,code=sm_90a \
//        bench/wgmma_structure.cu -o /tmp/wgmma_structure && /tmp/wgmma_structure
//
// Variants, each adding to the one before unless said:
//   wgmma     2 x m64n64k16 per k-step with fixed A fragments (the tensor cores alone);
//   unpack    the int4 codes of the stage read from shared memory and unpacked (unpack.cuh);
//   scales    the scales and zero points loaded from global memory two stages ahead;
//   copies    x (32 KiB, L2-resident) and codes (8 KiB, streamed from HBM) copied by cp.async
//             two stages ahead, a __syncthreads per stage (the kernel's loop up to v6);
//   own       as copies, but each thread waits only for its own copies and there is no
//             __syncthreads: the data a warp reads may be stale, so only its time is meaningful.
//   tma       as scales, with x and the codes copied by a producer warpgroup: one thread issues
//             the stage's three TMA copies (x in the 128-byte swizzle, the codes) into a ring of
//             kTmaStages slots with full / empty mbarriers; the two consumer warpgroups raise
//             their register limit with setmaxnreg and never meet at a __syncthreads (the
//             kernel's loop since v8, with 4 slots);
//   tma-own   as tma, but the consumers wait for nothing (stale data, time only): what the ring
//             costs beyond the copies themselves.
#include <cuda.h>

#include <cstdio>

#include "cuda/gemm_wgmma.cuh"

namespace {

using namespace qk::cuda;
using T = half;
using T2 = Pair<T>::T2;

enum class Variant { kWgmma, kUnpack, kScales, kCopies, kOwn };

constexpr int kStages = 4, kXStage = 32768, kWStage = 8192;
constexpr size_t kXBytes = size_t(8) << 20, kWBytes = size_t(256) << 20, kScaleFloats = 1 << 22;

// The scales and zero points of this lane's 2 weight rows for stage `it` (32 groups a row).
__device__ __forceinline__ void load_lane_scales(const float* scales, int it, int warp, int group,
                                                 float (&scale)[2], float (&zero)[2]) {
  for (int r = 0; r < 2; ++r) {
    const size_t index = (size_t(blockIdx.x) * 128 + 16 * warp + group + 8 * r) * 32 + it % 32;
    scale[r] = __ldg(scales + index);
    zero[r] = __ldg(scales + kScaleFloats / 2 + index);
  }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// cp.async writes shared memory in the generic proxy and wgmma reads it in the async proxy: the
// writes need this fence (then a barrier) before a wgmma may read them (PTX ISA, memory
// consistency model: proxies). The kernel's TMA copies write in the async proxy and need none.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// The int4 codes of this lane's 2 weight rows of a stage (64 bytes a row in shared memory),
// unpacked into the A fragments of the stage's 8 k-steps (gemm_wgmma.cuh's compute).
__device__ __forceinline__ void unpack_stage(const uint8_t* w_stage, int warp, int group,
                                             int quad, const T2 (&magic_zero2)[2],
                                             const T2 (&s2)[2], const T2 (&zs2)[2],
                                             uint32_t (&a)[8][4]) {
  uint4 codes[2];
  for (int r = 0; r < 2; ++r) {
    codes[r] =
        *reinterpret_cast<const uint4*>(w_stage + (16 * warp + group + 8 * r) * 64 + quad * 16);
  }
#pragma unroll
  for (int cc = 0; cc < 4; ++cc) {
    uint32_t unpacked[2][4];
    for (int r = 0; r < 2; ++r) {
      dequant_int4<T>(word(codes[r], cc), magic_zero2[r], s2[r], zs2[r], unpacked[r]);
    }
    for (int h = 0; h < 2; ++h) {
      a[2 * cc + h][0] = unpacked[0][2 * h];
      a[2 * cc + h][1] = unpacked[1][2 * h];
      a[2 * cc + h][2] = unpacked[0][2 * h + 1];
      a[2 * cc + h][3] = unpacked[1][2 * h + 1];
    }
  }
}

// The stage's 16 wgmmas (2 x m64n64k16 per k-step against the 128 rows of x of the swizzled
// stage at stage_desc), committed as one group; then waits for the group before it, holding
// its A fragments.
__device__ __forceinline__ void mma_stage(uint64_t stage_desc, const uint32_t (&a_now)[8][4],
                                          const uint32_t (&a_before)[8][4], float (&acc)[2][32]) {
  wgmma_fence();
#pragma unroll
  for (int step = 0; step < 8; ++step) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint32_t offset = (step / 4) * 16384 + i * 64 * 128 + (step % 4) * 32;
      wgmma_m64k16<T, 64>(acc[i], a_now[step], stage_desc + (offset >> 4));
    }
  }
  wgmma_commit();
  wgmma_wait_1_holding(a_before);
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <Variant V>
__global__ void __launch_bounds__(256, 1)
    structure_kernel(int stages, const uint8_t* x_src, const uint8_t* w_src, const float* scales,
                     float* sink) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr bool kUnpack = V != Variant::kWgmma, kScales = V >= Variant::kScales;
  constexpr bool kCopies = V >= Variant::kCopies, kBarrier = V == Variant::kCopies;
  extern __shared__ __align__(1024) uint8_t smem[];
  uint8_t* w_smem = smem + kStages * kXStage;
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int tid = threadIdx.x, warp = tid / 32, group = tid % 32 / 4, quad = tid % 4;
  for (int i = tid; i < kStages * kWStage / 4; i += 256) {
    reinterpret_cast<uint32_t*>(w_smem)[i] = 0x12345678u * i;
  }
  __syncthreads();

  // x: 8 blocks of rows share 1 MiB each (as M / 128 blocks of x rows would); codes stream.
  auto fetch = [&](int it) {
    const int slot = it % kStages;
    const uint8_t* xs = x_src + (size_t(blockIdx.x % 8) * 1024 + it % 32 * 32) * 1024;
    for (int j = 0; j < 8; ++j) {
      cp_async_16B(smem + slot * kXStage + (j * 256 + tid) * 16, xs + (j * 256 + tid) * 16, true);
    }
    const uint8_t* ws = w_src + (size_t(blockIdx.x) * 2048 + it % 2048) * kWStage % kWBytes;
    for (int j = 0; j < 2; ++j) {
      cp_async_16B(w_smem + slot * kWStage + (j * 256 + tid) * 16, ws + (j * 256 + tid) * 16,
                   true);
    }
  };
  float scale[2][2], zero[2][2];
  auto load_scales = [&](int it, int parity) {
    load_lane_scales(scales, it, warp, group, scale[parity], zero[parity]);
  };

  const uint64_t x_desc = wgmma_desc_sw128(base);
  float acc[2][32] = {};
  uint32_t a[2][8][4];
  T2 magic_zero2[2], zs2[2], s2[2];
  for (int r = 0; r < 2; ++r) {
    int4_group_constants<T>(0.01f, 7.5f, magic_zero2[r], zs2[r]);
    s2[r] = Pair<T>::make(0.01f, 0.01f);
  }
  if (kCopies) {
    for (int s = 0; s < 2; ++s) {
      fetch(s);
      cp_async_commit();
    }
  }
  if (kScales) {
    load_scales(0, 0);
    load_scales(1, 1);
  }
  auto stage = [&](int it, uint32_t(&a_now)[8][4], uint32_t(&a_before)[8][4]) {
    const int slot = it % kStages, parity = it % 2;
    if (kCopies) {
      cp_async_wait<1>();
      fence_proxy_async_shared();
      if (kBarrier) __syncthreads();
      fetch(it + 2);
      cp_async_commit();
    }
    if (kScales) {
      for (int r = 0; r < 2; ++r) {
        int4_group_constants<T>(scale[parity][r], zero[parity][r], magic_zero2[r], zs2[r]);
        s2[r] = Pair<T>::make(scale[parity][r], scale[parity][r]);
      }
    }
    if (kUnpack) {
      unpack_stage(w_smem + slot * kWStage, warp, group, quad, magic_zero2, s2, zs2, a_now);
    } else {
      for (int s = 0; s < 8; ++s) {
        for (int j = 0; j < 4; ++j) a_now[s][j] = 0x3c003c00u ^ parity;
      }
    }
    mma_stage(x_desc + uint32_t(slot * kXStage >> 4), a_now, a_before, acc);
    if (kScales) load_scales(it + 2, parity);
  };
  for (int it = 0; it < stages; it += 2) {
    stage(it, a[0], a[1]);
    stage(it + 1, a[1], a[0]);
  }
  wgmma_wait<0>();
  float total = 0.0f;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 32; ++j) total += acc[i][j];
  }
  if (total == 123.0f) sink[tid] = total;  // keeps the work
#else
  (void)stages, (void)x_src, (void)w_src, (void)scales, (void)sink;
#endif
}

// Runs launch() once to warm up, then times it and prints the time per stage (132 blocks of
// 128 x 128 x 128 multiply-adds a stage).
template <typename Launch>
void time_stages(const char* name, int stages, Launch launch) {
  launch();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start);
  launch();
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float ms = 0.0f;
  cudaEventElapsedTime(&ms, start, stop);
  int clock_khz = 0;
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0);
  const double flop = 2.0 * 132 * stages * 128.0 * 128 * 128;
  std::printf("%-8s %7.3f ms  %6.1f TFLOP/s  %5.0f cycles per stage at %.2f GHz  (%s)\n", name, ms,
              flop / ms / 1e9, ms * 1e-3 * clock_khz * 1e3 / stages, clock_khz / 1e6,
              cudaGetErrorString(cudaGetLastError()));
}

template <Variant V>
void run(const char* name, const uint8_t* x_src, const uint8_t* w_src, const float* scales,
         float* sink) {
  constexpr int kSmem = kStages * (kXStage + kWStage), kStagesRun = 2000;
  const auto kernel = structure_kernel<V>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  time_stages(name, kStagesRun,
              [&] { kernel<<<132, 256, kSmem>>>(kStagesRun, x_src, w_src, scales, sink); });
}

// --- the warp-specialized variant (the mbarrier, TMA and setmaxnreg helpers of gemm_wgmma.cuh)
constexpr int kTmaStages = 5, kTmaThreads = 384;

template <bool kWait>
__global__ void __launch_bounds__(kTmaThreads, 1)
    ws_kernel(int stages, const __grid_constant__ CUtensorMap x_map,
              const __grid_constant__ CUtensorMap w_map, const float* scales, float* sink) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) uint8_t smem[];
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t x_base = (base + 1023) / 1024 * 1024;  // the swizzle repeats every 1024 bytes
  const uint32_t w_base = x_base + kTmaStages * kXStage;
  const uint32_t bars = w_base + kTmaStages * kWStage;  // full[s] at 8 s, empty[s] after them
  uint8_t* w_smem = smem + (w_base - base);
  auto full = [&](int s) { return bars + 8 * s; };
  auto empty = [&](int s) { return bars + 8 * (kTmaStages + s); };
  if (threadIdx.x == 0) {
    for (int s = 0; s < kTmaStages; ++s) {
      mbarrier_init(full(s), 1);
      mbarrier_init(empty(s), 8);  // one arrival per consumer warp
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {  // producer warpgroup
    setmaxnreg_dec<40>();
    if (threadIdx.x == 0) {
      for (int it = 0; it < stages; ++it) {
        const int slot = it % kTmaStages;
        mbarrier_wait(empty(slot), (it / kTmaStages + 1) % 2);
        mbarrier_expect_tx(full(slot), kXStage + kWStage);
        const int x_row = blockIdx.x % 8 * 128, x_k = it % 32 * 128;
        tma_load_2d(x_base + slot * kXStage, &x_map, x_k, x_row, full(slot));
        tma_load_2d(x_base + slot * kXStage + kXStage / 2, &x_map, x_k + 64, x_row, full(slot));
        const int w_row = int((size_t(blockIdx.x) * 2048 + it % 2048) * 128 % (kWBytes / 64));
        tma_load_2d(w_base + slot * kWStage, &w_map, 0, w_row, full(slot));
      }
    }
    return;
  }
  setmaxnreg_inc<232>();
  const int tid = threadIdx.x - 128, warp = tid / 32, lane = tid % 32;
  const int group = lane / 4, quad = lane % 4;
  float scale[2][2], zero[2][2];
  auto load_scales = [&](int it, int parity) {
    load_lane_scales(scales, it, warp, group, scale[parity], zero[parity]);
  };
  const uint64_t x_desc = wgmma_desc_sw128(x_base);
  float acc[2][32] = {};
  uint32_t a[2][8][4];
  T2 magic_zero2[2], zs2[2], s2[2];
  load_scales(0, 0);
  load_scales(1, 1);
  auto stage = [&](int it, uint32_t(&a_now)[8][4], uint32_t(&a_before)[8][4]) {
    const int slot = it % kTmaStages, parity = it % 2;
    if (kWait) mbarrier_wait(full(slot), it / kTmaStages % 2);
    for (int r = 0; r < 2; ++r) {
      int4_group_constants<T>(scale[parity][r], zero[parity][r], magic_zero2[r], zs2[r]);
      s2[r] = Pair<T>::make(scale[parity][r], scale[parity][r]);
    }
    unpack_stage(w_smem + slot * kWStage, warp, group, quad, magic_zero2, s2, zs2, a_now);
    // stage it - 1 is done after this: its slot goes back to the producer
    mma_stage(x_desc + uint32_t(slot * kXStage >> 4), a_now, a_before, acc);
    if (it > 0 && lane == 0) mbarrier_arrive(empty((it - 1) % kTmaStages));
    load_scales(it + 2, parity);
  };
  for (int it = 0; it < stages; it += 2) {
    stage(it, a[0], a[1]);
    stage(it + 1, a[1], a[0]);
  }
  wgmma_wait<0>();
  float total = 0.0f;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 32; ++j) total += acc[i][j];
  }
  if (total == 123.0f) sink[tid] = total;
#else
  (void)stages, (void)x_map, (void)w_map, (void)scales, (void)sink;
#endif
}

template <bool kWait>
void run_ws(const char* name, uint8_t* x_src, uint8_t* w_src, const float* scales, float* sink) {
  constexpr int kSmem = 1024 + kTmaStages * (kXStage + kWStage) + 16 * kTmaStages;
  constexpr int kStagesRun = 2000;
  // x: 1024 rows of 4096 halves, boxes of 64 k x 128 rows; the codes: rows of 64 bytes, 128 a box.
  CUtensorMap x_map, w_map;
  encode_tensor_map_2d(&x_map, CU_TENSOR_MAP_DATA_TYPE_UINT16, x_src, 4096, 1024, 4096 * 2, 64, 128,
                       CU_TENSOR_MAP_SWIZZLE_128B);
  encode_tensor_map_2d(&w_map, CU_TENSOR_MAP_DATA_TYPE_UINT8, w_src, 64, kWBytes / 64, 64, 64, 128,
                       CU_TENSOR_MAP_SWIZZLE_NONE);
  const auto kernel = ws_kernel<kWait>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  time_stages(name, kStagesRun,
              [&] { kernel<<<132, kTmaThreads, kSmem>>>(kStagesRun, x_map, w_map, scales, sink); });
}

}  // namespace

int main() {
  uint8_t *x_src, *w_src;
  float *scales, *sink;
  cudaMalloc(&x_src, kXBytes);
  cudaMalloc(&w_src, kWBytes);
  cudaMalloc(&scales, kScaleFloats * sizeof(float));
  cudaMalloc(&sink, 256 * sizeof(float));
  cudaMemset(x_src, 0, kXBytes);
  cudaMemset(w_src, 0x11, kWBytes);
  cudaMemset(scales, 0, kScaleFloats * sizeof(float));
  run<Variant::kWgmma>("wgmma", x_src, w_src, scales, sink);
  run<Variant::kUnpack>("unpack", x_src, w_src, scales, sink);
  run<Variant::kScales>("scales", x_src, w_src, scales, sink);
  run<Variant::kCopies>("copies", x_src, w_src, scales, sink);
  run<Variant::kOwn>("own", x_src, w_src, scales, sink);
  run_ws<true>("tma", x_src, w_src, scales, sink);
  run_ws<false>("tma-own", x_src, w_src, scales, sink);
  return 0;
}
