"""Does the monitor decide rollouts right under shift? Decision and drop bound against the true drop.

Run (writes rollout_shift.md and .json next to this file; about 10 minutes of CPU, most of it
training the Fashion-MNIST model):
    PYTHONPATH=. .venv/bin/python benchmarks/rollout_shift.py
Smoke test (tiny settings, writes nothing): add --quick.

Two real multi-exit CNNs: the demo (``dyncal.demo``, 797 validation digits, 8x8) and the
4-exit Fashion-MNIST CNN of ``fashion_mnist_model.py`` (trained here, deterministically, for
``--epochs``; 10,000 test images, 28x28; Debian's ``dataset-fashion-mnist``). For each, the
logits of the clean evaluation set and of perturbed copies (``dyncal.perturb``: Gaussian noise
at three severities and a 1-pixel shift) are computed once. Then, over ``--splits`` random
halvings of the set: thresholds are solved on the calibration half of the clean data (0.5x of
the last exit's MACs, ``optimal``, everything fitted), and the other half, clean or perturbed,
is production traffic: :func:`dyncal.monitor.simulated_telemetry` turns its logits into the
rows the runner would write (a ``shadow`` share shadowed), and :func:`dyncal.monitor.monitor`
decides at ``--max-drop ε --delta δ`` (δ = 0.05; ε where a rollout plan is feasible: twice the
disagreement rate of the first split's calibration half, rounded up to 0.005, since the
disagreement bound can only certify ε above the rate the thresholds disagree at). The true drop is the production half's own, from labels
(last exit's accuracy minus the early exit's, over every request).

Checks: on clean traffic, ROLLBACK (a false alarm) in at most δ of splits (without labels ROLLBACK
needs a budget surely broken; a disagreement surely above ε only HOLDs); the bound covers the
true drop in at least 1 − δ of splits, for every scenario; PROCEED never when the true drop is
above ε (in at most δ of splits). Also reported: cost per request against the calibration and
the budget, exit-share drift (χ² p-value) and the ATC accuracy estimate against the truth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from dyncal.analysis.flops import stage_macs  # noqa: E402
from dyncal.analysis.latency import cpu_model  # noqa: E402
from dyncal.analysis.stages import build_stages  # noqa: E402
from dyncal.artifacts.run import Provenance  # noqa: E402
from dyncal.artifacts.run_import import import_arrays  # noqa: E402
from dyncal.calibrate.estimator import ThresholdSolver  # noqa: E402
from dyncal.monitor import CalibrationReference, MonitorOptions, monitor, simulated_telemetry  # noqa: E402
from dyncal.perturb import Perturbation, perturb_batch  # noqa: E402

SCENARIOS: dict[str, list[Perturbation | None]] = {
    "demo": [
        None,
        Perturbation("gaussian_noise", 0.05),
        Perturbation("gaussian_noise", 0.15),
        Perturbation("gaussian_noise", 0.5),
        Perturbation("shift", 1),
    ],
    "fashion": [
        None,
        Perturbation("gaussian_noise", 0.05),
        Perturbation("gaussian_noise", 0.15),
        Perturbation("gaussian_noise", 0.5),
        Perturbation("shift", 1),
    ],
}
SHADOW = {"demo": 1.0, "fashion": 0.5}  # demo production halves are ~400 requests: every one shadowed
DELTA = 0.05


def logits_of(net: torch.nn.Module, x: torch.Tensor, chunk: int = 1000) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([torch.stack(list(net(x[i : i + chunk])), 1).numpy() for i in range(0, len(x), chunk)])


def exit_macs(net: torch.nn.Module, x: torch.Tensor) -> list[float]:
    return [float(v) for v in stage_macs(build_stages(net, x[:2]), x[:1]).exit_macs]


def demo_model() -> tuple[torch.nn.Module, torch.Tensor, np.ndarray, tuple[float, float]]:
    from dyncal.demo import pretrained, validation

    ds = validation()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = np.array([int(ds[i][1]) for i in range(len(ds))])
    return pretrained(), x, y, (0.5, 0.5)


def fashion_model(
    epochs: int, limit: int | None
) -> tuple[torch.nn.Module, torch.Tensor, np.ndarray, tuple[float, float]]:
    from fashion_mnist_model import DATA, FashionExitNet, read_idx

    xtr = read_idx(DATA / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    ytr = torch.from_numpy(read_idx(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64))
    xte = read_idx(DATA / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    yte = read_idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    mean, std = 0.286, 0.353
    xtr_t = torch.from_numpy((xtr - mean) / std)[:, None]
    xte_t = torch.from_numpy((xte - mean) / std)[:, None]
    if limit:
        xtr_t, ytr, xte_t, yte = xtr_t[:limit], ytr[:limit], xte_t[: limit // 2], yte[: limit // 2]
    torch.manual_seed(0)
    net = FashionExitNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = max(1, epochs * (len(ytr) // 128))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(ytr), generator=gen)
        for b in range(len(ytr) // 128):
            idx = order[b * 128 : (b + 1) * 128]
            loss = sum(torch.nn.functional.cross_entropy(o, ytr[idx]) for o in net(xtr_t[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval(), xte_t, yte, (mean, std)


def run_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    if name == "demo":
        net, x, y, (mean, std) = demo_model()
    else:
        net, x, y, (mean, std) = fashion_model(args.epochs, 4000 if args.quick else None)
    train_s = time.perf_counter() - t0
    macs = exit_macs(net, x)
    scenarios = SCENARIOS[name]
    logits: dict[str, np.ndarray] = {}
    for p in scenarios:
        xs = x if p is None else perturb_batch(x, p, np.arange(len(x)), pixel_mean=mean, pixel_std=std)
        logits["clean" if p is None else str(p)] = logits_of(net, xs)
    shadow = SHADOW[name]
    n = len(y)
    eps: float | None = None
    opts: MonitorOptions | None = None
    per: dict[str, list[dict[str, Any]]] = {key: [] for key in logits}
    splits = 3 if args.quick else args.splits
    for split in range(splits):
        rng = np.random.default_rng(1000 + split)
        order = rng.permutation(n)
        cal, prod = np.sort(order[: n // 2]), np.sort(order[n // 2 :])
        prov = Provenance(f"{name}:net", None, f"{name}:clean", "", "", "cpu")
        run = import_arrays(logits["clean"][cal], y[cal], work / f"{name}-{split}", macs=macs, provenance=prov)
        doc = ThresholdSolver("0.5x", method="optimal", holdout=0.0).fit(run).result_
        ref = CalibrationReference.from_run(run, doc)
        if eps is None:  # ε where the plan is feasible: twice the first calibration half's disagreement
            eps = float(np.ceil(2 * ref.summary()["disagreement_rate"] / 0.005) * 0.005)
            opts = MonitorOptions(max_drop=eps, delta=DELTA)
        assert opts is not None
        for key, z in logits.items():
            zp, yp = z[prod], y[prod]
            data = simulated_telemetry(zp, doc, shadow=shadow, seed=split)
            rep = monitor(ref, data, opts)
            early_ok = data.predictions == yp
            last_ok = zp[:, -1].argmax(-1) == yp
            true_drop = float(last_ok.mean() - early_ok.mean())
            per[key].append(
                {
                    "decision": rep.decision,
                    "upper": rep.quality["upper"],
                    "true_drop": true_drop,
                    "accuracy": float(early_ok.mean()),
                    "last_accuracy": float(last_ok.mean()),
                    "disagreement": rep.quality["disagreement_rate"],
                    "cost_ratio": rep.cost["mean"] / rep.cost["per_unit"]["macs"]["calibration"],
                    "cost_status": rep.cost["status"],
                    "shares_p": rep.drift["exit_shares"]["p_value"],
                    "atc": rep.drift["atc"]["estimate"],
                }
            )
    rows = []
    for key, results in per.items():
        decisions = Counter(r["decision"] for r in results)
        covered = np.mean([r["upper"] is not None and r["upper"] >= r["true_drop"] for r in results])
        bad_proceed = np.mean([r["decision"] == "PROCEED" and r["true_drop"] > eps for r in results])
        rows.append(
            {
                "scenario": key,
                "splits": len(results),
                "accuracy": float(np.mean([r["accuracy"] for r in results])),
                "last_accuracy": float(np.mean([r["last_accuracy"] for r in results])),
                "true_drop": float(np.mean([r["true_drop"] for r in results])),
                "true_drop_max": float(np.max([r["true_drop"] for r in results])),
                "disagreement": float(np.mean([r["disagreement"] for r in results])),
                "upper": float(np.mean([r["upper"] for r in results if r["upper"] is not None])),
                "coverage": float(covered),
                "decisions": {d: decisions.get(d, 0) for d in ("PROCEED", "HOLD", "ROLLBACK")},
                "false_proceed": float(bad_proceed),
                "cost_ratio": float(np.mean([r["cost_ratio"] for r in results])),
                "budget_over": int(sum(r["cost_status"] == "over" for r in results)),
                "shares_p_median": float(np.median([r["shares_p"] for r in results])),
                "atc_error": float(np.mean([abs(r["atc"] - r["accuracy"]) for r in results])),
            }
        )
    return {
        "model": name,
        "n": n,
        "macs": macs,
        "max_drop": eps,
        "delta": DELTA,
        "shadow": shadow,
        "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(train_s, 1),
        "rows": rows,
    }


def table(result: dict[str, Any]) -> list[str]:
    out = [
        f"### {result['model']} (N={result['n']}, ε={result['max_drop']}, δ={result['delta']}, shadow "
        f"{result['shadow']:g}, {result['rows'][0]['splits']} splits)",
        "",
        "| traffic | accuracy | true drop (mean / max) | disagreement | bound (mean) | bound covers drop | "
        "PROCEED / HOLD / ROLLBACK | false PROCEED | MACs vs calibration | budget broken | exit-share χ² p (median) | "
        "ATC error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        d = r["decisions"]
        out.append(
            f"| {r['scenario']} | {r['accuracy']:.3f} | {r['true_drop']:+.3f} / {r['true_drop_max']:+.3f} | "
            f"{r['disagreement']:.3f} | {r['upper']:.3f} | {r['coverage']:.0%} | {d['PROCEED']} / {d['HOLD']} / "
            f"{d['ROLLBACK']} | {r['false_proceed']:.0%} | {r['cost_ratio']:.2f}x | {r['budget_over']} | "
            f"{r['shares_p_median']:.2g} | {r['atc_error']:.3f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, write nothing (smoke test)")
    ap.add_argument("--splits", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--models", default="demo,fashion")
    args = ap.parse_args()
    if args.quick:
        args.epochs = 1
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results.append(run_model(name, args, Path(tmp)))
            print(f"{name}: {results[-1]['seconds']} s", file=sys.stderr)
    checks = []
    for res in results:
        clean = next(r for r in res["rows"] if r["scenario"] == "clean")
        alarms = clean["decisions"]["ROLLBACK"] / clean["splits"]
        checks.append(f"{res['model']}: false alarms on clean traffic {alarms:.0%} (goal <= {DELTA:.0%})")
        worst = min(r["coverage"] for r in res["rows"])
        checks.append(
            f"{res['model']}: the bound covers the true drop in at least {worst:.0%} of splits (goal >= {1 - DELTA:.0%})"
        )
        fp = max(r["false_proceed"] for r in res["rows"])
        checks.append(
            f"{res['model']}: PROCEED with a true drop above ε in at most {fp:.0%} of splits (goal <= {DELTA:.0%})"
        )
    doc = {
        "machine": {"cpu": cpu_model(), "python": platform.python_version(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "load_before": load_before,
        "results": results,
        "checks": checks,
    }
    lines = [
        "# Rollout under shift: the monitor's decision and drop bound against the true drop",
        "",
        f"{doc['date']}, {doc['machine']['cpu']}; thresholds solved at 0.5x of the last exit's MACs (`optimal`) on the "
        "clean calibration half of each random split, production = the other half, clean or perturbed "
        "(`dyncal.perturb`, seeded per item), turned into telemetry with `simulated_telemetry`. "
        "True drop: the production half's last-exit accuracy minus the early exit's, from labels. "
        "Budget broken: the cost's lower bound above the budget + 5%.",
        "",
        *[f"- {c}" for c in checks],
        "",
    ]
    for res in results:
        lines += table(res) + [""]
    lines += [
        "Reading: the disagreement bound is conservative by construction (disagreement >= loss >= drop), so it",
        "covers the drop; but a disagreement above ε is no shown drop (the early exit can disagree and be right),",
        "so without labels it HOLDs (cannot certify), never rolls back. ROLLBACK needs shown harm: with labels, the",
        "drop's lower bound above ε, or the cost surely above the budget (+ tolerance). These runs carry no labels,",
        "so ROLLBACK here means a broken budget. Drift (exit shares) moves under every shift and decides nothing.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        (HERE / "rollout_shift.md").write_text(text)
        (HERE / "rollout_shift.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
