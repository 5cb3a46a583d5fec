"""Plots of a run (matplotlib, the optional extra `plot`), written next to its JSON:

- <suite>-speedup.png: speedup over F.linear against M, one panel per shape; colour = format,
  marker = backend, peers dashed.
- <suite>-roofline.png: achieved share of the roofline (bytes over the measured bandwidth,
  FLOPs over the measured matmul peak, whichever is slower) against M, F.linear included.

    qkernels-bench plot bench/results/h100/llama3-8b.json [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from . import report

FORMAT_COLOURS = {"int4": "tab:blue", "nf4": "tab:green", "int8": "tab:orange", None: "black"}
BACKEND_MARKERS = {"cuda": "o", "triton": "^", "cpu": "o", "reference": "x"}
# By the start of the peer's row label.
PEER_MARKERS = {"torch int4pack": "s", "torch int8pack": "P", "torch dynamic": "X",
                "bitsandbytes": "D", "gemlite A16W4": "v", "gemlite A16W8": "^"}
MAX_COLUMNS = 3


def _style(row: dict) -> dict:
    colour = FORMAT_COLOURS.get(row["fmt"], "grey")
    if row["kind"] == "baseline":
        return {"color": "black", "linestyle": "-", "marker": None, "linewidth": 1.2}
    if row["kind"] == "peer":
        return {"color": colour, "linestyle": "--", "linewidth": 1.2, "alpha": 0.8,
                "marker": next((marker for start, marker in PEER_MARKERS.items()
                                if row["name"].startswith(start)), "*"), "markersize": 5}
    return {"color": colour, "linestyle": "-", "linewidth": 2.0, "markersize": 5,
            "marker": BACKEND_MARKERS.get(row["backend"], "o")}


def _ratio_label(value, _position) -> str:
    return f"{value:g}x" if value >= 1 else f"1/{1 / value:g}x"


def _panels(plt, count: int):
    columns = min(MAX_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.9 * rows + 1.2),
                                squeeze=False)
    for extra in axes.flat[count:]:
        extra.set_visible(False)
    return figure, list(axes.flat[:count])


def _draw(results: dict, path: Path, metric: str, ylabel: str, title: str, log_y: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = report.grouped_by_shape(results["results"])
    figure, axes = _panels(plt, len(groups))
    handles = {}
    for axis, rows in zip(axes, groups.values()):
        batches = sorted({r["m"] for r in rows})
        for name in report.implementations(rows):
            line_rows = sorted((r for r in rows if r["name"] == name), key=lambda r: r["m"])
            if metric == "speedup" and line_rows[0]["kind"] == "baseline":
                continue  # the baseline is the line y = 1
            (handle,) = axis.plot([r["m"] for r in line_rows], [r[metric] for r in line_rows],
                                  label=name, **_style(line_rows[0]))
            handles.setdefault(name, handle)
        if metric == "speedup":
            axis.axhline(1.0, color="black", linewidth=1.0)
        axis.set_xscale("log", base=2)
        axis.set_xticks(batches, [str(m) for m in batches], fontsize=8)
        axis.minorticks_off()
        if log_y:
            axis.set_yscale("log", base=2)
            low = max(min(r[metric] for r in rows), 1 / 64)
            axis.set_ylim(bottom=low / 1.3)
            axis.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_ratio_label))
        else:
            axis.set_ylim(0, max(110, max(r[metric] for r in rows) * 1.05))
        axis.set_title(report.shape_title(rows[0]), fontsize=10)
        axis.set_xlabel("M (rows of x)", fontsize=9)
        axis.set_ylabel(ylabel, fontsize=9)
        axis.grid(True, which="major", alpha=0.3)
    meta = results["meta"]
    figure.suptitle(f"{title}\nqkernels-bench {results['suite']}: {meta['device_name']}, "
                    f"x {meta['x_dtype']}, {meta['threads']} threads", fontsize=11)
    figure.legend(list(handles.values()), list(handles), loc="lower center",
                  ncol=min(4, len(handles)), fontsize=9, frameon=False)
    legend_rows = math.ceil(len(handles) / min(4, len(handles)))
    figure.tight_layout(rect=(0, 0.035 * legend_rows + 0.02, 1, 0.93))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_run(results: dict, out: Path) -> list:
    """Both plots of a run into `out`; returns their paths. Needs matplotlib."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suite = results["suite"]
    bandwidth = results["meta"]["bandwidth_gbps"]
    return [
        _draw(results, out / f"{suite}-speedup.png", "speedup", "speedup over F.linear",
              "Speedup over F.linear (higher is better; solid: qkernels, dashed: other libraries)",
              log_y=True),
        _draw(results, out / f"{suite}-roofline.png", "roofline_pct", "% of roofline",
              f"Share of the roofline ({bandwidth:.0f} GB/s measured)", log_y=False),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="qkernels-bench plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="JSON written by qkernels-bench --out/--json")
    parser.add_argument("--out", type=Path, help="directory for the PNGs (default: the JSON's)")
    args = parser.parse_args(argv)
    results = json.loads(args.run.read_text())
    for path in plot_run(results, args.out or args.run.parent):
        print(path)
    return 0
