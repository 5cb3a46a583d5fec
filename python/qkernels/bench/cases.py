"""What a benchmark row times: the full-precision baseline, each qkernels backend x format, and
the peers users would otherwise pick. Each case prepares its weight copies once per shape and
returns one callable per copy for a given x."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

import qkernels as qk

from . import measure


@dataclasses.dataclass
class Case:
    name: str            # row label, e.g. "cpu int4 g128"
    kind: str            # "baseline" | "qkernels" | "peer"
    fmt: Optional[str]
    group_size: Optional[int]
    backend: Optional[str]
    weight_bytes: int    # bytes of one weight copy that a call must read
    calls: Callable[[torch.Tensor], List[Callable[[], object]]]


def _clones(tensors: dict, copies: int) -> List[dict]:
    return [tensors] + [{k: v.clone() for k, v in tensors.items()} for _ in range(copies - 1)]


def baseline_case(w: torch.Tensor, dtype: torch.dtype) -> Case:
    weight = w.to(dtype)
    nbytes = weight.numel() * weight.element_size()
    copies = _clones({"w": weight}, measure.copies_for_cold_cache(nbytes, w.device))
    return Case(f"F.linear {str(dtype).replace('torch.', '')}", "baseline", None, None, None,
                nbytes, lambda x: [lambda c=c: F.linear(x, c["w"]) for c in copies])


def qkernels_case(w: torch.Tensor, fmt: str, group_size: Optional[int], backend: str) -> Case:
    qw = qk.quantize(w, fmt, group_size)
    copies = _clones(qw.tensors(), measure.copies_for_cold_cache(qw.nbytes, w.device))
    weights = [dataclasses.replace(qw, **c) for c in copies]
    label = "per-channel" if qw.group_size == w.shape[1] else f"g{qw.group_size}"
    return Case(f"{backend} {fmt} {label}", "qkernels", fmt, qw.group_size, backend, qw.nbytes,
                lambda x: [lambda q=q: qk.matmul(x, q, backend=backend) for q in weights])


def peer_cases(w: torch.Tensor, formats, x_dtype: torch.dtype):
    """Peers that this installation provides on this device, each quantized the way it
    quantizes: (cases, reasons for the ones skipped). A missing peer is skipped, not a failure."""
    wanted = []
    if "int4" in formats:
        wanted.append(("torch int4pack", _torch_int4pack_case))
    if "int8" in formats:
        wanted.append(("torch int8", _torch_dynamic_int8_case if w.device.type == "cpu"
                       else _torch_int8pack_case))
    found, missing = [], []
    for name, make in wanted:
        try:
            found.append(make(w, x_dtype))
        except (ImportError, RuntimeError, AttributeError, NotImplementedError) as error:
            missing.append(f"{name} unavailable ({type(error).__name__}: {str(error)[:80]})")
    return found, missing


def _torch_int4pack_case(w, x_dtype) -> Case:
    """torch's tinygemm int4 (g128): _weight_int4pack_mm on CUDA (bf16 only),
    _weight_int4pack_mm_for_cpu on CPU."""
    n, k = w.shape
    group = 128
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device=w.device)
    on_cpu = w.device.type == "cpu"
    dtype = x_dtype if on_cpu else torch.bfloat16
    if k % group:
        raise NotImplementedError(f"K={k} is not a multiple of {group}")
    if on_cpu:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack(
            ((codes[:, 1::2] << 4) | codes[:, ::2]).to(torch.uint8), 8)
        mm = torch.ops.aten._weight_int4pack_mm
    scales_zeros = torch.randn(k // group, n, 2, device=w.device, dtype=dtype) * 0.01
    nbytes = packed.numel() * packed.element_size() + scales_zeros.numel() * scales_zeros.element_size()
    copies = _clones({"w": packed, "sz": scales_zeros}, measure.copies_for_cold_cache(nbytes, w.device))
    return Case("torch int4pack g128", "peer", "int4", group, None, nbytes,
                lambda x: [lambda c=c: mm(x.to(dtype), c["w"], group, c["sz"]) for c in copies])


def _torch_int8pack_case(w, x_dtype) -> Case:
    n, k = w.shape
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=w.device)
    scales = torch.rand(n, device=w.device, dtype=x_dtype) * 0.01
    nbytes = weight.numel() + scales.numel() * scales.element_size()
    copies = _clones({"w": weight, "s": scales}, measure.copies_for_cold_cache(nbytes, w.device))
    mm = torch.ops.aten._weight_int8pack_mm
    return Case("torch int8pack", "peer", "int8", k, None, nbytes,
                lambda x: [lambda c=c: mm(x, c["w"], c["s"]) for c in copies])


def _torch_dynamic_int8_case(w, x_dtype) -> Case:
    """torch's dynamic int8 Linear (fbgemm, W8A8: activations quantized per call; fp32 only)."""
    if x_dtype != torch.float32:
        raise NotImplementedError("dynamic int8 takes float32 activations only")
    nbytes = w.numel() + 4 * w.shape[0]
    layers = [_dynamic_int8_layer(w) for _ in range(measure.copies_for_cold_cache(nbytes, w.device))]
    return Case("torch dynamic int8 (W8A8)", "peer", "int8", w.shape[1], None, nbytes,
                lambda x: [lambda m=m: m(x) for m in layers])


def _dynamic_int8_layer(w):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated, still shipped
        from torch.ao.quantization import quantize_dynamic
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        linear.weight.data.copy_(w)
        return quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)
