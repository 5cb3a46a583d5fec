// Instantiation of the tensor-core GEMV for nf4 weights and f16 activations (one file per pair so
// the build compiles them in parallel).
#include "gemv_mma.cuh"

namespace qk::cuda {
template cudaError_t launch_gemv_mma<Format::kNF4, half>(const QMatmulParams&, int, bool,
                                                         cudaStream_t);
}  // namespace qk::cuda
