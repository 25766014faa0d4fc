"""Latency as requests feel it: dyncal verify's per-request percentiles against a loop written here.

Run (writes latency_distribution.md and .json next to this file):
    PYTHONPATH=. .venv/bin/python benchmarks/latency_distribution.py
Smoke test (tiny settings, writes nothing): add --quick.

For the demo model and the CPU-heavy 5-exit CNN (``bench_models:cpu_heavy``): collect,
profile and solve (0.5x), then

* ``dyncal verify`` at batch 1, one thread, every one of the first ``--limit`` rows timed
  (``--repeats`` pairs each): its per-request view (``RequestTimings``) gives p50 / p99 of
  the early exit and of the plain deployment, fastest of the pairs per request;
* an independent loop written here, on the same rows: the early exit by hand (each model's
  blocks and heads called in turn, softmax max-probability over the temperature against
  the threshold, stop at the first confident exit) and the plain model by hand (backbone +
  last head, modules called directly), each returning its prediction, each request timed
  ``--repeats`` times with ``time.perf_counter`` alternating them, the fastest kept,
  percentiles by numpy; dyncal's own runners (exported stages) in the same loop;
* for reference, the model with every head (what verify timed as the plain model before
  issue 21), and verify under ``--runtime frozen`` (the tuned baseline).

The goal: dyncal's percentiles within the run-to-run noise of the loop's, its plain
deployment as fast as the hand-built one (ratio near 1), and the same exits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from bench_models import PIPELINES, prepare_pipeline  # noqa: E402

from dyncal.analysis.latency import cpu_model  # noqa: E402
from dyncal.artifacts.run import load_run  # noqa: E402
from dyncal.data import load_dataset  # noqa: E402
from dyncal.verbs.verify import verify_run  # noqa: E402

PCTS = (50, 90, 99)


def blocks_and_heads(model: torch.nn.Module) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], Callable]]:
    """``(block, head)`` per exit, written from each benchmark model's own code."""
    if hasattr(model, "stage1"):  # DigitsExitNet
        return [(getattr(model, f"stage{i}"), getattr(model, f"head{i}")) for i in range(1, 5)]
    return [(s, lambda f, h=h: h(f.mean(dim=(2, 3)))) for s, h in zip(model.stages, model.heads, strict=True)]


def hand_early_exit(parts: list, thresholds: list[float | None], temps: list[float]) -> Callable:
    """The early exit by hand: blocks in turn, leave at the first exit whose max-probability clears its threshold."""

    def run(x: torch.Tensor) -> tuple[int, torch.Tensor]:
        f = x
        for k, (block, head) in enumerate(parts):
            f = block(f)
            logits = head(f)
            t = thresholds[k] if k < len(thresholds) else None
            if t is None or float(torch.softmax(logits / temps[k], dim=1).max()) >= t:
                return k, logits.argmax(dim=1)  # a request's answer: its exit and its prediction
        return len(parts) - 1, logits.argmax(dim=1)

    return run


def hand_plain(parts: list) -> Callable:
    """Backbone and last head only."""

    def run(x: torch.Tensor) -> torch.Tensor:
        f = x
        for block, _ in parts:
            f = block(f)
        return parts[-1][1](f).argmax(dim=1)  # the prediction, as the early exit gives one

    return run


def shipped(model: torch.nn.Module, th: Any, xs: list[torch.Tensor]) -> tuple[Callable, Callable]:
    """dyncal's early-exit runner and plain-deployment runner, built as verify builds them (exported stages)."""
    from dyncal.analysis.early_exit import EarlyExitRunner
    from dyncal.analysis.plain import plain_deployment, plain_runner
    from dyncal.analysis.stages import build_stages

    example = torch.cat(xs[:2])
    stages = build_stages(model, example)
    runner = EarlyExitRunner(stages, th.thresholds, th.temperatures, th.score)
    return runner, plain_runner(plain_deployment(stages, model=model, example=example), th.score)


