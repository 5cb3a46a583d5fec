// NEON helpers shared by gemv_neon.cpp and gemm_neon.cpp: activation and output dtype
// conversion in registers, 4-bit / int8 decoding of 8 weights. aarch64 only.
#pragma once

#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "../core/formats.h"
#include "../core/qmatmul.h"
#include "scratch.h"

namespace qk::cpu {
namespace {

// 8 weights k..k+7 of a row as fp32, in k order: lanes 0-3 in low, 4-7 in high.
struct Float8 {
  float32x4_t low, high;
};

// int4 / nf4 codes k..k+7 (k even) as u32 lanes: the 4 bytes holding them, lane t shifted right
// by 4t (a negative left shift) and masked.
inline void nibbles8(const uint8_t* row, int64_t k, uint32x4_t* low, uint32x4_t* high) {
  uint32_t word;
  std::memcpy(&word, row + k / 2, sizeof word);
  const uint32x4_t v = vdupq_n_u32(word);
  const int32_t shifts_low[4] = {0, -4, -8, -12}, shifts_high[4] = {-16, -20, -24, -28};
  const uint32x4_t mask = vdupq_n_u32(0xf);
  *low = vandq_u32(vshlq_u32(v, vld1q_s32(shifts_low)), mask);
  *high = vandq_u32(vshlq_u32(v, vld1q_s32(shifts_high)), mask);
}

inline Float8 decode_int4(const uint8_t* row, int64_t k) {
  uint32x4_t low, high;
  nibbles8(row, k, &low, &high);
  return {vcvtq_f32_u32(low), vcvtq_f32_u32(high)};
}

// nf4: a byte-table lookup. The 16 floats are 64 table bytes; code q becomes the byte indices
// 4q..4q+3 of its float (q * 0x04040404 + 0x03020100 per lane), gathered by one vqtbl4q.
struct NF4Table {
  uint8x16x4_t bytes;
  NF4Table() {
    const auto* raw = reinterpret_cast<const uint8_t*>(kNF4Table);
    bytes = {vld1q_u8(raw), vld1q_u8(raw + 16), vld1q_u8(raw + 32), vld1q_u8(raw + 48)};
  }
  float32x4_t lookup(uint32x4_t codes) const {
    const uint32x4_t index = vmlaq_n_u32(vdupq_n_u32(0x03020100u), codes, 0x04040404u);
    return vreinterpretq_f32_u8(vqtbl4q_u8(bytes, vreinterpretq_u8_u32(index)));
  }
};

inline Float8 decode_nf4(const NF4Table& table, const uint8_t* row, int64_t k) {
  uint32x4_t low, high;
  nibbles8(row, k, &low, &high);
  return {table.lookup(low), table.lookup(high)};
}

inline Float8 decode_int8(const uint8_t* row, int64_t k) {
  const int16x8_t wide = vmovl_s8(vld1_s8(reinterpret_cast<const int8_t*>(row + k)));
  return {vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide))), vcvtq_f32_s32(vmovl_s16(vget_high_s16(wide)))};
}

// 4 activations of any dtype as fp32: bf16 is the top half of an fp32; fp16 converts natively.
inline float32x4_t load4_as_f32(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kF32: return vld1q_f32(static_cast<const float*>(base) + index);
    case DType::kBF16:
      return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(static_cast<const uint16_t*>(base) + index), 16));
    case DType::kF16:
      return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(static_cast<const uint16_t*>(base) + index)));
  }
  return vdupq_n_f32(0.0f);
}

// 4 fp32 values to bf16, rounded to nearest-even (NaN stays a quiet NaN), as torch rounds.
inline uint16x4_t f32_to_bf16x4(float32x4_t v) {
  const uint32x4_t bits = vreinterpretq_u32_f32(v);
  const uint32x4_t lsb = vandq_u32(vshrq_n_u32(bits, 16), vdupq_n_u32(1));
  const uint32x4_t rounded = vshrq_n_u32(vaddq_u32(bits, vaddq_u32(lsb, vdupq_n_u32(0x7fff))), 16);
  const uint32x4_t quiet_nan = vorrq_u32(vshrq_n_u32(bits, 16), vdupq_n_u32(0x40));
  const uint32x4_t is_nan = vmvnq_u32(vceqq_f32(v, v));
  return vmovn_u32(vbslq_u32(is_nan, quiet_nan, rounded));
}

inline void store4_from_f32(void* base, DType dtype, int64_t index, float32x4_t v) {
  switch (dtype) {
    case DType::kF32: vst1q_f32(static_cast<float*>(base) + index, v); return;
    case DType::kBF16: vst1_u16(static_cast<uint16_t*>(base) + index, f32_to_bf16x4(v)); return;
    case DType::kF16:  // FPCR's default rounding: to nearest-even
      vst1_u16(static_cast<uint16_t*>(base) + index, vreinterpret_u16_f16(vcvt_f16_f32(v)));
      return;
  }
}

inline int64_t dtype_bytes(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

// count activations from base[index:] into fp32, without reading past them.
inline void load_as_f32(const void* base, DType dtype, int64_t index, int64_t count, float* out) {
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) vst1q_f32(out + i, load4_as_f32(base, dtype, index + i));
  if (i < count) {
    alignas(16) uint8_t staged[16] = {};
    const int64_t bytes = dtype_bytes(dtype);
    std::memcpy(staged, static_cast<const uint8_t*>(base) + (index + i) * bytes,
                size_t((count - i) * bytes));
    float converted[4];
    vst1q_f32(converted, load4_as_f32(staged, dtype, 0));
    std::memcpy(out + i, converted, size_t(count - i) * sizeof(float));
  }
}

// count fp32 values into base[index:] in dtype, without writing past them.
inline void store_from_f32(void* base, DType dtype, int64_t index, int64_t count, const float* in) {
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) store4_from_f32(base, dtype, index + i, vld1q_f32(in + i));
  if (i < count) {
    float staged_in[4] = {};
    std::memcpy(staged_in, in + i, size_t(count - i) * sizeof(float));
    alignas(16) uint8_t staged_out[16];
    store4_from_f32(staged_out, dtype, 0, vld1q_f32(staged_in));
    const int64_t bytes = dtype_bytes(dtype);
    std::memcpy(static_cast<uint8_t*>(base) + (index + i) * bytes, staged_out,
                size_t((count - i) * bytes));
  }
}

}  // namespace
}  // namespace qk::cpu

#include "store_common.h"  // after load_as_f32 / store_from_f32, which it calls
