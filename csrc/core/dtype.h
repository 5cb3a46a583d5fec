// Scalar conversions between fp32 and the 16-bit activation dtypes, bit-exact with torch
// (round-to-nearest-even on the way down). Torch-free; the SIMD files convert in registers.
#pragma once

#include <cstdint>
#include <cstring>

#include "formats.h"

namespace qk {

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t bits = float_to_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);                                         // round to even
  return uint16_t(bits >> 16);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf, nan
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_to_float(sign);
  // Subnormal half: exact as a scaled float.
  const float magnitude = float(mantissa) * (1.0f / 16777216.0f);  // mantissa * 2^-24
  return sign ? -magnitude : magnitude;
}

inline uint16_t float_to_f16(float f) {
  const uint32_t bits = float_to_bits(f);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return uint16_t(sign | 0x7e00u);      // NaN
  if (abs_bits >= 0x477ff000u) return uint16_t(sign | 0x7c00u);     // rounds to >= 65520: inf
  if (abs_bits >= 0x38800000u) {                                     // normal half
    uint32_t rounded = abs_bits + 0xfffu + ((abs_bits >> 13) & 1u);
    return uint16_t(sign | ((rounded - (112u << 23)) >> 13));
  }
  // Subnormal half or zero: let the FPU round (x * 2^24 is exact in the integer range).
  const float scaled = bits_to_float(abs_bits) * 16777216.0f;
  const float nearest = __builtin_nearbyintf(scaled);  // default rounding mode: to even
  return uint16_t(sign | uint16_t(nearest));
}

inline float load_as_float(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(base)[index];
    case DType::kBF16: return bf16_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::kF16: return f16_to_float(static_cast<const uint16_t*>(base)[index]);
  }
  return 0.0f;
}

inline void store_from_float(void* base, DType dtype, int64_t index, float value) {
  switch (dtype) {
    case DType::kF32: static_cast<float*>(base)[index] = value; return;
    case DType::kBF16: static_cast<uint16_t*>(base)[index] = float_to_bf16(value); return;
    case DType::kF16: static_cast<uint16_t*>(base)[index] = float_to_f16(value); return;
  }
}

}  // namespace qk
