"""Int8 activations (W8A8, W4A8): the one definition of the opt-in mode's semantics.

x is taken as fp32 and cut along K into blocks of ``BLOCK`` (the last one may be ragged); each
block is quantized symmetrically, ``s = max|x_block| / 127``, ``code = round-half-even(x / s)``
in [-127, 127] (``s = 0`` gives code 0). Then ``y = (code * s) @ W.T (+ bias)``, W =
``dequantize_weight(...)`` (dequantize(W), except for nf4: below).
The CPU kernels (csrc/core/qmatmul_a8.h) compute the codes bit-identically (fp32 division,
round half to even) and the dot products exactly in integers; only the fp32 scale products and
their sums round (and nf4's block dots, up to 2^27, on their conversion to fp32). The reference
backend computes exactly this definition.

Weight groups must be whole blocks (group_size a multiple of 32, or per channel).

nf4 has no integer codes, so the mode gives it some: the NF4 table in Q15 fixed point,
``NF4_TABLE_Q15[q] = round(NF4_TABLE[q] * 32767)``, and ``w = absmax * NF4_TABLE_Q15[q] / 32767``
(``dequantize_weight``). The kernels multiply the int16 table entries with the int16-widened x
codes exactly (32 products of at most 32767 * 127 per block stay below 2^31); the table itself
is within 0.5 / 32767 = 1.5e-5 of NF4_TABLE.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import formats

# Kept equal to kActivationBlock / kActivationMaxCode in csrc/core/qmatmul_a8.h
# (tests/test_a8.py checks the pair through qkernels._C.format_constants()).
BLOCK = 32
MAX_CODE = 127
MODES = (None, "int8")
FORMATS = ("int8", "int4", "nf4")
# nf4 weights as int16 codes: the table in Q15 (kNF4TableQ15 in csrc/core/qmatmul_a8.h, checked
# by tests/test_a8.py), each value NF4_Q15_ONE times its NF4_TABLE entry, rounded.
NF4_Q15_ONE = 32767
NF4_TABLE_Q15 = tuple(round(value * NF4_Q15_ONE) for value in formats.NF4_TABLE)


def check_activations(activations) -> Optional[str]:
    """The mode itself: None (weight-only, the default) or "int8"."""
    if activations not in MODES:
        raise ValueError(f"activations: expected one of {MODES}, got {activations!r}")
    return activations


def weight_conditions(fmt: str, group_size: int, k):
    """What a weight needs for int8 activations, as (condition, message) pairs: the conditions
    stay symbolic under tracing (k may be a SymInt), for the op's fake impl to torch._check."""
    return (
        (fmt in FORMATS,
         lambda: f"fmt: expected one of {FORMATS} with activations='int8', got {fmt!r}"),
        (group_size % BLOCK == 0 or group_size >= k,
         lambda: f"group_size: expected a multiple of {BLOCK} or >= K={k} (per channel) with "
                 f"activations='int8', got {group_size}"),
    )


def check_weight(fmt: str, group_size: int, k: int, double_quant: bool = False) -> None:
    """Whether a weight can be multiplied with int8 activations; ValueError naming the argument.
    nf4 with double-quantized absmax is not taken: the mode's kernels read a plain absmax."""
    if double_quant:
        raise ValueError("activations: 'int8' takes nf4 with a plain absmax, got double_quant "
                         "(absmax as 8-bit codes); use activations=None, or quantize without "
                         "double_quant")
    for condition, message in weight_conditions(fmt, group_size, k):
        if not condition:
            raise ValueError(message())


def dequantize_weight(fmt: str, k: int, group_size: int, qweight: torch.Tensor,
                      scales: torch.Tensor, zeros: Optional[torch.Tensor],
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight [N, K] the mode multiplies, in ``dtype`` (fp64 in tests: exact): the canonical
    dequantization for int8 and int4, the Q15 table times absmax / 32767 for nf4."""
    if fmt != "nf4":
        return formats.dequantize_tensors(fmt, k, group_size, qweight, scales, zeros).to(dtype)
    table = torch.tensor(NF4_TABLE_Q15, dtype=dtype, device=qweight.device) / NF4_Q15_ONE
    codes = formats.unpack_codes(qweight, fmt, k).long()
    absmax = scales.to(dtype)[:, torch.arange(k, device=qweight.device) // group_size]
    return table[codes] * absmax


def quantize_activations(x: torch.Tensor) -> tuple:
    """(codes, scales): codes int8 [..., K], scales fp32 [..., ceil(K / 32)], x taken as fp32."""
    x = x.to(torch.float32)
    k = x.shape[-1]
    blocks = -(-k // BLOCK)
    padded = torch.nn.functional.pad(x, (0, blocks * BLOCK - k)).unflatten(-1, (blocks, BLOCK))
    scales = padded.abs().amax(-1) / MAX_CODE
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(padded / safe.unsqueeze(-1)).clamp(-MAX_CODE, MAX_CODE)
    codes = torch.where(scales.unsqueeze(-1) > 0, codes, torch.zeros_like(codes))
    return codes.flatten(-2)[..., :k].to(torch.int8), scales


def dequantize_activations(codes: torch.Tensor, scales: torch.Tensor,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """code * s per block, in ``dtype`` (fp64 in tests: exact)."""
    k = codes.shape[-1]
    per_k = scales.to(dtype).repeat_interleave(BLOCK, dim=-1)[..., :k]
    return codes.to(dtype) * per_k


def fake_quantize(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x as the int8-activation kernels see it: dequantize_activations(quantize_activations(x))."""
    return dequantize_activations(*quantize_activations(x), dtype=dtype)
