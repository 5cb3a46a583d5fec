// Hopper's tensor memory accelerator (TMA) and the mbarriers that count its copies: the PTX
// helpers and the host-side tensor-map encoder of the kernels fed this way (the Hopper GEMM,
// gemm_wgmma.cuh, and the microbenchmarks bench/wgmma_structure.cu and bench/gemv_stream.cu).
// The device helpers are sm_90 PTX (setmaxnreg sm_90a) and compiled only for sm_90a.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace qk::cuda {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// mbarriers (PTX ISA, "mbarrier"): the ring's full and empty flags, in shared memory.
__device__ __forceinline__ void mbarrier_init(uint32_t bar, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(arrivals) : "memory");
}
// Makes the initialised mbarriers visible to the async proxy (TMA) before a barrier.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// The producer's arrival: the phase completes once `bytes` more have landed by TMA.
__device__ __forceinline__ void mbarrier_expect_tx(uint32_t bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Waits until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, int parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n\t.reg .pred p;\n\t"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
        "selp.u32 %0, 1, 0, p;\n\t}"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  }
}
// One box of a 2D tensor map (coordinates innermost first) into shared memory by TMA, counted
// on the mbarrier `bar`; parts of the box outside the tensor are zero.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                            uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// Hands registers of this warpgroup back to the block's pool, or takes them from it: the producer
// needs few, the consumers' accumulators and fragments many (PTX ISA, setmaxnreg).
template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegisters));
}
// Orders this thread's generic-proxy shared-memory accesses after its async-proxy ones (TMA
// writes, wgmma reads), before the memory is reused for something else.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// A 2D tensor map (the TMA's description of a row-major array: `inner` elements a row, `outer`
// rows, `row_bytes` apart) read in boxes of box_inner x box_outer. The driver's encoder is
// reached through the runtime, so the extension does not link libcuda.
inline cudaError_t encode_tensor_map_2d(CUtensorMap* map, CUtensorMapDataType type,
                                        const void* data, int64_t inner, int64_t outer,
                                        int64_t row_bytes, int box_inner, int box_outer,
                                        CUtensorMapSwizzle swizzle) {
  using Encode = decltype(&cuTensorMapEncodeTiled);
  static const Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    const cudaError_t error = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn,
                                                               12000, cudaEnableDefault, &found);
#else  // CUDA 12.0-12.4 (deprecated since)
    const cudaError_t error =
        cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &found);
#endif
    return error == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<Encode>(fn)
               : nullptr;
  }();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[2] = {cuuint64_t(inner), cuuint64_t(outer)};
  const cuuint64_t strides[1] = {cuuint64_t(row_bytes)};
  const cuuint32_t box[2] = {cuuint32_t(box_inner), cuuint32_t(box_outer)}, unit[2] = {1, 1};
  const CUresult result =
      encode(map, type, 2, const_cast<void*>(data), dims, strides, box, unit,
             CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return result == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace qk::cuda
