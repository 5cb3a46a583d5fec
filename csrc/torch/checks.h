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

inline void check_device(const char* op, const at::Tensor& t, const at::Tensor& x2d) {
  TORCH_CHECK_VALUE(t.device() == x2d.device(), op, ": expected all tensors on ", x2d.device(),
                    ", got one on ", t.device());
}

// Checks of one op's x, qweight, group_size and bias, and the params they fill: all but the
// group scales. x2d: [M, K] contiguous view of x; y: [M, N] output in x's dtype.
inline QMatmulParams make_params_except_scales(const char* op, const at::Tensor& x2d, Format fmt,
                                               const at::Tensor& qweight, int64_t group_size,
                                               const std::optional<at::Tensor>& bias,
                                               const at::Tensor& y) {
  const int64_t k = x2d.size(1);
  TORCH_CHECK_VALUE(k >= 1, op, ": x expected a last dimension >= 1, got ", num(k));
  TORCH_CHECK_VALUE(qweight.dim() == 2, op, ": qweight expected 2 dims [N, ",
                    fmt == Format::kInt8 ? "K" : "ceil(K/2)", "], got ", shape(qweight.sizes()));
  const int64_t n = qweight.size(0);
  const at::ScalarType code_type = fmt == Format::kInt8 ? at::kChar : at::kByte;
  TORCH_CHECK_TYPE(qweight.scalar_type() == code_type, op, ": qweight expected dtype ",
                   code_type, " for this format, got ", qweight.scalar_type());
  TORCH_CHECK_VALUE(qweight.size(1) == packed_row_bytes(fmt, k), op, ": qweight expected ",
                    num(packed_row_bytes(fmt, k)), " bytes per row for K=", num(k), ", got ",
                    num(qweight.size(1)));
  TORCH_CHECK_VALUE(qweight.is_contiguous(), op, ": qweight expected a contiguous tensor");
  TORCH_CHECK_VALUE(group_size >= 1, op, ": group_size expected >= 1, got ", num(group_size));
  if (bias) {
    TORCH_CHECK_TYPE(bias->scalar_type() == x2d.scalar_type(), op, ": bias expected dtype ",
                     x2d.scalar_type(), " (that of x), got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n && bias->is_contiguous(), op,
                      ": bias expected a contiguous tensor of shape [", num(n), "], got ",
                      shape(bias->sizes()));
    check_device(op, *bias, x2d);
  }
  check_device(op, qweight, x2d);

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
  p.bias = bias ? bias->data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.y_row_stride = y.stride(0);
  p.y_dtype = p.x_dtype;
  return p;
}

// The params of qkernels::matmul: fp32 scales (nf4: absmax) and int4 zeros.
inline QMatmulParams make_params(const at::Tensor& x2d, Format fmt, const at::Tensor& qweight,
                                 const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                                 int64_t group_size, const std::optional<at::Tensor>& bias,
                                 const at::Tensor& y) {
  const char* op = "qkernels.matmul";
  QMatmulParams p = make_params_except_scales(op, x2d, fmt, qweight, group_size, bias, y);
  const int64_t groups = num_groups(p.k, group_size);
  TORCH_CHECK_TYPE(scales.scalar_type() == at::kFloat,
                   "qkernels.matmul: scales expected dtype float32, got ", scales.scalar_type());
  TORCH_CHECK_VALUE(scales.dim() == 2 && scales.size(0) == p.n && scales.size(1) == groups,
                    "qkernels.matmul: scales expected shape [", num(p.n), ", ", num(groups),
                    "], got ", shape(scales.sizes()));
  TORCH_CHECK_VALUE(scales.is_contiguous(), "qkernels.matmul: scales expected a contiguous tensor");
  check_device(op, scales, x2d);
  if (zeros) {
    TORCH_CHECK_VALUE(fmt == Format::kInt4, "qkernels.matmul: zeros expected None for this format");
    TORCH_CHECK_TYPE(zeros->scalar_type() == at::kFloat,
                     "qkernels.matmul: zeros expected dtype float32, got ", zeros->scalar_type());
    TORCH_CHECK_VALUE(zeros->sizes() == scales.sizes() && zeros->is_contiguous(),
                      "qkernels.matmul: zeros expected a contiguous tensor of shape ",
                      shape(scales.sizes()), ", got ", shape(zeros->sizes()));
    check_device(op, *zeros, x2d);
  }
  p.scales = scales.data_ptr<float>();
  p.zeros = zeros ? zeros->data_ptr<float>() : nullptr;
  p.scales_row_stride = scales.stride(0);
  return p;
}

