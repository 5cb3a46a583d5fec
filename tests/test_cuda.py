"""The CUDA backend (csrc/cuda, csrc/torch/bind_cuda.cpp) against the fp64 oracle.

Every case checks shape, dtype and device, that y is finite, and its error against x @ W^T in
fp64 computed from the same rounded x and the dequantized weights. The error is norm-wise
(conftest.normwise_rel_err), ||y - ref|| / (||x|| ||W|| / sqrt(K)), with the bias's share
sqrt(M) ||bias|| added in quadrature: the denominator is what ||ref|| is for random data, but it
cannot collapse when a few outputs happen to cancel to near zero (one output of N = M = 1).
Bounds, from the roundings the kernels add: fp16 x: the fast path rounds each weight to fp16
for the tensor cores (2^-11 relative, the int4 zero-point term adds as much again) and y is
rounded to fp16 (2^-11): a few 1e-4, bound 2e-3. bf16: the same with 2^-8: ~3e-3, bound 1e-2.
fp32 x: fp32 arithmetic only (K-term sums), bound 2e-5.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import qkernels as qk
from qkernels import formats, ops

from conftest import (GPU_FUZZ_DTYPES, GPU_FUZZ_GROUPS, GPU_FUZZ_K, GPU_FUZZ_MODES, GPU_FUZZ_N,
                      GPU_FUZZ_ROWS, GPU_FUZZ_X_LAYOUTS, GPU_GROUP_SIZES, QUANTIZE_MODES, REL_TOL,
                      fp64_reference, gpu_fuzz_examples, gpu_fuzz_weight, laid_out,
                      normwise_rel_err as rel_err)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = (torch.float16, torch.bfloat16)
# (fmt, quantize() options): the five weight formats the kernels distinguish; nf4-dq (double-
# quantized absmax) runs through torch.ops.qkernels.matmul_nf4_dq, whose kernels decode it.
MODES = QUANTIZE_MODES
MODE_IDS = ("int8", "int4", "int4sym", "nf4", "nf4dq")
NF4_MODES = (("nf4", {}), ("nf4", {"double_quant": True}))
GROUPS = GPU_GROUP_SIZES
ODD_SIZES = (1, 3, 17, 576, 577)


def random_weight(n, k, device="cuda"):
    # Rows of different magnitude, so groups and rows have distinct scales.
    return torch.randn(n, k, device=device) * (torch.rand(n, 1, device=device) + 0.05)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def check(x, qw, bias=None):
    y = qk.matmul(x, qw, bias=bias, backend="cuda")
    assert y.shape == (*x.shape[:-1], qw.shape[0])
    assert y.dtype == x.dtype and y.device == x.device
    assert bool(torch.isfinite(y).all())
    err = rel_err(y, fp64_reference(x, qw, bias), x, qk.dequantize(qw), bias)
    assert err < REL_TOL[x.dtype], f"relative error {err:.2e} >= {REL_TOL[x.dtype]:.0e}"
    return y


def quantize(n, k, mode, group):
    fmt, options = mode
    return qk.quantize(random_weight(n, k), fmt, group_size=group, **options)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("m", (1, 2, 5, 8))
def test_gemv_fast_path(m, mode, group, dtype):
    """Shapes the tensor-core GEMV takes: K % 32 == 0, power-of-two groups, N not a multiple of
    16 (a partial row tile), with and without bias."""
    qw = quantize(200, 1024, mode, group)
    x = torch.randn(m, 1024, device="cuda", dtype=dtype)
    check(x, qw)
    check(x, qw, bias=torch.randn(200, device="cuda", dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", (32, 128, -1))
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("m", (9, 16, 17, 40))
@pytest.mark.parametrize("n", (200, 4100, 6001, 8200))
def test_gemv_tall_tiles(n, m, mode, group, dtype, force_kernel):
    """Above 8 rows of x the GEMV takes 16 rows per block (two mma n-tiles against each unpacked
    weight tile) where that grid gives every SM a block (N = 4100: 257 row tiles), 8-row tiles on
    smaller grids (N = 200; nf4 takes 16 at K <= 2048 anyway): one ragged tile of 16 (M = 9),
    one whole (16), a whole and a ragged one (17), three (40). On 132 SMs (H100, H200) N = 6001
    (376 row tiles) takes the tall shape at 3 blocks per SM, and N = 8200 (513) the tall paired
    one for 4-bit, each at M = 9 and 16; M = 17 and 40 make their grids 2 and 3 times larger."""
    force_kernel("gemv")
    qw = quantize(n, 1024, mode, group)
    x = torch.randn(m, 1024, device="cuda", dtype=dtype)
    check(x, qw)
    check(x, qw, bias=torch.randn(n, device="cuda", dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", (32, 64, 128, -1))
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("n", (8200, 12017, 15001, 20001))
def test_gemv_ragged_steps_and_many_tiles(n, mode, group, dtype, force_kernel):
    """K = 576 ends inside a step of the tensor-core GEMV (128 k for 4-bit, 64 for int8) and inside
    a group of 128. N takes the launch shapes of grids of several waves (test_gemv_fast_path's
    N = 200 takes the deep one); on 132 SMs (H100, H200): N = 8200, 513 row tiles, deep in two
    waves (int8, nf4) or wide (int4); N = 12017, 752 row tiles, the paired shape at 3 blocks per
    SM (nf4, int8, int4 at M = 6); N = 15001 (938) and 20001 (1251) paired at 4 blocks per SM
    for nf4, and for int8 at 15001; its 3 for int4 at M = 6; wide otherwise. 12017 and 20001 end
    in a tile of 1 row: the second tile of the last pair (12017) or the first, the second wholly
    past N (20001); 15001 in a pair's second tile of 9 rows. M = 9 (GEMV forced) runs a ragged
    16-row tile of x."""
    force_kernel("gemv")
    qw = quantize(n, 576, mode, group)
    for m in (1, 6, 9):
        check(torch.randn(m, 576, device="cuda", dtype=dtype), qw,
              bias=torch.randn(n, device="cuda", dtype=dtype))


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("shape", ((200, 16384), (8200, 16384), (12017, 16384), (136, 256)))
def test_gemv_long_and_short_rows(shape, mode, force_kernel):
    """K = 16384: 4 batches per warp in the deep launch shape (N = 200, and N = 8200 on 132 SMs,
    deep in two waves), 8 in the wide one and 16 in the paired one (N = 12017 on 132 SMs: wide
    for int8, twice as many batches, and for int4 at M = 1; paired for nf4 and for int4 at
    M = 8); K = 256: one batch, so a single warp takes K (but nf4, whose blocks keep 8 warps);
    M = 16: tall tiles where their grid fills the GPU (N = 8200, 12017)."""
    force_kernel("gemv")
    qw = quantize(*shape, mode, 128 if mode[0] != "nf4" else 64)
    for m in (1, 8, 16):
        check(torch.randn(m, shape[1], device="cuda", dtype=torch.float16), qw,
              bias=torch.randn(shape[0], device="cuda", dtype=torch.float16))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemv_int8_per_channel_long_rows(dtype, force_kernel):
    """int8 per channel on rows of 8192 or more keeps the deep launch shape up to four of its
    waves: N = 12017 (752 row tiles; on 132 SMs 2.8 deep waves), K = 8224 (a ragged last step).
    M = 9 (GEMV forced) takes the tall shapes."""
    force_kernel("gemv")
    qw = quantize(12017, 8224, ("int8", {}), -1)
    for m in (1, 5, 8, 9):
        check(torch.randn(m, 8224, device="cuda", dtype=dtype), qw,
              bias=torch.randn(12017, device="cuda", dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("n", ODD_SIZES)
@pytest.mark.parametrize("k", ODD_SIZES + (4096,))
def test_odd_shapes(k, n, mode, dtype):
    """Every N, K: the generic kernel where K or the group breaks the fast path's rules."""
    qw = quantize(n, k, mode, 64)
    for m in (1, 3, 9):
        check(torch.randn(m, k, device="cuda", dtype=dtype), qw,
              bias=torch.randn(n, device="cuda", dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("m", (1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 31, 33, 48, 49, 100))
def test_rows_of_x(m, mode, dtype):
    """Each M through the dispatch: the GEMV (in tiles of 8 rows), the GEMM, and past it
    dequantize + cuBLAS."""
    qw = quantize(136, 512, mode, 128)
    check(torch.randn(m, 512, device="cuda", dtype=dtype), qw,
          bias=torch.randn(136, device="cuda", dtype=dtype))


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("m", (1, 7, 64))
def test_fp32_activations(m, mode):
    qw = quantize(96, 577, mode, 64)
    check(torch.randn(m, 577, device="cuda"), qw, bias=torch.randn(96, device="cuda"))
    qw = quantize(96, 1024, mode, 128)
    check(torch.randn(m, 1024, device="cuda"), qw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", (("int4", {}),) + NF4_MODES, ids=("int4", "nf4", "nf4dq"))
@pytest.mark.parametrize("shape", ((4096, 4096), (1024, 14336)))
def test_llm_shapes(shape, mode, dtype):
    qw = quantize(*shape, mode, 128 if mode[0] == "int4" else 64)
    for m in (1, 8):
        check(torch.randn(m, shape[1], device="cuda", dtype=dtype), qw)


@pytest.mark.parametrize("fmt", ("int8", "int4", "nf4", "nf4dq"))
@pytest.mark.parametrize("group", (1, 5, 48, 96, 160))
def test_any_group_size(fmt, group):
    """Canonical tensors may carry any group size >= 1 (not only those quantize() makes)."""
    n, k = 40, 320
    double_quant = fmt == "nf4dq"
    fmt = "nf4" if double_quant else fmt
    groups = -(-k // group)
    g = torch.Generator(device="cuda").manual_seed(group)
    if fmt == "int8":
        qweight = torch.randint(-127, 128, (n, k), device="cuda", generator=g).to(torch.int8)
    else:
        qweight = torch.randint(0, 256, (n, k // 2), device="cuda", generator=g).to(torch.uint8)
    scales = torch.rand(n, groups, device="cuda", generator=g) + 0.01
    zeros = torch.rand(n, groups, device="cuda", generator=g) * 15 if fmt == "int4" else None
    if double_quant:
        dq = dict(zip(formats.DOUBLE_QUANT_NAMES, formats.double_quantize_absmax(scales)))
        qw = qk.QuantizedWeight(fmt, (n, k), group, qweight, **dq)
    else:
        qw = qk.QuantizedWeight(fmt, (n, k), group, qweight,
                                scales=None if fmt == "nf4" else scales, zeros=zeros,
                                absmax=scales if fmt == "nf4" else None)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for m in (1, 8, 40, 60):
            check(torch.randn(m, k, device="cuda", dtype=dtype), qw)


def test_strided_and_batched_x():
    """x with leading dims, a non-contiguous x, and x at an address that is not 16-byte aligned
    (the generic path)."""
    qw = quantize(256, 1024, ("int4", {}), 128)
    x3 = torch.randn(2, 3, 1024, device="cuda", dtype=torch.float16)
    y3 = check(x3, qw)
    assert y3.shape == (2, 3, 256)
    wide = torch.randn(4, 2048, device="cuda", dtype=torch.float16)
    check(wide[:, ::2], qw)
    flat = torch.randn(1 + 4 * 1024, device="cuda", dtype=torch.float16)
    check(flat[1:].view(4, 1024), qw)


def test_empty_rows():
    qw = quantize(64, 256, ("nf4", {}), 64)
    y = qk.matmul(torch.empty(0, 256, device="cuda", dtype=torch.float16), qw, backend="cuda")
    assert y.shape == (0, 64) and y.is_cuda


def test_bad_inputs_raise():
    qw = quantize(64, 256, ("int4", {}), 64)
    x = torch.randn(2, 256, device="cuda", dtype=torch.float16)
    op = torch.ops.qkernels.matmul
    with pytest.raises(ValueError, match="expected all tensors on"):  # direct op call, bias left on the CPU
        op(x, "int4", qw.qweight, qw.scales, qw.zeros, 64, torch.zeros(64, dtype=torch.float16))
    with pytest.raises(ValueError, match="expected all tensors on"):
        op(x, "int4", qw.qweight, qw.scales, qw.zeros.cpu(), 64, None)
    with pytest.raises(ValueError, match="bytes per row"):
        op(x[:, :128], "int4", qw.qweight, qw.scales, qw.zeros, 64, None)
    with pytest.raises(ValueError, match="scales expected shape"):
        op(x, "int4", qw.qweight, qw.scales, qw.zeros, 32, None)
    with pytest.raises(TypeError, match="dtype"):
        op(x.to(torch.float64), "int4", qw.qweight, qw.scales, qw.zeros, 64, None)
    with pytest.raises(ValueError, match="fmt"):
        op(x, "int3", qw.qweight, qw.scales, qw.zeros, 64, None)


@pytest.mark.parametrize("m", (1, 8, 64))
@pytest.mark.parametrize("mode", (("int4", {}), ("nf4", {"double_quant": True})),
                         ids=("int4", "nf4dq"))
def test_cuda_graph_capture(m, mode):
    qw = quantize(512, 1024, mode, 128)
    bias = torch.randn(512, device="cuda", dtype=torch.float16)
    x = torch.randn(m, 1024, device="cuda", dtype=torch.float16)
    qk.matmul(x, qw, bias=bias, backend="cuda")  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = qk.matmul(x, qw, bias=bias, backend="cuda")
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    err = rel_err(y, fp64_reference(x, qw, bias), x, qk.dequantize(qw), bias)
    assert err < REL_TOL[torch.float16]


@pytest.mark.parametrize("m, kernel", ((1, None), (8, None), (64, "wgmma")), ids=("1", "8", "64"))
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_each_matmul_reads_what_the_kernel_before_it_wrote(m, kernel, mode, force_kernel):
    """On sm_90 the GEMV and the Hopper GEMM's first kernel may start before the kernel ahead of
    them in the stream ends, and wait for it before reading x or the weights (programmatic
    dependent launch: gemv_mma.cuh, gemm_wgmma.cuh). A chain of matmuls, each reading the output
    of the one before, then one reading weights that copy kernels have just written; replayed
    as a graph with new inputs, every link must see them."""
    if kernel:
        force_kernel(kernel)
    n = 1024

    def weight():  # rows scaled by 1 / sqrt(K), so values keep their size along the chain
        fmt, options = mode
        return qk.quantize(random_weight(n, n) / n**0.5, fmt, group_size=128, **options)

    chain = [weight() for _ in range(4)]
    source, live = weight(), weight()
    x = torch.randn(m, n, device="cuda", dtype=torch.float16)

    def layers():
        ys = [x]
        for qw in chain:
            ys.append(qk.matmul(ys[-1], qw, backend="cuda"))
        for name, t in live.tensors().items():
            t.copy_(getattr(source, name))
        ys.append(qk.matmul(ys[-1], live, backend="cuda"))
        return ys

    def check_links(ys):
        for y_in, y_out, qw in zip(ys, ys[1:], chain + [source]):
            err = rel_err(y_out, fp64_reference(y_in, qw), y_in, qk.dequantize(qw))
            assert err < REL_TOL[torch.float16], f"relative error {err:.2e}"

    check_links(layers())  # eager: launched one after another on the stream
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ys = layers()
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        for name, t in weight().tensors().items():
            getattr(source, name).copy_(t)
        graph.replay()
        torch.cuda.synchronize()
        check_links(ys)


@pytest.mark.parametrize("mode", NF4_MODES, ids=("nf4", "nf4dq"))
def test_torch_compile_fullgraph(mode):
    qw = quantize(256, 1024, mode, 64)
    bias = torch.randn(256, device="cuda", dtype=torch.bfloat16)

    @torch.compile(fullgraph=True)
    def layer(x):
        return torch.relu(qk.matmul(x, qw, bias=bias, backend="cuda")) * 2

    for m in (1, 8, 64):
        x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
        ref = torch.relu(fp64_reference(x, qw, bias)) * 2
        assert rel_err(layer(x), ref, x, qk.dequantize(qw), bias) < REL_TOL[torch.bfloat16]


@settings(max_examples=gpu_fuzz_examples(1000), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=GPU_FUZZ_ROWS, n=GPU_FUZZ_N, k=GPU_FUZZ_K, mode=GPU_FUZZ_MODES, group=GPU_FUZZ_GROUPS,
       dtype=GPU_FUZZ_DTYPES, with_bias=st.booleans(), layout=GPU_FUZZ_X_LAYOUTS)
def test_fuzz_through_the_dispatch(m, n, k, mode, group, dtype, with_bias, layout):
    """Random shapes, formats and layouts of x, on every path the dispatch picks by M and by
    the weight's size (the cases above each fix one path)."""
    fmt, options = mode
    qw = qk.quantize(gpu_fuzz_weight(n, k, "cuda"), fmt, group_size=group, **options)
    x = laid_out(torch.randn(m, k, device="cuda", dtype=dtype), layout)
    check(x, qw, bias=torch.randn(n, device="cuda", dtype=dtype) if with_bias else None)


# --- the tensor-core GEMM and the dequantize + cuBLAS path, each forced at every M ----------------
# QKERNELS_CUDA_KERNEL (csrc/torch/bind_cuda.cpp) forces one path wherever it applies, so small M
# reaches the GEMM and large M the GEMV's neighbours without depending on the dispatch thresholds.
GEMM_ROWS = (9, 16, 17, 64, 100, 256, 1000, 4096)


@pytest.fixture
def force_kernel(monkeypatch):
    def force(name):
        monkeypatch.setenv("QKERNELS_CUDA_KERNEL", name)
        if name == "wgmma":  # the Hopper GEMM: compute capability 9.0 and an sm_90a build
            qw = quantize(64, 256, ("int4", {}), 64)
            try:
                qk.matmul(torch.randn(32, 256, device="cuda", dtype=torch.float16), qw,
                          backend="cuda")
            except ValueError as error:
                if "QKERNELS_CUDA_KERNEL=wgmma needs" not in str(error):
                    raise
                pytest.skip(str(error))
    return force


# Both tensor-core GEMMs: mma.sync (every GPU) and wgmma (H100-class).
GEMM_KERNELS = ("gemm", "wgmma")


@pytest.mark.parametrize("kernel", GEMM_KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("m", GEMM_ROWS)
def test_gemm_rows_of_x(m, mode, dtype, kernel, force_kernel):
    """Every tile height (M <= 32, <= 64, more), partial tiles of x rows and of weight rows
    (N = 200), K = 1056 (8.25 blocks of 128 k, a ragged last group), split-K (9 k-blocks)."""
    force_kernel(kernel)
    qw = quantize(200, 1056, mode, 128 if mode[0] != "nf4" else 64)
    check(torch.randn(m, 1056, device="cuda", dtype=dtype), qw,
          bias=torch.randn(200, device="cuda", dtype=dtype))


@pytest.mark.parametrize("kernel", GEMM_KERNELS)
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_gemm_row_strided_x_and_repeatable_split_k(mode, kernel, force_kernel):
    """x as the rows of a wider tensor (the GEMMs read it at its row stride), and split-K (a 512
    x 4096 weight at M = 100 makes few tiles, so both GEMMs split K), whose slices' sums are
    added in a fixed order: the same call gives bit-identical results every time."""
    force_kernel(kernel)
    qw = quantize(512, 4096, mode, 128 if mode[0] != "nf4" else 64)
    x = torch.randn(100, 4096 + 64, device="cuda", dtype=torch.float16)[:, 64:]
    y = check(x, qw)
    for _ in range(3):
        assert torch.equal(qk.matmul(x, qw, backend="cuda"), y)


@pytest.mark.parametrize("kernel", GEMM_KERNELS)
@pytest.mark.parametrize("k", (1024, 1536, 2432, 2560, 3072, 3584, 9984))
def test_gemm_k_split_2_to_16_ways(k, kernel, force_kernel):
    """A 512-row weight makes few tiles, so K is split into up to a quarter of its k-blocks: on
    the Hopper GEMM 2 to 7 slices for K = 1024-3584 (2432: 19 k-blocks in 4 slices of 5, the
    last of 4) and 16 for 9984 (78 k-blocks, slices of 5, the last of 3), each added in a fixed
    order. Both of its tile heights (64 and 100 rows of x), with bias; int4 g128 and int8 per
    channel (whose row scale multiplies each slice's sums)."""
    force_kernel(kernel)
    for mode, group in ((("int4", {}), 128), (("int8", {}), -1)):
        qw = quantize(512, k, mode, group)
        for m, dtype in ((64, torch.float16), (100, torch.bfloat16)):
            check(torch.randn(m, k, device="cuda", dtype=dtype), qw,
                  bias=torch.randn(512, device="cuda", dtype=dtype))


@pytest.mark.parametrize("kernel", GEMM_KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("k", (576, 2048))
def test_gemm_groups(k, mode, group, dtype, kernel, force_kernel):
    """Groups 32-256 and per channel; K = 576 (4.5 k-blocks, no split) and 2048 (split)."""
    force_kernel(kernel)
    qw = quantize(577, k, mode, group)
    for m in (17, 300):
        check(torch.randn(m, k, device="cuda", dtype=dtype), qw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("k", (576, 577, 1024))
def test_dequantize_path(k, mode, dtype, force_kernel):
    """Dequantize + cuBLAS: the vector kernel (K = 576, 1024) and the generic one (577); groups
    that are not a power of two are in test_any_group_size."""
    force_kernel("dequant")
    for group in (32, 128, -1):
        qw = quantize(136, k, mode, group)
        check(torch.randn(65, k, device="cuda", dtype=dtype), qw,
              bias=torch.randn(136, device="cuda", dtype=dtype))


@pytest.mark.parametrize("mode, m", ((("int4", {}), 768), (("int4", {}), 769), (("nf4", {}), 768)),
                         ids=("int4-768", "int4-769", "nf4-768"))
def test_huge_weight_rows_of_x(mode, m):
    """4-bit weights of more than 2^27 elements take the Hopper GEMM up to 768 rows of x on
    H100-class GPUs (kGemmWgmmaMaxRowsHugeWeight), dequantize + cuBLAS above: both sides of that
    threshold, through the dispatch."""
    qw = quantize(2**27 // 4096 + 16, 4096, mode, 128 if mode[0] == "int4" else 64)
    check(torch.randn(m, 4096, device="cuda", dtype=torch.float16), qw)


def test_forced_kernel_name_is_checked(force_kernel):
    force_kernel("cublas")
    qw = quantize(64, 256, ("int4", {}), 64)
    with pytest.raises(ValueError, match="QKERNELS_CUDA_KERNEL expected"):
        qk.matmul(torch.randn(2, 256, device="cuda", dtype=torch.float16), qw, backend="cuda")


@pytest.mark.parametrize("m", (64, 1000))
@pytest.mark.parametrize("mode", (("int4", {}), ("nf4", {"double_quant": True})),
                         ids=("int4", "nf4dq"))
@pytest.mark.parametrize("kernel", GEMM_KERNELS)
def test_gemm_cuda_graph_capture(m, mode, kernel, force_kernel):
    """The split-K workspace (and wgmma's permuted x) is allocated and filled inside the captured
    region."""
    force_kernel(kernel)
    qw = quantize(512, 2048, mode, 128)
    x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
    qk.matmul(x, qw, backend="cuda")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = qk.matmul(x, qw, backend="cuda")
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(y, fp64_reference(x, qw), x, qk.dequantize(qw)) < REL_TOL[torch.bfloat16]


# --- nf4 with double-quantized absmax: what only torch.ops.qkernels.matmul_nf4_dq has ----------

def nf4_dq_args(x, qw, bias=None):
    return (x, qw.qweight, qw.absmax_codes, qw.absmax_scales, qw.absmax_offsets, qw.group_size,
            bias)


@pytest.mark.parametrize("kernel", ("gemv", "gemm", "wgmma", "dequant"))
@pytest.mark.parametrize("dtype", (torch.float32,) + DTYPES, ids=str)
def test_double_quant_decoded_absmax(kernel, dtype, force_kernel):
    """Every code 15 (NF4 1.0) and x one-hot at the first column of group g: y[g, n] is absmax[n,
    g] as the kernel decoded it, against formats.decode_absmax (torch.exp2, 1 ulp): exp2f is
    within 2 ulp (3 ulp apart: 3.6e-7), then y is rounded to x's dtype. fp32 x takes the generic GEMV (and dequantize); the
    GEMM needs 16-bit x."""
    force_kernel(kernel)
    n, k, group = 300, 1024, 32  # 32 groups a row: a 256-block of codes spans 8 rows
    groups = k // group
    absmax = torch.exp2(torch.rand(n, groups, device="cuda") * 16 - 8)
    dq = dict(zip(formats.DOUBLE_QUANT_NAMES, formats.double_quantize_absmax(absmax)))
    qweight = torch.full((n, k // 2), 0xFF, dtype=torch.uint8, device="cuda")
    qw = qk.QuantizedWeight("nf4", (n, k), group, qweight, **dq)
    x = torch.zeros(groups + 40, k, device="cuda", dtype=dtype)  # 72 rows: past the GEMV tiles
    x[torch.arange(groups), torch.arange(groups) * group] = 1.0
    decoded = qk.matmul(x, qw, backend="cuda")[:groups].T.double()
    expected = formats.decode_absmax(qw.absmax_codes, qw.absmax_scales, qw.absmax_offsets)
    bound = {torch.float32: 4e-7, torch.float16: 2.0 ** -11 + 4e-7,
             torch.bfloat16: 2.0 ** -8 + 4e-7}[dtype]
    assert float(((decoded - expected.double()) / expected.double()).abs().max()) <= bound


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_bias", (False, True))
def test_double_quant_opcheck(dtype, with_bias):
    qw = quantize(136, 512, NF4_MODES[1], 64)
    x = torch.randn(3, 512, device="cuda", dtype=dtype)
    bias = torch.randn(136, device="cuda", dtype=dtype) if with_bias else None
    torch.library.opcheck(torch.ops.qkernels.matmul_nf4_dq.default, nf4_dq_args(x, qw, bias))


def test_double_quant_empty_rows_and_bad_inputs():
    qw = quantize(64, 256, NF4_MODES[1], 64)
    x = torch.randn(2, 256, device="cuda", dtype=torch.float16)
    y = ops.matmul_nf4_dq_op(*nf4_dq_args(x[:0], qw))
    assert y.shape == (0, 64) and y.is_cuda
    args = list(nf4_dq_args(x, qw))
    for index in (2, 3, 4):  # codes, scales, offsets left on the CPU
        bad = args.copy()
        bad[index] = bad[index].cpu()
        with pytest.raises(ValueError, match="expected all tensors on"):
            ops.matmul_nf4_dq_op(*bad)
    with pytest.raises(TypeError, match="absmax_codes expected dtype uint8"):
        ops.matmul_nf4_dq_op(x, qw.qweight, qw.absmax_codes.to(torch.int8), *args[3:])
