"""verify and demo: a real early exit agrees with the simulation; the demo runs end to end."""

from __future__ import annotations

import json
import re
import weakref

import numpy as np
import pytest
import torch
from conftest import assert_clean_error
from synthetic_profiles import synthetic_profile

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.latency import Timer
from dyncal.analysis.stages import build_stages
from dyncal.artifacts.run import load_run
from dyncal.artifacts.thresholds import read_thresholds
from dyncal.artifacts.verify import VerifyResult
from dyncal.demo import pretrained, validation
from dyncal.errors import DyncalError
from dyncal.verbs.verify import MIN_TIMED_BATCHES, verify_run


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from typer.testing import CliRunner

    from dyncal.cli import app

    out = tmp_path_factory.mktemp("demo") / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    (out.parent / "demo-output.txt").write_text(res.output)  # beside the demo folder, not in it
    return out


def test_demo_writes_every_artifact(demo_dir):
    for name in ("run/run.json", "thresholds.json", "frontier.csv", "report.pdf", "verify.json"):
        assert (demo_dir / name).exists(), name
    run = load_run(demo_dir / "run")
    assert (run.n, run.k, run.c) == (797, 4, 10)
    assert len(run.provenance.weights_sha256) == 64 and run.provenance.extra["weights"].endswith(".pt")
    assert run.costs.macs is not None and set(run.costs.latency) == {"cpu/b1", "cpu/b32"}
    assert (demo_dir / "report.pdf").read_bytes().startswith(b"%PDF")
    from pypdf import PdfReader

    from dyncal.reports.decision import Criterion, decide

    # Judged on structure, not on this machine's speed: any verdict is right if it follows from
    # the criteria the page shows, and the accuracy criterion (no clock in it) has thresholds.json's numbers.
    first_page = PdfReader(demo_dir / "report.pdf").pages[0].extract_text()
    criterion = r"^(accuracy drop vs last exit|speed-up \(latency, cpu/b1\), measured) (\S+) .* (\w+)$"
    rows = {name: (estimate, status) for name, estimate, status in re.findall(criterion, first_page, re.M)}
    assert set(rows) == {"accuracy drop vs last exit", "speed-up (latency, cpu/b1), measured"}, first_page
    drop, status = rows["accuracy drop vs last exit"]
    th = json.loads((demo_dir / "thresholds.json").read_text())
    last_alone = th["static"][-1]["holdout_accuracy"]
    assert status == "PASS" and float(drop) == pytest.approx(100 * (last_alone - th["holdout_accuracy"]), abs=0.005)
    verdict = decide([Criterion(name, 0.0, None, 0.0, ">=", status.lower()) for name, (_, status) in rows.items()])
    assert verdict in ("GO", "NO-GO", "INCONCLUSIVE")
    assert first_page.split("Should this early-exit model ship?")[1].split()[0] == verdict
    summary = (demo_dir.parent / "demo-output.txt").read_text()
    assert f"report: {demo_dir / 'report.pdf'}: {verdict} (" in summary


def test_demo_refuses_existing_folder(cli, demo_dir):
    from dyncal.artifacts.ownership import foreign_entry
    from dyncal.verbs.demo import _demo_entry

    assert_clean_error(cli("demo", "--out", demo_dir), "already exists.*--overwrite")
    assert (demo_dir / "report.pdf").exists()
    assert foreign_entry(demo_dir, _demo_entry) is None  # every file is recognised as dyncal's: --overwrite may replace


