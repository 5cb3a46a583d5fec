"""Shared test helpers: the fp64 oracle, relative errors, the odd-shape grid, and the GPU fuzz
tests' strategies and weights."""

import os

import pytest
import torch
from hypothesis import strategies as st

import qkernels as qk

# Shapes that catch edge cases: 1, odd, prime, one past a multiple of 64, SmolLM2's K = 576.
ODD_SIZES = (1, 3, 17, 64, 576, 577)

# Norm-wise error bounds of an output in the activation dtype against the fp64 reference that
# was computed from the same (rounded) x: fp32 accumulation order (fp32), or the final rounding
# to the output dtype (2^-11 for fp16, 2^-8 for bf16, with headroom for accumulation).
REL_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


# The GPU fuzz tests' sizes: any small size, or one at or next to a threshold of a backend's
# dispatch (tile edges by M; weights on both sides of 2^24 and 2^25 elements, where the CUDA
# and Triton GEMMs change their row limits and tiles: csrc/cuda/qmatmul_cuda.h,
# python/qkernels/triton/__init__.py). The CUDA limit for weights above 2^27 elements has a test
# of its own (test_cuda's test_huge_weight_rows_of_x): such weights are too slow to fuzz.
GPU_FUZZ_ROWS = st.one_of(st.integers(1, 40), st.sampled_from(
    (63, 64, 65, 96, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1024, 1536, 1537)))
GPU_FUZZ_N = st.one_of(st.integers(1, 300), st.sampled_from((576, 1024, 4095, 4096, 6144, 8192)))
GPU_FUZZ_K = st.one_of(st.integers(1, 300), st.sampled_from((576, 577, 1024, 4096, 4160, 8192)))
# The weights both GPU backends take: (format, quantize() options), and group sizes.
QUANTIZE_MODES = (("int8", {}), ("int4", {}), ("int4", {"symmetric": True}), ("nf4", {}),
                  ("nf4", {"double_quant": True}))
GPU_GROUP_SIZES = (32, 64, 128, 256, -1)
GPU_FUZZ_MODES = st.sampled_from(QUANTIZE_MODES)
GPU_FUZZ_GROUPS = st.sampled_from(GPU_GROUP_SIZES)
GPU_FUZZ_DTYPES = st.sampled_from((torch.float16, torch.bfloat16, torch.float32))
# Examples per GPU fuzz test: QKERNELS_FUZZ_EXAMPLES scales them (under compute-sanitizer, where
# every launch is much slower, a fraction of them).
GPU_FUZZ_SCALE = float(os.environ.get("QKERNELS_FUZZ_EXAMPLES", "1"))


def gpu_fuzz_examples(default: int) -> int:
    return max(1, round(default * GPU_FUZZ_SCALE))


# How x is laid out: contiguous, one element past a 16-byte boundary, every other column.
GPU_FUZZ_X_LAYOUTS = st.sampled_from(("contiguous", "misaligned", "strided"))


def gpu_fuzz_weight(n, k, device):
    """Random weights, rows of different scale, every |w| >= 0.1: so every group's scale stays in
    fp16's normal range, the domain README "Use" states for fp16 activations (H100 call n12 of
    25 Nov, fifth session, drew a lone int8 weight of |w| ~ 8e-4 outside it)."""
    z = torch.randn(n, k, device=device)
    return torch.sign(z) * (z.abs() + 0.2) * (torch.rand(n, 1, device=device) + 0.5)


def laid_out(x, layout):
    """A copy of x (2-D) in ``layout`` (GPU_FUZZ_X_LAYOUTS), equal in value."""
    m, k = x.shape
    if layout == "misaligned":
        flat = torch.empty(1 + m * k, dtype=x.dtype, device=x.device)
        out = flat[1:].view(m, k)
    elif layout == "strided":
        out = torch.empty(m, 2 * k, dtype=x.dtype, device=x.device)[:, ::2]
    else:
        return x
    out.copy_(x)
    return out


def fp64_reference(x, qw, bias=None):
    """x @ dequantize(qw).T (+ bias) in fp64, from the rounded values the kernel sees."""
    y = x.double() @ qk.dequantize(qw).double().T
    return y if bias is None else y + bias.double()


def rel_err(y, ref):
    diff = (y.double() - ref).norm()
    scale = ref.norm()
    return float(diff / scale) if scale > 0 else float(diff)


def normwise_rel_err(y, ref, x, w, bias=None):
    """||y - ref|| over what ||ref|| is for random data: ||x|| ||W|| / sqrt(K), with the bias's
    share, sqrt(M) ||bias||, added in quadrature. Unlike ||ref|| it cannot collapse when a few
    outputs cancel to near zero (one output of N = M = 1), and a y dominated by its bias is
    rounded at the bias's scale."""
    rows = x.numel() // x.shape[-1]
    scale = (x.double().norm() * w.double().norm()) ** 2 / x.shape[-1]
    if bias is not None:
        scale = scale + rows * bias.double().norm() ** 2
    diff = (y.double() - ref).norm()
    return float(diff / scale.sqrt()) if scale > 0 else float(diff)


def random_weight(n, k, dtype=torch.float32, device="cpu"):
    # Heavy-ish tails like LLM weights, so groups have distinct ranges.
    return (torch.randn(n, k, device=device) * torch.rand(n, 1, device=device) * 0.1).to(dtype)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)
