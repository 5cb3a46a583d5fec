// Device helpers shared by the CUDA kernels: activation-dtype traits, scalar dequantization for
// the generic paths, and the few PTX instructions the fast GEMV needs. Torch-free.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "../core/formats.h"
#include "../core/qmatmul.h"

namespace qk::cuda {

// The NF4 table in constant memory, initialised from the one copy in formats.h. `static`: each
// translation unit keeps its own, so no relocatable device code is needed.
static __constant__ float kNF4Constant[16] = {
    kNF4Table[0],  kNF4Table[1],  kNF4Table[2],  kNF4Table[3],  kNF4Table[4],  kNF4Table[5],
    kNF4Table[6],  kNF4Table[7],  kNF4Table[8],  kNF4Table[9],  kNF4Table[10], kNF4Table[11],
    kNF4Table[12], kNF4Table[13], kNF4Table[14], kNF4Table[15]};

// --- activation dtypes ----------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<half>(half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ half from_float<half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// --- scalar dequantization (generic paths) --------------------------------------------------

// The code of weight k of a packed row, as the float the group scale multiplies (int4 before
// its zero point is subtracted).
template <Format kFmt>
__device__ __forceinline__ float code_value(const uint8_t* row, int64_t k) {
  if constexpr (kFmt == Format::kInt8) {
    return float(static_cast<int8_t>(row[k]));
  } else {
    const uint8_t byte = row[k >> 1];
    const int nibble = (k & 1) ? (byte >> kNibbleBitsHigh) : ((byte >> kNibbleBitsLow) & 0xf);
    return kFmt == Format::kNF4 ? kNF4Constant[nibble] : float(nibble);
  }
}

// w = scale * (code - zero) with zero = 0 for int8 / nf4, zeros[] or 8 (symmetric) for int4.
template <Format kFmt>
__device__ __forceinline__ float zero_point(const float* zeros, int64_t index) {
  if constexpr (kFmt == Format::kInt4) {
    return zeros ? zeros[index] : kInt4SymmetricZero;
  } else {
    return 0.0f;
  }
}

// The group scale at flat index n * p.scales_row_stride + g: fp32 as stored, or (kDqAbsmax, nf4)
// decoded from its 8-bit code and its block's scale and offset (p.absmax_dq; row stride G).
template <bool kDqAbsmax>
__device__ __forceinline__ float load_scale(const QMatmulParams& p, int64_t index) {
  if constexpr (kDqAbsmax) {
    const int64_t block = index / kDoubleQuantBlock;
    return decode_absmax(__ldg(p.absmax_dq.codes + index), __ldg(p.absmax_dq.scales + block),
                         __ldg(p.absmax_dq.offsets + block));
  } else {
    return __ldg(p.scales + index);
  }
}

// --- PTX for the fast GEMV --------------------------------------------------------------------

// An L2 cache policy that marks lines evict-first (created once per thread, used by every
// weight load below).
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

// Asks L2 to fetch [ptr, ptr + bytes) from memory (16-byte aligned, bytes a multiple of 16): a
// hint that returns at once and brings nothing into registers or L1. sm_90; nothing before.
__device__ __forceinline__ void prefetch_l2(const void* ptr, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(ptr), "r"(bytes) : "memory");
#endif
}

// 16 bytes of weights, each read exactly once per call: skip L1 and mark the lines evict-first
// in L2 so that x and the scales, which every block re-reads, stay cached. A miss fills the whole
// 128-byte line (L2::128B), whose other half the warp's next step reads (H100, M = 1 fp16: int8
// 1.03-1.07x, int4 0.97-1.04x, nf4 0.98-1.02x; bench/NOTES.md "CUDA GEMV", v1.8).
__device__ __forceinline__ uint4 load_weights_16B(const void* ptr, uint64_t policy) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::cache_hint.L2::128B.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(ptr), "l"(policy));
  return v;
}

// 16 bytes of activations: read by every block, so through the read-only path and kept in L1.
__device__ __forceinline__ uint4 load_cached_16B(const void* ptr) {
  return __ldg(static_cast<const uint4*>(ptr));
}

