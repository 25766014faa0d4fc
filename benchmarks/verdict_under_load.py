"""Does load on the machine change the verdict? ``dyncal verify`` quiet and beside two busy processes.

Run on a quiet machine (writes verdict_under_load.md and .json next to this file):
    PYTHONPATH=. .venv/bin/python benchmarks/verdict_under_load.py
Smoke test (tiny settings, writes nothing): add --quick. Every run's raw pairs go to
verdict_under_load_pairs.npz (``benchmarks/estimator_replay.py`` replays estimators on them). On a many-core machine add
--cpus 0,1 to pin this process and the busy ones to two cores (a shared 2-core box).

For the demo model and a CPU-heavy 5-exit CNN (``bench_models:cpu_heavy``): collect,
profile and solve once, then verify at batch 1 and 32 (one thread) on the quiet machine
and again while two busy processes (``while True: pass``, bounded in time, always killed)
compete for the cores, on the same samples (a generous time bound times every batch in
both runs, so the comparison is of timing, not of which batches were timed), ``--runs``
times each, quiet and loaded interleaved (quiet, loaded, quiet, ...: other users of a
shared machine then load both alike), the load average read at the start and end of each.
verify times the early exit and the plain model in pairs on the same batches, adding
rounds of pairs while the speed-up is not settled (``dyncal/pair_rounds.py``; the pairs
each batch got and why it stopped are in the table), so load should hit both alike: the
goal is a loaded speed-up within x1.1 of the quiet one in every run and never the
opposite verdict. Each speed-up is judged against the required one by the report's rule
(``dyncal.reports.decision.criterion_status``): PASS when the interval with timing and
sampling noise clears it, FAIL when timing noise cannot rescue it, else INCONCLUSIVE.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from bench_models import prepare_pipeline  # noqa: E402

from dyncal.analysis.latency import cpu_model  # noqa: E402
from dyncal.artifacts.verify import PairedTiming  # noqa: E402
from dyncal.reports.decision import criterion_status  # noqa: E402
from dyncal.verbs.verify import verify_run  # noqa: E402

_BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def verdict(t: PairedTiming, required: float) -> str:
    """The report's rule (:func:`dyncal.reports.decision.criterion_status`) on a measured speed-up."""
    status = criterion_status(
        t.speedup, t.speedup_ci, required, ">=", sampling=t.speedup_ci_sampling, timing=t.speedup_ci_timing
    )
    return status.upper()


