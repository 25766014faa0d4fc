"""Early exit per batch, re-batched, and the plain deployment: samples/s side by side, per runtime.

CPU (writes rebatch_throughput.md and .json next to this file)::

    PYTHONPATH=. .venv/bin/python benchmarks/rebatch_throughput.py

GPU (what benchmarks/gpu_check.sh runs; writes results/runtime_modes_cuda_<gpu>.md/.json)::

    python benchmarks/rebatch_throughput.py --device cuda --models resnet50,demo --runtimes eager,graphs

Dry run (tiny settings, the CPU stand-in for graphs; what the test suite runs so this cannot rot)::

    python benchmarks/rebatch_throughput.py --dry --out-dir /tmp/x

For each model: thresholds are set so that a share of the rows still present (``--leave``,
default 0.75) leaves at each exit before the last (each threshold midway in a gap between
two rows' scores, so no row sits on a threshold), the simulation (the exit rule on the model's own logits) gives every row's
exit and prediction, and for each runtime (eager, or per-stage CUDA graphs at bucketed batch
sizes, :mod:`dyncal.analysis.graphs`) and batch size:

* ``per_batch``: :class:`~dyncal.analysis.early_exit.EarlyExitRunner` on each batch;
* ``rebatched``: the throughput mode (``runner.map``, :mod:`dyncal.analysis.rebatch`);
* ``plain``: the plain deployment (backbone and last head, :mod:`dyncal.analysis.plain`)
  under the same runtime;

are timed round-robin over the same batches (:func:`dyncal.analysis.throughput.measure_throughput`;
CUDA events on a GPU, after a warm-up that runs until block times settle, with cuDNN autotuning
on). The MACs ratio is the plain deployment's MACs over the mean MACs of the exits taken.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from dyncal.analysis.cuda_timing import EventTimer, settle  # noqa: E402
from dyncal.analysis.early_exit import EarlyExitRunner  # noqa: E402
from dyncal.analysis.flops import model_macs, stage_macs  # noqa: E402
from dyncal.analysis.graphs import with_runtime  # noqa: E402
from dyncal.analysis.latency import cpu_model, pinned_threads  # noqa: E402
from dyncal.analysis.plain import plain_deployment, plain_runner  # noqa: E402
from dyncal.analysis.stages import Stages, checked_stages  # noqa: E402
from dyncal.analysis.throughput import measure_throughput  # noqa: E402
from dyncal.calibrate.policy import assign_exits  # noqa: E402
from dyncal.calibrate.scores import exit_scores  # noqa: E402


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """``n`` random images whose scale varies from row to row (so confidence, and exits, vary)."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.25 + 2.0 * (torch.arange(n) % 7).float() / 6
    return torch.randn((n, *shape), generator=g) * scale.view(-1, *([1] * len(shape)))


def _demo(n: int) -> tuple[nn.Module, torch.Tensor]:
    from dyncal.demo import pretrained, validation

    x = validation().tensors[0]
    return pretrained(), x[: min(n, len(x))]


def _cpu_heavy(n: int) -> tuple[nn.Module, torch.Tensor]:
    from bench_models import cpu_heavy

    return cpu_heavy(), _images(n, (3, 32, 32))


def _resnet50(n: int) -> tuple[nn.Module, torch.Tensor]:
    sys.path.insert(0, str(ROOT / "tests"))
    from models_zoo import resnet50_exits

    return resnet50_exits(), _images(n, (3, 224, 224))


MODELS: dict[str, Callable[[int], tuple[nn.Module, torch.Tensor]]] = {
    "demo": _demo,
    "cpu_heavy": _cpu_heavy,
    "resnet50": _resnet50,
}


