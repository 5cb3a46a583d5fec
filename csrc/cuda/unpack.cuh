// In-register unpacking of packed weight codes into pairs of fp16 / bf16 values, as the tensor
// cores read them (mma.sync A or B fragments), shared by the GEMV (gemv_mma.cuh), the GEMM
// (gemm_mma.cuh) and the dequantize kernel. Torch-free.
#pragma once

#include <type_traits>

#include "common.cuh"

namespace qk::cuda {

// The NF4 table as 256 value pairs (one per code byte: low nibble first), replicated once per lane
// so that the lookups of a warp never conflict on a bank: entry byte of lane l at [byte * 32 + l].
constexpr int kNF4TableWords = 256 * 32;

__device__ __forceinline__ uint32_t word(const uint4& v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

// Two activation-dtype values packed in 32 bits, as the mma reads them (low half = first).
template <typename T>
struct Pair;
template <>
struct Pair<half> {
  using T2 = half2;
  // 0x6400 is 1024.0 in fp16, where the spacing is 1: OR-ing a code u < 1024 into the mantissa
  // gives exactly 1024 + u, an integer-to-half conversion in one logic op.
  static constexpr uint32_t kMagic = 0x64006400u;
  static constexpr float kMagicValue = 1024.0f;
  static __device__ __forceinline__ T2 make(float lo, float hi) { return __floats2half2_rn(lo, hi); }
};
template <>
struct Pair<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  // 0x4300 is 128.0 in bf16, spacing 1: the same trick for codes u < 128.
  static constexpr uint32_t kMagic = 0x43004300u;
  static constexpr float kMagicValue = 128.0f;
  static __device__ __forceinline__ T2 make(float lo, float hi) {
    return __floats2bfloat162_rn(lo, hi);
  }
};

template <typename T2>
__device__ __forceinline__ uint32_t bits(T2 v) {
  return *reinterpret_cast<uint32_t*>(&v);
}
template <typename T2>
__device__ __forceinline__ T2 pair(uint32_t v) {
  return *reinterpret_cast<T2*>(&v);
}

// --- dequantization of one 32-bit word of codes into mma pairs ---------------------------------

// (a & kMask) | b in one LOP3. Written in C++, ptxas emitted two LOP3s (each takes one
// immediate operand); with b in a register it is one.
template <uint32_t kMask>
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "n"(kMask), "r"(b));
  return d;
}

// int4, codes k0..k7 (byte j = k_2j | k_2j+1 << 4) -> s * (q - z) for the pairs (k0, k4),
// (k1, k5), (k2, k6), (k3, k7). One LOP3 per pair ORs the masked codes under the magic
// exponent; an exact subtraction of magic + round(z) gives the integer q - round(z), and one
// fma adds the rest, -s * (z - round(z)). Splitting z so keeps the rounded term small: folding
// all of -z * s (up to 15 s) into the fma constant cost 4-9e-3 norm-wise error in bf16 (CPU
// simulation of this arithmetic, 200x1024 and 1x4096), 2-3e-3 with the split.
// fp16 reads the high nibbles of each byte in place (1024 + 16 q is exact below 2048), so one
// shift per word instead of three; their exact q - round(z) is one fma, (1024 + 16 q) / 16 -
// (64 + round(z)). bf16's 128 + 16 q would not be exact: it shifts every nibble down.
template <typename T>
__device__ __forceinline__ void dequant_int4(uint32_t w, typename Pair<T>::T2 magic_zero,
                                             typename Pair<T>::T2 s, typename Pair<T>::T2 zs,
                                             uint32_t (&out)[4]) {
  using T2 = typename Pair<T>::T2;
  const uint32_t magic = Pair<T>::kMagic;
  T2 q[4];
  if constexpr (std::is_same_v<T, half>) {
    const T2 high_zero = __hsub2(pair<T2>(0x63806380u), magic_zero);  // 960 - (1024 + z)
    const T2 sixteenth = pair<T2>(0x2C002C00u);                        // 1 / 16
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint32_t v = w >> (8 * i);
      q[2 * i] = __hsub2(pair<T2>(and_or<0x000f000fu>(v, magic)), magic_zero);
      q[2 * i + 1] = __hfma2(pair<T2>(and_or<0x00f000f0u>(v, magic)), sixteenth, high_zero);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      q[i] = __hsub2(pair<T2>(and_or<0x000f000fu>(w >> (4 * i), magic)), magic_zero);
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = bits(__hfma2(q[i], s, zs));
}

// nf4, codes as above -> absmax * NF4[q] for the pairs (k0, k1), (k2, k3), (k4, k5), (k6, k7):
// one shared-memory lookup per byte in a 256-entry table of value pairs, replicated per lane
// (lane_bytes = 4 * lane). The byte offset of entry b, 128 b + lane_bytes, is one shift and one
// LOP3 (and_or): byte i shifted to bits 7-14, masked, the lane's offset ORed in below.
template <typename T>
__device__ __forceinline__ void dequant_nf4(uint32_t w, typename Pair<T>::T2 s,
                                            const uint32_t* lut, uint32_t lane_bytes,
                                            uint32_t (&out)[4]) {
  using T2 = typename Pair<T>::T2;
  const char* table = reinterpret_cast<const char*>(lut);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t at_bit7 = i == 0 ? w << 7 : w >> (8 * i - 7);
    const uint32_t entry = *reinterpret_cast<const uint32_t*>(
        table + and_or<0x7f80u>(at_bit7, lane_bytes));
    out[i] = bits(__hmul2(pair<T2>(entry), s));
  }
}

