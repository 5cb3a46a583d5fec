"""Where a model's memory goes: packed QuantLinear weights, linear layers left in full precision,
and everything else (embeddings, norms, buffers). qk.memory_report(model) -> MemoryReport."""

from __future__ import annotations

import dataclasses

from torch import nn


@dataclasses.dataclass
class MemoryReport:
    """Bytes of a model's parameters and buffers, each tensor counted once (tied weights are
    attributed to the first module that holds them, in named_modules order)."""

    quantized: dict       # QuantLinear name -> bytes of its canonical tensors and bias
    dense_linear: dict    # nn.Linear name -> bytes of its weight and bias (full precision)
    other_bytes: int      # every other parameter and buffer

    @property
    def quantized_bytes(self) -> int:
        return sum(self.quantized.values())

    @property
    def dense_linear_bytes(self) -> int:
        return sum(self.dense_linear.values())

    @property
    def total_bytes(self) -> int:
        return self.quantized_bytes + self.dense_linear_bytes + self.other_bytes

    def table(self, title: str = "memory"):
        """A rich Table of the report (rich imported here: `import qkernels` stays fast)."""
        from rich.table import Table

        table = Table(title=title)
        for column in ("part", "modules", "MiB"):
            table.add_column(column, justify="left" if column == "part" else "right")
        table.add_row("quantized linear", str(len(self.quantized)), _mib(self.quantized_bytes))
        table.add_row("full-precision linear", str(len(self.dense_linear)),
                      _mib(self.dense_linear_bytes))
        table.add_row("other (embeddings, norms, buffers)", "", _mib(self.other_bytes))
        table.add_row("total", "", _mib(self.total_bytes), style="bold")
        return table


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f}"


def tensor_bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def memory_report(model: nn.Module) -> MemoryReport:
    """Where the bytes of ``model`` are: see MemoryReport."""
    from .nn import QuantLinear  # nn imports this module for quantize_model's summary

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    seen = set()
    quantized, dense_linear, other_bytes = {}, {}, 0
    for name, module in model.named_modules():
        tensors = [t for t in (*module.parameters(recurse=False), *module.buffers(recurse=False))
                   if id(t) not in seen]
        seen.update(id(t) for t in tensors)
        nbytes = sum(tensor_bytes(t) for t in tensors)
        if isinstance(module, QuantLinear):
            quantized[name] = nbytes
        elif isinstance(module, nn.Linear) and nbytes:
            dense_linear[name] = nbytes
        else:
            other_bytes += nbytes
    return MemoryReport(quantized, dense_linear, other_bytes)
