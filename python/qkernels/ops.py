"""The Python face of torch.ops.qkernels.*: thin wrappers, their fake (meta) impls and autograd,
the backend table, and qk.matmul's choice of backend.

Backends are peers behind one table (``BACKENDS``):

=========  ===============  ============================================================
name       runs on          what it is
=========  ===============  ============================================================
cuda       CUDA tensors     hand-written CUDA impls of torch.ops.qkernels.matmul, matmul_nf4_dq
triton     CUDA tensors     Triton kernels (python/qkernels/triton), imported on first use
cpu        CPU tensors      C++ AVX2 / NEON / scalar impls of the same two ops
reference  any device       dequantize with formats.py, then F.linear in fp32: the oracle
=========  ===============  ============================================================

The automatic choice takes the first available backend of ``PREFERENCE[device.type]`` and falls
back quietly; ``backend=`` or the environment variable QKERNELS_BACKEND force one and raise if
it cannot run. GEMV-vs-GEMM thresholds live with each backend's kernels (csrc/cpu/dispatch.cpp
for the CPU), where the measurement that chose them is recorded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import _C  # noqa: F401  (registers the torch.ops.qkernels schemas and C++ impls)
from . import activations as int8_activations
from . import formats
from .formats import QuantizedWeight

BACKEND_ENV_VAR = "QKERNELS_BACKEND"
# os.environ.get of an unset variable raises and catches a KeyError inside os.environ, ~1 us
# (up to ~4 us measured inside a layer's call): a tenth of a small layer's whole call, paid on
# every call. The mapping's own encoded dict answers the same question in ~0.06 us; it is what
# os.environ reads and writes, so a variable set or deleted through os.environ shows at once.
_ENVIRON_DATA = getattr(os.environ, "_data", None)
_BACKEND_ENV_KEY = os.environ.encodekey(BACKEND_ENV_VAR) if _ENVIRON_DATA is not None else None


def _backend_from_env() -> Optional[str]:
    """$QKERNELS_BACKEND, or None where it is unset."""
    if _ENVIRON_DATA is None:  # not CPython's os.environ
        return os.environ.get(BACKEND_ENV_VAR)
    value = _ENVIRON_DATA.get(_BACKEND_ENV_KEY)
    return None if value is None else os.environ.decodevalue(value)
ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --- torch.ops.qkernels.matmul ---------------------------------------------------------------

def _check(error_type, cond, message):
    """torch._check_value / _check_type, minus their per-call cost in eager mode: a plain bool
    that holds returns at once (torch's version imports and inspects on every call, ~1 us a
    check); anything else, SymBool while tracing included, takes torch's path."""
    if cond is True:
        return
    torch._check_with(error_type, cond, message)


