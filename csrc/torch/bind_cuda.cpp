// CUDA implementation of torch.ops.qkernels.matmul: checks (checks.h), then the GEMV kernels for
// up to cuda::kGemvMaxRows rows of x, or a dequantized copy of W and cuBLAS for more, on the
// current stream of x's device.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../cuda/qmatmul_cuda.h"
#include "checks.h"

namespace qk::binding {
namespace {

void check_launch(cudaError_t error) {
  TORCH_CHECK(error == cudaSuccess, "qkernels.matmul: CUDA kernel launch failed: ",
              cudaGetErrorString(error));
}

at::Tensor matmul_cuda(const at::Tensor& x, c10::string_view fmt, const at::Tensor& qweight,
                       const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                       int64_t group_size, const std::optional<at::Tensor>& bias) {
  const Format format = parse_format(fmt);
  TORCH_CHECK_VALUE(qweight.dim() == 2, "qkernels.matmul: qweight expected 2 dims, got ",
                    num(qweight.dim()));
  TORCH_CHECK_VALUE(x.is_cuda(), "qkernels.matmul: expected all tensors on ", qweight.device(),
                    ", got x on ", x.device());
  const c10::cuda::CUDAGuard device_guard(x.device());
  auto [x2d, out_shape] = flatten_input(x, qweight.size(0));
  at::Tensor y = at::empty({x2d.size(0), qweight.size(0)}, x2d.options());
  const QMatmulParams params = make_params(x2d, format, qweight, scales, zeros, group_size, bias, y);
  if (params.m == 0) return y.view(out_shape);
  check_status(validate(params));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (params.m <= cuda::kGemvMaxRows) {
    check_launch(cuda::launch_gemv(params, stream));
  } else {
    // Until the tensor-core GEMM exists: W in x's dtype in a workspace, then cuBLAS.
    at::Tensor w = at::empty({params.n, params.k}, x2d.options());
    check_launch(cuda::launch_dequantize(params, w.data_ptr(), params.x_dtype, stream));
    if (bias) {
      at::addmm_out(y, *bias, x2d, w.t());
    } else {
      at::mm_out(y, x2d, w.t());
    }
  }
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(qkernels, CUDA, m) { m.impl("matmul", &matmul_cuda); }

}  // namespace qk::binding