def test_verify_agrees_with_simulation(cli, demo_dir):
    res = cli(
        "verify",
        demo_dir / "run",
        "--thresholds",
        demo_dir / "thresholds.json",
        "--batch-size",
        "1,8",
        "--limit",
        200,
        "--max-seconds",
        1000,  # time every batch, so the prediction covers the same 200 rows
        "--repeats",
        2,
        "--json",
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["n"] == 200
    # The runtime recomputes logits, so a score within float noise of a threshold could flip;
    # on this model and these thresholds none does.
    assert doc["agreement"] == 1.0
    assert doc["runtime_accuracy"] == doc["simulated_accuracy"]
    assert doc["runtime_exit_shares"] == doc["simulated_exit_shares"]
    assert set(doc["measured_ms"]) == {"cpu/b1", "cpu/b8"}
    # b1 and b32 were profiled by the demo; b8 is predicted from them by interpolation.
    assert doc["predicted_ms"]["cpu/b1"] > 0 and doc["predicted_ms"]["cpu/b8"] > 0
    assert doc["settings"]["coverage"]["cpu/b1"]["batches_timed"] == 200
    # At batch 1 the prediction is the per-sample expectation over the same rows.
    run = load_run(demo_dir / "run")
    th = json.loads((demo_dir / "thresholds.json").read_text())
    from dyncal.artifacts.thresholds import thresholds_from_json
    from dyncal.calibrate.policy import assign_exits
    from dyncal.calibrate.scores import exit_scores

    scores, _ = exit_scores(run.logits[:200], th["score"], th["temperatures"])
    exits = assign_exits(scores, thresholds_from_json(th["thresholds"]))
    per_sample = np.asarray(run.costs.latency["cpu/b1"].early_exit_ms)[exits].mean()
    assert doc["predicted_ms"]["cpu/b1"] == pytest.approx(per_sample)
    assert all(v > 0 for v in doc["measured_ms"].values())


def test_runner_stops_computing_when_everyone_has_left():
    model = pretrained()
    stages = build_stages(model, torch.zeros(2, 1, 8, 8))
    calls = [0] * stages.k
    for i, m in enumerate(stages.modules):
        m.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    x = torch.stack([validation()[i][0] for i in range(16)])
    exits, preds = EarlyExitRunner(stages, [-1.0, 2.0, 2.0, None], [1.0] * 4)(x)
    assert exits.tolist() == [0] * 16 and calls == [1, 0, 0, 0]
    with torch.inference_mode():
        np.testing.assert_array_equal(preds.numpy(), model(x)[0].argmax(1).numpy())
    # Nobody leaves before the last exit: every stage runs once, predictions are the last exit's.
    calls[:] = [0] * stages.k
    exits, preds = EarlyExitRunner(stages, [2.0, 2.0, 2.0, None], [1.0] * 4)(x)
    assert exits.tolist() == [3] * 16 and calls == [1, 1, 1, 1]
    with torch.inference_mode():
        np.testing.assert_array_equal(preds.numpy(), model(x)[3].argmax(1).numpy())


def test_runner_mixed_exits_keep_sample_order():
    model = pretrained()
    stages = build_stages(model, torch.zeros(2, 1, 8, 8))
    x = torch.stack([validation()[i][0] for i in range(64)])
    t = [0.5, 0.9, 0.95, None]
    exits, preds = EarlyExitRunner(stages, t, [1.0] * 4)(x)
    with torch.inference_mode():
        probs = [torch.softmax(o, 1) for o in model(x)]
    for n in range(64):
        k = next((j for j in range(3) if probs[j][n].max() >= t[j]), 3)
        assert exits[n] == k and preds[n] == probs[k][n].argmax()
    assert len(set(exits.tolist())) > 1  # the case really mixes exits


def test_verify_errors(cli, demo_dir, tmp_path):
    assert_clean_error(cli("verify", demo_dir / "run", "--thresholds", tmp_path / "none.json"), "no such file")
    doc = json.loads((demo_dir / "thresholds.json").read_text())
    doc["thresholds"] = [0.5, None]
    doc["temperatures"] = [1.0, 1.0]
    doc["exit_shares"], doc["temperature_at_bound"] = [0.5, 0.5], None  # a whole K=2 document
    doc["holdout"]["exit_shares"] = [0.5, 0.5]
    (tmp_path / "k2.json").write_text(json.dumps(doc))
    assert_clean_error(
        cli("verify", demo_dir / "run", "--thresholds", tmp_path / "k2.json"), "K=2 exits but run .* has K=4"
    )
    assert_clean_error(
        cli("verify", demo_dir / "run", "--thresholds", demo_dir / "thresholds.json", "--batch-size", "0"), "positive"
    )


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A collected two-exit MLP run with MACs and thresholds (no latency)."""
    from conftest import TESTS
    from typer.testing import CliRunner

    from dyncal.cli import app

    d = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    np.savez(d / "x.npz", inputs=rng.normal(size=(60, 4)).astype(np.float32), labels=rng.integers(0, 3, 60))
    runner = CliRunner()
    for args in (
        ["collect", "--model", "toy_models:two_exit", "--model-path", TESTS, "--data", d / "x.npz", "--out", d / "run"],
        ["profile", d / "run", "--macs-only"],
        ["solve", d / "run", "--budget", "0.8x", "--holdout", "0", "--out", d / "t.json"],
    ):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, (args, res.output, res.exception)
    return d


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        # the run's model is checked first, on recorded rows
        ("toy_models:tiny_conv", r"is not the model run .* fails on the run's recorded inputs \(RuntimeError"),
        ("toy_models:mixed_classes", r"disagree on the number of classes"),
    ],
)
def test_verify_with_a_model_that_does_not_fit_the_run(cli, toy_run, model, pattern):
    from conftest import TESTS

    res = cli("verify", toy_run / "run", "--thresholds", toy_run / "t.json", "--model", model, "--model-path", TESTS)
    assert_clean_error(res, pattern)


def test_verify_toy_run_agrees(cli, toy_run):
    res = cli("verify", toy_run / "run", "--thresholds", toy_run / "t.json", "--batch-size", "1,7", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["agreement"] == 1.0 and doc["predicted_ms"] == {"cpu/b1": None, "cpu/b7": None}


# ----------------------------------------------------------------- the timing engine, on a fake clock


class StepClock:
    """A clock that moves ``step`` seconds each time it is read (nothing sleeps)."""

    def __init__(self, step: float = 1.0) -> None:
        self.t = 0.0
        self.step = step
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.t += self.step
        return self.t


class VirtualClock:
    """A clock that moves only when the timed code charges it."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def charge(self, ms: float) -> None:
        self.t += ms / 1e3


def test_pairs_alternate_and_keep_every_replicate():
    clock = VirtualClock()
    order: list[str] = []

    def work(name: str, ms: list[float]):
        def fn():
            order.append(name)
            clock.charge(ms[len([o for o in order if o == name]) - 1])

        return fn

    timer = Timer(torch.device("cpu"), clock=clock)
    a_ms, b_ms = timer.paired(work("a", [1, 2, 3, 4, 5]), work("b", [10, 20, 30, 40, 50]), 5)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert a_ms == pytest.approx([1, 2, 3, 4, 5]) and b_ms == pytest.approx([10, 20, 30, 40, 50])  # pair by pair
    order.clear()
    timer.paired(work("a", [1] * 4), work("b", [1] * 4), 4, a_first=False)
    assert order == ["b", "a", "a", "b", "b", "a", "a", "b"]
    # settle: each member runs untimed right before its timed call; only the timed call counts
    order.clear()
    a_ms, b_ms = timer.paired(work("a", [7, 1, 7, 2]), work("b", [9, 3, 9, 4]), 2, settle=1)
    assert order == ["a", "a", "b", "b", "b", "b", "a", "a"]
    assert a_ms == pytest.approx([1, 2]) and b_ms == pytest.approx([3, 4])


def test_block_size_grows_until_the_clock_overhead_is_negligible():
    clock = VirtualClock()
    timer = Timer(torch.device("cpu"), clock=clock)
    calls = [0]

    def fn():
        calls[0] += 1
        clock.charge(0.3)

    assert timer.block_calls(fn, min_block_ms=5.0, max_calls=1000) == 17  # ceil(5 / 0.3)
    assert timer.block_calls(fn, min_block_ms=5.0, max_calls=4) == 4
    assert timer.block_calls(fn, min_block_ms=0.0, max_calls=1000) == 1
    calls[0] = 0
    reps = timer.round_robin([fn, fn], [3, 2], repeats=4)
    assert calls[0] == 4 * (3 + 2) and reps == [pytest.approx([0.3] * 4)] * 2  # ms per call, every replicate


def test_threads_are_pinned_while_verifying_and_restored(demo_dir):
    before = torch.get_num_threads()
    seen = []

    def progress(key, done, total):
        seen.append(torch.get_num_threads())

    result = verify_run(
        demo_dir / "run",
        read_thresholds(demo_dir / "thresholds.json"),
        threads=1,
        limit=12,
        repeats=2,
        progress=progress,
    )
    assert result.threads == 1 and result.settings["threads_from"] == "--threads"
    assert set(seen) == {1} and torch.get_num_threads() == before


# ----------------------------------------------------------------- verify: time bound, streaming, output


def test_max_seconds_bounds_the_timing_but_agreement_covers_every_sample(demo_dir):
    th = read_thresholds(demo_dir / "thresholds.json")
    kw = dict(batch_sizes=(1, 4), limit=60, repeats=2, warmup=0)
    # Each clock read moves 1 s: after three batches (the minimum) the bound has passed.
    bounded = verify_run(demo_dir / "run", th, max_seconds=4.0, clock=StepClock(1.0), **kw)
    cov = bounded.settings["coverage"]
    assert cov["cpu/b1"]["batches_timed"] == MIN_TIMED_BATCHES == cov["cpu/b4"]["batches_timed"]
    assert cov["cpu/b1"]["batches"] == 60 and cov["cpu/b4"]["batches"] == 15
    assert bounded.settings["stopped_early"] and cov["cpu/b1"]["samples_timed"] == 3
    assert [t.batches for t in bounded.timings] == [3, 3]
    assert all(t.repeats == 2 for t in bounded.timings)
    # equal times: the speed-up is settled at once, no round of more pairs (dyncal/pair_rounds.py)
    assert cov["cpu/b1"]["pairs"]["stopped"] == "settled" and cov["cpu/b4"]["pairs"]["pairs_per_batch"] == 2
    assert bounded.n == 60 and bounded.agreement == 1.0  # the untimed rows were replayed too
    assert sum(bounded.runtime_exit_shares) == pytest.approx(1.0)
    # every pair read the injected clock: 1 s between reads -> 1000 ms per timing
    assert bounded.timings[0].early_exit_ms[0] == pytest.approx((1000.0, 1000.0))
    unbounded = verify_run(demo_dir / "run", th, max_seconds=1e9, clock=StepClock(1.0), **kw)
    cov = unbounded.settings["coverage"]
    assert cov["cpu/b1"]["batches_timed"] == 60 and cov["cpu/b4"]["batches_timed"] == 15
    assert not unbounded.settings["stopped_early"]
    assert unbounded.runtime_exit_shares == bounded.runtime_exit_shares


class HeldItems(torch.utils.data.Dataset):
    """The demo's digits, refusing to hand out an item while more than ``most`` are still held."""

    def __init__(self, most: int) -> None:
        self.base = validation()
        self.most = most
        self.alive = 0
        self.peak = 0

    def __len__(self) -> int:
        return len(self.base)

    def _release(self) -> None:
        self.alive -= 1

    def __getitem__(self, i):
        if self.alive >= self.most:
            raise RuntimeError(f"{self.alive} items held at once; verify must stream batches")
        x, y = self.base[i]
        x = x.clone()
        weakref.finalize(x, self._release)
        self.alive += 1
        self.peak = max(self.peak, self.alive)
        return x, y


def test_verify_streams_batches_from_the_data_set(demo_dir):
    th = read_thresholds(demo_dir / "thresholds.json")
    data = HeldItems(most=8)
    result = verify_run(demo_dir / "run", th, batch_sizes=(8, 2), limit=100, repeats=1, data=data)
    assert result.n == 100 and result.agreement == 1.0
    assert 2 <= data.peak <= 8
    # Stacking every input first (as verify once did) is what the data set refuses.
    whole = HeldItems(most=8)
    with pytest.raises(RuntimeError, match="items held at once"):
        torch.stack([whole[i][0] for i in range(100)])


def test_verify_out_is_bound_to_run_thresholds_and_model(cli, demo_dir, tmp_path):
    out = tmp_path / "verify.json"
    args = ["verify", demo_dir / "run", "--thresholds", demo_dir / "thresholds.json", "--limit", 40]
    res = cli(*args, "--batch-size", "1,4", "--max-seconds", 2, "--out", out)
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.stderr
    v = VerifyResult.load(out)
    run = load_run(demo_dir / "run")
    th = read_thresholds(demo_dir / "thresholds.json")
    assert v.run_fingerprint == run.fingerprint and v.decision_fingerprint == th.decision_fingerprint
    assert v.model.spec == run.provenance.model and v.model.weights_sha256 == run.provenance.weights_sha256
    assert (
        v.mismatch(
            run_fingerprint=run.fingerprint,
            decision_fingerprint=th.decision_fingerprint,
            weights_sha256=run.provenance.weights_sha256,
        )
        is None
    )
    assert [t.key for t in v.timings] == ["cpu/b1", "cpu/b4"] and v.n == 40
    assert v.settings["max_seconds"] == 2 and v.settings["repeats"] == 5
    for t in v.timings:
        lo, hi = t.speedup_ci
        assert lo <= hi and t.predicted_ms is not None and t.batches >= MIN_TIMED_BATCHES
    # an existing file is refused without --overwrite and left as it was
    before = out.read_bytes()
    assert_clean_error(cli(*args, "--out", out), "already exists.*--overwrite")
    assert out.read_bytes() == before
    res = cli(*args, "--out", out, "--overwrite", "--max-seconds", 1)
    assert res.exit_code == 0, res.output
    assert VerifyResult.load(out).settings["max_seconds"] == 1


def test_cli_prints_the_thread_count_and_the_paired_table(cli, demo_dir):
    args = ["verify", demo_dir / "run", "--thresholds", demo_dir / "thresholds.json", "--limit", 20]
    res = cli(*args, "--max-seconds", 1)
    assert res.exit_code == 0, res.output
    prof_threads = load_run(demo_dir / "run").costs.latency["cpu/b1"].threads
    assert f"threads: {prof_threads} (from the profile of cpu/b1)" in res.stdout
    for col in ("measured", "predicted", "plain deployment", "speed-up"):
        assert col in res.stdout
    res = cli(*args, "--max-seconds", 1, "--threads", 1)
    assert res.exit_code == 0 and "threads: 1 (from --threads)" in res.stdout
    doc = json.loads(cli(*args, "--max-seconds", 1, "--threads", 1, "--json").stdout)
    assert doc["threads"] == 1 and doc["settings"]["threads"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_seconds": -1.0}, "`max_seconds` must be positive, got -1"),
        ({"max_seconds": 0.0}, "`max_seconds` must be positive, got 0"),
        ({"repeats": 0}, "`repeats` must be at least 1, got 0"),
        ({"threads": 0}, "`threads` must be at least 1, got 0"),
        ({"warmup": -1}, "`warmup` must be at least 0, got -1"),
        ({"batch_sizes": ()}, "`batch_sizes` is empty"),
    ],
)
def test_verify_refuses_bad_settings(demo_dir, kwargs, message):
    th = read_thresholds(demo_dir / "thresholds.json")
    with pytest.raises(DyncalError, match=re.escape(message)):
        verify_run(demo_dir / "run", th, **kwargs)


