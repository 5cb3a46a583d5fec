"""Per-call cost of nf4 with double-quantized absmax on the CPU backend, one thread: the codes
read by the kernels (torch.ops.qkernels.matmul_nf4_dq, decoded per tile of rows in
csrc/cpu/dispatch.cpp) against the previous route (formats.decode_absmax in torch on every call,
then the fp32-absmax kernels), and plain nf4 as the floor. The three are timed interleaved,
round by round, so that load on a shared machine hits them alike; medians in microseconds.

    python bench/nf4_dq_cpu.py [--rounds 30] [--shapes 4096x4096,1536x576] [--rows 1,16]
"""

import argparse
import statistics
import time

import torch

import qkernels as qk
from qkernels import formats


def timed(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--shapes", default="4096x4096,1536x576")
    parser.add_argument("--rows", default="1,16")
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"threads 1, nf4 g{args.group_size}, {args.rounds} interleaved rounds, median us per call")
    print(f"{'N x K':>11} {'M':>4} {'plain nf4':>10} {'decode+nf4':>11} {'codes read':>11}")
    for shape in args.shapes.split(","):
        n, k = map(int, shape.split("x"))
        qw = qk.quantize(torch.randn(n, k), "nf4", args.group_size, double_quant=True)
        absmax = qw.scale_tensor  # decoded once, for the plain-nf4 floor
        dq = (qw.absmax_codes, qw.absmax_scales, qw.absmax_offsets)
        for m in map(int, args.rows.split(",")):
            x = torch.randn(m, k)
            candidates = {
                "plain": lambda: torch.ops.qkernels.matmul(x, "nf4", qw.qweight, absmax, None,
                                                           qw.group_size, None),
                "decoded": lambda: torch.ops.qkernels.matmul(
                    x, "nf4", qw.qweight, formats.decode_absmax(*dq), None, qw.group_size, None),
                "codes": lambda: torch.ops.qkernels.matmul_nf4_dq(x, qw.qweight, *dq,
                                                                  qw.group_size, None),
            }
            calls = max(1, int(2e5 / (n * k / 1e3)))  # ~0.1-0.5 s a round at these sizes
            times = {name: [] for name in candidates}
            with torch.inference_mode():
                for fn in candidates.values():
                    timed(fn, 2)  # warm-up
                for _ in range(args.rounds):
                    for name, fn in candidates.items():
                        times[name].append(timed(fn, calls))
            med = {name: statistics.median(t) for name, t in times.items()}
            print(f"{shape:>11} {m:>4} {med['plain']:>10.1f} {med['decoded']:>11.1f} "
                  f"{med['codes']:>11.1f}")


if __name__ == "__main__":
    main()
