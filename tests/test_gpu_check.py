"""The prepared GPU check cannot rot: its shell parses, and its Python runs here in a dry mode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.integration


def test_the_gpu_check_script_parses():
    bash = shutil.which("bash")
    assert bash is not None
    res = subprocess.run([bash, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = SCRIPT.read_text()
    assert "rebatch_throughput.py" in text and "--dry" in text  # step 1 is the script tested below


def test_the_runtime_modes_benchmark_runs_dry_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rebatch_throughput.py"), "--dry", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (doc_file,) = tmp_path.glob("runtime_modes_cpu_*.json")
    doc = json.loads(doc_file.read_text())
    assert doc["dry"] and [m["model"] for m in doc["models"]] == ["demo"]
    runs = doc["models"][0]["runs"]
    assert {(r["runtime"], r["batch_size"]) for r in runs} == {
        ("eager", 1),
        ("eager", 32),
        ("graphs (cpu stand-in)", 1),
        ("graphs (cpu stand-in)", 32),
    }
    assert all(r["agreement"] == 1.0 for r in runs)
    assert all(
        set(r["samples_per_s"]) == ({"per_batch", "plain"} | ({"rebatched"} if r["batch_size"] > 1 else set()))
        for r in runs
    )
    assert doc["models"][0]["capture"]["graphs"]["early_exit"]["graphs"] == 4 * 6
    md = doc_file.with_suffix(".md").read_text()
    assert "DRY RUN" in md and "| graphs (cpu stand-in) | 32 |" in md and "Advice:" in md


def test_the_verify_summary_reads_a_verify_document_with_throughput(tmp_path):
    """Step 3 prints each demo verify (per runtime, with --throughput) through benchmarks/verify_summary.py."""
    from dyncal.artifacts.verify import ModelIdentity, PairedTiming, VerifyResult

    timing = PairedTiming("cuda/b32", 32, ((1.0,) * 3,) * 3, ((2.0,) * 3,) * 3, predicted_ms=None)
    entry = {
        "version": 1, "key": "cuda/b32", "runtime": "graphs", "timer": "cuda_events", "batch_size": 32,
        "samples": 2048, "seconds": {"per_batch": [1.1] * 3, "rebatched": [0.8] * 3, "plain": [1.0] * 3},
        "samples_per_s": {"per_batch": 1861.8, "rebatched": 2560.0, "plain": 2048.0},
        "speedup": {"per_batch": 0.91, "rebatched": 1.25, "plain": 1.0},
        "agreement": 1.0, "exit_shares": [0.5, 0.5], "macs_ratio": 1.5, "recommendation": "rebatched",
    }  # fmt: skip
    runtime = {"runtime": "graphs", "early_exit": "graphs", "plain": "graphs (plain deployment)"}
    doc = VerifyResult(
        "r", "d", ModelIdentity("m", None), 2048, 1.0, 1.0, 0.9, 0.9, (0.5, 0.5), (0.5, 0.5), (timing,),
        "cuda:0", "NVIDIA H200", None, settings={"runtime": runtime}, throughput=(entry,),
    )  # fmt: skip
    path = tmp_path / "demo_verify_graphs.json"
    doc.save(path)
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "verify_summary.py"), str(path)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[1].startswith("agreement 1.0 hardware NVIDIA H200 runtime {'runtime': 'graphs'")
    assert lines[2].startswith("cuda/b32 measured 1.0000 ms, predicted -, full model 2.0000, speed-up 2.00")
    assert lines[3] == (
        "cuda/b32 samples/s: per_batch 1861.8, rebatched 2560.0, plain 2048.0 (per_batch 0.91x, rebatched 1.25x); "
        "MACs ratio 1.50x; agreement 1.0; deploy rebatched"
    )