def check_matmul_args(x, fmt, qweight, scales, zeros, group_size, bias):
    """The whole shape / dtype / device contract of qkernels::matmul, shared by its fake impl
    and by qk.matmul (so every backend rejects the same inputs with the same message)."""
    _check(ValueError, fmt in formats.FORMATS,
           lambda: f"fmt: expected one of {formats.FORMATS}, got {fmt!r}")
    _check(TypeError, x.dtype in ACTIVATION_DTYPES,
           lambda: f"x: expected dtype float32, float16 or bfloat16, got {x.dtype}")
    _check(ValueError, x.dim() >= 1, lambda: "x: expected shape [..., K], got a 0-dim tensor")
    code_dtype = torch.int8 if fmt == "int8" else torch.uint8
    _check(TypeError, qweight.dtype == code_dtype,
           lambda: f"qweight: expected dtype {code_dtype} for {fmt}, got {qweight.dtype}")
    _check(ValueError, qweight.dim() == 2,
           lambda: f"qweight: expected 2 dims [N, bytes per row], got {qweight.dim()}")
    n, k = qweight.shape[0], x.shape[-1]
    _check(ValueError, k >= 1, lambda: f"x: expected a last dimension K >= 1, got {k}")
    row_bytes = formats.packed_row_bytes(fmt, k)
    _check(ValueError, qweight.shape[1] == row_bytes,
           lambda: f"qweight: expected {row_bytes} bytes per row for x's K={k} in {fmt}, got "
                   f"{qweight.shape[1]} (does x's last dimension match in_features?)")
    _check(ValueError, group_size >= 1, lambda: f"group_size: expected >= 1, got {group_size}")
    groups = formats.num_groups(k, group_size)
    scale_name = "absmax" if fmt == "nf4" else "scales"
    _check(TypeError, scales.dtype == torch.float32,
           lambda: f"{scale_name}: expected dtype float32, got {scales.dtype}")
    _check(ValueError, scales.dim() == 2 and scales.shape[0] == n and scales.shape[1] == groups,
           lambda: f"{scale_name}: expected shape ({n}, {groups}), got {tuple(scales.shape)}")
    if zeros is not None:
        _check(ValueError, fmt == "int4", lambda: f"zeros: expected None for {fmt}, got a tensor")
        _check(TypeError, zeros.dtype == torch.float32,
               lambda: f"zeros: expected dtype float32, got {zeros.dtype}")
        _check(ValueError, zeros.dim() == 2 and zeros.shape[0] == n and zeros.shape[1] == groups,
               lambda: f"zeros: expected shape ({n}, {groups}), got {tuple(zeros.shape)}")
    if bias is not None:
        _check(TypeError, bias.dtype == x.dtype,
               lambda: f"bias: expected dtype {x.dtype} (that of x), got {bias.dtype}")
        _check(ValueError, bias.dim() == 1 and bias.shape[0] == n,
               lambda: f"bias: expected shape ({n},), got {tuple(bias.shape)}")
    device = x.device
    for name, t in (("qweight", qweight), ("scales", scales), ("zeros", zeros), ("bias", bias)):
        _check(ValueError, t is None or t.device == device,
               lambda: f"{name}: expected device {device} (that of x), got {t.device}")


def matmul_op(x, fmt, qweight, scales, zeros, group_size, bias=None):
    """torch.ops.qkernels.matmul: y = x @ dequant(W).T (+ bias) with the compiled kernels of
    x's device (cpu or cuda backend)."""
    return torch.ops.qkernels.matmul(x, fmt, qweight, scales, zeros, group_size, bias)


@torch.library.register_fake("qkernels::matmul")
def _matmul_fake(x, fmt, qweight, scales, zeros, group_size, bias):
    check_matmul_args(x, fmt, qweight, scales, zeros, group_size, bias)
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def matmul_triton_op(x, fmt, qweight, scales, zeros, group_size, bias=None):
    """torch.ops.qkernels.matmul_triton: the same matmul by the Triton kernels; its impls are
    registered by python/qkernels/triton on first use."""
    return torch.ops.qkernels.matmul_triton(x, fmt, qweight, scales, zeros, group_size, bias)


@torch.library.register_fake("qkernels::matmul_triton")
def _matmul_triton_fake(x, fmt, qweight, scales, zeros, group_size, bias):
    check_matmul_args(x, fmt, qweight, scales, zeros, group_size, bias)
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def check_matmul_a8_args(x, fmt, qweight, scales, zeros, group_size, bias):
    """The contract of qkernels::matmul_a8: matmul's, with a weight that int8 activations can
    multiply (activations.check_weight)."""
    check_matmul_args(x, fmt, qweight, scales, zeros, group_size, bias)
    for condition, message in int8_activations.weight_conditions(fmt, group_size, x.shape[-1]):
        _check(ValueError, condition, message)


def matmul_a8_op(x, fmt, qweight, scales, zeros, group_size, bias=None):
    """torch.ops.qkernels.matmul_a8: matmul with x quantized to int8 per block of 32
    (activations.py), by the CPU kernels; CPU tensors only."""
    return torch.ops.qkernels.matmul_a8(x, fmt, qweight, scales, zeros, group_size, bias)


@torch.library.register_fake("qkernels::matmul_a8")
def _matmul_a8_fake(x, fmt, qweight, scales, zeros, group_size, bias):
    check_matmul_a8_args(x, fmt, qweight, scales, zeros, group_size, bias)
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


@torch.library.impl("qkernels::matmul_a8", "CUDA")
def _matmul_a8_cuda(x, fmt, qweight, scales, zeros, group_size, bias):
    raise NotImplementedError("qkernels.matmul_a8: int8 activations run on the CPU only; x is on "
                              f"{x.device} (use activations=None there)")


