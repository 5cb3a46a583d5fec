// Per-thread scratch memory for the SIMD kernels (converted and permuted activations, per-group
// sums of x, GEMM accumulators / GEMV outputs). Sized by x and by tiles, never by the weight; it grows and is
// reused.
//
// Defined in scratch.cpp, a file compiled without ISA flags, so that no std::vector code is
// instantiated inside an -mavx2 translation unit: such inline template code is emitted as a
// weak symbol, and the linker could keep the AVX2 copy for the whole binary.
#pragma once

#include <cstddef>

namespace qk::cpu {

enum class ScratchSlot : int {
  kActivations = 0,
  kGroupSums = 1,
  kAccumulators = 2,
  kPermutedActivations = 3,
  kDecodedAbsmax = 4,  // dispatch.cpp: double-quantized nf4 absmax of one tile of rows
  // Int8 activations (dispatch.cpp, gemv_a8_*.cpp): codes, block scales, int4 zero terms, and
  // the AVX2 kernel's per-pair scale vectors.
  kActivationCodes = 5,
  kActivationScales = 6,
  kActivationZeroTerms = 7,
  kActivationPairScales = 8,
  kCount = 9
};

// At least `count` floats, 64-byte aligned, valid until the next call with the same slot on
// this thread; contents unspecified.
float* scratch_floats(ScratchSlot slot, size_t count);

}  // namespace qk::cpu
