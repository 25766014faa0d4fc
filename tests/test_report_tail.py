"""The tail and the savings in the report: tail criteria judged on verify's stored requests, what it saves at a rate.

The run is synthetic (4 exits, fixed logits, MACs and a batch-1 latency profile); verify's
documents are written by hand in verify.json's format with per-request timings in
:class:`~dyncal.artifacts.requests.RequestTimings`'s format, so no clock decides anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error
from tail_runs import WEIGHTS, K, tail_run

from dyncal.artifacts.requests import RequestTimings
from dyncal.artifacts.run import load_run
from dyncal.calibrate.solvers import solve_run
from dyncal.errors import DyncalError

pypdf = pytest.importorskip("pypdf")
pytestmark = pytest.mark.integration  # every test writes a PDF report


@pytest.fixture(scope="module")
def run_and_thresholds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The demo-like run, and thresholds solved on it at 0.6x."""
    root = tmp_path_factory.mktemp("tail_run")
    path = tail_run(root)
    doc = solve_run(load_run(path), "0.6x").to_dict()
    th = root / "thresholds.json"
    th.write_text(json.dumps(doc))
    return path, th, doc


def _timings(noise_ms: float, *, n: int = 240, pairs: int = 5, seed: int = 0, plain: float = 2.1) -> RequestTimings:
    """Batch-1 requests: 80% leave at exit 1 (1 ms), 20% at exit 4 (2 ms); plain 2.1 ms; load noise only adds."""
    rng = np.random.default_rng(seed)
    exits = np.where(rng.uniform(size=n) < 0.8, 0, 3)
    true = np.where(exits == 0, 1.0, 2.0)[:, None] * (1 + rng.uniform(0, 0.02, (n, 1)))
    ee = true + rng.exponential(noise_ms, (n, pairs))
    pl = plain * (1 + rng.uniform(0, 0.02, (n, 1))) + rng.exponential(noise_ms, (n, pairs))
    return RequestTimings("cpu/b1", 1, np.arange(n), exits, ee, pl, n_exits=K)


def _constant(key: str, batch: int, ee_ms: float, plain_ms: float, n: int = 64) -> RequestTimings:
    units = math.ceil(n / batch)
    return RequestTimings(
        key, batch, np.arange(n), np.arange(n) % K, np.full((units, 3), ee_ms), np.full((units, 3), plain_ms), n_exits=K
    )


def _verify_doc(run_path: Path, th: dict, requests: list[RequestTimings], tmp: Path, name: str, **change) -> Path:
    """verify.json for the run and thresholds, with ``requests`` stored in their document format."""
    from dyncal.artifacts.thresholds import decision_fingerprint
    from dyncal.artifacts.verify import ModelIdentity, PairedTiming, VerifyResult

    run = load_run(run_path)
    timing = PairedTiming("cpu/b1", 1, ((1.0, 1.0),) * 3, ((2.0, 2.0),) * 3, predicted_ms=1.0)
    result = VerifyResult(
        run_fingerprint=run.fingerprint,
        decision_fingerprint=decision_fingerprint(th["score"], th["temperatures"], th["thresholds"]),
        model=ModelIdentity("tests:synthetic", WEIGHTS),
        n=run.n,
        agreement=1.0,
        exit_agreement=1.0,
        runtime_accuracy=0.9,
        simulated_accuracy=0.9,
        runtime_exit_shares=(0.25,) * K,
        simulated_exit_shares=(0.25,) * K,
        timings=(timing,),
        device="cpu",
        hardware="test CPU",
        threads=2,
    )
    doc = result.to_dict()
    doc["requests"] = [t.to_dict(summaries=False) for t in requests]
    doc.update(change)
    path = tmp / name
    path.write_text(json.dumps(doc))
    return path


