"""A small trained text classifier with exits, collect to export (issue 20).

The model is ``tests/text_encoders.py``'s transformer encoder (token and position
embeddings, four ``nn.TransformerEncoderLayer``s of width 32 with 4 heads, masked mean
pooling, exits after layers 1, 2 and 4), trained here for a few seconds on generated
sentences of 4 to 32 tokens (nothing downloaded). Then, with the CLI as a user would:
``collect --collate dyncal.inputs:pad_collate``, ``profile --macs-only``, ``solve``,
``export`` and ``verify``. Measured:

1. agreement of the exported package (``dyncal.load_early_exit``) with the simulation (the
   run's logits under the thresholds), row by row, at batch 1 and 32, each batch padded to
   its own longest row (variable lengths);
2. speed-up against the plain deployment (backbone and last head, from the same exported
   graph): the package and the plain deployment timed on the same batches, interleaved,
   one thread; and ``dyncal verify``'s paired speed-up of its in-process early exit;
3. MACs against a count written here from the layer sizes, attention included
   (``4 L D^2`` projections, ``2 L^2 D`` for ``Q K^T`` and ``P V``, ``2 L D F`` feed-forward,
   ``10 L D`` for two layer norms at fvcore's 5 per element; a head ``3 D``): exactly per
   length, and averaged over the data's lengths as the run records them.

Run: ``.venv/bin/python benchmarks/text_exits.py`` (writes text_exits.md and .json).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dyncal  # noqa: E402
from dyncal.analysis.flops import stage_macs  # noqa: E402
from dyncal.analysis.latency import cpu_model, pinned_threads  # noqa: E402
from dyncal.analysis.plain import plain_deployment  # noqa: E402
from dyncal.analysis.stages import build_stages  # noqa: E402
from dyncal.artifacts.thresholds import read_thresholds, thresholds_from_json  # noqa: E402
from dyncal.calibrate.policy import assign_exits  # noqa: E402
from dyncal.calibrate.scores import exit_scores  # noqa: E402
from dyncal.inputs import InputSignature, pad_collate  # noqa: E402
from tests import text_encoders as te  # noqa: E402

HERE = Path(__file__).parent
DIM, FFN, LAYERS, EXIT_AFTER = 32, 64, 4, (1, 2, 4)
TRAINING = {"steps": 300, "lr": 3e-3, "batch_size": 64}
BUDGET = "0.6x"
PASSES = 5


def macs_by_hand(length: int) -> list[int]:
    """MACs of each exit for one sequence of ``length`` tokens, from the layer sizes."""
    layer = 4 * length * DIM * DIM + 2 * length * length * DIM + 2 * length * DIM * FFN + 10 * length * DIM
    head = DIM * te.N_CLASSES
    return [k * layer + (i + 1) * head for i, k in enumerate(EXIT_AFTER)]


def attention_share(length: int) -> float:
    """The share of the last exit's MACs that is ``Q K^T`` and ``P V``."""
    return LAYERS * 2 * length * length * DIM / macs_by_hand(length)[-1]


def _dyncal(*args: object) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "dyncal", *map(str, args)], env=env, capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise SystemExit(f"dyncal {args[0]} failed:\n{res.stdout}\n{res.stderr}")
    return res.stdout + res.stderr


def _batches(data: te.TextMarkers, rows: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, Any]]:
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        inputs, _ = pad_collate([data[int(i)] for i in chunk])
        out.append((np.arange(start, start + len(chunk)), inputs))
    return out


