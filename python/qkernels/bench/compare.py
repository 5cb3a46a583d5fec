"""qkernels-bench compare A.json B.json: how run B's times compare with run A's, row by row.

Rows are matched on (N, K, M, implementation). The ratio is time in A over time in B: above 1,
B is faster; below 1, B regressed. Regressions come first (lowest ratio first), then the rest.
Rows present in only one run are listed after the table.

    qkernels-bench compare bench/results/h100/quick.json new/quick.json [--threshold 0.05]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def row_key(row: dict) -> tuple:
    return row["n"], row["k"], row["m"], row["name"]


def compare(old: dict, new: dict, threshold: float = 0.05) -> dict:
    """{"rows": [...], "only_old": [keys], "only_new": [keys]}; each row holds both times, the
    ratio old/new and a verdict: "regression" below 1 - threshold, "faster" above
    1 + threshold, else "same"."""
    old_rows = {row_key(r): r for r in old["results"]}
    new_rows = {row_key(r): r for r in new["results"]}
    rows = []
    for key in old_rows.keys() & new_rows.keys():
        before, after = old_rows[key]["time_us"], new_rows[key]["time_us"]
        ratio = before / after
        verdict = ("regression" if ratio < 1 - threshold
                   else "faster" if ratio > 1 + threshold else "same")
        rows.append({"n": key[0], "k": key[1], "m": key[2], "name": key[3],
                     "old_us": before, "new_us": after, "ratio": ratio, "verdict": verdict})
    rows.sort(key=lambda r: (r["ratio"], r["n"], r["k"], r["m"], r["name"]))
    return {"rows": rows,
            "only_old": sorted(old_rows.keys() - new_rows.keys()),
            "only_new": sorted(new_rows.keys() - old_rows.keys())}


def render(comparison: dict, old_name: str, new_name: str):
    from rich.table import Table

    table = Table(title=f"{new_name} vs {old_name}: ratio = old time / new time "
                        "(< 1: regression)")
    for column in ("shape NxK", "M", "impl", "old (us)", "new (us)", "ratio", "verdict"):
        table.add_column(column, justify="left" if column in ("shape NxK", "impl", "verdict")
                         else "right")
    styles = {"regression": "bold red", "faster": "green", "same": None}
    for r in comparison["rows"]:
        table.add_row(f"{r['n']}x{r['k']}", str(r["m"]), r["name"], f"{r['old_us']:.1f}",
                      f"{r['new_us']:.1f}", f"{r['ratio']:.3f}", r["verdict"],
                      style=styles[r["verdict"]])
    return table


def main(argv=None):
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="qkernels-bench compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path, help="the reference run (JSON)")
    parser.add_argument("new", type=Path, help="the run to judge (JSON)")
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="relative change below which a row counts as the same (0.05)")
    args = parser.parse_args(argv)
    if not 0 <= args.threshold < 1:
        parser.error(f"--threshold: expected a fraction in [0, 1), got {args.threshold}")
    runs = []
    for path in (args.old, args.new):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            parser.error(f"{path}: expected a qkernels-bench JSON file, got {error}")
        if "results" not in runs[-1]:
            parser.error(f"{path}: expected a qkernels-bench JSON file (no 'results' key)")
    comparison = compare(*runs, threshold=args.threshold)
    console = Console()
    console.width = max(console.width, 110)
    console.print(render(comparison, args.old.name, args.new.name))
    counts = {v: sum(r["verdict"] == v for r in comparison["rows"])
              for v in ("regression", "same", "faster")}
    console.print(f"{len(comparison['rows'])} rows matched: {counts['regression']} regressions, "
                  f"{counts['same']} within {args.threshold:.0%}, {counts['faster']} faster")
    for label, keys in (("only in " + args.old.name, comparison["only_old"]),
                        ("only in " + args.new.name, comparison["only_new"])):
        if keys:
            console.print(f"{label}: " + "; ".join(f"{n}x{k} M={m} {name}"
                                                  for n, k, m, name in keys))
    return 0
