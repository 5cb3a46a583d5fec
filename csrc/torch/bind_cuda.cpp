// CUDA implementations of torch.ops.qkernels.matmul and matmul_nf4_dq: checks (checks.h), then,
// on the current stream of x's device, the GEMV kernels for few rows of x, the tensor-core GEMM
// for more, or a dequantized copy of W and cuBLAS (thresholds in csrc/cuda/qmatmul_cuda.h).
//
// QKERNELS_CUDA_KERNEL=gemv|gemm|wgmma|dequant forces one path wherever it applies (the GEMMs need
// gemm_supported(); gemm is the mma.sync GEMM, wgmma the Hopper one, which needs
// gemm_wgmma_runs()), so tests and benchmarks can reach every kernel at every M.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "../cuda/qmatmul_cuda.h"
#include "checks.h"

namespace qk::binding {
namespace {

void check_launch(cudaError_t error) {
  TORCH_CHECK(error == cudaSuccess, "qkernels.matmul: CUDA kernel launch failed: ",
              cudaGetErrorString(error));
}

enum class Path { kGemv, kGemm, kDequantCublas };

// The forced path's name, or nullptr.
const char* forced_kernel() {
  const char* forced = std::getenv("QKERNELS_CUDA_KERNEL");
  if (forced == nullptr || *forced == '\0') return nullptr;
  for (const char* name : {"gemv", "gemm", "wgmma", "dequant"}) {
    if (std::strcmp(forced, name) == 0) return name;
  }
  C10_THROW_ERROR(ValueError, c10::str("qkernels.matmul: QKERNELS_CUDA_KERNEL expected 'gemv', "
                                        "'gemm', 'wgmma' or 'dequant', got '", forced, "'"));
}

// gemm: the GEMM's plan (gemm.runs() false where it cannot run).
Path choose_path(const QMatmulParams& p, const cuda::GemmPlan& gemm, int sms) {
  const bool gemm_ok = gemm.runs();
  if (const char* forced = forced_kernel()) {
    if (std::strcmp(forced, "gemv") == 0) return Path::kGemv;
    if (std::strcmp(forced, "dequant") == 0) return Path::kDequantCublas;
    if (gemm_ok) return Path::kGemm;
  }
  if (p.m <= cuda::kGemvMaxRows || cuda::gemv_wins_above_8_rows(p, sms)) return Path::kGemv;
  if (gemm_ok && gemm.few_blocks) {
    return cuda::small_weight_gemv(p) ? Path::kGemv : Path::kDequantCublas;
  }
  const int64_t gemm_max_rows =
      gemm.wgmma_x_rows > 0 ? cuda::gemm_wgmma_max_rows(p, sms) : cuda::kGemmMaxRows;
  if (gemm_ok && p.m <= gemm_max_rows) return Path::kGemm;
  if (!gemm_ok && p.m <= cuda::kGemvMaxRowsWithoutGemm) return Path::kGemv;
  return Path::kDequantCublas;
}

// The Hopper GEMM where it runs from kGemmWgmmaMinRows rows of x on, or where
// QKERNELS_CUDA_KERNEL=wgmma asks for it; QKERNELS_CUDA_KERNEL=gemm asks for the mma.sync one.
// gpu: torch's cached properties of x's device (four cudaDeviceGetAttribute calls per matmul
// cost ~1.5 us of host time).
cuda::GemmPlan plan_gemm(const QMatmulParams& p, const cudaDeviceProp& gpu) {
  const int major = gpu.major, minor = gpu.minor;
  const bool wgmma_runs = cuda::gemm_wgmma_runs(major, minor);
  const char* forced = forced_kernel();
  TORCH_CHECK_VALUE(forced == nullptr || std::strcmp(forced, "wgmma") != 0 || wgmma_runs,
                    "qkernels.matmul: QKERNELS_CUDA_KERNEL=wgmma needs a compute capability 9.0 "
                    "GPU (this is ", major, ".", minor, ") and an extension built for sm_90a "
                    "(TORCH_CUDA_ARCH_LIST with 9.0a)");
  const bool wgmma =
      wgmma_runs && (forced ? std::strcmp(forced, "wgmma") == 0 : p.m >= cuda::kGemmWgmmaMinRows);
  return cuda::plan_gemm(p, gpu.multiProcessorCount, int(gpu.sharedMemPerBlockOptin), wgmma);
}

void run_gemm(const QMatmulParams& p, const cuda::GemmPlan& plan, const at::Tensor& x2d,
              cudaStream_t stream) {
  // One allocation for both scratch buffers: the split-K slices' fp32 partial sums (which the
  // finalize kernel adds up) and, 256 bytes aligned after them, the Hopper GEMM's permuted copy
  // of x.
  const int64_t sums_bytes = cuda::gemm_workspace_floats(p, plan) * int64_t(sizeof(float));
  const int64_t x_perm_offset = (sums_bytes + 255) / 256 * 256;
  const int64_t x_perm_bytes = cuda::gemm_x_perm_elements(p, plan) * x2d.element_size();
  at::Tensor scratch;
  if (x_perm_offset + x_perm_bytes > 0) {
    scratch = at::empty({x_perm_offset + x_perm_bytes}, x2d.options().dtype(at::kByte));
  }
  uint8_t* base = scratch.defined() ? scratch.data_ptr<uint8_t>() : nullptr;
  check_launch(cuda::launch_gemm(p, plan,
                                 sums_bytes > 0 ? reinterpret_cast<float*>(base) : nullptr,
                                 x_perm_bytes > 0 ? base + x_perm_offset : nullptr, stream));
}

// Launches the path choose_path picks for validated params on the current stream; y is params.y.
void run_cuda(const QMatmulParams& params, const at::Tensor& x2d,
              const std::optional<at::Tensor>& bias, at::Tensor& y) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaDeviceProp& gpu = *at::cuda::getDeviceProperties(x2d.device().index());
  const int sms = gpu.multiProcessorCount;
  cuda::GemmPlan plan{0, 1, false};
  if (cuda::gemm_supported(params)) plan = plan_gemm(params, gpu);
  switch (choose_path(params, plan, sms)) {
    case Path::kGemv:  // by a dependent launch where the GPU has it (launch_gemv)
      check_launch(cuda::launch_gemv(params, sms, gpu.major >= 9, stream));
      break;
    case Path::kGemm: run_gemm(params, plan, x2d, stream); break;
    case Path::kDequantCublas: {
      at::Tensor w = at::empty({params.n, params.k}, x2d.options());
      check_launch(cuda::launch_dequantize(params, w.data_ptr(), params.x_dtype, stream));
      if (bias) {
        at::addmm_out(y, *bias, x2d, w.t());
      } else {
        at::mm_out(y, x2d, w.t());
      }
      break;
    }
  }
}

at::Tensor matmul_cuda(const at::Tensor& x, c10::string_view fmt, const at::Tensor& qweight,
                       const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                       int64_t group_size, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.is_cuda(), "qkernels.matmul: expected all tensors on ", qweight.device(),
                    ", got x on ", x.device());
  const c10::cuda::CUDAGuard device_guard(x.device());
  PreparedMatmul call =
      prepare_matmul("qkernels.matmul", x, fmt, qweight, scales, zeros, group_size, bias);
  if (call.params.m == 0) return call.y.view(call.out_shape);
  check_status(validate(call.params));
  run_cuda(call.params, call.x2d, bias, call.y);
  return call.y.view(call.out_shape);
}

// nf4 with double-quantized absmax: every path decodes it where it loads a group's absmax.
at::Tensor matmul_nf4_dq_cuda(const at::Tensor& x, const at::Tensor& qweight,
                              const at::Tensor& absmax_codes, const at::Tensor& absmax_scales,
                              const at::Tensor& absmax_offsets, int64_t group_size,
                              const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.is_cuda(), "qkernels.matmul_nf4_dq: expected all tensors on ",
                    qweight.device(), ", got x on ", x.device());
  const c10::cuda::CUDAGuard device_guard(x.device());
  PreparedMatmul call = prepare_nf4_dq_matmul(x, qweight, absmax_codes, absmax_scales,
                                              absmax_offsets, group_size, bias);
  if (call.params.m == 0) return call.y.view(call.out_shape);
  check_status(validate_double_quant(call.params));
  run_cuda(call.params, call.x2d, bias, call.y);
  return call.y.view(call.out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(qkernels, CUDA, m) {
  m.impl("matmul", &matmul_cuda);
  m.impl("matmul_nf4_dq", &matmul_nf4_dq_cuda);
}

}  // namespace qk::binding
