"""Does risk control hold on real logits? 200 random calibration/test splits.

For each split (stratified 50/50 of the Fashion-MNIST test logits, seed = split number)
``solve_run(run, None, max_drop=ε, delta=δ, holdout=0.5, seed=s)`` picks thresholds on the
calibration half (Learn then Test; candidates built on one half of it, tested on the other)
and the test half measures the drop versus the last exit. The share of splits whose test
drop exceeds ε should be at most δ. Writes ``risk_control_check.json`` and ``.md``.

Usage: python benchmarks/risk_control_check.py [--splits 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from dyncal.artifacts.run_import import import_arrays
from dyncal.calibrate.solvers import solve_run

HERE = Path(__file__).parent
SETTINGS = ((0.005, 0.05), (0.01, 0.1))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", type=int, default=200)
    args = ap.parse_args()
    d = np.load(HERE / "fashion_mnist_logits.npz")
    out: dict[str, object] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "data": "Fashion-MNIST test logits (10,000), 4 exits; 50/50 stratified calibration/test splits",
        "splits": args.splits,
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        run = import_arrays(d["logits"], d["labels"], Path(tmp) / "run", macs=d["macs"].tolist())
        for eps, delta in SETTINGS:
            t0 = time.perf_counter()
            drops, costs = [], []
            for seed in range(args.splits):
                res = solve_run(run, None, max_drop=eps, delta=delta, holdout=0.5, seed=seed)
                assert res.risk is not None
                drops.append(res.risk["holdout_drop"])
                costs.append(res.budget["met_fraction"])
            drops_a = np.array(drops)
            out["results"].append(  # type: ignore[attr-defined]
                {
                    "max_drop": eps,
                    "delta": delta,
                    "violation_rate": float(np.mean(drops_a > eps)),
                    "mean_test_drop": float(drops_a.mean()),
                    "max_test_drop": float(drops_a.max()),
                    "mean_cost_fraction": float(np.mean(costs)),
                    "share_of_splits_saving_compute": float(np.mean(np.array(costs) < 1.0)),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
    (HERE / "risk_control_check.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Risk control on real logits (benchmarks/risk_control_check.py)",
        "",
        f"Machine: {out['machine']['cpu']}, {out['machine']['cores']} cores (shared); {out['date']}.",  # type: ignore[index]
        f"{out['data']}; {args.splits} splits per setting; default method, binomial p-values, fixed-sequence testing.",
        "",
        "| ε (max drop) | δ | share of splits with test drop > ε | mean test drop | max test drop | mean cost (x of exit 4) | splits saving compute |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in out["results"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {r['max_drop']} | {r['delta']} | {r['violation_rate']:.3f} | {r['mean_test_drop']:+.4f} | "
            f"{r['max_test_drop']:+.4f} | {r['mean_cost_fraction']:.3f} | {r['share_of_splits_saving_compute']:.2f} |"
        )
    lines.append("")
    (HERE / "risk_control_check.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
