"""Held-out accuracy of the threshold methods on real logits (Fashion-MNIST, 4 exits).

The logits come from ``benchmarks/fashion_mnist_model.py`` (cached in
``fashion_mnist_logits.npz``: the 10,000 test images). For each of 10 random stratified
50/50 splits, thresholds are fitted on one half at each of 21 budgets (from exit 1's cost
to exit 4's, fractions of exit 4's cumulative MACs) and scored on the other half with the
exit rule:

* ``smoothed`` (dyncal's default), ``optimal`` and ``geometric`` (MSDNet's baseline with its
  best ratio for the budget) from ``dyncal.calibrate.search``;
* ``earlyon``: the budget calibrator of earlyon 0.3.0 (PyPI),
  ``earlyon.core.thresholds.calibrate_thresholds_for_budget`` — its own code, unmodified,
  run on the same logits through a small adapter that plays the model (returns the cached
  per-exit logits for a batch of row indices) and gives it the same cumulative cost
  fractions. Install with ``pip install --no-deps earlyon==0.3.0`` (it needs only torch,
  already installed).

All methods use the same scores (max softmax probability, no temperature). Writes
``heldout_comparison.json`` and ``heldout_comparison.md``.

Usage: python benchmarks/heldout_comparison.py
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dyncal.calibrate.policy import evaluate_policy
from dyncal.calibrate.scores import exit_scores
from dyncal.calibrate.search import problem_for, solve_path
from dyncal.choices import DEFAULT_METHOD
from dyncal.stats import stratified_split

HERE = Path(__file__).parent
N_SPLITS = 10
N_BUDGETS = 21


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = np.load(HERE / "fashion_mnist_logits.npz")
    return (
        d["logits"].astype(np.float32),
        d["labels"].astype(np.int64),
        d["macs"].astype(np.float64),
    )


class _CachedModel:
    """Plays an earlyon ``EarlyExitWrapper`` for its calibrators: 'images' are row indices."""

    def __init__(self, logits: np.ndarray, macs: np.ndarray) -> None:
        import torch
        from earlyon.core.types import EarlyExitConfig, ExitPoint

        k = logits.shape[1]
        self._logits = [torch.from_numpy(np.ascontiguousarray(logits[:, j])) for j in range(k)]
        points = [ExitPoint(name=f"exit{j + 1}", layer_name=f"stage{j + 1}", in_channels=1) for j in range(k - 1)]
        self.config = EarlyExitConfig(backbone="cached-logits", num_classes=logits.shape[2], exit_points=points)
        self._flops_at = {f"stage{j + 1}": float(macs[j] / macs[-1]) for j in range(k - 1)}
        self.training = False

    def to(self, device: str) -> _CachedModel:
        return self

    def eval(self) -> _CachedModel:
        return self

    def train(self, mode: bool = True) -> _CachedModel:
        return self

    def __call__(self, rows: Any, mode: str = "training") -> list[Any]:
        return [z[rows] for z in self._logits]


def earlyon_thresholds(
    logits: np.ndarray, labels: np.ndarray, macs: np.ndarray, fraction: float
) -> tuple[np.ndarray, bool]:
    """earlyon's budget calibrator on cached logits; returns dyncal thresholds (+inf = disabled)."""
    import torch
    from earlyon.core.thresholds import calibrate_thresholds_for_budget

    model = _CachedModel(logits, macs)
    rows = torch.arange(logits.shape[0])
    y = torch.from_numpy(labels)
    loader = [(rows[i : i + 512], y[i : i + 512]) for i in range(0, len(rows), 512)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = calibrate_thresholds_for_budget(model, loader, target_computation=min(1.0, fraction))  # type: ignore[arg-type]
    t = np.array([thr if on else np.inf for thr, on in zip(res.thresholds, res.enabled_exits, strict=True)])
    return t, bool(res.budget_met)


def _colmeans(a: np.ndarray) -> list[float | None]:
    return [None if np.all(np.isnan(c)) else round(float(np.nanmean(c)), 5) for c in a.T]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    logits, labels, macs = load()
    scores, preds = exit_scores(logits)
    correct = preds == labels[:, None]
    fractions = np.linspace(macs[0] / macs[-1], 1.0, N_BUDGETS)
    budgets = fractions * macs[-1]
    budgets[0] = macs[0]
    methods = [DEFAULT_METHOD, "optimal", "geometric", "earlyon"]
    held = {m: np.full((N_SPLITS, N_BUDGETS), np.nan) for m in methods}
    fitted = {m: np.full((N_SPLITS, N_BUDGETS), np.nan) for m in methods}
    held_cost = {m: np.full((N_SPLITS, N_BUDGETS), np.nan) for m in methods}
    earlyon_missed = 0
    seconds = {m: 0.0 for m in methods}
    for split in range(N_SPLITS):
        fit, test = stratified_split(labels, 0.5, seed=split)
        for m in methods:
            t0 = time.perf_counter()
            if m == "earlyon":
                sols = []
                for f in fractions:
                    t, met = earlyon_thresholds(logits[fit], labels[fit], macs, float(f))
                    earlyon_missed += not met
                    sols.append(t)
            else:
                problem = problem_for(m, scores[fit], correct[fit], macs)
                sols = [None if s is None else s.thresholds for s in solve_path(problem, list(budgets), m)]
            seconds[m] += time.perf_counter() - t0
            for b, t in enumerate(sols):
                if t is None:
                    continue
                fo = evaluate_policy(scores[fit], correct[fit], macs, t)
                ho = evaluate_policy(scores[test], correct[test], macs, t)
                if m != "earlyon" or fo.expected_cost <= budgets[b] * (1 + 1e-9):
                    fitted[m][split, b] = fo.accuracy
                    held[m][split, b] = ho.accuracy
                    held_cost[m][split, b] = ho.expected_cost / macs[-1]
    # budgets where every method has an answer on every split
    common = np.all([~np.isnan(held[m]).any(axis=0) for m in methods], axis=0)
    active = common & (fractions <= 0.35)  # below ~0.3x this model's exit 3 and 4 are not yet affordable for all
    summary: dict[str, Any] = {}
    for m in methods:
        summary[m] = {
            "heldout_mean_all": float(np.nanmean(held[m][:, common])),
            "heldout_mean_low_budgets": float(np.nanmean(held[m][:, active])),
            "fitted_mean_all": float(np.nanmean(fitted[m][:, common])),
            "seconds_total": round(seconds[m], 2),
        }
    diffs = {}
    for other in ("geometric", "earlyon", "optimal"):
        d = held[DEFAULT_METHOD][:, common] - held[other][:, common]
        per_split = d.mean(axis=1)
        diffs[other] = {
            "mean_gain": float(d.mean()),
            "se_over_splits": float(per_split.std(ddof=1) / np.sqrt(N_SPLITS)),
            "splits_won": int(np.sum(per_split > 0)),
            "splits_lost": int(np.sum(per_split < 0)),
        }
    doc = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "data": "Fashion-MNIST test set (10,000), 4-exit CNN from benchmarks/fashion_mnist_model.py",
        "exit_accuracy": correct.mean(axis=0).round(4).tolist(),
        "macs": macs.tolist(),
        "splits": N_SPLITS,
        "budget_fractions": fractions.round(4).tolist(),
        "budgets_with_every_method": int(common.sum()),
        "earlyon_budget_misses": earlyon_missed,
        "summary": summary,
        f"{DEFAULT_METHOD}_minus": diffs,
        "per_budget_heldout_mean": {m: _colmeans(held[m]) for m in methods},
        "per_budget_heldout_cost_fraction": {m: _colmeans(held_cost[m]) for m in methods},
    }
    (HERE / "heldout_comparison.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Held-out comparison on real logits (benchmarks/heldout_comparison.py)",
        "",
        f"Machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores (shared); {doc['date']}.",
        f"Data: {doc['data']}; per-exit accuracy {doc['exit_accuracy']}, cumulative MACs {[int(v) for v in macs]}.",
        f"{N_SPLITS} stratified 50/50 splits (fit on one half, score on the other), {N_BUDGETS} budgets from "
        f"{fractions[0]:.3f}x to 1x; averages over the {int(common.sum())} budgets where every method has a "
        f"solution (geometric has none at exactly exit 1's cost). earlyon missed its budget on the fit half "
        f"{earlyon_missed} times (those cells are left out).",
        "",
        "| method | held-out acc., all budgets | held-out acc., budgets <= 0.35x | fitted acc., all budgets | fit time, all splits (s) |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        s = summary[m]
        lines.append(
            f"| {m}{' (default)' if m == DEFAULT_METHOD else ''} | {100 * s['heldout_mean_all']:.3f}% | "
            f"{100 * s['heldout_mean_low_budgets']:.3f}% | {100 * s['fitted_mean_all']:.3f}% | {s['seconds_total']} |"
        )
    lines += [
        "",
        f"Paired held-out difference, {DEFAULT_METHOD} minus other (mean over budgets, then splits):",
        "",
    ]
    lines += [
        "| other | mean gain (points) | s.e. over splits | splits won / lost |",
        "|---|---|---|---|",
    ]
    for other, d in diffs.items():
        lines.append(
            f"| {other} | {100 * d['mean_gain']:+.3f} | {100 * d['se_over_splits']:.3f} | {d['splits_won']} / {d['splits_lost']} |"
        )
    lines += ["", "Held-out accuracy by budget (mean over splits):", ""]
    lines += ["| budget | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for b, f in enumerate(fractions):
        cells = [
            "-" if np.isnan(v) else f"{100 * v:.2f}%"
            for v in (np.nanmean(held[m][:, b]) if not np.all(np.isnan(held[m][:, b])) else np.nan for m in methods)
        ]
        lines.append(f"| {f:.3f}x | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Reading: `optimal` is best on the half it was fitted on but loses that edge on the other",
        "half (it tunes thresholds to individual right/wrong samples; at large budgets it even falls",
        "below `geometric`). `smoothed` runs the same exact solver on calibrated expected accuracy",
        "(per-exit isotonic P(right | score)) and is the most accurate on held-out data, hence",
        "dyncal's default. earlyon's calibrator (greedy per exit over a 9-value grid, stopping at",
        "the first exit that meets the budget) was run unmodified through an adapter that serves",
        "the cached logits; it spends the budget poorly at low and middle budgets.",
        "",
    ]
    (HERE / "heldout_comparison.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