# ----------------------------------------------------------------- the cost model, by hand


def _profile(**extra):
    """A cpu/b4 profile; without ``exit_path_ms`` its paths are the stages plus decisions: 18, 36, 45 ms."""
    stages = ((9.0,), (9.0,), (9.0,))  # unused once exit paths exist
    return synthetic_profile("cpu", 4, stages, (9.0,), (20.0,), 1, "x", {"compaction_rows": 4}, **extra)


def test_cost_model_follows_what_the_runner_does():
    from dyncal.analysis.costmodel import predict_batch_ms, predict_batches_ms
    from dyncal.artifacts.costs import CostTable

    prof = _profile(
        exit_path_ms=((1.0,), (3.0,), (6.0,)),  # all 4 rows leave at exit k: stage increments 1, 2, 3
        exit_path_rows_ms={2: ((0.5,), (1.5,), (3.0,))},  # at 2 rows: 0.5, 1.0, 1.5
        compaction_ms=((0.25,), (0.4,)),
    )
    costs = CostTable(latency={"cpu/b4": prof})
    cases = {
        (0, 0, 0, 0): 1.0,  # the measured path itself
        (2, 2, 2, 2): 6.0,
        (0, 0, 2, 2): 1.0 + 1.0 + 1.5 + 0.25,  # stages 2-3 at 2 rows, one split at exit 1
        (0, 1, 2, 2): 1.0 + 1.5 + 1.5 + 0.25 + 0.4,  # stage 2 at 3 rows: between 2 and 4; two splits
    }
    for exits, ms in cases.items():
        assert predict_batches_ms(costs, "cpu", [np.array(exits)]) == pytest.approx(ms), exits
    all_rows = np.concatenate([np.array(e) for e in cases])
    assert predict_batch_ms(costs, "cpu", all_rows, 4) == pytest.approx(np.mean(list(cases.values())))
    assert predict_batches_ms(costs, "cuda", [np.array([0])]) is None


