"""Int8 activations (activations="int8", torch.ops.qkernels.matmul_a8): the quantizer's definition,
every CPU path and the reference backend against the fp64 oracle, the op contract (opcheck,
torch.compile, autograd), the layer / config / file settings, and bad inputs. The aarch64 (NEON)
path is tested by tests/native under qemu, with poisoned outputs."""

import json
import math
import zlib

import pytest
import torch
from torch import nn

import qkernels as qk
from qkernels import _C, activations, formats, ops
from qkernels.serialization import read_header

from conftest import REL_TOL, random_weight, rel_err
from test_cpu_kernels import ISA_ENV_VAR, ISAS, quantize_any_group

FORMATS = [("int8", False), ("int4", False), ("int4", True), ("nf4", False)]
FORMAT_IDS = ["int8", "int4", "int4-sym", "nf4"]
# fp32 y against the fp64 oracle, computed from the same codes: the kernels' integer dots are
# exact, so only the fp32 products x_scale * dot and w_scale * group sum and their sums over
# K / 32 blocks round (~(K/32 + 3) * 2^-24 relative to the terms; nf4 adds the conversion of
# its up to 2^25-sized dots and the final / 32767, 2^-24 each), plus the zero point's
# cancellation, which the weight-only kernels share (int4 sum(x q) - z sum(x)). Measured worst:
# 2.3e-6 here, 3.2e-7 in tests/native (which divides by the terms' magnitude). Half the
# weight-only bound.
A8_TOL = {torch.float32: 1e-5, torch.bfloat16: REL_TOL[torch.bfloat16],
          torch.float16: REL_TOL[torch.float16]}


def a8_oracle(x, qw, bias=None):
    """y of the definition in fp64: (codes * scales) @ W.T (+ bias), W the weight the mode
    multiplies (dequantize(qw), nf4 through its Q15 table)."""
    w = activations.dequantize_weight(qw.fmt, qw.shape[1], qw.group_size, qw.qweight,
                                      qw.scale_tensor, qw.zeros, torch.float64)
    y = activations.fake_quantize(x, torch.float64) @ w.T
    return y if bias is None else y + bias.double()


def generator(label):
    return torch.Generator().manual_seed(zlib.crc32(label.encode()))


# --- the definition --------------------------------------------------------------------------

def test_constants_match_the_kernels():
    constants = _C.format_constants()
    assert constants["activation_block"] == activations.BLOCK
    assert constants["activation_max_code"] == activations.MAX_CODE
    assert constants["nf4_q15_one"] == activations.NF4_Q15_ONE
    assert tuple(constants["nf4_table_q15"]) == activations.NF4_TABLE_Q15


def test_nf4_q15_table_is_the_table_rounded():
    table = torch.tensor(formats.NF4_TABLE, dtype=torch.float64)
    q15 = torch.tensor(activations.NF4_TABLE_Q15, dtype=torch.float64)
    assert activations.NF4_TABLE_Q15[0] == -32767 and activations.NF4_TABLE_Q15[7] == 0
    assert activations.NF4_TABLE_Q15[15] == 32767
    assert torch.equal(q15, torch.round(table * activations.NF4_Q15_ONE))
    # At most half a Q15 step from NF4_TABLE (2.9e-6 of the table's smallest gap of 0.08).
    assert float((q15 / activations.NF4_Q15_ONE - table).abs().max()) <= 0.5 / 32767


