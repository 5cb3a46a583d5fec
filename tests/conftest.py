"""Shared test helpers: the fp64 oracle, norm-wise relative error, and the odd-shape grid."""

import pytest
import torch

import qkernels as qk

# Shapes that catch edge cases: 1, odd, prime, one past a multiple of 64, SmolLM2's K = 576.
ODD_SIZES = (1, 3, 17, 64, 576, 577)

# Norm-wise error bounds of an output in the activation dtype against the fp64 reference that
# was computed from the same (rounded) x: fp32 accumulation order (fp32), or the final rounding
# to the output dtype (2^-11 for fp16, 2^-8 for bf16, with headroom for accumulation).
REL_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def fp64_reference(x, qw, bias=None):
    """x @ dequantize(qw).T (+ bias) in fp64, from the rounded values the kernel sees."""
    y = x.double() @ qk.dequantize(qw).double().T
    return y if bias is None else y + bias.double()


def rel_err(y, ref):
    diff = (y.double() - ref).norm()
    scale = ref.norm()
    return float(diff / scale) if scale > 0 else float(diff)


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
