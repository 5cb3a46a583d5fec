// Instantiation of the tensor-core GEMV for nf4 weights with double-quantized absmax and bf16
// activations (one file per pair so the build compiles them in parallel).
#include "gemv_mma.cuh"

namespace qk::cuda {
template cudaError_t launch_gemv_mma<Format::kNF4, __nv_bfloat16, true>(const QMatmulParams&, int,
                                                                        bool, cudaStream_t);
}  // namespace qk::cuda
