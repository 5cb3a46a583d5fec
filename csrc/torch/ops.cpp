// The op schemas of qkernels: every torch.ops.qkernels.* is defined here and nowhere else.
// Backends register implementations in their own files (bind_cpu.cpp, bind_cuda.cu); a backend
// that was not built registers nothing, and the schema stays.
#include <torch/library.h>

TORCH_LIBRARY(qkernels, m) {
  // y[..., n] = x[..., :] @ dequant(W)[n, :] (+ bias[n]), in the dtype of x, fp32 accumulation.
  // fmt is "int8" | "int4" | "nf4"; qweight/scales/zeros are the canonical tensors of DESIGN.md
  // section 3: qweight int8 [N, K] or uint8 [N, ceil(K/2)] (low nibble = even k);
  // scales fp32 [N, G] (nf4: absmax); zeros fp32 [N, G] for int4, None = symmetric (zero 8).
  m.def(
      "matmul(Tensor x, str fmt, Tensor qweight, Tensor scales, Tensor? zeros, int group_size, "
      "Tensor? bias) -> Tensor");
  // The same computation by the Triton kernels (python/qkernels/triton), registered from Python
  // for CUDA tensors (and for CPU tensors under TRITON_INTERPRET=1, for tests).
  m.def(
      "matmul_triton(Tensor x, str fmt, Tensor qweight, Tensor scales, Tensor? zeros, "
      "int group_size, Tensor? bias) -> Tensor");
  // nf4 with double-quantized absmax, read as stored (each backend decodes it where it loads it):
  // absmax[n, g] = 2^(absmax_offsets[b] + absmax_scales[b] * absmax_codes[n, g]), b = (n G + g) / 256;
  // absmax_codes uint8 [N, G]; absmax_scales, absmax_offsets fp32 [ceil(N G / 256)].
  // C++ impls for CPU and CUDA tensors, as for matmul.
  m.def(
      "matmul_nf4_dq(Tensor x, Tensor qweight, Tensor absmax_codes, Tensor absmax_scales, "
      "Tensor absmax_offsets, int group_size, Tensor? bias) -> Tensor");
  // matmul with int8 activations (CPU only): x taken as fp32 and quantized per block of 32
  // along K, s = max|x_block| / 127, code = round-half-even(x / s); then y = (code * s) @
  // dequant(W)^T (+ bias), by integer dots per block. fmt "int8" | "int4"; group_size a multiple
  // of 32 or >= K. Arguments as for matmul.
  m.def(
      "matmul_a8(Tensor x, str fmt, Tensor qweight, Tensor scales, Tensor? zeros, int group_size, "
      "Tensor? bias) -> Tensor");
  // The same computation by the Triton kernels, registered from Python like matmul_triton.
  m.def(
      "matmul_nf4_dq_triton(Tensor x, Tensor qweight, Tensor absmax_codes, Tensor absmax_scales, "
      "Tensor absmax_offsets, int group_size, Tensor? bias) -> Tensor");
}
