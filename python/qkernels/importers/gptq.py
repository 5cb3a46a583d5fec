"""GPTQ and AWQ 4-bit checkpoints (int32-packed codes) into the canonical int4 format.

Both store, per linear layer of W [N, K] with G = ceil(K / group_size) groups, fp16 ``scales``
[G, N] and integer zero points packed eight to an int32 in ``qzeros`` [G, N / 8]; the value of
a weight is scales * (q - zero). Nibble i of a 32-bit word is bits 4i..4i+3.

- GPTQ (AutoGPTQ, GPTQModel, transformers' GPTQ integration): ``qweight`` int32 [K / 8, N], each
  word packs 8 consecutive k of one column, k = 8r + i in nibble i; ``qzeros`` nibble i of word c
  is column 8c + i. Checkpoints in the original format ("gptq", AutoGPTQ) store zero - 1 (the
  kernels add 1 back, so a stored 15 means 16); GPTQModel's "gptq_v2" stores the zero itself.
  ``g_idx`` int32 [K] gives each input channel's group. Without act-order it is k // group_size.
  With act-order (desc_act) groups are made in order of decreasing activation, so g_idx is a
  shuffled assignment; our kernels need each group contiguous along K.
- AWQ (AutoAWQ "GEMM" version): ``qweight`` int32 [K, N / 8], each word packs 8 columns of one
  k, interleaved: nibble i holds column 8c + AWQ_PACK_ORDER[i]; ``qzeros`` likewise.

Act-order is handled by a permutation of K: the importer sorts the input channels by group
(stable), so W[:, perm] has contiguous groups, and returns ``perm``; a layer then computes
y = x[..., perm] @ W[:, perm].T, which equals x @ W.T. The gather of x (M * K elements) is
cheap next to the weights, and the weight layout stays what every backend reads.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import formats
from ..formats import QuantizedWeight
from ..nn import QuantLinear

NIBBLES_PER_WORD = 8
GPTQ_FORMATS = ("gptq", "gptq_v2")
# AWQ's GEMM packing puts column 8c + AWQ_PACK_ORDER[i] into nibble i of word c.
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def unpack_int32_nibbles(words: torch.Tensor) -> torch.Tensor:
    """int32 [..., W] -> uint8 [..., 8 W]: nibble i of word w becomes element 8 w + i."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=words.device)
    nibbles = (words[..., None] >> shifts) & 0xF   # arithmetic shift: the mask drops the sign
    return nibbles.to(torch.uint8).flatten(-2)


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
              g_idx: Optional[torch.Tensor] = None, *, group_size: int,
              checkpoint_format: str = "gptq") -> tuple:
    """One GPTQ layer (bits = 4) -> (QuantizedWeight int4 [N, K], perm).

    perm is None when the groups are already contiguous along K (no act-order); otherwise an
    int64 [K] index: the returned weight is W[:, perm], so y = x[..., perm] @ dequantize(qw).T.
    Zero points that are all 8 give the symmetric form (zeros None). group_size: the
    checkpoint's, -1 for one group per row. checkpoint_format: "gptq" (zero - 1 stored,
    AutoGPTQ and most published checkpoints) or "gptq_v2" (GPTQModel's).
    """
    if checkpoint_format not in GPTQ_FORMATS:
        raise ValueError(f"checkpoint_format: expected one of {GPTQ_FORMATS}, got "
                         f"{checkpoint_format!r}")
    _check_int32("qweight", qweight, 2)
    k, n = qweight.shape[0] * NIBBLES_PER_WORD, qweight.shape[1]
    if n % NIBBLES_PER_WORD:
        raise ValueError(f"qweight: expected N (dim 1) a multiple of 8, got {n}")
    group_size = _resolve_group_size(group_size, k)
    groups = formats.num_groups(k, group_size)
    _check_int32("qzeros", qzeros, 2, (groups, n // NIBBLES_PER_WORD))
    _check_scales(scales, (groups, n))

    codes = unpack_int32_nibbles(qweight.T.contiguous()).contiguous()   # [N, K]
    zeros = unpack_int32_nibbles(qzeros).T.to(torch.float32)           # [N, G]
    if checkpoint_format == "gptq":
        zeros += 1
    perm = None
    if g_idx is not None:
        perm = _act_order_permutation(g_idx, k, group_size, groups)
        if perm is not None:
            codes = codes[:, perm]
    qw = _int4_weight(codes, scales, zeros, group_size)
    return qw, perm


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, *,
             group_size: int) -> QuantizedWeight:
    """One AWQ GEMM-packed layer (bits = 4) -> QuantizedWeight int4 [N, K].
    group_size: the checkpoint's "q_group_size", -1 for one group per row."""
    _check_int32("qweight", qweight, 2)
    k, n = qweight.shape[0], qweight.shape[1] * NIBBLES_PER_WORD
    group_size = _resolve_group_size(group_size, k)
    groups = formats.num_groups(k, group_size)
    _check_int32("qzeros", qzeros, 2, (groups, n // NIBBLES_PER_WORD))
    _check_scales(scales, (groups, n))
    codes = _awq_columns_in_order(unpack_int32_nibbles(qweight)).T.contiguous()   # [N, K]
    zeros = _awq_columns_in_order(unpack_int32_nibbles(qzeros)).T.to(torch.float32)
    return _int4_weight(codes, scales, zeros, group_size)


def _awq_columns_in_order(nibbles: torch.Tensor) -> torch.Tensor:
    """[..., 8 W] in AWQ's packed order -> columns 0, 1, 2, ... in order."""
    position_of_column = torch.tensor([AWQ_PACK_ORDER.index(c) for c in range(NIBBLES_PER_WORD)],
                                      device=nibbles.device)
    words = nibbles.unflatten(-1, (-1, NIBBLES_PER_WORD))
    return words[..., position_of_column].flatten(-2)


def _int4_weight(codes, scales, zeros, group_size) -> QuantizedWeight:
    n, k = codes.shape
    scales = scales.T.to(torch.float32).contiguous()
    symmetric = bool((zeros == formats.INT4_SYMMETRIC_ZERO).all())
    return QuantizedWeight("int4", (n, k), group_size, formats.pack_codes(codes, "int4"),
                           scales=scales, zeros=None if symmetric else zeros.contiguous())


def _act_order_permutation(g_idx, k, group_size, groups) -> Optional[torch.Tensor]:
    """The permutation of K that makes g_idx's groups contiguous, or None if they already are.
    Raises if the groups, once sorted, do not fall on multiples of group_size."""
    if not isinstance(g_idx, torch.Tensor) or g_idx.dim() != 1 or g_idx.numel() != k:
        raise ValueError(f"g_idx: expected a 1-D tensor of K = {k} group indices, got "
                         f"{g_idx.shape if isinstance(g_idx, torch.Tensor) else type(g_idx)}")
    g_idx = g_idx.to(torch.int64)
    contiguous = torch.arange(k, device=g_idx.device) // group_size
    if torch.equal(g_idx, contiguous):
        return None
    perm = torch.sort(g_idx, stable=True).indices
    if not torch.equal(g_idx[perm], contiguous):
        counts = torch.bincount(g_idx, minlength=groups).tolist()
        raise ValueError(f"g_idx: expected {group_size} input channels per group (the last "
                         f"may have fewer), got group sizes {counts[:8]}...")
    return perm


def _resolve_group_size(group_size, k) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size: expected an int, got {type(group_size).__name__}")
    if group_size == formats.PER_CHANNEL:
        return k
    if group_size < 1:
        raise ValueError(f"group_size: expected >= 1 or -1 (one group per row), got {group_size}")
    return min(group_size, k)


def _check_int32(name, tensor, dims, shape=None):
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int32 or tensor.dim() != dims:
        got = f"{tensor.dtype} {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else \
            type(tensor).__name__
        raise TypeError(f"{name}: expected an int32 tensor of {dims} dims, got {got}")
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(tensor.shape)}")


def _check_scales(scales, shape):
    if not isinstance(scales, torch.Tensor) or not scales.is_floating_point():
        raise TypeError(f"scales: expected a floating-point tensor, got "
                        f"{getattr(scales, 'dtype', type(scales).__name__)}")
    if tuple(scales.shape) != tuple(shape):
        raise ValueError(f"scales: expected shape {tuple(shape)} [G, N], got "
                         f"{tuple(scales.shape)}")


def replace_packed_linears(model: nn.Module, tensors: dict, *, method: str, group_size: int,
                           checkpoint_format: str = "gptq",
                           backend: Optional[str] = None) -> dict:
    """Replace, in place, every nn.Linear ``name`` of ``model`` for which ``tensors`` (a
    checkpoint's state dict, e.g. read with safetensors) holds ``name.qweight`` by a
    QuantLinear imported from ``name.qweight / .qzeros / .scales`` (and ``.g_idx``, ``.bias``).

    method: "gptq" or "awq"; group_size and checkpoint_format as in from_gptq / from_awq (the
    checkpoint's quantization config gives them). Returns the tensors it did not use, for
    model.load_state_dict.
    """
    if method not in ("gptq", "awq"):
        raise ValueError(f"method: expected 'gptq' or 'awq', got {method!r}")
    rest = dict(tensors)
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or f"{name}.qweight" not in rest:
            continue
        packed = [rest.pop(f"{name}.{key}") for key in ("qweight", "qzeros", "scales")]
        g_idx = rest.pop(f"{name}.g_idx", None)
        try:
            if method == "gptq":
                qw, perm = from_gptq(*packed, g_idx, group_size=group_size,
                                     checkpoint_format=checkpoint_format)
            else:
                qw, perm = from_awq(*packed, group_size=group_size), None
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name}: {error}") from error
        if qw.shape != (module.out_features, module.in_features):
            raise ValueError(f"{name}: expected (out_features, in_features) = "
                             f"{(module.out_features, module.in_features)}, got {qw.shape} "
                             f"from the checkpoint")
        bias = rest.pop(f"{name}.bias", None)
        replacement = QuantLinear.from_quantized(qw, bias, backend=backend, input_perm=perm)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child_name,
                replacement)
    return rest