def check_nf4_dq_args(x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size,
                      bias):
    """The contract of qkernels::matmul_nf4_dq and matmul_nf4_dq_triton: check_matmul_args for
    nf4, with the absmax given as 8-bit codes and per-block scales and offsets
    (formats.decode_absmax)."""
    _check(TypeError, absmax_codes.dtype == torch.uint8,
           lambda: f"absmax_codes: expected dtype uint8, got {absmax_codes.dtype}")
    n, groups = qweight.shape[0], formats.num_groups(x.shape[-1], group_size)
    _check(ValueError, tuple(absmax_codes.shape) == (n, groups),
           lambda: f"absmax_codes: expected shape ({n}, {groups}), got "
                   f"{tuple(absmax_codes.shape)}")
    blocks = formats.num_groups(n * groups, formats.DOUBLE_QUANT_BLOCK)
    for name, t in (("absmax_scales", absmax_scales), ("absmax_offsets", absmax_offsets)):
        _check(TypeError, t.dtype == torch.float32,
               lambda: f"{name}: expected dtype float32, got {t.dtype}")
        _check(ValueError, tuple(t.shape) == (blocks,),
               lambda: f"{name}: expected shape ({blocks},), got {tuple(t.shape)}")
        _check(ValueError, t.device == x.device,
               lambda: f"{name}: expected device {x.device} (that of x), got {t.device}")
    _check(ValueError, absmax_codes.device == x.device,
           lambda: f"absmax_codes: expected device {x.device} (that of x), got "
                   f"{absmax_codes.device}")
    # The rest of the contract is nf4's; a zero-copy fp32 view of the right shape stands in for
    # the decoded absmax.
    check_matmul_args(x, "nf4", qweight, absmax_scales[:1].expand(n, groups), None, group_size,
                      bias)


def matmul_nf4_dq_op(x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size,
                     bias=None):
    """torch.ops.qkernels.matmul_nf4_dq: nf4 with double-quantized absmax, read as it is stored
    by the compiled kernels of x's device (cpu or cuda backend), which decode it per tile of rows
    (cpu) or where each group's absmax is loaded (cuda)."""
    return torch.ops.qkernels.matmul_nf4_dq(x, qweight, absmax_codes, absmax_scales,
                                            absmax_offsets, group_size, bias)


@torch.library.register_fake("qkernels::matmul_nf4_dq")
def _matmul_nf4_dq_fake(x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size,
                        bias):
    check_nf4_dq_args(x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size, bias)
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def matmul_nf4_dq_triton_op(x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size,
                            bias=None):
    """torch.ops.qkernels.matmul_nf4_dq_triton: nf4 with double-quantized absmax, read as it is
    stored by the Triton kernels (registered by python/qkernels/triton on first use)."""
    return torch.ops.qkernels.matmul_nf4_dq_triton(x, qweight, absmax_codes, absmax_scales,
                                                   absmax_offsets, group_size, bias)


@torch.library.register_fake("qkernels::matmul_nf4_dq_triton")
def _matmul_nf4_dq_triton_fake(x, qweight, absmax_codes, absmax_scales, absmax_offsets,
                               group_size, bias):
    check_nf4_dq_args(x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size, bias)
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def _matmul_setup_context(ctx, inputs, output):
    x, fmt, qweight, scales, zeros, group_size, bias = inputs
    ctx.fmt, ctx.group_size, ctx.k = fmt, group_size, x.shape[-1]
    ctx.has_bias = bias is not None
    ctx.save_for_backward(qweight, scales, zeros)


def _matmul_backward(ctx, grad_y):
    qweight, scales, zeros = ctx.saved_tensors
    grad_x, grad_bias = _input_and_bias_grads(ctx, grad_y, qweight, scales, zeros)
    return grad_x, None, None, None, None, None, grad_bias


def _input_and_bias_grads(ctx, grad_y, qweight, scales, zeros):
    # dx = dy @ W through a dequantized copy of W, one layer at a time (the QLoRA route): the
    # weights are frozen, so there is no gradient for qweight, scales or zeros. x is input 0
    # and bias input 6 of every matmul op.
    w = formats.dequantize_tensors(ctx.fmt, ctx.k, ctx.group_size, qweight, scales, zeros)
    grad_x = (grad_y.to(torch.float32) @ w).to(grad_y.dtype) if ctx.needs_input_grad[0] else None
    grad_bias = None
    if ctx.has_bias and ctx.needs_input_grad[6]:
        grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
    return grad_x, grad_bias


