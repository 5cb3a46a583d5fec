"""The canonical weight formats (shared/DESIGN.md section 3) and their pure-torch reference
quantize / dequantize / pack / unpack.

W is [N, K] (nn.Linear layout); quantization runs along K in groups of ``group_size``;
G = ceil(K / group_size) groups per row and the last one may be partial.

=======  ==========================  =====================================================
format   canonical tensors           value of w[n, k], gi = k // group_size
=======  ==========================  =====================================================
int8     qweight int8 [N, K],        scales[n, gi] * q,               q in [-127, 127]
         scales fp32 [N, G]
int4     qweight uint8 [N, K/2],     scales[n, gi] * (q - zeros[n, gi]), q in [0, 15]
         scales, zeros fp32 [N, G]   (symmetric: zeros all 8, stored as None)
nf4      qweight uint8 [N, K/2],     absmax[n, gi] * NF4_TABLE[q]
         absmax fp32 [N, G]
=======  ==========================  =====================================================

4-bit packing: byte j of a row holds k = 2j in bits 0-3 and k = 2j+1 in bits 4-7; an odd K
leaves the high nibble of the last byte 0. These constants exist once here; the C++ copy in
csrc/core/formats.h is checked against them by tests/test_formats.py.

nf4 with double quantization (QLoRA's nested statistics) replaces ``absmax`` by 8-bit codes:
``absmax_codes`` uint8 [N, G], and per block of DOUBLE_QUANT_BLOCK consecutive codes (row-major
over [N, G]) an fp32 ``absmax_scales`` and ``absmax_offsets`` [B], B = ceil(N * G / 256), in
the log2 domain:

    absmax[n, gi] = 2 ** (absmax_offsets[b] + absmax_scales[b] * absmax_codes[n, gi]),
    b = (n * G + gi) // 256

8 + 64 / 256 bits per group instead of 32: at group 64, 0.129 instead of 0.5 bits per weight.
The code is affine in log2(absmax) (min/max per block, round to nearest), so every absmax keeps
the same relative precision: 2^(r / 510) - 1 at worst in a block whose log2 range is r (1.4%
for a block spanning three decades). An affine code of absmax itself loses the small absmax
of a block that also holds large ones: on weights whose row scales span 0-0.1 it made the
worst row's error 2.7x that of plain nf4; in log2 the worst row matches plain nf4. (bitsandbytes gets the same effect from a
"dynamic" 8-bit code with an exponent, after subtracting the tensor's mean absmax.)
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

FORMATS = ("int8", "int4", "nf4")

# Stable numbering shared with csrc/core/formats.h (enum class Format).
FORMAT_IDS = {"int8": 0, "int4": 1, "nf4": 2}

# Group size used when the caller passes none; None means one group per row (per channel).
DEFAULT_GROUP_SIZE = {"int8": None, "int4": 128, "nf4": 64}

# Group sizes quantize() accepts besides per-channel (-1). Canonical tensors loaded from a file
# may carry any group size >= 1 (per-channel weights store group_size = K).
GROUP_SIZES = (16, 32, 64, 128, 256, 512, 1024)
PER_CHANNEL = -1

# The canonical tensor names, in the order they are listed and saved.
CANONICAL_NAMES = ("qweight", "scales", "zeros", "absmax", "absmax_codes", "absmax_scales",
                   "absmax_offsets")
DOUBLE_QUANT_NAMES = ("absmax_codes", "absmax_scales", "absmax_offsets")
DOUBLE_QUANT_BLOCK = 256
DOUBLE_QUANT_MAX_CODE = 255

INT8_MAX_CODE = 127
INT4_MAX_CODE = 15
INT4_SYMMETRIC_ZERO = 8.0
NIBBLE_BITS_LOW = 0
NIBBLE_BITS_HIGH = 4

# NormalFloat-4 of QLoRA (Dettmers et al. 2023): quantiles of N(0, 1) scaled to [-1, 1], with
# an exact zero at index 7. The values are float32; kernels index this table.
NF4_TABLE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def nf4_table(device=None) -> torch.Tensor:
    """NF4_TABLE as a float32 tensor, made once per device (so that CUDA-graph capture of the
    reference backend copies nothing from the host). Read-only by convention."""
    key = str(torch.device(device) if device is not None else torch.device("cpu"))
    if key not in _NF4_TABLES:
        _NF4_TABLES[key] = torch.tensor(NF4_TABLE, dtype=torch.float32, device=device)
    return _NF4_TABLES[key]


_NF4_TABLES: dict = {}


def packed_row_bytes(fmt: str, k: int) -> int:
    return k if fmt == "int8" else (k + 1) // 2


def num_groups(k: int, group_size: int) -> int:
    return -(-k // group_size)


def check_format(fmt) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {', '.join(map(repr, FORMATS))}, got {fmt!r}")
    return fmt


def resolve_group_size(fmt: str, group_size: Optional[int], k: int) -> int:
    """The stored group size for a user's choice: None = the format's default, -1 = per channel
    (stored as K). A group larger than K is clamped to K: one (partial) group per row."""
    check_format(fmt)
    if group_size is None:
        group_size = DEFAULT_GROUP_SIZE[fmt] or PER_CHANNEL
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size: expected an int, got {type(group_size).__name__}")
    if group_size == PER_CHANNEL:
        return k
    if group_size not in GROUP_SIZES:
        raise ValueError(
            f"group_size: expected one of {GROUP_SIZES} or -1 (per channel), got {group_size}")
    return min(group_size, k)


@dataclasses.dataclass(eq=False)
class QuantizedWeight:
    """A weight [N, K] in one canonical format. Tensors a format lacks are None.

    ``scales`` holds int8 / int4 scales; ``absmax`` holds the nf4 block maxima; ``zeros`` holds
    int4 zero points (None in symmetric mode, where they are all 8). A double-quantized nf4
    weight holds ``absmax_codes``, ``absmax_scales`` and ``absmax_offsets`` instead of
    ``absmax`` (module docstring).
    """

    fmt: str
    shape: tuple
    group_size: int
    qweight: torch.Tensor
    scales: Optional[torch.Tensor] = None
    zeros: Optional[torch.Tensor] = None
    absmax: Optional[torch.Tensor] = None
    absmax_codes: Optional[torch.Tensor] = None
    absmax_scales: Optional[torch.Tensor] = None
    absmax_offsets: Optional[torch.Tensor] = None

    def __post_init__(self):
        check_format(self.fmt)
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape: expected (N, K) with N, K >= 1, got {tuple(self.shape)}")
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        n, k = self.shape
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size: expected an int >= 1, got {self.group_size!r}")
        groups = num_groups(k, self.group_size)
        code_dtype = torch.int8 if self.fmt == "int8" else torch.uint8
        _check_tensor("qweight", self.qweight, code_dtype, (n, packed_row_bytes(self.fmt, k)))
        scale_name = "absmax" if self.fmt == "nf4" else "scales"
        present = {name: getattr(self, name) for name in CANONICAL_NAMES[1:]}
        if self.fmt == "nf4" and self.absmax is None and self.absmax_codes is not None:
            blocks = num_groups(n * groups, DOUBLE_QUANT_BLOCK)
            _check_tensor("absmax_codes", self.absmax_codes, torch.uint8, (n, groups))
            _check_tensor("absmax_scales", self.absmax_scales, torch.float32, (blocks,))
            _check_tensor("absmax_offsets", self.absmax_offsets, torch.float32, (blocks,))
            allowed = set(DOUBLE_QUANT_NAMES)
        else:
            _check_tensor(scale_name, present[scale_name], torch.float32, (n, groups))
            allowed = {scale_name, "zeros"} if self.fmt == "int4" else {scale_name}
        for name, tensor in present.items():
            if name not in allowed and tensor is not None:
                raise ValueError(f"{name}: expected None for format {self.fmt}, got a tensor")
        if self.zeros is not None:
            _check_tensor("zeros", self.zeros, torch.float32, (n, groups))
        for name, tensor in present.items():
            if tensor is not None and tensor.device != self.qweight.device:
                raise ValueError(f"{name}: expected device {self.qweight.device} (that of "
                                 f"qweight), got {tensor.device}")

    @property
    def symmetric(self) -> bool:
        return self.fmt == "int4" and self.zeros is None

    @property
    def double_quant(self) -> bool:
        return self.absmax_codes is not None

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def scale_tensor(self) -> torch.Tensor:
        """The per-group multiplier in fp32: scales (int8, int4) or absmax (nf4; decoded from
        its 8-bit codes when double-quantized)."""
        if self.double_quant:
            return decode_absmax(self.absmax_codes, self.absmax_scales, self.absmax_offsets)
        return self.absmax if self.fmt == "nf4" else self.scales

    def tensors(self) -> dict:
        """The canonical tensors that exist for this format, by their canonical names."""
        named = {name: getattr(self, name) for name in CANONICAL_NAMES}
        return {name: t for name, t in named.items() if t is not None}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to(self, device) -> "QuantizedWeight":
        moved = {name: t.to(device) for name, t in self.tensors().items()}
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        n, k = self.shape
        extra = ", symmetric" if self.symmetric else ", double_quant" if self.double_quant else ""
        return (f"QuantizedWeight(fmt={self.fmt!r}, shape=({n}, {k}), group_size="
                f"{self.group_size}{extra}, device={self.device}, bytes={self.nbytes})")


def _check_tensor(name, tensor, dtype, shape):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(tensor).__name__}")
    if tensor.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {tensor.dtype}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(tensor.shape)}")


# --- packing --------------------------------------------------------------------------------

def pack_codes(codes: torch.Tensor, fmt: str) -> torch.Tensor:
    """Codes [N, K] (int8 for int8, values 0-15 for the 4-bit formats) -> canonical qweight."""
    check_format(fmt)
    if fmt == "int8":
        return codes.to(torch.int8).contiguous()
    codes = codes.to(torch.uint8)
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    low, high = codes[..., 0::2], codes[..., 1::2]
    return ((low << NIBBLE_BITS_LOW) | (high << NIBBLE_BITS_HIGH)).contiguous()


def unpack_codes(qweight: torch.Tensor, fmt: str, k: int) -> torch.Tensor:
    """Canonical qweight -> codes [N, K]: int8 values, or uint8 0-15 for the 4-bit formats."""
    check_format(fmt)
    if fmt == "int8":
        return qweight[..., :k]
    low = (qweight >> NIBBLE_BITS_LOW) & 0xF
    high = (qweight >> NIBBLE_BITS_HIGH) & 0xF
    return torch.stack((low, high), dim=-1).flatten(-2)[..., :k]


# --- quantize / dequantize ------------------------------------------------------------------

def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] -> [N, G, group_size], zero-padded: zeros change no absmax and no min/max below,
    because the int4 range always contains 0."""
    n, k = w.shape
    groups = num_groups(k, group_size)
    padded = torch.nn.functional.pad(w, (0, groups * group_size - k))
    return padded.view(n, groups, group_size)


