// Argument checking shared by the CPU and CUDA bindings: turns the op's tensors into the
// torch-free QMatmulParams, or raises an error that names the argument. The Python fake impl
// (python/qkernels/ops.py) states the same contract; these checks guard direct op calls.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "../core/qmatmul.h"

namespace qk::binding {

// Integers go into error messages as strings: on the GPU machine (torch 2.11 cu130), streaming an
// int64 into a c10 error message crashed inside std::ostream::_M_insert<long> (cause not found;
// default symbol visibility did not change it).
inline std::string num(int64_t value) { return std::to_string(value); }

inline std::string shape(at::IntArrayRef sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + "]";
}

inline Format parse_format(c10::string_view fmt) {
  if (fmt == "int8") return Format::kInt8;
  if (fmt == "int4") return Format::kInt4;
  if (fmt == "nf4") return Format::kNF4;
  TORCH_CHECK_VALUE(false, "qkernels.matmul: fmt expected one of 'int8', 'int4', 'nf4', got '",
                    std::string(fmt), "'");
}

inline DType to_dtype(at::ScalarType type, const char* arg) {
  switch (type) {
    case at::kFloat: return DType::kF32;
    case at::kHalf: return DType::kF16;
    case at::kBFloat16: return DType::kBF16;
    default:
      TORCH_CHECK_TYPE(false, "qkernels.matmul: ", arg,
                       " expected dtype float32, float16 or bfloat16, got ", type);
  }
}

// x2d: [M, K] contiguous view of x; y: [M, N] output in x's dtype.
inline QMatmulParams make_params(const at::Tensor& x2d, Format fmt, const at::Tensor& qweight,
                                 const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                                 int64_t group_size, const std::optional<at::Tensor>& bias,
                                 const at::Tensor& y) {
  const int64_t k = x2d.size(1);
  TORCH_CHECK_VALUE(k >= 1, "qkernels.matmul: x expected a last dimension >= 1, got ", num(k));
  TORCH_CHECK_VALUE(qweight.dim() == 2, "qkernels.matmul: qweight expected 2 dims [N, ",
                    fmt == Format::kInt8 ? "K" : "ceil(K/2)", "], got ", shape(qweight.sizes()));
  const int64_t n = qweight.size(0);
  const at::ScalarType code_type = fmt == Format::kInt8 ? at::kChar : at::kByte;
  TORCH_CHECK_TYPE(qweight.scalar_type() == code_type, "qkernels.matmul: qweight expected dtype ",
                   code_type, " for this format, got ", qweight.scalar_type());
  TORCH_CHECK_VALUE(qweight.size(1) == packed_row_bytes(fmt, k), "qkernels.matmul: qweight expected ",
                    num(packed_row_bytes(fmt, k)), " bytes per row for K=", num(k), ", got ",
                    num(qweight.size(1)));
  TORCH_CHECK_VALUE(group_size >= 1, "qkernels.matmul: group_size expected >= 1, got ", num(group_size));
  const int64_t groups = num_groups(k, group_size);
  TORCH_CHECK_TYPE(scales.scalar_type() == at::kFloat,
                   "qkernels.matmul: scales expected dtype float32, got ", scales.scalar_type());
  TORCH_CHECK_VALUE(scales.dim() == 2 && scales.size(0) == n && scales.size(1) == groups,
                    "qkernels.matmul: scales expected shape [", num(n), ", ", num(groups), "], got ",
                    shape(scales.sizes()));
  TORCH_CHECK_VALUE(qweight.is_contiguous() && scales.is_contiguous(),
                    "qkernels.matmul: qweight and scales expected contiguous tensors");
  if (zeros) {
    TORCH_CHECK_VALUE(fmt == Format::kInt4, "qkernels.matmul: zeros expected None for this format");
    TORCH_CHECK_TYPE(zeros->scalar_type() == at::kFloat,
                     "qkernels.matmul: zeros expected dtype float32, got ", zeros->scalar_type());
    TORCH_CHECK_VALUE(zeros->sizes() == scales.sizes() && zeros->is_contiguous(),
                      "qkernels.matmul: zeros expected a contiguous tensor of shape ",
                      shape(scales.sizes()), ", got ", shape(zeros->sizes()));
  }
  if (bias) {
    TORCH_CHECK_TYPE(bias->scalar_type() == x2d.scalar_type(), "qkernels.matmul: bias expected dtype ",
                     x2d.scalar_type(), " (that of x), got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n && bias->is_contiguous(),
                      "qkernels.matmul: bias expected a contiguous tensor of shape [", num(n), "], got ",
                      shape(bias->sizes()));
  }
  for (const at::Tensor* t : {&qweight, &scales, zeros ? &*zeros : &scales, bias ? &*bias : &scales}) {
    TORCH_CHECK_VALUE(t->device() == x2d.device(), "qkernels.matmul: expected all tensors on ",
                      x2d.device(), ", got one on ", t->device());
  }

  QMatmulParams p{};
  p.fmt = fmt;
  p.m = x2d.size(0);
  p.n = n;
  p.k = k;
  p.group_size = group_size;
  p.x = x2d.data_ptr();
  p.x_row_stride = x2d.stride(0);
  p.x_dtype = to_dtype(x2d.scalar_type(), "x");
  p.qweight = qweight.data_ptr();
  p.qweight_row_stride = qweight.stride(0);
  p.scales = scales.data_ptr<float>();
  p.zeros = zeros ? zeros->data_ptr<float>() : nullptr;
  p.scales_row_stride = scales.stride(0);
  p.bias = bias ? bias->data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.y_row_stride = y.stride(0);
  p.y_dtype = p.x_dtype;
  return p;
}

inline void check_status(Status status) {
  TORCH_CHECK(status == Status::kOk, "qkernels.matmul: kernel rejected its arguments: ",
              status_message(status));
}

// [..., K] -> [M, K] contiguous, and the output shape [..., N].
inline std::pair<at::Tensor, std::vector<int64_t>> flatten_input(const at::Tensor& x, int64_t n) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "qkernels.matmul: x expected at least 1 dim [..., K], got 0");
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  return {x.reshape({-1, x.size(-1)}).contiguous(), out_shape};
}

}  // namespace qk::binding