# matmul_a8 too: its input gradient is that of the dequantized weight alone, as if x had not been
# quantized (straight-through), computed through the same dequantized copy.
for _op_name in ("qkernels::matmul", "qkernels::matmul_triton", "qkernels::matmul_a8"):
    torch.library.register_autograd(_op_name, _matmul_backward, setup_context=_matmul_setup_context)


def _matmul_nf4_dq_setup_context(ctx, inputs, output):
    x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size, bias = inputs
    ctx.fmt, ctx.group_size, ctx.k = "nf4", group_size, x.shape[-1]
    ctx.has_bias = bias is not None
    ctx.save_for_backward(qweight, absmax_codes, absmax_scales, absmax_offsets)


def _matmul_nf4_dq_backward(ctx, grad_y):
    qweight, absmax_codes, absmax_scales, absmax_offsets = ctx.saved_tensors
    absmax = formats.decode_absmax(absmax_codes, absmax_scales, absmax_offsets)
    grad_x, grad_bias = _input_and_bias_grads(ctx, grad_y, qweight, absmax, None)
    return grad_x, None, None, None, None, None, grad_bias


for _op_name in ("qkernels::matmul_nf4_dq", "qkernels::matmul_nf4_dq_triton"):
    torch.library.register_autograd(_op_name, _matmul_nf4_dq_backward,
                                    setup_context=_matmul_nf4_dq_setup_context)


# --- backends --------------------------------------------------------------------------------

def _matmul_reference(x, fmt, qweight, scales, zeros, group_size, bias):
    w = formats.dequantize_tensors(fmt, x.shape[-1], group_size, qweight, scales, zeros)
    y = F.linear(x.to(torch.float32), w, None if bias is None else bias.to(torch.float32))
    return y.to(x.dtype)


def _matmul_a8_reference(x, fmt, qweight, scales, zeros, group_size, bias):
    w = int8_activations.dequantize_weight(fmt, x.shape[-1], group_size, qweight, scales, zeros)
    x_seen = int8_activations.fake_quantize(x)
    y = F.linear(x_seen, w, None if bias is None else bias.to(torch.float32))
    return y.to(x.dtype)


# The backends with an int8-activation matmul (activations="int8"), same arguments as matmul.
A8_MATMULS = {
    "cpu": matmul_a8_op,
    "reference": _matmul_a8_reference,
}


def _matmul_triton(x, fmt, qweight, scales, zeros, group_size, bias):
    from . import triton as _registers_triton_impls  # noqa: F401  (first use only: fast import)
    return matmul_triton_op(x, fmt, qweight, scales, zeros, group_size, bias)


# Installation facts, read once at import (cheap: no GPU query) so that torch.compile sees
# constants when it traces select_backend.
_COMPILED_DEVICE_KEYS = frozenset(
    key for key in ("CPU", "CUDA")
    if torch._C._dispatch_has_kernel_for_dispatch_key("qkernels::matmul", key))
_TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    device_types: Optional[tuple]   # None: any device
    is_built: Callable[[], bool]    # compiled or importable in this installation
    matmul: Callable                # (x, fmt, qweight, scales, zeros, group_size, bias) -> y

    def runs_on(self, device_type: str) -> bool:
        return (self.device_types is None or device_type in self.device_types) and self.is_built()


BACKENDS = {
    "cuda": Backend("cuda", ("cuda",), lambda: "CUDA" in _COMPILED_DEVICE_KEYS, matmul_op),
    "triton": Backend("triton", ("cuda",), lambda: _TRITON_IMPORTABLE, _matmul_triton),
    "cpu": Backend("cpu", ("cpu",), lambda: "CPU" in _COMPILED_DEVICE_KEYS, matmul_op),
    "reference": Backend("reference", None, lambda: True, _matmul_reference),
}

# Fastest first, per device type; any other device type gets the reference backend.
PREFERENCE = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}


