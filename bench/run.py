"""Run siov's benchmarks: ``python bench/run.py [NAME ...] [--json]``.

Each figure is a ratio (or a rate) against a baseline measured in the same run, so a noisy
shared machine moves both sides together. Without names every figure runs. The table shows
each figure with its baseline, target and whether it is met; ``--json`` prints one JSON object
per figure with the keys name, value, unit, baseline, target and ok.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODULES = [
    "bench.core_figures",
    "bench.iommu_figures",
    "bench.nested_figures",
    "bench.accel_figures",
    "bench.sva_figures",
    "bench.guest_figures",
    "bench.hostile_figures",
    "bench.host_figures",
]


def collect() -> dict[str, Callable[[], dict[str, Any]]]:
    figures: dict[str, Callable[[], dict[str, Any]]] = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        figures.update(module.FIGURES)
    return figures


def table(results: list[dict[str, Any]]) -> str:
    rows = [("figure", "value", "unit", "baseline", "target", "ok")]
    for r in results:
        ok = {True: "yes", False: "NO", None: "-"}[r["ok"]]
        rows.append(
            (
                r["name"],
                f"{r['value']:.4g}",
                r["unit"],
                f"{r['baseline']:.4g}" if r["baseline"] is not None else "-",
                r["target"] or "-",
                ok,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    notes = [f"  {r['name']}: {r['note']}" for r in results if r.get("note")]
    return "\n".join(lines + (["", *notes] if notes else []))


def main(argv: list[str] | None = None) -> int:
    figures = collect()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("names", nargs="*", metavar="NAME", help=f"figures to run: {', '.join(figures)}")
    p.add_argument("--json", action="store_true", help="one JSON object per figure")
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(figures))
        return 0
    unknown = [n for n in args.names if n not in figures]
    if unknown:
        p.error(f"unknown figure(s): {', '.join(unknown)}")
    results = []
    for name in args.names or list(figures):
        result = figures[name]()
        results.append(result)
        if args.json:
            print(
                json.dumps(
                    {k: result[k] for k in ("name", "value", "unit", "baseline", "target", "ok")}
                ),
                flush=True,
            )
    if not args.json:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
