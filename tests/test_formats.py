"""The canonical formats: constants shared with C++, pack/unpack, quantize/dequantize."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import qkernels as qk
from qkernels import _C, formats

from conftest import random_weight

ALL_FORMATS = [("int8", False), ("int4", False), ("int4", True), ("nf4", False)]


def test_cpp_constants_match_python():
    constants = _C.format_constants()
    table = torch.tensor(formats.NF4_TABLE, dtype=torch.float32)
    assert torch.equal(torch.tensor(constants["nf4_table"], dtype=torch.float32), table)
    assert constants["int8_max_code"] == formats.INT8_MAX_CODE
    assert constants["int4_max_code"] == formats.INT4_MAX_CODE
    assert constants["int4_symmetric_zero"] == formats.INT4_SYMMETRIC_ZERO
    assert constants["nibble_bits_low"] == formats.NIBBLE_BITS_LOW
    assert constants["nibble_bits_high"] == formats.NIBBLE_BITS_HIGH
    assert constants["double_quant_block"] == formats.DOUBLE_QUANT_BLOCK
    assert constants["formats"] == formats.FORMAT_IDS


def test_nf4_table_shape():
    table = formats.NF4_TABLE
    assert len(table) == 16 and table[0] == -1.0 and table[7] == 0.0 and table[15] == 1.0
    assert all(a < b for a, b in zip(table, table[1:]))


@pytest.mark.parametrize("k", [1, 2, 3, 17, 576, 577])
def test_pack_layout_is_low_nibble_first(k):
    codes = torch.randint(0, 16, (5, k), dtype=torch.uint8)
    packed = formats.pack_codes(codes, "int4")
    assert packed.shape == (5, (k + 1) // 2) and packed.dtype == torch.uint8
    assert torch.equal(packed[:, 0] & 0xF, codes[:, 0])
    if k > 1:
        assert torch.equal(packed[:, 0] >> 4, codes[:, 1])
    if k % 2:
        assert bool((packed[:, -1] >> 4 == 0).all()), "odd K leaves the last high nibble 0"
    assert torch.equal(formats.unpack_codes(packed, "int4", k), codes)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 300), fmt=st.sampled_from(["int8", "int4", "nf4"]))
def test_pack_unpack_round_trip_is_bit_exact(n, k, fmt):
    if fmt == "int8":
        codes = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    else:
        codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    assert torch.equal(formats.unpack_codes(formats.pack_codes(codes, fmt), fmt, k), codes)


@pytest.mark.parametrize("fmt,symmetric", ALL_FORMATS)
@pytest.mark.parametrize("group_size", [32, 64, 128, 256, -1])
@pytest.mark.parametrize("k", [1, 17, 576, 577])
def test_quantize_attributes_and_error_bound(fmt, symmetric, group_size, k):
    n = 7
    w = random_weight(n, k)
    qw = qk.quantize(w, fmt, group_size, symmetric=symmetric)
    g = k if group_size == -1 else min(group_size, k)
    groups = -(-k // g)
    assert (qw.fmt, qw.shape, qw.group_size, qw.symmetric) == (fmt, (n, k), g, symmetric)
    assert qw.qweight.dtype == (torch.int8 if fmt == "int8" else torch.uint8)
    assert qw.qweight.shape == (n, k if fmt == "int8" else (k + 1) // 2)
    scale = qw.absmax if fmt == "nf4" else qw.scales
    assert scale.dtype == torch.float32 and scale.shape == (n, groups)
    assert (qw.zeros is None) == (fmt != "int4" or symmetric)
    assert (qw.absmax is None) == (fmt != "nf4") and (qw.scales is None) == (fmt == "nf4")

    # Round-to-nearest: every weight within half a quantization step of its group.
    step = formats.quantization_step(qw).repeat_interleave(g, dim=1)[:, :k]
    error = (qk.dequantize(qw) - w).abs()
    assert bool((error <= step / 2 * (1 + 1e-5) + 1e-7).all()), float((error / step).max())


@pytest.mark.parametrize("fmt,symmetric", ALL_FORMATS)
def test_all_zero_groups_are_exact(fmt, symmetric):
    w = random_weight(4, 96)
    w[1] = 0
    w[2, 32:64] = 0
    qw = qk.quantize(w, fmt, 32, symmetric=symmetric)
    back = qk.dequantize(qw)
    assert torch.equal(back[1], torch.zeros(96)) and torch.equal(back[2, 32:64], torch.zeros(32))
    assert float(qw.scale_tensor[1, 0]) == 1.0


@pytest.mark.parametrize("fmt,symmetric", ALL_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_quantize_accepts_float_dtypes(fmt, symmetric, dtype):
    w = random_weight(5, 70, dtype)
    qw = qk.quantize(w, fmt, 32, symmetric=symmetric)
    reference = qk.quantize(w.float(), fmt, 32, symmetric=symmetric)
    assert torch.equal(qw.qweight, reference.qweight)


def test_default_group_sizes():
    w = random_weight(3, 600)
    assert qk.quantize(w, "int8").group_size == 600  # per channel
    assert qk.quantize(w, "int4").group_size == 128
    assert qk.quantize(w, "nf4").group_size == 64
    assert qk.quantize(w, "int4", -1).group_size == 600
    assert qk.quantize(random_weight(3, 40), "int4", 128).group_size == 40  # clamped to K


def test_int4_codes_and_zero_points_in_range():
    qw = qk.quantize(random_weight(16, 256) + 0.05, "int4", 64)
    assert bool(((qw.zeros >= 0) & (qw.zeros <= 15)).all())
    sym = qk.quantize(random_weight(16, 256), "int4", 64, symmetric=True)
    codes = formats.unpack_codes(sym.qweight, "int4", 256)
    assert int(codes.min()) >= 1, "symmetric codes cover [-absmax, absmax] with 1..15"


@pytest.mark.parametrize("n,k", [(1, 1), (3, 17), (17, 577)])
def test_quantized_weight_moves_and_reports(n, k):
    qw = qk.quantize(random_weight(n, k), "nf4")
    assert qw.to("cpu").shape == (n, k)
    assert set(qw.tensors()) == {"qweight", "absmax"}
    assert "nf4" in repr(qw) and qw.nbytes == qw.qweight.numel() + 4 * qw.absmax.numel()


# --- bad inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,exc,message", [
    (dict(fmt="int3"), ValueError, "fmt: expected one of"),
    (dict(group_size=48), ValueError, "group_size: expected one of"),
    (dict(group_size=0), ValueError, "group_size: expected one of"),
    (dict(group_size=True), TypeError, "group_size: expected an int"),
    (dict(group_size=64.0), TypeError, "group_size: expected an int"),
    (dict(fmt="nf4", symmetric=True), ValueError, "symmetric: only int4"),
])
def test_quantize_rejects_bad_arguments(bad, exc, message):
    args = dict(fmt="int4", group_size=64, symmetric=False) | bad
    with pytest.raises(exc, match=message):
        qk.quantize(random_weight(4, 64), args["fmt"], args["group_size"],
                    symmetric=args["symmetric"])


@pytest.mark.parametrize("w,exc,message", [
    (torch.randn(64), ValueError, "w: expected 2 dims"),
    (torch.randn(2, 3, 64), ValueError, "w: expected 2 dims"),
    (torch.randint(0, 5, (4, 64)), TypeError, "w: expected a floating-point dtype"),
    (torch.empty(0, 64), ValueError, "w: expected N, K >= 1"),
    ([[1.0, 2.0]], TypeError, "w: expected a torch.Tensor"),
])
def test_quantize_rejects_bad_weights(w, exc, message):
    with pytest.raises(exc, match=message):
        qk.quantize(w, "int4")


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("fmt", ["int8", "int4", "nf4"])
def test_quantize_rejects_non_finite_weights(poison, fmt):
    w = random_weight(4, 64)
    w[2, 5] = poison
    with pytest.raises(ValueError, match="w: expected finite values, got 1 NaN/Inf"):
        qk.quantize(w, fmt)


def test_quantized_weight_validates_its_tensors():
    qw = qk.quantize(random_weight(4, 64), "int4", 32)
    with pytest.raises(ValueError, match=r"scales: expected shape \(4, 2\)"):
        qk.QuantizedWeight("int4", (4, 64), 32, qw.qweight, scales=qw.scales[:, :1])
    with pytest.raises(TypeError, match="qweight: expected dtype torch.uint8"):
        qk.QuantizedWeight("int4", (4, 64), 32, qw.qweight.to(torch.int8), scales=qw.scales)
    with pytest.raises(ValueError, match="absmax: expected None for format int4"):
        qk.QuantizedWeight("int4", (4, 64), 32, qw.qweight, scales=qw.scales, absmax=qw.scales)
    with pytest.raises(ValueError, match="shape: expected"):
        qk.QuantizedWeight("int4", (4,), 32, qw.qweight, scales=qw.scales)
    with pytest.raises(TypeError, match="qw: expected a QuantizedWeight"):
        qk.dequantize(qw.qweight)



# --- nf4 double quantization -----------------------------------------------------------------

@pytest.mark.parametrize("n,k,group_size", [(1, 1, 64), (3, 17, 16), (17, 577, 64),
                                            (300, 576, 64), (64, 577, -1)])
def test_double_quant_layout_and_absmax_error(n, k, group_size):
    w = random_weight(n, k)
    plain = qk.quantize(w, "nf4", group_size)
    qw = qk.quantize(w, "nf4", group_size, double_quant=True)
    groups = plain.absmax.shape[1]
    blocks = -(-n * groups // formats.DOUBLE_QUANT_BLOCK)
    assert qw.double_quant and qw.absmax is None and "double_quant" in repr(qw)
    assert set(qw.tensors()) == {"qweight", "absmax_codes", "absmax_scales", "absmax_offsets"}
    assert qw.absmax_codes.dtype == torch.uint8 and qw.absmax_codes.shape == (n, groups)
    assert qw.absmax_scales.shape == qw.absmax_offsets.shape == (blocks,)
    # Each decoded absmax within half a code step of its block, in log2 (plus fp32 rounding).
    decoded = qw.scale_tensor
    block_of = torch.arange(n * groups) // formats.DOUBLE_QUANT_BLOCK
    half_step = (qw.absmax_scales[block_of] / 2).view(n, groups)
    log_error = (torch.log2(decoded) - torch.log2(plain.absmax)).abs()
    assert bool((log_error <= half_step + 1e-6).all())


def test_double_quant_saves_0_37_bits_per_weight_at_similar_error():
    w = random_weight(256, 4096)
    plain = qk.quantize(w, "nf4", 64)
    qw = qk.quantize(w, "nf4", 64, double_quant=True)
    bits = lambda q: 8 * q.nbytes / w.numel()   # noqa: E731
    assert bits(plain) == 4.5
    assert 0.37 < bits(plain) - bits(qw) < 0.375
    # Rows of random_weight have scales spanning decades, so 256-blocks of absmax do too: the
    # log2 code keeps the small ones as precise (relatively) as the large.
    row_err = lambda q: (qk.dequantize(q) - w).norm(dim=1) / w.norm(dim=1)   # noqa: E731
    plain_err, dq_err = row_err(plain), row_err(qw)
    assert float(dq_err.max()) < float(plain_err.max()) * 1.02
    assert float(dq_err.mean()) < float(plain_err.mean()) * 1.01


def test_double_quant_constant_block_is_exact():
    w = torch.ones(4, 128) * torch.tensor([[1.0], [1.0], [1.0], [1.0]])
    qw = qk.quantize(w, "nf4", 32, double_quant=True)
    assert bool((qw.absmax_scales == 0).all()) and torch.equal(qk.dequantize(qw), w)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("m,n,k", [(1, 17, 577), (5, 300, 64), (33, 3, 17)])
def test_double_quant_matmul(backend, m, n, k):
    if backend not in qk.available_backends("cpu"):
        pytest.skip(f"{backend} backend not built")
    qw = qk.quantize(random_weight(n, k), "nf4", 16, double_quant=True)
    x, bias = torch.randn(m, k), torch.randn(n)
    ref = x.double() @ qk.dequantize(qw).double().T + bias.double()
    y = qk.matmul(x, qw, bias, backend=backend)
    assert y.shape == (m, n) and float((y.double() - ref).norm() / ref.norm()) < 2e-5


def test_double_quant_layer_saves_and_loads(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(96, 40), torch.nn.ReLU(), torch.nn.Linear(40, 8))
    model[0] = qk.QuantLinear.from_linear(model[0], "nf4", 32, double_quant=True)
    assert "double_quant=True" in repr(model[0])
    assert set(model[0].state_dict()) == {"qweight", "absmax_codes", "absmax_scales",
                                          "absmax_offsets", "bias"}
    x = torch.randn(3, 96, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    qk.save_quantized(model, tmp_path / "dq.safetensors")
    fresh = torch.nn.Sequential(torch.nn.Linear(96, 40), torch.nn.ReLU(), torch.nn.Linear(40, 8))
    loaded = qk.load_quantized(fresh, tmp_path / "dq.safetensors")
    assert loaded[0].double_quant
    assert torch.equal(loaded(x), model(x))


def test_double_quant_rejects_bad_input():
    w = random_weight(8, 64)
    with pytest.raises(ValueError, match="double_quant: only nf4"):
        qk.quantize(w, "int4", 32, double_quant=True)
    with pytest.raises(ValueError, match="double_quant: only nf4"):
        qk.QuantLinear(64, 8, fmt="int8", double_quant=True)
    qw = qk.quantize(w, "nf4", 32, double_quant=True)
    with pytest.raises(TypeError, match="absmax_codes: expected dtype torch.uint8"):
        qk.QuantizedWeight("nf4", (8, 64), 32, qw.qweight, absmax_codes=qw.absmax_codes.int(),
                           absmax_scales=qw.absmax_scales, absmax_offsets=qw.absmax_offsets)
    with pytest.raises(ValueError, match=r"absmax_offsets: expected shape \(1,\)"):
        qk.QuantizedWeight("nf4", (8, 64), 32, qw.qweight, absmax_codes=qw.absmax_codes,
                           absmax_scales=qw.absmax_scales,
                           absmax_offsets=qw.absmax_offsets[:0])
    x = torch.randn(1, 64)
    with pytest.raises(TypeError, match="absmax_codes: expected dtype uint8"):
        qk.ops.matmul_nf4_dq_tensors(x, qw.qweight, qw.absmax_codes.float(), qw.absmax_scales,
                                     qw.absmax_offsets, 32)
    with pytest.raises(ValueError, match=r"absmax_scales: expected shape \(1,\)"):
        qk.ops.matmul_nf4_dq_tensors(x, qw.qweight, qw.absmax_codes, qw.absmax_scales.repeat(2),
                                     qw.absmax_offsets, 32)


def test_double_quant_layer_compiles_fullgraph():
    # N * G = 67 * 37 is not a multiple of 256: the decode pads and slices inside the graph.
    layer = qk.QuantLinear.from_linear(torch.nn.Linear(577, 67), "nf4", 16, double_quant=True)
    x = torch.randn(3, 577)
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)
