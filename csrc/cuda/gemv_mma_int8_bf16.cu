// Instantiation of the tensor-core GEMV for int8 weights and bf16 activations (one file per pair so
// the build compiles them in parallel).
#include "gemv_mma.cuh"

namespace qk::cuda {
template cudaError_t launch_gemv_mma<Format::kInt8, __nv_bfloat16>(const QMatmulParams&, int, bool,
                                                                   cudaStream_t);
}  // namespace qk::cuda
