"""qkernels-bench: every available backend x format against F.linear (fp32 on CPU, fp16 on GPU)
and the peers, over LLM shapes and batch sizes, measured as shared/DESIGN.md section 6 says.

    qkernels-bench                                  # quick suite on the CPU
    qkernels-bench --device cuda --suite llama3-8b --out bench/results/h100
    qkernels-bench --shapes 4096x4096 --batch 1,16 --formats int4 --backends cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

import qkernels as qk
from qkernels import formats, ops

from . import cases, measure, suites

DEFAULT_GROUP = {"int8": -1, "int4": 128, "nf4": 64}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="qkernels-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--suite", default="quick", help=f"one of {sorted(suites.SUITES)}")
    parser.add_argument("--shapes", help="NxK[,NxK...] (out x in features): overrides the suite's")
    parser.add_argument("--batch", help="M[,M...]: overrides the suite's batch sizes")
    parser.add_argument("--formats", default="int4,nf4,int8")
    parser.add_argument("--group-size", type=int,
                        help="group size for every format (default: int4 128, nf4 64, int8 per channel)")
    parser.add_argument("--backends", help="comma list (default: every backend available)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="activation dtype (default: float32 on CPU, float16 on GPU)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the CPU")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer libraries' rows")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per row")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--out", type=Path,
                        help="directory for <suite>.json and <suite>.md (recorded results)")
    args = parser.parse_args(argv)
    args.formats = [formats.check_format(f) for f in args.formats.split(",")]
    return args


def _shapes(text):
    try:
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        raise SystemExit(f"--shapes: expected NxK[,NxK...], got {text!r}") from None


def machine_info(device: torch.device, roofline: dict, x_dtype) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                name = next(l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip() or None
    except OSError:
        commit = None
    return {"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "qkernels": qk.__version__, "git_commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "x_dtype": str(x_dtype).replace("torch.", ""), **roofline}


def run(args) -> dict:
    from rich.console import Console
    from rich.progress import Progress

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    x_dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.float16 if device.type == "cuda" else torch.float32)
    suite = suites.suite_for(args.suite, device.type)
    shapes = _shapes(args.shapes) if args.shapes else suite["shapes"]
    batches = [int(m) for m in args.batch.split(",")] if args.batch else suite["batches"]
    available = ops.available_backends(device.type)
    # The reference backend is the tests' oracle, not a contender: benchmarked only on request.
    contenders = [b for b in available if b != "reference"] or available
    wanted = args.backends.split(",") if args.backends else contenders
    for name in wanted:
        if name not in available:
            raise SystemExit(f"--backends: {name!r} cannot run on {device.type} here; "
                             f"available: {available}")

    console = Console(stderr=True)
    console.print(f"[bold]qkernels-bench[/] suite={args.suite} device={device.type} "
                  f"x={x_dtype} threads={torch.get_num_threads()} backends={wanted}")
    roofline = measure.measure_roofline(device)
    info = machine_info(device, roofline, x_dtype)
    console.print(f"measured: copy {roofline['bandwidth_gbps']:.1f} GB/s, "
                  f"{roofline['peak_dtype']} matmul {roofline['peak_tflops'] * 1e3:.1f} GFLOP/s")

    rows, skipped = [], []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(shapes) * len(batches))
        for n, k in shapes:
            w = (torch.randn(n, k, device=device) * 0.02)
            shape_cases = [cases.baseline_case(w, x_dtype)]
            for fmt in args.formats:
                group = args.group_size or DEFAULT_GROUP[fmt]
                shape_cases += [cases.qkernels_case(w, fmt, group, b) for b in wanted]
            if not args.no_peers:
                peers, missing = cases.peer_cases(w, args.formats, x_dtype)
                shape_cases += peers
                skipped += [f"{n}x{k}: {reason}" for reason in missing]
            for m in batches:
                x = torch.randn(m, k, device=device, dtype=x_dtype)
                baseline_s = None
                for case in shape_cases:
                    progress.update(task, description=f"{n}x{k} M={m} {case.name}")
                    seconds = measure.time_calls(case.calls(x), device, budget_s=args.budget)
                    baseline_s = seconds if case.kind == "baseline" else baseline_s
                    rows.append(_row(case, n, k, m, seconds, baseline_s, x_dtype, roofline))
                progress.advance(task)
            del w, shape_cases
    return {"meta": info, "suite": args.suite, "results": rows, "skipped": skipped}


def _row(case, n, k, m, seconds, baseline_s, x_dtype, roofline) -> dict:
    act_bytes = torch.tensor([], dtype=x_dtype).element_size() * m * (n + k)
    total_bytes = case.weight_bytes + act_bytes
    flops = 2 * m * n * k
    floor_s = max(total_bytes / (roofline["bandwidth_gbps"] * 1e9),
                  flops / (roofline["peak_tflops"] * 1e12))
    return {"n": n, "k": k, "m": m, "name": case.name, "kind": case.kind, "fmt": case.fmt,
            "group_size": case.group_size, "backend": case.backend, "time_us": seconds * 1e6,
            "bytes": total_bytes, "gbps": total_bytes / seconds / 1e9,
            "tflops": flops / seconds / 1e12, "roofline_pct": 100 * floor_s / seconds,
            "speedup": baseline_s / seconds}


def render_table(report: dict):
    from rich.table import Table

    meta = report["meta"]
    table = Table(title=f"qkernels-bench {report['suite']} on {meta['device_name']} "
                        f"({meta['threads']} threads, x {meta['x_dtype']})")
    for column in ("shape NxK", "M", "impl", "time (us)", "GB/s", "TFLOP/s", "% roofline",
                   "speedup"):
        table.add_column(column, justify="left" if column in ("shape NxK", "impl") else "right")
    previous = None
    for r in report["results"]:
        key = (r["n"], r["k"], r["m"])
        if previous is not None and key != previous:
            table.add_section()
        previous = key
        style = "dim" if r["kind"] != "qkernels" else None
        table.add_row(f"{r['n']}x{r['k']}", str(r["m"]), r["name"], f"{r['time_us']:.1f}",
                      f"{r['gbps']:.1f}", f"{r['tflops']:.3f}", f"{r['roofline_pct']:.0f}%",
                      f"{r['speedup']:.2f}x", style=style)
    return table


def markdown_table(report: dict) -> str:
    meta = report["meta"]
    lines = [f"# qkernels-bench `{report['suite']}`: {meta['device_name']}", "",
             f"{meta['date']}, torch {meta['torch']}, qkernels {meta['qkernels']} "
             f"({meta['git_commit']}), {meta['threads']} threads, x {meta['x_dtype']}; measured "
             f"copy bandwidth {meta['bandwidth_gbps']:.1f} GB/s, {meta['peak_dtype']} matmul "
             f"{meta['peak_tflops']:.2f} TFLOP/s. Speedup is over the F.linear row of the same "
             "shape and M, measured in the same run. Cold caches, median.", "",
             "| shape NxK | M | impl | time (us) | GB/s | TFLOP/s | % roofline | speedup |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        name = f"**{r['name']}**" if r["kind"] == "qkernels" else r["name"]
        lines.append(f"| {r['n']}x{r['k']} | {r['m']} | {name} | {r['time_us']:.1f} | "
                     f"{r['gbps']:.1f} | {r['tflops']:.3f} | {r['roofline_pct']:.0f}% | "
                     f"{r['speedup']:.2f}x |")
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    from rich.console import Console

    args = parse_args(argv)
    report = run(args)
    console = Console()
    console.width = max(console.width, 120)  # keep rows on one line in logs and narrow terminals
    console.print(render_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.suite}.json").write_text(json.dumps(report, indent=1))
        (args.out / f"{args.suite}.md").write_text(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
