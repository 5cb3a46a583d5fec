"""What a benchmark row times: the full-precision baseline, each qkernels backend x format, and
the peers users would otherwise pick. Each case prepares its weight copies once per shape and
returns one callable per copy for a given x."""

from __future__ import annotations

import dataclasses
import functools
import os
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


def qkernels_case(w: torch.Tensor, fmt: str, group_size: Optional[int], backend: str,
                  activations: Optional[str] = None) -> Case:
    """activations="int8": the int8-activation mode, labelled "... a8"."""
    qw = qk.quantize(w, fmt, group_size)
    copies = _clones(qw.tensors(), measure.copies_for_cold_cache(qw.nbytes, w.device))
    weights = [dataclasses.replace(qw, **c) for c in copies]
    label = "per-channel" if qw.group_size == w.shape[1] else f"g{qw.group_size}"
    label += " a8" if activations else ""
    return Case(f"{backend} {fmt} {label}", "qkernels", fmt, qw.group_size, backend, qw.nbytes,
                lambda x: [lambda q=q: qk.matmul(x, q, backend=backend, activations=activations)
                           for q in weights])


@dataclasses.dataclass
class Peer:
    name: str            # row label
    fmt: str             # the qkernels format it competes with
    devices: tuple       # device types it runs on
    make: Callable[[torch.Tensor, torch.dtype], Case]

    @property
    def library(self) -> str:
        return self.name.split()[0]


def peer_cases(w: torch.Tensor, formats, x_dtype: torch.dtype, libraries=None):
    """Peers that this installation provides on this device, each quantized the way that library
    quantizes: (cases, reasons for the ones skipped). A missing peer is skipped, not a failure.
    `libraries` (e.g. {"torch", "gemlite"}) limits the peers to those libraries."""
    found, skipped = [], []
    for peer in PEERS:
        if peer.fmt not in formats or (libraries is not None and peer.library not in libraries):
            continue
        if w.device.type not in peer.devices:
            skipped.append(f"{peer.name}: runs on {'/'.join(peer.devices)} only")
            continue
        try:
            found.append(peer.make(w, x_dtype))
        except ImportError as error:
            skipped.append(f"{peer.name}: not installed ({error.name or error})")
        except (RuntimeError, NotImplementedError, AttributeError, ValueError,
                AssertionError, TypeError) as error:
            skipped.append(f"{peer.name}: {type(error).__name__}: {str(error)[:100]}")
    return found, skipped


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _torch_int4pack_case(w, x_dtype) -> Case:
    """torch's tinygemm int4 (asymmetric, g128, bf16 scales and zeros): _weight_int4pack_mm on
    CUDA, _weight_int4pack_mm_for_cpu on CPU. Both are bf16-activation kernels (fp32 x on the
    CPU takes a path ~10x slower), so x is converted to bf16 once, outside the timed call."""
    n, k = w.shape
    group = 128
    if k % group:
        raise NotImplementedError(f"K={k} is not a multiple of {group}")
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device=w.device)
    dtype = torch.bfloat16
    if w.device.type == "cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack(
            ((codes[:, 1::2] << 4) | codes[:, ::2]).to(torch.uint8), 8)
        mm = torch.ops.aten._weight_int4pack_mm
    scales_zeros = torch.randn(k // group, n, 2, device=w.device, dtype=dtype) * 0.01
    nbytes = _nbytes(packed, scales_zeros)
    copies = _clones({"w": packed, "sz": scales_zeros}, measure.copies_for_cold_cache(nbytes, w.device))

    def calls(x):
        x = x.to(dtype)
        return [lambda c=c: mm(x, c["w"], group, c["sz"]) for c in copies]

    return Case("torch int4pack g128 (bf16 x)", "peer", "int4", group, None, nbytes, calls)


def _torch_int8pack_case(w, x_dtype) -> Case:
    """torch's weight-only int8 (per-channel scales in the activation dtype)."""
    n, k = w.shape
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=w.device)
    scales = torch.rand(n, device=w.device, dtype=x_dtype) * 0.01
    nbytes = _nbytes(weight, scales)
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


