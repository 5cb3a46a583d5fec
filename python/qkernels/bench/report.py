"""How a run reads: the rich table on the terminal and the markdown file beside the JSON.

The markdown opens with one pivot table per shape (speedup over F.linear, implementations down,
batch sizes across), which is what a reader compares; every measured row follows it.

    qkernels-bench summary RUN.json [RUN.json ...] [--batch 1,16,256,4096]   # the pivot tables
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def shape_key(row: dict) -> tuple:
    return row["n"], row["k"]


def shape_title(row: dict) -> str:
    layer = row.get("layer")
    shape = f"{row['n']}x{row['k']}"
    return shape if not layer or layer == shape else f"{shape} ({layer})"


def grouped_by_shape(rows) -> dict:
    """{(N, K): [rows]} in the order the shapes were run."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(shape_key(row), []).append(row)
    return groups


def implementations(rows) -> list:
    """Row labels in the order they were run: baseline, qkernels, peers."""
    return list(dict.fromkeys(row["name"] for row in rows))


def header_line(report: dict) -> str:
    meta = report["meta"]
    bandwidth = f"{meta['bandwidth_gbps']:.1f} GB/s"
    if "read_gbps" in meta:
        bandwidth += (f" (faster of a read-only sum, {meta['read_gbps']:.1f}, and a copy counting "
                      f"bytes read + written, {meta['copy_gbps']:.1f})")
    load = f", load average {meta['load_average']}" if meta.get("load_average") else ""
    return (f"{meta['date']}, torch {meta['torch']}, qkernels {meta['qkernels']} "
            f"({meta['git_commit']}), {meta['threads']} threads{load}, x {meta['x_dtype']}; "
            f"measured memory bandwidth {bandwidth}, {meta['peak_dtype']} matmul "
            f"{meta['peak_tflops']:.2f} TFLOP/s.")


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


def speedup_pivot(rows, batches=None) -> list:
    """Markdown lines: implementations down, M across (all of the run's, or `batches`), speedup
    over F.linear in the cells and the F.linear time itself in the first row."""
    batches = sorted({r["m"] for r in rows} if batches is None else batches)
    cell = {(r["name"], r["m"]): r for r in rows}
    lines = ["| impl | " + " | ".join(f"M={m}" for m in batches) + " |",
             "|---" * (len(batches) + 1) + "|"]
    for name in implementations(rows):
        kind = next(r["kind"] for r in rows if r["name"] == name)
        if kind == "baseline":
            values = [f"{cell[name, m]['time_us']:.1f} us" if (name, m) in cell else "-"
                      for m in batches]
        else:
            values = [f"{cell[name, m]['speedup']:.2f}x" if (name, m) in cell else "-"
                      for m in batches]
        label = f"**{name}**" if kind == "qkernels" else name
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return lines


def markdown_table(report: dict, plots=()) -> str:
    meta = report["meta"]
    lines = [f"# qkernels-bench `{report['suite']}`: {meta['device_name']}", "",
             header_line(report) + " Speedup is over the F.linear row of the same shape and M, "
             "measured in the same run (first row of each table: its time). Cold caches, "
             "median. '-': not timed (see Skipped).", ""]
    lines += [f"![{plot}]({plot})" for plot in plots]
    if plots:
        lines.append("")
    for rows in grouped_by_shape(report["results"]).values():
        lines += [f"## {shape_title(rows[0])}", ""] + speedup_pivot(rows) + [""]
        warm = implementations(r for r in rows if r.get("cold") is False)
        if warm:
            lines += ["Cache-warm (all copies of the weight together fit in the last-level "
                      "cache): " + ", ".join(warm) + ".", ""]
    lines += ["## All rows", "",
              "| shape NxK | M | impl | time (us) | GB/s | TFLOP/s | % roofline | speedup |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        name = f"**{r['name']}**" if r["kind"] == "qkernels" else r["name"]
        lines.append(f"| {r['n']}x{r['k']} | {r['m']} | {name} | {r['time_us']:.1f} | "
                     f"{r['gbps']:.1f} | {r['tflops']:.3f} | {r['roofline_pct']:.0f}% | "
                     f"{r['speedup']:.2f}x |")
    if report["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {reason}" for reason in report["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    from . import suites

    parser = argparse.ArgumentParser(prog="qkernels-bench summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="JSON files of qkernels-bench runs")
    parser.add_argument("--batch", help="M[,M...]: the columns to show (default: all)")
    args = parser.parse_args(argv)
    try:
        batches = suites.parse_batches(args.batch) if args.batch else None
    except ValueError as error:
        parser.error(str(error))
    for path in args.runs:
        results = json.loads(path.read_text())
        if "suite" not in results:
            print(f"# {path.name}: not a kernel-suite run (no 'suite' key), left out\n")
            continue
        print(f"# {path.name}: {results['meta']['device_name']}. {header_line(results)}")
        for rows in grouped_by_shape(results["results"]).values():
            print(f"## {shape_title(rows[0])}")
            print("\n".join(speedup_pivot(rows, batches)))
        print()
    return 0