def select_backend(device: torch.device, backend: Optional[str] = None) -> str:
    """The backend that runs a matmul on ``device``: ``backend`` if given, else
    $QKERNELS_BACKEND if set (both must be able to run here), else the fastest available.
    The variable is read on every call; the choice is cached per (device type, argument,
    variable), so a changed variable takes effect at once."""
    key = (device.type, backend, _backend_from_env())
    name = _selected_backends.get(key)
    if name is None:
        name = _selected_backends[key] = _select_backend(device.type, backend, key[2])
    return name


# Only successful choices are cached: a bad name or an unavailable backend raises every time.
_selected_backends: dict = {}


def _select_backend(device_type: str, backend: Optional[str], from_env: Optional[str]) -> str:
    forced = backend or from_env or None
    if forced is not None:
        source = "backend" if backend else BACKEND_ENV_VAR
        if forced not in BACKENDS:
            raise ValueError(f"{source}: expected one of {tuple(BACKENDS)}, got {forced!r}")
        if not BACKENDS[forced].runs_on(device_type):
            raise RuntimeError(f"{source}={forced!r} cannot run on {device_type} tensors in this "
                               f"installation; available there: {available_backends(device_type)}")
        return forced
    for name in PREFERENCE.get(device_type, ("reference",)):
        if BACKENDS[name].runs_on(device_type):
            return name
    return "reference"


def available_backends(device_type: Optional[str] = None):
    """Backends that can run on each device type, fastest first: {"cpu": [...], "cuda": [...]}
    (CUDA listed only when a GPU is visible). With ``device_type``, that one list."""
    if device_type is not None:
        order = PREFERENCE.get(device_type, ("reference",))
        return [name for name in order if BACKENDS[name].runs_on(device_type)]
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {dt: available_backends(dt) for dt in device_types}


# --- the public matmul -----------------------------------------------------------------------

def matmul_tensors(x, fmt, qweight, scales, zeros, group_size, bias=None, backend=None,
                   activations=None):
    """qk.matmul on canonical tensors (scales = absmax for nf4); what QuantLinear calls."""
    if activations is not None:
        return _matmul_a8_tensors(x, fmt, qweight, scales, zeros, group_size, bias, backend)
    if torch.compiler.is_compiling():
        # The ops' fake impls run the checks while tracing (dynamo cannot trace their message
        # closures), and the graph keeps the op's autograd; nothing here is per call.
        name = _select_backend(x.device.type, backend, os.environ.get(BACKEND_ENV_VAR))
        return BACKENDS[name].matmul(x, fmt, qweight, scales, zeros, group_size, bias)
    name = select_backend(x.device, backend)
    args = (x, fmt, qweight, scales, zeros, group_size, bias)
    return _run_checked(BACKENDS[name].matmul, name, args, (x, scales, zeros, bias),
                        check_matmul_args)


def _run_checked(matmul, name, args, differentiable, check):
    """matmul(*args) on backend ``name`` in eager mode, its arguments checked by check(*args).
    The compiled backends' ops check the whole contract in C++ (csrc/torch/checks.h) for ~1 us,
    where the Python checks cost ~6 us a call: there only a rejected call runs them, so that every
    backend still reports a bad argument in the same words."""
    if name not in _COMPILED_BACKENDS:
        check(*args)
        return _run_backend(matmul, name, args, differentiable)
    try:
        return _run_backend(matmul, name, args, differentiable)
    except (ValueError, TypeError):
        check(*args)
        raise


def _run_backend(matmul, name, args, differentiable):
    """matmul(*args) on backend ``name``; differentiable: the tensors a gradient could reach."""
    if name in _OP_BACKENDS and not _needs_grad(*differentiable):
        # The ops' autograd kernel is Python (register_autograd): ~9 us a call even under
        # no_grad, when it only redispatches. Without a gradient to record, go past it.
        with torch._C._AutoDispatchBelowAutograd():
            return matmul(*args)
    return matmul(*args)