def _thresholds(scores: np.ndarray, leave: list[float]) -> tuple[list[float], float]:
    """Per exit, a threshold letting about ``leave[j]`` of the rows still present leave, midway in a score gap.

    Returns the thresholds and the smallest distance of a row's score to the threshold of an
    exit it reaches (how far the closest decision is from flipping).
    """
    n, k = scores.shape
    alive = np.ones(n, dtype=bool)
    ts: list[float] = []
    margin = float("inf")
    for j in range(k - 1):
        s = np.sort(scores[alive, j])
        if len(s) < 2:
            ts.append(float("inf"))
            continue
        target = int((1 - leave[min(j, len(leave) - 1)]) * (len(s) - 1))
        lo, hi = max(0, target - len(s) // 10 - 1), min(len(s) - 1, target + len(s) // 10 + 1)
        i = lo + int(np.argmax(np.diff(s[lo : hi + 1])))
        ts.append(float((s[i] + s[i + 1]) / 2))
        margin = min(margin, float(np.abs(s - ts[-1]).min()))
        alive &= scores[:, j] < ts[-1]
    return ts, margin


def _stream(x: torch.Tensor, b: int) -> list[torch.Tensor]:
    return [x[i : i + b] for i in range(0, len(x), b)]


def _macs(stages: Stages, plain: Stages, x1: torch.Tensor) -> tuple[list[int] | None, int | None]:
    """MACs per exit and of the plain deployment (fvcore); None where fvcore is not installed."""
    try:
        import fvcore  # noqa: F401
    except ImportError:
        print("fvcore is not importable: no MACs ratio (see benchmarks/profile_cuda.py to carry it)", flush=True)
        return None, None
    return list(stage_macs(stages, x1).exit_macs), model_macs(plain.modules[0], x1).macs


def _bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every runtime and batch size for one model."""
    batch_sizes = sorted(int(b) for b in args.batch_sizes.split(","))
    rows = {1: args.rows_b1, **{b: args.rows for b in batch_sizes if b > 1}}
    model, x_all = MODELS[name](max(rows.values()))
    model = model.eval().to(device)
    x_all = x_all.to(device)
    stages, _ = checked_stages(model, x_all[: max(2, min(8, len(x_all)))], example=x_all[:2])
    plain = plain_deployment(stages, model=model, example=x_all[:2])
    exit_macs, plain_macs = _macs(stages, plain, x_all[:1])
    with torch.inference_mode():
        logits = torch.cat([torch.stack(stages.run(b), 1).float().cpu() for b in _stream(x_all, 64)]).numpy()
    scores, preds = exit_scores(logits, "maxprob")
    ts, margin = _thresholds(scores, [float(v) for v in args.leave.split(",")])
    sim_exits = assign_exits(scores, ts)
    sim_preds = preds[np.arange(len(sim_exits)), sim_exits]
    k = stages.k
    out: dict[str, Any] = {
        "model": name,
        "k": k,
        "input_shape": list(x_all.shape[1:]),
        "exit_macs": exit_macs,
        "plain_macs": plain_macs,
        "thresholds": ts,
        "threshold_margin": margin,
        "runs": [],
        "capture": {},
    }
    timer = EventTimer(device)
    for runtime in args.runtimes.split(","):
        backend = "cuda" if device.type == "cuda" else "eager"  # on the CPU: the stand-in, same padding
        base = EarlyExitRunner(stages, [*ts, None], [1.0] * k)
        t0 = time.perf_counter()
        kw: dict[str, Any] = {"max_batch_size": max(batch_sizes), "example": x_all[:4], "backend": backend}
        runner = with_runtime(base, runtime, **kw)
        plain_run = with_runtime(plain_runner(plain), runtime, **kw)
        if runtime == "graphs":
            out["capture"][runtime] = {
                "early_exit": runner.stages.info.to_dict(),  # type: ignore[attr-defined]
                "plain": plain_run.stages.info.to_dict(),  # type: ignore[attr-defined]
                "seconds": time.perf_counter() - t0,
            }
        for b in batch_sizes:
            x = x_all[: rows[b]]
            batches = _stream(x, b)
            warm = None
            if device.type == "cuda" and not args.dry:  # clocks up, kernels chosen: blocks of a few batches
                with torch.inference_mode():
                    one = functools.partial(plain_run, batches[0])
                    warm = settle(timer, one, calls=max(1, 16 // b), max_blocks=args.settle_blocks)
            res = measure_throughput(
                runner,
                plain_run,
                batches,
                timer=timer,
                repeats=args.repeats,
                warmup=args.warmup,
                runtime=runtime if device.type == "cuda" or runtime == "eager" else "graphs (cpu stand-in)",
                modes=("per_batch", "rebatched") if b > 1 else ("per_batch",),
                exit_macs=exit_macs,
                plain_macs=plain_macs,
                expected=(sim_exits[: len(x)], sim_preds[: len(x)]),
            )
            run = {"batch_size": b, "rows": len(x), **res.to_dict(), "advice": res.advice}
            run["warmup_settle"] = None if warm is None else warm.to_dict()
            out["runs"].append(run)
            print(
                f"{name} {runtime} b{b}: "
                + ", ".join(f"{m} {res.samples_per_s(m):.1f}/s ({100 * res.spread(m):.1f}%)" for m in res.seconds)
                + f"; agreement {100 * res.agreement:.2f}%; {res.recommendation}",
                flush=True,
            )
    return out


def _machine(device: torch.device, threads: int | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "load_average": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    return info


def render(doc: dict[str, Any]) -> str:
    """The results as Markdown."""
    m = doc["machine"]
    lines = [
        f"# Early exit per batch, re-batched, and the plain deployment: {m['hardware']} ({m['device']})",
        "",
        f"torch {m['torch']}, CUDA {m['cuda']}, Python {m['python']}; {m['cores']} cores, torch threads "
        f"{m['threads']}; load average {m['load_average']:.2f} before, {doc['load_after']:.2f} after; {m['date']}; "
        f"{doc['seconds']:.0f} s. {'DRY RUN (tiny settings).' if doc['dry'] else ''}",
        "",
        f"Thresholds: a share ({doc['settings']['leave']}) of the rows still present leaves at each exit before the "
        "last (maxprob). samples/s",
        "is the median over replicates of all rows; the spread is the largest IQR/median of the modes;",
        "speed-ups are over the plain deployment (backbone and last head) under the same runtime; 'of MACs'",
        "is the re-batched speed-up as a share of the MACs ratio; agreement is with the simulation.",
        "",
    ]
    for md in doc["models"]:
        macs = "-" if md["exit_macs"] is None else ", ".join(f"{v / 1e6:.3g}" for v in md["exit_macs"])
        plain_macs = "-" if md["plain_macs"] is None else f"{md['plain_macs'] / 1e6:.3g}"
        lines += [
            f"## {md['model']} (K={md['k']}, input {tuple(md['input_shape'])})",
            "",
            f"MMACs per exit {macs}; plain deployment {plain_macs} MMACs; thresholds "
            f"{', '.join(f'{t:.4g}' for t in md['thresholds'])} (closest row {md['threshold_margin']:.2g} away).",
            "",
            "| runtime | batch | rows | per-batch /s | re-batched /s | plain /s | per-batch x | re-batched x "
            "| MACs ratio | of MACs | spread | agreement | recommended |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in md["runs"]:
            sps, sp = r["samples_per_s"], r["speedup"]
            reb = "rebatched" in sps
            share = "-" if not reb or not r["macs_ratio"] else f"{100 * sp['rebatched'] / r['macs_ratio']:.0f}%"
            cells = [
                r["runtime"],
                str(r["batch_size"]),
                str(r["rows"]),
                f"{sps['per_batch']:.1f}",
                f"{sps['rebatched']:.1f}" if reb else "-",
                f"{sps['plain']:.1f}",
                f"{sp['per_batch']:.2f}x",
                f"{sp['rebatched']:.2f}x" if reb else "-",
                "-" if r["macs_ratio"] is None else f"{r['macs_ratio']:.2f}x",
                share,
                f"{100 * max(r['spread'].values()):.1f}%",
                f"{100 * r['agreement']:.2f}%",
                r["recommendation"],
            ]
            lines.append("| " + " | ".join(cells) + " |")
        for rt, cap in md["capture"].items():
            ee, pl = cap["early_exit"], cap["plain"]
            lines.append(
                f"\n{rt}: {ee['graphs']} stage graphs for the early exit ({ee['memory_bytes'] / 2**20:.1f} MiB), "
                f"{pl['graphs']} for the plain deployment ({pl['memory_bytes'] / 2**20:.1f} MiB), buckets "
                f"{ee['buckets']}, captured at load in {cap['seconds']:.1f} s ({ee['backend']})."
            )
        lines += ["", "Advice:"] + [f"- {r['runtime']}, batch {r['batch_size']}: {r['advice']}." for r in md["runs"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--models", default=None, help="comma-separated of " + ", ".join(MODELS))
    ap.add_argument("--runtimes", default=None, help="eager,graphs (graphs on the CPU: the padding stand-in)")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--leave", default="0.75", help="share of the rows present leaving at each exit (one, or per exit)")
    ap.add_argument("--rows", type=int, default=None, help="rows timed at batch sizes above 1")
    ap.add_argument("--rows-b1", type=int, default=None, help="rows timed at batch size 1")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--settle-blocks", type=int, default=40, help="GPU: most warm-up blocks before timing")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 on cpu, as found on cuda)")
    ap.add_argument("--out-dir", default=None, help="where the .md and .json go (default: by device)")
    ap.add_argument("--dry", action="store_true", help="tiny settings, to check that the script runs")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.models = args.models or ("demo" if args.dry else "resnet50,demo" if cuda else "demo,cpu_heavy")
    args.runtimes = args.runtimes or ("eager,graphs" if cuda or args.dry else "eager")
    args.rows = args.rows or (64 if args.dry else 512)
    args.rows_b1 = args.rows_b1 or (8 if args.dry else 64 if cuda else 128)
    args.repeats = args.repeats or (3 if args.dry else 10 if cuda else 7)
    if args.dry:
        args.warmup = 1
    threads = args.threads if args.threads is not None else (None if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = True  # kernels chosen in the warm-up, before timing
    t0 = time.perf_counter()
    with pinned_threads(threads) as n_threads:
        machine = _machine(device, n_threads)
        models = [_bench_model(name, args, device) for name in args.models.split(",")]
    doc = {
        "machine": machine,
        "dry": args.dry,
        "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "models": models,
        "seconds": time.perf_counter() - t0,
        "load_after": os.getloadavg()[0],
    }
    text = render(doc)
    print(text)
    if args.out_dir is not None:
        out = Path(args.out_dir)
        stem = f"runtime_modes_{device.type}_{_slug(machine['hardware'])}"
    elif cuda:
        out, stem = HERE / "results", f"runtime_modes_cuda_{_slug(machine['hardware'])}"
    elif args.dry:
        return 0
    else:
        out, stem = HERE, "rebatch_throughput"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
