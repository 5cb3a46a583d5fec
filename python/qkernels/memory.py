"""Where a model's memory goes: packed QuantLinear weights (codes, scales, zeros), linear layers
left in full precision, and everything else (embeddings, norms, buffers), now and before
quantization. qk.memory_report(model) -> MemoryReport; .table() for people, .to_dict() for
programs."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

# The part of a QuantLinear each of its tensors belongs to.
QUANTIZED_PARTS = {"qweight": "codes", "scales": "scales", "absmax": "scales", "zeros": "zeros",
                   "bias": "bias"}


@dataclasses.dataclass
class MemoryReport:
    """Bytes of a model's parameters and buffers, each tensor counted once (tied weights are
    attributed to the first module that holds them, in named_modules order).

    ``dense_dtype`` is the dtype the quantized weights are priced at for "before": that of the
    model's other floating-point weights (fp32 when there are none)."""

    quantized: dict       # QuantLinear name -> bytes of its canonical tensors and bias
    dense_linear: dict    # nn.Linear name -> bytes of its weight and bias (full precision)
    other_bytes: int      # every other parameter and buffer
    quantized_parts: dict  # "codes" / "scales" / "zeros" / "bias" -> bytes over all QuantLinear
    by_type: dict         # module class name -> [modules, bytes] of the tensors it holds itself
    replaced_dense_bytes: int  # the quantized layers' weights + biases unquantized, at dense_dtype
    dense_dtype: torch.dtype

    @property
    def quantized_bytes(self) -> int:
        return sum(self.quantized.values())

    @property
    def dense_linear_bytes(self) -> int:
        return sum(self.dense_linear.values())

    @property
    def total_bytes(self) -> int:
        return self.quantized_bytes + self.dense_linear_bytes + self.other_bytes

    @property
    def before_bytes(self) -> int:
        """The model's bytes with every QuantLinear an nn.Linear at dense_dtype."""
        return self.total_bytes - self.quantized_bytes + self.replaced_dense_bytes

    def to_dict(self) -> dict:
        return {"total_bytes": self.total_bytes, "before_bytes": self.before_bytes,
                "quantized_bytes": self.quantized_bytes,
                "quantized_parts": dict(self.quantized_parts),
                "replaced_dense_bytes": self.replaced_dense_bytes,
                "dense_linear_bytes": self.dense_linear_bytes, "other_bytes": self.other_bytes,
                "dense_dtype": str(self.dense_dtype).removeprefix("torch."),
                "quantized": dict(self.quantized), "dense_linear": dict(self.dense_linear),
                "by_type": {name: {"modules": count, "bytes": nbytes}
                            for name, (count, nbytes) in self.by_type.items()}}

    def table(self, title: str = "memory"):
        """A rich Table of the report (rich imported here: `import qkernels` stays fast)."""
        from rich.table import Table

        dtype = str(self.dense_dtype).removeprefix("torch.")
        table = Table(title=title)
        for column in ("part", "modules", f"before MiB ({dtype})", "after MiB"):
            table.add_column(column, justify="left" if column == "part" else "right")
        table.add_row("quantized linear", str(len(self.quantized)),
                      _mib(self.replaced_dense_bytes), _mib(self.quantized_bytes))
        for part, nbytes in self.quantized_parts.items():
            table.add_row(f"  {part}", "", "", _mib(nbytes))
        table.add_row("full-precision linear", str(len(self.dense_linear)),
                      _mib(self.dense_linear_bytes), _mib(self.dense_linear_bytes))
        table.add_row("other (embeddings, norms, buffers)", "", _mib(self.other_bytes),
                      _mib(self.other_bytes))
        table.add_row("total", "", _mib(self.before_bytes), _mib(self.total_bytes), style="bold",
                      end_section=True)
        for name, (count, nbytes) in sorted(self.by_type.items(), key=lambda item: -item[1][1]):
            table.add_row(f"by type: {name}", str(count), "", _mib(nbytes))
        return table


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f}"


def tensor_bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def memory_report(model: nn.Module, dense_dtype: Optional[torch.dtype] = None) -> MemoryReport:
    """Where the bytes of ``model`` are, now and with its QuantLinear layers unquantized at
    ``dense_dtype`` (default: see MemoryReport): see MemoryReport."""
    from .nn import QuantLinear  # nn imports this module for quantize_model's summary

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    seen = set()
    quantized, dense_linear, other_bytes = {}, {}, 0
    parts = dict.fromkeys(("codes", "scales", "zeros", "bias"), 0)
    by_type, float_bytes = {}, {}
    replaced_elements, replaced_bias_elements = 0, 0
    for name, module in model.named_modules():
        tensors = {key: t for key, t in (*module.named_parameters(recurse=False),
                                         *module.named_buffers(recurse=False))
                   if id(t) not in seen}
        seen.update(id(t) for t in tensors.values())
        nbytes = sum(tensor_bytes(t) for t in tensors.values())
        if nbytes:
            count, total = by_type.get(type(module).__name__, (0, 0))
            by_type[type(module).__name__] = [count + 1, total + nbytes]
        if isinstance(module, QuantLinear):
            quantized[name] = nbytes
            for key, tensor in tensors.items():
                parts[QUANTIZED_PARTS[key]] += tensor_bytes(tensor)
            replaced_elements += module.in_features * module.out_features
            replaced_bias_elements += module.out_features if module.bias is not None else 0
            continue
        for tensor in tensors.values():
            if tensor.is_floating_point():
                float_bytes[tensor.dtype] = float_bytes.get(tensor.dtype, 0) + tensor_bytes(tensor)
        if isinstance(module, nn.Linear) and nbytes:
            dense_linear[name] = nbytes
        else:
            other_bytes += nbytes
    if dense_dtype is None:
        dense_dtype = max(float_bytes, key=float_bytes.get) if float_bytes else torch.float32
    element_size = torch.empty(0, dtype=dense_dtype).element_size()
    replaced = (replaced_elements + replaced_bias_elements) * element_size
    return MemoryReport(quantized, dense_linear, other_bytes, parts, by_type, replaced, dense_dtype)
