"""Profile the ResNet-50-with-three-heads test model through the ``dyncal profile`` CLI.

Usage (from the repository root)::

    python benchmarks/profile_cuda.py                       # --device cuda, batch sizes 1,32
    python benchmarks/profile_cuda.py --device cpu --batch-size 1 --repeats 5   # dry run

It builds a throw-away run whose logits are random (profile needs only the model), runs
``python -m dyncal profile RUN --model models_zoo:resnet50_exits --model-path tests
--input-shape 3,224,224 --device DEVICE --batch-size ... --json`` and writes

* ``benchmarks/results/profile_resnet50_<device>_<hardware>.json`` (the CLI's document), and
* ``benchmarks/results/profile_resnet50_<device>_<hardware>.md`` (a table for people),

with the GPU's (or CPU's) name in the file names and in the files. Nothing is downloaded:
the model has random weights (``torchvision.models.resnet50(weights=None)``).

dyncal is imported from this checkout (the script puts the repository root on
``PYTHONPATH``), so nothing needs installing where torch, torchvision, numpy, typer and
rich already are. fvcore and its small pure-Python dependencies may be missing on a GPU
image; copy them from a machine that has them and put them on ``PYTHONPATH``::

    # here
    mkdir -p .devsite && echo /.devsite/ >> .git/info/exclude
    cp -r .venv/lib/python3.11/site-packages/{fvcore,iopath,yacs,termcolor} .devsite/
    # there (carry .devsite)
    PYTHONPATH=.devsite python3 benchmarks/profile_cuda.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (dry run)")
    ap.add_argument("--batch-size", default=None, help="comma-separated; default 1,32 on cuda, 1 on cpu")
    ap.add_argument("--threads", default=None, help="CPU threads pinned while timing")
    ap.add_argument("--repeats", default="25")
    ap.add_argument("--warmup", default="10")
    args = ap.parse_args()
    batch = args.batch_size or ("1" if args.device == "cpu" else "1,32")

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        npz = Path(tmp) / "logits.npz"
        np.savez(
            npz,
            logits=rng.normal(size=(8, 3, 1000)).astype(np.float32),
            labels=rng.integers(0, 1000, 8),
        )
        run = Path(tmp) / "run"
        subprocess.run(
            [sys.executable, "-m", "dyncal", "import", str(npz), "--out", str(run)],
            check=True,
            env=env,
        )
        cmd = [
            sys.executable,
            "-m",
            "dyncal",
            "profile",
            str(run),
            "--model",
            "models_zoo:resnet50_exits",
            "--model-path",
            str(ROOT / "tests"),
            "--input-shape",
            "3,224,224",
            "--device",
            args.device,
            "--batch-size",
            batch,
            "--repeats",
            args.repeats,
            "--warmup",
            args.warmup,
            "--json",
        ]
        if args.threads:
            cmd += ["--threads", args.threads]
        print("+", " ".join(cmd), file=sys.stderr)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    doc = json.loads(proc.stdout)
    first = next(iter(doc["latency"].values()))
    hardware = first["hardware"]
    doc["benchmark"] = {
        "command": " ".join(cmd[2:]),
        "wall_seconds": round(seconds, 1),
        "hardware": hardware,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"profile_resnet50_{_slug(args.device)}_{_slug(hardware)}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")

    keys = sorted(doc["latency"])
    lines = [
        f"# dyncal profile: ResNet-50 with three exits on {args.device} ({hardware})",
        "",
        f"torch {first['settings'].get('torch')}, CUDA {first['settings'].get('cuda')}, "
        f"threads {first['threads']}, repeats {first['settings'].get('repeats')}, "
        f"warm-up {first['settings'].get('warmup')}, timer {first['settings'].get('timer')}",
        "",
        "| exit | stage MACs | MACs (cum.) | " + " | ".join(f"ms {k} (median, IQR)" for k in keys) + " |",
        "|---:|---:|---:|" + "---:|" * len(keys),
    ]
    for e in doc["exits"]:
        i = e["exit"] - 1
        cells = [f"{doc['latency'][k]['exit_ms'][i]:.3f} ({doc['latency'][k]['stage_iqr_ms'][i]:.3f})" for k in keys]
        lines.append(f"| {e['exit']} | {e['stage_macs']:,} | {e['macs']:,} | " + " | ".join(cells) + " |")
    lines.append("")
    for k in keys:
        lat = doc["latency"][k]
        noisy = lat["settings"].get("noisy") or {}
        lines.append(
            f"- {k}: full model {lat['full_model_ms']:.3f} ms, "
            f"exit decision {lat['decision_ms']:.4f} ms" + (f", noisy: {', '.join(noisy)}" if noisy else "")
        )
    lines.append(
        f"- fvcore on the whole eager model: {doc['model_macs']:,} MACs; on the unsplit graph: "
        f"{doc['graph_macs']:,}; sum of stages: {doc['exits'][-1]['macs']:,}"
    )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
