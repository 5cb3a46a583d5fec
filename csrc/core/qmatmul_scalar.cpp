// Scalar GEMV and GEMM for every format: the generic twins that the SIMD paths of csrc/cpu are
// tested against, and the path taken on CPUs without them.
#include <algorithm>
#include <vector>

#include "dtype.h"
#include "qmatmul.h"

namespace qk {

namespace {

// Everything but where the group scales come from.
Status validate_except_scales(const QMatmulParams& p) {
  if (p.fmt != Format::kInt8 && p.fmt != Format::kInt4 && p.fmt != Format::kNF4) {
    return Status::kBadFormat;
  }
  if (p.m < 1 || p.n < 1 || p.k < 1) return Status::kBadShape;
  if (p.group_size < 1) return Status::kBadGroupSize;
  if (!p.x || !p.qweight || !p.y) return Status::kNullPointer;
  if (p.zeros && p.fmt != Format::kInt4) return Status::kZerosNotInt4;
  if (p.x_row_stride < p.k || p.y_row_stride < p.n ||
      p.qweight_row_stride < packed_row_bytes(p.fmt, p.k) ||
      p.scales_row_stride < num_groups(p.k, p.group_size)) {
    return Status::kBadShape;
  }
  return Status::kOk;
}

}  // namespace

Status validate(const QMatmulParams& p) {
  if (Status status = validate_except_scales(p); status != Status::kOk) return status;
  if (!p.scales) return Status::kNullPointer;
  if (p.absmax_dq.codes || p.absmax_dq.scales || p.absmax_dq.offsets) return Status::kDoubleQuant;
  return Status::kOk;
}

Status validate_double_quant(const QMatmulParams& p) {
  if (Status status = validate_except_scales(p); status != Status::kOk) return status;
  const DoubleQuantAbsmax& dq = p.absmax_dq;
  if (p.fmt != Format::kNF4 || p.scales || !dq.codes || !dq.scales || !dq.offsets ||
      p.scales_row_stride != num_groups(p.k, p.group_size)) {
    return Status::kDoubleQuant;
  }
  return Status::kOk;
}

namespace {

// The code of weight k in a row, as the float that the group scale multiplies
// (int4 before its zero point is subtracted).
inline float code_value(Format fmt, const uint8_t* row, int64_t k) {
  if (fmt == Format::kInt8) return float(static_cast<int8_t>(row[k]));
  const uint8_t byte = row[k >> 1];
  const int nibble = (k & 1) ? (byte >> kNibbleBitsHigh) : ((byte >> kNibbleBitsLow) & 0xf);
  return fmt == Format::kNF4 ? kNF4Table[nibble] : float(nibble);
}

inline float zero_point(const QMatmulParams& p, int64_t n, int64_t group) {
  if (p.fmt != Format::kInt4) return 0.0f;
  return p.zeros ? p.zeros[n * p.scales_row_stride + group] : kInt4SymmetricZero;
}

inline float bias_value(const QMatmulParams& p, int64_t n) {
  return p.bias ? load_as_float(p.bias, p.y_dtype, n) : 0.0f;
}

// Dequantized weights w[n, k0:k1] into out[0:k1-k0].
void dequantize_segment(const QMatmulParams& p, int64_t n, int64_t k0, int64_t k1, float* out) {
  const auto* row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
  const float* row_scales = p.scales + n * p.scales_row_stride;
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t group = k / p.group_size;
    out[k - k0] = row_scales[group] * (code_value(p.fmt, row, k) - zero_point(p, n, group));
  }
}

}  // namespace

Status gemv_scalar(const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  if (Status status = validate(p); status != Status::kOk) return status;
  const int64_t groups = num_groups(p.k, p.group_size);
  for (int64_t n = n_begin; n < n_end; ++n) {
    const auto* row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
    const float* row_scales = p.scales + n * p.scales_row_stride;
    for (int64_t i = 0; i < p.m; ++i) {
      const int64_t x_row = i * p.x_row_stride;
      float acc = 0.0f;
      for (int64_t group = 0; group < groups; ++group) {
        const int64_t k0 = group * p.group_size;
        const int64_t k1 = std::min(p.k, k0 + p.group_size);
        // Per group: sum(x * code) and sum(x), so the zero point costs one multiply per group.
        float dot = 0.0f, x_sum = 0.0f;
        for (int64_t k = k0; k < k1; ++k) {
          const float xv = load_as_float(p.x, p.x_dtype, x_row + k);
          dot += xv * code_value(p.fmt, row, k);
          x_sum += xv;
        }
        acc += row_scales[group] * (dot - zero_point(p, n, group) * x_sum);
      }
      store_from_float(p.y, p.y_dtype, i * p.y_row_stride + n, acc + bias_value(p, n));
    }
  }
  return Status::kOk;
}

Status gemm_scalar(const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  if (Status status = validate(p); status != Status::kOk) return status;
  // A tile of 8 weight rows x 256 k is 8 KiB of floats: it stays in L1 while every row of x
  // passes over it.
  constexpr int64_t kTileN = 8, kTileK = 256;
  float w_tile[kTileN * kTileK];
  float x_tile[kTileK];
  thread_local std::vector<float> acc;  // [m, kTileN]; grows with m, never with the weight
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kTileN) {
    const int64_t tile_n = std::min(kTileN, n_end - n0);
    acc.assign(size_t(p.m * kTileN), 0.0f);
    for (int64_t k0 = 0; k0 < p.k; k0 += kTileK) {
      const int64_t tile_k = std::min(kTileK, p.k - k0);
      for (int64_t j = 0; j < tile_n; ++j) {
        dequantize_segment(p, n0 + j, k0, k0 + tile_k, w_tile + j * kTileK);
      }
      for (int64_t i = 0; i < p.m; ++i) {
        for (int64_t kk = 0; kk < tile_k; ++kk) {
          x_tile[kk] = load_as_float(p.x, p.x_dtype, i * p.x_row_stride + k0 + kk);
        }
        for (int64_t j = 0; j < tile_n; ++j) {
          const float* w = w_tile + j * kTileK;
          float dot = 0.0f;
          for (int64_t kk = 0; kk < tile_k; ++kk) dot += x_tile[kk] * w[kk];
          acc[size_t(i * kTileN + j)] += dot;
        }
      }
    }
    for (int64_t i = 0; i < p.m; ++i) {
      for (int64_t j = 0; j < tile_n; ++j) {
        store_from_float(p.y, p.y_dtype, i * p.y_row_stride + n0 + j,
                         acc[size_t(i * kTileN + j)] + bias_value(p, n0 + j));
      }
    }
  }
  return Status::kOk;
}

}  // namespace qk
