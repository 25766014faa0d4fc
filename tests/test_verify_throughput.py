"""verify --throughput and --runtime end to end: verify.json, the report's advice, graphs refused off CUDA."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from dyncal.artifacts.verify import PairedTiming, VerifyResult
from dyncal.errors import DyncalError
from tests.conftest import assert_clean_error
from tests.test_report import _CRIT, _flat, _pages_text, _verify_result, demo_runs, solved  # noqa: F401

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.integration


def _entry(key: str, *, per_batch: float, rebatched: float | None, plain: float = 1.0) -> dict:
    """A throughput document with every replicate alike: seconds for all rows per mode."""
    seconds = {"per_batch": [per_batch] * 3, "plain": [plain] * 3}
    if rebatched is not None:
        seconds["rebatched"] = [rebatched] * 3
    b = int(key.rpartition("/b")[2])
    return {
        "version": 1,
        "key": key,
        "runtime": "eager",
        "timer": "injected",
        "batch_size": b,
        "samples": 64 * b,
        "seconds": seconds,
        "agreement": 1.0,
        "exit_shares": [0.25] * 4,
        "macs_ratio": 2.0,
    }


def _verified(run: Path, th: dict, *entries: dict) -> VerifyResult:
    """A verify result timed at cpu/b1 and cpu/b32 (early exit 3x faster per batch) with throughput ``entries``."""
    base = _verify_result(run, th, full=[0.6] * 5, early=[0.2] * 5)
    b32 = PairedTiming(
        key="cpu/b32", batch_size=32, early_exit_ms=((2.0,) * 5,) * 3, full_model_ms=((6.0,) * 5,) * 3, predicted_ms=2.0
    )
    runtime = {"runtime": "eager", "early_exit": "eager", "plain": "eager (the whole model, every head)"}
    return dataclasses.replace(
        base, timings=(*base.timings, b32), settings={"runtime": runtime}, throughput=tuple(entries)
    )


def _report(cli, run: Path, th_path: Path, verify: VerifyResult, tmp_path: Path, batch: int) -> tuple[dict, str]:
    path = tmp_path / f"verify{batch}.json"
    verify.save(path)
    out = tmp_path / f"r{batch}.pdf"
    crit = [*_CRIT[:-1], str(batch)]
    res = cli("report", run, "--thresholds", th_path, "--verify", path, "--out", out, *crit, "--json", "--overwrite")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), _flat(_pages_text(out)[0])


def test_the_report_recommends_the_throughput_mode_where_per_batch_early_exit_loses(
    demo_runs: dict[str, Path],  # noqa: F811
    solved: tuple[Path, dict],  # noqa: F811
    tmp_path: Path,
    cli,
) -> None:
    th_path, th = solved
    run = demo_runs["lat"]
    # at batch 32 per-batch early exit loses (1/1.1 = 0.91x), pooling rows wins (1.25x); at batch 1 it wins
    verify = _verified(
        run,
        th,
        _entry("cpu/b1", per_batch=0.5, rebatched=None),
        _entry("cpu/b32", per_batch=1.1, rebatched=0.8),
    )
    doc, page1 = _report(cli, run, th_path, verify, tmp_path, 32)
    (note,) = [n for n in doc["notes"] if "runner.map" in n]
    assert note.startswith("At cpu/b32 per-batch early exit is slower than the plain deployment (0.91x")
    assert "reaches 1.25x (62% of the 2.00x MACs ratio): deploy it for offline or streaming work" in note
    assert "deploy it for offline or streaming work" in page1
    assert "Verify ran the early exit under eager and the plain model under eager" in page1
    assert "deploy the throughput mode for offline or streaming work" in page1
    # judged at batch 1, where per-batch early exit wins: no advice against it
    doc, page1 = _report(cli, run, th_path, verify, tmp_path, 1)
    assert not [n for n in doc["notes"] if "runner.map" in n or "samples/s" in n]
    assert "In samples/s on cpu/b1" in page1 and "deploy per-batch early exit" in page1


def test_the_report_advises_the_plain_model_when_no_mode_pays(
    demo_runs: dict[str, Path],  # noqa: F811
    solved: tuple[Path, dict],  # noqa: F811
    tmp_path: Path,
    cli,
) -> None:
    th_path, th = solved
    verify = _verified(demo_runs["lat"], th, _entry("cpu/b32", per_batch=1.2, rebatched=1.1))
    doc, page1 = _report(cli, demo_runs["lat"], th_path, verify, tmp_path, 32)
    (note,) = [n for n in doc["notes"] if "samples/s" in n]
    assert note.startswith("At cpu/b32 neither early-exit mode beats the plain deployment") and "plain model" in note
    assert "neither early-exit mode" in page1


def test_throughput_round_trips_through_verify_json_and_a_broken_entry_is_one_line(
    demo_runs: dict[str, Path],  # noqa: F811
    solved: tuple[Path, dict],  # noqa: F811
    tmp_path: Path,
) -> None:
    _, th = solved
    verify = _verified(demo_runs["lat"], th, _entry("cpu/b32", per_batch=1.1, rebatched=0.8))
    path = tmp_path / "verify.json"
    verify.save(path)
    back = VerifyResult.load(path)
    assert back.throughput == verify.throughput and back.to_dict()["throughput"][0]["key"] == "cpu/b32"
    # results measured without --throughput keep their document as it was
    assert "throughput" not in dataclasses.replace(verify, throughput=()).to_dict()
    doc = json.loads(path.read_text())
    doc["throughput"] = [{"samples": 3}]
    path.write_text(json.dumps(doc))
    with pytest.raises(DyncalError, match=r"is not a valid verify result: 'throughput' must be a list of objects"):
        VerifyResult.load(path)


# ----------------------------------------------------------------- a real verify on the demo


@pytest.fixture(scope="module")
def demo_run(demo_package: dict) -> dict:
    """The demo collected, its MACs counted, thresholds solved at 0.5x and exported (``pkg``)."""
    return demo_package


class _Ticks:
    """An injected clock: every reading is 2**-10 s later (exact in binary), so every timed block lasts alike."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 2.0**-10
        return self.now


