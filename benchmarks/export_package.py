"""What does shipping the early exit as a package cost?

Makes the demo run (collect, MACs, solve at 0.5x), exports it with ``dyncal export``, and
measures: the package's size, the export time, the load time of ``dyncal.load_early_exit``
(in this process, and a cold start in a fresh one), and the latency of the exported
runner against the in-process ``EarlyExitRunner`` over the model's own stages, on the same
batches, interleaved in one loop (alternating which goes first), as a ratio per batch.
Both must take the same exits and predictions on every sample.

Run: ``.venv/bin/python benchmarks/export_package.py [--device cuda] [--batch-size 1,64]``
(writes export_package.md, or results/export_package_<device>_<card>.md off the CPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import dyncal
from dyncal.analysis.latency import device_hardware, pinned_threads
from dyncal.analysis.stages import build_stages
from dyncal.calibrate.solvers import solve_run
from dyncal.collect import collect_run
from dyncal.data import load_dataset
from dyncal.demo import WEIGHTS
from dyncal.demo_pipeline import DEMO_DATA, DEMO_MODEL
from dyncal.export import export_package, load_early_exit
from dyncal.models import load_model, resolve_device
from dyncal.profile import ProfileOptions, profile_run
from dyncal.runtime import EarlyExitRunner

HERE = Path(__file__).parent


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, x: torch.Tensor, dev: torch.device) -> float:
    _sync(dev)
    t0 = time.perf_counter()
    fn(x)
    _sync(dev)
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", default="1,64")
    ap.add_argument("--repeats", type=int, default=5, help="timings per batch and runner (median kept)")
    ap.add_argument("--limit", type=int, default=400, help="samples replayed")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    sizes = [int(b) for b in args.batch_size.split(",")]

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        run_dir = tmp / "run"
        collect_run(load_model(DEMO_MODEL, weights=WEIGHTS), load_dataset(DEMO_DATA), run_dir, data_spec=DEMO_DATA)
        profile_run(run_dir, options=ProfileOptions(latency=False))
        run = dyncal.load_run(run_dir)
        th = solve_run(run, "0.5x")
        t0 = time.perf_counter()
        result = export_package(run_dir, th, tmp / "pkg")
        export_s = time.perf_counter() - t0
        sizes_kb = {p.name: p.stat().st_size / 1024 for p in sorted((tmp / "pkg").iterdir())}

        loads = []
        for _ in range(5):
            t0 = time.perf_counter()
            load_early_exit(tmp / "pkg", device=str(dev))
            loads.append(time.perf_counter() - t0)
        cold = subprocess.run(
            [
                sys.executable,
                "-c",
                "import time; t0 = time.perf_counter(); import torch, dyncal; t1 = time.perf_counter(); "
                f"dyncal.load_early_exit({str(tmp / 'pkg')!r}, device={str(dev)!r}); "
                "print(t1 - t0, time.perf_counter() - t1)",
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        import_s, cold_load_s = (float(v) for v in cold.stdout.split())

        exported = load_early_exit(tmp / "pkg", device=str(dev))
        model = load_model(DEMO_MODEL, weights=WEIGHTS, device=str(dev)).module
        ds = load_dataset(DEMO_DATA)
        n = min(args.limit, run.n)
        x_all = torch.stack([ds[int(i)][0] for i in run.indices[:n]]).to(dev)
        stages = build_stages(model, x_all[:2])
        inproc = EarlyExitRunner(stages, th.thresholds, th.temperatures, th.score)

        rows = []
        with pinned_threads(args.threads if dev.type == "cpu" else None) as n_threads:
            for b in sizes:
                batches = [x_all[s : s + b] for s in range(0, n, b)]
                for fn in (inproc, exported):  # warm-up
                    fn(batches[0])
                ratios, ms_in, ms_ex, same = [], [], [], True
                for i, xb in enumerate(batches):
                    a, e = [], []
                    for r in range(args.repeats):
                        first_inproc = (i + r) % 2 == 0
                        for which in (0, 1) if first_inproc else (1, 0):
                            (a if which == 0 else e).append(_timed(inproc if which == 0 else exported, xb, dev))
                    ms_in.append(float(np.median(a)))
                    ms_ex.append(float(np.median(e)))
                    ratios.append(ms_ex[-1] / ms_in[-1])
                    ea, pa = inproc(xb)
                    eb, pb = exported(xb)
                    same &= bool(torch.equal(ea, eb) and torch.equal(pa, pb))
                q1, med, q3 = np.percentile(ratios, [25, 50, 75])
                rows.append((b, len(batches), float(np.mean(ms_in)), float(np.mean(ms_ex)), med, q1, q3, same))

    hw = device_hardware(dev)
    lines = [
        f"# Exported early-exit package vs in-process runner (demo model, {dev.type})",
        "",
        f"Machine: {hw}, {os.cpu_count()} cores, {n_threads} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        "The machine was shared with other jobs while this ran: read the ratios, not the absolute times.",
        "",
        f"Package: {result.size_bytes / 1e6:.2f} MB in {len(sizes_kb)} files ("
        + ", ".join(f"{k} {v:.0f} KB" for k, v in sizes_kb.items())
        + f"); `dyncal export` took {export_s:.1f} s (stages from the graph, torch.export of each stage, "
        "saving, loading back and proving it against the model).",
        "",
        f"Load (`dyncal.load_early_exit`, hashes checked, archives checked for pickled entries): "
        f"{1e3 * float(np.median(loads)):.0f} ms warm (median of 5, this process); in a fresh process "
        f"{1e3 * cold_load_s:.0f} ms after {import_s:.1f} s of `import torch, dyncal`.",
        "",
        f"Latency on {n} validation digits, thresholds from `dyncal solve --budget 0.5x`; per batch the "
        f"median of {args.repeats} timings of each runner, interleaved (alternating which goes first):",
        "",
        "| batch | batches | in-process ms/batch | exported ms/batch | exported / in-process (median [IQR] over batches) "
        "| same exits and predictions |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for b, nb, mi, me, med, q1, q3, same in rows:
        lines.append(
            f"| {b} | {nb} | {mi:.3f} | {me:.3f} | {med:.2f} [{q1:.2f}, {q3:.2f}] | {'yes' if same else 'NO'} |"
        )
    lines += [
        "",
        "Both runners are `EarlyExitRunner`: the in-process one runs the stage graphs cut from the",
        "model's export, the package's runs the same graphs re-exported and loaded from `.pt2`",
        "(`ExportedProgram.module()`, which also checks its input shapes on every call).",
    ]
    text = "\n".join(lines) + "\n"
    if dev.type == "cpu":
        out = HERE / "export_package.md"
    else:
        card = re.sub(r"[^a-z0-9]+", "-", hw.lower()).strip("-")
        out = HERE / "results" / f"export_package_{dev.type}_{card}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