def _report(cli, run_path: Path, th: Path, out: Path, *args: object) -> dict:
    res = cli("report", run_path, "--thresholds", th, "--out", out, *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _pages(path: Path) -> list[str]:
    return [" ".join(p.extract_text().split()) for p in pypdf.PdfReader(str(path)).pages]


# -- tail criteria


@pytest.mark.parametrize(
    ("noise", "bound", "status", "decision"),
    [
        (0.001, "p99=2.2", "pass", "GO"),
        (0.2, "p99=2.2", "inconclusive", "INCONCLUSIVE"),  # load widens the interval: never NO-GO
        (0.001, "p99=1.5", "fail", "NO-GO"),  # the 20% at exit 4 take 2 ms
    ],
)
def test_a_tail_criterion_decides_the_report(run_and_thresholds, tmp_path: Path, cli, noise, bound, status, decision):
    run_path, th_path, th = run_and_thresholds
    verify = _verify_doc(run_path, th, [_timings(noise)], tmp_path, "verify.json")
    out = tmp_path / "r.pdf"
    doc = _report(cli, run_path, th_path, out, "--verify", verify, "--max-latency-ms", bound)
    tail = doc["criteria"][-1]
    assert (tail["name"], tail["status"], tail["source"], doc["decision"]) == (
        "latency_p99_ms",
        status,
        "measured",
        decision,
    )
    assert tail["value"] == pytest.approx(np.percentile(_timings(noise).early_exit_ms.min(axis=1), 99))
    pages = _pages(out)
    assert "p99 latency (cpu/b1), measured" in pages[0] and decision in pages[0]
    assert doc["pages"][-1]["title"] == "Latency as requests feel it" and len(pages) == 7
    assert "240 of 240 requests timed" in pages[6] and "leaving at exit 4" in pages[6]
    assert doc["requests"]["cpu/b1"]["coverage"] == "240 of 240 requests timed"


def test_a_ratio_to_the_plain_deployment_and_any_percentile(run_and_thresholds, tmp_path: Path, cli):
    run_path, th_path, th = run_and_thresholds
    t = _timings(0.001)
    verify = _verify_doc(run_path, th, [t], tmp_path, "verify.json")
    doc = _report(
        cli, run_path, th_path, tmp_path / "r.pdf", "--verify", verify,
        "--max-p99-ratio", "1.2", "--max-latency-ms", "p50=1.5", "--max-latency-ratio", "p50=0.4",
    )  # fmt: skip
    by_name = {c["name"]: c for c in doc["criteria"]}
    ratio = by_name["latency_p99_ratio"]
    expected = np.percentile(t.early_exit_ms.min(axis=1), 99) / np.percentile(t.plain_ms.min(axis=1), 99)
    assert ratio["value"] == pytest.approx(expected) and ratio["status"] == "pass"
    assert by_name["latency_p50_ms"]["status"] == "pass"  # most leave at exit 1 in 1 ms
    assert by_name["latency_p50_ratio"]["status"] == "fail" and doc["decision"] == "NO-GO"  # p50 is 1/2.1 = 0.48x
    res = cli("report", run_path, "--thresholds", th_path, "--out", tmp_path / "t.pdf", "--verify", verify,
              "--max-p99-ratio", "1.2", "--max-latency-ratio", "p50=0.4")  # fmt: skip
    assert "latency_p99_ratio (cpu/b1, measured): 0.95x [0.95x, 0.95x] <= 1.20x: PASS" in res.stdout


def test_without_verify_a_bound_in_ms_is_predicted_from_the_profile(run_and_thresholds, tmp_path: Path, cli):
    run_path, th_path, th = run_and_thresholds
    doc = _report(cli, run_path, th_path, tmp_path / "r.pdf", "--max-p99-ms", "100")
    tail = doc["criteria"][-1]
    assert (tail["name"], tail["source"], tail["status"], tail["interval"]) == (
        "latency_p99_ms", "predicted", "pass", None
    )  # fmt: skip
    assert tail["value"] <= 1.7 and doc["decision"] == "GO" and "requests" not in doc
    doc = _report(cli, run_path, th_path, tmp_path / "r2.pdf", "--max-latency-ms", "p99=0.1")
    assert doc["criteria"][-1]["status"] == "fail" and doc["decision"] == "NO-GO"


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--max-p99-ratio", "1.2"], "--max-p99-ratio p99=1.2x: the plain deployment's latency .*'dyncal verify"),
        (["--max-latency-ms", "p99<2"], "--max-latency-ms must look like p99=2.5"),
        (["--max-latency-ms", "p99=2", "--max-p99-ms", "3"], "p99 is bounded twice"),
        (["--max-latency-ratio", "p101=1"], r"--max-latency-ratio: the percentile must lie in \(0, 100\]"),
        (["--rate", "fast"], "--rate must be a positive request rate like 200/s"),
        (["--rate", "200/s"], "--rate needs verify's measured service times and no verify result was given"),
    ],
)
def test_tail_and_rate_mistakes_are_one_line(run_and_thresholds, tmp_path: Path, cli, args, pattern):
    run_path, th_path, _ = run_and_thresholds
    out = tmp_path / "r.pdf"
    assert_clean_error(cli("report", run_path, "--thresholds", th_path, "--out", out, *args), pattern)
    assert not out.exists()


