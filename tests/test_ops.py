"""torch.ops.qkernels.matmul and qk.matmul on the CPU: every backend against the fp64 oracle,
the op contract (opcheck, torch.compile, autograd), backend selection and bad inputs."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import qkernels as qk
from qkernels import ops

from conftest import ODD_SIZES, REL_TOL, fp64_reference, random_weight, rel_err

FORMATS = [("int8", False), ("int4", False), ("int4", True), ("nf4", False)]
CPU_BACKENDS = qk.available_backends("cpu")


def sample_inputs(m, n, k, fmt, symmetric=False, group_size=64, dtype=torch.float32, bias=False,
                  device="cpu"):
    qw = qk.quantize(random_weight(n, k, device=device), fmt, group_size, symmetric=symmetric)
    x = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(n, device=device).to(dtype) if bias else None
    return x, qw, b


def test_cpu_backends_are_built():
    assert CPU_BACKENDS == ["cpu", "reference"]
    assert "cpu" in ops.available_backends()["cpu"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fmt,symmetric", FORMATS)
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("n,k", [(1, 1), (3, 17), (17, 576), (64, 577)])
def test_matmul_matches_fp64_reference(backend, fmt, symmetric, group_size, m, n, k):
    x, qw, _ = sample_inputs(m, n, k, fmt, symmetric, group_size)
    y = qk.matmul(x, qw, backend=backend)
    assert y.shape == (m, n) and y.dtype == torch.float32 and y.device == x.device
    assert rel_err(y, fp64_reference(x, qw)) <= REL_TOL[torch.float32]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt,symmetric", FORMATS)
@pytest.mark.parametrize("m", [1, 9])
def test_activation_dtypes_and_bias(backend, dtype, fmt, symmetric, m):
    x, qw, bias = sample_inputs(m, 33, 577, fmt, symmetric, 64, dtype, bias=True)
    y = qk.matmul(x, qw, bias, backend=backend)
    assert y.dtype == dtype and y.shape == (m, 33)
    assert rel_err(y, fp64_reference(x, qw, bias)) <= REL_TOL[dtype]


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 20), n=st.sampled_from(ODD_SIZES[:4]), k=st.sampled_from(ODD_SIZES),
       fmt=st.sampled_from(FORMATS), group_size=st.sampled_from([32, 64, 128, 256, -1]),
       backend=st.sampled_from(CPU_BACKENDS))
def test_matmul_fuzz(m, n, k, fmt, group_size, backend):
    x, qw, _ = sample_inputs(m, n, k, fmt[0], fmt[1], group_size)
    assert rel_err(qk.matmul(x, qw, backend=backend), fp64_reference(x, qw)) <= 2e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("batch_shape", [(), (2, 3), (1, 1, 4)])
def test_leading_dimensions_are_kept(backend, batch_shape):
    qw = qk.quantize(random_weight(5, 40), "int4", 32)
    x = torch.randn(*batch_shape, 40)
    y = qk.matmul(x, qw, backend=backend)
    assert y.shape == (*batch_shape, 5)
    assert rel_err(y, fp64_reference(x.reshape(-1, 40), qw).reshape(*batch_shape, 5)) <= 2e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_batch(backend):
    qw = qk.quantize(random_weight(5, 40), "nf4", 32)
    assert qk.matmul(torch.randn(0, 40), qw, backend=backend).shape == (0, 5)


def test_non_contiguous_input():
    qw = qk.quantize(random_weight(6, 64), "int8")
    x = torch.randn(64, 4).T  # [4, 64] with stride (1, 4)
    assert rel_err(qk.matmul(x, qw, backend="cpu"), fp64_reference(x, qw)) <= 2e-5


# --- nf4 with double-quantized absmax: torch.ops.qkernels.matmul_nf4_dq ---------------------

def sample_double_quant_inputs(m, n, k, group_size=64, dtype=torch.float32, bias=False):
    qw = qk.quantize(random_weight(n, k), "nf4", group_size, double_quant=True)
    x = torch.randn(m, k).to(dtype)
    return x, qw, torch.randn(n).to(dtype) if bias else None


def nf4_dq_args(x, qw, bias=None):
    return (x, qw.qweight, qw.absmax_codes, qw.absmax_scales, qw.absmax_offsets, qw.group_size,
            bias)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("group_size", [16, 64, -1])
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("n,k", [(1, 1), (3, 17), (17, 576), (64, 577)])
def test_double_quant_matmul_matches_fp64_reference(backend, group_size, m, n, k):
    x, qw, bias = sample_double_quant_inputs(m, n, k, group_size, bias=True)
    y = qk.matmul(x, qw, bias, backend=backend)
    assert y.shape == (m, n) and y.dtype == torch.float32 and y.device == x.device
    assert rel_err(y, fp64_reference(x, qw, bias)) <= REL_TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 9])
def test_double_quant_activation_dtypes(dtype, m):
    x, qw, bias = sample_double_quant_inputs(m, 33, 577, 64, dtype, bias=True)
    y = qk.matmul(x, qw, bias, backend="cpu")
    assert y.dtype == dtype and y.shape == (m, 33)
    assert rel_err(y, fp64_reference(x, qw, bias)) <= REL_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_double_quant_opcheck(dtype, with_bias):
    x, qw, bias = sample_double_quant_inputs(3, 17, 65, 32, dtype, bias=with_bias)
    torch.library.opcheck(torch.ops.qkernels.matmul_nf4_dq.default, nf4_dq_args(x, qw, bias))


def test_double_quant_gradient_flows_to_input_and_bias():
    x, qw, bias = sample_double_quant_inputs(5, 12, 70, 32, bias=True)
    x.requires_grad_(True)
    bias.requires_grad_(True)
    grad_y = torch.randn(5, 12)
    ops.matmul_nf4_dq_op(*nf4_dq_args(x, qw, bias)).backward(grad_y)
    assert rel_err(x.grad, grad_y.double() @ qk.dequantize(qw).double()) <= 2e-5
    assert rel_err(bias.grad, grad_y.double().sum(0)) <= 2e-5


# --- the op contract -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,symmetric", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_opcheck(fmt, symmetric, dtype, with_bias):
    x, qw, bias = sample_inputs(3, 17, 65, fmt, symmetric, 32, dtype, bias=with_bias)
    args = (x, fmt, qw.qweight, qw.scale_tensor, qw.zeros, qw.group_size, bias)
    torch.library.opcheck(torch.ops.qkernels.matmul.default, args)


@pytest.mark.parametrize("fmt,symmetric", FORMATS)
def test_torch_compile_fullgraph(fmt, symmetric):
    x, qw, bias = sample_inputs(4, 24, 96, fmt, symmetric, 32, bias=True)

    @torch.compile(fullgraph=True)
    def layer(inp):
        return torch.relu(qk.matmul(inp, qw, bias)) * 2

    expected = torch.relu(fp64_reference(x, qw, bias)) * 2
    assert rel_err(layer(x), expected) <= 2e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fmt,symmetric", FORMATS)
def test_gradient_flows_to_input_and_bias(backend, fmt, symmetric):
    x, qw, bias = sample_inputs(5, 12, 70, fmt, symmetric, 32, bias=True)
    x.requires_grad_(True)
    bias.requires_grad_(True)
    grad_y = torch.randn(5, 12)
    qk.matmul(x, qw, bias, backend=backend).backward(grad_y)
    w = qk.dequantize(qw).double()
    assert rel_err(x.grad, grad_y.double() @ w) <= 2e-5
    assert rel_err(bias.grad, grad_y.double().sum(0)) <= 2e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_grad_modes_agree_and_record_only_what_needs_grad(backend):
    # qk.matmul skips the op's autograd kernel when nothing needs a gradient: same values, and
    # the output requires grad exactly when some input does with grad enabled.
    x, qw, bias = sample_inputs(3, 17, 577, "int4", group_size=64, bias=True)
    expected = qk.matmul(x, qw, bias, backend=backend)
    assert not expected.requires_grad
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            assert torch.equal(qk.matmul(x.requires_grad_(True), qw, bias, backend=backend),
                               expected)
    assert qk.matmul(x, qw, bias, backend=backend).requires_grad
    scales = qw.scales.clone().requires_grad_(True)
    y = ops.matmul_tensors(x.detach(), "int4", qw.qweight, scales, qw.zeros, 64, bias,
                           backend=backend)
    assert y.requires_grad and torch.equal(y.detach(), expected)


# --- backend selection -----------------------------------------------------------------------

def test_environment_forces_a_backend(monkeypatch):
    monkeypatch.setenv("QKERNELS_BACKEND", "reference")
    assert ops.select_backend(torch.device("cpu")) == "reference"
    monkeypatch.setenv("QKERNELS_BACKEND", "")
    assert ops.select_backend(torch.device("cpu")) == "cpu"
    monkeypatch.setenv("QKERNELS_BACKEND", "reference")  # the cached choice follows the variable
    assert ops.select_backend(torch.device("cpu")) == "reference"
    monkeypatch.delenv("QKERNELS_BACKEND")
    assert ops.select_backend(torch.device("cpu")) == "cpu"
    assert ops.select_backend(torch.device("meta")) == "reference"


def test_environment_rejects_unknown_backend(monkeypatch):
    monkeypatch.setenv("QKERNELS_BACKEND", "fastest")
    x, qw, _ = sample_inputs(1, 4, 32, "int4")
    for _ in range(2):  # a rejected choice is not cached: it raises on every call
        with pytest.raises(ValueError, match="QKERNELS_BACKEND: expected one of"):
            qk.matmul(x, qw)


def test_forcing_a_backend_that_cannot_run_raises():
    x, qw, _ = sample_inputs(1, 4, 32, "int4")
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run on cpu tensors"):
        qk.matmul(x, qw, backend="cuda")
    with pytest.raises(ValueError, match="backend: expected one of"):
        qk.matmul(x, qw, backend="gpu")


# --- bad inputs ------------------------------------------------------------------------------

def test_bad_inputs_to_matmul():
    x, qw, _ = sample_inputs(2, 8, 64, "int4", group_size=32)
    with pytest.raises(TypeError, match="x: expected dtype float32, float16 or bfloat16"):
        qk.matmul(x.to(torch.int32), qw)
    with pytest.raises(TypeError, match="x: expected dtype float32, float16 or bfloat16"):
        qk.matmul(x.double(), qw)
    for k in (62, 63):
        with pytest.raises(ValueError, match=rf"x: expected last dimension 64 \(K of qw\)"):
            qk.matmul(x[:, :k], qw)
    with pytest.raises(ValueError, match="qweight: expected 31 bytes per row for x's K=62"):
        ops.matmul_tensors(x[:, :62], "int4", qw.qweight, qw.scales, qw.zeros, 32, None)
    with pytest.raises(ValueError, match="x: expected shape"):
        qk.matmul(torch.tensor(1.0), qw)
    with pytest.raises(ValueError, match=r"bias: expected shape \(8,\)"):
        qk.matmul(x, qw, torch.randn(7))
    with pytest.raises(TypeError, match="bias: expected dtype torch.float32"):
        qk.matmul(x, qw, torch.randn(8).half())
    with pytest.raises(ValueError, match="qweight: expected device meta"):
        qk.matmul(x.to("meta"), qw)
    with pytest.raises(TypeError, match="qw: expected a QuantizedWeight"):
        qk.matmul(x, qw.qweight)


@pytest.mark.parametrize("call", ["python", "op"])
def test_bad_tensors_raise_in_python_and_in_cpp(call):
    x, qw, _ = sample_inputs(2, 8, 64, "int4", group_size=32)
    run = ops.matmul_tensors if call == "python" else ops.matmul_op
    cases = [
        (dict(fmt="int5"), ValueError, "fmt: expected one of|fmt expected one of"),
        (dict(scales=qw.scales.double()), TypeError, "scales: expected dtype float32|scales expected dtype float"),
        (dict(scales=qw.scales[:, :1]), ValueError, r"scales: expected shape|scales expected shape"),
        (dict(zeros=qw.zeros[:1]), ValueError, "zeros: expected shape|zeros expected a contiguous tensor of shape"),
        (dict(group_size=0), ValueError, "group_size: expected >= 1|group_size expected >= 1"),
        (dict(qweight=qw.qweight.to(torch.int8)), TypeError, "qweight: expected dtype|qweight expected dtype"),
        (dict(qweight=qw.qweight[:, :5]), ValueError, "bytes per row"),
    ]
    base = dict(x=x, fmt="int4", qweight=qw.qweight, scales=qw.scales, zeros=qw.zeros,
                group_size=32, bias=None)
    for change, exc, message in cases:
        args = base | change
        with pytest.raises(exc, match=message):
            run(args["x"], args["fmt"], args["qweight"], args["scales"], args["zeros"],
                args["group_size"], args["bias"])


@pytest.mark.parametrize("call", ["python", "op"])
def test_bad_double_quant_tensors_raise(call):
    x = torch.randn(2, 64)
    qw = qk.quantize(torch.randn(8, 64), "nf4", 32, double_quant=True)
    run = ops.matmul_nf4_dq_tensors if call == "python" else ops.matmul_nf4_dq_op
    base = dict(qweight=qw.qweight, absmax_codes=qw.absmax_codes,
                absmax_scales=qw.absmax_scales, absmax_offsets=qw.absmax_offsets, group_size=32)
    # Python's message, then the C++ op's (csrc/torch/checks.h).
    cases = [
        (dict(absmax_codes=qw.absmax_codes.to(torch.int8)), TypeError,
         "absmax_codes: expected dtype uint8|absmax_codes expected dtype uint8"),
        (dict(absmax_codes=qw.absmax_codes[:, :1]), ValueError,
         r"absmax_codes: expected shape \(8, 2\)|absmax_codes expected a contiguous tensor of "
         r"shape \[8, 2\]"),
        (dict(absmax_codes=qw.absmax_codes.T.contiguous().T), ValueError,
         "absmax_codes expected a contiguous tensor") if call == "op" else None,
        (dict(absmax_scales=qw.absmax_scales.double()), TypeError,
         "absmax_scales: expected dtype float32|absmax_scales expected dtype float32"),
        (dict(absmax_offsets=torch.zeros(2)), ValueError,
         r"absmax_offsets: expected shape \(1,\)|absmax_offsets expected a contiguous tensor of "
         r"shape \[1\]"),
        (dict(group_size=16), ValueError,
         r"absmax_codes: expected shape \(8, 4\)|absmax_codes expected a contiguous tensor of "
         r"shape \[8, 4\]"),
        (dict(qweight=qw.qweight[:, :5]), ValueError, "bytes per row"),
    ]
    if call == "python":  # a CPU op call with a meta tensor dispatches to the fake impl
        cases += [
            (dict(absmax_scales=qw.absmax_scales.to("meta")), ValueError,
             "absmax_scales: expected device cpu"),
            (dict(absmax_codes=qw.absmax_codes.to("meta")), ValueError,
             "absmax_codes: expected device cpu"),
        ]
    for case in filter(None, cases):
        change, exc, message = case
        args = base | change
        with pytest.raises(exc, match=message):
            run(x, args["qweight"], args["absmax_codes"], args["absmax_scales"],
                args["absmax_offsets"], args["group_size"])


def test_zeros_rejected_for_formats_without_them():
    x, qw, _ = sample_inputs(2, 8, 64, "nf4", group_size=32)
    with pytest.raises(ValueError, match="zeros"):
        ops.matmul_op(x, "nf4", qw.qweight, qw.absmax, qw.absmax, 32, None)
