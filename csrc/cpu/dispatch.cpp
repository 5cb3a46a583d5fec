#include "dispatch.h"

#include <cstring>
#include <initializer_list>

#include "kernels.h"

namespace qk::cpu {

namespace {

// Scalar: the tiled GEMM reuses each dequantized weight across rows of x, which pays from a
// handful of rows on (4096x4096 int4: GEMV 8x slower than GEMM at M=16, equal near M=4).
constexpr KernelTable kScalarKernels{gemv_scalar, gemm_scalar, 4};

#if defined(__x86_64__)
constexpr KernelTable kAvx2Kernels{gemv_avx2, gemm_avx2, 4};
#endif
#if defined(__aarch64__)
constexpr KernelTable kNeonKernels{gemv_neon, gemm_neon, 4};
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

Status qmatmul(Isa isa, const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  const KernelTable& table = kernels(isa);
  return p.m <= table.gemv_max_rows ? table.gemv(p, n_begin, n_end)
                                    : table.gemm(p, n_begin, n_end);
}

}  // namespace qk::cpu