// The params of qkernels::matmul_nf4_dq: nf4 whose absmax is double-quantized (DoubleQuantAbsmax).
inline QMatmulParams make_nf4_dq_params(const at::Tensor& x2d, const at::Tensor& qweight,
                                        const at::Tensor& absmax_codes,
                                        const at::Tensor& absmax_scales,
                                        const at::Tensor& absmax_offsets, int64_t group_size,
                                        const std::optional<at::Tensor>& bias,
                                        const at::Tensor& y) {
  const char* op = "qkernels.matmul_nf4_dq";
  QMatmulParams p = make_params_except_scales(op, x2d, Format::kNF4, qweight, group_size, bias, y);
  const int64_t groups = num_groups(p.k, group_size);
  TORCH_CHECK_TYPE(absmax_codes.scalar_type() == at::kByte, op,
                   ": absmax_codes expected dtype uint8, got ", absmax_codes.scalar_type());
  TORCH_CHECK_VALUE(absmax_codes.dim() == 2 && absmax_codes.size(0) == p.n &&
                        absmax_codes.size(1) == groups && absmax_codes.is_contiguous(),
                    op, ": absmax_codes expected a contiguous tensor of shape [", num(p.n), ", ",
                    num(groups), "], got ", shape(absmax_codes.sizes()));
  check_device(op, absmax_codes, x2d);
  const int64_t blocks = num_groups(p.n * groups, kDoubleQuantBlock);
  using Named = std::pair<const char*, const at::Tensor*>;
  for (const auto& [name, t] :
       {Named{"absmax_scales", &absmax_scales}, Named{"absmax_offsets", &absmax_offsets}}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, op, ": ", name,
                     " expected dtype float32, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == blocks && t->is_contiguous(), op, ": ", name,
                      " expected a contiguous tensor of shape [", num(blocks), "], got ",
                      shape(t->sizes()));
    check_device(op, *t, x2d);
  }
  p.absmax_dq.codes = absmax_codes.data_ptr<uint8_t>();
  p.absmax_dq.scales = absmax_scales.data_ptr<float>();
  p.absmax_dq.offsets = absmax_offsets.data_ptr<float>();
  p.scales_row_stride = groups;
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

// The start of every qkernels::matmul-shaped impl: x as [M, K], y allocated as [M, N] in x's
// dtype, and the checked params; out_shape is y's shape as returned, [..., N].
struct PreparedMatmul {
  QMatmulParams params;
  at::Tensor x2d;  // owns what params.x points to when x needed a contiguous copy
  at::Tensor y;
  std::vector<int64_t> out_shape;
};

inline PreparedMatmul prepare_matmul(const char* op, const at::Tensor& x, c10::string_view fmt,
                                     const at::Tensor& qweight, const at::Tensor& scales,
                                     const std::optional<at::Tensor>& zeros, int64_t group_size,
                                     const std::optional<at::Tensor>& bias) {
  const Format format = parse_format(fmt);
  TORCH_CHECK_VALUE(qweight.dim() == 2, op, ": qweight expected 2 dims, got ", num(qweight.dim()));
  auto [x2d, out_shape] = flatten_input(x, qweight.size(0));
  at::Tensor y = at::empty({x2d.size(0), qweight.size(0)}, x2d.options());
  const QMatmulParams params = make_params(x2d, format, qweight, scales, zeros, group_size, bias, y);
  return {params, x2d, y, out_shape};
}

// The same for qkernels::matmul_nf4_dq.
inline PreparedMatmul prepare_nf4_dq_matmul(const at::Tensor& x, const at::Tensor& qweight,
                                            const at::Tensor& absmax_codes,
                                            const at::Tensor& absmax_scales,
                                            const at::Tensor& absmax_offsets, int64_t group_size,
                                            const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(qweight.dim() == 2, "qkernels.matmul_nf4_dq: qweight expected 2 dims, got ",
                    num(qweight.dim()));
  auto [x2d, out_shape] = flatten_input(x, qweight.size(0));
  at::Tensor y = at::empty({x2d.size(0), qweight.size(0)}, x2d.options());
  const QMatmulParams params = make_nf4_dq_params(x2d, qweight, absmax_codes, absmax_scales,
                                                  absmax_offsets, group_size, bias, y);
  return {params, x2d, y, out_shape};
}

}  // namespace qk::binding
