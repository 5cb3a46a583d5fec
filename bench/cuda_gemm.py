"""Times each CUDA path of qk.matmul (GEMV, tensor-core GEMM, dequantize + cuBLAS), forced with
QKERNELS_CUDA_KERNEL, against fp16 F.linear over M, to place the dispatch thresholds.

Method as bench/cuda_gemv.py (whose timing helpers it reuses): cold L2 by rotating weight copies,
CUDA-graph replays timed with CUDA events, median.

    python bench/cuda_gemm.py --out gemm.json        # prints a markdown table
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

import qkernels as qk
from cuda_gemv import SHAPES, clone_weight, copies_for, time_calls

FORMATS = (("int4 g128", "int4", 128), ("nf4 g64", "nf4", 64), ("int8 per-ch", "int8", -1))
ROWS = (8, 16, 32, 64, 128, 256, 1024, 4096)
GEMV_MAX_ROWS = 64  # on the large shapes the GEMV is never the fastest beyond it (--gemv-max-rows)


def path_before_small_weights(m):
    """The path the dispatch of commit c6da403 took at M (GEMM applicable): the 'before' column
    of the small-weight rule in csrc/cuda/qmatmul_cuda.h."""
    return "gemv" if m <= 8 else "gemm" if m <= 128 else "dequant"


def wgmma_runs():
    """Whether this GPU and build run the Hopper GEMM (QKERNELS_CUDA_KERNEL=wgmma is refused
    otherwise)."""
    qw = qk.quantize(torch.randn(128, 256, device="cuda"), "int4", group_size=128)
    os.environ["QKERNELS_CUDA_KERNEL"] = "wgmma"
    try:
        qk.matmul(torch.randn(32, 256, device="cuda", dtype=torch.float16), qw, backend="cuda")
    except ValueError:
        return False
    finally:
        del os.environ["QKERNELS_CUDA_KERNEL"]
    return True


def timed(calls, m):
    # Large M: each call takes milliseconds, so fewer of them per graph.
    return time_calls(calls, repeats=10 if m >= 1024 else 25, min_calls=8 if m >= 1024 else 32)


def time_path(path, x, weights, m):
    os.environ["QKERNELS_CUDA_KERNEL"] = path
    try:
        return timed([lambda q=q: qk.matmul(x, q, backend="cuda") for q in weights], m)
    finally:
        del os.environ["QKERNELS_CUDA_KERNEL"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--shapes", help="NxK[,NxK...] (default: the four goal shapes)")
    parser.add_argument("--rows", help="M[,M...]")
    parser.add_argument("--formats", help="comma list of labels' formats: int4,nf4,int8")
    parser.add_argument("--gemv-max-rows", type=int, default=GEMV_MAX_ROWS,
                        help="time the GEMV up to this M")
    args = parser.parse_args()
    shapes = ([tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
              if args.shapes else SHAPES)
    rows_m = [int(v) for v in args.rows.split(",")] if args.rows else ROWS
    fmts = args.formats.split(",") if args.formats else [f[1] for f in FORMATS]
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}")
    gemm_paths = ("gemm", "wgmma", "dequant") if wgmma_runs() else ("gemm", "dequant")
    rows = []
    for n, k in shapes:
        w = torch.randn(n, k, device="cuda") * 0.02
        dense = [w.half() for _ in range(copies_for(n * k * 2))]
        xs = {m: torch.randn(m, k, device="cuda", dtype=torch.float16) for m in rows_m}
        linear = {m: timed([lambda d=d, x=xs[m]: F.linear(x, d) for d in dense], m) for m in rows_m}
        del dense
        for label, fmt, group in FORMATS:
            if fmt not in fmts:
                continue
            qw0 = qk.quantize(w, fmt, group_size=group)
            weights = [qw0] + [clone_weight(qw0) for _ in range(copies_for(qw0.nbytes) - 1)]
            for m in rows_m:
                x = xs[m]
                times = {path: time_path(path, x, weights, m) for path in gemm_paths}
                if m <= args.gemv_max_rows or path_before_small_weights(m) == "gemv":
                    times["gemv"] = time_path("gemv", x, weights, m)
                times["auto"] = timed([lambda q=q: qk.matmul(x, q, backend="cuda")
                                       for q in weights], m)
                row = dict(shape=f"{n}x{k}", m=m, fmt=label, linear_us=linear[m], **{
                    f"{path}_us": us for path, us in times.items()})
                row["best"] = min(times, key=times.get)
                row["before_us"] = times[path_before_small_weights(m)]
                row["auto_speedup"] = linear[m] / times["auto"]
                rows.append(row)
                print(f"{row['shape']:>11} M={m:<5} {label:<12} F.linear {linear[m]:9.1f} us | " +
                      " ".join(f"{p} {t:9.1f}" for p, t in times.items()) +
                      f" | before {row['before_us']:.1f} auto x{row['auto_speedup']:.2f}",
                      flush=True)
            del weights
    print("\n| shape (NxK) | M | fmt | F.linear us | GEMV us | GEMM us | wgmma GEMM us | "
          "dequant+cuBLAS us | dispatched us | before (c6da403 dispatch) us | "
          "speedup vs F.linear |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in rows:
        print(f"| {r['shape']} | {r['m']} | {r['fmt']} | {r['linear_us']:.1f} | "
              f"{r.get('gemv_us', nan):.1f} | {r['gemm_us']:.1f} | {r.get('wgmma_us', nan):.1f} | "
              f"{r['dequant_us']:.1f} | "
              f"{r['auto_us']:.1f} | {r['before_us']:.1f} | {r['auto_speedup']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
