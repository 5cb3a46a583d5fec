#include "dispatch.h"

#include <cstring>
#include <initializer_list>

namespace qk::cpu {

namespace {

// Scalar: the tiled GEMM reuses each dequantized weight across rows of x, which pays from a
// handful of rows on (4096x4096 int4: GEMV 8x slower than GEMM at M=16, equal near M=4).
constexpr KernelTable kScalarKernels{gemv_scalar, gemm_scalar, 4};

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

bool isa_available(Isa isa) { return isa == Isa::kScalar; }

Isa best_isa() { return Isa::kScalar; }

const KernelTable& kernels(Isa /*isa*/) { return kScalarKernels; }

Status qmatmul(Isa isa, const QMatmulParams& p, int64_t n_begin, int64_t n_end) {
  const KernelTable& table = kernels(isa);
  return p.m <= table.gemv_max_rows ? table.gemv(p, n_begin, n_end)
                                    : table.gemm(p, n_begin, n_end);
}

}  // namespace qk::cpu