def test_profiles_without_compaction_or_fewer_rows_load_and_predict_from_their_exit_paths():
    """Compaction and the smaller-row paths are absent where the stages cannot drop rows; exit paths never are."""
    from dyncal.analysis.costmodel import predict_batches_ms
    from dyncal.artifacts.costs import CostTable, LatencyProfile

    doc = _profile().to_dict()
    for key in ("compaction_ms", "exit_path_rows_ms"):
        doc.pop(key)
    prof = LatencyProfile.from_dict(doc)
    assert prof.compaction_ms == () and prof.exit_path_rows_ms == {}
    assert prof.early_exit_ms == [18.0, 36.0, 45.0]
    # a batch that splits: no compaction measured, none charged
    assert predict_batches_ms(CostTable(latency={"cpu/b4": prof}), "cpu", [np.array([0, 2, 2, 2])]) == 45.0
    assert LatencyProfile.from_dict(_profile(exit_path_rows_ms={2: ((1.0,),) * 3}).to_dict()).exit_path_rows_ms == {
        2: ((1.0,),) * 3
    }


def test_verify_replays_only_the_runs_model_unless_told_otherwise(cli, demo_dir, tmp_path):
    """The model is the run's: other weights are refused, or used with --allow-other-model and recorded."""
    import torch

    from dyncal.artifacts.verify import VerifyResult
    from dyncal.demo import DigitsExitNet

    torch.manual_seed(11)
    other = tmp_path / "other.pt"
    torch.save(DigitsExitNet().state_dict(), other)
    args = ("verify", demo_dir / "run", "--thresholds", demo_dir / "thresholds.json", "--max-seconds", "1")
    model = ("--model", "dyncal.demo:DigitsExitNet", "--weights", other)
    assert_clean_error(
        cli(*args, *model), r"is not the model run .* was collected with: the SHA-256 .*--allow-other-model"
    )
    out = tmp_path / "v.json"
    res = cli(*args, *model, "--allow-other-model", "--repeats", "1", "--limit", "40", "--out", out)
    assert res.exit_code == 0, res.output
    assert "note: --allow-other-model: used although" in res.stderr
    check = VerifyResult.load(out).settings["model_check"]
    assert check["allowed"] is True and "SHA-256" in check["mismatch"]
