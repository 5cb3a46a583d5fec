// AVX2 + F16C helpers shared by gemv_avx2.cpp and gemm_avx2.cpp: activation and output dtype
// conversion in registers, horizontal sums. Include only from files compiled with
// -mavx2 -mfma -mf16c; internal linkage (see kernel_common.h for why).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "../core/qmatmul.h"
#include "scratch.h"

namespace qk::cpu {
namespace {

inline float hsum(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
  return _mm_cvtss_f32(sum);
}

// out[0] = hsum(a), out[1] = hsum(b), the two sharing their shuffles and adds.
inline void hsum_pair(__m256 a, __m256 b, float* out) {
  const __m256 pairs = _mm256_hadd_ps(a, b);  // a0+a1 a2+a3 b0+b1 b2+b3 | the same of lanes 4-7
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(pairs), _mm256_extractf128_ps(pairs, 1));
  sum = _mm_hadd_ps(sum, sum);  // hsum(a) hsum(b) hsum(a) hsum(b)
  _mm_storel_pi(reinterpret_cast<__m64*>(out), sum);
}

// 8 activations of any dtype as fp32: bf16 is the top half of an fp32, fp16 goes through F16C.
inline __m256 load8_as_f32(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kF32: return _mm256_loadu_ps(static_cast<const float*>(base) + index);
    case DType::kBF16: {
      const __m128i h = _mm_loadu_si128(
          reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + index));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case DType::kF16:
      return _mm256_cvtph_ps(_mm_loadu_si128(
          reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + index)));
  }
  return _mm256_setzero_ps();
}

// 8 fp32 values rounded to nearest-even bf16 (NaN stays a quiet NaN), as torch rounds.
inline __m128i f32_to_bf16x8(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
  const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff)),
                                            _mm256_set1_epi32(0x7f800000));
  const __m256i halves = _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
  // packus works within 128-bit lanes: pack, then gather the two low quadwords.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(halves, halves), 0x08);
  return _mm256_castsi256_si128(packed);
}

inline void store8_from_f32(void* base, DType dtype, int64_t index, __m256 v) {
  switch (dtype) {
    case DType::kF32: _mm256_storeu_ps(static_cast<float*>(base) + index, v); return;
    case DType::kBF16:
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(base) + index),
                       f32_to_bf16x8(v));
      return;
    case DType::kF16:
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(base) + index),
                       _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      return;
  }
}

inline int64_t dtype_bytes(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

// count (< 8 on the tail) activations from base[index:] into fp32, without reading past them.
inline void load_as_f32(const void* base, DType dtype, int64_t index, int64_t count, float* out) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) _mm256_storeu_ps(out + i, load8_as_f32(base, dtype, index + i));
  if (i < count) {
    alignas(32) uint8_t staged[32] = {};
    const int64_t bytes = dtype_bytes(dtype);
    std::memcpy(staged, static_cast<const uint8_t*>(base) + (index + i) * bytes,
                size_t((count - i) * bytes));
    alignas(32) float converted[8];
    _mm256_store_ps(converted, load8_as_f32(staged, dtype, 0));
    std::memcpy(out + i, converted, size_t(count - i) * sizeof(float));
  }
}

// count fp32 values into base[index:] in dtype, without writing past them.
inline void store_from_f32(void* base, DType dtype, int64_t index, int64_t count, const float* in) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) store8_from_f32(base, dtype, index + i, _mm256_loadu_ps(in + i));
  if (i < count) {
    alignas(32) float staged_in[8] = {};
    std::memcpy(staged_in, in + i, size_t(count - i) * sizeof(float));
    alignas(32) uint8_t staged_out[32];
    store8_from_f32(staged_out, dtype, 0, _mm256_load_ps(staged_in));
    const int64_t bytes = dtype_bytes(dtype);
    std::memcpy(static_cast<uint8_t*>(base) + (index + i) * bytes, staged_out,
                size_t((count - i) * bytes));
  }
}

}  // namespace
}  // namespace qk::cpu

#include "store_common.h"  // after load_as_f32 / store_from_f32, which it calls