def _matmul_a8_tensors(x, fmt, qweight, scales, zeros, group_size, bias, backend):
    """matmul_tensors with activations="int8": the cpu or reference backend."""
    compiling = torch.compiler.is_compiling()
    if compiling:
        name = _select_backend(x.device.type, backend, os.environ.get(BACKEND_ENV_VAR))
    else:
        name = select_backend(x.device, backend)
    if name not in A8_MATMULS:
        raise ValueError(f"activations: 'int8' runs on the backends {tuple(A8_MATMULS)} (CPU "
                         f"only), got backend {name!r} for {x.device.type} tensors")
    args = (x, fmt, qweight, scales, zeros, group_size, bias)
    if compiling:   # the fake impl checks while tracing, as in matmul_tensors
        return A8_MATMULS[name](*args)
    return _run_checked(A8_MATMULS[name], name, args, (x, scales, zeros, bias),
                        check_matmul_a8_args)


def _matmul_nf4_dq_reference(x, qweight, absmax_codes, absmax_scales, absmax_offsets,
                             group_size, bias):
    absmax = formats.decode_absmax(absmax_codes, absmax_scales, absmax_offsets)
    return _matmul_reference(x, "nf4", qweight, absmax, None, group_size, bias)


def _matmul_nf4_dq_triton(x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size,
                          bias):
    from . import triton as _registers_triton_impls  # noqa: F401  (first use only: fast import)
    return matmul_nf4_dq_triton_op(x, qweight, absmax_codes, absmax_scales, absmax_offsets,
                                   group_size, bias)


# How each backend runs nf4 with double-quantized absmax (the same arguments, in the order of
# qkernels::matmul_nf4_dq).
NF4_DQ_MATMULS = {
    "cuda": matmul_nf4_dq_op,
    "triton": _matmul_nf4_dq_triton,
    "cpu": matmul_nf4_dq_op,
    "reference": _matmul_nf4_dq_reference,
}


def matmul_nf4_dq_tensors(x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size,
                          bias=None, backend=None):
    """qk.matmul of a double-quantized nf4 weight, on its canonical tensors."""
    args = (x, qweight, absmax_codes, absmax_scales, absmax_offsets, group_size, bias)
    if torch.compiler.is_compiling():
        name = _select_backend(x.device.type, backend, os.environ.get(BACKEND_ENV_VAR))
        return NF4_DQ_MATMULS[name](*args)
    name = select_backend(x.device, backend)
    return _run_checked(NF4_DQ_MATMULS[name], name, args,
                        (x, absmax_scales, absmax_offsets, bias), check_nf4_dq_args)


# Backends whose matmul is a torch.ops.qkernels op, i.e. goes through the Python autograd kernel.
_OP_BACKENDS = frozenset(("cuda", "triton", "cpu"))
_COMPILED_BACKENDS = frozenset(("cuda", "cpu"))


def _needs_grad(x, scales, zeros, bias) -> bool:
    """Whether the op's autograd would record anything (qweight is integer: never)."""
    return torch.is_grad_enabled() and (
        x.requires_grad or scales.requires_grad
        or (zeros is not None and zeros.requires_grad) or (bias is not None and bias.requires_grad))


def matmul(x: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None,
           backend: Optional[str] = None, activations: Optional[str] = None) -> torch.Tensor:
    """y = x @ dequantize(qw).T (+ bias), in the dtype of x; x is [..., K], y is [..., N].

    activations="int8" (CPU only, int8, int4 and nf4 weights with groups of a multiple of 32 or
    per channel; nf4 through its table in Q15): x is first quantized to int8 per block of 32
    along K (qkernels.activations), and the kernels multiply integer codes; faster for decode-sized x, at a measured accuracy cost
    (README). None (default): x is used as given."""
    int8_activations.check_activations(activations)
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"qw: expected a QuantizedWeight (from qk.quantize), got {type(qw).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    # The packed codes alone cannot tell K from K + 1 (two nibbles a byte): check against qw.
    if x.dim() >= 1 and x.shape[-1] != qw.shape[1]:
        raise ValueError(f"x: expected last dimension {qw.shape[1]} (K of qw), got shape "
                         f"{tuple(x.shape)}")
    if qw.double_quant:
        if activations is not None:
            int8_activations.check_weight(qw.fmt, qw.group_size, qw.shape[1], double_quant=True)
        return matmul_nf4_dq_tensors(x, qw.qweight, qw.absmax_codes, qw.absmax_scales,
                                     qw.absmax_offsets, qw.group_size, bias, backend)
    return matmul_tensors(x, qw.fmt, qw.qweight, qw.scale_tensor, qw.zeros, qw.group_size, bias,
                          backend, activations)
