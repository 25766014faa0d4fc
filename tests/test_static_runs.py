"""Static models as runs (K = 1): collected, imported, profiled and shown like any multi-exit run.

A plain classifier returning one (B, C) tensor (or a list of one) is measured the same way as an
early-exit model, to be compared with one; the verbs that choose thresholds refuse it in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error

from dyncal.artifacts.run import load_run

TESTS = Path(__file__).parent
# toy_models.single_output: Linear(4, 8) -> ReLU -> Linear(8, 8) -> ReLU -> Linear(8, 3);
# fvcore MACs per sample: 4*8 + 8*8 + 8*3 = 120.
SINGLE_MACS = 120

LIST_OF_ONE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.body, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return [self.head(torch.relu(self.body(x)))]   # 6*3 + 4*6 = 42 MACs


def net():
    return Net().eval()
"""


@pytest.fixture
def static_run(cli, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    res = cli(
        "collect",
        "--model",
        "toy_models:single_output",
        "--model-path",
        TESTS,
        "--data",
        "toy_models:toy_dataset",
        "--out",
        out,
        "-q",
    )
    assert res.exit_code == 0, res.output
    assert "K=1, C=3" in res.stderr
    return out


def test_collect_a_plain_classifier_as_a_static_run(static_run, cli):
    import toy_models

    run = load_run(static_run)
    assert (run.n, run.k, run.c) == (23, 1, 3)
    x = torch.stack([toy_models.toy_dataset()[i][0] for i in range(23)])
    with torch.inference_mode():
        want = toy_models.single_output().eval()(x).numpy()
    np.testing.assert_allclose(run.logits[:, 0], want, rtol=1e-6, atol=1e-6)
    doc = json.loads(cli("info", static_run, "--json").stdout)
    assert (doc["n"], doc["k"], doc["c"]) == (23, 1, 3)
    assert len(doc["exits"]) == 1 and doc["exits"][0]["macs"] is None
    labels = np.asarray(run.labels)
    assert doc["exits"][0]["accuracy"] == pytest.approx(float(np.mean(want.argmax(1) == labels)))


def test_collect_a_model_returning_a_list_of_one(cli, tmp_path, toy_npz):
    (tmp_path / "one_exit.py").write_text(LIST_OF_ONE)
    out = tmp_path / "run"
    res = cli("collect", "--model", "one_exit:net", "--model-path", tmp_path, "--data", toy_npz, "--out", out, "-q")
    assert res.exit_code == 0, res.output
    run = load_run(out)
    assert (run.k, run.c) == (1, 3)
    res = cli("profile", out, "--macs-only", "--json")
    assert res.exit_code == 0, res.output
    assert [e["macs"] for e in json.loads(res.stdout)["exits"]] == [42]


def test_profile_a_static_run_counts_and_times_its_one_stage(static_run, cli):
    res = cli("profile", static_run, "--batch-size", "1,4", "--repeats", "3", "--warmup", "1", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [(e["stage_macs"], e["macs"]) for e in doc["exits"]] == [(SINGLE_MACS, SINGLE_MACS)]
    info = json.loads(cli("info", static_run, "--json").stdout)
    exit1 = info["exits"][0]
    assert exit1["macs"] == SINGLE_MACS
    assert set(exit1["latency_ms"]) == {"cpu/b1", "cpu/b4"} and all(v > 0 for v in exit1["latency_ms"].values())
    assert set(info["full_model_ms"]) == {"cpu/b1", "cpu/b4"}
    assert load_run(static_run).costs.macs == (float(SINGLE_MACS),)


def test_import_a_static_run(cli, tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 1, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 40)
    np.savez(tmp_path / "static.npz", logits=logits, labels=labels)
    res = cli("import", tmp_path / "static.npz", "--macs", "4.1e9", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    doc = json.loads(cli("info", tmp_path / "run", "--json").stdout)
    assert (doc["k"], doc["exits"][0]["macs"]) == (1, 4.1e9)
    assert doc["exits"][0]["accuracy"] == pytest.approx(float(np.mean(logits[:, 0].argmax(1) == labels)))


@pytest.mark.parametrize(
    "verb",
    [
        ("solve", "--budget", "1x", "--out", "th.json"),
        ("frontier", "--out", "f.csv"),
        ("report", "--out", "r.pdf"),
        ("plot", "--kind", "frontier", "--out", "f.png"),
    ],
)
def test_verbs_that_choose_thresholds_refuse_a_static_run(cli, tmp_path, verb):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "s.npz", logits=rng.normal(size=(30, 1, 3)), labels=rng.integers(0, 3, 30))
    assert cli("import", tmp_path / "s.npz", "--macs", "1e6", "--out", tmp_path / "run").exit_code == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    name, *rest = verb
    rest = [str(tmp_path / r) if r.endswith((".json", ".csv", ".pdf", ".png")) else r for r in rest]
    res = cli(name, tmp_path / "run", *rest)
    assert_clean_error(res, r"K=1 exit \(a static model\).*--compare")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