def _bitsandbytes_nf4_case(w, x_dtype) -> Case:
    """bitsandbytes NF4 as QLoRA uses it: its own quantize_4bit (blocks of 64, fp32 absmax,
    no double quantization) and matmul_4bit (a GEMV kernel at one row, else dequantize +
    matmul on CUDA; dequantize + matmul on the CPU)."""
    import bitsandbytes as bnb

    weight = w.to(x_dtype)
    def quantize():
        return bnb.functional.quantize_4bit(weight, blocksize=64, quant_type="nf4")

    copies = [quantize()]
    nbytes = _nbytes(copies[0][0], copies[0][1].absmax)
    copies += [quantize() for _ in range(measure.copies_for_cold_cache(nbytes, w.device) - 1)]
    return Case("bitsandbytes nf4 g64", "peer", "nf4", 64, None, nbytes,
                lambda x: [lambda p=p, s=s: bnb.matmul_4bit(x, p.t(), s) for p, s in copies])


def _gemlite_a16w4_case(w, x_dtype) -> Case:
    """gemlite A16W4 (Triton): 4-bit codes with a scale and a zero point per group of 128 in the
    HQQ layout it packs from, (W_q - zero) * scale, here from round-to-nearest min/max (HQQ's
    starting point; its optimiser changes the values, not the kernel)."""
    from gemlite.helper import A16W4_HQQ_INT

    n, k = w.shape
    group = 128
    if k % group:
        raise NotImplementedError(f"K={k} is not a multiple of {group}")
    grouped = w.float().reshape(n, k // group, group)
    low, high = grouped.amin(-1, keepdim=True), grouped.amax(-1, keepdim=True)
    scale = (high - low).clamp_min(1e-8) / 15
    zero = -low / scale
    codes = (grouped / scale + zero).round().clamp(0, 15).to(torch.uint8).reshape(n, k)
    scale, zero = scale.reshape(n, -1).to(x_dtype), zero.reshape(n, -1).to(x_dtype)

    def make():
        return A16W4_HQQ_INT(device=w.device, dtype=x_dtype).from_weights(
            codes.clone(), scale.clone(), zero.clone())

    return _gemlite_case("gemlite A16W4 g128", "int4", group, make, w.device)


def _gemlite_a16w8_case(w, x_dtype) -> Case:
    """gemlite A16W8: its own per-channel int8 quantization (A16W8_INT8.from_weights)."""
    from gemlite.helper import A16W8_INT8

    def make():
        return A16W8_INT8(device=w.device, dtype=x_dtype).from_weights(w.to(x_dtype))

    return _gemlite_case("gemlite A16W8 per-channel", "int8", w.shape[1], make, w.device)


def _gemlite_case(name, fmt, group, make, device) -> Case:
    if _match_gemlite_autotune():
        name += " (default configs)"  # not its tuned speed on shapes outside its config cache
    first = make()
    nbytes = _nbytes(*first.get_tensor_args())
    layers = [first] + [make() for _ in range(measure.copies_for_cold_cache(nbytes, device) - 1)]
    return Case(name, "peer", fmt, group, None, nbytes,
                lambda x: [lambda m=m: m(x) for m in layers])


@functools.cache
def _match_gemlite_autotune() -> bool:
    """With QKERNELS_TRITON_AUTOTUNE=0 set explicitly (our Triton kernels at their default configs,
    as without the variable, and a request for a quick run), gemlite too runs its default configs
    on a miss of its shipped per-GPU config cache instead of timing candidates: that "fast"
    autotune took 80% of a full H100 run (~20 s per new shape and M). Unset, each library runs as
    it does by default.
    Once, before any layer: set_autotune reloads gemlite's kernel modules. Returns whether it did.

    Measured on the H100 (llama3-8b 4096x4096, M=1): A16W4 0.06x F.linear with default configs
    against 2.00x tuned, so rows timed this way are labelled and are no measure of its speed."""
    import gemlite
    from ..triton import common as triton_common

    if os.environ.get(triton_common.AUTOTUNE_ENV_VAR) != "0":
        return False
    gemlite.set_autotune("default")
    return True


PEERS = (
    Peer("torch int4pack g128", "int4", ("cpu", "cuda"), _torch_int4pack_case),
    Peer("torch int8pack", "int8", ("cpu", "cuda"), _torch_int8pack_case),
    Peer("torch dynamic int8 (W8A8)", "int8", ("cpu",), _torch_dynamic_int8_case),
    Peer("bitsandbytes nf4 g64", "nf4", ("cpu", "cuda"), _bitsandbytes_nf4_case),
    Peer("gemlite A16W4 g128", "int4", ("cuda",), _gemlite_a16w4_case),
    Peer("gemlite A16W8 per-channel", "int8", ("cuda",), _gemlite_a16w8_case),
)
