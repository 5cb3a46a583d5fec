// Run-time choice of the CPU kernel path: a table of function pointers per instruction set,
// picked from CPU feature detection or forced with QKERNELS_CPU_ISA. Torch-free.
#pragma once

#include <cstdint>

#include "../core/qmatmul.h"
#include "../core/qmatmul_a8.h"

namespace qk::cpu {

enum class Isa : int32_t { kScalar = 0, kAvx2 = 1, kNeon = 2 };

using KernelFn = Status (*)(const QMatmulParams&, int64_t n_begin, int64_t n_end);
using A8KernelFn = Status (*)(const QMatmulParams&, const QuantizedActivations&, int64_t n_begin,
                              int64_t n_end);

struct KernelTable {
  KernelFn gemv;
  KernelFn gemm;
  // Rows of x up to which the GEMV beats the GEMM on this path (measured: see dispatch.cpp).
  int64_t gemv_max_rows;
  A8KernelFn gemv_a8;  // int8 activations (qmatmul_a8.h), at every m
};

const char* isa_name(Isa isa);
// Parses "scalar", "avx2", "neon"; false for anything else.
bool parse_isa(const char* name, Isa* isa);
// Compiled into this binary and supported by the CPU it runs on.
bool isa_available(Isa isa);
// The best available path.
Isa best_isa();
const KernelTable& kernels(Isa isa);

// Columns [n_begin, n_end) of y on the given path, GEMV or GEMM by p.m. A double-quantized nf4
// weight (p.absmax_dq) is decoded here, one tile of rows at a time, for the kernels.
Status qmatmul(Isa isa, const QMatmulParams& p, int64_t n_begin, int64_t n_end);

// The same with int8 activations (qmatmul_a8.h): quantizes x into per-thread scratch, then runs
// the path's kernel on columns [n_begin, n_end).
Status qmatmul_a8(Isa isa, const QMatmulParams& p, int64_t n_begin, int64_t n_end);

}  // namespace qk::cpu