def _expand(per_group: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """[N, G] -> [N, K]: each group's value repeated over its columns. A gather, not
    repeat_interleave + slice: torch.compile (inductor, torch 2.13) miscomputes that slice fused
    into a pointwise op when K % group_size != 0 (tests/test_model.py compiles a ragged model)."""
    group_of_column = torch.arange(k, device=per_group.device) // group_size
    return per_group[:, group_of_column]


def double_quantize_absmax(absmax: torch.Tensor) -> tuple:
    """fp32 [N, G] (positive) -> (absmax_codes uint8 [N, G], absmax_scales fp32 [B],
    absmax_offsets fp32 [B]): log2(absmax) coded per block of 256 values, min/max affine 8-bit,
    round to nearest (module docstring)."""
    n, groups = absmax.shape
    log_absmax = torch.log2(absmax).reshape(-1)
    padding = -log_absmax.numel() % DOUBLE_QUANT_BLOCK
    # Padding with the last value changes no block's min or max.
    blocks = torch.cat([log_absmax, log_absmax[-1:].expand(padding)]).view(-1, DOUBLE_QUANT_BLOCK)
    offsets = blocks.amin(dim=-1)
    scales = (blocks.amax(dim=-1) - offsets) / DOUBLE_QUANT_MAX_CODE   # 0: constant block
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round((blocks - offsets[:, None]) / safe[:, None])
    codes = codes.clamp_(0, DOUBLE_QUANT_MAX_CODE).to(torch.uint8)
    return codes.flatten()[: n * groups].view(n, groups), scales, offsets


def decode_absmax(absmax_codes: torch.Tensor, absmax_scales: torch.Tensor,
                  absmax_offsets: torch.Tensor) -> torch.Tensor:
    """The nf4 absmax fp32 [N, G] that double-quantized codes stand for."""
    # Codes viewed as [B, 256] (zero-padded) meet their block's scale and offset by
    # broadcasting: 7x faster on the CPU than gathering the parameters per code.
    codes = absmax_codes.reshape(-1).float()
    blocks = torch.nn.functional.pad(codes, (0, -codes.numel() % DOUBLE_QUANT_BLOCK))
    log_absmax = torch.addcmul(absmax_offsets[:, None], absmax_scales[:, None],
                               blocks.view(-1, DOUBLE_QUANT_BLOCK))
    return torch.exp2(log_absmax).view(-1)[: codes.numel()].view(absmax_codes.shape)


def quantize(w: torch.Tensor, fmt: str, group_size: Optional[int] = None, *,
             symmetric: bool = False, double_quant: bool = False) -> QuantizedWeight:
    """Round-to-nearest quantization of w [N, K] (out_features, in_features).

    group_size: None for the format's default (int8 per channel, int4 128, nf4 64), -1 for per
    channel, or one of GROUP_SIZES. symmetric: int4 only, zeros all 8. double_quant: nf4 only,
    absmax stored as 8-bit codes (module docstring); the NF4 codes are then chosen against the
    decoded absmax, the one the kernels multiply by.
    """
    check_format(fmt)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w: expected a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"w: expected 2 dims [out_features, in_features], got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"w: expected a floating-point dtype, got {w.dtype}")
    if w.numel() == 0:
        raise ValueError(f"w: expected N, K >= 1, got shape {tuple(w.shape)}")
    if symmetric and fmt != "int4":
        raise ValueError(f"symmetric: only int4 has a symmetric mode, got fmt={fmt!r}")
    if double_quant and fmt != "nf4":
        raise ValueError(f"double_quant: only nf4 has double quantization, got fmt={fmt!r}")
    if not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"w: expected finite values, got {bad} NaN/Inf entries")

    n, k = w.shape
    g = resolve_group_size(fmt, group_size, k)
    wg = _grouped(w.detach().to(torch.float32), g)

    if fmt == "int8":
        absmax = wg.abs().amax(dim=-1)
        scales = torch.where(absmax > 0, absmax / INT8_MAX_CODE, torch.ones_like(absmax))
        codes = torch.round(wg / scales[..., None]).clamp_(-INT8_MAX_CODE, INT8_MAX_CODE)
        qweight = pack_codes(codes.view(n, -1)[:, :k], fmt)
        return QuantizedWeight(fmt, (n, k), g, qweight, scales=scales.contiguous())

    if fmt == "nf4":
        absmax = wg.abs().amax(dim=-1)
        absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
        stored = {"absmax": absmax.contiguous()}
        if double_quant:
            stored = dict(zip(DOUBLE_QUANT_NAMES, double_quantize_absmax(absmax)))
            absmax = decode_absmax(*stored.values())
        table = nf4_table(w.device)
        midpoints = (table[1:] + table[:-1]) / 2
        codes = torch.bucketize(wg / absmax[..., None], midpoints)
        qweight = pack_codes(codes.view(n, -1)[:, :k], fmt)
        return QuantizedWeight(fmt, (n, k), g, qweight, **stored)

    if symmetric:
        absmax = wg.abs().amax(dim=-1)
        half_range = INT4_MAX_CODE // 2  # 7: codes 1..15 cover [-absmax, absmax]
        scales = torch.where(absmax > 0, absmax / half_range, torch.ones_like(absmax))
        codes = torch.round(wg / scales[..., None] + INT4_SYMMETRIC_ZERO)
        codes.clamp_(0, INT4_MAX_CODE)
        qweight = pack_codes(codes.view(n, -1)[:, :k], fmt)
        return QuantizedWeight(fmt, (n, k), g, qweight, scales=scales.contiguous())

    # Asymmetric: min/max of each group, widened to contain 0 (so zeros lie in [0, 15]); the
    # zero point is a float in code units, mapping min to code 0 and max to code 15 exactly.
    low = wg.amin(dim=-1).clamp(max=0)
    high = wg.amax(dim=-1).clamp(min=0)
    spread = high - low
    scales = torch.where(spread > 0, spread / INT4_MAX_CODE, torch.ones_like(spread))
    zeros = -low / scales
    codes = torch.round(wg / scales[..., None] + zeros[..., None]).clamp_(0, INT4_MAX_CODE)
    qweight = pack_codes(codes.view(n, -1)[:, :k], fmt)
    return QuantizedWeight(fmt, (n, k), g, qweight, scales=scales.contiguous(),
                           zeros=zeros.contiguous())


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight [N, K] that qw represents, computed in fp32 and returned in ``dtype``."""
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"qw: expected a QuantizedWeight, got {type(qw).__name__}")
    return dequantize_tensors(qw.fmt, qw.shape[1], qw.group_size, qw.qweight, qw.scale_tensor,
                              qw.zeros).to(dtype)


def dequantize_tensors(fmt: str, k: int, group_size: int, qweight: torch.Tensor,
                       scales: torch.Tensor, zeros: Optional[torch.Tensor]) -> torch.Tensor:
    """dequantize() on canonical tensors that are already known to be consistent (the hot path
    of the reference backend skips QuantizedWeight's checks). scales is absmax for nf4."""
    codes = unpack_codes(qweight, fmt, k)
    if fmt == "int8":
        return codes.to(torch.float32) * _expand(scales, group_size, k)
    if fmt == "nf4":
        return nf4_table(qweight.device)[codes.long()] * _expand(scales, group_size, k)
    centred = codes.to(torch.float32) - (
        _expand(zeros, group_size, k) if zeros is not None else INT4_SYMMETRIC_ZERO)
    return _expand(scales, group_size, k) * centred


def quantization_step(qw: QuantizedWeight) -> torch.Tensor:
    """Per-group distance between adjacent representable values [N, G] (for NF4 the widest
    gap of the table): round-to-nearest is within half of it."""
    if qw.fmt == "nf4":
        widest_gap = max(b - a for a, b in zip(NF4_TABLE, NF4_TABLE[1:]))
        return qw.scale_tensor * widest_gap
    return qw.scales


__all__ = [
    "FORMATS", "FORMAT_IDS", "DEFAULT_GROUP_SIZE", "GROUP_SIZES", "PER_CHANNEL", "NF4_TABLE",
    "QuantizedWeight", "quantize", "dequantize", "dequantize_tensors", "pack_codes", "unpack_codes",
    "packed_row_bytes", "num_groups", "nf4_table", "check_format", "resolve_group_size",
    "quantization_step", "CANONICAL_NAMES", "DOUBLE_QUANT_BLOCK", "double_quantize_absmax",
    "decode_absmax",
]
