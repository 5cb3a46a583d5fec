// The SIMD kernels behind the dispatch table (dispatch.cpp). Each has the signature and the
// contract of its scalar twin in csrc/core/qmatmul.h: columns [n_begin, n_end) of y, all rows.
// Declarations only: the bodies live in files compiled with their ISA's flags.
#pragma once

#include <cstdint>

#include "../core/qmatmul.h"
#include "../core/qmatmul_a8.h"

namespace qk::cpu {

#if defined(__x86_64__)
Status gemv_avx2(const QMatmulParams& p, int64_t n_begin, int64_t n_end);  // gemv_avx2.cpp
Status gemm_avx2(const QMatmulParams& p, int64_t n_begin, int64_t n_end);  // gemm_avx2.cpp
Status gemv_a8_avx2(const QMatmulParams& p, const QuantizedActivations& xq, int64_t n_begin,
                    int64_t n_end);  // gemv_a8_avx2.cpp
#endif
#if defined(__aarch64__)
Status gemv_neon(const QMatmulParams& p, int64_t n_begin, int64_t n_end);  // gemv_neon.cpp
Status gemm_neon(const QMatmulParams& p, int64_t n_begin, int64_t n_end);  // gemm_neon.cpp
Status gemv_a8_neon(const QMatmulParams& p, const QuantizedActivations& xq, int64_t n_begin,
                    int64_t n_end);  // gemv_a8_neon.cpp
#endif

}  // namespace qk::cpu
