// launch_dequantize: W [n, k] in fp16 / bf16 / fp32 from the canonical packed tensors, for the
// matmuls with more rows of x than the GEMV takes (the binding hands the result to cuBLAS).
#include <type_traits>

#include "common.cuh"
#include "gemv_mma.h"
#include "qmatmul_cuda.h"
#include "static_switch.h"
#include "unpack.cuh"

namespace qk::cuda {
namespace {

constexpr int kDequantK = 8;  // weights per thread: one 16-byte store of fp16 / bf16
constexpr int kDequantThreads = 256;

// One thread per 8 consecutive weights of a row: any shape, group size and output dtype (fp32
// for fp32 x), for what dequantize_vector_kernel does not take. kDqAbsmax (both kernels): nf4
// whose absmax is decoded from p.absmax_dq (load_scale).
template <Format kFmt, typename Out, bool kDqAbsmax>
__global__ void __launch_bounds__(kDequantThreads)
    dequantize_kernel(const QMatmulParams p,  // weight fields only
                      Out* w_out,             // [n, k], row stride k
                      int64_t row_chunks,     // ceil(k / 8)
                      bool vector_store)      // k % 8 == 0 and w_out 16-byte aligned
{
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n * row_chunks) return;
  const int64_t n = i / row_chunks, k0 = (i % row_chunks) * kDequantK;
  const auto* w_row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
  const int64_t s_row = n * p.scales_row_stride;
  const float* z_row = p.zeros ? p.zeros + n * p.scales_row_stride : nullptr;

  int64_t g = k0 / p.group_size, next_group_k = (g + 1) * p.group_size;
  float scale = load_scale<kDqAbsmax>(p, s_row + g), zero = zero_point<kFmt>(z_row, g);
  Out v[kDequantK];
#pragma unroll
  for (int j = 0; j < kDequantK; ++j) {
    const int64_t k = k0 + j;
    if (k < p.k) {
      if (k == next_group_k) {  // groups may be smaller than 8: step one at a time
        ++g;
        next_group_k += p.group_size;
        scale = load_scale<kDqAbsmax>(p, s_row + g);
        zero = zero_point<kFmt>(z_row, g);
      }
      v[j] = from_float<Out>(scale * (code_value<kFmt>(w_row, k) - zero));
    }
  }
  Out* out = w_out + n * p.k + k0;
  if (vector_store) {
    static_assert(sizeof(v) % 16 == 0, "whole 16-byte stores");
#pragma unroll
    for (int b = 0; b < int(sizeof(v) / 16); ++b) {
      reinterpret_cast<uint4*>(out)[b] = reinterpret_cast<const uint4*>(v)[b];
    }
  } else {
    for (int j = 0; j < kDequantK && k0 + j < p.k; ++j) out[j] = v[j];
  }
}


// One thread per 8 consecutive weights of a row, unpacked in registers with the GEMV's helpers
// and written as one 16-byte store, so that a warp writes 512 contiguous bytes per instruction
// (the output is 4x (int4) or 2x (int8) the bytes read: the stores set the speed). A version
// with 32 weights per thread (one 16-byte load, four 16-byte stores 64 bytes apart, so each warp
// store touched 32 separate pieces) left dequantize + cuBLAS where it was (bench/NOTES.md).
template <Format kFmt, typename T, bool kDqAbsmax>
__global__ void __launch_bounds__(kDequantThreads)
    dequantize_vector_kernel(const QMatmulParams p,  // weight fields only
                             T* w_out,                // [n, k], row stride k
                             int64_t row_chunks)      // k / 8
{
  using T2 = typename Pair<T>::T2;
  [[maybe_unused]] __shared__ uint32_t nf4_pairs[256];  // nf4: value pair of each code byte
  if constexpr (kFmt == Format::kNF4) {
    // 256 entries, not the GEMV's per-lane copies: the kernel is bound by its stores, and
    // filling 32 KiB per block would cost more than the bank conflicts of random lookups.
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      nf4_pairs[b] = bits(Pair<T>::make(kNF4Constant[b & 0xf], kNF4Constant[b >> 4]));
    }
    __syncthreads();
  }
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n * row_chunks) return;
  const int64_t n = i / row_chunks, c = i % row_chunks;
  const auto* codes = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
  const int64_t g = c * 8 / p.group_size;  // 8 weights never straddle two groups
  const float scale = load_scale<kDqAbsmax>(p, n * p.scales_row_stride + g);
  const T2 s2 = Pair<T>::make(scale, scale);

  uint32_t out[4];  // weights 8c .. 8c + 7 in k order, two per word
  if constexpr (kFmt == Format::kInt4) {
    const uint32_t w = __ldg(reinterpret_cast<const uint32_t*>(codes) + c);
    const float zero = p.zeros ? p.zeros[n * p.scales_row_stride + g] : kInt4SymmetricZero;
    T2 magic_zero2, zs2;
    int4_group_constants<T>(scale, zero, magic_zero2, zs2);
    uint32_t q[4];  // pairs (k0, k4), (k1, k5), (k2, k6), (k3, k7)
    dequant_int4<T>(w, magic_zero2, s2, zs2, q);
    out[0] = __byte_perm(q[0], q[1], 0x5410);
    out[1] = __byte_perm(q[2], q[3], 0x5410);
    out[2] = __byte_perm(q[0], q[1], 0x7632);
    out[3] = __byte_perm(q[2], q[3], 0x7632);
  } else if constexpr (kFmt == Format::kNF4) {
    const uint32_t w = __ldg(reinterpret_cast<const uint32_t*>(codes) + c);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      out[j] = bits(__hmul2(pair<T2>(nf4_pairs[(w >> (8 * j)) & 0xffu]), s2));
    }
  } else {
    const uint2 w = __ldg(reinterpret_cast<const uint2*>(codes) + c);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      uint32_t q[2];  // pairs (k0, k2), (k1, k3) of word j
      dequant_int8<T>(j == 0 ? w.x : w.y, s2, q);
      out[2 * j] = __byte_perm(q[0], q[1], 0x5410);
      out[2 * j + 1] = __byte_perm(q[0], q[1], 0x7632);
    }
  }
  reinterpret_cast<uint4*>(w_out + n * p.k)[c] = make_uint4(out[0], out[1], out[2], out[3]);
}

