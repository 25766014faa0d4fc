"""Does the cost table predict a real early exit? Predicted vs measured at batch 1, 8 and 32.

Run on a quiet machine (writes early_exit_latency.md and .json next to this file):
    PYTHONPATH=. .venv/bin/python benchmarks/early_exit_latency.py
Smoke test (tiny settings, writes nothing): add --quick.

For the demo model and a CPU-heavy 5-exit CNN (``bench_models:cpu_heavy``): collect,
profile at batch 1 and 32 (one thread), solve at 0.5x, then ``dyncal verify`` at batch
1, 8 and 32 (one thread, as profiled): the real early exit and the plain model timed in
pairs on the same batches, beside the prediction
(:func:`dyncal.analysis.costmodel.predict_batches_ms`) for the same batches. Targets:
predicted within 15% of measured at batch 1 and within 25% at batch 32.
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

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from bench_models import prepare_pipeline  # noqa: E402

from dyncal.analysis.latency import cpu_model  # noqa: E402
from dyncal.verbs.verify import verify_run  # noqa: E402

TARGETS = {1: 0.15, 32: 0.25}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, write nothing (smoke test)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7, help="pairs per batch in verify")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="verify's time bound per model")
    ap.add_argument("--models", default="demo,cpu_heavy")
    args = ap.parse_args()
    if args.quick:
        os.environ.setdefault("DYNCAL_BENCH_N", "64")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            run_dir, thresholds = prepare_pipeline(
                name, work, threads=args.threads, profile_repeats=3 if args.quick else 25
            )
            result = verify_run(
                run_dir,
                thresholds,  # type: ignore[arg-type]
                batch_sizes=(1, 8, 32),
                threads=args.threads,
                repeats=3 if args.quick else args.repeats,
                max_seconds=2.0 if args.quick else args.max_seconds,
                limit=64 if args.quick else None,
            )
            cov = result.settings["coverage"]
            for t in result.timings:
                ratio = t.measured_over_predicted
                target = TARGETS.get(t.batch_size)
                rows.append(
                    {
                        "model": name,
                        "key": t.key,
                        "batch_size": t.batch_size,
                        "measured_ms": t.measured_ms,
                        "predicted_ms": t.predicted_ms,
                        "measured_over_predicted": ratio,
                        "target": target,
                        "within_target": None if target is None or ratio is None else abs(1 - 1 / ratio) <= target,
                        "full_model_ms": t.full_model_ms_median,
                        "speedup": t.speedup,
                        "speedup_ci": list(t.speedup_ci),
                        "timing_spread": t.timing_spread,
                        "batches_timed": t.batches,
                        "batches": cov[t.key]["batches"],
                        "agreement": result.agreement,
                        "n": result.n,
                    }
                )
    machine = (
        f"{cpu_model()}, {os.cpu_count()} cores, {args.threads} torch thread(s), torch {torch.__version__}, "
        f"Python {platform.python_version()}; load average before {load_before[0]:.2f}, after "
        f"{os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    lines = [
        "# Real early exit vs the cost table's prediction (CPU)",
        "",
        f"Machine: {machine}.",
        "",
        "Thresholds from `solve --budget 0.5x`; profile at batch 1 and 32; verify pairs each batch's",
        f"early exit with the plain model ({args.repeats} pairs, alternating order, each member run once",
        "untimed right before it is timed), rows shuffled; time bound per model as in `batches timed`.",
        "Prediction error = |predicted / measured - 1|; targets 15% at batch 1, 25% at batch 32.",
        "",
        "| model | batch | measured ms/batch | predicted | measured/predicted | target | plain model | speed-up [95%] | spread | batches timed |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        pred = "-" if r["predicted_ms"] is None else f"{r['predicted_ms']:.3f}"
        ratio = "-" if r["measured_over_predicted"] is None else f"{r['measured_over_predicted']:.2f}"
        target = (
            "-" if r["target"] is None else f"{100 * r['target']:.0f}%: {'met' if r['within_target'] else 'NOT met'}"
        )
        lo, hi = r["speedup_ci"]
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['measured_ms']:.3f} | {pred} | {ratio} | {target} | "
            f"{r['full_model_ms']:.3f} | {r['speedup']:.2f}x [{lo:.2f}, {hi:.2f}] | {100 * r['timing_spread']:.0f}% | "
            f"{r['batches_timed']} of {r['batches']} |"
        )
    lines += [
        "",
        "Measured: mean over batches of each batch's median early-exit time. Predicted: each stage",
        "on the rows that reach it, from the exit paths profile measures on the real runner (at the",
        "profiled batch sizes and at 2, 4, 8, 16 rows), plus the measured batch compaction at each",
        "exit where a batch splits. Agreement of runtime exits and predictions with the simulation: "
        + ", ".join(sorted({f"{r['model']} {100 * r['agreement']:.2f}% of {r['n']}" for r in rows}))
        + ".",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        (HERE / "early_exit_latency.md").write_text(text)
        (HERE / "early_exit_latency.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
