#include "dispatch.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>

#include "kernels.h"
#include "scratch.h"

namespace qk::cpu {

namespace {

// gemv_max_rows: measured on one thread of a Zen 3 EPYC (shared, noisy: best of 2 runs of 7),
// int4 g128, times in ms as GEMV / GEMM.

// Scalar, 1024x4096: M=1 8.2 / 13.5, M=2 16.8 / 17.2, M=4 32.6 / 24.2, M=8 68 / 39,
// M=16 143 / 67: the tiled GEMM wins from 3 rows on (GEMV is 2.1x slower at M=16).
constexpr KernelTable kScalarKernels{gemv_scalar, gemm_scalar, 2, gemv_a8_scalar};

#if defined(__x86_64__)
// AVX2, 4096x4096 cold: M=4 3.5 / 7.1, M=8 7.3 / 8.4, M=12 11.0 / 9.8, M=16 18.5 / 11.4.
// int8 crosses at the same place (M=8 8.0 / 12.6, M=12 13.2 / 11.3); nf4 g64 a little earlier
// (M=8 9.2 / 8.8), where the two are within noise.
// Re-measured after the GEMV block path (512x4096 in cache, us): int4 M=6 626 / 611, M=8
// 843 / 766; nf4 M=8 789 / 939; int8 M=8 791 / 991. The crossover stays near 8.
constexpr KernelTable kAvx2Kernels{gemv_avx2, gemm_avx2, 8, gemv_a8_avx2};
#endif
#if defined(__aarch64__)
// NEON: not measured on hardware yet (tested under qemu only); the AVX2 crossover, halved for
// registers half as wide, is a placeholder to replace with a measurement.
constexpr KernelTable kNeonKernels{gemv_neon, gemm_neon, 4, gemv_a8_neon};
#endif

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kNeon: return "neon";
  }
  return "unknown";
}

bool parse_isa(const char* name, Isa* isa) {
  for (Isa candidate : {Isa::kScalar, Isa::kAvx2, Isa::kNeon}) {
    if (std::strcmp(name, isa_name(candidate)) == 0) {
      *isa = candidate;
      return true;
    }
  }
  return false;
}

bool isa_available(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return true;
    case Isa::kAvx2:
#if defined(__x86_64__)
      // The AVX2 files also use FMA and F16C; CPUs with AVX2 but without them exist (some VIA).
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
#else
      return false;
#endif
    case Isa::kNeon:
#if defined(__aarch64__)
      return true;  // Advanced SIMD is part of the aarch64 base architecture
#else
      return false;
#endif
  }
  return false;
}

Isa best_isa() {
  static const Isa best = isa_available(Isa::kAvx2)   ? Isa::kAvx2
                          : isa_available(Isa::kNeon) ? Isa::kNeon
                                                      : Isa::kScalar;
  return best;
}

const KernelTable& kernels(Isa isa) {
#if defined(__x86_64__)
  if (isa == Isa::kAvx2 && isa_available(isa)) return kAvx2Kernels;
#endif
#if defined(__aarch64__)
  if (isa == Isa::kNeon) return kNeonKernels;
#endif
  return kScalarKernels;
}

namespace {

// Decoded absmax handed to one kernel call, at most this many floats (256 KiB, which stays in L2
// while the kernel reads it back) and at least one row of W. Sized by a constant and K, never by
// N: the rows of a call are decoded and multiplied one tile after another.
constexpr int64_t kDecodedAbsmaxFloats = int64_t(64) << 10;

// The decode is plain arithmetic that the compiler vectorises; on x86-64 it is also compiled for
// AVX2 and the loader picks that clone where the CPU has it: 8 lanes instead of SSE2's 4, 0.98
// against 1.6 ns an absmax (one thread, load average 5).
#if defined(__x86_64__)
#define QK_DECODE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define QK_DECODE_CLONES
#endif

// out[i] = decode_absmax(codes[i], scale, offset), i < count: codes of one block.
QK_DECODE_CLONES void decode_block(const uint8_t* codes, int64_t count, float scale, float offset,
                                   float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = decode_absmax(codes[i], scale, offset);
}

// out[i] = absmax at flat index first + i of [n, G], i < count.
void decode_absmax_range(const DoubleQuantAbsmax& dq, int64_t first, int64_t count, float* out) {
  const int64_t end = first + count;
  for (int64_t begin = first; begin < end;) {
    const int64_t block = begin / kDoubleQuantBlock;
    const int64_t block_end = std::min(end, (block + 1) * kDoubleQuantBlock);
    decode_block(dq.codes + begin, block_end - begin, dq.scales[block], dq.offsets[block],
                 out + (begin - first));
    begin = block_end;
  }
}

// Double-quantized nf4: per tile of weight rows, decode their absmax into a per-thread buffer
// and run the unchanged kernels on the tile as if it were a weight with stored absmax.
Status qmatmul_double_quant(Isa isa, const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  if (Status status = validate_double_quant(p); status != Status::kOk) return status;
  const int64_t groups = num_groups(p.k, p.group_size);
  const int64_t tile_rows =
      std::min(n_end - n_begin, std::max<int64_t>(1, kDecodedAbsmaxFloats / groups));
  float* absmax = scratch_floats(ScratchSlot::kDecodedAbsmax, size_t(tile_rows * groups));
  const int64_t y_bytes = p.y_dtype == DType::kF32 ? 4 : 2;  // bias and y
  for (int64_t n0 = n_begin; n0 < n_end; n0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, n_end - n0);
    decode_absmax_range(p.absmax_dq, n0 * groups, rows * groups, absmax);
    QMatmulParams tile = p;  // rows n0 .. n0 + rows of W, into the same columns of y
    tile.n = rows;
    tile.qweight = static_cast<const uint8_t*>(p.qweight) + n0 * p.qweight_row_stride;
    tile.scales = absmax;
    tile.scales_row_stride = groups;
    tile.absmax_dq = {};
    tile.bias = p.bias ? static_cast<const uint8_t*>(p.bias) + n0 * y_bytes : nullptr;
    tile.y = static_cast<uint8_t*>(p.y) + n0 * y_bytes;
    if (Status status = qmatmul(isa, tile, 0, rows); status != Status::kOk) return status;
  }
  return Status::kOk;
}

}  // namespace

Status qmatmul(Isa isa, const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  if (p.absmax_dq.codes) return qmatmul_double_quant(isa, p, n_begin, n_end);
  const KernelTable& table = kernels(isa);
  return p.m <= table.gemv_max_rows ? table.gemv(p, n_begin, n_end)
                                    : table.gemm(p, n_begin, n_end);
}

Status qmatmul_a8(Isa isa, const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  if (Status status = validate_a8(p); status != Status::kOk) return status;
  const int64_t pairs = activation_pairs(p.k);
  const int64_t groups = num_groups(p.k, p.group_size);
  const size_t code_bytes = p.fmt == Format::kNF4 ? sizeof(int16_t) : sizeof(int8_t);
  void* codes = scratch_floats(ScratchSlot::kActivationCodes,
                               size_t(p.m * pairs * kActivationPair) * code_bytes / sizeof(float));
  float* scales = scratch_floats(ScratchSlot::kActivationScales, size_t(p.m * pairs * 2));
  float* zero_terms = scratch_floats(ScratchSlot::kActivationZeroTerms, size_t(p.m * groups));
  quantize_activations(p, codes, scales, zero_terms);
  const QuantizedActivations xq{codes, scales, zero_terms, pairs, groups};
  return kernels(isa).gemv_a8(p, xq, n_begin, n_end);
}

}  // namespace qk::cpu
