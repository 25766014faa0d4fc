"""How long ``dyncal report`` takes and how big its PDF is, on the demo and at ImageNet size.

Two runs:

* ``demo``: the real 4-exit digits CNN over its 797 held-out digits (MACs counted by hand);
* ``imagenet``: synthetic logits with N=50,000, K=5, C=1,000 (1 GB of float32 on disk),
  exits growing more accurate and more confident, MACs of an ImageNet-sized network and a
  cpu/b1 + cpu/b64 latency table.

For each: wall time of the whole ``build_report`` (load, frontier, solve, criteria,
drawing, writing), of drawing and writing alone (``render_pdf``), and the PDF's size.
Results go to ``benchmarks/report_speed.md`` (with machine and date).

    python benchmarks/report_speed.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from dyncal.artifacts.costs import CostTable, LatencyProfile
from dyncal.artifacts.run import load_run, store_costs
from dyncal.artifacts.run_document import Provenance
from dyncal.artifacts.run_import import import_arrays
from dyncal.artifacts.run_writer import RunWriter

HERE = Path(__file__).parent
DEMO_MACS = (4928.0, 153664.0, 1926976.0, 9897280.0)
IMAGENET_MACS = (0.6e9, 1.3e9, 2.1e9, 3.0e9, 4.1e9)


def _prov(model: str, data: str) -> Provenance:
    return Provenance(
        model=model,
        weights_sha256=None,
        data=data,
        command="benchmarks/report_speed.py",
        created="2026-11-28T00:00:00+00:00",
        device="cpu",
        versions={},
    )


def _latency(batch: int, stage_ms: tuple[float, ...]) -> LatencyProfile:
    wiggle = np.linspace(0.97, 1.03, 15)
    decision = 0.05
    # exit k's path: stages 1..k plus one decision per exit passed (the last exit makes none)
    paths = np.cumsum(stage_ms) * batch**0.8 + decision * np.minimum(np.arange(1, len(stage_ms) + 1), len(stage_ms) - 1)
    return LatencyProfile(
        device="cpu",
        batch_size=batch,
        stage_ms=tuple(tuple(float(s * batch**0.8 * w) for w in wiggle) for s in stage_ms),
        decision_ms=tuple(float(decision * w) for w in wiggle),
        full_model_ms=tuple(float(sum(stage_ms) * batch**0.8 * w) for w in wiggle),
        threads=1,
        hardware="synthetic",
        settings={"repeats": 15},
        exit_path_ms=tuple(tuple(float(p * w) for w in wiggle) for p in paths),
    )


def demo_run(root: Path) -> Path:
    import torch

    from dyncal.demo import pretrained, validation

    ds = validation()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = np.array([int(ds[i][1]) for i in range(len(ds))])
    with torch.inference_mode():
        z = torch.stack(list(pretrained()(x)), dim=1).numpy()
    run = import_arrays(
        z,
        y,
        root / "demo",
        macs=DEMO_MACS,
        provenance=_prov("dyncal.demo:pretrained", "dyncal.demo:validation"),
    )
    return run.path


def imagenet_run(root: Path, n: int = 50_000, k: int = 5, c: int = 1000, chunk: int = 2000) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, c, n)
    hardness = rng.gamma(2.0, 0.8, n)  # per-sample difficulty shared by all exits
    signal = np.linspace(8.0, 14.0, k)  # exit accuracies about 0.48 .. 0.80
    out = root / "imagenet"
    with RunWriter(out, n) as writer:
        writer.allocate(k, c)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            b = stop - start
            z = rng.standard_normal((b, k, c), dtype=np.float32) * 1.2
            shared = rng.standard_normal((b, 1, c), dtype=np.float32)
            z += 0.8 * shared
            strength = signal[None, :] / (0.5 + hardness[start:stop, None])
            z[np.arange(b), :, labels[start:stop]] += strength.astype(np.float32)
            writer.write(start, z, labels[start:stop], np.arange(start, stop))
        writer.finish(
            _prov("synthetic ImageNet-sized 5-exit network", "synthetic N=50,000"),
            CostTable(macs=IMAGENET_MACS),
        )
    stage = (4.0, 4.5, 5.0, 5.5, 7.0)
    store_costs(
        load_run(out),
        CostTable(
            macs=IMAGENET_MACS,
            latency={"cpu/b1": _latency(1, stage), "cpu/b64": _latency(64, stage)},
        ),
    )
    return out


def measure(run: Path, out: Path, **criteria: float) -> dict[str, float]:
    from dyncal.reports.data import prepare_report
    from dyncal.reports.pdf import build_report, render_pdf

    t0 = time.perf_counter()
    result = build_report(run, out, **criteria)  # type: ignore[arg-type]
    total = time.perf_counter() - t0
    data = prepare_report(run, **criteria)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    pdf = render_pdf(data)
    render = time.perf_counter() - t1
    return {
        "total_s": total,
        "render_s": render,
        "size_kb": len(pdf) / 1024,
        "decision": result.decision or "none",
    }  # type: ignore[dict-item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="Keep the runs and PDFs in this folder.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp()) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        demo = demo_run(root)
        rows.append(("demo (N=797, K=4, C=10)", measure(demo, root / "demo.pdf", min_accuracy=0.95)))
        t = time.perf_counter()
        big = imagenet_run(root)
        make_s = time.perf_counter() - t
        from dyncal.calibrate.scores import exit_scores

        rows.append(
            (
                "synthetic ImageNet (N=50,000, K=5, C=1,000)",
                measure(big, root / "imagenet.pdf", min_accuracy=0.75),
            )
        )
        t = time.perf_counter()  # after the report: the logits are in the page cache, as there
        exit_scores(load_run(big).logits, "maxprob")
        score_s = time.perf_counter() - t
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    import os

    lines = [
        "# report speed (benchmarks/report_speed.py)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared "
        "with other work); "
        f"Python {platform.python_version()}; "
        f"{dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()}.",
        "",
        "`total` is the whole `build_report` (load, frontier of 3 methods x 41 budgets + oracle "
        "+ static, solve, "
        "criteria with bootstrap intervals, six pages drawn, PDF written); `render` is drawing "
        "and writing alone.",
        "",
        "| run | total (s) | render (s) | PDF size (KB) | decision |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r['total_s']:.2f} | {r['render_s']:.2f} | {r['size_kb']:.0f} | {r['decision']} |")
    lines += [
        "",
        f"Writing the synthetic 1 GB run itself took {make_s:.1f} s (not part of the report).",
        f"One softmax pass over its logits (`exit_scores`) takes {score_s:.1f} s; a report "
        "makes one (`prepare_run`), which the frontier, the solve and the held-out "
        "simulation share. Before that sharing a report made three passes: 12.3 s in total "
        "on the 2026-11-28T00:12 run of this script.",
    ]
    text = "\n".join(lines) + "\n"
    (HERE / "report_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
