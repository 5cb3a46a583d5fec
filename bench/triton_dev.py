"""Development benchmark of the Triton backend on one GPU: the Triton matmul against fp16
F.linear on 14336 x 4096 (Llama-3-8B MLP), each format, M = 1 ... 4096. Not the qkernels-bench
harness: a quick check while tuning the kernels.

    python bench/triton_dev.py              # the table
    python bench/triton_dev.py --threshold  # GEMV vs GEMM at M = 1..16 (sets GEMV_MAX_M)

Timing: CUDA events around replays of a CUDA graph that calls the op once per weight copy,
rotating through enough copies to exceed the L2 cache four times (cold weights); median of
the replays. The autotuned configs found are printed at the end (for DEFAULT_CONFIGS).
"""

import argparse
import statistics

import torch
import torch.nn.functional as F

import qkernels as qk
from qkernels import formats, ops
from qkernels.triton import gemm, gemv

N, K = 14336, 4096
BATCH_SIZES = (1, 16, 64, 256, 1024, 4096)
THRESHOLD_BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)
THRESHOLD_SHAPES = ((14336, 4096), (4096, 14336), (4096, 4096))
FORMATS = (("int4", 128, False), ("int4", 128, True), ("nf4", 64, False), ("int8", None, False))
L2_FLUSH_FACTOR = 4
REPLAYS = 20


def weight_copies(qw, nbytes_l2):
    copies = max(2, -(-L2_FLUSH_FACTOR * nbytes_l2 // qw.nbytes))
    return [qk.QuantizedWeight(qw.fmt, qw.shape, qw.group_size,
                               **{k: t.clone() for k, t in qw.tensors().items()})
            for _ in range(copies)]


def time_per_call(calls):
    """Median microseconds per call of a CUDA graph that makes every call in ``calls`` once."""
    for call in calls:  # warm-up outside the graph: compiles, autotunes
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(REPLAYS):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return statistics.median(times)


def triton_calls(x, copies, kernel=None):
    def call(qw):
        if kernel is None:
            return lambda: ops.matmul_triton_op(x, qw.fmt, qw.qweight, qw.scale_tensor, qw.zeros,
                                                qw.group_size, None)
        y = torch.empty(x.shape[0], qw.shape[0], dtype=x.dtype, device=x.device)
        nf4_table = formats.nf4_table(x.device)
        return lambda: kernel.matmul(x, qw.fmt, qw.qweight, qw.scale_tensor, qw.zeros,
                                     qw.group_size, None, nf4_table, y)
    return [call(qw) for qw in copies]


def fp16_calls(x, n, k, nbytes_l2):
    copies = max(2, -(-L2_FLUSH_FACTOR * nbytes_l2 // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(copies)]
    return [lambda w=w: F.linear(x, w) for w in weights]


def quantized(fmt, group_size, symmetric, n, k):
    w = torch.randn(n, k, device="cuda") * 0.02
    return qk.quantize(w, fmt, group_size, symmetric=symmetric)


def table(nbytes_l2):
    print(f"{N}x{K}, fp16 x, cold L2; us per call (speedup over fp16 F.linear), weight GB/s")
    header = f"{'M':>6} {'fp16':>9}" + "".join(f" {_name(f):>26}" for f in FORMATS)
    print(header)
    weights = {f: weight_copies(quantized(*f, N, K), nbytes_l2) for f in FORMATS}
    for m in BATCH_SIZES:
        x = torch.randn(m, K, device="cuda", dtype=torch.float16)
        base = time_per_call(fp16_calls(x, N, K, nbytes_l2))
        row = f"{m:>6} {base:>9.1f}"
        for f in FORMATS:
            t = time_per_call(triton_calls(x, weights[f]))
            gbs = weights[f][0].nbytes / t / 1e3
            row += f" {t:>9.1f} ({base / t:>5.2f}x) {gbs:>6.0f}GB/s"
        print(row, flush=True)


def threshold(nbytes_l2):
    print("GEMV vs GEMM kernel, int4 g128, us per call; GEMV_MAX_M = the largest M where GEMV wins")
    for n, k in THRESHOLD_SHAPES:
        copies = weight_copies(quantized("int4", 128, False, n, k), nbytes_l2)
        for m in THRESHOLD_BATCH_SIZES:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            t_gemv = time_per_call(triton_calls(x, copies, gemv))
            t_gemm = time_per_call(triton_calls(x, copies, gemm))
            print(f"{n}x{k} M={m:>2}: gemv {t_gemv:7.1f}  gemm {t_gemm:7.1f}  "
                  f"{'gemv' if t_gemv < t_gemm else 'gemm'}", flush=True)


def print_tuned_configs():
    for name, kernel in (("gemv", gemv), ("gemm", gemm)):
        for key, config in kernel._autotuned_kernel.cache.items():
            print(f"{name} {key}: {config}")


def _name(f):
    fmt, group_size, symmetric = f
    return f"{fmt}{'-sym' if symmetric else ''} g{group_size or 'K'}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", action="store_true", help="GEMV vs GEMM at M = 1..16")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, torch {torch.__version__}, triton {__import__('triton').__version__}")
    nbytes_l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    if args.threshold:
        threshold(nbytes_l2)
    else:
        table(nbytes_l2)
    print_tuned_configs()


if __name__ == "__main__":
    main()