def test_a_verify_result_without_stored_requests_uses_its_batch_1_pairs(run_and_thresholds, tmp_path: Path, cli):
    """Each timed batch of 1 is a request (here 3 of the 600, 1 ms early exit and 2 ms plain); its exit is unknown."""
    run_path, th_path, th = run_and_thresholds
    verify = _verify_doc(run_path, th, [], tmp_path, "verify.json")
    out = tmp_path / "r.pdf"
    doc = _report(cli, run_path, th_path, out, "--verify", verify, "--rate", "200/s", "--max-p99-ratio", "0.6")
    assert doc["requests"]["cpu/b1"]["coverage"] == "3 of 600 requests timed"
    assert doc["criteria"][-1]["value"] == pytest.approx(0.5) and doc["decision"] == "GO"
    assert doc["savings"]["single_stream"]["plain"] == {"p90_ms": 2.0, "p99_ms": 2.0}
    page = _pages(out)[6]
    assert "did not record the exit each request took" in page and "leaving at exit" not in page
    bad = json.loads(verify.read_text())
    bad["requests"] = [{**_timings(0.001).to_dict(summaries=False), "plain_ms": [[1.0]]}]
    verify.write_text(json.dumps(bad))
    res = cli("report", run_path, "--thresholds", th_path, "--out", tmp_path / "r2.pdf", "--verify", verify)
    assert_clean_error(res, r"is not a valid verify result: .*requests\[0\]")


def test_a_verify_result_for_other_thresholds_is_named_when_the_tail_or_rate_needs_it(
    run_and_thresholds, tmp_path: Path, cli
):
    run_path, th_path, th = run_and_thresholds
    other = _verify_doc(run_path, th, [_timings(0.001)], tmp_path, "v.json", decision_fingerprint="f" * 64)
    for args in (["--max-p99-ratio", "1.2"], ["--rate", "200/s"]):
        res = cli("report", run_path, "--thresholds", th_path, "--out", tmp_path / "r.pdf", "--verify", other, *args)
        assert_clean_error(res, "verify result '.*v.json' ignored: it was measured with other thresholds")
    doc = _report(cli, run_path, th_path, tmp_path / "r.pdf", "--verify", other, "--max-p99-ms", "5")
    assert doc["criteria"][-1]["source"] == "predicted" and "requests" not in doc  # predicted, as the note says


# -- what it saves


