"""Drop-in quantized layers: QuantLinear, quantize_model and the QKernelsConfig that drives it."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import sys
from typing import ClassVar, Optional, Sequence, Union

import torch
from torch import nn

from . import activations as int8_activations
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

    ``activations="int8"`` (CPU; int8, int4 and nf4 weights with groups of a multiple of 32 or
    per channel; not nf4 with double_quant) quantizes the input to int8 per block of 32 before
    the integer kernels multiply it (qkernels.activations); its input gradient is that of the dequantized weight, as if the input
    had not been quantized. None (default): weight-only.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fmt: str = "int4",
                 group_size: Optional[int] = None, symmetric: bool = False, device=None,
                 dtype: Optional[torch.dtype] = None, backend: Optional[str] = None,
                 double_quant: bool = False, activations: Optional[str] = None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features, out_features: expected >= 1, got "
                             f"({in_features}, {out_features})")
        self.in_features, self.out_features = in_features, out_features
        self.fmt = fmt
        self.group_size = resolve_settings(fmt, group_size, symmetric, in_features, activations)
        if double_quant and fmt != "nf4":
            raise ValueError(f"double_quant: only nf4 has double quantization, got fmt={fmt!r}")
        if activations is not None:
            int8_activations.check_weight(fmt, self.group_size, in_features, double_quant)
        self.activations = activations
        self.symmetric = symmetric
        self.double_quant = double_quant
        self.backend = backend
        groups = formats.num_groups(in_features, self.group_size)
        code_dtype = torch.int8 if fmt == "int8" else torch.uint8
        row_bytes = formats.packed_row_bytes(fmt, in_features)
        self.register_buffer(
            "qweight", torch.zeros(out_features, row_bytes, dtype=code_dtype, device=device))
        if double_quant:   # all codes and log2 parameters 0: absmax 1, as for the other formats
            blocks = formats.num_groups(out_features * groups, formats.DOUBLE_QUANT_BLOCK)
            self.register_buffer("absmax_codes", torch.zeros(out_features, groups,
                                                             dtype=torch.uint8, device=device))
            self.register_buffer("absmax_scales", torch.zeros(blocks, device=device))
            self.register_buffer("absmax_offsets", torch.zeros(blocks, device=device))
        else:
            scale_name = "absmax" if fmt == "nf4" else "scales"
            self.register_buffer(
                scale_name, torch.ones(out_features, groups, dtype=torch.float32, device=device))
        if fmt == "int4" and not symmetric:
            # fp32 whatever the default dtype (transformers builds models under bf16 defaults).
            self.register_buffer("zeros", torch.full((out_features, groups),
                                                     formats.INT4_SYMMETRIC_ZERO,
                                                     dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(out_features, dtype=dtype or torch.float32, device=device),
                requires_grad=False)
        else:
            self.register_parameter("bias", None)
        # Act-order checkpoints (GPTQ desc_act): the weight's columns are stored sorted by
        # group and x is gathered the same way (qkernels.importers.gptq). None: no gather.
        self.register_buffer("input_perm", None)

    # The canonical tensors, by name: a fixed set per format, registered in __init__.
    @property
    def _canonical_names(self) -> tuple:
        if self.double_quant:
            return ("qweight",) + formats.DOUBLE_QUANT_NAMES
        names = ("qweight", "absmax" if self.fmt == "nf4" else "scales")
        return names + (("zeros",) if self.fmt == "int4" and not self.symmetric else ())

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str = "int4", group_size: Optional[int] = None,
                    symmetric: bool = False, backend: Optional[str] = None,
                    double_quant: bool = False, activations: Optional[str] = None) -> "QuantLinear":
        """Quantize an nn.Linear (its weight, round-to-nearest) into a new QuantLinear on the
        same device; the bias is kept in its dtype. double_quant: nf4 absmax in 8 bits."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        resolve_settings(fmt, group_size, symmetric, linear.in_features, activations)
        qw = formats.quantize(linear.weight.detach(), fmt, group_size, symmetric=symmetric,
                              double_quant=double_quant)
        return cls.from_quantized(qw, linear.bias, backend=backend, activations=activations)

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None,
                       backend: Optional[str] = None,
                       input_perm: Optional[torch.Tensor] = None,
                       activations: Optional[str] = None) -> "QuantLinear":
        """A layer holding qw's tensors (not copied). input_perm: int64 [K], for a weight whose
        columns were permuted (qw = W[:, input_perm]); the layer then computes
        x[..., input_perm] @ dequantize(qw).T = x @ W.T."""
        n, k = qw.shape
        if input_perm is not None and (input_perm.dtype != torch.int64
                                       or tuple(input_perm.shape) != (k,)):
            raise ValueError(f"input_perm: expected int64 of shape ({k},), got "
                             f"{input_perm.dtype} of shape {tuple(input_perm.shape)}")
        if activations is not None:   # qw's group size, which __init__ below does not see
            int8_activations.check_weight(qw.fmt, qw.group_size, k, qw.double_quant)
        layer = cls(k, n, bias=bias is not None, fmt=qw.fmt, group_size=-1, symmetric=qw.symmetric,
                    device="meta", dtype=None if bias is None else bias.dtype, backend=backend,
                    double_quant=qw.double_quant, activations=activations)
        layer.group_size = qw.group_size
        for name, tensor in qw.tensors().items():
            layer._buffers[name] = tensor
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        layer.input_perm = input_perm
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
        input_perm = buffers["input_perm"]
        if input_perm is not None:
            x = x.index_select(-1, input_perm)
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        if self.double_quant:
            return ops.matmul_nf4_dq_tensors(x, buffers["qweight"], buffers["absmax_codes"],
                                             buffers["absmax_scales"], buffers["absmax_offsets"],
                                             self.group_size, bias, self.backend)
        scales = buffers["absmax" if self.fmt == "nf4" else "scales"]
        return ops.matmul_tensors(x, self.fmt, buffers["qweight"], scales, buffers.get("zeros"),
                                  self.group_size, bias, self.backend, self.activations)

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
        mode += ", double_quant=True" if self.double_quant else ""
        mode += f", activations={self.activations!r}" if self.activations else ""
        backend = f", backend={self.backend!r}" if self.backend else ""
        permuted = ", input_perm=True" if self.input_perm is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, fmt={self.fmt!r}, group_size={self.group_size}"
                f"{mode}{backend}{permuted}")


