"""Drop-in quantized layers: QuantLinear, quantize_model and the QKernelsConfig that drives it."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import sys
from typing import Optional, Sequence, Union

import torch
from torch import nn

from . import formats, memory, ops
from .formats import QuantizedWeight


# quantize_model's progress bar and summary show by default only for models this large.
PROGRESS_MIN_LAYERS = 32


class QuantLinear(nn.Module):
    """nn.Linear with a packed weight: y = x @ dequant(W).T + bias, computed by the fused kernels.

    The canonical tensors of the format (``qweight``, ``scales``, ``zeros``, ``absmax``; only those
    the format has) are plain persistent buffers, so ``state_dict`` holds exactly what is saved
    (safetensors-compatible). They keep their dtypes through ``.half()`` / ``.to(dtype)``: only
    the bias follows the module's dtype; the output always has the dtype of the input.
    The weight is frozen; gradients flow to the input (and the bias, if it requires grad).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fmt: str = "int4",
                 group_size: Optional[int] = None, symmetric: bool = False, device=None,
                 dtype: Optional[torch.dtype] = None, backend: Optional[str] = None):
        super().__init__()
        formats.check_format(fmt)
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features, out_features: expected >= 1, got "
                             f"({in_features}, {out_features})")
        if symmetric and fmt != "int4":
            raise ValueError(f"symmetric: only int4 has a symmetric mode, got fmt={fmt!r}")
        self.in_features, self.out_features = in_features, out_features
        self.fmt = fmt
        self.group_size = formats.resolve_group_size(fmt, group_size, in_features)
        self.symmetric = symmetric
        self.backend = backend
        groups = formats.num_groups(in_features, self.group_size)
        code_dtype = torch.int8 if fmt == "int8" else torch.uint8
        row_bytes = formats.packed_row_bytes(fmt, in_features)
        self.register_buffer(
            "qweight", torch.zeros(out_features, row_bytes, dtype=code_dtype, device=device))
        scale_name = "absmax" if fmt == "nf4" else "scales"
        self.register_buffer(
            scale_name, torch.ones(out_features, groups, dtype=torch.float32, device=device))
        if fmt == "int4" and not symmetric:
            self.register_buffer("zeros", torch.full((out_features, groups),
                                                     formats.INT4_SYMMETRIC_ZERO, device=device))
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(out_features, dtype=dtype or torch.float32, device=device),
                requires_grad=False)
        else:
            self.register_parameter("bias", None)

    # The canonical tensors, by name: a fixed set per format, registered in __init__.
    @property
    def _canonical_names(self) -> tuple:
        names = ("qweight", "absmax" if self.fmt == "nf4" else "scales")
        return names + (("zeros",) if self.fmt == "int4" and not self.symmetric else ())

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str = "int4", group_size: Optional[int] = None,
                    symmetric: bool = False, backend: Optional[str] = None) -> "QuantLinear":
        """Quantize an nn.Linear (its weight, round-to-nearest) into a new QuantLinear on the
        same device; the bias is kept in its dtype."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        qw = formats.quantize(linear.weight.detach(), fmt, group_size, symmetric=symmetric)
        return cls.from_quantized(qw, linear.bias, backend=backend)

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None,
                       backend: Optional[str] = None) -> "QuantLinear":
        n, k = qw.shape
        layer = cls(k, n, bias=bias is not None, fmt=qw.fmt, group_size=-1, symmetric=qw.symmetric,
                    device="meta", dtype=None if bias is None else bias.dtype, backend=backend)
        layer.group_size = qw.group_size
        for name, tensor in qw.tensors().items():
            layer._buffers[name] = tensor
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return layer

    @property
    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.fmt, (self.out_features, self.in_features), self.group_size,
                               **{name: getattr(self, name) for name in self._canonical_names})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plain `if`, not torch._check_value: dynamo cannot trace a message closure over x.
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape [..., {self.in_features}] (in_features), got "
                             f"{tuple(x.shape)}")
        # Buffers and the bias straight from their dicts: nn.Module.__getattr__ costs ~1.5 us a
        # name, a tenth of a small layer's whole call.
        buffers, bias = self._buffers, self._parameters["bias"]
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        scales = buffers["absmax" if self.fmt == "nf4" else "scales"]
        return ops.matmul_tensors(x, self.fmt, buffers["qweight"], scales, buffers.get("zeros"),
                                  self.group_size, bias, self.backend)

    def _apply(self, fn, recurse=True):
        # Canonical tensors follow the device of a move but never its dtype: .half() must not
        # round fp32 scales. Everything else (the bias) goes through nn.Module's usual path.
        canonical = {name: self._buffers.pop(name) for name in self._canonical_names}
        try:
            super()._apply(fn, recurse)
        finally:
            for name, tensor in canonical.items():
                target = fn(torch.empty(0, device=tensor.device)).device
                self._buffers[name] = tensor if target == tensor.device else tensor.to(target)
        return self

    def extra_repr(self) -> str:
        mode = ", symmetric=True" if self.symmetric else ""
        backend = f", backend={self.backend!r}" if self.backend else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, fmt={self.fmt!r}, group_size={self.group_size}"
                f"{mode}{backend}")


@dataclasses.dataclass
class QKernelsConfig:
    """How to quantize a model: one JSON-round-trippable object for quantize_model (and for
    transformers' quantization_config). ``modules_to_not_convert`` are name patterns (exact
    name, last name component, or fnmatch glob); ``module_overrides`` maps a pattern to
    {"fmt": ..., "group_size": ..., "symmetric": ...} for the modules it matches."""

    fmt: str = "int4"
    group_size: Optional[int] = None
    symmetric: bool = False
    modules_to_not_convert: Optional[list] = None
    module_overrides: Optional[dict] = None
    backend: Optional[str] = None

    def __post_init__(self):
        formats.check_format(self.fmt)
        # Validate group sizes early: any K works for the check because sizes are clamped to K.
        formats.resolve_group_size(self.fmt, self.group_size, 1 << 20)
        for pattern, override in (self.module_overrides or {}).items():
            unknown = set(override) - {"fmt", "group_size", "symmetric"}
            if unknown:
                raise ValueError(f"module_overrides[{pattern!r}]: expected keys fmt, group_size, "
                                 f"symmetric, got {sorted(unknown)}")
            fmt = override.get("fmt", self.fmt)
            formats.resolve_group_size(formats.check_format(fmt),
                                       override.get("group_size", self.group_size), 1 << 20)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QKernelsConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"QKernelsConfig: unknown keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def settings_for(self, module_name: str) -> Optional[dict]:
        """fmt / group_size / symmetric for a module, or None if it is not to be converted."""
        if any(_matches(module_name, p) for p in self.modules_to_not_convert or ()):
            return None
        settings = {"fmt": self.fmt, "group_size": self.group_size, "symmetric": self.symmetric}
        for pattern, override in (self.module_overrides or {}).items():
            if _matches(module_name, pattern):
                settings.update(override)
        return settings


def _matches(module_name: str, pattern: str) -> bool:
    return (module_name == pattern or module_name.rsplit(".", 1)[-1] == pattern
            or fnmatch.fnmatchcase(module_name, pattern))


def quantize_model(model: nn.Module, config: Union[str, QKernelsConfig] = "int4",
                   group_size: Optional[int] = None, skip: Sequence[str] = ("lm_head",),
                   symmetric: bool = False, backend: Optional[str] = None,
                   verbose: Optional[bool] = None) -> nn.Module:
    """Replace every nn.Linear of ``model`` in place by a QuantLinear and return the model.

    ``config`` is a QKernelsConfig, or a format name with ``group_size``, ``skip`` (module name
    patterns left in full precision), ``symmetric`` and ``backend`` given alongside. Linear
    layers whose weight is shared with another module (tied embeddings) are left alone.

    ``verbose``: show a progress bar and print a memory summary (replaced weights, packed bytes,
    layers left in full precision) to stderr. None: only on a terminal, for models with at least
    PROGRESS_MIN_LAYERS linear layers. qk.memory_report(model) gives the figures as data.
    """
    if isinstance(config, str):
        config = QKernelsConfig(fmt=config, group_size=group_size, symmetric=symmetric,
                                modules_to_not_convert=list(skip), backend=backend)
    elif not isinstance(config, QKernelsConfig):
        raise TypeError(f"config: expected a format name or a QKernelsConfig, got "
                        f"{type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    uses = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1

    targets, kept = [], {}   # kept: name -> why that nn.Linear stays in full precision
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        settings = config.settings_for(name)
        if uses.get(id(module.weight), 0) > 1:
            kept[name] = "tied weight"
        elif settings is None:
            kept[name] = "skipped"
        else:
            targets.append((name, module, settings))

    if verbose is None:
        verbose = sys.stderr.isatty() and len(targets) >= PROGRESS_MIN_LAYERS
    steps = targets
    if verbose:
        # rich is imported only when shown: `import qkernels` stays fast.
        from rich.console import Console
        from rich.progress import track
        console = Console(stderr=True)
        before = memory.memory_report(model)
        steps = track(targets, description="quantizing", console=console, transient=True)
    replaced_bytes = packed_bytes = 0
    for name, module, settings in steps:
        try:
            replacement = QuantLinear.from_linear(module, backend=config.backend, **settings)
        except (TypeError, ValueError) as error:  # e.g. overrides that combine badly
            raise type(error)(f"{name}: {error}") from error
        replaced_bytes += memory.tensor_bytes(module.weight)
        packed_bytes += replacement.quantized_weight.nbytes
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, replacement)
    if verbose:
        after = memory.memory_report(model)
        console.print(f"qkernels: quantized {len(targets)} linear layers: weights "
                      f"{replaced_bytes / 2**20:.2f} MiB -> {packed_bytes / 2**20:.2f} MiB packed; "
                      f"model {before.total_bytes / 2**20:.2f} -> "
                      f"{after.total_bytes / 2**20:.2f} MiB")
        if kept:
            console.print("left in full precision: " +
                          ", ".join(f"{name} ({why})" for name, why in kept.items()))
    return model