def loop_times(fns: list[Callable], xs: list[torch.Tensor], repeats: int) -> np.ndarray:
    """``(len(fns), len(xs))`` fastest of ``repeats`` per request, the callables alternated per repeat."""
    out = np.empty((len(fns), len(xs)))
    with torch.inference_mode():
        for f in fns:  # warm
            for x in xs[:5]:
                f(x)
        for j, x in enumerate(xs):
            best = [float("inf")] * len(fns)
            for r in range(repeats):
                order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
                for i in order:
                    fns[i](x)  # settle, as verify does
                    t0 = time.perf_counter()
                    fns[i](x)
                    best[i] = min(best[i], (time.perf_counter() - t0) * 1e3)
            out[:, j] = best
    return out


def pct(a: np.ndarray) -> dict[str, float]:
    return {"mean": float(a.mean()), **{f"p{q}": float(np.percentile(a, q)) for q in PCTS}}


def measure(name: str, work: str, args: argparse.Namespace) -> dict[str, Any]:
    run_dir, th = prepare_pipeline(name, work, threads=1, profile_repeats=5, batch_sizes=(1,))
    common = dict(batch_sizes=(1,), threads=1, repeats=args.repeats, max_seconds=1e6, limit=args.limit)
    eager = verify_run(run_dir, th, **common)  # type: ignore[arg-type]
    frozen = verify_run(run_dir, th, runtime="frozen", **common)  # type: ignore[arg-type]
    r = eager.timings[0].requests
    rf = frozen.timings[0].requests
    assert r is not None and rf is not None
    run = load_run(run_dir)
    spec, _, data, model_path = PIPELINES[name]
    ds = load_dataset(data, search_path=model_path)
    order = r.rows.tolist()
    xs = [ds[int(run.indices[i])][0].unsqueeze(0) for i in order]
    from dyncal.models import load_model

    weights = None
    if name == "demo":
        from dyncal.demo import WEIGHTS

        weights = str(WEIGHTS)
    model = load_model(spec, weights=weights, model_path=model_path).module.eval()
    torch.set_num_threads(1)
    parts = blocks_and_heads(model)
    assert th.score == "maxprob", th.score  # type: ignore[attr-defined]
    ee = hand_early_exit(parts, list(th.thresholds), list(th.temperatures))  # type: ignore[attr-defined]
    with torch.inference_mode():
        loop_exits = np.array([ee(x)[0] for x in xs])
    runner, plain = shipped(model, th, xs)
    times = loop_times([ee, hand_plain(parts), model, runner, plain], xs, args.repeats)
    dy = {side: r.service_ms(side) for side in ("early_exit", "plain")}
    dyf = {side: rf.service_ms(side) for side in ("early_exit", "plain")}
    return {
        "model": name,
        "requests": r.units,
        "coverage": r.coverage(),
        "exits_equal": float(np.mean(loop_exits == r.exits)),
        "exit_shares": np.bincount(r.exits, minlength=run.k).tolist(),
        "estimator": eager.timings[0].estimate.estimator,
        "speedup": eager.timings[0].speedup,
        "speedup_frozen": frozen.timings[0].speedup,
        "dyncal": {"early_exit": pct(dy["early_exit"]), "plain": pct(dy["plain"])},
        "dyncal_frozen": {"early_exit": pct(dyf["early_exit"]), "plain": pct(dyf["plain"])},
        "loop": {"early_exit": pct(times[0]), "plain": pct(times[1]), "every_head": pct(times[2])},
        "runner_loop": {"early_exit": pct(times[3]), "plain": pct(times[4])},
        "dyncal_p99_interval": {side: list(r.percentile(99, side).interval) for side in ("early_exit", "plain")},
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| model | version | measured by | mean | p50 | p90 | p99 (ms) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines = [
            ("early exit", "dyncal verify", row["dyncal"]["early_exit"]),
            ("early exit", "loop here", row["loop"]["early_exit"]),
            ("plain deployment", "dyncal verify", row["dyncal"]["plain"]),
            ("plain deployment", "loop here (hand-built backbone + last head)", row["loop"]["plain"]),
            ("every head (the old baseline)", "loop here", row["loop"]["every_head"]),
            ("early exit", "dyncal's runner called in the loop here", row["runner_loop"]["early_exit"]),
            ("plain deployment", "dyncal's plain runner called in the loop here", row["runner_loop"]["plain"]),
            ("early exit, frozen", "dyncal verify --runtime frozen", row["dyncal_frozen"]["early_exit"]),
            ("plain deployment, frozen", "dyncal verify --runtime frozen", row["dyncal_frozen"]["plain"]),
        ]
        for version, who, s in lines:
            out.append(
                f"| {row['model']} | {version} | {who} | {s['mean']:.3f} | {s['p50']:.3f} | {s['p90']:.3f} | "
                f"{s['p99']:.3f} |"
            )
    return out


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        d, lp, rl = row["dyncal"], row["loop"], row["runner_loop"]
        out.append(
            f"- {row['model']}: {row['coverage']}; exits equal to the loop's on {100 * row['exits_equal']:.1f}% "
            f"(exit counts {row['exit_shares']}). dyncal / loop: early exit p50 x{d['early_exit']['p50'] / lp['early_exit']['p50']:.2f}, "
            f"p99 x{d['early_exit']['p99'] / lp['early_exit']['p99']:.2f}; plain p50 "
            f"x{d['plain']['p50'] / lp['plain']['p50']:.2f}, p99 x{d['plain']['p99'] / lp['plain']['p99']:.2f}. "
            f"Every head / plain deployment (loop, p50): x{lp['every_head']['p50'] / lp['plain']['p50']:.2f}. "
            f"dyncal / its runners called in the loop (p50): early exit "
            f"x{d['early_exit']['p50'] / rl['early_exit']['p50']:.2f}, plain x{d['plain']['p50'] / rl['plain']['p50']:.2f}; "
            f"runners / hand-written (loop, p50): early exit x{rl['early_exit']['p50'] / lp['early_exit']['p50']:.2f}, "
            f"plain x{rl['plain']['p50'] / lp['plain']['p50']:.2f}. "
            f"Speed-up {row['speedup']:.2f}x ({row['estimator']}), frozen {row['speedup_frozen']:.2f}x; "
            f"p99 of the early exit over the plain deployment x{d['early_exit']['p99'] / d['plain']['p99']:.2f}."
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, write nothing (smoke test)")
    ap.add_argument("--limit", type=int, default=300, help="rows timed per model (all of them, at batch 1)")
    ap.add_argument("--repeats", type=int, default=5, help="pairs per request")
    ap.add_argument("--models", default="demo,cpu_heavy")
    args = ap.parse_args()
    if args.quick:
        os.environ.setdefault("DYNCAL_BENCH_N", "64")
        args.limit, args.repeats = 24, 2
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        rows = [measure(name, work, args) for name in args.models.split(",")]
    machine = (
        f"{cpu_model()}, {os.cpu_count()} cores, 1 torch thread, torch {torch.__version__}, Python "
        f"{platform.python_version()}; load average before {load_before[0]:.2f} (a shared machine); "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.perf_counter() - t0:.0f} s"
    )
    lines = [
        "# Latency per request: dyncal verify against a loop written in the benchmark",
        "",
        f"Machine: {machine}.",
        "",
        f"Batch 1, first {args.limit} rows of each run, every row timed, {args.repeats} pairs per request, fastest "
        "per request (noise-reduced). dyncal: `verify_run(...).timings[0].requests` (its plain model is the plain "
        "deployment: stages + last head, no exit decision). Loop: the early exit and the plain model written by "
        "hand in this script (each returns its prediction, as a deployment must), timed with `time.perf_counter`, "
        "percentiles by numpy; and dyncal's own runners (exported stages, as verify and `export` run them) "
        "called in the same loop, which separates what verify's timing adds (dyncal / runner loop) from what "
        "the runner costs over hand-written code (runner loop / hand loop).",
        "",
        *table(rows),
        "",
        *ratios(rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        (HERE / "latency_distribution.md").write_text(text)
        (HERE / "latency_distribution.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