def test_nf4_weight_is_absmax_times_q15_entry():
    qw = qk.quantize(random_weight(5, 70), "nf4", 32)
    w = activations.dequantize_weight("nf4", 70, 32, qw.qweight, qw.absmax, None, torch.float64)
    codes = formats.unpack_codes(qw.qweight, "nf4", 70).long()
    for n, k in [(0, 0), (2, 33), (4, 69)]:
        entry = activations.NF4_TABLE_Q15[int(codes[n, k])]
        assert float(w[n, k]) == pytest.approx(float(qw.absmax[n, k // 32]) * entry / 32767,
                                               rel=1e-15)
    # Within the table's rounding of the canonical weight.
    assert float((w - qk.dequantize(qw).double()).abs().max()) <= float(qw.absmax.max()) * 1.6e-5


def test_quantizer_follows_its_definition_element_by_element():
    gen = generator("definition")
    x = torch.randn(3, 70, generator=gen) * torch.tensor([1.0, 1e-3, 50.0]).unsqueeze(1)
    x[1, 32:64] = 0.0                       # an all-zero block: scale 0, codes 0
    x[2, 0:2] = torch.tensor([1.0, 0.5])    # 0.5 / (1 / 127) = 63.5: a tie, rounds to even 64
    x[2, 2:32] = 0.1
    codes, scales = activations.quantize_activations(x)
    assert codes.dtype == torch.int8 and codes.shape == (3, 70)
    assert scales.dtype == torch.float32 and scales.shape == (3, 3)   # ragged last block of 6
    for i in range(3):
        for b in range(3):
            block = x[i, 32 * b:32 * b + 32]
            amax = block.abs().max()
            scale = amax / 127
            assert scales[i, b] == scale
            for j, value in enumerate(block.tolist()):
                expected = 0 if scale == 0 else round(float(torch.tensor(value) / scale))
                assert codes[i, 32 * b + j] == expected   # Python's round: half to even
    assert codes[2, 1] == 64
    assert codes.abs().max() == 127


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantizer_takes_16_bit_x_as_fp32(dtype):
    x = torch.randn(2, 40, generator=generator(str(dtype))).to(dtype)
    for got, expected in zip(activations.quantize_activations(x),
                             activations.quantize_activations(x.float())):
        assert torch.equal(got, expected)


# --- every CPU path and the reference backend against the oracle -----------------------------

SHAPES_K = [1, 3, 17, 33, 576, 577]
ROWS_M = [1, 3, 4, 5, 17, 64]


@pytest.mark.parametrize("group_size", [32, 64, 96, 128, -1])
@pytest.mark.parametrize("fmt,symmetric", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("isa", ISAS)
def test_cpu_paths_match_fp64_oracle(monkeypatch, isa, fmt, symmetric, group_size):
    monkeypatch.setenv(ISA_ENV_VAR, isa)
    gen = generator(f"{isa}-{fmt}-{symmetric}-{group_size}")
    for k in SHAPES_K:
        if group_size != -1 and group_size > k:
            continue   # per channel, covered by -1
        qw = quantize_any_group(random_weight(17, k), fmt, group_size, symmetric)
        for m in ROWS_M:
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                x = torch.randn(m, k, generator=gen).to(dtype)
                bias = torch.randn(17, generator=gen).to(dtype) if m % 2 else None
                y = qk.matmul(x, qw, bias, backend="cpu", activations="int8")
                assert y.shape == (m, 17) and y.dtype == dtype
                error = rel_err(y, a8_oracle(x, qw, bias))
                assert error <= A8_TOL[dtype], f"{isa} {fmt} g={group_size} m={m} k={k} {dtype}"


@pytest.mark.parametrize("fmt,symmetric", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_reference_backend_matches_fp64_oracle(fmt, symmetric, group_size):
    gen = generator(f"reference-{fmt}-{symmetric}-{group_size}")
    qw = qk.quantize(random_weight(33, 577), fmt, group_size, symmetric=symmetric)
    x = torch.randn(5, 577, generator=gen)
    bias = torch.randn(33, generator=gen)
    y = qk.matmul(x, qw, bias, backend="reference", activations="int8")
    assert rel_err(y, a8_oracle(x, qw, bias)) <= REL_TOL[torch.float32]


@pytest.mark.parametrize("fmt,group_size", [("int4", 32), ("nf4", 64)])
def test_cpu_and_reference_agree_and_differ_from_weight_only(fmt, group_size):
    qw = qk.quantize(random_weight(64, 576), fmt, group_size)
    x = torch.randn(3, 576, generator=generator(f"agree-{fmt}"))
    cpu = qk.matmul(x, qw, backend="cpu", activations="int8")
    reference = qk.matmul(x, qw, backend="reference", activations="int8")
    weight_only = qk.matmul(x, qw, backend="cpu")
    assert rel_err(cpu, reference.double()) <= 2e-5
    # The quantization error of x, ~0.5 / 127 of a block's max per element: visible, small.
    assert 1e-4 < rel_err(cpu, weight_only.double()) < 2e-2


def test_leading_dimensions_and_non_contiguous_x():
    qw = qk.quantize(random_weight(5, 64), "int8")
    x = torch.randn(64, 6, generator=generator("strides")).T.reshape(2, 3, 64)
    y = qk.matmul(x, qw, activations="int8")
    assert y.shape == (2, 3, 5)
    assert rel_err(y, a8_oracle(x.reshape(6, 64), qw).reshape(2, 3, 5)) <= A8_TOL[torch.float32]
    assert qk.matmul(torch.randn(0, 64), qw, activations="int8").shape == (0, 5)


def test_threads_split_columns_without_changing_results():
    qw = qk.quantize(random_weight(1536, 576), "int4", 128)
    x = torch.randn(2, 576, generator=generator("threads"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = qk.matmul(x, qw, activations="int8")
        torch.set_num_threads(2)
        two = qk.matmul(x, qw, activations="int8")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


# --- the op contract -------------------------------------------------------------------------

def a8_args(m, n, k, fmt, symmetric, group_size, dtype=torch.float32, bias=False):
    gen = generator(f"args-{m}-{n}-{k}-{fmt}-{symmetric}-{group_size}-{dtype}-{bias}")
    qw = qk.quantize(random_weight(n, k), fmt, group_size, symmetric=symmetric)
    x = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    return (x, fmt, qw.qweight, qw.scale_tensor, qw.zeros, qw.group_size, b), qw


@pytest.mark.parametrize("fmt,symmetric", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_opcheck(fmt, symmetric, dtype, with_bias):
    args, _ = a8_args(3, 17, 65, fmt, symmetric, 32, dtype, with_bias)
    torch.library.opcheck(torch.ops.qkernels.matmul_a8.default, args)


def test_gradient_flows_through_the_dequantized_weight():
    args, qw = a8_args(5, 12, 70, "int4", False, 32, bias=True)
    x, bias = args[0].requires_grad_(True), args[6].requires_grad_(True)
    grad_y = torch.randn(5, 12, generator=generator("grad"))
    ops.matmul_a8_op(*args).backward(grad_y)
    # Straight-through: dx = dy @ W, as if x had not been quantized.
    assert rel_err(x.grad, grad_y.double() @ qk.dequantize(qw).double()) <= 2e-5
    assert rel_err(bias.grad, grad_y.double().sum(0)) <= 2e-5


def test_torch_compile_fullgraph():
    layer = qk.QuantLinear.from_linear(nn.Linear(96, 24), "int4", 32, activations="int8")
    x = torch.randn(4, 96, generator=generator("compile"))
    compiled = torch.compile(lambda inp: torch.relu(layer(inp)) * 2, fullgraph=True)
    assert torch.allclose(compiled(x), torch.relu(layer(x)) * 2, rtol=1e-6, atol=1e-6)


# --- layers, config, files -------------------------------------------------------------------

def test_layer_repr_config_and_file_keep_the_mode(tmp_path):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    config = qk.QKernelsConfig(fmt="int4", group_size=32, modules_to_not_convert=[],
                               activations="int8", module_overrides={"2": {"activations": None}})
    assert qk.QKernelsConfig.from_dict(json.loads(config.to_json_string())) == config
    qk.quantize_model(model, config)
    assert model[0].activations == "int8" and model[2].activations is None
    assert "activations='int8'" in repr(model[0]) and "activations" not in repr(model[2])
    x = torch.randn(3, 64, generator=generator("layer"))
    expected = model(x)
    path = tmp_path / "model.safetensors"
    qk.save_quantized(model, path)
    assert read_header(path)["layers"]["0"]["activations"] == "int8"
    loaded = qk.load_quantized(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)), path)
    assert loaded[0].activations == "int8" and loaded[2].activations is None
    assert torch.equal(loaded(x), expected)


@pytest.mark.parametrize("fmt", ["int8", "nf4"])
def test_quantize_model_by_name_takes_activations(fmt):
    model = qk.quantize_model(nn.Sequential(nn.Linear(64, 16)), fmt, skip=(),
                              activations="int8")
    x = torch.randn(2, 64, generator=generator(f"by-name-{fmt}"))
    assert rel_err(model(x), a8_oracle(x, model[0].quantized_weight, model[0].bias)) <= 1e-5


# --- bad inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("call,error,fragment", [
    (lambda x, w: qk.matmul(x, qk.quantize(w, "int4", 32), activations="int4"), ValueError,
     "activations"),
    (lambda x, w: qk.matmul(x, qk.quantize(w, "nf4", 16), activations="int8"), ValueError,
     "group_size"),
    (lambda x, w: qk.matmul(x, qk.quantize(w, "nf4", 64, double_quant=True), activations="int8"),
     ValueError, "activations"),
    (lambda x, w: qk.matmul(x, qk.quantize(w, "int4", 16), activations="int8"), ValueError,
     "group_size"),
    (lambda x, w: qk.matmul(x, qk.quantize(w, "int4", 16), backend="reference",
                            activations="int8"), ValueError, "group_size"),
    (lambda x, w: qk.QuantLinear(96, 8, fmt="int4", group_size=16, activations="int8"),
     ValueError, "group_size"),
    (lambda x, w: qk.QuantLinear(96, 8, fmt="nf4", double_quant=True, activations="int8"),
     ValueError, "activations"),
    (lambda x, w: qk.QuantLinear.from_quantized(qk.quantize(w, "nf4", 32, double_quant=True),
                                                activations="int8"), ValueError, "activations"),
    (lambda x, w: qk.QuantLinear(96, 8, activations="fp8"), ValueError, "activations"),
    (lambda x, w: qk.QKernelsConfig(activations="int4"), ValueError, "activations"),
    (lambda x, w: qk.QKernelsConfig(module_overrides={"a": {"activations": 8}}), ValueError,
     "activations"),
    (lambda x, w: qk.quantize_model(nn.Sequential(nn.Linear(96, 8)), "nf4", group_size=16,
                                    skip=(), activations="int8"), ValueError, "group_size"),
])
def test_bad_inputs_raise_naming_the_argument(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call(torch.randn(2, 96), random_weight(8, 96))


@pytest.mark.parametrize("fmt,group_size,fragment", [("int8", 16, "group_size"),
                                                     ("nf4", 16, "group_size"),
                                                     ("int4", 16, "group_size")])
def test_op_rejects_what_it_cannot_multiply(fmt, group_size, fragment):
    qw = qk.quantize(random_weight(8, 96), fmt, group_size)
    args = (torch.randn(2, 96), fmt, qw.qweight, qw.scale_tensor, qw.zeros, group_size, None)
    with pytest.raises(ValueError, match=fragment):
        torch.ops.qkernels.matmul_a8(*args)   # the C++ checks
    with pytest.raises(ValueError, match=fragment):
        ops.check_matmul_a8_args(*args)       # the fake impl's


@pytest.mark.cuda
def test_cuda_tensors_raise_cpu_only():
    qw = qk.quantize(random_weight(8, 64), "int4", 32).to("cuda")
    x = torch.randn(2, 64, device="cuda")
    with pytest.raises(ValueError, match="activations"):
        qk.matmul(x, qw, activations="int8")
    with pytest.raises(NotImplementedError, match="CPU only"):
        ops.matmul_a8_op(x, "int4", qw.qweight, qw.scales, qw.zeros, 32)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_non_finite_x_gives_non_finite_rows(backend, bad):
    qw = qk.quantize(random_weight(6, 96), "int4", 32)
    x = torch.randn(3, 96, generator=generator("non-finite"))
    x[1, 40] = bad
    y = qk.matmul(x, qw, backend=backend, activations="int8")
    assert y[1].isnan().all()
    assert y[[0, 2]].isfinite().all()


def test_per_channel_k_not_a_multiple_of_32_is_accepted():
    qw = qk.quantize(random_weight(4, 45), "int8")   # one group of 45: blocks 32 + 13
    x = torch.randn(1, 45, generator=generator("per-channel"))
    y = qk.matmul(x, qw, activations="int8")
    assert math.isfinite(float(y.sum()))
    assert rel_err(y, a8_oracle(x, qw)) <= A8_TOL[torch.float32]
