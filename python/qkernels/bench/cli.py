"""qkernels-bench: every available backend x format against F.linear (fp32 on CPU, fp16 on GPU)
and the peer libraries, over LLM shapes and batch sizes, measured as shared/DESIGN.md section 6
says; plus a comparison of two runs and a model-level tokens/s benchmark.

    qkernels-bench                                  # quick suite on the CPU
    qkernels-bench --device cuda --suite llama3-8b --out bench/results/h100
    qkernels-bench --suite custom --shapes 4096x4096 --batch 1,16 --formats int4 --backends cpu
    qkernels-bench compare OLD.json NEW.json        # ratio table, regressions first
    qkernels-bench model --device cuda              # SmolLM2-135M prefill / decode tokens/s
    qkernels-bench plot RUN.json                    # (re)draw the plots of a run
    qkernels-bench summary RUN.json --batch 1,4096  # speedup tables of a run
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import qkernels as qk
from qkernels import activations as int8_activations
from qkernels import formats, ops

from . import cases, measure, report, suites

DEFAULT_GROUP = {"int8": -1, "int4": 128, "nf4": 64}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="qkernels-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--suite", default="quick", help=f"one of {sorted(suites.SUITES)}")
    parser.add_argument("--shapes", help="NxK[,NxK...] (out x in features): overrides the suite's")
    parser.add_argument("--batch", help="M[,M...]: overrides the suite's batch sizes")
    parser.add_argument("--custom-file", type=Path,
                        help="file with lines 'shapes: NxK, ...' and 'batches: M, ...' "
                             "(implies --suite custom)")
    parser.add_argument("--formats", default="int4,nf4,int8")
    parser.add_argument("--group-size", type=int,
                        help="group size for every format (default: int4 128, nf4 64, int8 per channel)")
    parser.add_argument("--backends", help="comma list (default: every backend available)")
    parser.add_argument("--activations", choices=["int8"],
                        help="also time the int8, int4 and nf4 formats with int8 activations (rows "
                             "'... a8'; CPU backends)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="activation dtype (default: float32 on CPU, float16 on GPU)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the CPU")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer libraries' rows")
    parser.add_argument("--peers", help="comma list of peer libraries to run (torch, "
                                        "bitsandbytes, gemlite; default: all importable)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per row")
    parser.add_argument("--give-up", type=float, default=50.0,
                        help="a row slower than this many times F.linear is not timed at the "
                             "larger batch sizes of that shape (default 50)")
    parser.add_argument("--time-limit", type=float,
                        help="minutes: start no new (shape, M) after this; what ran is kept")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--out", type=Path,
                        help="directory for <suite>.json, <suite>.md and the plots")
    parser.add_argument("--no-plots", action="store_true",
                        help="with --out: skip the plots (drawn when matplotlib is installed)")
    args = parser.parse_args(argv)
    try:
        args.formats = [formats.check_format(f) for f in args.formats.split(",")]
        if args.custom_file:
            args.suite = "custom"
        custom = suites.parse_custom_file(args.custom_file) if args.custom_file else {}
        args.shapes = suites.parse_shapes(args.shapes) if args.shapes else custom.get("shapes")
        args.batch = suites.parse_batches(args.batch) if args.batch else custom.get("batches")
        suites.suite_for(args.suite, args.device)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    if args.suite == "custom" and not (args.shapes and args.batch):
        parser.error("--suite custom: expected --shapes and --batch, or --custom-file")
    return args


def git_commit() -> str | None:
    """QKERNELS_GIT_COMMIT, else the commit git sees here, with "-dirty" when tracked files
    differ from it. A copy of the tree (the GPU machine's) is told its commit: its git may see
    another, older one, and a report must not name that commit as the code it timed."""
    commit = os.environ.get("QKERNELS_GIT_COMMIT")
    if commit:
        return commit
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return None
    return (head + ("-dirty" if changed else "")) or None


def machine_info(device: torch.device, roofline: dict, x_dtype) -> dict:
    name = measure.device_name(device)
    commit = git_commit()
    return {"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
            "load_average": measure.load_average(),
            "torch": torch.__version__, "qkernels": qk.__version__, "git_commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "x_dtype": str(x_dtype).replace("torch.", ""), **roofline}


def run(args) -> dict:
    from rich.console import Console
    from rich.progress import Progress

    device, x_dtype = measure.prepare_device(args.device, args.threads, args.dtype)
    suite = suites.suite_for(args.suite, device.type)
    shapes = args.shapes or suite["shapes"]
    batches = args.batch or suite["batches"]
    available = ops.available_backends(device.type)
    # The reference backend is the tests' oracle, not a contender: benchmarked only on request.
    contenders = [b for b in available if b != "reference"] or available
    wanted = args.backends.split(",") if args.backends else contenders
    for name in wanted:
        if name not in available:
            raise SystemExit(f"--backends: {name!r} cannot run on {device.type} here; "
                             f"available: {available}")
    peer_libraries = None if args.peers is None else set(args.peers.split(","))

    console = Console(stderr=True)
    console.print(f"[bold]qkernels-bench[/] suite={args.suite} device={device.type} "
                  f"x={x_dtype} threads={torch.get_num_threads()} backends={wanted}")
    roofline = measure.measure_roofline(device)
    info = machine_info(device, roofline, x_dtype)
    console.print(f"measured: read {roofline['read_gbps']:.1f} GB/s, copy "
                  f"{roofline['copy_gbps']:.1f} GB/s, {roofline['peak_dtype']} matmul "
                  f"{roofline['peak_tflops'] * 1e3:.1f} GFLOP/s")

    started = time.monotonic()
    rows, skipped = [], []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(shapes) * len(batches))
        for layer, (n, k) in shapes.items():
            if args.time_limit and time.monotonic() - started > 60 * args.time_limit:
                skipped.append(f"{n}x{k}: not run, past --time-limit {args.time_limit} min")
                continue
            w = (torch.randn(n, k, device=device) * 0.02)
            shape_cases = [cases.baseline_case(w, x_dtype)]
            for fmt in args.formats:
                group = args.group_size or DEFAULT_GROUP[fmt]
                shape_cases += [cases.qkernels_case(w, fmt, group, b) for b in wanted]
                if args.activations and fmt in int8_activations.FORMATS:
                    try:
                        int8_activations.check_weight(fmt, group if group > 0 else k, k)
                    except ValueError as error:
                        skipped.append(f"{n}x{k}: {fmt} a8: {error}")
                        continue
                    shape_cases += [cases.qkernels_case(w, fmt, group, b, args.activations)
                                    for b in wanted if b in ops.A8_MATMULS]
            if not args.no_peers:
                peers, missing = cases.peer_cases(w, args.formats, x_dtype, peer_libraries)
                shape_cases += peers
                skipped += [f"{n}x{k}: {reason}" for reason in missing]
            given_up = set()
            for m in batches:
                if args.time_limit and time.monotonic() - started > 60 * args.time_limit:
                    skipped.append(f"{n}x{k}: M >= {m} not run, past --time-limit "
                                   f"{args.time_limit} min")
                    break
                x = torch.randn(m, k, device=device, dtype=x_dtype)
                baseline_s = None
                for case in shape_cases:
                    if case.name in given_up:
                        continue
                    progress.update(task, description=f"{n}x{k} M={m} {case.name}")
                    case_started = time.monotonic()
                    calls = case.calls(x)
                    try:
                        seconds = measure.time_calls(calls, device, budget_s=args.budget)
                    except Exception as error:  # noqa: BLE001 - a peer's failure is its own
                        if case.kind != "peer":
                            raise
                        given_up.add(case.name)
                        skipped.append(f"{n}x{k}: {case.name} failed at M={m} "
                                       f"({type(error).__name__}: {str(error)[:100]})")
                        continue
                    baseline_s = seconds if case.kind == "baseline" else baseline_s
                    rows.append(_row(case, layer, n, k, m, seconds, baseline_s, x_dtype, roofline))
                    # Tiny weights cannot be rotated through enough copies to leave the cache.
                    rows[-1]["cold"] = (len(calls) * case.weight_bytes
                                        >= measure.last_level_cache_bytes(device))
                    # What the row cost the run (warm-up, capture, samples): for planning budgets.
                    rows[-1]["bench_s"] = time.monotonic() - case_started
                    if (case.kind != "baseline" and seconds > args.give_up * baseline_s
                            and m != batches[-1]):
                        given_up.add(case.name)
                        skipped.append(f"{n}x{k}: {case.name} took {seconds / baseline_s:.0f}x "
                                       f"F.linear at M={m}; not timed at larger M")
                progress.advance(task)
            del w, shape_cases
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"meta": info, "suite": args.suite, "results": rows, "skipped": skipped}


def _row(case, layer, n, k, m, seconds, baseline_s, x_dtype, roofline) -> dict:
    act_bytes = torch.tensor([], dtype=x_dtype).element_size() * m * (n + k)
    total_bytes = case.weight_bytes + act_bytes
    flops = 2 * m * n * k
    floor_s = max(total_bytes / (roofline["bandwidth_gbps"] * 1e9),
                  flops / (roofline["peak_tflops"] * 1e12))
    return {"layer": layer, "n": n, "k": k, "m": m, "name": case.name, "kind": case.kind,
            "fmt": case.fmt, "group_size": case.group_size, "backend": case.backend,
            "time_us": seconds * 1e6,
            "bytes": total_bytes, "gbps": total_bytes / seconds / 1e9,
            "tflops": flops / seconds / 1e12, "roofline_pct": 100 * floor_s / seconds,
            "speedup": baseline_s / seconds}


SUBCOMMANDS = {
    "compare": "qkernels.bench.compare",
    "model": "qkernels.bench.model",
    "plot": "qkernels.bench.plot",
    "summary": "qkernels.bench.report",
}


def main(argv=None):
    from rich.console import Console

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    args = parse_args(argv)
    results = run(args)
    console = Console()
    console.width = max(console.width, 120)  # keep rows on one line in logs and narrow terminals
    console.print(report.render_table(results))
    for reason in results["skipped"]:
        console.print(f"skipped: {reason}", style="dim")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    if args.out:
        write_run(results, args.out, plots=not args.no_plots)
    return 0


def write_run(results: dict, out: Path, plots: bool = True) -> list:
    """<suite>.json, <suite>.md and (matplotlib permitting) the plots into `out`; returns the
    paths written."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{results['suite']}.json"
    json_path.write_text(json.dumps(results, indent=1))
    written = [json_path]
    if plots and importlib.util.find_spec("matplotlib") is not None:
        from . import plot

        written += plot.plot_run(results, out)
    elif plots:
        print("no plots: matplotlib is not installed (pip install 'qkernels[plot]')",
              file=sys.stderr)
    md_path = out / f"{results['suite']}.md"
    md_path.write_text(report.markdown_table(results, [p.name for p in written[1:]]))
    return written + [md_path]


if __name__ == "__main__":
    sys.exit(main())
