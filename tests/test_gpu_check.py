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