def test_verify_throughput_measures_every_mode_on_the_same_rows(demo_run):
    from dyncal.verbs.verify import verify_run
    from dyncal.verbs.verify_throughput import MIN_THROUGHPUT_BATCHES

    res = verify_run(
        demo_run["run"],
        demo_run["th"],
        batch_sizes=(1, 16),
        limit=160,
        repeats=3,
        max_seconds=0.05,
        throughput=True,
        clock=_Ticks(),
    )
    assert res.agreement == 1.0
    assert res.settings["runtime"] == {
        "runtime": "eager",
        "early_exit": "eager",
        "plain": "eager (plain deployment: backbone and last head)",
    }
    assert [t["key"] for t in res.throughput] == ["cpu/b1", "cpu/b16"]
    b1, b16 = res.throughput
    assert set(b1["seconds"]) == {"per_batch", "plain"} and set(b16["seconds"]) == {"per_batch", "rebatched", "plain"}
    # both early-exit modes gave every row its simulated exit and prediction
    assert b1["agreement"] == b16["agreement"] == 1.0 and b16["runtime"] == "eager"
    assert b16["samples"] == 16 * MIN_THROUGHPUT_BATCHES and b16["batch_size"] == 16
    # under a clock where every block lasts alike, no mode is faster: the plain model is advised
    assert b16["speedup"] == {"per_batch": 1.0, "rebatched": 1.0, "plain": 1.0} and b16["recommendation"] == "plain"
    assert len(b16["exit_shares"]) == 4 and sum(b16["exit_shares"]) == pytest.approx(1.0)
    assert b16["macs_ratio"] is not None and b16["macs_ratio"] > 1.0  # the plain deployment's MACs were counted


