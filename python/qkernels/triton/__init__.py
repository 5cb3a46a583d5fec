"""The Triton backend: registers the impl of torch.ops.qkernels.matmul_triton.

Importing this module (ops.py does so on the first triton-backend call) registers the impl for
CUDA tensors, and for CPU tensors too when TRITON_INTERPRET=1 (Triton's interpreter: the tests'
way to run the kernels without a GPU). It queries no GPU: device properties are read at the
first launch.

    gemv.py  M <= GEMV_MAX_M: CUDA-core multiply-adds on weight tiles dequantized in registers
    gemm.py  larger M: tl.dot on weight tiles dequantized in registers
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .. import formats
from . import common, gemm, gemv

# Rows of x up to which the GEMV kernel beats the GEMM kernel. GEMV spends M fp32 FMAs per weight
# on CUDA cores; GEMM pads M to 16 on tensor cores but routes each weight tile through shared
# memory. To be measured on each GPU: `python bench/triton_dev.py --threshold` times both kernels
# at M = 1..16 on Llama shapes; set this to the largest M where GEMV is faster.
GEMV_MAX_M = 4


@functools.lru_cache(maxsize=None)
def _nf4_table(device: torch.device) -> torch.Tensor:
    # Cached so a CUDA-graph capture after a warm-up call makes no host-to-device copy.
    return formats.nf4_table(device)


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def matmul_triton(x, fmt, qweight, scales, zeros, group_size, bias):
    """Impl of qkernels::matmul_triton (arguments already checked by ops.check_matmul_args)."""
    return _launch(x, fmt, qweight, scales, zeros, group_size, bias, None)


def matmul_nf4_dq_triton(x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size,
                         bias):
    """Impl of qkernels::matmul_nf4_dq_triton (arguments checked by ops.check_nf4_dq_args): the
    same kernels, which load the 8-bit absmax codes in place of fp32 absmax and decode them."""
    return _launch(x, "nf4", qweight, absmax_codes, None, group_size, bias,
                   (absmax_scales.contiguous(), absmax_offsets.contiguous()))


def _launch(x, fmt, qweight, scales, zeros, group_size, bias, absmax_dq):
    k = x.shape[-1]
    n = qweight.shape[0]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m > 0:
        kernel = gemv if m <= GEMV_MAX_M else gemm
        with _device_guard(x.device):
            kernel.matmul(x2, fmt, qweight.contiguous(), scales.contiguous(),
                          None if zeros is None else zeros.contiguous(), group_size,
                          None if bias is None else bias.contiguous(), _nf4_table(x.device), y,
                          absmax_dq=absmax_dq)
    return y.reshape(*x.shape[:-1], n)


_DEVICE_TYPES = ("cuda", "cpu") if common.interpreting() else ("cuda",)
torch.library.register_kernel("qkernels::matmul_triton", _DEVICE_TYPES, matmul_triton)
torch.library.register_kernel("qkernels::matmul_nf4_dq_triton", _DEVICE_TYPES,
                              matmul_nf4_dq_triton)
