// Instantiation of the tensor-core GEMV for int8 weights and f16 activations (one file per pair so
// the build compiles them in parallel).
#include "gemv_mma.cuh"

namespace qk::cuda {
template cudaError_t launch_gemv_mma<Format::kInt8, half>(const QMatmulParams&, int, bool,
                                                          cudaStream_t);
}  // namespace qk::cuda
