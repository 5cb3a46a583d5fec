// Canonical weight formats: the one C++ copy of the constants in python/qkernels/formats.py.
// tests/test_formats.py checks these against Python through qkernels._C.format_constants().
// Compiles as C++ and CUDA, includes nothing from torch.
#pragma once

#include <cstdint>

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

// Bytes of packed codes per row of K weights.
QK_HOST_DEVICE int64_t packed_row_bytes(Format fmt, int64_t k) {
  return fmt == Format::kInt8 ? k : (k + 1) / 2;
}

// Number of quantization groups along K (the last one may be partial).
QK_HOST_DEVICE int64_t num_groups(int64_t k, int64_t group_size) {
  return (k + group_size - 1) / group_size;
}

}  // namespace qk
