"""Times qk.matmul(backend="cuda") at decode sizes against fp16/bf16 F.linear (cuBLAS).

Method (shared/DESIGN.md section 6): cold L2 (each timed graph cycles through enough copies of
the weights to exceed the 50 MB L2 four times over), CUDA-graph replays timed with CUDA events,
median of the replays; GB/s over the bytes that must move (packed weights, scales, zeros, x, y)
and as a share of the measured device-to-device copy rate.

    python bench/cuda_gemv.py --out results.json      # prints a markdown table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics

import torch
import torch.nn.functional as F

import qkernels as qk

L2_BYTES = 50e6
SHAPES = ((4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192))  # (N, K)
# Rows of x timed per activation dtype (the GEMV's range; crossovers are bench/cuda_gemm.py's).
ROWS = {torch.float16: (1, 4, 8), torch.bfloat16: (1, 8)}
# (label, fmt, group_size, symmetric)
FORMATS = (
    ("int4 g128", "int4", 128, False),
    ("int4 sym g128", "int4", 128, True),
    ("nf4 g64", "nf4", 64, False),
    ("int8 per-ch", "int8", -1, False),
    ("int8 g128", "int8", 128, False),
)


def copies_for(nbytes: int) -> int:
    return max(2, math.ceil(4 * L2_BYTES / nbytes) + 1)


def time_calls(calls, repeats: int = 25, min_calls: int = 32) -> float:
    """Median microseconds per call of a CUDA graph that runs `calls` round-robin."""
    sequence = [calls[i % len(calls)] for i in range(max(min_calls, len(calls)))]
    for call in calls:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in sequence:
            call()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(sequence))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, bytes read + written."""
    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    us = time_calls([lambda: dst.copy_(src)], repeats=10, min_calls=4)
    return 2 * src.numel() * 4 / us / 1e3


def clone_weight(qw):
    return dataclasses.replace(qw, **{name: t.clone() for name, t in qw.tensors().items()})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--quick", action="store_true", help="one shape, M = 1")
    args = parser.parse_args()
    torch.manual_seed(0)
    bw = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}, copy bandwidth {bw:.0f} GB/s")
    rows = []
    shapes = SHAPES[1:2] if args.quick else SHAPES
    for n, k in shapes:
        w = torch.randn(n, k, device="cuda") * 0.02
        baseline = {}
        for dtype in (torch.float16, torch.bfloat16):
            dense = [w.to(dtype) for _ in range(copies_for(n * k * 2))]
            for m in ROWS[dtype]:
                x = torch.randn(m, k, device="cuda", dtype=dtype)
                baseline[dtype, m] = time_calls([lambda d=d: F.linear(x, d) for d in dense])
            del dense
        for label, fmt, group, symmetric in FORMATS:
            qw0 = qk.quantize(w, fmt, group_size=group, symmetric=symmetric)
            weights = [qw0] + [clone_weight(qw0) for _ in range(copies_for(qw0.nbytes) - 1)]
            for dtype in (torch.float16, torch.bfloat16):
                for m in (1,) if args.quick else ROWS[dtype]:
                    x = torch.randn(m, k, device="cuda", dtype=dtype)
                    us = time_calls([lambda q=q: qk.matmul(x, q, backend="cuda") for q in weights])
                    nbytes = qw0.nbytes + 2 * x.numel() + 2 * m * n
                    base = baseline.get((dtype, m))
                    row = dict(shape=f"{n}x{k}", m=m, fmt=label, dtype=str(dtype)[6:], us=us,
                               gbs=nbytes / us / 1e3, pct_bw=100 * nbytes / us / 1e3 / bw,
                               linear_us=base, speedup=base / us if base else None)
                    rows.append(row)
                    print(f"{row['shape']:>11} M={m:<3} {label:<14} {row['dtype']:<9} "
                          f"{us:8.2f} us {row['gbs']:7.0f} GB/s {row['pct_bw']:5.1f}% "
                          f"x{row['speedup'] or 0:5.2f} vs F.linear {base or 0:7.2f} us", flush=True)
            del weights
    print("\n| shape (NxK) | M | fmt | x | us | GB/s | % copy BW | F.linear us | speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['m']} | {r['fmt']} | {r['dtype']} | {r['us']:.2f} | "
              f"{r['gbs']:.0f} | {r['pct_bw']:.1f} | {r['linear_us'] or float('nan'):.2f} | "
              f"{r['speedup'] or float('nan'):.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(copy_gbs=bw, device=torch.cuda.get_device_name(), rows=rows), f,
                      indent=1)


if __name__ == "__main__":
    main()