def test_verify_cli_prints_the_runtime_and_the_throughput(demo_run, cli, tmp_path):
    out = tmp_path / "verify.json"
    res = cli(
        "verify", demo_run["run"], "--thresholds", demo_run["th_path"], "--batch-size", "8", "--limit", "64",
        "--repeats", "3", "--max-seconds", "0.5", "--throughput", "--out", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "runtime: early exit eager, plain model eager (plain deployment: backbone and last head)" in res.stdout
    assert re.search(r"cpu/b8, \d+ rows: per-batch early exit [\d.]+ \([\d.]+x\), throughput mode", res.stdout)
    assert "agreement 100.00%" in res.stdout and "deploy " in res.stdout
    doc = json.loads(out.read_text())
    assert doc["throughput"][0]["key"] == "cpu/b8" and doc["settings"]["runtime"]["runtime"] == "eager"


# ----------------------------------------------------------------- --runtime graphs needs CUDA


@pytest.mark.skipif(CUDA, reason="a machine with CUDA runs graphs rather than refusing them")
def test_graphs_are_refused_on_the_cpu_in_one_line(demo_run, cli, tmp_path):
    run, th = demo_run["run"], demo_run["th_path"]
    assert_clean_error(
        cli("verify", run, "--thresholds", th, "--runtime", "graphs"),
        r"^error: --runtime graphs needs CUDA \(it replays per-stage CUDA graphs\), but --device is cpu; use "
        r"--device cuda on a machine with a GPU, or --runtime eager$",
    )
    assert_clean_error(cli("profile", run, "--runtime", "graphs"), r"--runtime graphs needs CUDA.*--device is cpu")
    out = tmp_path / "pkg"
    assert_clean_error(
        cli("export", run, "--thresholds", th, "--out", out, "--runtime", "graphs"),
        r"--runtime graphs needs CUDA .*this machine has no CUDA device; use --runtime eager$",
    )
    assert not out.exists() and not (tmp_path / "pkg.partial").exists()
    assert_clean_error(cli("verify", run, "--thresholds", th, "--runtime", "fast"), r"--runtime must be one of")


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device (benchmarks/gpu_check.sh runs them on a GPU)")
def test_verify_under_graphs_on_cuda_agrees_with_the_simulation(demo_run):  # pragma: no cover - GPU only
    from dyncal.verbs.verify import verify_run

    res = verify_run(
        demo_run["run"], demo_run["th"], device="cuda", runtime="graphs", batch_sizes=(1, 32), max_seconds=2.0
    )
    assert res.agreement == 1.0 and res.settings["runtime"]["plain"].startswith("graphs (plain deployment")
    assert res.settings["timer"] == "cuda_events"


def test_the_plain_deployment_verify_times_is_cut_from_the_model_or_is_the_packages_own(demo_run):
    import dyncal
    from dyncal.analysis.early_exit import EarlyExitRunner
    from dyncal.analysis.plain import plain_deployment, plain_runner
    from dyncal.analysis.runtime import apply_runtime
    from dyncal.analysis.stages import build_stages
    from dyncal.demo import pretrained

    net = pretrained()
    x = torch.randn(6, 1, 8, 8)
    runner = EarlyExitRunner(build_stages(net, x[:2]), [0.9, 0.9, 0.9, None], [1.0] * 4)
    plain = plain_runner(plain_deployment(runner.stages, model=net, example=x[:2]))
    exits, preds = plain(x)
    assert exits.tolist() == [0] * 6 and torch.equal(preds, net(x)[-1].argmax(1))
    assert apply_runtime(runner, "eager", example=x, max_batch_size=8) is runner

    pkg = dyncal.load_early_exit(demo_run["pkg"])
    exits, preds = pkg.plain_runner()(x)
    assert exits.tolist() == [0] * 6 and torch.equal(preds, pkg.full_model(x)[-1].argmax(1))


def test_the_event_timer_settles_its_warm_up_on_a_gpu_only():
    from dyncal.analysis.cuda_timing import EventTimer

    calls: list[int] = []
    EventTimer(torch.device("cpu")).warm(lambda: calls.append(1), 3)
    assert len(calls) == 3  # on the CPU: the warm-up asked for, nothing more


def test_profile_records_the_runtime_and_timer_of_each_latency_column():
    from dyncal.demo import pretrained
    from dyncal.verbs.profile import ProfileOptions, profile_model

    costs, *_ = profile_model(
        pretrained(), (1, 8, 8), ProfileOptions(batch_sizes=(2,), warmup=0, repeats=3, min_block_ms=0)
    )
    settings = costs.latency["cpu/b2"].settings
    assert settings["runtime"] == "eager" and settings["timer"] == "perf_counter"
    with pytest.raises(DyncalError, match="graphs needs CUDA"):
        profile_model(pretrained(), (1, 8, 8), ProfileOptions(runtime="graphs"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_profile_model_refuses_a_missing_device_before_it_runs_the_model():
    from dyncal.verbs.profile import ProfileOptions, profile_model

    class RunsNothing(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            raise AssertionError("the model ran before its devices were checked")

    with pytest.raises(DyncalError, match="CUDA is not available") as info:
        profile_model(RunsNothing(), (1, 8, 8), ProfileOptions(devices=("cpu", "cuda")))
    assert "\n" not in str(info.value)
