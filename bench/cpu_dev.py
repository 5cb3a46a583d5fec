"""Developer timing of the CPU kernels (the official figures come from qkernels-bench).

Cold caches: every timed call uses the next of enough weight copies that together exceed the
32 MB L3 several times. Per-call time = median over rounds of (round time / calls per round).
Compares with fp32 F.linear and torch's int4pack matmul (int4, g128) measured in the same run;
int4pack gets bf16 x and bf16 scales-and-zeros, its fast path (fp32 x is ~15x slower in 2.13).

    .venv/bin/python bench/cpu_dev.py --shapes 4096x4096 --ms 1,4,16,256 --formats int4,nf4,int8
"""

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

import qkernels as qk

COLD_BYTES = 256 << 20  # ~8x the L3


def copies_for(nbytes):
    return max(2, -(-COLD_BYTES // nbytes))


def time_rotating(fn, args_list, rounds, min_round_s=0.05):
    for a in args_list[:2]:
        fn(*a)
    calls = 1
    while True:  # calls per round: at least one pass over the copies or min_round_s
        t0 = time.perf_counter()
        for i in range(calls):
            fn(*args_list[i % len(args_list)])
        dt = time.perf_counter() - t0
        if dt >= min_round_s or calls >= 4 * len(args_list):
            break
        calls *= 2
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(calls):
            fn(*args_list[i % len(args_list)])
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times) * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4096x4096")
    ap.add_argument("--ms", default="1,2,4,8,16,32,64,256")
    ap.add_argument("--formats", default="int4,nf4,int8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", default=None, help="QKERNELS_CPU_ISA for the qkernels calls")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.isa:
        os.environ["QKERNELS_CPU_ISA"] = args.isa
    group = {"int4": 128, "nf4": 64, "int8": None}
    print(f"threads={torch.get_num_threads()} isa={qk._C.cpu_best_isa() if not args.isa else args.isa}")
    print(f"{'shape':>11} {'M':>4} {'what':>9} {'us':>9} {'vs F.linear':>11} {'vs int4pack':>11} {'GB/s':>6} {'GFLOP/s':>7}")
    for shape in args.shapes.split(","):
        n, k = map(int, shape.split("x"))
        w = torch.randn(n, k) * 0.02
        qws = {f: qk.quantize(w, f, group[f]) for f in args.formats.split(",")}
        # torch int4pack (g128): uint4 codes + [K/128, N, 2] scale-and-zero
        codes = torch.randint(0, 16, (n, k), dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        sz = torch.randn(k // 128, n, 2).to(torch.bfloat16)
        fp32_copies = [w.clone() for _ in range(copies_for(w.nbytes))]
        pack_copies = [(packed.clone(), sz.clone()) for _ in range(copies_for(packed.nbytes + sz.nbytes))]
        q_copies = {}
        for f, qw in qws.items():
            tensors = [qw.qweight, qw.scale_tensor] + ([qw.zeros] if qw.zeros is not None else [])
            nbytes = sum(t.nbytes for t in tensors)
            q_copies[f] = ([tuple(t.clone() for t in tensors) for _ in range(copies_for(nbytes))], nbytes)
        for m in map(int, args.ms.split(",")):
            x = torch.randn(m, k)
            x_bf16 = x.to(torch.bfloat16)
            flops = 2 * m * n * k
            t_lin = time_rotating(lambda wt: F.linear(x, wt), [(c,) for c in fp32_copies], args.rounds)
            t_pack = time_rotating(
                lambda p, s: torch.ops.aten._weight_int4pack_mm_for_cpu(x_bf16, p, 128, s), pack_copies, args.rounds)
            print(f"{shape:>11} {m:>4} {'F.linear':>9} {t_lin:9.0f} {1:11.2f} {t_pack / t_lin:11.2f} "
                  f"{w.nbytes / t_lin / 1e3:6.1f} {flops / t_lin / 1e3:7.1f}")
            print(f"{shape:>11} {m:>4} {'int4pack':>9} {t_pack:9.0f} {t_lin / t_pack:11.2f} {1:11.2f} "
                  f"{(packed.nbytes + sz.nbytes) / t_pack / 1e3:6.1f} {flops / t_pack / 1e3:7.1f}")
            for f, (copies, nbytes) in q_copies.items():
                g = qws[f].group_size

                def call(*t, f=f, g=g):
                    zeros = t[2] if len(t) > 2 else None
                    return torch.ops.qkernels.matmul(x, f, t[0], t[1], zeros, g, None)

                t_q = time_rotating(call, copies, args.rounds)
                print(f"{shape:>11} {m:>4} {f:>9} {t_q:9.0f} {t_lin / t_q:11.2f} {t_pack / t_q:11.2f} "
                      f"{nbytes / t_q / 1e3:6.1f} {flops / t_q / 1e3:7.1f}", flush=True)


if __name__ == "__main__":
    main()