def resolve_settings(fmt: str, group_size: Optional[int], symmetric: bool, in_features: int,
                     activations: Optional[str] = None) -> int:
    """Check one layer's settings and return its stored group size (see
    formats.resolve_group_size)."""
    group_size = formats.resolve_group_size(formats.check_format(fmt), group_size, in_features)
    if symmetric and fmt != "int4":
        raise ValueError(f"symmetric: only int4 has a symmetric mode, got fmt={fmt!r}")
    if int8_activations.check_activations(activations) is not None:
        int8_activations.check_weight(fmt, group_size, in_features)
    return group_size


@dataclasses.dataclass
class QKernelsConfig:
    """How to quantize a model: one JSON-round-trippable object for quantize_model and for
    transformers' ``from_pretrained(quantization_config=...)`` (registered as "qkernels" by
    qkernels.hf once transformers is imported). ``modules_to_not_convert`` are name patterns
    (exact name, last name component, or fnmatch glob); ``module_overrides`` maps a pattern to
    {"fmt": ..., "group_size": ..., "symmetric": ..., "activations": ...} for the modules it
    matches. ``activations``: None (weight-only) or "int8" (QuantLinear)."""

    # The key transformers files the config under in config.json.
    quant_method: ClassVar[str] = "qkernels"

    fmt: str = "int4"
    group_size: Optional[int] = None
    symmetric: bool = False
    modules_to_not_convert: Optional[list] = None
    module_overrides: Optional[dict] = None
    backend: Optional[str] = None
    activations: Optional[str] = None

    def __post_init__(self):
        formats.check_format(self.fmt)
        int8_activations.check_activations(self.activations)
        # Validate group sizes early: any K works for the check because sizes are clamped to K.
        formats.resolve_group_size(self.fmt, self.group_size, 1 << 20)
        for pattern, override in (self.module_overrides or {}).items():
            unknown = set(override) - {"fmt", "group_size", "symmetric", "activations"}
            if unknown:
                raise ValueError(f"module_overrides[{pattern!r}]: expected keys fmt, group_size, "
                                 f"symmetric, activations, got {sorted(unknown)}")
            fmt = override.get("fmt", self.fmt)
            formats.resolve_group_size(formats.check_format(fmt),
                                       override.get("group_size", self.group_size), 1 << 20)
            int8_activations.check_activations(override.get("activations", self.activations))

    def to_dict(self) -> dict:
        return {"quant_method": self.quant_method, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "QKernelsConfig":
        data = dict(data)
        method = data.pop("quant_method", cls.quant_method)
        if method != cls.quant_method:
            raise ValueError(f"quant_method: expected {cls.quant_method!r}, got {method!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"QKernelsConfig: unknown keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def settings_for(self, module_name: str) -> Optional[dict]:
        """fmt / group_size / symmetric / activations for a module, or None if it is not to be
        converted."""
        if any(_matches(module_name, p) for p in self.modules_to_not_convert or ()):
            return None
        settings = {"fmt": self.fmt, "group_size": self.group_size, "symmetric": self.symmetric,
                    "activations": self.activations}
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
                   verbose: Optional[bool] = None, activations: Optional[str] = None,
                   quantize_tied: bool = False) -> nn.Module:
    """Replace every nn.Linear of ``model`` in place by a QuantLinear and return the model.

    ``config`` is a QKernelsConfig, or a format name with ``group_size``, ``skip`` (module name
    patterns left in full precision), ``symmetric``, ``backend`` and ``activations`` (None or
    "int8": see QuantLinear) given alongside. Linear
    layers whose weight is shared with another module (tied embeddings) are left alone, unless
    ``quantize_tied`` (and the layer is not skipped: the default ``skip`` names lm_head): then the
    layer gets its own packed copy of the weight and the other module keeps the full-precision
    one. That costs the packed copy in memory and buys decode speed where the head is a large
    share of the work (SmolLM2-135M's 49152 x 576 head: bench/NOTES.md).

    ``verbose``: show a progress bar and print a memory summary (replaced weights, packed bytes,
    layers left in full precision) to stderr. None: only on a terminal, for models with at least
    PROGRESS_MIN_LAYERS linear layers. qk.memory_report(model) gives the figures as data.
    """
    if isinstance(config, str):
        config = QKernelsConfig(fmt=config, group_size=group_size, symmetric=symmetric,
                                modules_to_not_convert=list(skip), backend=backend,
                                activations=activations)
    elif not isinstance(config, QKernelsConfig):
        raise TypeError(f"config: expected a format name or a QKernelsConfig, got "
                        f"{type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    targets, kept = plan_quantization(model, config, quantize_tied=quantize_tied)
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
        replacement = QuantLinear.from_linear(module, backend=config.backend, **settings)
        replaced_bytes += memory.tensor_bytes(module.weight)
        packed_bytes += replacement.quantized_weight.nbytes
        model.set_submodule(name, replacement)
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


def plan_quantization(model: nn.Module, config: QKernelsConfig, tied: Sequence[str] = (),
                      quantize_tied: bool = False) -> tuple:
    """(targets, kept) for quantizing ``model`` with ``config``: targets lists (name, module,
    settings) of each nn.Linear to convert, its settings already checked against its shape;
    kept maps each other nn.Linear to why it stays in full precision. A weight shared with
    another module, or named in ``tied``, is a tied weight and stays unless quantize_tied."""
    uses = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
    targets, kept = [], {}
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        settings = config.settings_for(name)
        if (uses.get(id(module.weight), 0) > 1 or name in tied) and not quantize_tied:
            kept[name] = "tied weight"
        elif settings is None:
            kept[name] = "skipped"
        else:
            try:   # e.g. overrides that combine badly: fail before any weight is touched
                resolve_settings(settings["fmt"], settings["group_size"], settings["symmetric"],
                                 module.in_features, settings["activations"])
            except (TypeError, ValueError) as error:
                raise type(error)(f"{name}: {error}") from error
            targets.append((name, module, settings))
    return targets, kept