// What dequantize_vector_kernel needs: fp16 / bf16 output, K a multiple of 8, 8 weights inside
// one group (the group a multiple of 8, or one group per row), aligned code rows and output.
bool vector_kernel_applies(const QMatmulParams& p, const void* w_out, DType out_dtype) {
  const int64_t code_bytes = p.fmt == Format::kInt8 ? 8 : 4;  // per 8 weights
  return out_dtype != DType::kF32 && p.k % 8 == 0 &&
         (p.group_size % 8 == 0 || p.group_size >= p.k) &&
         reinterpret_cast<uintptr_t>(p.qweight) % code_bytes == 0 &&
         p.qweight_row_stride % code_bytes == 0 && aligned_16B(w_out);
}

}  // namespace

cudaError_t launch_dequantize(const QMatmulParams& p, void* w_out, DType out_dtype,
                              cudaStream_t stream) {
  // Calls run(fmt_tag, dq_tag) with the weight's format and kDqAbsmax as integral constants.
  const auto for_weight_kind = [&](auto run) {
    if (p.absmax_dq.codes) {
      return run(std::integral_constant<Format, Format::kNF4>{}, std::true_type{});
    }
    return QK_FORMAT_SWITCH(p.fmt, kFmt, [&] {
      return run(std::integral_constant<Format, kFmt>{}, std::false_type{});
    });
  };
  if (vector_kernel_applies(p, w_out, out_dtype)) {
    const int64_t row_chunks = p.k / 8;
    const int64_t blocks = (p.n * row_chunks + kDequantThreads - 1) / kDequantThreads;
    if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    return for_weight_kind([&](auto fmt_tag, auto dq_tag) {
      constexpr Format kFmt = decltype(fmt_tag)::value;
      constexpr bool kDq = decltype(dq_tag)::value;
      if (out_dtype == DType::kF16) {
        dequantize_vector_kernel<kFmt, half, kDq>
            <<<unsigned(blocks), kDequantThreads, 0, stream>>>(p, static_cast<half*>(w_out),
                                                               row_chunks);
      } else {
        dequantize_vector_kernel<kFmt, __nv_bfloat16, kDq>
            <<<unsigned(blocks), kDequantThreads, 0, stream>>>(
                p, static_cast<__nv_bfloat16*>(w_out), row_chunks);
      }
      return cudaGetLastError();
    });
  }
  const int64_t row_chunks = (p.k + kDequantK - 1) / kDequantK;
  const int64_t blocks = (p.n * row_chunks + kDequantThreads - 1) / kDequantThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const bool vector_store = p.k % kDequantK == 0 && aligned_16B(w_out);
  return for_weight_kind([&](auto fmt_tag, auto dq_tag) {
    constexpr Format kFmt = decltype(fmt_tag)::value;
    constexpr bool kDq = decltype(dq_tag)::value;
    return QK_DTYPE_SWITCH(out_dtype, Out, [&] {
      dequantize_kernel<kFmt, Out, kDq><<<unsigned(blocks), kDequantThreads, 0, stream>>>(
          p, static_cast<Out*>(w_out), row_chunks, vector_store);
      return cudaGetLastError();
    });
  });
}

}  // namespace qk::cuda
