// What the Hopper GEMM's main loop (csrc/cuda/gemm_wgmma.cuh, 128 weight rows x 128 rows of x
// per block) costs piece by piece, without its epilogue or real data: 132 blocks of 2
// warpgroups run 2000 stages of 128 k each, and the time per stage is printed for each variant.
// bench/NOTES.md ("GEMM v6") has the H100 figures and what they say.
//
//   nvcc -std=c++17 -O3 -Icsrc -gencode=arch=compute_90a,code=sm_90a \
//        bench/wgmma_structure.cu -o /tmp/wgmma_structure && /tmp/wgmma_structure
//
// Variants, each adding to the one before unless said:
//   wgmma     2 x m64n64k16 per k-step with fixed A fragments (the tensor cores alone);
//   unpack    the int4 codes of the stage read from shared memory and unpacked (unpack.cuh);
//   scales    the scales and zero points loaded from global memory two stages ahead;
//   copies    x (32 KiB, L2-resident) and codes (8 KiB, streamed from HBM) copied by cp.async
//             two stages ahead, a __syncthreads per stage (the kernel's loop);
//   own       as copies, but each thread waits only for its own copies and there is no
//             __syncthreads: the data a warp reads may be stale, so only its time is meaningful.
#include <cstdio>

#include "cuda/gemm_wgmma.cuh"

namespace {

using namespace qk::cuda;
using T = half;
using T2 = Pair<T>::T2;

enum class Variant { kWgmma, kUnpack, kScales, kCopies, kOwn };

constexpr int kStages = 4, kXStage = 32768, kWStage = 8192;
constexpr size_t kXBytes = size_t(8) << 20, kWBytes = size_t(256) << 20, kScaleFloats = 1 << 22;

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
    for (int r = 0; r < 2; ++r) {
      const size_t index = (size_t(blockIdx.x) * 128 + 16 * warp + group + 8 * r) * 32 + it % 32;
      scale[parity][r] = __ldg(scales + index);
      zero[parity][r] = __ldg(scales + kScaleFloats / 2 + index);
    }
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
      uint4 codes[2];
      for (int r = 0; r < 2; ++r) {
        codes[r] = *reinterpret_cast<const uint4*>(w_smem + slot * kWStage +
                                                   (16 * warp + group + 8 * r) * 64 + quad * 16);
      }
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        uint32_t unpacked[2][4];
        for (int r = 0; r < 2; ++r) {
          dequant_int4<T>(word(codes[r], cc), magic_zero2[r], s2[r], zs2[r], unpacked[r]);
        }
        for (int h = 0; h < 2; ++h) {
          a_now[2 * cc + h][0] = unpacked[0][2 * h];
          a_now[2 * cc + h][1] = unpacked[1][2 * h];
          a_now[2 * cc + h][2] = unpacked[0][2 * h + 1];
          a_now[2 * cc + h][3] = unpacked[1][2 * h + 1];
        }
      }
    } else {
      for (int s = 0; s < 8; ++s) {
        for (int j = 0; j < 4; ++j) a_now[s][j] = 0x3c003c00u ^ parity;
      }
    }
    const uint64_t stage_desc = x_desc + uint32_t(slot * kXStage >> 4);
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

template <Variant V>
void run(const char* name, const uint8_t* x_src, const uint8_t* w_src, const float* scales,
         float* sink) {
  constexpr int kSmem = kStages * (kXStage + kWStage), kStagesRun = 2000;
  const auto kernel = structure_kernel<V>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  kernel<<<132, 256, kSmem>>>(kStagesRun, x_src, w_src, scales, sink);  // warm-up
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start);
  kernel<<<132, 256, kSmem>>>(kStagesRun, x_src, w_src, scales, sink);
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float ms = 0.0f;
  cudaEventElapsedTime(&ms, start, stop);
  int clock_khz = 0;
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0);
  const double flop = 2.0 * 132 * kStagesRun * 128.0 * 128 * 128;
  std::printf("%-8s %7.3f ms  %6.1f TFLOP/s  %5.0f cycles per stage at %.2f GHz  (%s)\n", name, ms,
              flop / ms / 1e9, ms * 1e-3 * clock_khz * 1e3 / kStagesRun, clock_khz / 1e6,
              cudaGetErrorString(cudaGetLastError()));
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
  return 0;
}