def agreement(
    runner: Any, data: te.TextMarkers, rows: np.ndarray, sim: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    """Exits and predictions of the package against the simulation, row by row, at batch 1 and 32."""
    out = {}
    for b in (1, 32):
        exits, preds = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
        lengths = []
        for at, (ids, mask) in _batches(data, rows, b):
            e, p = runner(ids, mask)
            exits[at], preds[at] = e.numpy(), p.numpy()
            lengths.append(int(ids.shape[1]))
        out[f"b{b}"] = {
            "exit_agreement": float((exits == sim[0]).mean()),
            "prediction_agreement": float((preds == sim[1]).mean()),
            "padded_lengths": sorted(set(lengths)),
        }
    return out


def speed(runner: Any, plain: Any, data: te.TextMarkers, rows: np.ndarray) -> dict[str, Any]:
    """Seconds per pass over the rows, package against plain deployment, interleaved per batch, one thread."""
    out = {}
    with pinned_threads(1), torch.inference_mode():
        for b in (1, 32):
            batches = [x for _, x in _batches(data, rows, b)]
            for ids, mask in batches[:5]:  # warm-up
                runner(ids, mask), plain.run((ids, mask))
            ratios, pkg_s, plain_s = [], [], []
            for p in range(PASSES):
                t_pkg = t_plain = 0.0
                for j, (ids, mask) in enumerate(batches):
                    order = ("pkg", "plain") if (j + p) % 2 == 0 else ("plain", "pkg")
                    for who in order:
                        t0 = time.perf_counter()
                        if who == "pkg":
                            runner(ids, mask)
                            t_pkg += time.perf_counter() - t0
                        else:
                            plain.run((ids, mask))
                            t_plain += time.perf_counter() - t0
                pkg_s.append(t_pkg)
                plain_s.append(t_plain)
                ratios.append(t_plain / t_pkg)
            out[f"b{b}"] = {
                "speedup_median": float(np.median(ratios)),
                "speedup_per_pass": [round(r, 3) for r in ratios],
                "package_ms_per_batch": 1e3 * float(np.median(pkg_s)) / len(batches),
                "plain_ms_per_batch": 1e3 * float(np.median(plain_s)) / len(batches),
                "batches": len(batches),
            }
    return out


def macs_check(net: torch.nn.Module, run: Any, data: te.TextMarkers, sim_exits: np.ndarray) -> dict[str, Any]:
    """dyncal's counts against :func:`macs_by_hand`, exactly per length and averaged over the data."""
    exact = {}
    for length in (4, 8, 16, 32):
        ids = torch.randint(te.FIRST_FILLER, te.VOCAB, (2, length), generator=torch.Generator().manual_seed(length))
        mask = torch.ones_like(ids)
        counts = stage_macs(build_stages(net, (ids, mask)), (ids[:1], mask[:1]), model=net)
        exact[length] = {
            "dyncal": list(counts.exit_macs),
            "by_hand": macs_by_hand(length),
            "eager_model": counts.model_macs,
            "attention_share_last_exit": round(attention_share(length), 4),
            "uncalled_modules": list(counts.uncalled_modules),
        }
    lengths = np.array([len(data.tokens[int(i)]) for i in run.indices])
    by_hand = np.array([macs_by_hand(int(n)) for n in lengths], dtype=np.float64)  # (N, K)
    recorded = [float(m) for m in run.costs.macs]
    return {
        "exact": exact,
        "exact_equal": all(v["dyncal"] == v["by_hand"] == v["dyncal"] for v in exact.values()),
        "recorded_exit_macs": recorded,
        "by_hand_mean_over_all_rows": by_hand.mean(0).tolist(),
        "recorded_over_by_hand": [r / h for r, h in zip(recorded, by_hand.mean(0), strict=True)],
        "macs_basis": run.costs.model.get("macs_basis"),
        "policy_expected_macs_by_hand": float(by_hand[np.arange(len(sim_exits)), sim_exits].mean()),
        "policy_expected_macs_recorded": float(np.asarray(recorded)[sim_exits].mean()),
        "lengths": {"min": int(lengths.min()), "max": int(lengths.max()), "mean": float(lengths.mean())},
    }


def main() -> None:
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="text_exits_"))
    t0 = time.perf_counter()
    net = te.train(te.text_encoder(), **TRAINING)
    train_s = time.perf_counter() - t0
    torch.save(net.state_dict(), tmp / "enc.pt")
    data = te.text_data()
    accuracy = te.exit_accuracy(net, data)
    print(f"trained in {train_s:.1f} s; exit accuracy {accuracy}", flush=True)

    run_dir, th_path, pkg = tmp / "run", tmp / "th.json", tmp / "pkg"
    model = ["--model", "text_encoders:text_encoder", "--weights", tmp / "enc.pt", "--model-path", ROOT / "tests"]
    seconds: dict[str, float] = {}
    for verb, args in [
        ("collect", [*model, "--data", "text_encoders:text_data", "--collate", "dyncal.inputs:pad_collate",
                     "--out", run_dir, "--batch-size", 32]),
        ("profile", [run_dir, "--macs-only"]),
        ("solve", [run_dir, "--budget", BUDGET, "--out", th_path]),
        ("export", [run_dir, "--thresholds", th_path, "--out", pkg]),
        ("verify", [run_dir, "--thresholds", th_path, "--batch-size", "1,32", "--repeats", 5,
                    "--out", tmp / "v.json"]),
    ]:  # fmt: skip
        t0 = time.perf_counter()
        said = _dyncal(verb, *args)
        seconds[verb] = round(time.perf_counter() - t0, 1)
        print(f"dyncal {verb}: {seconds[verb]} s", flush=True)
        if "never ran" in said:
            print(f"  note from {verb}: {said}", flush=True)

    run = dyncal.load_run(run_dir)
    th = read_thresholds(th_path)
    scores, sim_preds = exit_scores(np.asarray(run.logits), th.score, th.temperatures)
    sim_exits = assign_exits(scores, thresholds_from_json(list(th.thresholds)))
    rows = np.asarray(run.indices)
    runner = dyncal.load_early_exit(pkg)
    agree = agreement(runner, data, rows, (sim_exits, sim_preds[np.arange(len(rows)), sim_exits]))
    print(f"agreement {agree}", flush=True)

    example = pad_collate([data[i] for i in range(2)])[0]
    signature = InputSignature.from_dict(run.provenance.extra["inputs"])  # the length is dynamic
    plain = plain_deployment(build_stages(net, example, signature=signature))
    timed = speed(runner, plain, data, rows)
    print(f"speed {timed}", flush=True)
    verified = json.loads((tmp / "v.json").read_text())
    macs = macs_check(net, run, data, sim_exits)
    print(f"MACs exact equal: {macs['exact_equal']}", flush=True)

    doc = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": 1,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
        "model": {"dim": DIM, "ffn": FFN, "layers": LAYERS, "exit_after": list(EXIT_AFTER), "heads": 4},
        "training": {**TRAINING, "seconds": round(train_s, 1), "exit_accuracy": accuracy},
        "verb_seconds": seconds,
        "budget": BUDGET,
        "thresholds": list(th.thresholds),
        "exit_shares": np.bincount(sim_exits, minlength=3).tolist(),
        "simulated_accuracy": float((sim_preds[np.arange(len(rows)), sim_exits] == np.asarray(run.labels)).mean()),
        "package_agreement": agree,
        "package_speed": timed,
        "verify": {k: verified[k] for k in ("agreement", "speedup", "measured_ms", "full_model_ms", "predicted_ms")},
        "macs": macs,
        "package_mb": round(sum(p.stat().st_size for p in pkg.iterdir() if p.is_file()) / 2**20, 2),
    }
    (HERE / "text_exits.json").write_text(json.dumps(doc, indent=1) + "\n")
    (HERE / "text_exits.md").write_text(render(doc))
    print((HERE / "text_exits.md").read_text())


