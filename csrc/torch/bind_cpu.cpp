// CPU implementations of torch.ops.qkernels.matmul, matmul_nf4_dq and matmul_a8: checks, picks the kernel
// path (AVX2 / NEON / scalar, QKERNELS_CPU_ISA to force one) and splits output columns over
// at::parallel_for.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>

#include "../cpu/dispatch.h"
#include "checks.h"

namespace qk::binding {
namespace {

cpu::Isa selected_isa() {
  const char* forced = std::getenv("QKERNELS_CPU_ISA");
  if (!forced || !*forced) return cpu::best_isa();
  cpu::Isa isa;
  TORCH_CHECK_VALUE(cpu::parse_isa(forced, &isa),
                    "QKERNELS_CPU_ISA expected one of scalar, avx2, neon, got '", forced, "'");
  TORCH_CHECK_VALUE(cpu::isa_available(isa), "QKERNELS_CPU_ISA=", forced,
                    " is not available on this CPU or in this build (best here: ",
                    cpu::isa_name(cpu::best_isa()), ")");
  return isa;
}

// Splits the columns of y over at::parallel_for so that each task streams at least ~64 KiB of
// weights.
using CpuPath = Status (*)(cpu::Isa, const QMatmulParams&, int64_t n_begin, int64_t n_end);

void run_cpu(const QMatmulParams& params, CpuPath path) {
  const cpu::Isa isa = selected_isa();
  const int64_t row_bytes = packed_row_bytes(params.fmt, params.k);
  const int64_t grain = std::max<int64_t>(8, (int64_t(64) << 10) / std::max<int64_t>(row_bytes, 1));
  Status status = Status::kOk;
  at::parallel_for(0, params.n, grain, [&](int64_t begin, int64_t end) {
    const Status local = path(isa, params, begin, end);
    if (local != Status::kOk) status = local;  // any failing chunk is reported below
  });
  check_status(status);
}

at::Tensor matmul_cpu(const at::Tensor& x, c10::string_view fmt, const at::Tensor& qweight,
                      const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                      int64_t group_size, const std::optional<at::Tensor>& bias) {
  const PreparedMatmul call =
      prepare_matmul("qkernels.matmul", x, fmt, qweight, scales, zeros, group_size, bias);
  if (call.params.m > 0) run_cpu(call.params, cpu::qmatmul);
  return call.y.view(call.out_shape);
}

// Int8 activations (csrc/core/qmatmul_a8.h): each task quantizes x into its thread's scratch.
at::Tensor matmul_a8_cpu(const at::Tensor& x, c10::string_view fmt, const at::Tensor& qweight,
                         const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                         int64_t group_size, const std::optional<at::Tensor>& bias) {
  const char* op = "qkernels.matmul_a8";
  const PreparedMatmul call = prepare_matmul(op, x, fmt, qweight, scales, zeros, group_size, bias);
  const int64_t k = call.params.k;
  TORCH_CHECK_VALUE(group_size % kActivationBlock == 0 || group_size >= k, op,
                    ": group_size expected a multiple of ", num(kActivationBlock),
                    " or >= K=", num(k), " (per channel) with int8 activations, got ",
                    num(group_size));
  if (call.params.m > 0) run_cpu(call.params, cpu::qmatmul_a8);
  return call.y.view(call.out_shape);
}

// nf4 with double-quantized absmax: cpu::qmatmul decodes it per tile of weight rows.
at::Tensor matmul_nf4_dq_cpu(const at::Tensor& x, const at::Tensor& qweight,
                             const at::Tensor& absmax_codes, const at::Tensor& absmax_scales,
                             const at::Tensor& absmax_offsets, int64_t group_size,
                             const std::optional<at::Tensor>& bias) {
  const PreparedMatmul call = prepare_nf4_dq_matmul(x, qweight, absmax_codes, absmax_scales,
                                                    absmax_offsets, group_size, bias);
  if (call.params.m > 0) run_cpu(call.params, cpu::qmatmul);
  return call.y.view(call.out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(qkernels, CPU, m) {
  m.impl("matmul", &matmul_cpu);
  m.impl("matmul_nf4_dq", &matmul_nf4_dq_cpu);
  m.impl("matmul_a8", &matmul_a8_cpu);
}

}  // namespace qk::binding