// Raises kKernel's dynamic shared-memory limit to kBytes (above 48 KiB a kernel must opt in), once
// per device: the attribute is the device's, set for the process. Not a stream operation, so CUDA
// graph capture is unaffected; set on every call it cost ~1.5 us of host time a matmul (H100
// host, torch.profiler, bench/NOTES.md "Runs of the 24 Nov sixth session").
template <auto kKernel, int kBytes>
cudaError_t allow_dynamic_smem() {
  static std::atomic<uint64_t> devices_done{0};  // bit d: set on device d (d < 64)
  int device = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error != cudaSuccess) return error;
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (devices_done.load(std::memory_order_relaxed) & bit) return cudaSuccess;
  error = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
  if (error == cudaSuccess) devices_done.fetch_or(bit, std::memory_order_relaxed);
  return error;
}

// launch(std::true_type{}) for int8 weights with one scale per row, whose kernels (kRowScale)
// take the exact codes and scale the fp32 sums once (bench/NOTES.md "CUDA GEMV" v1.11, "CUDA
// GEMM" v6.3); launch(std::false_type{}) otherwise. Only int8 instantiates the kRowScale kernels.
template <Format kFmt, typename Launch>
cudaError_t with_row_scale(const QMatmulParams& p, Launch&& launch) {
  if constexpr (kFmt == Format::kInt8) {
    if (p.group_size >= p.k) return launch(std::true_type{});
  }
  return launch(std::false_type{});
}

// --- programmatic dependent launch (sm_90+; no-ops before) -----------------------------------

// A kernel launched by launch_dependent may start while the kernel before it in the stream still
// runs; it calls this before it reads what that kernel writes. Returns at once in a kernel
// launched the ordinary way.
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel in the stream, if launched by launch_dependent, start now (its
// wait_for_previous_kernel still waits for this kernel to finish).
__device__ __forceinline__ void allow_next_kernel_to_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Whether kernel, as loaded for the current GPU, was compiled from sm_90+ code, so that its
// wait_for_previous_kernel really waits. A build without sm_90 runs an H100 from older SASS or
// PTX, where the wait compiles to nothing: such a kernel must not be launched by launch_dependent.
template <typename... Params>
bool waits_for_previous_kernel(void (*kernel)(Params...)) {
  cudaFuncAttributes attributes{};
  return cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess &&
         attributes.ptxVersion >= 90;
}

// A yes / no fact about one kernel on each GPU, found by `ask` at its first launch there (a
// cudaFuncGetAttributes on every launch would cost host time; GPUs of one process may differ).
class PerDeviceFlag {
 public:
  template <typename Ask>
  bool get(Ask&& ask) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
      return false;
    }
    int8_t known = flags_[device].load(std::memory_order_relaxed);
    if (known == 0) {
      known = ask() ? 1 : -1;
      flags_[device].store(known, std::memory_order_relaxed);
    }
    return known > 0;
  }

 private:
  static constexpr int kMaxDevices = 64;
  std::atomic<int8_t> flags_[kMaxDevices] = {};  // 0: not asked yet
};

// kernel<<<grid, block, smem, stream>>>(args...), allowed to start before the previous kernel in
// the stream has finished (programmatic dependent launch; CUDA graphs keep it as a programmatic
// edge). Its launch and prologue overlap the previous kernel's tail instead of following it.
// A Hopper (sm_90) feature: the callers use it for the kernels of the Hopper GEMM, and for the
// tensor-core GEMV where waits_for_previous_kernel holds.
template <typename... Params, typename... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// D = A * B + D on the tensor cores, m16n8k16, fp32 accumulators. A: 16 weight rows x 16 k
// (4 registers of 2 x T), B: 16 k x 8 rows of x (2 registers), D: 4 floats per lane.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                          const uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void mma_16816<half>(float (&d)[4], const uint32_t (&a)[4],
                                                const uint32_t (&b)[2]) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         const uint32_t (&b)[2]) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

}  // namespace qk::cuda