def test_what_it_saves_on_a_worked_example(run_and_thresholds, tmp_path: Path, cli):
    """1000 requests/s, servers of 2 cores (verify's threads) at most 80% busy.

    Batch 1: early exit 2 ms (500/s), plain 5 ms (200/s); batch 8: 8 and 20 ms a batch (1000/s, 400/s).
    Offline takes batch 8: plain ceil(1000 / (400 x 0.8)) = 4 servers, 8 cores; early exit
    ceil(1000 / (1000 x 0.8)) = 2 servers, 4 cores: 50% fewer. A million requests at 1000/s
    last 1000 s: 8 x 1000 / 3600 = 2.22 core-hours against 1.11.
    """
    run_path, th_path, th = run_and_thresholds
    verify = _verify_doc(
        run_path, th, [_constant("cpu/b1", 1, 2.0, 5.0), _constant("cpu/b8", 8, 8.0, 20.0)], tmp_path, "v.json"
    )
    out = tmp_path / "r.pdf"
    doc = _report(cli, run_path, th_path, out, "--verify", verify, "--rate", "60k/min")
    s = doc["savings"]
    assert s["rate_per_s"] == pytest.approx(1000.0) and s["unit"] == "cores" and s["cores_per_server"] == 2
    plain, early = s["offline"]["plain"], s["offline"]["early_exit"]
    assert (plain["batch_size"], plain["figure"], plain["servers"], plain["cores"]) == (8, 400.0, 4, 8)
    assert (early["batch_size"], early["figure"], early["servers"], early["cores"]) == (8, 1000.0, 2, 4)
    assert s["offline_saving"] == 0.5
    assert plain["core_hours_per_million"] == pytest.approx(8 * 1000 / 3600)
    assert early["core_hours_per_million"] == pytest.approx(4 * 1000 / 3600)
    assert s["single_stream"]["early_exit"] == {"p90_ms": 2.0, "p99_ms": 2.0}
    assert [p["title"] for p in doc["pages"][-2:]] == ["Latency as requests feel it", "What it saves"]
    page = _pages(out)[-1]
    assert "At 1000 requests/s early exit needs 4 cores where the plain deployment needs 8: 50% fewer" in page
    assert "Offline (batch 8)" in page and "2.22 / 1.11" in page and "SingleStream (batch 1)" in page
    assert "queueing not modelled" in page and "M/G/c" in page and "Server (1000/s)" in page
    res = cli("report", run_path, "--thresholds", th_path, "--out", tmp_path / "t.pdf", "--verify", verify,
              "--rate", "1000/s")  # fmt: skip
    assert "what it saves at 1000/s: early exit 4 cores, plain deployment 8 (50% fewer; Offline, batch 8)" in res.stdout


def test_the_server_scenario_is_provisioned_for_the_p99_bound(run_and_thresholds, tmp_path: Path, cli):
    run_path, th_path, th = run_and_thresholds
    verify = _verify_doc(run_path, th, [_constant("cpu/b1", 1, 2.0, 5.0)], tmp_path, "v.json")
    doc = _report(cli, run_path, th_path, tmp_path / "r.pdf", "--verify", verify, "--rate", "1000/s",
                  "--max-p99-ms", "8")  # fmt: skip
    s = doc["savings"]
    assert s["p99_bound_ms"] == 8.0 and all(s["server"][d]["figure"] <= 8.0 for d in ("plain", "early_exit"))
    assert s["server"]["early_exit"]["cores"] < s["server"]["plain"]["cores"]
    assert doc["criteria"][-1]["status"] == "pass"  # every request 2 ms


def test_stored_requests_are_read_from_the_result_or_each_timing():
    from dyncal.reports.tail_evidence import requests_from_document, stored_requests

    t1, t8 = _constant("cpu/b1", 1, 2.0, 5.0), _constant("cpu/b8", 8, 8.0, 20.0)
    doc = {"requests": [t8.to_dict()], "timings": [{"key": "cpu/b1", "requests": t1.to_dict(summaries=False)}]}
    assert [t.key for t in requests_from_document(doc)] == ["cpu/b1", "cpu/b8"]
    assert requests_from_document({"timings": [{"key": "cpu/b1"}]}) == ()
    with pytest.raises(DyncalError, match="holds cpu/b1 more than once"):
        requests_from_document({"requests": [t1.to_dict(), t1.to_dict()]})

    class Held:
        requests = (t8, t1)

    assert [t.batch_size for t in stored_requests(Held(), None)] == [1, 8]  # type: ignore[arg-type]
    assert stored_requests(None, "anything.json") == ()