@contextlib.contextmanager
def busy(n: int, seconds: float) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` processes spinning a core each; they stop by themselves after ``seconds`` and are killed on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", _BUSY.format(seconds=seconds)]) for _ in range(n)]
    try:
        time.sleep(0.5)  # let them get going
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _row(t: PairedTiming, required: float, pairs: dict[str, object], load: list[float]) -> dict[str, object]:
    return {
        "estimator": t.estimate.estimator,
        "estimator_why": t.estimate.description,
        "pairs": pairs,
        "load_average": load,
        "speedup": t.speedup,
        "speedup_ci": list(t.speedup_ci),
        "speedup_ci_timing": list(t.speedup_ci_timing),
        "speedup_ci_sampling": list(t.speedup_ci_sampling),
        "measured_ms": t.measured_ms,
        "full_model_ms": t.full_model_ms_median,
        "timing_spread": t.timing_spread,
        "batches": t.batches,
        "verdict": verdict(t, required),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, write nothing (smoke test)")
    ap.add_argument("--min-speedup", type=float, default=2.0, help="the required speed-up")
    ap.add_argument("--repeats", type=int, default=7, help="pairs per batch")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="verify's time bound per run")
    ap.add_argument("--limit", type=int, default=400, help="samples replayed (all timed, quiet and loaded alike)")
    ap.add_argument("--busy", type=int, default=2, help="busy background processes")
    ap.add_argument("--cpus", default=None, help="pin to these cores, e.g. 0,1")
    ap.add_argument("--models", default="demo,cpu_heavy")
    ap.add_argument("--raw", default=None, help="folder to save every run's raw pairs in (npz)")
    ap.add_argument("--runs", type=int, default=3, help="quiet/loaded pairs of runs per model, interleaved")
    args = ap.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})  # busy processes inherit it
    if args.quick:
        os.environ.setdefault("DYNCAL_BENCH_N", "64")
    repeats = 3 if args.quick else args.repeats
    max_seconds = 2.0 if args.quick else args.max_seconds
    limit = 64 if args.quick else args.limit
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    raw_pairs: dict[str, np.ndarray] = {}
    run_no = [0]
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            run_dir, thresholds = prepare_pipeline(name, work, threads=1, profile_repeats=3 if args.quick else 25)

            def measure(
                label: str, run_dir: str = run_dir, thresholds: object = thresholds, name: str = name
            ) -> dict[str, tuple[PairedTiming, ...]]:
                load = [round(os.getloadavg()[0], 2)]
                result = verify_run(
                    run_dir,
                    thresholds,  # type: ignore[arg-type]
                    batch_sizes=(1, 32),
                    threads=1,
                    repeats=repeats,
                    max_seconds=max_seconds,
                    limit=limit,
                )
                load.append(round(os.getloadavg()[0], 2))
                if args.raw:  # every pair, for reading other estimators on the same timings
                    for t in result.timings:
                        tag = f"{name}_{label}_{t.key.replace('/', '_')}_{int(time.time() * 1e3)}"
                        np.savez_compressed(
                            Path(args.raw) / f"{tag}.npz",
                            ee=np.asarray(t.early_exit_ms),
                            pl=np.asarray(t.full_model_ms),
                        )
                for t in result.timings:  # every pair, for benchmarks/estimator_replay.py
                    base = f"rerun/{name}/{label}/{t.key.replace('/', '_')}/{run_no[0]}"
                    raw_pairs[f"{base}/ee"] = np.asarray(t.early_exit_ms, dtype=np.float32)
                    raw_pairs[f"{base}/pl"] = np.asarray(t.full_model_ms, dtype=np.float32)
                    raw_pairs[f"{base}/load"] = np.asarray(load, dtype=np.float32)
                cov = result.settings["coverage"]
                return {t.key: (t, cov[t.key]["pairs"], load) for t in result.timings}  # type: ignore[misc]

            for run in range(1, args.runs + 1):
                run_no[0] = run
                quiet = measure("quiet")
                with busy(args.busy, seconds=10 * max_seconds + 120):
                    loaded = measure("loaded")
                for key, (q, q_pairs, q_load) in quiet.items():
                    lt, l_pairs, l_load = loaded[key]
                    lq = _row(q, args.min_speedup, q_pairs, q_load)  # type: ignore[arg-type]
                    ll = _row(lt, args.min_speedup, l_pairs, l_load)  # type: ignore[arg-type]
                    opposite = {lq["verdict"], ll["verdict"]} == {"PASS", "FAIL"}
                    rows.append(
                        {
                            "model": name,
                            "key": key,
                            "run": run,
                            "required": args.min_speedup,
                            "quiet": lq,
                            "loaded": ll,
                            "loaded_over_quiet": lt.speedup / q.speedup,  # type: ignore[attr-defined]
                            "opposite_verdict": opposite,
                        }
                    )
                    print(json.dumps({k: v for k, v in rows[-1].items()}, default=str)[:600], flush=True)
    machine = (
        f"{cpu_model()}, {os.cpu_count()} cores (shared with other users)"
        + (f" (pinned to {args.cpus})" if args.cpus else "")
        + f", 1 torch thread, torch {torch.__version__}, Python {platform.python_version()}; load average before "
        f"{load_before[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.perf_counter() - t0:.0f} s"
    )

    def fmt(r: dict[str, object]) -> str:
        lo, hi = r["speedup_ci"]  # type: ignore[misc]
        return f"{r['speedup']:.2f}x [{lo:.2f}, {hi:.2f}]"

    lines = [
        "# The verdict under load: verify quiet and beside busy processes",
        "",
        f"Machine: {machine}.",
        "",
        f"verify of the first {limit} samples at batch 1 and 32, {repeats} pairs per batch to start with, more in "
        f"rounds of {repeats} while the speed-up's timing interval is wider than ±2.5% or `auto` expects too few "
        f"undisturbed runs for the minimum (at most {6 * repeats}; time bound "
        f"{max_seconds:g} s per run, so that quiet and loaded time the same batches); {args.runs} runs per model, "
        "quiet and loaded interleaved (quiet, loaded, quiet, ...); load average (1 min) at the start / end of each "
        "run; loaded = "
        f"{args.busy} busy processes (`while True: pass`) running throughout. Required speed-up "
        f"{args.min_speedup:g}x; verdict by the report's rule (PASS when the 95% interval with timing and "
        "sampling noise clears it, FAIL when timing noise cannot rescue it, else INCONCLUSIVE). Goal: "
        "loaded/quiet within x1.1, never the opposite verdict.",
        "",
        "| model | latency | run | quiet speed-up [95%] | loaded speed-up [95%] | loaded/quiet | quiet verdict | "
        "loaded verdict | estimator quiet / loaded | pairs per batch quiet / loaded (stopped) | "
        "load avg quiet / loaded |",
        "|---|---|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in rows:
        q, lo = r["quiet"], r["loaded"]
        ratio = r["loaded_over_quiet"]
        flag = "" if abs(ratio - 1) <= 0.1 else " (outside x1.1)"
        verdicts = f"{q['verdict']} | {lo['verdict']}" + (" (OPPOSITE)" if r["opposite_verdict"] else "")
        qp, lp = q["pairs"], lo["pairs"]
        lines.append(
            f"| {r['model']} | {r['key']} | {r['run']} | {fmt(q)} | {fmt(lo)} | {ratio:.3f}{flag} | {verdicts} | "
            f"{q['estimator']} / {lo['estimator']} | {qp['pairs_per_batch']} ({qp['stopped']}) / "
            f"{lp['pairs_per_batch']} ({lp['stopped']}) | "
            f"{q['load_average'][0]:.2f}-{q['load_average'][1]:.2f} / {lo['load_average'][0]:.2f}-"
            f"{lo['load_average'][1]:.2f} |"
        )
    worst = max(rows, key=lambda r: abs(r["loaded_over_quiet"] - 1))
    within = sum(abs(r["loaded_over_quiet"] - 1) <= 0.1 for r in rows)
    lines += [
        "",
        f"{within} of {len(rows)} cases within x1.1; furthest loaded/quiet x{worst['loaded_over_quiet']:.3f} "
        f"({worst['model']} {worst['key']} run {worst['run']}); opposite verdicts: "
        f"{sum(bool(r['opposite_verdict']) for r in rows)}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        (HERE / "verdict_under_load.md").write_text(text)
        (HERE / "verdict_under_load.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        np.savez_compressed(HERE / "verdict_under_load_pairs.npz", **raw_pairs)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
