"""What does telemetry add to the early exit's latency at batch 1 (goal: at most 3%, shadow off)?

Run on a quiet machine (writes telemetry_overhead.md and .json next to this file):
    PYTHONPATH=. .venv/bin/python benchmarks/telemetry_overhead.py
Smoke test (tiny settings, writes nothing): add --quick. Needs pyarrow (the rollout extra).

The demo model's early exit (:class:`dyncal.analysis.early_exit.EarlyExitRunner` over its
stages, the code path an exported package runs; thresholds solved at 0.5x on its validation
run; one thread) answers batch-1 requests drawn from the validation digits. Blocks of requests
are timed in pairs, interleaved: the runner alone, and the runner followed by
:meth:`dyncal.telemetry.TelemetryWriter.record` of the request (exit, prediction, scores at
the evaluated exits, latency; shadow off), with the writer flushing on its background thread
(the default) or inline. The overhead is the median over pairs of (with - without) / without, in wall-clock time and in
the process's CPU time (all threads, the writer's included); on a loaded machine the CPU time is
the steadier figure, and the goal is judged on it.
The writer's per-request time alone (``record`` without the model) is reported too.

A third mode times the wiring itself: :func:`dyncal.analysis.package_telemetry.observed_call`, what
``load_early_exit(DIR, telemetry=...)`` runs per call (scores kept at each exit, then ``record``).
Not measured here: Prometheus metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.latency import cpu_model, pinned_threads
from dyncal.analysis.package_telemetry import observed_call
from dyncal.analysis.stages import build_stages
from dyncal.artifacts.run import Provenance
from dyncal.artifacts.run_import import import_arrays
from dyncal.calibrate.estimator import ThresholdSolver
from dyncal.demo import pretrained, validation
from dyncal.telemetry import PackageIdentity, TelemetryWriter

HERE = Path(__file__).parent
GOAL = 0.03


def solved_runner(work: Path) -> tuple[EarlyExitRunner, PackageIdentity, torch.Tensor]:
    net = pretrained()
    ds = validation()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.inference_mode():
        z = torch.stack(list(net(x)), dim=1).numpy()
    y = np.array([int(ds[i][1]) for i in range(len(ds))])
    prov = Provenance("dyncal.demo:pretrained", None, "dyncal.demo:validation", "", "", "cpu")
    run = import_arrays(z, y, work / "run", macs=[2.0e5, 1.0e6, 4.0e6, 9.0e6], provenance=prov)
    doc = ThresholdSolver("0.5x", method="optimal").fit(run).result_
    stages = build_stages(net, x[:2])
    runner = EarlyExitRunner(stages, list(doc.thresholds), list(doc.temperatures), doc.score)
    return runner, PackageIdentity.from_thresholds(doc, manifest_sha256="0" * 64), x


def time_block(fn, n: int) -> tuple[float, float]:
    """Seconds per call of ``fn``: wall clock and this process's CPU time (all its threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, write nothing (smoke test)")
    ap.add_argument("--pairs", type=int, default=40, help="interleaved pairs of blocks")
    ap.add_argument("--block", type=int, default=200, help="requests per block")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.block = 3, 20
    load_before = os.getloadavg()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, pinned_threads(1):
        work = Path(tmp)
        runner, ident, x = solved_runner(work)
        k = runner.k
        requests = [x[i : i + 1] for i in range(x.shape[0])]
        nan_scores = np.full((1, k), np.nan, dtype=np.float32)
        modes = (("background", True, False), ("inline", False, False), ("runner wiring", True, True))
        for mode, background, wired in modes:
            writer = TelemetryWriter(work / f"tele-{mode}", ident, shadow=0.0, background=background)

            def bare(i: int) -> None:
                runner(requests[i % len(requests)])

            def with_telemetry(i: int, writer: TelemetryWriter = writer, wired: bool = wired) -> None:
                if wired:  # what load_early_exit(telemetry=...) runs: scores kept at each exit, then record()
                    observed_call(runner, writer, requests[i % len(requests)])
                    return
                t0 = time.perf_counter()
                exits, preds = runner(requests[i % len(requests)])
                ms = (time.perf_counter() - t0) * 1e3
                scores = nan_scores.copy()
                scores[0, : int(exits[0]) + 1] = 0.9  # the runner hands over its scores at the evaluated exits
                writer.record(exits, preds, scores, ms)

            def record_only(i: int, writer: TelemetryWriter = writer) -> None:
                writer.record(np.zeros(1, np.int64), np.zeros(1, np.int64), nan_scores, 1.0)

            for _ in range(2):  # warm up both
                time_block(bare, args.block)
                time_block(with_telemetry, args.block)
            ratios, cpu_ratios, bare_ms, tele_ms, bare_cpu, tele_cpu = [], [], [], [], [], []
            for p in range(args.pairs):
                first, second = (bare, with_telemetry) if p % 2 == 0 else (with_telemetry, bare)
                a, b = time_block(first, args.block), time_block(second, args.block)
                without, with_ = (a, b) if p % 2 == 0 else (b, a)
                ratios.append((with_[0] - without[0]) / without[0])
                cpu_ratios.append((with_[1] - without[1]) / without[1])
                bare_ms.append(without[0] * 1e3)
                tele_ms.append(with_[0] * 1e3)
                bare_cpu.append(without[1] * 1e3)
                tele_cpu.append(with_[1] * 1e3)
            record_us = [time_block(record_only, 2048)[1] * 1e6 for _ in range(5)]  # two flushes a block
            writer.close()
            rows = sum(1 for _ in (work / f"tele-{mode}").iterdir())
            results[mode] = {
                "overhead_median": float(np.median(ratios)),
                "overhead_q25": float(np.quantile(ratios, 0.25)),
                "overhead_q75": float(np.quantile(ratios, 0.75)),
                "cpu_overhead_median": float(np.median(cpu_ratios)),
                "cpu_overhead_q25": float(np.quantile(cpu_ratios, 0.25)),
                "cpu_overhead_q75": float(np.quantile(cpu_ratios, 0.75)),
                "early_exit_ms": float(np.median(bare_ms)),
                "with_telemetry_ms": float(np.median(tele_ms)),
                "early_exit_cpu_ms": float(np.median(bare_cpu)),
                "with_telemetry_cpu_ms": float(np.median(tele_cpu)),
                "record_us": float(np.median(record_us)),
                "files": rows,
            }
    doc = {
        "machine": {"cpu": cpu_model(), "python": platform.python_version(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "pairs": args.pairs,
        "block": args.block,
        "goal": GOAL,
        "results": results,
    }
    lines = [
        "# Telemetry overhead at batch 1 (shadow off)",
        "",
        f"{doc['date']}, {doc['machine']['cpu']}, one thread, torch {torch.__version__}; load before "
        f"{load_before[0]:.2f}, after {doc['load_after'][0]:.2f}. {args.pairs} interleaved pairs of "
        f"{args.block} requests (demo model, early exit solved at 0.5x). Goal: at most {GOAL:.0%} of the early "
        "exit's latency.",
        "",
        "| writer flushes | early exit ms (wall / CPU) | with telemetry ms (wall / CPU) | overhead, wall (median, IQR) "
        "| overhead, CPU time (median, IQR) | record() alone, CPU µs | goal met (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        lines.append(
            f"| {mode} | {r['early_exit_ms']:.3f} / {r['early_exit_cpu_ms']:.3f} | {r['with_telemetry_ms']:.3f} / "
            f"{r['with_telemetry_cpu_ms']:.3f} | {r['overhead_median']:+.2%} ({r['overhead_q25']:+.2%} to "
            f"{r['overhead_q75']:+.2%}) | {r['cpu_overhead_median']:+.2%} ({r['cpu_overhead_q25']:+.2%} to "
            f"{r['cpu_overhead_q75']:+.2%}) | {r['record_us']:.1f} | {'yes' if r['cpu_overhead_median'] <= GOAL else 'no'} |"
        )
    lines += [
        "",
        "The writer's own work per request, `record()` alone over a few thousand requests (its share of",
        "the flushes included), against the early exit's CPU time per request:",
        "",
    ]
    for mode, r in results.items():
        share = r["record_us"] / (r["early_exit_cpu_ms"] * 1e3)
        lines.append(f"- {mode}: {r['record_us']:.1f} µs = {share:.1%} of {r['early_exit_cpu_ms'] * 1e3:.0f} µs")
    lines += [
        "",
        "Where the end-to-end figure is far above the writer's own share, the early exit itself ran slower",
        "between telemetry calls (its weights and activations evicted from the core's caches on a machine",
        "shared with other processes); a quiet machine is needed to tell that from the writer's cost.",
        "`runner wiring` is what `load_early_exit(DIR, telemetry=...)` runs per call",
        "(`dyncal.analysis.package_telemetry.observed_call`: the early exit keeping each exit's scores,",
        "the answer moved to the host, then `record()`), against the plain runner. Not measured: Prometheus metrics.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        (HERE / "telemetry_overhead.md").write_text(text)
        (HERE / "telemetry_overhead.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
