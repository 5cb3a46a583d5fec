// Canonical weight formats: the one C++ copy of the constants in python/qkernels/formats.py.
// tests/test_formats.py checks these against Python through qkernels._C.format_constants().
// Compiles as C++ and CUDA, includes nothing from torch.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define QK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define QK_HOST_DEVICE inline
#endif

namespace qk {

// Stable numbering shared with python/qkernels/formats.py (Format enum). Never renumber.
enum class Format : int32_t { kInt8 = 0, kInt4 = 1, kNF4 = 2 };

// Activation / output dtypes a kernel can read and write (numbering shared with nothing: the
// binding layer maps at::ScalarType onto it).
enum class DType : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

// int8: q in [-127, 127], w = scale * q.
constexpr int kInt8MaxCode = 127;

// int4: q in [0, 15], w = scale * (q - zero); symmetric mode has zero = 8.
constexpr int kInt4MaxCode = 15;
constexpr float kInt4SymmetricZero = 8.0f;

// 4-bit packing: byte j of a row holds k = 2j in bits 0-3 and k = 2j+1 in bits 4-7.
constexpr int kNibbleBitsLow = 0;
constexpr int kNibbleBitsHigh = 4;

// NormalFloat-4 (QLoRA, Dettmers et al. 2023), index 0 = -1, index 7 = 0, index 15 = 1.
// Written with 9 significant digits so that every value round-trips to the same float32 as
// the Python table.
constexpr float kNF4Table[16] = {
    -1.0f,           -0.696192801f,  -0.525073051f,  -0.394917488f,
    -0.284441382f,   -0.184773430f,  -0.0910500363f, 0.0f,
    0.0795802996f,   0.160930201f,   0.246112302f,   0.337915242f,
    0.440709829f,    0.562617004f,   0.722956836f,   1.0f,
};

// nf4 with double-quantized absmax (QLoRA's nested statistics; layout in formats.py): 8-bit
// codes of log2(absmax), with an fp32 scale and offset per block of this many consecutive codes
// (row-major over [N, G]).
constexpr int64_t kDoubleQuantBlock = 256;

// 2^x for the absmax decode, within ~2 ulp (the tests compare with torch.exp2, itself 1 ulp).
// The GPU has exp2f in one special-function instruction. The host cannot call exp2f there: at
// one libm call per group it cost as much as a quarter of an nf4 GEMV; this version is plain
// arithmetic, which the compiler vectorises, at any optimisation flags of the file.
QK_HOST_DEVICE float exp2_for_decode(float x) {
#if defined(__CUDA_ARCH__)
  return exp2f(x);
#else
  // x = n + f, n an integer, |f| <= 1/2 (adding and subtracting 1.5 * 2^23 rounds to nearest).
  constexpr float kRound = 12582912.0f;
  const float n = (x + kRound) - kRound;
  const float f = x - n;
  // 2^f = e^(f ln 2): Taylor to degree 7, truncation error < 6e-9 relative for |f| <= 1/2.
  float poly = 1.525273380e-05f;
  poly = poly * f + 1.540353039e-04f;
  poly = poly * f + 1.333355815e-03f;
  poly = poly * f + 9.618129108e-03f;
  poly = poly * f + 5.550410866e-02f;
  poly = poly * f + 2.402265070e-01f;
  poly = poly * f + 6.931471806e-01f;
  poly = poly * f + 1.0f;
  // 2^n as two normal powers of two, so that results below 2^-126 round once into subnormals
  // and n up to 128 overflows to inf, as exp2f does. |x| must stay below 2^22 (codes: < 2^9).
  const int32_t whole = int32_t(n);
  const int32_t half = whole / 2;
  const uint32_t bits_a = uint32_t(half + 127) << 23, bits_b = uint32_t(whole - half + 127) << 23;
  float pow_a, pow_b;
  std::memcpy(&pow_a, &bits_a, sizeof pow_a);
  std::memcpy(&pow_b, &bits_b, sizeof pow_b);
  return poly * pow_a * pow_b;
#endif
}

// absmax[n, g] of a double-quantized nf4 weight from its code and its block's scale and offset:
// the one C++ copy of formats.decode_absmax. log2(absmax) is rounded once, as torch.addcmul (an
// fma) and Triton's tl.fma round it; a float times 8 bits is exact in double, so the host, whose
// generic files have no fma instruction, rounds a double sum instead. (Rounding the product too
// moved absmax by up to 1.4e-6 relative at log2(absmax) = 20.)
QK_HOST_DEVICE float decode_absmax(uint8_t code, float block_scale, float block_offset) {
#if defined(__CUDA_ARCH__)
  const float log2_absmax = fmaf(block_scale, float(code), block_offset);
#else
  const float log2_absmax = float(double(block_offset) + double(block_scale) * double(code));
#endif
  return exp2_for_decode(log2_absmax);
}

// Bytes of packed codes per row of K weights.
QK_HOST_DEVICE int64_t packed_row_bytes(Format fmt, int64_t k) {
  return fmt == Format::kInt8 ? k : (k + 1) / 2;
}

// Number of quantization groups along K (the last one may be partial).
QK_HOST_DEVICE int64_t num_groups(int64_t k, int64_t group_size) {
  return (k + group_size - 1) / group_size;
}

}  // namespace qk
