// The one kernel interface every CPU path implements: y = x @ dequant(W)^T (+ bias).
// Torch-free: raw pointers, sizes and strides; a Status instead of exceptions.
#pragma once

#include <cstdint>

#include "formats.h"

namespace qk {

// nf4 absmax given as double-quantized 8-bit codes (formats.h, decode_absmax):
// absmax[n, g] = decode_absmax(codes[n G + g], scales[b], offsets[b]), b = (n G + g) / 256.
struct DoubleQuantAbsmax {
  const uint8_t* codes;   // [n, G], row stride G: the blocks run over the flat index
  const float* scales;    // [ceil(n G / 256)]
  const float* offsets;   // [ceil(n G / 256)]
};

struct QMatmulParams {
  Format fmt;
  int64_t m;           // rows of x and y
  int64_t n;           // out_features: rows of W, columns of y
  int64_t k;           // in_features
  int64_t group_size;  // >= 1; per-channel weights have group_size >= k (one group per row)

  const void* x;         // [m, k] in x_dtype, unit stride along k
  int64_t x_row_stride;  // elements
  DType x_dtype;

  const void* qweight;         // int8 [n, k] or uint8 [n, ceil(k/2)] (4-bit, low nibble first)
  int64_t qweight_row_stride;  // bytes
  const float* scales;         // [n, G] fp32: int8/int4 scales, nf4 absmax
  const float* zeros;          // [n, G] fp32 int4 zero points, or nullptr (symmetric: zero 8)
  int64_t scales_row_stride;   // elements, shared by scales and zeros (and absmax_dq.codes)
  // nf4 only, with scales == nullptr: the absmax as codes, decoded where it is read. Only
  // cpu::qmatmul and the CUDA launchers take it (validate_double_quant); all null otherwise.
  DoubleQuantAbsmax absmax_dq;

  const void* bias;  // [n] in y_dtype, or nullptr
  void* y;           // [m, n] in y_dtype, unit stride along n
  int64_t y_row_stride;
  DType y_dtype;
};

enum class Status : int32_t {
  kOk = 0,
  kBadFormat,       // fmt is not a Format
  kBadShape,        // m, n or k < 1, or a stride smaller than its row
  kBadGroupSize,    // group_size < 1
  kNullPointer,     // a required pointer is null
  kZerosNotInt4,    // zeros given for a format that has none
  kDoubleQuant,     // absmax_dq: not nf4, scales also given, a null pointer, or row stride != G
  kInt8Activations,  // int8 activations (qmatmul_a8.h): a block of 32 split by a group
};

inline const char* status_message(Status status) {
  switch (status) {
    case Status::kOk: return "ok";
    case Status::kBadFormat: return "unknown format";
    case Status::kBadShape: return "bad shape or stride";
    case Status::kBadGroupSize: return "group_size must be >= 1";
    case Status::kNullPointer: return "a required pointer is null";
    case Status::kZerosNotInt4: return "zeros are only valid for int4";
    case Status::kDoubleQuant:
      return "double-quantized absmax needs nf4, no scales, all three pointers and row stride G";
    case Status::kInt8Activations:
      return "int8 activations need group_size a multiple of 32 or >= K";
  }
  return "unknown status";
}

// Checks what a kernel relies on; the binding layer has already named the offending argument
// for the user, so this is the last line of defence against a crash, not the error message.
Status validate(const QMatmulParams& p);
// The same for a double-quantized nf4 weight (p.absmax_dq set, p.scales null). The kernels of
// the tables below take stored scales only (validate rejects absmax_dq).
Status validate_double_quant(const QMatmulParams& p);

// Scalar kernels, the generic twins of every SIMD path. Each computes output columns
// [n_begin, n_end) of y for all m rows, so callers can split n across threads.
// gemv: stream each weight row once (few rows of x). gemm: dequantize a tile of W into a small
// buffer and reuse it for every row of x.
Status gemv_scalar(const QMatmulParams& p, int64_t n_begin, int64_t n_end);
Status gemm_scalar(const QMatmulParams& p, int64_t n_begin, int64_t n_end);

}  // namespace qk
