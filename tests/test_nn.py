"""QuantLinear: the drop-in nn.Linear. Outputs are checked against fp64 references: the
dequantized weight (what the layer must compute exactly, up to float rounding) and the original
nn.Linear (what it approximates, within the quantization error bound)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import qkernels as qk
from qkernels import formats

# (fmt, group_size): per-channel int8, ragged groups (K % g != 0 for the odd shapes), symmetric.
FORMAT_CASES = [("int8", None), ("int8", 32), ("int4", 32), ("int4", 128), ("nf4", 64),
                ("nf4", 16)]
# (N, K): odd sizes, K = 576 of SmolLM2 (not a multiple of 128), K = 1.
SHAPES = [(1, 1), (3, 17), (17, 96), (33, 576), (5, 577)]
ACTIVATION_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def sample_linear(n, k, bias=True, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        linear.weight.normal_(0, k ** -0.5)
        if bias:
            linear.bias.uniform_(-1, 1)
    return linear


def sample_inputs(k, leading=(4,), dtype=torch.float32, device="cpu", seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*leading, k, generator=generator).to(device=device, dtype=dtype)


def dequantized_reference(layer, x):
    """fp64 x @ dequant(W).T + bias: what the layer must compute."""
    w = qk.dequantize(layer.quantized_weight).double()
    bias = None if layer.bias is None else layer.bias.double()
    return F.linear(x.double(), w, bias)


def tolerance(dtype):
    return {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]


@pytest.mark.parametrize("fmt, group_size", FORMAT_CASES)
@pytest.mark.parametrize("n, k", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_from_linear_matches_dequantized_weight_and_error_bound(fmt, group_size, n, k, bias):
    linear = sample_linear(n, k, bias)
    layer = qk.QuantLinear.from_linear(linear, fmt, group_size=group_size)
    x = sample_inputs(k)
    y = layer(x)
    assert y.shape == (4, n) and y.dtype == x.dtype and y.device == x.device
    expected = dequantized_reference(layer, x)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4 * k ** 0.5)

    # Against the original nn.Linear: round-to-nearest moves each weight by at most half a
    # quantization step, so |dy[m, n]| <= sum_k |x[m, k]| * step[n, k] / 2.
    qw = layer.quantized_weight
    half_step = formats.quantization_step(qw).repeat_interleave(qw.group_size, dim=1)[:, :k] / 2
    bound = x.abs().double() @ half_step.double().T
    error = (y.double() - linear(x).detach().double()).abs()
    assert bool((error <= bound + 1e-4).all()), f"max excess {float((error - bound).max())}"


@pytest.mark.parametrize("leading", [(), (5,), (2, 3), (2, 1, 3)])
def test_input_shapes(leading):
    linear = sample_linear(7, 40)
    layer = qk.QuantLinear.from_linear(linear, "int4", group_size=32)
    x = sample_inputs(40, leading)
    y = layer(x)
    assert y.shape == (*leading, 7)
    torch.testing.assert_close(y.double(), dequantized_reference(layer, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ACTIVATION_DTYPES)
@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_dtype_moves_keep_fp32_scales_and_output_follows_input(fmt, dtype):
    layer = qk.QuantLinear.from_linear(sample_linear(9, 70), fmt)
    canonical = {name: buffer.clone() for name, buffer in layer.named_buffers()}
    layer = layer.to(dtype)
    assert layer.bias.dtype == dtype
    for name, buffer in layer.named_buffers():
        assert buffer.dtype == canonical[name].dtype, name
        assert torch.equal(buffer, canonical[name]), name
    x = sample_inputs(70, (3,), dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), dequantized_reference(layer, x),
                               rtol=tolerance(dtype), atol=tolerance(dtype) * 10)


@pytest.mark.parametrize("fmt, group_size", [("int8", None), ("int4", 32), ("nf4", 64)])
def test_state_dict_round_trip_through_safetensors(fmt, group_size, tmp_path):
    layer = qk.QuantLinear.from_linear(sample_linear(11, 100), fmt, group_size=group_size)
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    loaded = qk.QuantLinear(100, 11, bias=True, fmt=fmt, group_size=group_size)
    loaded.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    x = sample_inputs(100)
    assert torch.equal(loaded(x), layer(x))
    expected = {"qweight", "bias", "absmax" if fmt == "nf4" else "scales"}
    assert set(layer.state_dict()) == expected | ({"zeros"} if fmt == "int4" else set())


def test_symmetric_int4_has_no_zeros():
    layer = qk.QuantLinear.from_linear(sample_linear(6, 64, bias=False), "int4", group_size=32,
                                       symmetric=True)
    assert set(layer.state_dict()) == {"qweight", "scales"}
    x = sample_inputs(64)
    torch.testing.assert_close(layer(x).double(), dequantized_reference(layer, x), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("source, target, fragment", [
    (("int4", 32, False), ("nf4", 32, False), "absmax"),        # other canonical tensors
    (("int4", 32, False), ("int4", 32, True), "zeros"),         # asymmetric into symmetric
    (("int4", 32, False), ("int4", 64, False), "size mismatch"),  # other group count
    (("int8", None, False), ("int4", None, False), "size mismatch"),
])
def test_load_state_dict_rejects_format_mismatch(source, target, fragment):
    (fmt, group_size, symmetric), (fmt2, group_size2, symmetric2) = source, target
    layer = qk.QuantLinear.from_linear(sample_linear(8, 128), fmt, group_size=group_size,
                                       symmetric=symmetric)
    other = qk.QuantLinear(128, 8, fmt=fmt2, group_size=group_size2, symmetric=symmetric2)
    with pytest.raises(RuntimeError, match=fragment):
        other.load_state_dict(layer.state_dict())


def test_repr():
    layer = qk.QuantLinear.from_linear(sample_linear(5, 96, bias=False), "nf4", group_size=32)
    assert repr(layer) == ("QuantLinear(in_features=96, out_features=5, bias=False, fmt='nf4', "
                           "group_size=32)")
    symmetric = qk.QuantLinear(96, 5, fmt="int4", symmetric=True, backend="reference")
    assert "symmetric=True" in repr(symmetric) and "backend='reference'" in repr(symmetric)


def test_deepcopy_is_independent_and_equal():
    layer = qk.QuantLinear.from_linear(sample_linear(12, 50), "int4", group_size=16)
    clone = copy.deepcopy(layer)
    x = sample_inputs(50)
    assert torch.equal(clone(x), layer(x))
    for (name, a), (_, b) in zip(layer.state_dict().items(), clone.state_dict().items()):
        assert a.data_ptr() != b.data_ptr(), name
    clone.qweight.zero_()
    assert not torch.equal(clone(x), layer(x))


@pytest.mark.parametrize("fmt", formats.FORMATS)
@pytest.mark.parametrize("dtype", ACTIVATION_DTYPES)
def test_backward_input_gradient_against_fp64_reference(fmt, dtype):
    layer = qk.QuantLinear.from_linear(sample_linear(19, 77), fmt, group_size=16)
    layer.bias.requires_grad_(True)
    x = sample_inputs(77, (2, 3), dtype=dtype).requires_grad_(True)
    dy = sample_inputs(19, (2, 3), dtype=dtype, seed=2)
    layer(x).backward(dy)
    w = qk.dequantize(layer.quantized_weight).double()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.double(), dy.double() @ w, rtol=tolerance(dtype),
                               atol=tolerance(dtype) * 10)
    torch.testing.assert_close(layer.bias.grad.double(), dy.double().sum((0, 1)),
                               rtol=tolerance(dtype), atol=tolerance(dtype) * 10)
    # The weight is frozen: its canonical tensors are buffers, never trained.
    assert not any(p.requires_grad for n, p in layer.named_parameters() if n != "bias")
    assert all(not b.requires_grad for b in layer.buffers())


def test_compile_fullgraph_reference_backend_ragged_groups():
    # Every last group is partial (K = 200 and 199 with groups of 32 and 64; inductor once
    # miscomputed the dequantized weight there) and K = 199 leaves half a byte.
    model = nn.Sequential(
        qk.QuantLinear.from_linear(sample_linear(199, 200), "int4", group_size=32,
                                   backend="reference"),
        nn.GELU(),
        qk.QuantLinear.from_linear(sample_linear(72, 199, seed=3), "nf4", group_size=32,
                                   backend="reference"),
        qk.QuantLinear.from_linear(sample_linear(8, 72, seed=4), "int8", group_size=64,
                                   backend="reference"))
    compiled = torch.compile(model, fullgraph=True)
    x = sample_inputs(200, (3,))
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, error, fragment", [
    (lambda: qk.QuantLinear.from_linear(nn.Conv1d(3, 3, 1), "int4"), TypeError, "linear:"),
    (lambda: qk.QuantLinear(16, 4, fmt="int3"), ValueError, "fmt:"),
    (lambda: qk.QuantLinear(16, 4, fmt="int4", group_size=48), ValueError, "group_size:"),
    (lambda: qk.QuantLinear(16, 4, fmt="int4", group_size=32.0), TypeError, "group_size:"),
    (lambda: qk.QuantLinear(16, 4, fmt="nf4", symmetric=True), ValueError, "symmetric:"),
    (lambda: qk.QuantLinear(0, 4), ValueError, "in_features"),
    (lambda: qk.QuantLinear.from_linear(_nan_linear(), "nf4"), ValueError, "finite"),
])
def test_bad_construction_raises_naming_the_argument(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make()


def _nan_linear():
    linear = sample_linear(4, 16)
    with torch.no_grad():
        linear.weight[1, 3] = float("nan")
    return linear


@pytest.mark.parametrize("x, error, fragment", [
    (torch.randn(3, 33), ValueError, r"x: expected shape \[\.\.\., 32\]"),
    (torch.randn(()), ValueError, "x: expected shape"),
    (torch.randint(0, 5, (3, 32)), TypeError, "x: expected dtype"),
    (torch.randn(3, 32, dtype=torch.float64), TypeError, "x: expected dtype"),
])
def test_bad_inputs_raise_naming_the_argument(x, error, fragment):
    layer = qk.QuantLinear.from_linear(sample_linear(4, 32), "int4", group_size=16)
    with pytest.raises(error, match=fragment):
        layer(x)


def test_bias_dtype_follows_input_after_half():
    layer = qk.QuantLinear.from_linear(sample_linear(4, 32), "int8").half()
    x = sample_inputs(32, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16
