"""How long verify's per-request summaries take: every statistic, interval and exit group, at 3000 and 20000 requests.

Synthetic timings shaped like verify's at batch 1: 4 exits (shares 50/25/15/10 %), 5 pairs
per request, a stratified sample weighted to a population (the slow path: weighted
percentiles). Timed: ``RequestTimings.summaries()`` (both sides, both views, overall and per
exit, 95% bootstrap intervals) and ``percentile(99)`` with its three intervals (what a tail
criterion reads), each on a fresh object (no cache).

``--base-src DIR`` also times another copy of the package (e.g. the tree before this
change: ``git archive <commit> dyncal | tar -x -C DIR``) in a subprocess, for a before/after.

    PYTHONPATH=. .venv/bin/python benchmarks/request_summary_speed.py [--base-src DIR] [--sizes 3000 20000]

Writes request_summary_speed.md next to this file (with the machine and its load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent


def _timings(n: int, repeats: int = 5, seed: int = 0) -> Any:
    from dyncal.artifacts.requests import RequestTimings

    rng = np.random.default_rng(seed)
    exits = rng.choice(4, n, p=[0.5, 0.25, 0.15, 0.1])
    base = 0.2 + 0.3 * exits
    ee = base[:, None] * (1 + 0.05 * rng.standard_exponential((n, repeats)))
    pl = 1.0 + 0.05 * rng.standard_exponential((n, repeats))
    population = np.bincount(exits, minlength=4) * 2
    population[0] *= 2  # exit 1 undersampled: the overall figures are weighted
    return RequestTimings(
        "cpu/b1", 1, np.arange(n), exits, ee, pl, n_exits=4, population=population, n_available=int(population.sum())
    )


def measure(sizes: list[int]) -> list[dict[str, Any]]:
    """Seconds of summaries() and percentile(99) per size, on this interpreter's dyncal."""
    out = []
    for n in sizes:
        t = _timings(n)
        start = time.perf_counter()
        summaries = t.summaries()
        summaries_s = time.perf_counter() - start
        t = _timings(n)
        start = time.perf_counter()
        p99 = t.percentile(99, "ratio")
        percentile_s = time.perf_counter() - start
        overall = next(s for s in summaries if s.exit is None and s.view == "fastest" and s.side == "early_exit")
        out.append(
            {
                "requests": n,
                "summaries": len(summaries),
                "draws": int(getattr(t, "bootstrap_draws", 2000)),
                "summaries_s": summaries_s,
                "percentile_s": percentile_s,
                "p99_ms": overall.values["p99"],
                "p99_ms_ci": list(overall.intervals["p99"]),
                "p99_ratio": p99.value,
            }
        )
    return out


def _table(label: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"### {label}",
        "",
        "| requests | summaries | bootstrap draws | summaries() s | percentile(99) s | p99 ms [95% CI] | p99 ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["p99_ms_ci"]
        lines.append(
            f"| {r['requests']} | {r['summaries']} | {r['draws']} | {r['summaries_s']:.2f} | {r['percentile_s']:.2f} "
            f"| {r['p99_ms']:.4f} [{lo:.4f}, {hi:.4f}] | {r['p99_ratio']:.4f} |"
        )
    return [*lines, ""]


def main() -> None:
    """Time both trees and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000, 20000])
    parser.add_argument("--base-src", type=Path, help="another copy of the package to time first (before)")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON and write nothing")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.sizes)))
        return
    load = os.getloadavg()
    sections = []
    if args.base_src is not None:
        env = {**os.environ, "PYTHONPATH": str(args.base_src.resolve())}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--json", "--sizes", *map(str, args.sizes)]
        done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        sections += _table(f"before ({args.base_src})", json.loads(done.stdout.splitlines()[-1]))
    sections += _table("after (this tree)", measure(args.sizes))
    text = [
        "# Per-request summaries: time to summarise verify's timings",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores ({platform.processor() or 'cpu'}), numpy {np.__version__}, "
        f"Python {platform.python_version()}; load average before {load[0]:.2f} (a shared machine); "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Synthetic batch-1 timings: 4 exits, 5 pairs per request, stratified and weighted (the slow path).",
        "",
        *sections,
    ]
    (HERE / "request_summary_speed.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