def render(doc: dict[str, Any]) -> str:
    """The results as Markdown."""
    m, mac, tr = doc["machine"], doc["macs"], doc["training"]
    lines = [
        "# A text classifier with exits, collect to export (`benchmarks/text_exits.py`)",
        "",
        f"{m['cpu']}, {m['cores']} cores shared with other work, torch {m['torch']}, Python {m['python']}, "
        f"1 thread; load average {m['load_average_before']:.1f} before, {m['load_average_after']:.1f} after; "
        f"{m['date']}.",
        "",
        f"Model: embeddings, {doc['model']['layers']} `nn.TransformerEncoderLayer`s (width {doc['model']['dim']}, "
        f"{doc['model']['heads']} heads, feed-forward {doc['model']['ffn']}), masked mean pooling, exits after layers "
        f"{', '.join(map(str, doc['model']['exit_after']))}; trained {tr['steps']} steps in {tr['seconds']} s; "
        f"exit accuracy {', '.join(f'{100 * a:.1f}%' for a in tr['exit_accuracy'])} on 600 generated sentences "
        f"of {mac['lengths']['min']}-{mac['lengths']['max']} tokens (mean {mac['lengths']['mean']:.1f}).",
        "",
        f"Verbs (CLI, seconds): {', '.join(f'{k} {v}' for k, v in doc['verb_seconds'].items())}. "
        f"Solved at {doc['budget']}: exit shares {doc['exit_shares']}, simulated accuracy "
        f"{100 * doc['simulated_accuracy']:.1f}%; package {doc['package_mb']} MB.",
        "",
        "## Agreement of the package with the simulation (row by row)",
        "",
        "| batch | exits equal | predictions equal | padded lengths seen |",
        "|---|---|---|---|",
    ]
    for b, a in doc["package_agreement"].items():
        pl = a["padded_lengths"]
        lines.append(
            f"| {b[1:]} | {100 * a['exit_agreement']:.2f}% | {100 * a['prediction_agreement']:.2f}% | "
            f"{len(pl)} lengths, {pl[0]}..{pl[-1]} |"
        )
    lines += [
        "",
        "## Speed-up against the plain deployment",
        "",
        f"The package (`load_early_exit`) and the plain deployment (backbone and last head, cut from the same "
        f"exported graph) on the same padded batches, interleaved, {PASSES} passes; and `dyncal verify`'s paired "
        "speed-up (its in-process early exit against the plain deployment, eager).",
        "",
        "| batch | package ms/batch | plain ms/batch | package speed-up (median, per pass) | verify speed-up |",
        "|---|---|---|---|---|",
    ]
    for b, s in doc["package_speed"].items():
        v = doc["verify"]["speedup"].get(f"cpu/{b}")
        lines.append(
            f"| {b[1:]} | {s['package_ms_per_batch']:.3f} | {s['plain_ms_per_batch']:.3f} | "
            f"{s['speedup_median']:.2f}x ({', '.join(map(str, s['speedup_per_pass']))}) | "
            f"{'-' if v is None else f'{v:.2f}x'} |"
        )
    lines += [
        "",
        "## MACs against a count by hand (attention included)",
        "",
        "Per exit, one sequence of L tokens; `dyncal` is `stage_macs` on the exported stages (the eager model, "
        "which takes MultiheadAttention's fused kernel, is counted too).",
        "",
        "| L | dyncal | by hand | eager model (last exit) | attention share of the last exit | uncalled modules |",
        "|---|---|---|---|---|---|",
    ]
    for length, e in mac["exact"].items():
        lines.append(
            f"| {length} | {', '.join(map(str, e['dyncal']))} | {', '.join(map(str, e['by_hand']))} | "
            f"{e['eager_model']} | {100 * e['attention_share_last_exit']:.1f}% | {e['uncalled_modules'] or 'none'} |"
        )
    lines += [
        "",
        f"Equal at every length: {mac['exact_equal']}. The run records {mac['macs_basis']!r}: "
        f"{', '.join(f'{x:,.0f}' for x in mac['recorded_exit_macs'])} per exit, against "
        f"{', '.join(f'{x:,.0f}' for x in mac['by_hand_mean_over_all_rows'])} by hand averaged over all "
        f"{len(doc['exit_shares']) and sum(doc['exit_shares'])} rows "
        f"(ratio {', '.join(f'{r:.3f}' for r in mac['recorded_over_by_hand'])}). Expected MACs of the solved "
        f"policy: {mac['policy_expected_macs_recorded']:,.0f} from the recorded per-exit MACs, "
        f"{mac['policy_expected_macs_by_hand']:,.0f} by hand, each row at its own length.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
