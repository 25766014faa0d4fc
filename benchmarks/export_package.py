"""What does shipping the early exit as a package cost?

Makes the demo run (collect, MACs, solve at 0.5x), exports it with ``dyncal export``, and
measures: the package's size, the export time, the load time of ``dyncal.load_early_exit``
(in this process, and a cold start in a fresh one), and the latency of the exported
runner against the in-process ``EarlyExitRunner`` over the model's own stages, on the same
batches, interleaved in one loop (alternating which goes first), as a ratio per batch.
Both must take the same exits and predictions on every sample.

Run: ``.venv/bin/python benchmarks/export_package.py [--device cuda] [--batch-size 1,64]``
(writes export_package.md, or results/export_package_<device>_<card>.md off the CPU). On a
machine without fvcore (needed to profile the run), make the run and package elsewhere with
``--keep DIR`` and measure them with ``--from DIR``.
"""

from __future__ import annotations

import argparse
import json
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
from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.latency import device_hardware, pinned_threads
from dyncal.analysis.package_runner import load_early_exit
from dyncal.analysis.stages import build_stages
from dyncal.artifacts.thresholds import read_thresholds, thresholds_from_json
from dyncal.calibrate.policy import assign_exits
from dyncal.calibrate.scores import exit_scores
from dyncal.data import load_dataset
from dyncal.demo import WEIGHTS
from dyncal.models import load_model, resolve_device
from dyncal.verbs.demo import DEMO_DATA, DEMO_MODEL
from dyncal.verbs.export import export_package

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