// int8, codes k0..k3 -> the exact values q for the pairs (k0, k2), (k1, k3). fp16: flip the
// sign bit (u = q + 128 in 0..255), byte_perm u under the 0x64 exponent byte (1024 + u exactly),
// subtract 1152. bf16 has 7 mantissa bits, so a byte under its 0x43 exponent (128, spacing 1)
// would put bit 7, the sign of q, into the exponent: the low 7 bits go under it instead,
// 128 + (q & 0x7f) exactly, and the sign bit picks what to subtract, 128 + 128 b7, whose bits
// are 0x4300 | b7 << 7: the same LOP3 on bit 7. Bytes 0 and 2 (1 and 3 after a shift) already
// sit in the low bytes of the two halves. bf16 takes 7 instructions per word against 13 through
// fp32.
template <typename T>
__device__ __forceinline__ void int8_values(uint32_t w, uint32_t (&out)[2]) {
  using T2 = typename Pair<T>::T2;
  if constexpr (std::is_same_v<T, half>) {
    const uint32_t u = w ^ 0x80808080u;
    const T2 bias = Pair<T>::make(1152.0f, 1152.0f);
    out[0] = bits(__hsub2(pair<T2>(__byte_perm(u, 0x64646464u, 0x4240)), bias));
    out[1] = bits(__hsub2(pair<T2>(__byte_perm(u, 0x64646464u, 0x4341)), bias));
  } else {
    const uint32_t magic = Pair<T>::kMagic;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint32_t v = w >> (8 * i);
      out[i] = bits(__hsub2(pair<T2>(and_or<0x007f007fu>(v, magic)),
                            pair<T2>(and_or<0x00800080u>(v, magic))));
    }
  }
}

// int8 -> s * q for the same pairs: int8_values, then one multiply by the scale in x's dtype
// (bf16 for bf16 x, as int4 and nf4 do).
template <typename T>
__device__ __forceinline__ void dequant_int8(uint32_t w, typename Pair<T>::T2 s,
                                             uint32_t (&out)[2]) {
  using T2 = typename Pair<T>::T2;
  int8_values<T>(w, out);
  out[0] = bits(__hmul2(pair<T2>(out[0]), s));
  out[1] = bits(__hmul2(pair<T2>(out[1]), s));
}

// The per-group constants of dequant_int4 from a scale and a zero point in quantized units.
template <typename T>
__device__ __forceinline__ void int4_group_constants(float scale, float zero,
                                                     typename Pair<T>::T2& magic_zero,
                                                     typename Pair<T>::T2& zs) {
  const float z_int = rintf(zero);
  const float z_frac_scaled = -scale * (zero - z_int);
  magic_zero = Pair<T>::make(Pair<T>::kMagicValue + z_int, Pair<T>::kMagicValue + z_int);
  zs = Pair<T>::make(z_frac_scaled, z_frac_scaled);
}

// Fills the per-lane NF4 pair table (kNF4TableWords words of shared memory, 16-byte aligned)
// cooperatively; the caller synchronises before the first lookup. The GEMV fills it in every
// block (896 blocks on 14336x4096), so each store writes 4 lanes' copies: 8 stores per thread of
// 256 instead of 32.
template <typename T>
__device__ __forceinline__ void fill_nf4_pair_table(uint32_t* table, int thread, int threads) {
  uint4* table4 = reinterpret_cast<uint4*>(table);
  for (int i = thread; i < kNF4TableWords / 4; i += threads) {
    const int byte = i / 8;
    const uint32_t v = bits(Pair<T>::make(kNF4Constant[byte & 0xf], kNF4Constant[byte >> 4]));
    table4[i] = make_uint4(v, v, v, v);
  }
}

}  // namespace qk::cuda
