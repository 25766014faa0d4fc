"""How fast is the whole frontier on ImageNet-sized synthetic logits?

N=50,000 samples, K=5 exits, C=1,000 classes; exits get more accurate with depth. Scores
are computed first (not timed); then, timed: the whole frontier (41 budgets from the first
exit's cost to the last's) for ``optimal`` (the default), ``geometric`` and ``smoothed``
on all N samples, then ``compute_frontier`` as ``dyncal frontier`` runs it by default
(50/50 split, optimal and geometric on the fit half, guarded, oracle, each exit alone,
held-out intervals),
and, for comparison, a straightforward per-sample-loop implementation of the published
geometric baseline (MSDNet's ``dynamic_eval_find_threshold`` as written: Python loops over
sorted samples) over its 39 published ratios, against the vectorised one on the same ratios.

Usage: python benchmarks/solve_speed.py   (writes benchmarks/solve_speed.json and .md)
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from dyncal.analysis.latency import cpu_model
from dyncal.calibrate.frontier import compute_frontier
from dyncal.calibrate.policy import assign_exits
from dyncal.calibrate.prepare import PreparedRun
from dyncal.calibrate.problem import PUBLISHED_Q, _geometric_fit
from dyncal.calibrate.scores import exit_scores
from dyncal.calibrate.search import problem_for, solve_path
from dyncal.stats import stratified_split

HERE = Path(__file__).parent
N, K, C = 50_000, 5, 1000
MACS = np.array([0.34, 0.69, 1.01, 1.25, 1.53]) * 1e9


def synthetic_scores(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores and correctness of synthetic logits, generated and scored in chunks."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, N)
    difficulty = rng.normal(0, 1, N)
    scores = np.empty((N, K))
    correct = np.empty((N, K), dtype=bool)
    for start in range(0, N, 2000):
        sl = slice(start, min(N, start + 2000))
        n = sl.stop - sl.start
        z = rng.normal(0, 1, (n, K, C)).astype(np.float32)
        strength = (1.5 + 0.9 * np.arange(K))[None, :] - difficulty[sl, None]
        z[np.arange(n), :, labels[sl]] += np.maximum(strength, 0) * 2.2
        s, p = exit_scores(z)
        scores[sl], correct[sl] = s, p == labels[sl, None]
    return scores, correct


def geometric_loop(scores: np.ndarray, q: float) -> list[float]:
    """The published per-sample loop (MSDNet adaptive_inference), on numpy rows."""
    n, k = scores.shape
    p = [q ** (i + 1) for i in range(k)]
    total = sum(p)
    p = [v / total for v in p]
    sorted_idx = [list(np.argsort(-scores[:, i])) for i in range(k)]
    filtered = [0] * n
    thresholds = [1e8] * k
    for i in range(k - 1):
        count = 0
        out_n = math.floor(n * p[i])
        for ori in sorted_idx[i]:
            if filtered[ori] == 0:
                count += 1
                if count == out_n:
                    thresholds[i] = float(scores[ori, i])
                    break
        for j in range(n):
            if scores[j, i] >= thresholds[i]:
                filtered[j] += 1
    thresholds[k - 1] = -1e8
    return thresholds


def main() -> None:
    scores, correct = synthetic_scores()
    budgets = list(np.linspace(MACS[0], MACS[-1], 41))
    out: dict[str, object] = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "n": N,
        "k": K,
        "c": C,
        "n_budgets": len(budgets),
        "exit_accuracy": correct.mean(0).round(4).tolist(),
    }
    timings: dict[str, float] = {}
    accs: dict[str, list[float | None]] = {}
    for method in ("geometric", "optimal", "smoothed"):
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            problem = problem_for(method, scores, correct, MACS)
            sols = solve_path(problem, budgets, method)
            best = min(best, time.perf_counter() - t0)
        timings[method] = best
        rows = np.arange(N)
        accs[method] = [None if s is None else float(correct[rows, problem.exits(s.thresholds)].mean()) for s in sols]
    # both methods as compute_frontier runs them: one problem, the geometric fits shared
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        problem = problem_for("optimal", scores, correct, MACS)
        solve_path(problem, budgets, "optimal")
        solve_path(problem, budgets, "geometric")
        best = min(best, time.perf_counter() - t0)
    timings["optimal+geometric (shared problem)"] = best
    # the whole frontier as `dyncal frontier` runs it by default: a 50/50 stratified split,
    # optimal + geometric on the fit half (guarded), the oracle, each exit alone, held-out
    # accuracy with bootstrap intervals (compute_frontier on an already-scored run)
    labels = np.random.default_rng(0).integers(0, C, N)
    fit_idx, held_idx = stratified_split(labels, 0.5, 0)
    prep = PreparedRun(
        score="maxprob",
        temperatures=(1.0,) * K,
        scores=scores,
        correct=correct,
        fit_idx=fit_idx,
        holdout_idx=held_idx,
        units={"macs": tuple(float(m) for m in MACS)},
        n_classes=C,
        holdout=0.5,
        seed=0,
    )
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        compute_frontier(prep)
        best = min(best, time.perf_counter() - t0)
    label = "dyncal frontier default (compute_frontier: 2 methods on the fit half, oracle, static, held-out CIs)"
    timings[label] = best
    out["frontier_seconds"] = {k: round(v, 3) for k, v in timings.items()}
    out["load_average_1min"] = os.getloadavg()[0]
    # published per-sample loop vs vectorised, the 39 published ratios
    qs = PUBLISHED_Q
    t0 = time.perf_counter()
    loop_t = [geometric_loop(scores, q) for q in qs[:4]]
    loop_s = (time.perf_counter() - t0) / 4 * len(qs)
    cols = np.ascontiguousarray(scores.T)
    t0 = time.perf_counter()
    vec_t = [_geometric_fit(cols, q)[0] for q in qs]
    vec_s = time.perf_counter() - t0
    # thresholds sit midway below the published ones (float32-safe): compare decisions
    same = all(
        np.array_equal(assign_exits(scores, v), assign_exits(scores, np.asarray(lt[:-1])))
        for v, lt in zip(vec_t[:4], loop_t, strict=True)
    )
    out["geometric_39_ratios"] = {
        "loop_seconds_estimated_from_4": round(loop_s, 2),
        "vectorised_seconds": round(vec_s, 3),
        "speedup": round(loop_s / vec_s, 1),
        "same_exits": bool(same),
    }
    gain = [(o - g) for o, g in zip(accs["optimal"], accs["geometric"], strict=True) if o is not None and g is not None]
    out["optimal_minus_geometric_fitted_accuracy"] = {
        "min": round(min(gain), 5),
        "mean": round(float(np.mean(gain)), 5),
        "max": round(max(gain), 5),
    }
    (HERE / "solve_speed.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        "# solve speed (benchmarks/solve_speed.py)",
        "",
        f"Machine: {out['machine']['cpu']}, {out['machine']['cores']} cores, shared with other jobs "  # type: ignore[index]
        f"(1-min load average {out['load_average_1min']:.1f}); {out['date']}. Best of 3 runs.",
        f"Synthetic logits N={N:,}, K={K}, C={C:,}; scores computed first (not timed); "
        f"{len(budgets)} budgets from exit 1's cost to exit {K}'s.",
        "",
        "| what | seconds |",
        "|---|---|",
        *[f"| whole frontier, {k} | {v:.3f} |" for k, v in out["frontier_seconds"].items()],  # type: ignore[union-attr]
        f"| geometric, 39 published ratios, per-sample loop (as published) | {loop_s:.2f} |",
        f"| geometric, 39 published ratios, vectorised | {vec_s:.3f} |",
        "",
        f"Vectorised geometric is {loop_s / vec_s:.0f}x faster than the loop and sends every sample to the same exit: {same}.",
        f"optimal minus geometric, fitted accuracy over the 41 budgets: {out['optimal_minus_geometric_fitted_accuracy']}.",
        "",
    ]
    (HERE / "solve_speed.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