def _prepare(tmp: Path) -> float:
    """The demo run (collect, MACs, solve at 0.5x) and its package under ``tmp``; returns the export's seconds."""
    from dyncal.artifacts.atomic import atomic_write_text
    from dyncal.calibrate.solvers import solve_run
    from dyncal.verbs.collect import collect_run
    from dyncal.verbs.profile import ProfileOptions, profile_run

    run_dir = tmp / "run"
    collect_run(load_model(DEMO_MODEL, weights=WEIGHTS), load_dataset(DEMO_DATA), run_dir, data_spec=DEMO_DATA)
    profile_run(run_dir, options=ProfileOptions(latency=False))
    th = solve_run(dyncal.load_run(run_dir), "0.5x")
    atomic_write_text(tmp / "thresholds.json", json.dumps(th.to_dict()))
    t0 = time.perf_counter()
    export_package(run_dir, th, tmp / "pkg")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", default="1,64")
    ap.add_argument("--repeats", type=int, default=5, help="timings per batch and runner (median kept)")
    ap.add_argument("--limit", type=int, default=400, help="samples timed (agreement: all of them)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="make the run, thresholds.json and pkg/ here, then stop")
    ap.add_argument("--from", dest="source", type=Path, help="measure a folder made with --keep (no export here)")
    ap.add_argument("--out", type=Path, help="where to write the results (default: next to this script)")
    args = ap.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        print(f"export took {_prepare(args.keep):.1f} s; made {args.keep}")
        return
    dev = resolve_device(args.device)
    sizes = [int(b) for b in args.batch_size.split(",")]

    with tempfile.TemporaryDirectory() as d:
        tmp = args.source if args.source is not None else Path(d)
        export_s = None if args.source is not None else _prepare(tmp)
        run = dyncal.load_run(tmp / "run")
        th = read_thresholds(tmp / "thresholds.json")
        pkg = tmp / "pkg"
        size_mb = sum(p.stat().st_size for p in pkg.iterdir()) / 1e6
        sizes_kb = {p.name: p.stat().st_size / 1024 for p in sorted(pkg.iterdir())}

        loads = []
        for _ in range(5):
            t0 = time.perf_counter()
            load_early_exit(pkg, device=str(dev))
            loads.append(time.perf_counter() - t0)
        cold = subprocess.run(
            [
                sys.executable,
                "-c",
                "import time; t0 = time.perf_counter(); import torch, dyncal; t1 = time.perf_counter(); "
                f"dyncal.load_early_exit({str(pkg)!r}, device={str(dev)!r}); "
                "print(t1 - t0, time.perf_counter() - t1)",
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        import_s, cold_load_s = (float(v) for v in cold.stdout.split())

        exported = load_early_exit(pkg, device=str(dev))
        model = load_model(DEMO_MODEL, weights=WEIGHTS, device=str(dev)).module
        ds = load_dataset(DEMO_DATA)
        x_every = torch.stack([ds[int(i)][0] for i in run.indices]).to(dev)
        scores, sim_preds = exit_scores(run.logits, th.score, th.temperatures)
        sim_exits = assign_exits(scores, thresholds_from_json(list(th.thresholds)))
        sim_preds = sim_preds[np.arange(run.n), sim_exits]
        n = min(args.limit, run.n)
        x_all = x_every[:n]
        stages = build_stages(model, x_all[:2])
        inproc = EarlyExitRunner(stages, th.thresholds, th.temperatures, th.score)

        rows = []
        with pinned_threads(args.threads if dev.type == "cpu" else None) as n_threads:
            for b in sizes:
                parts = [exported(x_every[s : s + b]) for s in range(0, run.n, b)]
                e_all = torch.cat([p[0] for p in parts]).cpu().numpy()
                p_all = torch.cat([p[1] for p in parts]).cpu().numpy()
                agreement = float(np.mean((e_all == sim_exits) & (p_all == sim_preds)))
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
                rows.append(
                    (b, len(batches), float(np.mean(ms_in)), float(np.mean(ms_ex)), med, q1, q3, same, agreement)
                )

    hw = device_hardware(dev)
    lines = [
        f"# Exported early-exit package vs in-process runner (demo model, {dev.type})",
        "",
        f"Machine: {hw}, {os.cpu_count()} cores, {n_threads} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        "The machine was shared with other jobs while this ran: read the ratios, not the absolute times.",
        "",
        f"Package: {size_mb:.2f} MB in {len(sizes_kb)} files ("
        + ", ".join(f"{k} {v:.0f} KB" for k, v in sizes_kb.items())
        + (
            "; exported beforehand with `--keep`)."
            if export_s is None
            else f"); `dyncal export` took {export_s:.1f} s (stages from the graph, torch.export of each stage, "
            "saving, loading back and proving it against the model)."
        ),
        "",
        f"Load (`dyncal.load_early_exit`, hashes checked, archives checked for pickled entries): "
        f"{1e3 * float(np.median(loads)):.0f} ms warm (median of 5, this process); in a fresh process "
        f"{1e3 * cold_load_s:.0f} ms after {import_s:.1f} s of `import torch, dyncal`.",
        "",
        f"Thresholds from `dyncal solve --budget 0.5x`. Agreement: share of all {run.n} validation digits "
        "whose exported exit and prediction equal the exit rule simulated on the run's stored (CPU) logits. "
        f"Latency on the first {n}: per batch the median of {args.repeats} timings of each runner, interleaved "
        "(alternating which goes first):",
        "",
        "| batch | agreement | batches timed | in-process ms/batch | exported ms/batch "
        "| exported / in-process (median [IQR] over batches) | same exits and predictions |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for b, nb, mi, me, med, q1, q3, same, agreement in rows:
        lines.append(
            f"| {b} | {100 * agreement:.2f}% | {nb} | {mi:.3f} | {me:.3f} | {med:.2f} [{q1:.2f}, {q3:.2f}] "
            f"| {'yes' if same else 'NO'} |"
        )
    lines += [
        "",
        "Both runners are `EarlyExitRunner`: the in-process one runs the stage graphs cut from the",
        "model's export (fx modules), the package's runs the same graphs re-exported, loaded from",
        "`.pt2` and called directly with their weights (the input is checked once per call, not per",
        "stage). The cold load is mostly the first `torch.export.load` of the process.",
    ]
    text = "\n".join(lines) + "\n"
    if dev.type == "cpu":
        name = "export_package.md"
    else:
        name = f"export_package_{dev.type}_{re.sub(r'[^a-z0-9]+', '-', hw.lower()).strip('-')}.md"
    out = args.out / name if args.out is not None else HERE / ("" if dev.type == "cpu" else "results") / name
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
